"""Prequential figures (model/evaluate.py) on cases whose answer is known by hand."""

from __future__ import annotations

import pytest
import torch

from model.evaluate import Acceptance, Prequential, acceptance, average_precision, match_count, prequential


def _truth(boxes: list[list[float]], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def _pred(boxes: list[list[float]], labels: list[int], scores: list[float]) -> dict[str, torch.Tensor]:
    return {**_truth(boxes, labels), "scores": torch.tensor(scores, dtype=torch.float32)}


TRUTHS = [
    _truth([[10, 10, 50, 50], [60, 60, 90, 100]], [1, 2]),
    _truth([[0, 0, 30, 40]], [1]),
    _truth([[5, 5, 45, 25], [50, 10, 80, 70], [20, 30, 60, 90]], [2, 2, 1]),
]
PERFECT = [{**t, "scores": torch.full((len(t["labels"]),), 0.9)} for t in TRUTHS]
NOTHING = [_pred([], [], []) for _ in TRUTHS]


class TestMatchCount:
    def test_same_box_same_label_matches(self):
        assert match_count(_pred([[0, 0, 10, 10]], [1], [0.9]), _truth([[0, 0, 10, 10]], [1])) == 1

    def test_other_label_does_not_match(self):
        assert match_count(_pred([[0, 0, 10, 10]], [2], [0.9]), _truth([[0, 0, 10, 10]], [1])) == 0

    def test_iou_below_half_does_not_match(self):
        # IoU of [0,0,10,10] and [5,0,15,10] is 50 / 150 = 1/3
        assert match_count(_pred([[5, 0, 15, 10]], [1], [0.9]), _truth([[0, 0, 10, 10]], [1])) == 0

    def test_a_duplicate_is_matched_once(self):
        pred = _pred([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [0.9, 0.8])
        assert match_count(pred, _truth([[0, 0, 10, 10]], [1])) == 1

    def test_empty_either_side(self):
        assert match_count(_pred([], [], []), _truth([[0, 0, 10, 10]], [1])) == 0
        assert match_count(_pred([[0, 0, 10, 10]], [1], [0.9]), _truth([], [])) == 0


class TestAcceptance:
    def test_ground_truth_is_fully_accepted(self):
        kept = acceptance(PERFECT, TRUTHS, display_threshold=0.5)
        assert kept == Acceptance(predicted=6, annotated=6, matched=6)
        assert kept.accepted == 1.0 and kept.recall == 1.0

    def test_predicting_nothing_is_zero_and_zero(self):
        kept = acceptance(NOTHING, TRUTHS, display_threshold=0.5)
        assert kept == Acceptance(predicted=0, annotated=6, matched=0)
        assert kept.accepted == 0.0 and kept.recall == 0.0

    def test_boxes_below_the_threshold_were_never_shown(self):
        low = [{**p, "scores": torch.full_like(p["scores"], 0.3)} for p in PERFECT]
        assert acceptance(low, TRUTHS, display_threshold=0.5) == Acceptance(0, 6, 0)

    def test_half_of_the_boxes_wrong(self):
        # one right box and one box of the wrong label: half accepted, half of the truth found
        pred = [_pred([[10, 10, 50, 50], [60, 60, 90, 100]], [1, 1], [0.9, 0.9])]
        kept = acceptance(pred, TRUTHS[:1], display_threshold=0.5)
        assert (kept.accepted, kept.recall) == (0.5, 0.5)

    def test_nothing_either_way_has_no_share(self):
        kept = acceptance([_pred([], [], [])], [_truth([], [])], display_threshold=0.5)
        assert kept.accepted is None and kept.recall is None


class TestAveragePrecision:
    def test_ground_truth_scores_one(self):
        ap = average_precision(PERFECT, TRUTHS, class_metrics=True)
        assert ap["map_50"] == pytest.approx(1.0) and ap["map"] == pytest.approx(1.0)
        assert ap["ap50"] == pytest.approx({1: 1.0, 2: 1.0}) and ap["ap"] == pytest.approx({1: 1.0, 2: 1.0})

    def test_nothing_scores_zero(self):
        ap = average_precision(NOTHING, TRUTHS, class_metrics=True)
        assert ap["map_50"] == 0.0 and ap["map"] == 0.0

    def test_a_class_never_annotated_has_no_ap(self):
        truths = [_truth([[10, 10, 50, 50]], [1])]
        preds = [_pred([[10, 10, 50, 50], [60, 60, 90, 90]], [1, 2], [0.9, 0.8])]
        assert set(average_precision(preds, truths, class_metrics=True)["ap50"]) == {1}


class TestPrequential:
    def test_perfect_detector(self):
        report = prequential(
            PERFECT,
            TRUTHS,
            ["car", "person"],
            model_version="v0001",
            display_threshold=0.5,
            tasks=3,
            min_tasks=3,
            trained_on_tasks=4,
            task_ids=[7, 8, 9],
        )
        assert report.figures() == pytest.approx({"map_50": 1.0, "map": 1.0, "accepted": 1.0, "recall": 1.0})
        assert set(report.per_class) == {"car", "person"}
        assert all(v == pytest.approx({"ap": 1.0, "ap50": 1.0}) for v in report.per_class.values())
        assert report.model_version == "v0001" and report.task_ids == [7, 8, 9]

    def test_empty_detector(self):
        report = prequential(NOTHING, TRUTHS, ["car", "person"], model_version="v0002", display_threshold=0.5)
        assert report.figures() == {"map_50": 0.0, "map": 0.0, "accepted": 0.0, "recall": 0.0}

    def test_json_round_trip(self):
        report = prequential(PERFECT, TRUTHS, ["car", "person"], model_version="v0001", display_threshold=0.5)
        assert Prequential.from_json(report.to_json()) == report

    def test_an_older_meta_s_score_threshold_is_read_as_the_display_threshold(self):
        stored = {"model_version": "v0001", "status": "ok", "score_threshold": 0.4}
        assert Prequential.from_json(stored).display_threshold == 0.4

    def test_too_few_tasks_has_no_figures(self):
        report = Prequential("v0001", "too_few", "2 new annotated tasks, fewer than 5", tasks=2, min_tasks=5)
        assert report.figures() == {}

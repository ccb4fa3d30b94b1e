"""Tests of backend/predictions.py: Label Studio's percent coordinates, task
scores, per-task isolation of failures in a batch, and the deadline split.

The batching tests use a stub detector (it records the batches it is given);
the real model is exercised through the routes in test_routes.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from backend.labels import parse_label_config
from backend.predictions import Deadline, TaskFailure, box_result, predict_tasks, task_prediction
from backend.ranking_store import StoredRanking
from backend.service import build_service
from helpers import FROM_NAME, LABEL_CONFIG, LABELS, TO_NAME, make_settings, write_exif_rotated_jpeg, write_image
from model.detections import Detections
from model.registry import ServedModel
from model.version_meta import VersionMeta
from model.versions import Version

NAMES = parse_label_config(LABEL_CONFIG)


def _detections(boxes, labels, scores, width, height) -> Detections:
    n, c1 = len(boxes), len(LABELS) + 1
    probs = torch.full((n, c1), 1.0 / c1)
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        scores=torch.tensor(scores, dtype=torch.float32),
        probs=probs,
        sigmas=torch.ones((n, 4)),
        width=width,
        height=height,
    )


def _to_pixels(value: dict, width: int, height: int) -> list[float]:
    """Label Studio's percent box back to (x1, y1, x2, y2) pixels."""
    x1, y1 = value["x"] * width / 100, value["y"] * height / 100
    return [x1, y1, x1 + value["width"] * width / 100, y1 + value["height"] * height / 100]


class TestBoxResult:
    def test_percent_of_a_non_square_image(self):
        # 200 x 100 image: x in pixels / 2, y in pixels / 1
        region = box_result([20, 10, 120, 60], "car", 0.75, 200, 100, NAMES)
        assert region["value"] == {
            "x": 10.0,
            "y": 10.0,
            "width": 50.0,
            "height": 50.0,
            "rotation": 0,
            "rectanglelabels": ["car"],
        }

    def test_region_fields(self):
        region = box_result([0, 0, 5, 5], "person", 0.5, 50, 20, NAMES)
        assert region["from_name"] == FROM_NAME and region["to_name"] == TO_NAME
        assert region["type"] == "rectanglelabels"
        assert (region["original_width"], region["original_height"], region["image_rotation"]) == (50, 20, 0)
        assert region["score"] == 0.5 and isinstance(region["score"], float)

    def test_whole_image(self):
        value = box_result([0, 0, 100, 300], "car", 1.0, 100, 300, NAMES)["value"]
        assert (value["x"], value["y"], value["width"], value["height"]) == (0.0, 0.0, 100.0, 100.0)

    def test_a_square_box_on_a_wide_image_is_not_square_in_percent(self):
        value = box_result([0, 0, 100, 100], "car", 1.0, 200, 100, NAMES)["value"]
        assert (value["width"], value["height"]) == (50.0, 100.0)

    @pytest.mark.parametrize("width, height", [(200, 100), (100, 200), (641, 479), (1, 3)])
    def test_round_trip(self, width, height):
        gen = torch.Generator().manual_seed(width * height)
        for _ in range(20):
            xs = (torch.rand(2, generator=gen) * width).sort().values
            ys = (torch.rand(2, generator=gen) * height).sort().values
            box = [xs[0].item(), ys[0].item(), xs[1].item(), ys[1].item()]
            value = box_result(box, "car", 0.9, width, height, NAMES)["value"]
            assert _to_pixels(value, width, height) == pytest.approx(box, abs=1e-6)
            assert all(0.0 <= value[k] <= 100.0 for k in ("x", "y", "width", "height"))

    def test_accepts_tensors(self):
        region = box_result(torch.tensor([20.0, 10.0, 120.0, 60.0]), "car", torch.tensor(0.5), 200, 100, NAMES)
        assert region["value"]["x"] == 10.0 and isinstance(region["value"]["x"], float)
        assert isinstance(region["score"], float)


class TestTaskPrediction:
    def test_labels_are_mapped_from_class_indices(self):
        det = _detections([[0, 0, 10, 10], [10, 10, 20, 20]], [2, 1], [0.9, 0.6], 40, 20)
        out = task_prediction(det, list(LABELS), NAMES, "v0003", display_threshold=0.0, score=0.5)
        assert [r["value"]["rectanglelabels"] for r in out["result"]] == [["person"], ["car"]]
        assert [r["score"] for r in out["result"]] == pytest.approx([0.9, 0.6])
        assert out["model_version"] == "v0003"

    def test_the_task_carries_the_score_it_is_given(self):
        det = _detections([[0, 0, 1, 1]], [1], [0.5], 10, 10)
        assert task_prediction(det, list(LABELS), NAMES, "v1", display_threshold=0.0, score=0.25)["score"] == 0.25

    def test_coordinates_use_the_detections_size(self):
        det = _detections([[20, 10, 120, 60]], [1], [0.9], 200, 100)
        (region,) = task_prediction(det, list(LABELS), NAMES, "v1", display_threshold=0.0, score=0.5)["result"]
        assert (region["original_width"], region["original_height"]) == (200, 100)
        assert (region["value"]["x"], region["value"]["width"]) == (10.0, 50.0)


class _StubDetector:
    """Answers one full-image box of class 1 per image; records batch sizes."""

    def __init__(self, fail_on_call: int | None = None, clock: FakeClock | None = None) -> None:
        self.labels = list(LABELS)
        self.batches: list[int] = []
        self.fail_on_call = fail_on_call
        self.clock = clock

    def predict(self, images, flip=False):
        self.batches.append(len(images))
        if self.clock is not None:
            self.clock.now += 1.0  # every forward pass takes one fake second
        if self.fail_on_call == len(self.batches):
            raise RuntimeError("CUDA out of memory (simulated)")
        out = []
        for img in images:
            h, w = img.shape[-2:]
            out.append(_detections([[0, 0, w, h]], [1], [0.8], int(w), int(h)))
        return out


class FakeClock:
    """A clock that moves only when told: deadline tests without timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _served(detector, tmp_path: Path) -> ServedModel:
    return ServedModel(detector, Version("1", "v0007", tmp_path, VersionMeta(labels=list(LABELS))))


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "root"
    for i, (w, h) in enumerate([(30, 10), (10, 30), (20, 20), (16, 8), (8, 16)]):
        write_image(root / f"{i}.png", w, h)
    write_exif_rotated_jpeg(root / "rotated.jpg", 60, 40)
    (root / "text.png").write_text("not an image")
    return root


def _loader(tmp_path, root):
    return build_service(make_settings(tmp_path / "models", local_files_document_root=str(root))).images


def _task(task_id: int, name: str) -> dict:
    return {"id": task_id, "data": {"image": f"/data/local-files/?d={name}"}}


def _predict(tasks, detector, tmp_path, root, batch_size=2, workers=2, **options):
    """predict_tasks over the ``root`` fixture's images with every pre-annotation shown."""
    return predict_tasks(
        tasks,
        NAMES,
        _served(detector, tmp_path),
        _loader(tmp_path, root),
        batch_size=batch_size,
        workers=workers,
        display_threshold=0.0,
        **options,
    )


class TestPredictTasks:
    def test_one_item_per_task_in_order(self, tmp_path, root):
        detector = _StubDetector()
        tasks = [_task(10 + i, f"{i}.png") for i in range(5)]
        results = _predict(tasks, detector, tmp_path, root, workers=3).results
        sizes = [(r["result"][0]["original_width"], r["result"][0]["original_height"]) for r in results]
        assert sizes == [(30, 10), (10, 30), (20, 20), (16, 8), (8, 16)]
        assert all(r["model_version"] == "v0007" for r in results)

    def test_batches_never_exceed_the_batch_size(self, tmp_path, root):
        detector = _StubDetector()
        tasks = [_task(i, f"{i}.png") for i in range(5)]
        _predict(tasks, detector, tmp_path, root)
        assert detector.batches == [2, 2, 1]

    def test_exif_rotated_image_reports_the_displayed_size(self, tmp_path, root):
        (result,) = _predict([_task(1, "rotated.jpg")], _StubDetector(), tmp_path, root, workers=1).results
        region = result["result"][0]
        assert (region["original_width"], region["original_height"]) == (40, 60)
        assert (region["value"]["width"], region["value"]["height"]) == pytest.approx((100.0, 100.0))

    def test_failed_images_get_empty_lists_and_are_logged(self, tmp_path, root, caplog):
        detector = _StubDetector()
        tasks = [_task(1, "0.png"), _task(2, "text.png"), {"id": 3, "data": {}}, _task(4, "1.png")]
        with caplog.at_level(logging.WARNING, logger="backend.predictions"):
            out = _predict(tasks, detector, tmp_path, root, batch_size=8)
        # [] makes Label Studio store nothing: no "the model found nothing here" for a broken image
        assert out.results[1] == [] and out.results[2] == []
        assert out.results[0]["result"] and out.results[3]["result"]
        assert [(f.task_id, f.reason) for f in out.failures] == [(2, "undecodable"), (3, "missing")]
        assert out.deferred == []
        assert detector.batches == [2]  # failed images never reach the model
        messages = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("task 2:") for m in messages)
        assert any(m.startswith("task 3:") for m in messages)

    def test_a_failing_batch_leaves_the_other_batches(self, tmp_path, root, caplog):
        detector = _StubDetector(fail_on_call=1)
        tasks = [_task(i, f"{i}.png") for i in range(3)]
        with caplog.at_level(logging.ERROR, logger="backend.predictions"):
            out = _predict(tasks, detector, tmp_path, root)
        assert out.results[:2] == [[], []]
        assert len(out.results[2]["result"]) == 1
        assert [(f.task_id, f.reason) for f in out.failures] == [(0, "inference"), (1, "inference")]
        assert any("[0, 1]" in r.getMessage() for r in caplog.records)

    def test_no_tasks(self, tmp_path, root):
        detector = _StubDetector()
        out = _predict([], detector, tmp_path, root)
        assert (out.results, out.deferred, out.failures) == ([], [], [])
        assert detector.batches == []


class TestDeadline:
    """The split of one request into tasks answered now and tasks deferred, on a fake clock
    (each forward pass of the stub takes one fake second)."""

    def _run(self, tmp_path, root, tasks, deadline, ranking=None, clock=None):
        detector = _StubDetector(clock=clock)
        out = _predict(tasks, detector, tmp_path, root, ranking=ranking, deadline=deadline)
        return out, detector

    def test_a_batch_starts_only_if_the_last_one_still_fits(self, tmp_path, root):
        clock = FakeClock()
        tasks = [_task(10 + i, f"{i}.png") for i in range(5)]
        # batch 1 at t=0 (nothing measured yet), batch 2 at t=1 (1 + 1 <= 2.5); at t=2, 2 + 1 > 2.5
        out, detector = self._run(tmp_path, root, tasks, Deadline(2.5, clock), clock=clock)
        assert detector.batches == [2, 2]
        assert all(r["result"] for r in out.results[:4]) and out.results[4] == []
        assert out.deferred == [14] and out.failures == []

    def test_a_passed_deadline_defers_every_task_the_ranking_lacks(self, tmp_path, root):
        clock = FakeClock()
        clock.now = 10.0
        stored = {"result": [], "score": 0.25, "model_version": "v0001"}
        ranking = StoredRanking(tasks={11: stored})
        tasks = [_task(10, "0.png"), _task(11, "1.png"), _task(12, "2.png")]
        out, detector = self._run(tmp_path, root, tasks, Deadline(5.0, clock), ranking, clock)
        assert detector.batches == []
        assert out.results == [[], {**stored, "model_version": "v0007"}, []]
        assert out.deferred == [10, 12]

    def test_failed_tasks_are_failures_not_deferred(self, tmp_path, root):
        clock = FakeClock()
        tasks = [_task(1, "text.png"), _task(2, "0.png"), _task(3, "1.png"), _task(4, "2.png")]
        out, _ = self._run(tmp_path, root, tasks, Deadline(0.5, clock), clock=clock)
        assert out.results[0] == [] and out.results[1]["result"]
        assert out.failures == [TaskFailure(1, "undecodable", out.failures[0].message)]
        assert out.deferred == [3, 4]

    def test_without_a_deadline_every_task_is_predicted(self, tmp_path, root):
        tasks = [_task(10 + i, f"{i}.png") for i in range(5)]
        out, detector = self._run(tmp_path, root, tasks, None, clock=FakeClock())
        assert detector.batches == [2, 2, 1] and out.deferred == []

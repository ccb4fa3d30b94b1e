"""The error-capture diagnostic (bench.active_learning.error_capture): its oracle measures by hand, and
one run end to end on the tiny preset that reuses the cycle-0 training it cached."""

from __future__ import annotations

import json

import pytest
import torch

from bench.active_learning import error_capture
from bench.active_learning.error_capture import ImageError, capture, image_error, random_draws, summarise, verdict
from model.detections import Detections
from model.samples import Sample


def _dets(boxes: list[list[float]], labels: list[int], scores: list[float]) -> Detections:
    n = len(boxes)
    return Detections(
        boxes=torch.tensor(boxes).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        scores=torch.tensor(scores),
        probs=torch.full((n, 3), 1 / 3),
        sigmas=torch.zeros(n, 4),
        width=100,
        height=100,
    )


TRUTH = Sample("x.png", torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]), torch.tensor([1, 2]))


class TestImageError:
    def test_soft_misses_and_false_positives(self) -> None:
        dets = _dets(
            [[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [1, 1, 1, 2], [0.9, 0.4, 0.8, 0.7]
        )
        err = image_error(dets, TRUTH)
        # object 1 found at 0.9 (miss 0.1); object 2 only under the wrong class (miss 1);
        # confident boxes matching nothing of their class: (50..60, class 1) and (80..90): 2
        assert err.miss == pytest.approx(1.1) and err.fp == 2 and err.boxes == 2
        assert err.error == pytest.approx(3.1)

    def test_nothing_detected_misses_everything(self) -> None:
        err = image_error(Detections.empty(2, 100, 100), TRUTH)
        assert (err.boxes, err.miss, err.fp) == (2, 2.0, 0)

    def test_an_empty_image_only_has_false_positives(self) -> None:
        empty = Sample("y.png", torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64))
        err = image_error(_dets([[0, 0, 5, 5], [9, 9, 20, 20]], [1, 2], [0.6, 0.2]), empty)
        assert (err.boxes, err.miss, err.fp) == (0, 0.0, 1)


def test_capture_counts_per_image_and_per_box() -> None:
    row = capture([ImageError(2, 1.0, 1), ImageError(4, 0.5, 0)])
    assert row == pytest.approx(
        {
            "boxes_per_image": 3.0,
            "error_per_image": 1.25,
            "miss_per_image": 0.75,
            "fp_per_image": 0.5,
            "error_per_box": 2.5 / 6,
        }
    )


def test_random_range_brackets_its_mean() -> None:
    errors = {k: ImageError(k % 5, float(k % 3), k % 2) for k in range(200)}
    mean, span = random_draws(errors, 10, seed=1, draws=300)
    for name, (lo, hi) in span.items():
        assert lo <= mean[name] <= hi and lo < hi


def test_verdict_follows_the_rule() -> None:
    row = lambda misses: {"miss_per_image": misses}  # noqa: E731
    text = verdict({"density": row(2.0), "gate": row(2.5), "hua-sum": row(2.6), "hua-mean": row(2.4)})
    assert "hua-sum: 2.60" in text and "hua-sum" in text.splitlines()[0] and "does not earn" not in text.splitlines()[0]
    assert "does not earn" in text.splitlines()[1]


def test_summary_is_the_mean_over_seeds() -> None:
    quantities = dict.fromkeys(error_capture.QUANTITIES, 1.0)
    per_seed = {
        s: {
            "selectors": {"gate": {**quantities, "miss_per_image": float(s)}},
            "random_range": {q: [0.0, float(s)] for q in quantities},
        }
        for s in (1, 3)
    }
    out = summarise(per_seed)
    assert out["summary"]["gate"]["miss_per_image"] == 2.0 and out["random_range"]["miss_per_image"] == [0.0, 2.0]


def _seed_report(seed: int, misses: float, preset: str = "varied") -> dict:
    quantities = dict.fromkeys(error_capture.QUANTITIES, 1.0)
    per_seed = {
        seed: {
            "cycle0_ap50": 0.3 + seed / 1000,
            "selectors": {"gate": {**quantities, "miss_per_image": misses}},
            "random_range": {q: [0.0, misses] for q in quantities},
        }
    }
    return error_capture.report_of(preset, 40, "synchronic", per_seed)


def test_merge_joins_seeds_run_apart(tmp_path) -> None:
    parts = []
    for seed, misses in ((102, 4.0), (100, 1.0), (101, 2.5)):
        parts.append(tmp_path / f"s{seed}.json")
        parts[-1].write_text(json.dumps(_seed_report(seed, misses)))
    out = tmp_path / "all.json"
    assert error_capture.main(["--merge", *map(str, parts), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["seed_list"] == [100, 101, 102] and list(report["seeds"]) == ["100", "101", "102"]
    assert report["summary"]["gate"]["miss_per_image"] == pytest.approx(2.5)
    assert report["cycle0_ap50"] == pytest.approx(0.401)
    assert "seeds [100, 101, 102]" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("other", [_seed_report(101, 1.0, preset="uniform"), _seed_report(100, 2.0)])
def test_merge_refuses_other_settings_or_a_seed_twice(tmp_path, other) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_seed_report(100, 1.0)))
    (tmp_path / "b.json").write_text(json.dumps(other))
    argv = ["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "all.json")]
    with pytest.raises(SystemExit, match="differ in preset|more than one report"):
        error_capture.main(argv)
    assert not (tmp_path / "all.json").exists()


@pytest.mark.slow
def test_tiny_run_end_to_end(tmp_path) -> None:
    out = tmp_path / "capture.json"
    argv = [
        "--preset",
        "tiny",
        "--seeds",
        "100",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
        "--strategies",
        "random",
        "density",
        "gate",
        "hua-sum",
        "hua-mean",
        "--threads",
        "1",
    ]
    assert error_capture.main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"random", "density", "gate", "hua-sum", "hua-mean"}
    assert set(report["random_range"]) == set(error_capture.QUANTITIES)
    assert report["summary"]["random"]["boxes_per_image"] > 0
    assert "| gate |" in out.with_suffix(".md").read_text()
    cached = list((tmp_path / "cache" / "models").glob("cycle0-*.pt"))
    assert len(cached) == 1  # the cycle-0 training is kept
    before = cached[0].stat().st_mtime_ns
    assert error_capture.main(argv) == 0  # and reused, not trained again
    assert cached[0].stat().st_mtime_ns == before and json.loads(out.read_text())["summary"] == report["summary"]

"""The benchmarks run end to end on a tiny configuration and report what they should.

Only the structure of what they print and return is checked (ratios finite and
positive, P as HUA's gate computes it, the ranked /predict answered from the
stored ranking); never a timing.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import bench_hua, bench_train_step
from model.hua import HUAConfig, num_candidates

pytestmark = pytest.mark.slow


def _positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_hua_tiny(tmp_path, capsys):
    out = tmp_path / "hua.json"
    result = bench_hua.main([
        "--n", "4", "--repeats", "1", "--predict-tasks", "50", "--image-size", "64x48", "--weights", "none",
        "--batch-size", "2", "--aggregate-n", "1000", "--out", str(out),
    ])
    printed = capsys.readouterr().out

    expected_p = num_candidates(4, HUAConfig(retrieval_fraction=0.5, min_candidates=0))
    assert expected_p == 2
    assert result["N"] == 4 and result["P"] == expected_p
    assert "N=4 P=2" in printed
    scoring = result["scoring"]
    assert scoring["forward_passes"] == {"a": 4, "b": 6, "c": 20}
    for clock in ("wall", "cpu"):
        assert all(_positive(scoring[clock]["median_s"][step]) for step in "abc")
        assert _positive(scoring[clock]["b_over_a"]) and _positive(scoring[clock]["c_over_b"])
    assert scoring["b_over_a_goal"] == pytest.approx(1 + 2 / 4 + 0.1)
    assert isinstance(scoring["b_over_a_met"], bool) and isinstance(scoring["c_over_b_met"], bool)
    assert "b/a =" in printed and "c/b =" in printed

    assert result["aggregation"]["N"] == 1000 and _positive(result["aggregation"]["median_s"])
    predict = result["predict"]
    assert predict["tasks"] == 50  # every task checked against the stored ranking inside the run
    assert _positive(predict["cold_s"]) and _positive(predict["warm_median_s"])
    assert predict["limit_s"] == 100.0
    assert "/predict 50 ranked" in printed

    written = json.loads(out.read_text())
    assert written["P"] == 2 and written["predict"]["tasks"] == 50


def test_bench_train_step_tiny(tmp_path, capsys):
    out = tmp_path / "step.json"
    result = bench_train_step.main([
        "--weights", "none", "--batch-size", "1", "--image-size", "64x48", "--repeats", "1",
        "--sampled-rois", "32", "--out", str(out),
    ])
    printed = capsys.readouterr().out

    assert result["same_start"] is True
    for kind in ("standard", "synchronic"):
        assert _positive(result["median_s"][kind]["wall"]) and _positive(result["median_s"][kind]["cpu"])
        assert len(result["samples"][kind]["wall"]) == 1
    assert _positive(result["ratio"]["wall"]) and _positive(result["ratio"]["cpu"])
    assert isinstance(result["met"], bool) and result["goal"] == 1.15
    if result["device"] == "cpu":
        for kind in ("standard", "synchronic"):
            assert result["memory"][kind]["step_peak_bytes"] > 0
            assert result["memory"][kind]["process_max_rss_bytes"] > 0
    assert _positive(result["memory_ratio"])
    assert "synchronic / standard" in printed and "goal synchronic/standard <= 1.15" in printed
    assert json.loads(out.read_text())["ratio"]["wall"] == pytest.approx(result["ratio"]["wall"])

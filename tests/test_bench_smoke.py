"""The benchmarks run end to end on a tiny configuration and report what they should.

Only the structure of what they print and return is checked (ratios finite and
positive, P as HUA's gate computes it, the ranked /predict answered from the
stored ranking); never a timing.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import bench_backbones, bench_hua, bench_predict, bench_rank_shards, bench_train_step, gpu_check
from model.hua import HUAConfig, num_candidates

pytestmark = pytest.mark.slow


def _positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_bench_hua_tiny(tmp_path, capsys):
    out = tmp_path / "hua.json"
    result = bench_hua.main(
        [
            "--n",
            "4",
            "--repeats",
            "1",
            "--predict-tasks",
            "50",
            "--image-size",
            "64x48",
            "--weights",
            "none",
            "--batch-size",
            "2",
            "--aggregate-n",
            "1000",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out

    expected_p = num_candidates(4, HUAConfig(retrieval_fraction=0.5, min_candidates=0))
    assert expected_p == 2
    assert result["N"] == 4 and result["P"] == expected_p
    assert "N=4 P=2" in printed
    scoring = result["scoring"]
    assert scoring["forward_passes"] == {"a": 4, "b": 6, "c": 20, "d": 6}
    for clock in ("wall", "cpu"):
        assert all(_positive(scoring[clock]["median_s"][step]) for step in "abcd")
        assert all(_positive(scoring[clock][f"{step}_over_{base}"]) for step, base in ("ba", "cb", "db"))
    assert scoring["diversity_window"] == 4 and isinstance(scoring["d_over_b_met"], bool)
    assert scoring["b_over_a_goal"] == pytest.approx(1 + 2 / 4 + 0.1)
    assert isinstance(scoring["b_over_a_met"], bool) and isinstance(scoring["c_over_b_met"], bool)
    assert "b/a =" in printed and "c/b =" in printed and "d/b =" in printed

    assert result["aggregation"]["N"] == 1000 and _positive(result["aggregation"]["median_s"])
    predict = result["predict"]
    assert predict["tasks"] == 50  # every task checked against the stored ranking inside the run
    assert _positive(predict["cold_s"]) and _positive(predict["warm_median_s"])
    assert predict["limit_s"] == 100.0
    assert "/predict 50 ranked" in printed

    written = json.loads(out.read_text())
    assert written["P"] == 2 and written["predict"]["tasks"] == 50


def test_bench_predict_tiny(tmp_path, capsys):
    """The backend under gunicorn, as the README's command starts it, against the bare forward pass."""
    out = tmp_path / "predict.json"
    result = bench_predict.main(
        ["--batch-sizes", "1", "2", "--repeats", "1", "--warmup", "0", "--image-size", "48x64", "--out", str(out)]
    )
    assert [row["batch_size"] for row in result["rows"]] == [1, 2]
    assert all(math.isfinite(row["overhead_pct"]) for row in result["rows"])
    assert "/predict overhead" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))


def test_bench_train_step_tiny(tmp_path, capsys):
    out = tmp_path / "step.json"
    result = bench_train_step.main(
        [
            "--weights",
            "none",
            "--batch-size",
            "1",
            "--image-size",
            "64x48",
            "--repeats",
            "1",
            "--sampled-rois",
            "32",
            "--out",
            str(out),
        ]
    )
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


def test_bench_backbones_tiny(tmp_path, capsys):
    out = tmp_path / "backbones.json"
    result = bench_backbones.main(["--size", "64", "--batch-size", "1", "--repeats", "1", "--out", str(out)])
    assert list(result["backbones"]) == ["mobilenet_v2_fpn", "mobilenet_v2_fpn_stride8"]
    assert result["backbones"]["mobilenet_v2_fpn"]["ratio"] == 1.0
    assert all(_positive(f["cpu_s"]) and _positive(f["ratio"]) for f in result["backbones"].values())
    assert json.loads(out.read_text()) == result
    assert "/ mobilenet_v2_fpn" in capsys.readouterr().out


def test_gpu_check_smoke(tmp_path, capsys):
    """The GPU check's four parts, at tiny sizes on the CPU, so that they keep working between GPU runs."""
    out = tmp_path / "gpu.json"
    result = gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out)])
    printed = capsys.readouterr().out

    assert result["device"] == "cpu" and result["device_name"] in printed
    inference = result["inference"]
    assert [(r["mode"], r["batch_size"]) for r in inference["rows"]] == [
        ("fp32", 1),
        ("fp32", 2),
    ]  # no autocast on a CPU
    assert all(_positive(r[k]) for r in inference["rows"] for k in ("ours_images_per_s", "bare_images_per_s", "ratio"))
    assert inference["same_detections"] is True  # ours and torchvision's twin are the same model
    assert result["train_step"]["same_start"] is True and _positive(result["train_step"]["ratio"]["wall"])
    torchrun = result["torchrun"]
    assert (torchrun["processes"], torchrun["steps"], torchrun["trained"], torchrun["in_sync"]) == (1, 2, True, True)
    hua = result["hua"]
    assert (hua["N"], hua["P"], hua["forward_passes"]) == (8, 4, {"a": 8, "b": 12})  # no CALD step
    assert _positive(hua["wall"]["b_over_a"])
    for section in ("(a) inference", "(b) one training step", "(c) torchrun", "(d) HUA scoring", "gpu_check on"):
        assert section in printed
    written = json.loads(out.read_text())
    assert written["torchrun"]["steps"] == 2 and written["complete"] is True


def test_bench_load_tiny(tmp_path, capsys):
    """Two clients for two seconds: every route answered as expected, the RSS sampled before and after."""
    from bench import bench_load

    out = tmp_path / "load.json"
    bench_load.main(
        [
            "--clients",
            "2",
            "--seconds",
            "2",
            "--bad-every",
            "2",
            "--image-size",
            "64x48",
            "--threads",
            "8",
            "--out",
            str(out),
        ]
    )
    assert "/health" in capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {row["route"]: row for row in result["rows"]}
    assert {"/health", "/webhook", "/predict (good)"} <= set(rows)
    assert all(row["errors"] == 0 and row["calls"] >= 1 for row in rows.values())
    assert len(result["rss"]) >= 2 and all(result["rss"][0][1].values())


def test_bench_rank_shards_tiny(tmp_path, capsys):
    """One process against 2 shard workers over 16 tasks in shards of 8: the same scores, finite figures."""
    out = tmp_path / "rank_shards.json"
    args = ["--tasks", "16", "--shard-size", "8", "--batch-size", "4", "--size", "64x48", "--out", str(out)]
    result = bench_rank_shards.main(args)
    assert result["same_scores"] is True and result["shards"] == 4  # 2 first-pass, 2 mirrored (P = 16)
    assert all(_positive(result[k]) for k in ("one_process_s", "sharded_s", "cpu_overhead", "per_image_cpu_s"))
    assert json.loads(out.read_text())["tasks"] == 16
    assert "same task scores" in capsys.readouterr().out

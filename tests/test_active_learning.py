"""The active-learning benchmark (bench/active_learning): data, strategies, loop, report.

The simulation runs on the ``tiny`` preset (a dozen 96-pixel scenes, an untrained
backbone, one cycle) for every strategy; the numbers it produces mean nothing,
the mechanics are what is tested.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.active_learning import configs, dataset, report
from bench.active_learning.loop import Row, RunSpec, completed, initial_set, read_rows, run_all
from bench.active_learning.strategies import (
    STRATEGIES,
    CALDConfig,
    PoolView,
    StrategySettings,
    cald_consistency,
    class_profile,
    rotate_view,
    select,
)
from model.detections import Detections
from model.detector import Detector

TINY = configs.tiny()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dataset.BenchDataset:
    return dataset.digit_scenes_dataset(TINY.digits, tmp_path_factory.mktemp("scenes"))


class TestDigitScenes:
    def test_same_seed_same_bytes(self, tmp_path: Path) -> None:
        config = dataset.DigitScenesConfig(image_size=64, pool_images=5, test_images=3, min_scale=16, max_scale=32)
        a = dataset.write_digit_scenes(config, tmp_path / "a")
        b = dataset.write_digit_scenes(config, tmp_path / "b")
        for name in ("pool.json", "test.json", "images/pool_00004.png", "images/test_00002.png"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name

    def test_other_seed_other_scenes(self, tmp_path: Path) -> None:
        config = dataset.DigitScenesConfig(image_size=64, pool_images=3, test_images=1, min_scale=16, max_scale=32)
        a = dataset.write_digit_scenes(config, tmp_path / "a")
        b = dataset.write_digit_scenes(replace(config, seed=1), tmp_path / "b")
        assert (a / "pool.json").read_text() != (b / "pool.json").read_text()

    def test_coco_json_loads_with_pycocotools(self, tmp_path: Path) -> None:
        from pycocotools.coco import COCO

        config = dataset.DigitScenesConfig(image_size=64, pool_images=6, test_images=2, min_scale=16, max_scale=32)
        folder = dataset.write_digit_scenes(config, tmp_path)
        coco = COCO(str(folder / "pool.json"))
        assert len(coco.getImgIds()) == 6
        assert sorted(coco.getCatIds()) == list(range(1, 11))
        anns = coco.loadAnns(coco.getAnnIds())
        assert anns, "scenes must hold digits"
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
            assert ann["iscrowd"] == 0 and ann["area"] == pytest.approx(w * h)
        assert "CC BY-SA 3.0" in json.dumps(coco.dataset["info"]) + json.dumps(coco.dataset["licenses"])

    def test_loaded_as_samples(self, tiny_data: dataset.BenchDataset) -> None:
        assert tiny_data.labels == tuple(str(d) for d in range(10))
        assert len(tiny_data.pool) == TINY.digits.pool_images and len(tiny_data.test) == TINY.digits.test_images
        sample = tiny_data.pool[0]
        assert Path(sample.image_path).exists()
        assert sample.boxes.shape == (sample.labels.numel(), 4)
        assert int(sample.labels.min()) >= 1 and int(sample.labels.max()) <= 10

    def test_pool_and_test_use_disjoint_digits(self) -> None:
        _, labels = dataset.load_digits()
        pool, test = dataset._split_digits(labels, seed=0)
        assert not set(pool.tolist()) & set(test.tolist())
        assert len(pool) + len(test) == len(labels)

    def test_class_frequencies_are_skewed(self) -> None:
        import numpy as np

        freq = dataset.class_frequencies(10, 8.0, np.random.default_rng(0))
        assert freq.sum() == pytest.approx(1.0)
        assert freq.max() / freq.min() == pytest.approx(8.0)

    def test_voc_loader_reads_a_devkit(self, tmp_path: Path) -> None:
        from PIL import Image

        voc = tmp_path / "VOCdevkit" / "VOC2007"
        for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (voc / folder).mkdir(parents=True)
        Image.new("RGB", (50, 40)).save(voc / "JPEGImages" / "000001.jpg")
        (voc / "ImageSets/Main/trainval.txt").write_text("000001\n")
        (voc / "Annotations" / "000001.xml").write_text(
            "<annotation><filename>000001.jpg</filename>"
            "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin>"
            "<xmax>30</xmax><ymax>20</ymax></bndbox></object>"
            "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
            "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
        )
        (sample,) = dataset.load_voc(tmp_path, "2007", "trainval")
        assert sample.boxes.tolist() == [[0.0, 1.0, 30.0, 20.0]]
        assert sample.labels.tolist() == [dataset.VOC_CLASSES.index("dog") + 1]


def _view(data: dataset.BenchDataset, labeled: list[int], budget: int, detector: Detector) -> PoolView:
    unlabeled = [i for i in range(len(data.pool)) if i not in set(labeled)]
    return PoolView(detector, data.pool, labeled, unlabeled, budget, len(data.labels), seed=3, batch_size=4)


@pytest.fixture(scope="module")
def tiny_detector(tiny_data: dataset.BenchDataset) -> Detector:
    from bench.active_learning.loop import fresh_model

    model = fresh_model(TINY.simulation, TINY.simulation.detector.loss, tiny_data.labels, seed=0)
    return Detector(model.eval(), tiny_data.labels, torch.device("cpu"))


@pytest.mark.slow
class TestStrategiesSelectValidBatches:
    @pytest.mark.parametrize("name", sorted(STRATEGIES))
    def test_within_budget_and_unlabeled(self, name: str, tiny_data, tiny_detector) -> None:
        labeled = [0, 2, 5, 7]
        view = _view(tiny_data, labeled, budget=3, detector=tiny_detector)
        picked = select(name, view, TINY.simulation.strategies)
        assert len(picked) == 3 and len(set(picked)) == 3
        assert not set(picked) & set(labeled)
        assert set(picked) <= set(range(len(tiny_data.pool)))

    @pytest.mark.parametrize("name", sorted(STRATEGIES))
    def test_budget_larger_than_the_pool(self, name: str, tiny_data, tiny_detector) -> None:
        labeled = list(range(len(tiny_data.pool) - 2))
        picked = select(name, _view(tiny_data, labeled, budget=5, detector=tiny_detector), TINY.simulation.strategies)
        assert sorted(picked) == [len(tiny_data.pool) - 2, len(tiny_data.pool) - 1]

    def test_select_refuses_a_labeled_pick(self, tiny_data, tiny_detector, monkeypatch) -> None:
        from bench.active_learning import strategies

        monkeypatch.setitem(strategies.STRATEGIES, "random", lambda view, settings: [view.labeled[0]])
        with pytest.raises(RuntimeError, match="invalid selection"):
            select("random", _view(tiny_data, [0, 1], 2, tiny_detector), StrategySettings())


def _detections(boxes: list[list[float]], probs: list[list[float]]) -> Detections:
    p = torch.tensor(probs)
    return Detections(
        boxes=torch.tensor(boxes), labels=p[:, 1:].argmax(1) + 1, scores=p[:, 1:].amax(1), probs=p,
        sigmas=torch.zeros(len(boxes), 4), top_probs=p, width=100, height=100,
    )


class TestCALDParts:
    def test_consistency_of_identical_detections(self) -> None:
        ref = _detections([[10, 10, 40, 40]], [[0.1, 0.9, 0.0]])
        # IoU 1 + (1 - 0) * 0.9 = 1.9, |1.9 - 1.3| = 0.6
        assert cald_consistency(ref, ref.boxes, ref, base_point=1.3) == pytest.approx(0.6)

    def test_no_augmented_detection_is_least_consistent(self) -> None:
        ref = _detections([[10, 10, 40, 40]], [[0.1, 0.9, 0.0]])
        empty = Detections.empty(2, 100, 100)
        assert cald_consistency(ref, ref.boxes, empty, base_point=1.3) == 0.0

    def test_class_profile_keeps_the_best_score_per_class(self) -> None:
        det = _detections([[0, 0, 5, 5], [10, 10, 20, 20], [30, 30, 40, 40]],
                          [[0.2, 0.8, 0.0], [0.4, 0.6, 0.0], [0.3, 0.0, 0.7]])
        assert class_profile(det, 2).tolist() == pytest.approx([0.8, 0.7])

    def test_rotated_boxes_follow_the_ink(self) -> None:
        image = torch.zeros(3, 100, 140)
        image[:, 20:40, 70:120] = 1.0
        out, boxes = rotate_view(image, torch.tensor([[70.0, 20.0, 120.0, 40.0]]), random.Random(0),
                                 CALDConfig(rotate_degrees=30))
        ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
        ink = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert boxes[0].tolist() == pytest.approx(ink, abs=1.5)


class TestReport:
    @staticmethod
    def _rows() -> list[Row]:
        rows = []
        curves = {"random": [0.2, 0.3, 0.4], "hua": [0.2, 0.4, 0.5]}
        for strategy, values in curves.items():
            for seed, shift in ((0, 0.0), (1, 0.02)):
                for cycle, value in enumerate(values):
                    rows.append(Row(strategy, "synchronic", seed, cycle, 10 + 10 * cycle, 40, value + shift,
                                    value / 2, 1.0, 0.5, 0.2 if cycle < 2 else 0.0))
        return rows

    def test_labeled_to_reach_interpolates(self) -> None:
        assert report.labeled_to_reach([10, 20, 30], [0.2, 0.4, 0.5], 0.3) == pytest.approx(15.0)
        assert report.labeled_to_reach([10, 20, 30], [0.2, 0.4, 0.5], 0.1) == 10.0
        assert report.labeled_to_reach([10, 20, 30], [0.2, 0.4, 0.5], 0.6) is None

    def test_comparison_with_random(self) -> None:
        (cmp,) = report.comparisons(report.curves(self._rows()))
        assert cmp.curve.strategy == "hua" and cmp.baseline.strategy == "random"
        assert cmp.cycles_at_or_above == 3
        assert cmp.diff_mean == pytest.approx([0.0, 0.1, 0.1])
        # random ends at mean 0.41 with 30 images; hua's mean curve (0.21, 0.41, 0.51) gets there at 20
        assert cmp.reach == pytest.approx(20.0) and cmp.reach_pct == pytest.approx(100 * 20 / 30)

    def test_markdown_and_plot(self, tmp_path: Path) -> None:
        rows = self._rows()
        text = report.markdown(rows, "t", ["pre"], "p.png")
        assert "| 0 | 10 | 21.0 ± 1.4 | 21.0 ± 1.4 |" in text
        assert "hua + synchronic | random + synchronic | 3/3 cycles" in text
        assert "![AP50 against labeled images](p.png)" in text
        png = report.plot(rows, tmp_path / "p.png", "t")
        assert png.read_bytes()[:4] == b"\x89PNG"


class TestLoopBookkeeping:
    def test_initial_set_is_shared_and_seeded(self) -> None:
        assert initial_set(50, 5, seed=1) == initial_set(50, 5, seed=1)
        assert initial_set(50, 5, seed=1) != initial_set(50, 5, seed=2)
        with pytest.raises(ValueError):
            initial_set(3, 5, seed=0)

    def test_csv_round_trip_and_completed_runs(self, tmp_path: Path) -> None:
        from bench.active_learning.loop import write_rows

        rows = TestReport._rows()[:3] + TestReport._rows()[3:5]  # seed 1 of random lacks its last cycle
        write_rows(tmp_path / "r.csv", rows)
        assert read_rows(tmp_path / "r.csv") == sorted(rows, key=lambda r: (r.strategy, r.loss, r.seed, r.cycle))
        assert completed(rows, cycles=2) == {("random", "synchronic", 0)}

    def test_unknown_names_are_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown strategy"):
            RunSpec("magic", "synchronic", 0)
        with pytest.raises(ValueError):
            RunSpec("hua", "focal", 0)


@pytest.mark.slow
class TestSimulation:
    def test_one_cycle_of_every_strategy(self, tiny_data: dataset.BenchDataset, tmp_path: Path) -> None:
        specs = TINY.specs()
        rows = run_all(specs, tiny_data, TINY.simulation, tmp_path / "results.csv")
        assert len(rows) == len(specs) * 2
        sim = TINY.simulation
        for row in rows:
            assert row.labeled == sim.initial + row.cycle * sim.budget
            assert 0.0 <= row.ap50 <= 1.0 and 0.0 <= row.ap <= 1.0
            assert (row.select_s > 0) == (row.cycle < sim.cycles)
        with (tmp_path / "results.csv").open() as handle:
            assert len(list(csv.DictReader(handle))) == len(rows)
        first = {(r.strategy, r.loss): r for r in rows if r.cycle == 0}
        # the same seed gives every strategy the same first set and, with the same loss, the same model
        assert len({(r.ap50, r.ap) for (s, loss), r in first.items() if loss == "synchronic"}) == 1

    def test_resume_keeps_complete_runs(self, tiny_data, tmp_path: Path, monkeypatch) -> None:
        from bench.active_learning import loop

        spec = RunSpec("random", "standard", 0)
        config = replace(TINY.simulation, cycles=0)
        run_all([spec], tiny_data, config, tmp_path / "r.csv")
        monkeypatch.setattr(loop, "simulate", lambda *a, **k: pytest.fail("a complete run was run again"))
        rows = run_all([spec], tiny_data, config, tmp_path / "r.csv", resume=True)
        assert [(r.strategy, r.cycle) for r in rows] == [("random", 0)]


@pytest.mark.slow
def test_command_line_writes_every_output(tmp_path: Path, monkeypatch) -> None:
    from bench.active_learning import __main__ as cli

    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path / "published")
    out = tmp_path / "out"
    assert cli.main(["--config", "tiny", "--out", str(out), "--cache", str(tmp_path / "cache"),
                     "--runs", "random:synchronic", "hua:synchronic", "--cycles", "1", "--publish"]) == 0
    for name in ("results.csv", "report.md", "ap50.png", "summary.json", "meta.json"):
        assert (out / name).exists(), name
    text = (out / "report.md").read_text()
    assert "hua + synchronic" in text and "Against random" in text
    published = tmp_path / "published"
    assert (published / "active_learning_tiny.png").exists()
    assert "](active_learning_tiny.png)" in (published / "active_learning_tiny.md").read_text()
    assert read_rows(published / "active_learning_tiny.csv") == read_rows(out / "results.csv")
    # the report can be rebuilt from the CSV alone
    (out / "report.md").unlink()
    assert cli.main(["--config", "tiny", "--out", str(out), "--cache", str(tmp_path / "cache"), "--report-only"]) == 0
    assert "hua + synchronic" in (out / "report.md").read_text()


def test_missing_weights_are_an_error_not_a_fallback(tiny_data) -> None:
    from bench.active_learning.loop import fresh_model

    imagenet = replace(TINY.simulation, detector=replace(TINY.simulation.detector, weights="imagenet"))
    with pytest.raises(RuntimeError, match="weights unavailable"):  # the tests' TORCH_HOME is empty
        fresh_model(imagenet, imagenet.detector.loss, tiny_data.labels, seed=0)

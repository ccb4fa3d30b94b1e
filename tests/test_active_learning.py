"""The active-learning benchmark (bench/active_learning): data, warm start, strategies, loop, report.

The simulation runs on the ``tiny`` preset (a dozen 96-pixel scenes, a warm
start of two steps from an untrained backbone, one cycle) for every strategy;
the numbers it produces mean nothing, the mechanics are what is tested. The
report is tested on constructed rows whose answers are worked out by hand.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.active_learning import configs, dataset, pretrain, report, workers
from bench.active_learning.loop import Row, RunSpec, Step, initial_set, plan
from bench.active_learning.storage import read_rows, resumable, write_rows
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
from bench.active_learning.workers import run_all
from model.detections import Detections
from model.detector import Detector

TINY = configs.tiny()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dataset.BenchDataset:
    return dataset.digit_scenes_dataset(TINY.digits, tmp_path_factory.mktemp("scenes"))


def _row(
    strategy: str,
    loss: str,
    seed: int,
    cycle: int,
    ap50: float,
    boxes: int = 0,
    labeled: int = 0,
    picked: tuple[int, ...] = (),
) -> Row:
    return Row(
        strategy,
        loss,
        seed,
        cycle,
        labeled or 40 * (cycle + 1),
        boxes,
        ap50,
        ap50 / 2,
        1.0,
        0.5,
        0.2 if picked else 0.0,
        100,
        picked,
    )


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

    def test_held_back_pool_and_test_digits_are_disjoint(self) -> None:
        _, labels = dataset.load_digits()
        split = dataset._split_digits(labels, seed=0, pretrain_share=0.3)
        held, pool, test = (set(split[k].tolist()) for k in ("pretrain", "pool", "test"))
        assert not held & pool and not held & test and not pool & test
        assert len(held) + len(pool) + len(test) == len(labels)
        assert len(held) == int(0.3 * len(labels)) and len(test) == len(labels) - int(0.8 * len(labels))

    def test_pretrain_scenes_are_one_class_and_one_set_for_every_seed(self, tmp_path: Path) -> None:
        config = dataset.DigitScenesConfig(
            image_size=64,
            pool_images=2,
            test_images=1,
            pretrain_images=3,
            pretrain_share=0.3,
            min_scale=16,
            max_scale=32,
        )
        names, samples = dataset.pretrain_scenes(config, tmp_path)
        assert names == (dataset.PRETRAIN_LABEL,) and len(samples) == 3
        assert all(set(s.labels.tolist()) <= {1} for s in samples) and any(s.labels.numel() for s in samples)
        again = dataset.pretrain_scenes(replace(config, seed=4, pool_images=9), tmp_path)[1]
        assert [s.image_path for s in again] == [s.image_path for s in samples]

    def test_each_seed_has_its_own_scenes_from_one_split(self, tmp_path: Path) -> None:
        config = dataset.DigitScenesConfig(
            image_size=64, pool_images=2, test_images=1, pretrain_share=0.3, min_scale=16, max_scale=32
        )
        a = dataset.prepare_digit_scenes(config, tmp_path)
        b = dataset.prepare_digit_scenes(replace(config, seed=1), tmp_path)
        assert a != b and (a / "pool.json").read_text() != (b / "pool.json").read_text()

    def test_pretraining_needs_held_back_digits(self, tmp_path: Path) -> None:
        config = dataset.DigitScenesConfig(image_size=64, pretrain_images=2, min_scale=16, max_scale=32)
        with pytest.raises(ValueError, match="pretrain_share"):
            dataset.write_digit_scenes(config, tmp_path, ("pretrain",))

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


#: ``varied``'s scenes at a test's size: 128 px, a 40-image pool, a 20-image test split.
VARIED_SMALL = replace(
    configs.varied().digits, image_size=128, pool_images=40, test_images=20, min_scale=8, max_scale=40, min_test_boxes=2
)


@pytest.fixture(scope="module")
def varied_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dataset.prepare_digit_scenes(VARIED_SMALL, tmp_path_factory.mktemp("varied"))


def _split(folder: Path, split: str) -> dict:
    return json.loads((folder / f"{split}.json").read_text())


def _boxes_by_image(doc: dict) -> dict[int, list[list[float]]]:
    boxes: dict[int, list[list[float]]] = {im["id"]: [] for im in doc["images"]}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append([x, y, x + w, y + h])
    return boxes


class TestVariedScenes:
    """The pool of docs/method.md, section 7 (``DigitScenesConfig``'s later fields), and ``uniform``
    unchanged by them."""

    def test_uniform_scenes_are_unchanged(self, tmp_path: Path) -> None:
        import hashlib

        import numpy as np
        from PIL import Image

        # captured before the varied fields existed: the cached scenes and the warm start keep their names
        assert configs.uniform().digits.fingerprint() == "2a6efde521"
        assert configs.uniform().digits.pretrain_fingerprint() == "41e3f3b73d"
        config = dataset.DigitScenesConfig(
            image_size=64,
            pool_images=3,
            test_images=2,
            pretrain_images=2,
            pretrain_share=0.3,
            min_digits=2,
            max_digits=5,
            min_scale=16,
            max_scale=40,
            class_skew=2.0,
        )
        folder = dataset.write_digit_scenes(config, tmp_path, ("pool", "test", "pretrain"))
        digest = hashlib.sha256()
        for path in sorted((folder / "images").glob("*.png")):
            digest.update(np.asarray(Image.open(path)).tobytes())
        for split in ("pool", "test", "pretrain"):
            digest.update(json.dumps(_split(folder, split)["annotations"]).encode())
        assert (config.fingerprint(), digest.hexdigest()[:16]) == ("3c2aedcb32", "45e63a4f08f9d4f4")

    def test_geometric_object_count(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        counts = np.array([dataset._digit_count(VARIED_SMALL, rng) for _ in range(4000)])
        assert counts.min() == 1 and counts.max() <= 12
        share = np.bincount(counts, minlength=13)[1:] / len(counts)
        assert share[1] / share[0] == pytest.approx(0.7, abs=0.07)
        assert share[2] / share[1] == pytest.approx(0.7, abs=0.1)
        assert counts.mean() == pytest.approx(3.1, abs=0.2)

    def test_placed_objects_per_image(self, varied_folder: Path) -> None:
        for split in ("pool", "test"):
            assert all(len(b) <= 12 for b in _boxes_by_image(_split(varied_folder, split)).values())

    def test_zipf_class_shares(self) -> None:
        import numpy as np

        freq = dataset.zipf_frequencies(10, 1.2, np.random.default_rng(0))
        ranked = np.sort(freq)[::-1]
        expected = np.arange(1, 11) ** -1.2
        assert ranked == pytest.approx(expected / expected.sum())
        assert ranked[0] == pytest.approx(0.405, abs=0.005) and ranked[0] / ranked[-1] == pytest.approx(10**1.2)
        other = dataset.zipf_frequencies(10, 1.2, np.random.default_rng(1))
        assert np.argmax(freq) != np.argmax(other) or not np.array_equal(np.argsort(freq), np.argsort(other))

    def test_pool_follows_its_seeds_class_order(self, varied_folder: Path) -> None:
        weights = dataset._class_weights(VARIED_SMALL, VARIED_SMALL.seed)
        boxes = dataset.scene_statistics(_split(varied_folder, "pool"))["class_boxes"]
        head, tail = int(weights.argmax()), int(weights.argmin())
        assert boxes[head] > boxes[tail]

    def test_overlap_at_most_max_overlap(self, varied_folder: Path) -> None:
        for split in ("pool", "test"):
            for boxes in _boxes_by_image(_split(varied_folder, split)).values():
                for i, a in enumerate(boxes):
                    assert all(dataset._box_iou(a, b) <= 0.5 + 1e-9 for b in boxes[i + 1 :])

    def test_near_duplicate_groups_in_the_pool_only(self, varied_folder: Path) -> None:
        pool, test = _split(varied_folder, "pool"), _split(varied_folder, "test")
        stats = dataset.scene_statistics(pool)
        assert stats["grouped"] == 12 and 1 <= stats["groups"] <= 2  # 30 % of 40 in groups of 5-10
        assert dataset.scene_statistics(test)["groups"] == 0
        boxes, labels = _boxes_by_image(pool), {}
        for a in pool["annotations"]:
            labels.setdefault(a["image_id"], []).append(a["category_id"])
        members: dict[int, list[int]] = {}
        for im in pool["images"]:
            if im["duplicate_group"] is not None:
                members.setdefault(im["duplicate_group"], []).append(im["id"])
        for ids in members.values():
            assert 5 <= len(ids) <= 10 and ids == list(range(ids[0], ids[0] + len(ids)))  # a burst
            first = boxes[ids[0]]
            for other in ids[1:]:
                assert labels.get(other) == labels.get(ids[0])
                shift = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(first, boxes[other])}
                assert len(shift) <= 1 and all(abs(dx) <= 8 and abs(dy) <= 8 for dx, dy in shift)

    def test_hard_share(self, varied_folder: Path) -> None:
        for split, count in (("pool", 40), ("test", 20)):
            assert dataset.scene_statistics(_split(varied_folder, split))["hard"] == round(0.15 * count)

    def test_every_class_has_its_test_boxes(self, varied_folder: Path, tmp_path: Path) -> None:
        assert min(dataset.scene_statistics(_split(varied_folder, "test"))["class_boxes"]) >= 2
        impossible = replace(VARIED_SMALL, pool_images=0, test_images=2, min_test_boxes=50)
        with pytest.raises(RuntimeError, match="under 50 boxes"):
            dataset.write_digit_scenes(impossible, tmp_path)

    def test_statistics_section(self, varied_folder: Path) -> None:
        text = dataset.statistics_markdown({VARIED_SMALL.seed: varied_folder})
        assert "### The scenes" in text and "| 0 | pool | 40 |" in text and "| 0 | test | 20 |" in text

    def test_warm_is_uniforms_former_name(self, tmp_path: Path) -> None:
        from bench.active_learning import __main__ as cli

        config = cli.build_config(cli.parse_args(["--preset", "warm", "--out", str(tmp_path)]))
        assert config.name == "uniform" and configs.PUBLISHED_AS[config.name] == "warm"
        assert cli.build_config(cli.parse_args(["--config", "varied", "--out", str(tmp_path)])).name == "varied"


def _view(data: dataset.BenchDataset, labeled: list[int], budget: int, detector: Detector) -> PoolView:
    unlabeled = [i for i in range(len(data.pool)) if i not in set(labeled)]
    return PoolView(detector, data.pool, labeled, unlabeled, budget, len(data.labels), seed=3, batch_size=4)


@pytest.fixture(scope="module")
def tiny_detector(tiny_data: dataset.BenchDataset) -> Detector:
    from bench.active_learning.loop import fresh_model

    model = fresh_model(TINY.simulation, tiny_data.labels, seed=0)
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
        boxes=torch.tensor(boxes),
        labels=p[:, 1:].argmax(1) + 1,
        scores=p[:, 1:].amax(1),
        probs=p,
        sigmas=torch.zeros(len(boxes), 4),
        width=100,
        height=100,
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
        det = _detections(
            [[0, 0, 5, 5], [10, 10, 20, 20], [30, 30, 40, 40]], [[0.2, 0.8, 0.0], [0.4, 0.6, 0.0], [0.3, 0.0, 0.7]]
        )
        assert class_profile(det, 2).tolist() == pytest.approx([0.8, 0.7])

    def test_rotated_boxes_follow_the_ink(self) -> None:
        image = torch.zeros(3, 100, 140)
        image[:, 20:40, 70:120] = 1.0
        out, boxes = rotate_view(
            image, torch.tensor([[70.0, 20.0, 120.0, 40.0]]), random.Random(0), CALDConfig(rotate_degrees=30)
        )
        ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)
        ink = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert boxes[0].tolist() == pytest.approx(ink, abs=1.5)


class TestReport:
    """Three seeds, five cycles; random's AP50 at seed k is its cycle value + (k - 1) / 100."""

    RANDOM = (0.30, 0.40, 0.46, 0.50, 0.52)
    #: hua - random per cycle and seed: cycle 1 has mean 0.02 and standard deviation 0.01
    HUA_DIFF = ((0.0, 0.0, 0.0), (0.01, 0.02, 0.03), (0.02, 0.02, 0.02), (-0.02, -0.01, 0.0), (0.03, 0.03, 0.03))

    @classmethod
    def _rows(cls) -> list[Row]:
        rows = []
        for seed in range(3):
            for cycle, value in enumerate(cls.RANDOM):
                base = value + (seed - 1) / 100
                rows.append(_row("random", "synchronic", seed, cycle, base, boxes=140 * (cycle + 1)))
                rows.append(
                    _row("hua", "synchronic", seed, cycle, base + cls.HUA_DIFF[cycle][seed], boxes=140 + 160 * cycle)
                )
        return rows

    def test_labeled_to_reach_interpolates(self) -> None:
        assert report.labeled_to_reach([10, 20, 30], [0.2, 0.4, 0.5], 0.3) == pytest.approx(15.0)
        assert report.labeled_to_reach([10, 20, 30], [0.2, 0.4, 0.5], 0.1) == 10.0
        assert report.labeled_to_reach([10, 20, 30], [0.2, 0.4, 0.5], 0.6) is None

    def test_interval_is_students_t_over_seeds(self) -> None:
        interval = report.Interval.of([0.01, 0.02, 0.03])
        assert interval.mean == pytest.approx(0.02)
        assert interval.half == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)  # t(0.975, 2 df) = 4.303
        assert report.t_quantile(1000) == pytest.approx(1.96, abs=2e-3)
        assert math.isnan(report.Interval.of([0.5]).half)

    def test_paired_differences_against_random(self) -> None:
        (cmp,) = report.selection_comparisons(report.curves(self._rows()))
        assert (cmp.curve.name, cmp.baseline.name, cmp.seeds) == ("hua + synchronic", "random + synchronic", [0, 1, 2])
        assert [d.mean for d in cmp.diff] == pytest.approx([0.0, 0.02, 0.02, -0.01, 0.03])
        assert cmp.diff[0].half == pytest.approx(0.0) and cmp.diff[2].half == pytest.approx(0.0, abs=1e-12)
        assert cmp.diff[1].half == pytest.approx(4.303 * 0.01 / 3**0.5, rel=1e-3)

    def test_cycles_at_or_above_count_cycles_one_to_four(self) -> None:
        (cmp,) = report.selection_comparisons(report.curves(self._rows()))
        assert (cmp.at_or_above, cmp.compared) == (3, 4)  # cycle 0 is equal and not counted; cycle 3 is below

    def test_labels_and_boxes_to_reach_randoms_final_ap50(self) -> None:
        (cmp,) = report.selection_comparisons(report.curves(self._rows()))
        # random ends at 0.52 with 200 images and 700 boxes; hua's mean is 0.49 at (160, 620), 0.55 at (200, 780)
        assert (cmp.final_labeled, cmp.final_boxes) == (200, 700)
        assert cmp.reach_labeled == pytest.approx(180.0) and cmp.reach_boxes == pytest.approx(700.0)

    def test_mean_over_later_cycles(self) -> None:
        (cmp,) = report.selection_comparisons(report.curves(self._rows()))
        # per seed, the mean of its differences at cycles 1-4: 0.01, 0.015, 0.02
        assert cmp.later.mean == pytest.approx(0.015) and cmp.later.n == 3
        assert "; +3.0 [+3.0, +3.0] | +1.5 [+0.3, +2.7] | 3/4 |" in report.comparison_table([cmp])

    @staticmethod
    def _on_one_line(strategy: str, boxes: Sequence[int], seed: int) -> list[Row]:
        """A run whose AP50 is one line in its labeled boxes (the same line for every run; seeds shift it)."""
        return [
            _row(strategy, "synchronic", seed, c, 0.2 + 0.0005 * b + seed / 100, boxes=b) for c, b in enumerate(boxes)
        ]

    def test_per_box_pairs_runs_at_the_baselines_boxes(self) -> None:
        rows = []
        for seed in range(3):
            rows += self._on_one_line("random", [100, 200, 300, 400, 500], seed)
            rows += self._on_one_line("cald", [100, 300, 500, 700, 900], seed)  # busier picks
            rows += self._on_one_line("hua", [100, 150, 200, 250, 300], seed)  # sparser picks
        busy, sparse = report.selection_comparisons(report.curves(rows))
        assert busy.later.mean == pytest.approx(0.0005 * 250)  # ahead per image: 100 to 400 more boxes
        per_box = report.compare_per_box(busy)
        assert [d.mean for d in per_box.diff] == pytest.approx([0.0] * 4, abs=1e-12)
        assert per_box.later.mean == pytest.approx(0.0, abs=1e-12)
        per_box = report.compare_per_box(sparse)  # draws 300 boxes in all: random's 400 and 500 lie beyond
        assert per_box.diff[2:] == [None, None] and per_box.later.mean == pytest.approx(0.0, abs=1e-12)
        assert report.ap50_at_boxes([100, 300], [0.2, 0.4], 250) == pytest.approx(0.35)
        assert report.ap50_at_boxes([100, 300], [0.2, 0.4], 301) is None
        text = report.markdown(rows, "t")
        assert "| hua + synchronic | random + synchronic | 3 | +0.0 [+0.0, +0.0]; +0.0 [+0.0, +0.0]; " in text
        assert "beyond its boxes; beyond its boxes | +0.0 [+0.0, +0.0] |" in text
        assert report.summary_numbers(rows)["selection"]["hua + synchronic"]["per_box_diff"][2] is None

    @pytest.mark.parametrize(("shift", "outcome"), [(0.0, "synchronic"), (0.004, "synchronic"), (-0.004, "standard")])
    def test_decision_rule(self, shift: float, outcome: str) -> None:
        rows = []
        for seed in range(5):
            for cycle in range(5):
                standard = 0.3 + 0.05 * cycle + seed / 100
                # the difference alternates -0.01, +0.01 over seeds 0..3 and is 0 at seed 4, plus shift
                diff = shift + (0.01 * (-1) ** (seed + 1) if seed < 4 else 0.0)
                rows += [
                    _row("random", "standard", seed, cycle, standard),
                    _row("random", "synchronic", seed, cycle, standard + diff),
                    _row("random", "synchronic-balanced", seed, cycle, standard - 0.1),
                ]
        decision = report.decide(report.curves(rows))
        assert decision.loss == outcome and decision.cycles == 5 and decision.difference.n == 5
        assert decision.difference.mean == pytest.approx(shift, abs=1e-12)
        text = report.markdown(rows, "t", cycles=5, seeds=5)
        assert f"default LOSS is **{outcome}**." in text and "provisional" not in text
        assert "| synchronic-balanced | 5 | -10.0" in text

    def test_decision_is_provisional_until_every_seed_is_in(self) -> None:
        rows = [_row("random", loss, 0, c, 0.3) for loss in ("standard", "synchronic") for c in range(2)]
        assert "provisional: 2 cycle(s), 1 seed(s)" in report.markdown(rows, "t", cycles=5, seeds=5)

    def test_unfinished_seeds_leave_the_curve(self) -> None:
        rows = self._rows() + [_row("hua", "synchronic", 3, 0, 0.9)]
        hua = next(c for c in report.curves(rows) if c.strategy == "hua")
        assert hua.seeds == [0, 1, 2] and len(hua.labeled) == 5

    def test_markdown_and_plot(self, tmp_path: Path) -> None:
        rows = self._rows()
        text = report.markdown(rows, "t", ["pre"], "p.png")
        assert "| 0 | 40 | 30.0 ± 1.0 | 30.0 ± 1.0 |" in text
        assert "| hua + synchronic | random + synchronic | 3 | +0.0 [+0.0, +0.0]; +2.0 [-0.5, +4.5];" in text
        assert "| 3/4 | 180 (90 %) of 200 | 700 (100 %) of 700 |" in text
        assert "![AP50 against labeled images and boxes](p.png)" in text
        selected = [_row("hua", "synchronic", 0, c, 0.3, picked=(1,)) for c in range(3)]
        paused = [replace(selected[0], cycle=3, train_s=900.0, select_s=1000.0)]  # a worker suspended meanwhile
        assert "| hua + synchronic | 1.0 | 0.5 | 0.2 | 0.002 |" in report.timing_table(rows + selected + paused)
        png = report.plot(rows, tmp_path / "p.png", "t")
        assert png.read_bytes()[:4] == b"\x89PNG"


class TestHuaRules:
    """The two rules of docs/method.md, section 7, on five seeds and five cycles of synthetic curves."""

    RANDOM = (0.30, 0.40, 0.46, 0.50, 0.52)

    @classmethod
    def _rows(
        cls,
        sum_gain: float = 0.0,
        mean_gain: float = 0.0,
        mean_boxes: int = 100,
        diverse: Sequence[float] = (0.0,) * 5,
        seeds: int = 5,
    ) -> list[Row]:
        """Random draws 140 boxes a cycle, HUA (sum) 200, HUA (mean) ``mean_boxes``; the gains are added at
        cycles 1..; HUA (sum) + diversity is HUA (sum) plus ``diverse[seed]`` at cycles 1.."""
        rows = []
        for seed in range(seeds):
            for cycle, value in enumerate(cls.RANDOM):
                base, later, boxes = value + seed / 100, cycle > 0, cycle + 1
                hua = base + later * sum_gain
                rows += [
                    _row("random", "synchronic", seed, cycle, base, boxes=140 * boxes),
                    _row("hua", "synchronic", seed, cycle, hua, boxes=200 * boxes),
                    _row("hua_mean", "synchronic", seed, cycle, base + later * mean_gain, boxes=mean_boxes * boxes),
                    _row("hua_kcenter", "synchronic", seed, cycle, hua + later * diverse[seed], boxes=200 * boxes),
                ]
        return rows

    @staticmethod
    def _rules(rows: list[Row]) -> report.HuaRules:
        rules = report.hua_rules(report.curves(rows))
        assert rules is not None
        return rules

    def test_mean_wins_when_it_needs_fewer_boxes_and_sum_saves_no_images(self) -> None:
        rules = self._rules(self._rows())
        # both reach random's final 0.54 (mean over seeds) exactly at 200 images: HUA (mean) with 500 boxes,
        # HUA (sum) with 1000
        assert rules.hua_mean.reach_boxes == pytest.approx(500) and rules.hua_sum.reach_boxes == pytest.approx(1000)
        assert rules.aggregate == "mean"
        text = report.markdown(self._rows(), "t", cycles=5, seeds=5)
        assert "so HUA_AGGREGATE is **mean**." in text

    def test_sum_stays_when_it_beats_random_on_images(self) -> None:
        rules = self._rules(self._rows(sum_gain=0.03))
        assert rules.hua_sum.reach_labeled < rules.hua_sum.final_labeled
        assert rules.aggregate == "sum"

    @pytest.mark.parametrize(("mean_gain", "mean_boxes"), [(-0.05, 100), (0.0, 250)])
    def test_sum_stays_when_mean_needs_as_many_boxes_or_never_reaches(self, mean_gain: float, mean_boxes: int) -> None:
        assert self._rules(self._rows(mean_gain=mean_gain, mean_boxes=mean_boxes)).aggregate == "sum"

    @pytest.mark.parametrize(
        ("diverse", "on"),
        [
            ((0.0, 0.002, 0.004, 0.006, 0.008), True),  # mean +0.4, interval [+0.0, +0.8]
            ((-0.001,) * 5, False),  # the mean below zero
            ((-0.04, 0.04, -0.03, 0.03, 0.01), False),  # mean +0.2, lower end -4.1 < -1
        ],
    )
    def test_diversity_rule(self, diverse: tuple[float, ...], on: bool) -> None:
        rules = self._rules(self._rows(diverse=diverse))
        assert rules.diversity.mean == pytest.approx(sum(diverse) / 5)
        assert rules.diversity_on is on
        assert f"so HUA_DIVERSITY is **{'on' if on else 'off'}**." in report.markdown(
            self._rows(diverse=diverse), "t", cycles=5, seeds=5
        )
        assert report.summary_numbers(self._rows(diverse=diverse))["hua_rules"]["diversity"] is on

    def test_rules_are_provisional_until_every_seed_is_in(self) -> None:
        text = report.markdown(self._rows(seeds=3), "t", cycles=5, seeds=5)
        assert text.count("(provisional: 5 cycle(s), 3 seed(s) so far)") == 2

    def test_diversity_rule_waits_for_a_second_seed(self) -> None:
        text = report.markdown(self._rows(diverse=(0.01,), seeds=1), "t", cycles=5, seeds=5)
        assert "mean over cycles 1-4 = +1.0 on 1 seed; the rule needs its 95 % interval" in text
        assert "HUA_DIVERSITY is" not in text

    def test_hua_runs_are_compared_with_cald_too(self) -> None:
        rows = self._rows() + [
            _row("cald", "synchronic", r.seed, r.cycle, r.ap50 - 0.01 * (r.cycle > 0), boxes=r.boxes)
            for r in self._rows()
            if r.strategy == "random"
        ]
        compared = {c.curve.strategy: c for c in report.against_cald(report.curves(rows))}
        assert set(compared) == {"hua", "hua_mean", "hua_kcenter"}
        assert [d.mean for d in compared["hua"].diff] == pytest.approx([0.0, 0.01, 0.01, 0.01, 0.01])
        text = report.markdown(rows, "t")
        assert "| hua + synchronic | cald + synchronic | 5 | +0.0 [+0.0, +0.0]; +1.0" in text

    def test_no_rule_without_its_runs(self) -> None:
        rows = [r for r in self._rows() if r.strategy in ("random", "hua")]
        assert report.hua_rules(report.curves(rows)) is None
        assert "HUA_AGGREGATE" not in report.markdown(rows, "t")


class TestLoopBookkeeping:
    @staticmethod
    def _data(size: int = 20) -> dict[int, dataset.BenchDataset]:
        sample = dataset._sample("x.png", [[0, 0, 4, 4]], [1], "x")
        return {s: dataset.BenchDataset("fake", ("0",), [sample] * size, [sample]) for s in (0, 1)}

    def test_initial_set_is_shared_and_seeded(self) -> None:
        assert initial_set(50, 5, seed=1) == initial_set(50, 5, seed=1)
        assert initial_set(50, 5, seed=1) != initial_set(50, 5, seed=2)
        with pytest.raises(ValueError):
            initial_set(3, 5, seed=0)

    def test_csv_round_trip_keeps_the_picks(self, tmp_path: Path) -> None:
        rows = [_row("random", "synchronic", 0, 0, 0.3, picked=(7, 3)), _row("hua", "standard", 1, 1, 0.4)]
        write_rows(tmp_path / "r.csv", rows)
        assert read_rows(tmp_path / "r.csv") == sorted(rows, key=lambda r: (r.strategy, r.loss, r.seed, r.cycle))

    def test_csv_in_the_names_before_issue_25_is_read_in_todays(self, tmp_path: Path) -> None:
        """A CSV with ``synchronic-paper`` rows: that is the paper's form, and its ``synchronic`` the balanced."""
        old = [
            _row("random", "synchronic-paper", 0, 0, 0.3),
            _row("random", "synchronic", 0, 0, 0.2),
            _row("random", "standard", 0, 0, 0.1),
        ]
        write_rows(tmp_path / "old.csv", old)
        assert {(r.loss, r.ap50) for r in read_rows(tmp_path / "old.csv")} == {
            ("synchronic", 0.3),
            ("synchronic-balanced", 0.2),
            ("standard", 0.1),
        }
        new = [_row("random", "synchronic", 0, 0, 0.3), _row("random", "synchronic-balanced", 0, 0, 0.2)]
        write_rows(tmp_path / "new.csv", new)
        assert {(r.loss, r.ap50) for r in read_rows(tmp_path / "new.csv")} == {
            ("synchronic", 0.3),
            ("synchronic-balanced", 0.2),
        }

    def test_resumable_rows_stop_at_a_runs_first_gap(self) -> None:
        rows = [_row("random", "synchronic", 0, c, 0.3) for c in (0, 1, 3)] + [_row("hua", "synchronic", 0, 1, 0.3)]
        assert [(r.strategy, r.cycle) for r in resumable(rows, cycles=4)] == [("random", 0), ("random", 1)]

    def test_cycle_zero_is_one_step_for_runs_with_the_same_loss_and_seed(self) -> None:
        specs = [RunSpec(s, "synchronic", 0) for s in ("random", "hua", "cald")] + [
            RunSpec("random", "standard", 0),
            RunSpec("random", "synchronic", 1),
        ]
        steps = plan(specs, [], self._data(), replace(TINY.simulation, initial=4))
        assert [(len(s.specs), s.loss, s.seed, s.cycle) for s in steps] == [
            (3, "synchronic", 0, 0),
            (1, "standard", 0, 0),
            (1, "synchronic", 1, 0),
        ]
        assert steps[0].labeled == steps[1].labeled == tuple(initial_set(20, 4, 0))

    def test_a_run_resumes_at_its_next_cycle_with_what_it_picked(self) -> None:
        first = tuple(initial_set(20, 4, 0))
        rows = [_row("random", "synchronic", 0, 0, 0.3, picked=tuple(i for i in range(20) if i not in first)[:3])]
        config = replace(TINY.simulation, initial=4, cycles=2)
        steps = plan([RunSpec("random", "synchronic", 0), RunSpec("hua", "synchronic", 0)], rows, self._data(), config)
        resumed = next(s for s in steps if s.specs[0].strategy == "random")
        assert resumed.cycle == 1 and resumed.labeled == first + rows[0].picked
        assert next(s for s in steps if s.specs[0].strategy == "hua").cycle == 0

    def test_time_limit_then_resume(self, tmp_path: Path, monkeypatch) -> None:
        calls: list[Step] = []

        def fake_step(step: Step, data, config, progress=None) -> list[Row]:
            calls.append(step)
            free = [i for i in range(len(data.pool)) if i not in step.labeled]
            rows = []
            for spec in step.specs:  # random picks from the front of the pool, the others from the back
                picked = free[: config.budget] if spec.strategy == "random" else free[::-1][: config.budget]
                rows.append(
                    _row(
                        spec.strategy,
                        spec.loss,
                        spec.seed,
                        step.cycle,
                        0.1,
                        labeled=len(step.labeled),
                        picked=tuple(picked) if step.cycle < config.cycles else (),
                    )
                )
            return rows

        monkeypatch.setattr(workers, "run_step", fake_step)
        config = replace(TINY.simulation, initial=4, budget=2, cycles=2)
        specs = [RunSpec("random", "synchronic", 0), RunSpec("hua", "synchronic", 0), RunSpec("random", "standard", 0)]
        rows = run_all(specs, self._data(), config, tmp_path / "r.csv", max_minutes=0)
        assert len(calls) == 1 and len(rows) == 2  # one step (the shared cycle 0), then the limit
        rows = run_all(specs, self._data(), config, tmp_path / "r.csv", resume=True)
        assert sorted((r.strategy, r.loss, r.cycle) for r in rows) == sorted(
            (s.strategy, s.loss, c) for s in specs for c in range(3)
        )
        assert len(calls) == 1 + 1 + 3 * 2  # standard's cycle 0, then cycles 1-2 of each run, never cycle 0 again
        hua_cycle_2 = next(s for s in calls if s.specs[0].strategy == "hua" and s.cycle == 2)
        assert hua_cycle_2.labeled[4:] == (19, 18, 17, 16)
        assert read_rows(tmp_path / "r.csv") == sorted(rows, key=lambda r: (r.strategy, r.loss, r.seed, r.cycle))

    def test_unknown_names_are_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown strategy"):
            RunSpec("magic", "synchronic", 0)
        with pytest.raises(ValueError, match="unknown loss"):
            RunSpec("hua", "focal", 0)


class TestWarmStart:
    def test_pretrained_once_then_read_from_the_cache(self, tmp_path: Path, monkeypatch) -> None:
        args = (TINY.pretrain, TINY.digits, TINY.simulation.detector, tmp_path, torch.device("cpu"))
        version = pretrain.warm_start(*args)
        assert version.meta.labels == [dataset.PRETRAIN_LABEL] and version.meta.parent is None
        assert version.meta.backbone == TINY.simulation.detector.backbone and version.weights_path.exists()
        monkeypatch.setattr(pretrain, "train", lambda *a, **k: pytest.fail("pretrained again"))
        assert pretrain.warm_start(*args).path == version.path
        other = replace(TINY.pretrain, seed=1)
        assert other.fingerprint(TINY.digits, TINY.simulation.detector) != TINY.pretrain.fingerprint(
            TINY.digits, TINY.simulation.detector
        )
        assert (
            pretrain.warm_start(replace(TINY.pretrain, seed=0), replace(TINY.digits, seed=3), *args[2:]).path
            == version.path
        )  # the pool's seed does not change the pretraining scenes


@pytest.mark.slow
def test_one_cycle_of_every_strategy(tiny_data: dataset.BenchDataset, tmp_path: Path) -> None:
    specs, sim = TINY.specs(), TINY.simulation
    rows = run_all(specs, {0: tiny_data}, sim, tmp_path / "results.csv")
    assert len(rows) == len(specs) * 2
    for row in rows:
        assert row.labeled == sim.initial + row.cycle * sim.budget
        assert 0.0 <= row.ap50 <= 1.0 and 0.0 <= row.ap <= 1.0
        assert len(row.picked) == (sim.budget if row.cycle < sim.cycles else 0)
        assert (row.select_s > 0) == (row.cycle < sim.cycles)
    with (tmp_path / "results.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    first = [r for r in rows if r.cycle == 0 and r.loss == "synchronic"]
    assert len(first) == 5 and len({(r.ap50, r.ap, r.train_s) for r in first}) == 1  # one shared training


@pytest.mark.slow
def test_command_line_end_to_end_with_resume(tmp_path: Path, monkeypatch) -> None:
    from bench.active_learning import __main__ as cli

    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path / "published")
    out, cache = tmp_path / "out", tmp_path / "cache"
    base = [
        "--config",
        "tiny",
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--seeds",
        "0",
        "1",
        "--runs",
        "random:synchronic",
        "hua:synchronic",
        "random:standard",
    ]
    assert cli.main(base + ["--max-minutes", "0"]) == 0  # one step, then the time limit
    first = read_rows(out / "results.csv")
    assert [(r.strategy, r.seed, r.cycle) for r in first] == [("hua", 0, 0), ("random", 0, 0)]
    assert cli.main(base + ["--resume", "--publish"]) == 0
    rows = read_rows(out / "results.csv")
    assert sorted((r.strategy, r.loss, r.seed, r.cycle) for r in rows) == sorted(
        (s, loss, seed, c)
        for s, loss in (("random", "synchronic"), ("hua", "synchronic"), ("random", "standard"))
        for seed in (0, 1)
        for c in (0, 1)
    )
    assert set(first) <= set(rows)
    assert len(list(cache.glob("pretrain-*"))) == 1  # pretrained once for both invocations and both seeds
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["invocations"]) == 2 and Path(meta["warm_start"]["path"]).is_dir()
    built = meta["warm_start"]["check_ap50_agnostic"]
    assert [i["warm_start_check_ap50"] for i in meta["invocations"]] == [built, built]
    for name in ("report.md", "ap50.png", "summary.json"):
        assert (out / name).exists(), name
    text = (out / "report.md").read_text()
    assert "Selection against random" in text and "Loss ablation" in text and "default LOSS is" in text
    published = tmp_path / "published"
    assert "](active_learning_tiny.png)" in (published / "active_learning_tiny.md").read_text()
    assert read_rows(published / "active_learning_tiny.csv") == rows
    assert json.loads((published / "active_learning_tiny.meta.json").read_text()) == meta  # a fresh clone resumes
    (out / "report.md").unlink()  # the report can be rebuilt from the CSV alone
    assert cli.main(base + ["--report-only"]) == 0
    assert "hua + synchronic" in (out / "report.md").read_text()
    assert json.loads((out / "meta.json").read_text()) == meta  # a report is no invocation: it changes nothing there
    one_seed = [a for a in base if a != "1"]  # a piece of seed 0 writes the report of both seeds' rows
    assert cli.main(one_seed + ["--report-only"]) == 0
    assert re.findall(r"^\| (\d) \| pool \|", (out / "report.md").read_text(), re.M) == ["0", "1"]
    assert meta["warm_start"]["check_on"] == "seed 0's test split"  # the first seed of the build's invocation
    seed_1 = [a for a in base if a != "0"]  # a later piece of seed 1 names the split the build was checked on
    assert cli.main(seed_1 + ["--resume"]) == 0
    assert f"AP50 {100 * built:.1f} on seed 0's test split" in (out / "report.md").read_text()
    _a_killed_piece_stays_on_record(cli, seed_1, out, monkeypatch)


def _a_killed_piece_stays_on_record(cli, args: list[str], out: Path, monkeypatch) -> None:
    """A piece stopped midway (its rows stay in the CSV) is listed, unfinished, in meta.json and the report."""
    from bench.active_learning import workers

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workers, "run_all", killed)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args + ["--resume", "--max-minutes", "5"])
    last = json.loads((out / "meta.json").read_text())["invocations"][-1]
    assert last["wall_s"] is None and last["command"].endswith("--max-minutes 5") and last["started"]
    assert cli.main(args + ["--report-only"]) == 0
    report = (out / "report.md").read_text()
    assert f"`{last['command']}` (started {last['started']}, did not finish)" in report
    assert "over 4 invocation(s), not counting 1 that did not finish." in report


def test_a_report_written_by_one_seeds_piece_stays_provisional(tmp_path: Path, monkeypatch) -> None:
    """``--seeds 0`` runs a piece of a preset of three seeds: its report must not read as the final one."""
    from bench.active_learning import __main__ as cli

    monkeypatch.setitem(configs.PRESETS, "tiny", lambda: replace(configs.tiny(), seeds=(0, 1, 2)))
    rows = [_row("random", loss, 0, c, 0.3) for loss in ("standard", "synchronic") for c in range(2)]
    meta = {"machine": cli.machine(), "dataset": "d", "pool": 4, "test": 2, "classes": 1, "invocations": []}
    cli.write_report(rows, replace(configs.tiny(), seeds=(0,)), meta, tmp_path, publish=False)
    assert "(provisional: 2 cycle(s), 1 seed(s) so far)" in (tmp_path / "report.md").read_text()


def test_a_second_invocation_on_the_same_output_is_refused(tmp_path: Path) -> None:
    from bench.active_learning import __main__ as cli

    held = cli._exclusive(tmp_path)
    with pytest.raises(SystemExit, match="another invocation is writing"):
        cli.main(["--config", "tiny", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")])
    held.close()
    cli._exclusive(tmp_path).close()  # free again once the first has ended


@pytest.mark.slow
def test_calibration_writes_what_it_tried(tmp_path: Path, monkeypatch) -> None:
    from bench.active_learning import __main__ as cli

    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path / "published")
    assert (
        cli.main(
            [
                "--config",
                "tiny",
                "--out",
                str(tmp_path / "out"),
                "--cache",
                str(tmp_path / "cache"),
                "--calibrate",
                "1",
                "2",
                "--publish",
            ]
        )
        == 0
    )
    text = (tmp_path / "published" / "active_learning_tiny_calibration.md").read_text()
    assert "| 1 |" in text and "| 2 |" in text and "fewest iterations" in text
    assert not (tmp_path / "out" / "results.csv").exists()


def test_missing_weights_are_an_error_not_a_fallback(tiny_data) -> None:
    from bench.active_learning.loop import fresh_model

    imagenet = replace(TINY.simulation, detector=replace(TINY.simulation.detector, weights="imagenet"))
    with pytest.raises(RuntimeError, match="weights unavailable"):  # the tests' TORCH_HOME is empty
        fresh_model(imagenet, tiny_data.labels, seed=0)

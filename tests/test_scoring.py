"""Tests of model/scoring.py: HUA over a pool and over new images with the real small detector on the CPU.

The detector is torchvision's mobilenet_v3_320_fpn Faster R-CNN with our
uncertainty head, built without any weights (nothing is downloaded). Straight
from its random initialisation its features vanish (about 1e-8) and every
image gets the same outputs, so every entropy ties; ``calibrated_detector``
sets the frozen batch-norm statistics from one batch of noise (a data-dependent
initialisation) so that outputs, entropies and metrics depend on the image.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import pytest
import torch
from torch import Tensor
from torchvision.ops.misc import FrozenBatchNorm2d

from model.detections import Detections
from model.detector import Detector, DetectorConfig, build_model
from model.hua import METRIC_NAMES, HUAConfig, image_entropy, image_metrics, num_candidates, score_single
from model.scoring import CHECKING, DETECTING, labeled_class_frequency, score_new_images, score_pool

LABELS = ["car", "person"]
CONFIG = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False, analysis_threshold=0.0)
# P = ceil(0.5 * N) for a pool of N (no minimum), so some images are not candidates.
HALF = HUAConfig(min_candidates=0, retrieval_fraction=0.5)
SCORE_TOLERANCE = 1e-9


# --------------------------------------------------------------------------
# helpers (also used by tests/test_ranking_job.py and tests/test_e2e_ranking.py)
# --------------------------------------------------------------------------


def calibrate_frozen_batchnorm(model: torch.nn.Module, images: Sequence[Tensor]) -> None:
    """Set every FrozenBatchNorm2d's running mean/var to the statistics of its input
    on ``images``, in one forward pass (each layer sees already calibrated inputs)."""

    def set_stats(module: FrozenBatchNorm2d, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    hooks = [m.register_forward_pre_hook(set_stats) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    model.eval()
    try:
        with torch.no_grad():
            model(list(images))
    finally:
        for hook in hooks:
            hook.remove()


def calibrated_model(labels: Sequence[str] = LABELS, seed: int = 0) -> torch.nn.Module:
    """The real small detector model (no weights), calibrated so its outputs depend on the image."""
    torch.manual_seed(seed)
    model, _ = build_model(CONFIG, list(labels))
    gen = torch.Generator().manual_seed(seed + 1000)
    calibrate_frozen_batchnorm(model, [torch.rand(3, 64, 64, generator=gen) for _ in range(2)])
    return model.eval()


def make_image(seed: int, width: int = 64, height: int = 48) -> Tensor:
    """A small image: noise with one flat rectangle of a random colour."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.rand(3, height, width, generator=gen) * 0.3
    img[:, height // 4 : 3 * height // 4, width // 5 : 3 * width // 5] = torch.rand(3, 1, 1, generator=gen)
    return img


class CountingDetector:
    """Wraps a real Detector and records every predict call: flip flag and images."""

    def __init__(self, inner: Detector) -> None:
        self.inner = inner
        self.labels = inner.labels
        self.calls: list[tuple[bool, list[Tensor], list[Detections]]] = []

    def predict(self, images: Sequence[Tensor], flip: bool = False, **options) -> list[Detections]:
        images = list(images)
        out = self.inner.predict(images, flip=flip, **options)
        self.calls.append((flip, images, out))
        return out

    def images(self, flip: bool) -> list[Tensor]:
        return [img for f, imgs, _ in self.calls if f == flip for img in imgs]

    def outputs(self, flip: bool) -> list[Detections]:
        return [det for f, _, dets in self.calls if f == flip for det in dets]


def _index_of(image: Tensor, images: dict[Hashable, Tensor]) -> Hashable:
    hits = [k for k, v in images.items() if v.shape == image.shape and torch.equal(v, image)]
    assert len(hits) == 1, f"image matches {hits}"
    return hits[0]


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(calibrated_model(), LABELS, torch.device("cpu"))


@pytest.fixture(scope="module")
def images() -> dict[str, Tensor]:
    sizes = [(64, 48), (48, 64), (64, 48), (56, 56), (64, 48), (48, 40)]
    return {f"img{i}": make_image(i, w, h) for i, (w, h) in enumerate(sizes)}


class BrokenImage(OSError):
    pass


@pytest.fixture(scope="module")
def pool_run(detector, images):
    """One pool of 6 loadable images plus one whose loader raises, P = 3."""
    keys = ["img0", "img1", "broken", "img2", "img3", "img4", "img5"]
    loads: list[Hashable] = []

    def source(key: Hashable) -> Tensor:
        loads.append(key)
        if key == "broken":
            raise BrokenImage("disk on fire")
        return images[key].clone()

    counting = CountingDetector(detector)
    progress: list[tuple[float, str]] = []
    freq = torch.tensor([0.75, 0.25], dtype=torch.float64)
    pool = score_pool(counting, keys, source, freq, HALF, batch_size=8, progress=lambda f, m: progress.append((f, m)))
    return {"pool": pool, "counting": counting, "progress": progress, "freq": freq, "keys": keys, "loads": loads}


# --------------------------------------------------------------------------
# labeled_class_frequency
# --------------------------------------------------------------------------


class TestLabeledClassFrequency:
    def test_counts_boxes_over_images(self):
        labels = [torch.tensor([1, 1, 2]), torch.tensor([], dtype=torch.int64), torch.tensor([2])]
        freq = labeled_class_frequency(labels, 3)
        assert freq.dtype == torch.float64
        assert freq.tolist() == [0.5, 0.5, 0.0]

    def test_nothing_labelled_is_all_zeros(self):
        assert labeled_class_frequency([], 2).tolist() == [0.0, 0.0]
        assert labeled_class_frequency([torch.zeros(0, dtype=torch.int64)], 2).tolist() == [0.0, 0.0]

    def test_sums_to_one(self):
        labels = [torch.tensor([3, 1, 3, 3]), torch.tensor([2, 3])]
        freq = labeled_class_frequency(labels, 3)
        assert freq.tolist() == pytest.approx([1 / 6, 1 / 6, 4 / 6])
        assert float(freq.sum()) == pytest.approx(1.0)

    def test_two_dimensional_labels_are_flattened(self):
        assert labeled_class_frequency([torch.tensor([[1, 2], [2, 2]])], 2).tolist() == [0.25, 0.75]


# --------------------------------------------------------------------------
# score_pool
# --------------------------------------------------------------------------


def _score_of(pool, key) -> float:
    """The task score ``score_pool`` gave the image ``key``."""
    return float(pool.ranking.score[pool.keys.index(key)])


@pytest.mark.slow
class TestScorePool:
    def test_a_failing_image_is_reported_and_the_rest_ranked(self, pool_run):
        pool = pool_run["pool"]
        assert set(pool.failed) == {"broken"}
        assert "BrokenImage" in pool.failed["broken"] and "disk on fire" in pool.failed["broken"]
        assert pool.keys == ["img0", "img1", "img2", "img3", "img4", "img5"]
        assert len(pool.detections) == 6 and pool.entropy.shape == (6,)
        assert sorted(pool.ranking.order.tolist()) == list(range(6))
        assert pool.ranking.score.shape == (6,)
        assert bool(((pool.ranking.score >= 0) & (pool.ranking.score <= 1)).all())
        # order is the stable ascending sort of the score: the HUA queue
        assert torch.equal(pool.ranking.order, torch.sort(pool.ranking.score, stable=True).indices)

    def test_the_flipped_pass_runs_only_for_the_p_candidates(self, pool_run, images):
        pool, counting = pool_run["pool"], pool_run["counting"]
        p = num_candidates(len(pool.keys), HALF)
        assert p == 3
        flipped = counting.images(flip=True)
        assert len(flipped) == p
        assert sum(1 for f, _, _ in counting.calls if f) >= 1
        # the first pass sees every loadable image exactly once
        first = counting.images(flip=False)
        assert sorted(_index_of(img, images) for img in first) == pool.keys
        # the flipped images are the candidates: the P of highest entropy
        top = torch.sort(pool.entropy, descending=True, stable=True).indices[:p].tolist()
        assert {_index_of(img, images) for img in flipped} == {pool.keys[i] for i in top}
        assert int(pool.ranking.candidate_mask.sum()) == p
        assert sorted(torch.nonzero(pool.ranking.candidate_mask).flatten().tolist()) == sorted(top)

    def test_the_broken_image_is_loaded_once_per_pass_it_belongs_to(self, pool_run):
        # the first pass tries it once; it is never a candidate, so not reloaded
        assert pool_run["loads"].count("broken") == 1

    def test_the_first_pass_detections_are_the_pre_annotations(self, pool_run):
        pool, counting = pool_run["pool"], pool_run["counting"]
        first = counting.outputs(flip=False)
        assert len(first) == len(pool.detections)
        assert all(a is b for a, b in zip(pool.detections, first))
        for det in pool.detections:
            assert len(det) > 0  # SCORE_THRESHOLD 0: an untrained model still returns boxes

    def test_entropy_is_the_gate_entropy_of_the_first_pass(self, pool_run):
        pool = pool_run["pool"]
        expected = torch.stack([image_entropy(d, HALF) for d in pool.detections])
        assert torch.equal(pool.entropy, expected)
        assert len(set(pool.entropy.tolist())) > 1, "the calibrated detector should not tie every entropy"

    def test_candidates_come_before_every_other_image(self, pool_run):
        pool = pool_run["pool"]
        mask = pool.ranking.candidate_mask
        assert float(pool.ranking.score[mask].max()) < float(pool.ranking.score[~mask].min())
        # the stored cutoff is the entropy of the last candidate
        assert pool.ranking.scale.entropy_cutoff == float(pool.entropy[mask].min())

    def test_explain_gives_the_gate_entropy_and_each_candidates_metrics(self, pool_run):
        pool = pool_run["pool"]
        explained = pool.explain()
        assert [e["entropy"] for e in explained] == pool.entropy.tolist()
        assert [e["candidate"] for e in explained] == pool.ranking.candidate_mask.tolist()
        candidates = [e for e in explained if e["candidate"]]
        assert [list(e["metrics"].values()) for e in candidates] == pool.candidate_metrics.tolist()
        assert [e["informativeness"] for e in candidates] == pool.ranking.informativeness.tolist()
        assert all("metrics" not in e for e in explained if not e["candidate"])
        assert list(candidates[0]["metrics"]) == list(METRIC_NAMES)

    def test_progress_is_monotone_and_completes(self, pool_run):
        fractions = [f for f, _ in pool_run["progress"]]
        assert fractions and fractions == sorted(fractions)
        assert 0.0 <= fractions[0] and fractions[-1] == pytest.approx(1.0)
        assert {m for _, m in pool_run["progress"]} == {DETECTING, CHECKING}

    def test_a_budget_sets_p(self, detector, images):
        counting = CountingDetector(detector)
        keys = ["img0", "img1", "img2", "img3"]
        config = HUAConfig(min_candidates=64, retrieval_fraction=1.0, retrieval_ratio=2.0)
        pool = score_pool(
            counting, keys, lambda k: images[k], torch.zeros(2, dtype=torch.float64), config, batch_size=2, budget=1
        )
        assert num_candidates(4, config, budget=1) == 2
        assert len(counting.images(flip=True)) == 2
        assert int(pool.ranking.candidate_mask.sum()) == 2
        assert all(len(imgs) <= 2 for _, imgs, _ in counting.calls)  # batch_size is kept

    def test_an_empty_pool(self, detector):
        counting = CountingDetector(detector)
        pool = score_pool(counting, [], lambda k: 1 / 0, torch.zeros(2, dtype=torch.float64), HALF)
        assert pool.keys == [] and pool.detections == [] and pool.failed == {}
        assert pool.entropy.shape == (0,) and pool.ranking.order.shape == (0,)
        assert math.isinf(pool.ranking.scale.entropy_cutoff)
        assert counting.images(flip=False) == [] and counting.images(flip=True) == []

    def test_a_candidate_that_fails_on_reload_leaves_the_pool(self, detector, images):
        """It has no flipped pass, so no SA: listed as failed, not guessed at."""
        keys = ["img0", "img1", "img2", "img3"]
        seen: set[str] = set()

        def source(key):
            if key in seen:
                raise OSError(f"{key} vanished")
            seen.add(key)
            return images[key]

        config = HUAConfig(min_candidates=1, retrieval_fraction=0.5)
        pool = score_pool(detector, keys, source, torch.zeros(2, dtype=torch.float64), config, batch_size=2)
        assert len(pool.failed) == 2 and all("vanished" in why for why in pool.failed.values())
        assert sorted(pool.keys) == sorted(set(keys) - set(pool.failed))
        assert len(pool.detections) == 2 and pool.entropy.shape == (2,) and pool.ranking.score.shape == (2,)
        assert int(pool.ranking.candidate_mask.sum()) == 0

    def test_a_pool_where_every_image_fails(self, detector):
        counting = CountingDetector(detector)

        def source(key):
            raise OSError(f"no {key}")

        pool = score_pool(counting, [1, 2], source, torch.zeros(2, dtype=torch.float64), HALF)
        assert set(pool.failed) == {1, 2} and pool.keys == []
        assert pool.ranking.score.shape == (0,)
        assert counting.images(flip=False) == [] and counting.images(flip=True) == []


# --------------------------------------------------------------------------
# score_new_images: the same image on the same scale gets the same score
# --------------------------------------------------------------------------


def _tied_non_candidate(pool, i: int) -> bool:
    """An image the pool left out of the gate although its entropy equals the cutoff
    (score_single admits ties, the pool's top-P cut does not)."""
    return (not bool(pool.ranking.candidate_mask[i])) and float(pool.entropy[i]) == pool.ranking.scale.entropy_cutoff


@pytest.mark.slow
class TestScoreNewImages:
    def test_agrees_with_the_pool_for_its_own_images(self, detector, images, pool_run):
        pool, freq = pool_run["pool"], pool_run["freq"]
        counting = CountingDetector(detector)
        # The same images in the same order: the detector sees the same batches as in
        # the pool (its float32 outputs depend on what else is in a batch).
        scored = score_new_images(counting, pool.keys, images.__getitem__, freq, pool.ranking.scale, HALF, batch_size=8)
        assert scored.keys == pool.keys and scored.failed == {}
        compared = 0
        for i, (key, det, score) in enumerate(zip(pool.keys, scored.detections, scored.scores)):
            if _tied_non_candidate(pool, i):
                continue
            assert torch.equal(det.boxes, pool.detections[i].boxes), key
            assert abs(score - _score_of(pool, key)) <= SCORE_TOLERANCE, (key, score, _score_of(pool, key))
            compared += 1
        assert compared >= len(pool.keys) - 1
        # the flipped pass ran only for the images the stored gate admits
        admitted = [
            k
            for k, det in zip(pool.keys, scored.detections)
            if float(image_entropy(det, HALF)) >= pool.ranking.scale.entropy_cutoff
        ]
        assert len(counting.images(flip=True)) == len(admitted)
        assert {_index_of(img, images) for img in counting.images(flip=True)} == set(admitted)

    def test_one_image_at_a_time_agrees_with_a_pool_of_batch_size_one(self, detector, images):
        keys = ["img1", "img3", "img5"]
        config = HUAConfig(candidates=2)
        freq = torch.tensor([0.5, 0.5], dtype=torch.float64)
        pool = score_pool(detector, keys, lambda k: images[k], freq, config, batch_size=1)
        for i, key in enumerate(keys):
            if _tied_non_candidate(pool, i):
                continue
            (score,) = score_new_images(
                detector, [key], images.__getitem__, freq, pool.ranking.scale, config, batch_size=1
            ).scores
            assert abs(score - _score_of(pool, key)) <= SCORE_TOLERANCE, (key, score, _score_of(pool, key))

    def test_matches_score_single_on_the_stored_scale(self, detector, images, pool_run):
        pool, freq = pool_run["pool"], pool_run["freq"]
        new = make_image(99, 60, 44)
        scored = score_new_images(
            detector, ["new"], {"new": new}.__getitem__, freq, pool.ranking.scale, HALF, batch_size=1
        )
        (det,), (score,) = scored.detections, scored.scores
        entropy = float(image_entropy(det, HALF))
        metrics = None
        if entropy >= pool.ranking.scale.entropy_cutoff:
            (flipped,) = detector.predict([new], flip=True)
            metrics = image_metrics(det, flipped, freq, HALF)
        assert score == score_single(entropy, metrics, pool.ranking.scale)

    def test_no_images(self, detector, pool_run):
        pool = pool_run["pool"]
        scored = score_new_images(
            detector, [], {}.__getitem__, pool_run["freq"], pool.ranking.scale, HALF, batch_size=1
        )
        assert scored.keys == [] and scored.scores == [] and scored.failed == {}

    def test_an_image_that_fails_to_load_is_listed_not_scored(self, detector, images, pool_run):
        def source(key: Hashable) -> Tensor:
            if key == "broken":
                raise BrokenImage("disk on fire")
            return images[key]

        pool = pool_run["pool"]
        scored = score_new_images(
            detector, ["broken", "img0"], source, pool_run["freq"], pool.ranking.scale, HALF, batch_size=2
        )
        assert scored.keys == ["img0"] and len(scored.scores) == 1
        assert scored.failed == {"broken": "BrokenImage: disk on fire"}


class TestYoungDetector:
    """docs/method.md, section 2: a model with no box above the display threshold still ranks (issue: the
    metrics used to see only boxes >= SCORE_THRESHOLD, every candidate scored (1, 0, 0, 0), and the
    "HUA queue" fell back to pool order)."""

    @staticmethod
    def scores_by_key(detector: Detector, keys: list[str], images: dict[str, Tensor]) -> tuple[dict, object]:
        pool = score_pool(
            detector, keys, images.__getitem__, torch.tensor([0.5, 0.5], dtype=torch.float64), HALF, batch_size=1
        )  # one image a batch: no padding, so no dependence on the neighbours
        return dict(zip(pool.keys, pool.ranking.score.tolist())), pool

    def test_distinct_scores_ordered_by_metrics_then_entropy_whatever_the_pool_order(self, images):
        torch.manual_seed(2)  # a random head whose every box scores 0.35-0.45 on these images
        model, _ = build_model(
            DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False), LABELS
        )
        calibrate_frozen_batchnorm(model, [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(5))])
        young = Detector(model.eval(), LABELS, torch.device("cpu"))
        keys = sorted(images)
        scores, pool = self.scores_by_key(young, keys, images)

        assert all(len(d) > 0 and float(d.scores.max()) < 0.5 for d in pool.detections)
        mask = pool.ranking.candidate_mask
        candidate_scores = pool.ranking.score[mask].tolist()
        assert len(set(candidate_scores)) == len(candidate_scores) == int(mask.sum())
        entropy = pool.entropy[mask].tolist()
        expected = sorted(range(len(entropy)), key=lambda i: (-float(pool.ranking.informativeness[i]), -entropy[i]))
        assert sorted(range(len(entropy)), key=lambda i: candidate_scores[i]) == expected

        shuffled, _ = self.scores_by_key(young, list(reversed(keys)), images)
        assert shuffled == scores

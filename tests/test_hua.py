"""Tests of model.hua (METHOD.md sections 1-3). Expected values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

from model.detections import Detections
from model.hua import (
    CANDIDATE_MARGIN,
    METRIC_NAMES,
    HUAConfig,
    Ranking,
    Scale,
    aggregate,
    category_diversity,
    entropy_score,
    fit_scale,
    image_entropy,
    image_metrics,
    js_divergence,
    localization_uncertainty,
    merge_classes,
    normalise,
    num_candidates,
    overlap_ratio,
    priorities,
    rank_pool,
    score_single,
    select_candidates,
    semantic_affinity,
    task_scores,
)

# JS([1, 0], [0.5, 0.5]): m = [3/4, 1/4]; KL(p||m) = ln(4/3); KL(q||m) = ln(4/3) / 2;
# JS = (3/2) ln(4/3) / (2 ln 2) = 0.75 * log2(4/3).
JS_ONEHOT_VS_UNIFORM = 0.75 * math.log2(4.0 / 3.0)

WIDTH = 100


def _dets(
    boxes: list[list[float]],
    probs: list[list[float]],
    sigmas: list[list[float]] | None = None,
    width: int = WIDTH,
) -> Detections:
    """Detections of one WIDTH x 100 image; labels are the argmax of probs."""
    c1 = len(probs[0]) if probs else 4
    probs_t = torch.tensor(probs, dtype=torch.float32).reshape(-1, c1)
    d = probs_t.shape[0]
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=probs_t.argmax(dim=1) if d else torch.zeros(0, dtype=torch.int64),
        scores=probs_t.max(dim=1).values if d else torch.zeros(0),
        probs=probs_t,
        sigmas=torch.tensor(sigmas if sigmas else [[0.0] * 4] * d).reshape(-1, 4),
        top_probs=probs_t,
        width=width,
        height=100,
    )


def _flip(boxes: list[list[float]], width: int = WIDTH) -> list[list[float]]:
    """Boxes of the horizontally flipped image, in its own pixels."""
    return [[width - x2, y1, width - x1, y2] for x1, y1, x2, y2 in boxes]


class TestHUAConfig:
    def test_defaults_are_methods(self) -> None:
        config = HUAConfig()
        assert config.retrieval_fraction == 0.5
        assert config.min_candidates == 64
        assert config.candidates is None
        assert config.retrieval_ratio == 4.0
        assert config.overlap_iou == 0.3
        assert config.merge_iou == 0.7

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"retrieval_fraction": -0.1},
            {"retrieval_fraction": 1.5},
            {"min_candidates": -1},
            {"candidates": -3},
            {"retrieval_ratio": 0.0},
            {"retrieval_ratio": math.inf},
            {"overlap_iou": 0.0},
            {"overlap_iou": 1.2},
            {"merge_iou": 0.0},
        ],
    )
    def test_invalid_values_raise(self, kwargs: dict[str, float]) -> None:
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=name):
            HUAConfig(**kwargs)

    def test_frozen(self) -> None:
        with pytest.raises(AttributeError):
            setattr(HUAConfig(), "overlap_iou", 0.5)


class TestJSDivergence:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_identical_is_zero(self, dtype: torch.dtype) -> None:
        p = torch.tensor([0.2, 0.3, 0.5], dtype=dtype)
        assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_disjoint_is_one(self, dtype: torch.dtype) -> None:
        p = torch.tensor([1.0, 0.0, 0.0], dtype=dtype)
        q = torch.tensor([0.0, 0.5, 0.5], dtype=dtype)
        assert js_divergence(p, q).item() == pytest.approx(1.0, abs=1e-6)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_hand_value(self, dtype: torch.dtype) -> None:
        p = torch.tensor([1.0, 0.0], dtype=dtype)
        q = torch.tensor([0.5, 0.5], dtype=dtype)
        assert js_divergence(p, q).item() == pytest.approx(JS_ONEHOT_VS_UNIFORM, rel=1e-5)

    def test_symmetric_bounded_and_batched(self) -> None:
        gen = torch.Generator().manual_seed(0)
        p = torch.softmax(torch.randn(64, 5, generator=gen) * 4, dim=-1)
        q = torch.softmax(torch.randn(64, 5, generator=gen) * 4, dim=-1)
        p[0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
        js = js_divergence(p, q)
        assert js.shape == (64,)
        assert torch.equal(js, js_divergence(q, p))
        assert bool(((js >= 0) & (js <= 1)).all())

    def test_zeros_give_no_nan(self) -> None:
        p = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
        q = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
        js = js_divergence(p, q)
        assert not bool(js.isnan().any())
        assert js[0].item() == pytest.approx(0.0, abs=1e-7)


class TestImageEntropy:
    def test_uniform_rows_are_one(self) -> None:
        assert image_entropy(torch.full((3, 4), 0.25)).item() == pytest.approx(1.0)

    def test_one_hot_rows_are_zero(self) -> None:
        assert image_entropy(torch.eye(4)).item() == pytest.approx(0.0, abs=1e-7)

    def test_mean_over_rows(self) -> None:
        # one uniform row (1) and one one-hot row (0) -> 0.5
        rows = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
        assert image_entropy(rows).item() == pytest.approx(0.5)

    def test_no_roi_is_maximally_uncertain(self) -> None:
        value = image_entropy(torch.zeros((0, 4)))
        assert value.shape == ()
        assert value.item() == 1.0

    def test_bad_shape_raises(self) -> None:
        with pytest.raises(ValueError, match="top_probs"):
            image_entropy(torch.ones(4))


class TestEntropyScore:
    def test_is_one_minus_entropy_in_float64(self) -> None:
        rows = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]])
        score = entropy_score(rows)
        assert score.dtype == torch.float64
        assert score.item() == 1.0 - image_entropy(rows).item()

    def test_no_roi_scores_zero(self) -> None:
        assert entropy_score(torch.zeros((0, 3))).item() == 0.0


class TestNumCandidates:
    @pytest.mark.parametrize(
        ("n", "expected"),
        [(1000, 500), (201, 101), (100, 64), (10, 10), (0, 0)],
    )
    def test_fraction_rule(self, n: int, expected: int) -> None:
        assert num_candidates(n, HUAConfig()) == expected

    def test_fraction_ignores_float_noise(self) -> None:
        # 0.1 * 30 = 3.0000000000000004 in floats; P must be 3, not 4
        config = HUAConfig(retrieval_fraction=0.1, min_candidates=0)
        assert num_candidates(30, config) == 3

    def test_budget_rule(self) -> None:
        assert num_candidates(1000, HUAConfig(), budget=20) == 80
        assert num_candidates(50, HUAConfig(), budget=20) == 50

    def test_absolute_number_wins(self) -> None:
        config = HUAConfig(candidates=7)
        assert num_candidates(1000, config) == 7
        assert num_candidates(1000, config, budget=20) == 7
        assert num_candidates(5, config) == 5

    def test_negative_raises(self) -> None:
        with pytest.raises(ValueError, match="n must"):
            num_candidates(-1, HUAConfig())
        with pytest.raises(ValueError, match="budget"):
            num_candidates(10, HUAConfig(), budget=-1)


class TestSelectCandidates:
    def test_top_p(self) -> None:
        mask = select_candidates(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2)
        assert mask.tolist() == [False, True, False, True]

    def test_ties_go_to_lower_index(self) -> None:
        mask = select_candidates(torch.tensor([0.5, 0.9, 0.5, 0.5]), 2)
        assert mask.tolist() == [True, True, False, False]

    def test_p_is_clipped(self) -> None:
        entropy = torch.tensor([0.1, 0.2])
        assert select_candidates(entropy, 5).tolist() == [True, True]
        assert select_candidates(entropy, 0).tolist() == [False, False]

    def test_empty_pool(self) -> None:
        mask = select_candidates(torch.zeros(0), 3)
        assert mask.shape == (0,) and mask.dtype == torch.bool


class TestSemanticAffinity:
    BOX = [[10.0, 20.0, 30.0, 40.0]]
    PROBS = [[0.1, 0.7, 0.2]]

    def test_consistent_box_is_zero(self) -> None:
        original = _dets(self.BOX, self.PROBS)
        flipped = _dets(_flip(self.BOX), self.PROBS)
        assert semantic_affinity(original, flipped).item() == pytest.approx(0.0, abs=1e-6)

    def test_unflipped_coordinates_do_not_match(self) -> None:
        # the same pixels without flipping back: [70, 20, 90, 40] vs [10, 20, 30, 40]
        original = _dets(self.BOX, self.PROBS)
        not_flipped = _dets(self.BOX, self.PROBS)  # read as flipped coords -> [70..90]
        assert semantic_affinity(original, not_flipped).item() == pytest.approx(1.0)

    def test_partial_overlap_hand_value(self) -> None:
        # back-mapped [5, 0, 15, 10] vs [0, 0, 10, 10]: IoU = 50 / 150 = 1/3, JS 0
        original = _dets([[0.0, 0.0, 10.0, 10.0]], self.PROBS)
        flipped = _dets([[85.0, 0.0, 95.0, 10.0]], self.PROBS)
        assert semantic_affinity(original, flipped).item() == pytest.approx(2.0 / 3.0, rel=1e-5)

    def test_different_class_is_one(self) -> None:
        original = _dets(self.BOX, [[0.0, 1.0, 0.0]])
        flipped = _dets(_flip(self.BOX), [[0.0, 0.0, 1.0]])
        assert semantic_affinity(original, flipped).item() == pytest.approx(1.0, abs=1e-6)

    def test_mean_over_detections_uses_best_match(self) -> None:
        # box A matched exactly (0), box B has no counterpart (1) -> 0.5;
        # the decoy flipped box overlaps A only partly and must not be chosen.
        boxes = [[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]]
        original = _dets(boxes, self.PROBS * 2)
        flipped = _dets(_flip([[5.0, 0.0, 15.0, 10.0], boxes[0]]), self.PROBS * 2)
        assert semantic_affinity(original, flipped).item() == pytest.approx(0.5, abs=1e-6)

    def test_width_mismatch_raises(self) -> None:
        with pytest.raises(ValueError, match="width"):
            semantic_affinity(_dets(self.BOX, self.PROBS), _dets(self.BOX, self.PROBS, width=99))


class TestCategoryDiversity:
    def test_hand_value(self) -> None:
        # q = [1, 0], p_L = [1/2, 1/2]
        probs = torch.tensor([[0.0, 1.0, 0.0]])
        value = category_diversity(probs, torch.tensor([5.0, 5.0])).item()
        assert value == pytest.approx(JS_ONEHOT_VS_UNIFORM, rel=1e-6)

    def test_matches_labeled_distribution_is_zero(self) -> None:
        # q = (0.2 + 0.2, 0.6 + 0.2) / 1.2 = (1/3, 2/3) = p_L
        probs = torch.tensor([[0.2, 0.2, 0.6], [0.6, 0.2, 0.2]])
        assert category_diversity(probs, torch.tensor([1.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)

    def test_lacking_class_scores_higher(self) -> None:
        freq = torch.tensor([40.0, 40.0, 0.0])  # class 3 never labeled
        rare = category_diversity(torch.tensor([[0.1, 0.0, 0.0, 0.9]]), freq).item()
        common = category_diversity(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), freq).item()
        assert rare == pytest.approx(1.0, abs=1e-6)  # disjoint support
        assert common == pytest.approx(JS_ONEHOT_VS_UNIFORM, rel=1e-6)
        assert rare > common

    def test_nothing_labeled_is_uniform(self) -> None:
        probs = torch.tensor([[0.0, 1.0, 0.0]])
        value = category_diversity(probs, torch.zeros(2)).item()
        assert value == pytest.approx(JS_ONEHOT_VS_UNIFORM, rel=1e-6)

    def test_no_detections_is_zero(self) -> None:
        assert category_diversity(torch.zeros((0, 3)), torch.tensor([1.0, 0.0])).item() == 0.0

    def test_class_count_mismatch_raises(self) -> None:
        with pytest.raises(ValueError, match="labeled_class_freq"):
            category_diversity(torch.zeros((1, 3)), torch.ones(3))


class TestOverlapRatio:
    def test_two_overlapping_boxes_is_one(self) -> None:
        # IoU = 50 / 100 = 0.5 >= 0.3
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
        assert overlap_ratio(boxes).item() == 1.0

    def test_fraction_of_detections(self) -> None:
        boxes = torch.tensor(
            [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [50.0, 50.0, 60.0, 60.0]]
        )
        assert overlap_ratio(boxes).item() == pytest.approx(2.0 / 3.0)

    def test_below_threshold_is_zero(self) -> None:
        # inter 20, union 180: IoU 1/9 < 0.3
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 18.0, 10.0]])
        assert overlap_ratio(boxes).item() == 0.0

    def test_threshold_is_inclusive(self) -> None:
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]])
        assert overlap_ratio(boxes, iou_threshold=0.5).item() == 1.0
        assert overlap_ratio(boxes, iou_threshold=0.51).item() == 0.0

    @pytest.mark.parametrize("d", [0, 1])
    def test_one_or_no_box_is_zero(self, d: int) -> None:
        assert overlap_ratio(torch.tensor([[0.0, 0.0, 10.0, 10.0]] * d).reshape(-1, 4)).item() == 0.0


class TestMergeClasses:
    def test_one_object_under_two_labels_is_not_a_crowd(self) -> None:
        """METHOD.md section 2: "car" and "truck" on one object (IoU 0.9) merge before OR."""
        boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0]]
        dets = _dets(boxes, [[0.1, 0.8, 0.1], [0.3, 0.1, 0.6]])
        assert merge_classes(dets.boxes, dets.scores).tolist() == [boxes[0]]  # the higher score stays
        assert image_metrics(dets, dets, torch.ones(2), HUAConfig())[2].item() == 0.0

    def test_two_objects_that_overlap_stay_two(self) -> None:
        boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]  # IoU 0.5 < merge 0.7, >= overlap 0.3
        dets = _dets(boxes, [[0.1, 0.8, 0.1], [0.3, 0.1, 0.6]])
        assert len(merge_classes(dets.boxes, dets.scores)) == 2
        assert image_metrics(dets, dets, torch.ones(2), HUAConfig())[2].item() == 1.0
        assert image_metrics(dets, dets, torch.ones(2), HUAConfig(merge_iou=0.4))[2].item() == 0.0


class TestDisplayFilter:
    def test_above_keeps_confident_rows_and_the_gate(self) -> None:
        dets = _dets([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0]], [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
        shown = dets.above(0.5)
        assert shown.scores.tolist() == pytest.approx([0.9, 0.7])
        low = dets.above(0.8)
        assert len(low) == 1 and low.probs.shape == (1, 3) and low.sigmas.shape == (1, 4)
        assert torch.equal(low.top_probs, dets.top_probs)  # the gate never depends on the display threshold


class TestLocalizationUncertainty:
    def test_mean_over_detections_and_edges(self) -> None:
        sigmas = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])
        assert localization_uncertainty(sigmas).item() == pytest.approx(6.0 / 8.0)

    def test_no_detections_is_zero(self) -> None:
        assert localization_uncertainty(torch.zeros((0, 4))).item() == 0.0


class TestImageMetrics:
    def test_one_consistent_box(self) -> None:
        box = [[10.0, 20.0, 30.0, 40.0]]
        probs = [[0.0, 1.0, 0.0]]
        original = _dets(box, probs, sigmas=[[0.1, 0.2, 0.3, 0.4]])
        flipped = _dets(_flip(box), probs)
        metrics = image_metrics(original, flipped, torch.tensor([1.0, 1.0]), HUAConfig())
        assert metrics.shape == (4,)
        expected = [0.0, JS_ONEHOT_VS_UNIFORM, 0.0, 0.25]  # SA, CD, OR, LC
        assert metrics.tolist() == pytest.approx(expected, abs=1e-6)

    def test_no_detections(self) -> None:
        empty = Detections.empty(num_classes=2, width=WIDTH, height=100)
        metrics = image_metrics(empty, empty, torch.tensor([3.0, 1.0]), HUAConfig())
        assert metrics.tolist() == [1.0, 0.0, 0.0, 0.0]

    def test_uses_configured_overlap_iou(self) -> None:
        boxes = [[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]  # IoU 0.5
        dets = _dets(boxes, [[0.0, 1.0, 0.0]] * 2)
        ones = torch.ones(2)
        assert image_metrics(dets, dets, ones, HUAConfig())[2].item() == 1.0
        assert image_metrics(dets, dets, ones, HUAConfig(overlap_iou=0.6))[2].item() == 0.0

    def test_each_metric_is_a_float64_scalar_tensor(self) -> None:
        """No metric waits on the device: each is a 0-d float64 tensor, the empty cases too."""
        empty = Detections.empty(num_classes=2, width=WIDTH, height=100)
        dets = _dets([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]], [[0.0, 1.0, 0.0]] * 2)
        for d in (empty, dets):
            values = (semantic_affinity(d, d), category_diversity(d.probs, torch.ones(2)),
                      overlap_ratio(d.boxes), localization_uncertainty(d.sigmas))
            for value in values:
                assert isinstance(value, Tensor) and value.shape == () and value.dtype == torch.float64
            assert torch.equal(image_metrics(d, d, torch.ones(2), HUAConfig()), torch.stack(values))


class TestScale:
    def test_fit_is_per_metric_min_max(self) -> None:
        metrics = torch.tensor([[0.0, 1.0, 2.0, 3.0], [4.0, 1.0, 0.0, 5.0]])
        scale = fit_scale(metrics, entropy_cutoff=0.25)
        assert scale.mins.tolist() == [0.0, 1.0, 0.0, 3.0]
        assert scale.maxs.tolist() == [4.0, 1.0, 2.0, 5.0]
        assert scale.entropy_cutoff == 0.25

    def test_fit_on_nothing_is_zeros(self) -> None:
        scale = fit_scale(torch.zeros((0, 4)))
        assert scale.mins.tolist() == [0.0] * 4 and scale.maxs.tolist() == [0.0] * 4

    @pytest.mark.parametrize("cutoff", [0.123456789, math.inf])
    def test_json_round_trip_is_exact(self, cutoff: float) -> None:
        gen = torch.Generator().manual_seed(1)
        scale = fit_scale(torch.rand(5, 4, generator=gen), entropy_cutoff=cutoff)
        data = json.loads(json.dumps(scale.to_dict(), allow_nan=False))
        assert data["metrics"] == list(METRIC_NAMES)
        back = Scale.from_dict(data)
        assert torch.equal(back.mins, scale.mins) and torch.equal(back.maxs, scale.maxs)
        assert back.entropy_cutoff == cutoff

    @pytest.mark.parametrize(
        "data",
        [
            {"mins": [0.0] * 3, "maxs": [1.0] * 4},
            {"maxs": [1.0] * 4},
            {"mins": [2.0] * 4, "maxs": [1.0] * 4},
            {"mins": ["a"] * 4, "maxs": [1.0] * 4},
            {"metrics": ["x"] * 4, "mins": [0.0] * 4, "maxs": [1.0] * 4},
        ],
    )
    def test_bad_dict_raises(self, data: dict[str, list[float]]) -> None:
        with pytest.raises(ValueError, match="Scale"):
            Scale.from_dict(data)


class TestNormalise:
    def test_min_max_hand_values(self) -> None:
        scale = Scale(torch.tensor([0.0, 1.0, 0.0, 0.0]), torch.tensor([4.0, 3.0, 1.0, 2.0]))
        out = normalise(torch.tensor([[1.0, 2.0, 1.0, 0.5]]), scale)
        assert out.tolist() == [[0.25, 0.5, 1.0, 0.25]]

    def test_constant_metric_is_zero(self) -> None:
        metrics = torch.tensor([[0.3, 0.0, 1.0, 2.0], [0.3, 1.0, 1.0, 4.0]])
        out = normalise(metrics, fit_scale(metrics))
        assert out.tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]

    def test_one_candidate_is_all_zero(self) -> None:
        metrics = torch.tensor([[0.7, 0.1, 0.5, 3.0]])
        out = normalise(metrics, fit_scale(metrics))
        assert out.tolist() == [[0.0] * 4]

    def test_no_detections_row(self) -> None:
        # an empty image's (1, 0, 0, 0) next to one with detections
        metrics = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.2, 0.5, 0.4]])
        out = normalise(metrics, fit_scale(metrics))
        assert out.tolist() == [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]]

    def test_outside_stored_range_is_clipped(self) -> None:
        scale = Scale(torch.zeros(4), torch.ones(4))
        out = normalise(torch.tensor([[-1.0, 2.0, 0.5, 1.0]]), scale)
        assert out.tolist() == [[0.0, 1.0, 0.5, 1.0]]

    def test_empty_pool(self) -> None:
        out = normalise(torch.zeros((0, 4)), fit_scale(torch.zeros((0, 4))))
        assert out.shape == (0, 4)


class TestAggregate:
    def test_hand_values(self) -> None:
        normalised = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.6, 0.8, 0.0, 0.0], [0.0] * 4])
        assert aggregate(normalised).tolist() == pytest.approx([2.0, 1.0, 0.0])

    def test_empty(self) -> None:
        assert aggregate(torch.zeros((0, 4))).shape == (0,)


class TestPriorities:
    def test_hand_values(self) -> None:
        entropy = torch.tensor([0.9, 0.9, 0.9, 1.0, 0.4, 0.0])
        mask = torch.tensor([True, True, True, False, False, False])
        l_value = torch.tensor([0.0, 1.0, 2.0, 9.0, 9.0, 9.0])  # l ignored off the mask
        low = 0.5 + 0.5 * CANDIDATE_MARGIN  # 0.55
        middle = 0.5 + 0.5 * (CANDIDATE_MARGIN + (1 - CANDIDATE_MARGIN) / 2)  # 0.775
        expected = [low, middle, 1.0, 0.5, 0.2, 0.0]
        assert priorities(entropy, mask, l_value).tolist() == pytest.approx(expected)

    def test_every_candidate_above_every_non_candidate(self) -> None:
        gen = torch.Generator().manual_seed(2)
        entropy = torch.rand(1000, generator=gen)
        entropy[:10] = 1.0
        mask = torch.rand(1000, generator=gen) < 0.3
        l_value = torch.rand(1000, generator=gen) * 2
        l_value[:20] = 0.0
        priority = priorities(entropy, mask, l_value)
        assert priority[mask].min() > 0.5 >= priority[~mask].max()
        assert bool(((priority >= 0) & (priority <= 1)).all())

    def test_ties_in_l_are_broken_by_entropy_never_by_index(self) -> None:
        """A young model: every metric constant, l = 0 for all candidates; H decides."""
        entropy = torch.tensor([0.6, 0.9, 0.7, 0.1], dtype=torch.float64)
        mask = torch.tensor([True, True, True, False])
        priority = priorities(entropy, mask, torch.zeros(4, dtype=torch.float64))
        assert priority[1] > priority[2] > priority[0] > 0.5 > priority[3]
        assert len(set(priority.tolist())) == 4

    def test_entropy_never_outweighs_a_real_difference_in_l(self) -> None:
        priority = priorities(torch.tensor([1.0, 0.0]), torch.tensor([True, True]), torch.tensor([0.001, 0.0011]))
        assert priority[1] > priority[0]

    def test_task_scores(self) -> None:
        assert task_scores(torch.tensor([1.0, 0.25, 0.0])).tolist() == [0.0, 0.75, 1.0]


def _pool(n: int, seed: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    """Entropy, candidate mask (half) and candidate metrics of a random pool."""
    gen = torch.Generator().manual_seed(seed)
    entropy = torch.rand(n, generator=gen)
    mask = select_candidates(entropy, num_candidates(n, HUAConfig(min_candidates=1)))
    metrics = torch.rand(int(mask.sum()), 4, generator=gen) * torch.tensor([1.0, 1.0, 1.0, 3.0])
    return entropy, mask, metrics


class TestRankPool:
    def test_ordering_contract(self) -> None:
        entropy, mask, metrics = _pool(200)
        ranking = rank_pool(entropy, metrics, mask)
        assert isinstance(ranking, Ranking)
        p = int(mask.sum())
        assert bool(mask[ranking.order[:p]].all()) and not bool(mask[ranking.order[p:]].any())
        assert ranking.priority[mask].min() > ranking.priority[~mask].max()
        assert torch.equal(torch.sort(ranking.score, stable=True).indices, ranking.order)
        assert torch.equal(ranking.score, 1.0 - ranking.priority)
        assert sorted(ranking.order.tolist()) == list(range(200))

    def test_candidates_ordered_by_l_non_candidates_by_entropy(self) -> None:
        entropy, mask, metrics = _pool(50)
        ranking = rank_pool(entropy, metrics, mask)
        l_all = torch.zeros(50, dtype=torch.float64)
        l_all[mask] = ranking.informativeness
        p = int(mask.sum())
        top, rest = ranking.order[:p], ranking.order[p:]
        assert bool((l_all[top][:-1] >= l_all[top][1:]).all())
        assert bool((entropy[rest][:-1] >= entropy[rest][1:]).all())

    def test_fitted_scale_and_cutoff(self) -> None:
        entropy = torch.tensor([0.1, 0.8, 0.6, 0.3])
        mask = torch.tensor([False, True, True, False])
        metrics = torch.tensor([[0.2, 0.0, 1.0, 1.0], [0.4, 0.0, 0.0, 3.0]])
        ranking = rank_pool(entropy, metrics, mask)
        assert ranking.scale.mins.tolist() == pytest.approx([0.2, 0.0, 0.0, 1.0])
        assert ranking.scale.maxs.tolist() == pytest.approx([0.4, 0.0, 1.0, 3.0])
        assert ranking.scale.entropy_cutoff == pytest.approx(0.6)
        # normalised rows (0, 0, 1, 0) and (1, 0, 0, 1): l = 1 and sqrt(2)
        assert ranking.informativeness.tolist() == pytest.approx([1.0, math.sqrt(2.0)])
        assert ranking.order.tolist() == [2, 1, 3, 0]

    def test_ties_are_deterministic(self) -> None:
        entropy = torch.tensor([0.5, 0.5, 0.9, 0.9])
        mask = torch.tensor([False, False, True, True])
        metrics = torch.tensor([[0.3, 0.3, 0.3, 0.3]] * 2)  # constant: l = 0 for both
        ranking = rank_pool(entropy, metrics, mask)
        assert ranking.order.tolist() == [2, 3, 0, 1]

    def test_given_scale_is_used(self) -> None:
        entropy, mask, metrics = _pool(20)
        scale = Scale(torch.zeros(4), torch.full((4,), 10.0), entropy_cutoff=0.7)
        ranking = rank_pool(entropy, metrics, mask, scale=scale)
        assert ranking.scale is scale
        assert torch.allclose(ranking.informativeness, aggregate(metrics.double() / 10.0))

    def test_one_candidate(self) -> None:
        entropy = torch.tensor([0.2, 0.9, 0.4])
        mask = torch.tensor([False, True, False])
        ranking = rank_pool(entropy, torch.tensor([[0.5, 0.1, 0.0, 2.0]]), mask)
        assert ranking.informativeness.tolist() == [0.0]
        assert ranking.priority.tolist() == pytest.approx([0.1, 0.5 + 0.5 * CANDIDATE_MARGIN, 0.2])
        assert ranking.order.tolist() == [1, 2, 0]

    def test_no_candidate(self) -> None:
        entropy = torch.tensor([0.2, 0.6])
        ranking = rank_pool(entropy, torch.zeros((0, 4)), torch.zeros(2, dtype=torch.bool))
        assert ranking.order.tolist() == [1, 0]
        assert ranking.scale.entropy_cutoff == math.inf

    def test_empty_pool(self) -> None:
        ranking = rank_pool(torch.zeros(0), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.bool))
        assert ranking.order.shape == ranking.priority.shape == ranking.score.shape == (0,)
        assert ranking.informativeness.shape == (0,)
        assert json.dumps(ranking.scale.to_dict(), allow_nan=False)

    def test_no_nan_with_empty_images(self) -> None:
        empty = Detections.empty(num_classes=2, width=WIDTH, height=100)
        freq = torch.tensor([1.0, 1.0])
        row = image_metrics(empty, empty, freq, HUAConfig())
        entropy = torch.stack([image_entropy(empty.top_probs)] * 3)
        mask = torch.tensor([True, True, False])
        ranking = rank_pool(entropy, torch.stack([row, row]), mask)
        assert not bool(ranking.score.isnan().any())

    @pytest.mark.parametrize(
        ("metrics_shape", "mask_dtype"),
        [((3, 4), torch.bool), ((2, 3), torch.bool), ((2, 4), torch.int64)],
    )
    def test_bad_shapes_raise(
        self, metrics_shape: tuple[int, int], mask_dtype: torch.dtype
    ) -> None:
        mask = torch.tensor([1, 1, 0]).to(mask_dtype)
        with pytest.raises(ValueError, match="candidate"):
            rank_pool(torch.rand(3), torch.zeros(metrics_shape), mask)

    def test_large_pool_is_a_permutation(self) -> None:
        # Speed is measured by bench/bench_hua_aggregate.py, not asserted here.
        entropy, mask, metrics = _pool(100_000)
        ranking = rank_pool(entropy, metrics, mask)
        assert torch.equal(torch.sort(ranking.order).values, torch.arange(100_000))
        assert bool((ranking.score[ranking.order].diff() >= 0).all())


class TestScoreSingle:
    def test_agrees_with_pool_for_every_image(self) -> None:
        entropy, mask, metrics = _pool(100)
        ranking = rank_pool(entropy, metrics, mask)
        scale = Scale.from_dict(json.loads(json.dumps(ranking.scale.to_dict())))
        rows = torch.zeros(100, 4)
        rows[mask] = metrics
        for i in range(100):
            row = rows[i] if bool(mask[i]) else None
            assert score_single(float(entropy[i]), row, scale) == ranking.score[i].item()

    def test_new_image_lands_at_the_same_place(self) -> None:
        entropy, mask, metrics = _pool(40)
        ranking = rank_pool(entropy, metrics, mask)
        i = int(ranking.order[3])
        score = score_single(float(entropy[i]), metrics[int(mask[:i].sum())], ranking.scale)
        position = int((ranking.score < score).sum())
        assert position == 3

    def test_non_candidate_needs_no_metrics(self) -> None:
        scale = fit_scale(torch.rand(3, 4), entropy_cutoff=0.8)
        assert score_single(0.4, None, scale) == pytest.approx(0.8)

    def test_candidate_without_metrics_raises(self) -> None:
        scale = fit_scale(torch.rand(3, 4), entropy_cutoff=0.8)
        with pytest.raises(ValueError, match="metrics"):
            score_single(0.9, None, scale)

    def test_threshold_override_and_tie_admitted(self) -> None:
        scale = Scale(torch.zeros(4), torch.ones(4), entropy_cutoff=0.8)
        metrics = torch.tensor([1.0, 1.0, 1.0, 1.0])
        assert score_single(0.8, metrics, scale) == pytest.approx(0.0, abs=1e-6)  # l = 2 -> priority ~1
        assert score_single(0.8, metrics, scale, entropy_threshold=0.9) == pytest.approx(0.6)

    def test_out_of_range_metrics_are_clipped(self) -> None:
        scale = Scale(torch.zeros(4), torch.ones(4), entropy_cutoff=0.0)
        score = score_single(0.5, torch.tensor([5.0, -3.0, 0.0, 0.0]), scale)
        # normalised (1, 0, 0, 0): l = 1 -> priority 0.5 + 0.5 * (0.1 + 0.45) = 0.775
        assert score == pytest.approx(0.225)

    def test_empty_pool_scale_places_by_entropy(self) -> None:
        ranking = rank_pool(torch.zeros(0), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.bool))
        assert score_single(1.0, None, ranking.scale) == pytest.approx(0.5)

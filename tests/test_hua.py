"""Tests of model.hua (docs/method.md sections 1-3). Expected values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model.detections import Detections
from model.hua import (
    CANDIDATE_MARGIN,
    EMPTY_METRICS,
    HUAConfig,
    Scale,
    aggregate,
    analysis_set,
    detection_entropy,
    edge_uncertainty,
    entropy_score,
    fit_scale,
    image_aggregate,
    image_entropy,
    image_metrics,
    js_divergence,
    normalise,
    num_candidates,
    overlaps,
    rank_pool,
    rank_position,
    rarity,
    score_single,
    select_candidates,
    semantic_affinity,
)

# JS([1, 0], [0.5, 0.5]): m = [3/4, 1/4]; KL(p||m) = ln(4/3); KL(q||m) = ln(4/3) / 2;
# JS = (3/2) ln(4/3) / (2 ln 2) = 0.75 * log2(4/3).
JS_ONEHOT_VS_UNIFORM = 0.75 * math.log2(4.0 / 3.0)

WIDTH = 100
SUM, MEAN = HUAConfig(), HUAConfig(aggregate="mean")


def _dets(
    boxes: list[list[float]],
    probs: list[list[float]],
    scores: list[float] | None = None,
    sigmas: list[list[float]] | None = None,
    width: int = WIDTH,
) -> Detections:
    """Detections of one WIDTH x 100 image; labels are the foreground argmax, scores its probability
    unless given."""
    c1 = len(probs[0]) if probs else 4
    probs_t = torch.tensor(probs, dtype=torch.float32).reshape(-1, c1)
    d = probs_t.shape[0]
    labels = probs_t[:, 1:].argmax(dim=1) + 1 if d else torch.zeros(0, dtype=torch.int64)
    default = probs_t.gather(1, labels[:, None]).squeeze(1) if d else torch.zeros(0)
    return Detections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=labels,
        scores=torch.tensor(scores, dtype=torch.float32) if scores is not None else default,
        probs=probs_t,
        sigmas=torch.tensor(sigmas if sigmas else [[0.0] * 4] * d).reshape(-1, 4),
        width=width,
        height=100,
    )


def _flip(boxes: list[list[float]], width: int = WIDTH) -> list[list[float]]:
    """Boxes of the horizontally flipped image, in its own pixels."""
    return [[width - x2, y1, width - x1, y2] for x1, y1, x2, y2 in boxes]


def _objects(count: int, probs: list[float], score: float = 0.6) -> Detections:
    """``count`` separate objects (no two overlap), each with softmax ``probs`` and ``score``."""
    boxes = [[10.0 * i, 0.0, 10.0 * i + 8.0, 8.0] for i in range(count)]
    return _dets(boxes, [probs] * count, [score] * count)


UNCERTAIN = [0.1, 0.3, 0.3, 0.3]  # an object the model cannot name


class TestHUAConfig:
    def test_defaults_are_methods(self) -> None:
        config = HUAConfig()
        assert (config.aggregate, config.retrieval_fraction, config.min_candidates, config.candidates) == (
            "sum",
            0.5,
            64,
            None,
        )
        assert (config.retrieval_ratio, config.merge_iou, config.overlap_iou, config.confident_score) == (
            4.0,
            0.7,
            0.3,
            0.3,
        )
        assert config.scale_points == 1000

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"aggregate": "max"},
            {"retrieval_fraction": -0.1},
            {"retrieval_fraction": 1.5},
            {"min_candidates": -1},
            {"candidates": -3},
            {"retrieval_ratio": 0.0},
            {"retrieval_ratio": math.inf},
            {"overlap_iou": 0.0},
            {"overlap_iou": 1.2},
            {"merge_iou": 0.0},
            {"confident_score": 1.5},
            {"scale_points": 1},
        ],
    )
    def test_invalid_values_raise(self, kwargs: dict[str, object]) -> None:
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=name):
            HUAConfig(**kwargs)


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


class TestAnalysisSet:
    def test_duplicates_of_one_object_under_several_classes_count_once(self) -> None:
        box = [10.0, 10.0, 40.0, 40.0]
        near = [11.0, 10.0, 40.0, 41.0]  # IoU > 0.7 with box
        dets = _dets(
            [box, near, box], [[0.1, 0.6, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1], [0.1, 0.1, 0.2, 0.6]], scores=[0.6, 0.3, 0.2]
        )
        kept = analysis_set(dets, 0.7)
        assert len(kept) == 1 and kept.scores.tolist() == pytest.approx([0.6])  # the highest score stays
        one = _dets([box], [[0.1, 0.6, 0.2, 0.1]], scores=[0.6])
        for config in (SUM, MEAN):
            assert image_entropy(dets, config).item() == pytest.approx(image_entropy(one, config).item())
            assert torch.allclose(
                image_metrics(dets, dets, torch.ones(3), config), image_metrics(one, one, torch.ones(3), config)
            )

    def test_distinct_objects_stay(self) -> None:
        dets = _dets([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]], [[0.1, 0.9, 0.0, 0.0]] * 2)
        assert len(analysis_set(dets, 0.7)) == 2  # IoU 1/3


class TestImageAggregate:
    def test_sum_and_mean_are_score_weighted(self) -> None:
        values, scores = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.5, 1.0, 0.1])
        assert image_aggregate(values, scores, "sum", 9.0).item() == pytest.approx(0.55)
        assert image_aggregate(values, scores, "mean", 9.0).item() == pytest.approx(0.55 / 1.6)

    def test_empty_set(self) -> None:
        assert image_aggregate(torch.zeros(0), torch.zeros(0), "sum", 9.0).item() == 0.0
        assert image_aggregate(torch.zeros(0), torch.zeros(0), "mean", 9.0).item() == 9.0


class TestImageEntropy:
    def test_detection_entropy_is_normalised(self) -> None:
        h = detection_entropy(torch.tensor([[0.25] * 4, [1.0, 0.0, 0.0, 0.0]]))
        assert h.tolist() == pytest.approx([1.0, 0.0], abs=1e-7) and h.dtype == torch.float64

    def test_many_uncertain_objects_outrank_a_copy_with_two_of_them_under_sum(self) -> None:
        eight, two = _objects(8, UNCERTAIN), _objects(2, UNCERTAIN)
        assert image_entropy(eight, SUM).item() == pytest.approx(4 * image_entropy(two, SUM).item())
        assert image_entropy(eight, MEAN).item() == pytest.approx(image_entropy(two, MEAN).item())

    def test_empty_image(self) -> None:
        empty = Detections.empty(3, WIDTH, 100)
        assert image_entropy(empty, SUM).item() == 0.0
        assert image_entropy(empty, MEAN).item() == 1.0

    def test_bad_shape_raises(self) -> None:
        with pytest.raises(ValueError, match="probs"):
            detection_entropy(torch.ones(4))

    def test_entropy_score_is_lower_for_less_certain(self) -> None:
        assert entropy_score(0.0) == 1.0
        assert entropy_score(3.0) == 0.25 < entropy_score(1.0) == 0.5


class TestSemanticAffinity:
    BOX = [[10.0, 20.0, 30.0, 60.0]]
    PROBS = [[0.1, 0.9, 0.0, 0.0]]

    def test_consistent_box_is_zero(self) -> None:
        d = _dets(self.BOX, self.PROBS)
        assert semantic_affinity(d, _dets(_flip(self.BOX), self.PROBS)).tolist() == pytest.approx([0.0], abs=1e-6)

    def test_unflipped_coordinates_do_not_match(self) -> None:
        d = _dets(self.BOX, self.PROBS)
        assert semantic_affinity(d, d).tolist() == [1.0]  # (10..30) against (70..90)

    def test_partial_overlap_hand_value(self) -> None:
        # flipped box mapped back is (10, 20, 30, 40): IoU 0.5 with the original, same probs
        d = _dets(self.BOX, self.PROBS)
        f = _dets(_flip([[10.0, 20.0, 30.0, 40.0]]), self.PROBS)
        assert semantic_affinity(d, f).tolist() == pytest.approx([0.5], abs=1e-6)

    def test_no_flipped_detection_is_one(self) -> None:
        d = _dets(self.BOX * 2, self.PROBS * 2)
        assert semantic_affinity(d, Detections.empty(3, WIDTH, 100)).tolist() == [1.0, 1.0]

    def test_width_mismatch_raises(self) -> None:
        with pytest.raises(ValueError, match="width"):
            semantic_affinity(_dets(self.BOX, self.PROBS), _dets(self.BOX, self.PROBS, width=50))


class TestRarity:
    def test_hand_value(self) -> None:
        # q = (0.5, 0.5, 0); f / max f = (1, 0.5, 0): r = 0.5 * 0 + 0.5 * 0.5 = 0.25
        r = rarity(torch.tensor([[0.2, 0.4, 0.4, 0.0]]), torch.tensor([4.0, 2.0, 0.0]))
        assert r.tolist() == pytest.approx([0.25])

    def test_frequencies_and_counts_agree(self) -> None:
        probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
        assert torch.allclose(
            rarity(probs, torch.tensor([4.0, 2.0, 2.0])), rarity(probs, torch.tensor([0.5, 0.25, 0.25]))
        )

    def test_nothing_labeled_is_all_rare(self) -> None:
        assert rarity(torch.tensor([[0.3, 0.7, 0.0]]), torch.zeros(2)).tolist() == pytest.approx([1.0])

    def test_independent_of_the_object_count(self) -> None:
        freq = torch.tensor([3.0, 1.0, 1.0])
        one = image_metrics(_objects(1, UNCERTAIN), _objects(1, UNCERTAIN), freq, MEAN)[1].item()
        six = image_metrics(_objects(6, UNCERTAIN), _objects(6, UNCERTAIN), freq, MEAN)[1].item()
        assert one == pytest.approx(six)  # the withdrawn JS form favoured few objects

    def test_class_count_mismatch_raises(self) -> None:
        with pytest.raises(ValueError, match="labeled_class_freq"):
            rarity(torch.zeros((1, 3)), torch.ones(3))


class TestOverlaps:
    BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [50.0, 50.0, 60.0, 60.0]])

    def test_confident_overlapping_objects(self) -> None:
        o = overlaps(self.BOXES, torch.tensor([0.9, 0.8, 0.9]), 0.3, 0.3)
        assert o.tolist() == [1.0, 1.0, 0.0]  # IoU 1/3 >= 0.3

    def test_a_low_score_detection_neither_counts_nor_makes_others_count(self) -> None:
        assert overlaps(self.BOXES, torch.tensor([0.9, 0.1, 0.9]), 0.3, 0.3).tolist() == [0.0, 0.0, 0.0]

    def test_threshold(self) -> None:
        assert overlaps(self.BOXES, torch.ones(3), 0.34, 0.3).tolist() == [0.0, 0.0, 0.0]


class TestImageMetrics:
    def test_one_consistent_box(self) -> None:
        box, probs = [[10.0, 20.0, 30.0, 60.0]], [[0.1, 0.9, 0.0, 0.0]]
        original = _dets(box, probs, sigmas=[[0.1, 0.2, 0.3, 0.4]])
        flipped = _dets(_flip(box), probs)
        metrics = image_metrics(original, flipped, torch.tensor([1.0, 1.0, 1.0]), MEAN)
        # SA 0; CD: class 1 is as common as the most common one -> 0; OR 0; LC 0.25
        assert metrics.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.25], abs=1e-6)
        assert metrics.dtype == torch.float64
        summed = image_metrics(original, flipped, torch.tensor([1.0, 1.0, 1.0]), SUM)
        assert summed.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.9 * 0.25], abs=1e-6)  # weighted by s = 0.9

    def test_no_detections(self) -> None:
        empty = Detections.empty(3, WIDTH, 100)
        assert image_metrics(empty, empty, torch.ones(3), MEAN).tolist() == list(EMPTY_METRICS)
        assert image_metrics(empty, empty, torch.ones(3), SUM).tolist() == [0.0] * 4

    def test_eight_uncertain_objects_against_two(self) -> None:
        freq = torch.tensor([1.0, 0.0, 0.0])
        eight, two = _objects(8, UNCERTAIN), _objects(2, UNCERTAIN)
        lost = Detections.empty(3, WIDTH, 100)  # the mirrored pass finds nothing: SA 1 for each object
        sums = [image_metrics(d, lost, freq, SUM) for d in (eight, two)]
        means = [image_metrics(d, lost, freq, MEAN) for d in (eight, two)]
        assert torch.allclose(sums[0], 4 * sums[1]) and bool((sums[0] > sums[1]).any())
        assert torch.allclose(means[0], means[1])

    def test_edge_uncertainty(self) -> None:
        assert edge_uncertainty(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 2.0]])).tolist() == [1.0, 0.5]


class TestRankPosition:
    def test_mean_rank_of_ties_and_interpolation(self) -> None:
        ref = torch.tensor([0.0, 1.0, 1.0, 4.0, 5.0])
        pos = rank_position(torch.tensor([0.0, 1.0, 5.0, 2.5, -3.0, 9.0]), ref)
        # ranks 1, 2.5, 5 -> (r-1)/4; 2.5 lies halfway from index 2 to 3 -> 2.5/4
        assert pos.tolist() == pytest.approx([0.0, 1.5 / 4, 1.0, 2.5 / 4, 0.0, 1.0])

    def test_constant_or_short_reference_is_zero(self) -> None:
        assert rank_position(torch.tensor([3.0]), torch.tensor([2.0, 2.0])).tolist() == [0.0]
        assert rank_position(torch.tensor([3.0]), torch.tensor([2.0])).tolist() == [0.0]
        assert rank_position(torch.tensor([3.0]), torch.zeros(0)).tolist() == [0.0]


class TestNormalise:
    def test_a_saturated_metric_cannot_dominate_l(self) -> None:
        # OR saturated at 1 on all but one candidate; SA spread evenly. Under min-max OR gave
        # d = 1 to 9 of 10 candidates; ranked, the ties share a mean rank and weigh no more than SA.
        sa = torch.linspace(0.0, 1.0, 10, dtype=torch.float64)
        or_ = torch.tensor([0.0] + [1.0] * 9, dtype=torch.float64)
        metrics = torch.stack([sa, torch.zeros(10), or_, torch.zeros(10)], dim=1).double()
        d = normalise(metrics, fit_scale(metrics, torch.ones(10), 0.0))
        assert d[:, 0].tolist() == pytest.approx([i / 9 for i in range(10)])
        assert d[1:, 2].tolist() == pytest.approx([5.0 / 9] * 9)  # mean rank 6 of 10 -> 5/9
        assert float(d[:, 2].max()) < float(d[:, 0].max())
        assert d[:, 1].tolist() == [0.0] * 10  # a constant metric is 0
        top = int(aggregate(d).argmax())
        assert top == 9  # the largest SA wins, not the mass of saturated OR

    def test_outside_the_stored_values_is_clipped(self) -> None:
        metrics = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
        scale = fit_scale(metrics, torch.ones(2), 0.0)
        out = normalise(torch.tensor([[-1.0, 2.0, 0.5, 1.0]]), scale)
        assert out.tolist() == [[0.0, 1.0, 0.5, 1.0]]


class TestScale:
    def test_json_round_trip_is_exact(self) -> None:
        gen = torch.Generator().manual_seed(0)
        scale = fit_scale(torch.rand(5, 4, generator=gen).double(), torch.rand(9, generator=gen).double(), 0.3)
        back = Scale.from_json(json.loads(json.dumps(scale.to_json(), allow_nan=False)))
        assert back.to_json() == scale.to_json()
        assert torch.equal(back.metrics, scale.metrics) and torch.equal(back.entropy, scale.entropy)

    def test_no_candidate_has_an_infinite_cutoff_stored_as_none(self) -> None:
        ranking = rank_pool(torch.tensor([0.1, 0.2]).double(), torch.zeros((0, 4)), torch.zeros(2, dtype=torch.bool))
        data = json.loads(json.dumps(ranking.scale.to_json(), allow_nan=False))
        assert data["entropy_cutoff"] is None and Scale.from_json(data).entropy_cutoff == math.inf

    def test_keeps_at_most_scale_points_quantiles(self) -> None:
        gen = torch.Generator().manual_seed(1)
        scale = fit_scale(torch.rand(50, 4, generator=gen), torch.rand(80, generator=gen), 0.5, points=10)
        assert scale.metrics.shape == (10, 4) and scale.informativeness.shape == (10,) and scale.entropy.shape == (10,)
        assert bool((scale.metrics[1:] >= scale.metrics[:-1]).all())

    @pytest.mark.parametrize("data", [{"mins": [0.0] * 4, "maxs": [1.0] * 4}, {"format": 2, "metrics": {}}])
    def test_old_or_bad_forms_raise(self, data: dict) -> None:
        with pytest.raises(ValueError, match="Scale"):
            Scale.from_json(data)


def _pool(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random pool: entropies (under ``sum``, above 1 for some), half of it candidates, metrics."""
    gen = torch.Generator().manual_seed(seed)
    entropy = (torch.rand(n, generator=gen) * 3).double()
    mask = select_candidates(entropy, num_candidates(n, HUAConfig(min_candidates=1)))
    metrics = torch.rand(int(mask.sum()), 4, generator=gen).double() * torch.tensor([1.0, 1.0, 1.0, 5.0])
    return entropy, metrics, mask


class TestRankPool:
    def test_candidates_above_non_candidates_and_ordered(self) -> None:
        entropy, metrics, mask = _pool()
        ranking = rank_pool(entropy, metrics, mask)
        assert bool(ranking.priority[mask].min() >= 0.5 + CANDIDATE_MARGIN / 2)
        assert bool(ranking.priority[~mask].max() <= 0.5)
        assert torch.equal(ranking.order, torch.sort(ranking.score, stable=True).indices)
        l_order = torch.argsort(ranking.informativeness, descending=True)
        assert torch.equal(ranking.order[: int(mask.sum())], torch.nonzero(mask).flatten()[l_order])

    def test_ties_in_l_are_broken_by_entropy(self) -> None:
        entropy = torch.tensor([0.9, 2.0, 1.5]).double()
        ranking = rank_pool(entropy, torch.zeros((3, 4)).double(), torch.ones(3, dtype=torch.bool))
        assert ranking.order.tolist() == [1, 2, 0]

    def test_neighbours_differ_at_three_decimals(self) -> None:
        # Label Studio shows three decimals: 300 candidates must not read as ties
        entropy, metrics, mask = _pool(n=600, seed=3)
        ranking = rank_pool(entropy, metrics, mask)
        shown = torch.sort(torch.round(ranking.score[mask] * 1000)).values
        assert int(mask.sum()) == 300 and bool((shown[1:] > shown[:-1]).all())

    def test_empty_pool_and_no_candidate(self) -> None:
        ranking = rank_pool(torch.zeros(0).double(), torch.zeros((0, 4)), torch.zeros(0, dtype=torch.bool))
        assert ranking.order.shape == (0,)
        entropy = torch.tensor([0.2, 0.1]).double()
        ranking = rank_pool(entropy, torch.zeros((0, 4)), torch.zeros(2, dtype=torch.bool))
        assert ranking.order.tolist() == [0, 1]

    @pytest.mark.parametrize("shape", [(2, 4), (3, 3)])
    def test_bad_shapes_raise(self, shape: tuple[int, int]) -> None:
        mask = torch.tensor([True, True, True])
        with pytest.raises(ValueError, match="candidate_metrics"):
            rank_pool(torch.rand(3).double(), torch.zeros(shape), mask)


class TestScoreSingle:
    def test_stored_scale_places_every_pool_image_where_the_pool_ranking_did(self) -> None:
        entropy, metrics, mask = _pool(n=40, seed=2)
        ranking = rank_pool(entropy, metrics, mask)
        scale = Scale.from_json(json.loads(json.dumps(ranking.scale.to_json())))
        rows = iter(metrics)
        for i in range(40):
            row = next(rows) if mask[i] else None
            assert score_single(float(entropy[i]), row, scale) == ranking.score[i].item()

    def test_a_new_image_lands_between_its_neighbours(self) -> None:
        entropy, metrics, mask = _pool(n=40, seed=4)
        ranking = rank_pool(entropy, metrics, mask)
        cut = ranking.scale.entropy_cutoff
        best = metrics.max(dim=0).values + 1.0  # beyond every stored value: the top of the queue
        assert score_single(cut + 1.0, best, ranking.scale) == pytest.approx(float(ranking.score.min()), abs=1e-6)
        assert score_single(cut - 1e-9, None, ranking.scale) > 0.5  # a non-candidate stays in the lower half

    def test_candidate_without_metrics_raises(self) -> None:
        entropy, metrics, mask = _pool()
        with pytest.raises(ValueError, match="candidate"):
            score_single(99.0, None, rank_pool(entropy, metrics, mask).scale)

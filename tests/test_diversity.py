"""k-center greedy and the optional diversity pass over the top of a ranking."""

import torch

from model.diversity import diversify, k_center_greedy


class TestKCenterGreedy:
    def test_picks_the_farthest_point_each_time(self) -> None:
        # Two tight clusters near 0 and one far point at 10: after the first pick
        # (row 0), the far point comes next, then the middle cluster.
        feats = torch.tensor([[0.0], [0.1], [10.0], [5.0], [5.1]])
        assert k_center_greedy(feats, 3).tolist() == [0, 2, 3]  # 5.0 is 5 from both, 5.1 only 4.9 from 10

    def test_distinct_and_clipped(self) -> None:
        feats = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
        chosen = k_center_greedy(feats, 10)
        assert sorted(chosen.tolist()) == list(range(6))

    def test_empty(self) -> None:
        assert k_center_greedy(torch.zeros(0, 4), 3).numel() == 0


class TestDiversify:
    def test_near_duplicates_are_spread_out(self) -> None:
        # The ranking's top three are near-duplicates (features ~0); image 3 differs.
        feats = torch.tensor([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [3.0, 3.0], [9.0, 9.0]])
        order = torch.tensor([0, 1, 2, 3, 4])
        score = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9], dtype=torch.float64)
        new_order, new_score = diversify(order, score, feats, window=4)
        assert new_order.tolist()[:2] == [0, 3]  # the distinct image moves up to second place
        assert new_order.tolist()[4] == 4  # outside the window: untouched
        # Scores stay the same set and ascending along the new order.
        assert sorted(new_score.tolist()) == sorted(score.tolist())
        assert bool((new_score[new_order].diff() >= 0).all())

    def test_small_window_changes_nothing(self) -> None:
        order, score = torch.tensor([2, 0, 1]), torch.tensor([0.5, 0.9, 0.1])
        new_order, new_score = diversify(order, score, torch.randn(3, 4), window=2)
        assert torch.equal(new_order, order) and torch.equal(new_score, score)


class TestScorePoolWithDiversity:
    def test_features_flow_and_order_is_a_permutation(self) -> None:
        from model.detector import Detector, DetectorConfig, build_model
        from model.hua import HUAConfig
        from model.scoring import score_pool

        config = DetectorConfig(
            backbone="mobilenet_v3_320_fpn",
            weights="none",
            allow_download=False,
            analysis_threshold=0.0,
            min_size=64,
            max_size=96,
        )
        torch.manual_seed(0)
        model, _ = build_model(config, ["a", "b"])
        detector = Detector(model, ["a", "b"], torch.device("cpu"))
        images = {i: torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)}
        hua = HUAConfig(min_candidates=0, retrieval_fraction=0.5, diversity=True, diversity_window=4)
        pool = score_pool(detector, list(images), images.__getitem__, torch.zeros(2), hua, batch_size=3)
        assert all(d.features is not None and d.features.dim() == 1 for d in pool.detections)
        assert sorted(pool.ranking.order.tolist()) == list(range(6))
        assert bool((pool.ranking.score[pool.ranking.order].diff() >= 0).all())

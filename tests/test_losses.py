"""Tests of model/losses.py: the standard and the synchronic loss (docs/method.md, section 4)."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import generalized_box_iou

from model.losses import (
    LOSS_NAMES,
    LossConfig,
    bounded_log_var,
    combine_losses,
    eiou_loss,
    emphasis_factors,
    fastrcnn_synchronic_terms,
    kl_regression_loss,
    match_lambda,
)

NUM_CLASSES = 3  # C, so logits have C + 1 = 4 columns
BOX_CODER = BoxCoder((10.0, 10.0, 5.0, 5.0))  # torchvision's RoI-head weights
TV_BETA = 1.0 / 9
DTYPES = [torch.float32, torch.float64]
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_aware", "loss_eiou")


@dataclass
class Batch:
    """Matched RoI-head inputs, as ``select_training_samples`` and the box head give them."""

    class_logits: Tensor
    box_regression: Tensor
    box_log_var: Tensor
    labels: list[Tensor]
    regression_targets: list[Tensor]
    proposals: list[Tensor]
    matched_gt_boxes: list[Tensor]

    def terms(self) -> dict[str, Tensor]:
        return fastrcnn_synchronic_terms(
            self.class_logits,
            self.box_regression,
            self.box_log_var,
            self.labels,
            self.regression_targets,
            self.proposals,
            self.matched_gt_boxes,
            BOX_CODER,
        )

    def leaves(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.class_logits, self.box_regression, self.box_log_var


def _image(num_pos: int, num_neg: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Proposals, labels and matched gt boxes of one image: jittered gt boxes, then far-away negatives."""
    xy = torch.rand(num_pos, 2, dtype=dtype) * 100
    gt = torch.cat([xy, xy + 20 + torch.rand(num_pos, 2, dtype=dtype) * 50], dim=1)
    pos_proposals = gt + (torch.rand(num_pos, 4, dtype=dtype) - 0.5) * 6
    neg_xy = 300 + torch.rand(num_neg, 2, dtype=dtype) * 100
    neg_proposals = torch.cat([neg_xy, neg_xy + 10 + torch.rand(num_neg, 2, dtype=dtype) * 30], dim=1)
    labels = torch.cat([torch.randint(1, NUM_CLASSES + 1, (num_pos,)), torch.zeros(num_neg, dtype=torch.int64)])
    filler = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=dtype).expand(num_neg, 4)
    return torch.cat([pos_proposals, neg_proposals]), labels, torch.cat([gt, filler])


def make_batch(
    seed: int = 0, num_pos: int = 4, num_neg: int = 6, num_images: int = 2, dtype: torch.dtype = torch.float32
) -> Batch:
    """A deterministic batch with small random head outputs that require grad."""
    torch.manual_seed(seed)
    images = [_image(num_pos, num_neg, dtype) for _ in range(num_images)]
    proposals = [p for p, _, _ in images]
    labels = [lab for _, lab, _ in images]
    gts = [g for _, _, g in images]
    n = sum(len(lab) for lab in labels)
    width = 4 * (NUM_CLASSES + 1)
    return Batch(
        class_logits=torch.randn(n, NUM_CLASSES + 1, dtype=dtype, requires_grad=True),
        box_regression=(0.1 * torch.randn(n, width, dtype=dtype)).requires_grad_(),
        box_log_var=(0.1 * torch.randn(n, width, dtype=dtype)).requires_grad_(),
        labels=labels,
        regression_targets=list(BOX_CODER.encode(gts, proposals)),
        proposals=proposals,
        matched_gt_boxes=gts,
    )


def rpn_terms(dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Stand-ins for torchvision's RPN losses, attached to their own leaves."""
    objectness = torch.tensor(0.4, dtype=dtype, requires_grad=True)
    rpn_box = torch.tensor(0.1, dtype=dtype, requires_grad=True)
    return {"loss_objectness": objectness * 1, "loss_rpn_box_reg": rpn_box * 1}


def assert_finite_grads(output: Tensor, inputs: tuple[Tensor, ...]) -> list[Tensor | None]:
    grads = torch.autograd.grad(output, inputs, allow_unused=True, retain_graph=True)
    for grad in grads:
        assert grad is None or torch.isfinite(grad).all()
    return list(grads)


class TestLossConfig:
    def test_defaults_are_method_md(self) -> None:
        config = LossConfig()
        assert (config.kind, config.form) == ("synchronic", "paper")
        assert config.eiou_gamma == 0.8
        assert config.lambda_fixed is None
        assert config.lambda_clip == (0.1, 0.9)
        assert config.smooth_l1_beta == pytest.approx(1 / 9)

    @pytest.mark.parametrize("kind", ["", "Synchronic", "eiou", "giou"])
    def test_rejects_bad_kind(self, kind: str) -> None:
        with pytest.raises(ValueError, match="kind"):
            LossConfig(kind=kind)

    @pytest.mark.parametrize("gamma", [0.0, -0.5, 1.01, 2.0, math.nan])
    def test_rejects_bad_gamma(self, gamma: float) -> None:
        with pytest.raises(ValueError, match="eiou_gamma"):
            LossConfig(eiou_gamma=gamma)

    @pytest.mark.parametrize("gamma", [1e-3, 0.5, 1.0])
    def test_accepts_gamma_in_range(self, gamma: float) -> None:
        assert LossConfig(eiou_gamma=gamma).eiou_gamma == gamma

    def test_rejects_bad_lambda_and_clip(self) -> None:
        with pytest.raises(ValueError, match="lambda_fixed"):
            LossConfig(lambda_fixed=1.5)
        with pytest.raises(ValueError, match="lambda_clip"):
            LossConfig(lambda_clip=(0.9, 0.1))
        with pytest.raises(ValueError, match="lambda_clip"):
            LossConfig(lambda_clip=(-0.1, 0.5))

    def test_is_frozen(self) -> None:
        with pytest.raises(FrozenInstanceError):
            LossConfig().kind = "standard"


class TestEIoULoss:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_hand_values(self, dtype: torch.dtype) -> None:
        giou = torch.tensor([0.0, 1.0, 0.5, -1.0], dtype=dtype)
        expected = torch.tensor([1.0, 0.0, 1.5**0.8 * 0.5, 0.0], dtype=dtype)
        torch.testing.assert_close(eiou_loss(giou), expected, atol=1e-4, rtol=1e-6)
        # gamma = 1: (1 + g)(1 - g) = 1 - g^2
        torch.testing.assert_close(eiou_loss(giou[:3], gamma=1.0), torch.tensor([1.0, 0.0, 0.75], dtype=dtype))

    def test_zero_at_perfect_overlap_and_keeps_shape(self) -> None:
        giou = torch.ones(2, 3)
        loss = eiou_loss(giou)
        assert loss.shape == (2, 3)
        assert torch.equal(loss, torch.zeros(2, 3))

    @pytest.mark.parametrize("gamma", [0.5, 0.8, 1.0])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_decreasing_above_stationary_point(self, gamma: float, dtype: torch.dtype) -> None:
        g_star = (gamma - 1) / (gamma + 1)
        giou = torch.linspace(g_star + 0.01, 1.0, 200, dtype=dtype, requires_grad=True)
        loss = eiou_loss(giou, gamma)
        assert (loss.diff() < 0).all()
        (grad,) = torch.autograd.grad(loss.sum(), giou)
        assert (grad < 0).all()

    @pytest.mark.parametrize("gamma", [0.5, 0.8, 1.0])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_not_decreasing_below_stationary_point(self, gamma: float, dtype: torch.dtype) -> None:
        """docs/method.md's note (section 4): below (gamma - 1)/(gamma + 1) the loss grows with GIoU."""
        g_star = (gamma - 1) / (gamma + 1)
        giou = torch.linspace(-0.99, g_star - 0.01, 100, dtype=dtype, requires_grad=True)
        loss = eiou_loss(giou, gamma)
        assert (loss.diff() > 0).all()
        (grad,) = torch.autograd.grad(loss.sum(), giou)
        assert (grad > 0).all()

    def test_stationary_point_at_gamma_0_8(self) -> None:
        giou = torch.tensor(-0.2 / 1.8, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(eiou_loss(giou, 0.8), giou)
        assert abs(grad.item()) < 1e-12
        assert -0.12 < giou.item() < -0.11

    @pytest.mark.parametrize("gamma", [0.5, 0.8, 1.0])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_finite_non_negative_with_finite_grad_on_whole_range(self, gamma: float, dtype: torch.dtype) -> None:
        giou = torch.linspace(-1.0, 1.0, 101, dtype=dtype, requires_grad=True)
        loss = eiou_loss(giou, gamma)
        assert torch.isfinite(loss).all() and (loss >= 0).all()
        (grad,) = torch.autograd.grad(loss.sum(), giou)
        assert torch.isfinite(grad).all()


class TestKLRegressionLoss:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_equals_smooth_l1_plus_constant_at_zero_log_var(self, dtype: torch.dtype) -> None:
        """At alpha = 0 the constant alpha/2 is 0: summed, then divided by the N sampled proposals."""
        torch.manual_seed(1)
        deltas, targets = torch.randn(7, 4, dtype=dtype), torch.randn(7, 4, dtype=dtype)
        loss = kl_regression_loss(deltas, targets, torch.zeros(7, 4, dtype=dtype), 32, beta=TV_BETA)
        expected = F.smooth_l1_loss(deltas, targets, beta=TV_BETA, reduction="sum") / 32
        torch.testing.assert_close(loss, expected)

    @pytest.mark.parametrize("alpha", [-1.0, 0.3, 2.0])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_constant_log_var(self, alpha: float, dtype: torch.dtype) -> None:
        torch.manual_seed(2)
        deltas, targets = torch.randn(5, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype)
        log_var = torch.full((5, 4), alpha, dtype=dtype)
        loss = kl_regression_loss(deltas, targets, log_var, 5, beta=TV_BETA)
        smooth_l1 = F.smooth_l1_loss(deltas, targets, beta=TV_BETA, reduction="sum") / 5
        expected = math.exp(-alpha) * smooth_l1 + 4 * alpha / 2
        torch.testing.assert_close(loss, expected)

    def test_hand_value(self) -> None:
        deltas = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        targets = torch.zeros(1, 4)
        # smoothL1(1) with beta 1/9 = 1 - beta/2 = 17/18
        loss0 = kl_regression_loss(deltas, targets, torch.zeros(1, 4), 1)
        assert loss0.item() == pytest.approx(17 / 18)
        loss_ln2 = kl_regression_loss(deltas, targets, torch.full((1, 4), math.log(2.0)), 1)
        assert loss_ln2.item() == pytest.approx(17 / 36 + 2 * math.log(2.0))
        assert kl_regression_loss(deltas, targets, torch.zeros(1, 4), 4).item() == pytest.approx(17 / 72)

    def test_log_var_optimum_is_log_of_twice_the_error(self) -> None:
        """d/d alpha [exp(-alpha) s + alpha/2] = 0 at alpha = log(2 s): sigma tracks the error."""
        torch.manual_seed(3)
        deltas, targets = torch.randn(6, 4), torch.randn(6, 4)
        s = F.smooth_l1_loss(deltas, targets, beta=TV_BETA, reduction="none")
        log_var = torch.log(2 * s).requires_grad_()
        (grad,) = torch.autograd.grad(kl_regression_loss(deltas, targets, log_var, 24), log_var)
        torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-6, rtol=0)

    def test_finite_gradients(self) -> None:
        torch.manual_seed(4)
        deltas = torch.randn(8, 4, requires_grad=True)
        log_var = (0.5 * torch.randn(8, 4)).requires_grad_()
        loss = kl_regression_loss(deltas, torch.randn(8, 4), log_var, 16)
        assert torch.isfinite(loss)
        grads = assert_finite_grads(loss, (deltas, log_var))
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


class TestEmphasisFactors:
    def test_hand_values(self) -> None:
        logits = torch.zeros(3, NUM_CLASSES + 1)  # uniform: p_true = 1/4
        beta_cls, beta_loc = emphasis_factors(logits, torch.tensor([0, 2, 1]), torch.tensor([1.0, 0.5]))
        assert beta_cls.item() == pytest.approx(0.75)
        assert beta_loc.item() == pytest.approx(0.25)

    def test_confident_and_perfect_gives_zero(self) -> None:
        labels = torch.tensor([0, 1, 3])
        logits = F.one_hot(labels, NUM_CLASSES + 1).float() * 100
        beta_cls, beta_loc = emphasis_factors(logits, labels, torch.ones(2))
        assert beta_cls.item() == pytest.approx(0.0, abs=1e-6)
        assert beta_loc.item() == 0.0

    def test_confidently_wrong_gives_one(self) -> None:
        labels = torch.tensor([1, 2])
        logits = F.one_hot(torch.tensor([0, 0]), NUM_CLASSES + 1).float() * 100
        beta_cls, beta_loc = emphasis_factors(logits, labels, torch.zeros(2))
        assert beta_cls.item() == pytest.approx(1.0)
        assert beta_loc.item() == 1.0

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_in_unit_interval_and_detached(self, seed: int) -> None:
        torch.manual_seed(seed)
        logits = (5 * torch.randn(16, NUM_CLASSES + 1)).requires_grad_()
        ious = torch.rand(5, requires_grad=True)
        for beta in emphasis_factors(logits, torch.randint(0, NUM_CLASSES + 1, (16,)), ious):
            assert beta.shape == ()
            assert 0.0 <= beta.item() <= 1.0
            assert not beta.requires_grad and beta.grad_fn is None

    def test_no_positive_gives_zero_beta_loc(self) -> None:
        _, beta_loc = emphasis_factors(
            torch.randn(4, NUM_CLASSES + 1), torch.zeros(4, dtype=torch.int64), torch.zeros(0)
        )
        assert beta_loc.item() == 0.0


class TestMatchLambda:
    @pytest.mark.parametrize(
        ("eiou", "rest", "expected"),
        [
            (1.0, 3.0, 0.75),
            (3.0, 1.0, 0.25),
            (1.0, 1.0, 0.5),
            (1.0, 100.0, 0.9),
            (100.0, 1.0, 0.1),
            (0.0, 5.0, 0.9),
            (5.0, 0.0, 0.1),
            (0.0, 0.0, 0.5),
            (-1.0, 3.0, 0.75),  # magnitudes
        ],
    )
    def test_hand_values(self, eiou: float, rest: float, expected: float) -> None:
        lam = match_lambda(torch.tensor(eiou), torch.tensor(rest))
        assert lam.item() == pytest.approx(expected)

    def test_matches_magnitudes(self) -> None:
        a, b = torch.tensor(0.6), torch.tensor(0.9)
        lam = match_lambda(a, b)
        assert (lam * a).item() == pytest.approx(((1 - lam) * b).item())

    @pytest.mark.parametrize("ratio", [1e-12, 1e-6, 1e6, 1e12])
    def test_extreme_ratios_stay_in_clip(self, ratio: float) -> None:
        lam = match_lambda(torch.tensor(1.0), torch.tensor(ratio), clip=(0.2, 0.7))
        assert 0.2 <= lam.item() <= 0.7

    def test_custom_clip(self) -> None:
        lam = match_lambda(torch.tensor(1.0), torch.tensor(100.0), clip=(0.0, 1.0))
        assert lam.item() == pytest.approx(100 / 101)

    def test_detached(self) -> None:
        a = torch.tensor(2.0, requires_grad=True)
        b = torch.tensor(1.0, requires_grad=True)
        lam = match_lambda(a * 1, b * 1)
        assert not lam.requires_grad and lam.grad_fn is None

    def test_rejects_bad_clip(self) -> None:
        with pytest.raises(ValueError):
            match_lambda(torch.tensor(1.0), torch.tensor(1.0), clip=(0.8, 0.2))


class TestSynchronicTerms:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_scalar_finite_terms(self, dtype: torch.dtype) -> None:
        terms = make_batch(dtype=dtype).terms()
        assert set(terms) == {*LOSS_KEYS, "beta_cls", "beta_loc"}
        for name, value in terms.items():
            assert value.shape == (), name
            assert value.dtype == dtype, name
            assert torch.isfinite(value), name
        assert terms["loss_eiou"].item() > 0 and terms["loss_aware"].item() != 0

    @pytest.mark.parametrize("seed", [0, 1])
    def test_reproduces_torchvision_fastrcnn_loss(self, seed: int) -> None:
        batch = make_batch(seed=seed)
        terms = batch.terms()
        tv_cls, tv_box = fastrcnn_loss(batch.class_logits, batch.box_regression, batch.labels, batch.regression_targets)
        torch.testing.assert_close(terms["loss_classifier"], tv_cls, rtol=0, atol=0)
        torch.testing.assert_close(terms["loss_box_reg"], tv_box, rtol=0, atol=0)

    def test_every_term_has_finite_gradients(self) -> None:
        batch = make_batch()
        terms = batch.terms()
        for name in LOSS_KEYS:
            grads = assert_finite_grads(terms[name], batch.leaves())
            assert any(g is not None and g.abs().sum() > 0 for g in grads), name
        for name in ("beta_cls", "beta_loc"):
            assert not terms[name].requires_grad and 0.0 <= terms[name].item() <= 1.0

    def test_aware_uses_log_var_and_eiou_uses_deltas(self) -> None:
        batch = make_batch()
        terms = batch.terms()
        (g_aware,) = torch.autograd.grad(terms["loss_aware"], batch.box_log_var, retain_graph=True)
        assert g_aware.abs().sum() > 0
        g_eiou = torch.autograd.grad(terms["loss_eiou"], batch.leaves(), allow_unused=True)
        assert g_eiou[0] is None and g_eiou[2] is None
        assert g_eiou[1] is not None and g_eiou[1].abs().sum() > 0

    def test_aware_equals_torchvision_box_loss_at_zero_log_var(self) -> None:
        """At alpha = 0, L_aware is torchvision's loss_box_reg exactly: both divide by the N sampled proposals."""
        batch = make_batch(num_pos=3, num_neg=5)
        with torch.no_grad():
            batch.box_log_var.zero_()
        terms = batch.terms()
        torch.testing.assert_close(terms["loss_aware"], terms["loss_box_reg"])

    def test_eiou_matches_diagonal_of_pairwise_giou(self) -> None:
        batch = make_batch(seed=5)
        labels = torch.cat(batch.labels)
        pos = torch.where(labels > 0)[0]
        deltas = batch.box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
        decoded = BOX_CODER.decode_single(deltas, torch.cat(batch.proposals)[pos])
        giou = generalized_box_iou(decoded, torch.cat(batch.matched_gt_boxes)[pos]).diagonal()
        expected = ((1 + giou) ** 0.8 * (1 - giou)).mean()
        torch.testing.assert_close(batch.terms()["loss_eiou"], expected)

    def test_perfect_regression_gives_zero_box_terms(self) -> None:
        """Deltas equal to the targets decode to the gt: GIoU 1, EIoU 0, beta_loc 0."""
        batch = make_batch(seed=6)
        labels = torch.cat(batch.labels)
        targets = torch.cat(batch.regression_targets)
        with torch.no_grad():
            view = batch.box_regression.view(len(labels), -1, 4)
            view[torch.arange(len(labels)), labels] = targets
        terms = batch.terms()
        assert terms["loss_box_reg"].item() == 0.0
        assert terms["loss_eiou"].item() == pytest.approx(0.0, abs=1e-4)
        assert terms["beta_loc"].item() == pytest.approx(0.0, abs=1e-5)

    def test_on_torchvision_select_training_samples(self) -> None:
        """The inputs are what torchvision's RoIHeads produces; matched gt as the RoI head would build it."""
        torch.manual_seed(7)
        heads = RoIHeads(None, None, None, 0.5, 0.5, 32, 0.25, None, 0.05, 0.5, 100)
        targets = [
            {
                "boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0], [100.0, 40.0, 150.0, 90.0]]),
                "labels": torch.tensor([1, 3]),
            },
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        ]
        raw = [
            t["boxes"].repeat(5, 1) + torch.randn(10, 4) * 4 if len(t["boxes"]) else torch.zeros(0, 4) for t in targets
        ]
        raw = [torch.cat([r, torch.tensor([[200.0, 200.0, 240.0, 260.0]] * 8)]) for r in raw]
        proposals, matched_idxs, labels, regression_targets = heads.select_training_samples(raw, targets)
        gt = [t["boxes"] if len(t["boxes"]) else torch.zeros(1, 4) for t in targets]
        matched = [g[i] for g, i in zip(gt, matched_idxs)]
        n = sum(len(lab) for lab in labels)
        logits = torch.randn(n, NUM_CLASSES + 1, requires_grad=True)
        reg = (0.1 * torch.randn(n, 4 * (NUM_CLASSES + 1))).requires_grad_()
        log_var = torch.zeros(n, 4 * (NUM_CLASSES + 1), requires_grad=True)
        terms = fastrcnn_synchronic_terms(
            logits, reg, log_var, labels, regression_targets, proposals, matched, heads.box_coder
        )
        tv_cls, tv_box = fastrcnn_loss(logits, reg, labels, regression_targets)
        torch.testing.assert_close(terms["loss_box_reg"], tv_box)
        torch.testing.assert_close(terms["loss_classifier"], tv_cls)
        assert all(torch.isfinite(v) for v in terms.values())
        assert terms["loss_eiou"].item() > 0


class TestCombineLosses:
    @staticmethod
    def hand_losses() -> dict[str, Tensor]:
        values = {
            "loss_classifier": 1.0,
            "loss_box_reg": 0.25,
            "loss_aware": 2.0,
            "loss_eiou": 1.0,
            "beta_cls": 0.5,
            "beta_loc": 0.2,
            "loss_objectness": 0.5,
            "loss_rpn_box_reg": 0.5,
        }
        return {k: torch.tensor(v) for k, v in values.items()}

    def test_standard_is_torchvision_sum(self) -> None:
        total, log = combine_losses(self.hand_losses(), LossConfig(kind="standard"))
        assert total.item() == pytest.approx(1.0 + 0.25 + 0.5 + 0.5)
        assert log["total"] == pytest.approx(2.25)
        assert log["loss_box_reg"] == pytest.approx(0.25)

    def test_standard_reproduces_torchvision_on_a_batch(self) -> None:
        batch = make_batch(seed=3)
        losses = {**batch.terms(), **rpn_terms()}
        total, _ = combine_losses(losses, LossConfig(kind="standard"))
        tv_cls, tv_box = fastrcnn_loss(batch.class_logits, batch.box_regression, batch.labels, batch.regression_targets)
        expected = sum([tv_cls, tv_box, losses["loss_objectness"], losses["loss_rpn_box_reg"]])
        torch.testing.assert_close(total, expected)

    def test_balanced_form_hand_value(self) -> None:
        # A = L_EIoU = 1, B = L_aware = 2 -> lambda = 2/3, L_box = 2 * (2/3 + 1/3 * 2) = 8/3
        # total = 1.5 * 1 + 1.2 * 8/3 + L_rpn (1.0) = 5.7
        total, log = combine_losses(self.hand_losses(), LossConfig(form="balanced"))
        assert total.item() == pytest.approx(5.7)
        assert log["lambda"] == pytest.approx(2 / 3)
        assert log["loss_box"] == pytest.approx(8 / 3)
        assert log["loss_rpn"] == pytest.approx(1.0)
        assert log["total"] == pytest.approx(5.7)
        assert log["beta_cls"] == pytest.approx(0.5) and log["beta_loc"] == pytest.approx(0.2)
        assert all(isinstance(v, float) for v in log.values())

    def test_paper_form_hand_value(self) -> None:
        # A = 1, B = 0.5 + 0.5 + 2 = 3 -> lambda = 0.75, L_sync = 0.75 + 0.25 * 3 = 1.5
        # total = 1.5 * 1 + 1.2 * 1.5 = 3.3; the paper's form is the default
        total, log = combine_losses(self.hand_losses(), LossConfig())
        assert combine_losses(self.hand_losses(), LossConfig.from_name("synchronic"))[1] == log
        assert total.item() == pytest.approx(3.3)
        assert log["lambda"] == pytest.approx(0.75)
        assert log["loss_sync"] == pytest.approx(1.5)
        assert log["loss_rpn"] == pytest.approx(1.0)

    def test_balanced_form_at_half_lambda_is_the_plain_sum(self) -> None:
        """The factor 2 keeps the box branch at the standard loss's scale: lambda 0.5 is L_EIoU + L_aware."""
        _, log = combine_losses(self.hand_losses(), LossConfig(form="balanced", lambda_fixed=0.5))
        assert log["loss_box"] == pytest.approx(1.0 + 2.0)

    @pytest.mark.parametrize(("lam", "l_sync"), [(0.3, 0.3 + 0.7 * 3), (0.0, 3.0), (1.0, 1.0)])
    def test_fixed_lambda_paper_form(self, lam: float, l_sync: float) -> None:
        total, log = combine_losses(self.hand_losses(), LossConfig(form="paper", lambda_fixed=lam))
        assert log["lambda"] == pytest.approx(lam)
        assert log["loss_sync"] == pytest.approx(l_sync)
        assert total.item() == pytest.approx(1.5 + 1.2 * l_sync)

    @pytest.mark.parametrize("form", ["balanced", "paper"])
    def test_rpn_weight(self, form: str) -> None:
        """d total / d L_rpn: 1 in the balanced form (as torchvision), (1 + beta_loc)(1 - lambda) in the paper's."""
        losses = self.hand_losses()
        objectness = losses["loss_objectness"].clone().requires_grad_()
        total, log = combine_losses({**losses, "loss_objectness": objectness}, LossConfig(form=form))
        (grad,) = torch.autograd.grad(total, objectness)
        expected = 1.0 if form == "balanced" else 1.2 * (1 - log["lambda"])
        assert grad.item() == pytest.approx(expected)

    @pytest.mark.parametrize("form", ["balanced", "paper"])
    def test_dynamic_lambda_clipped_for_extreme_ratio(self, form: str) -> None:
        losses = {**self.hand_losses(), "loss_eiou": torch.tensor(1e-4)}
        _, log = combine_losses(losses, LossConfig(form=form))
        assert log["lambda"] == pytest.approx(0.9)
        _, log = combine_losses(losses, LossConfig(form=form, lambda_clip=(0.2, 0.6)))
        assert log["lambda"] == pytest.approx(0.6)

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_synchronic_on_a_batch_trains_the_log_variance(self, dtype: torch.dtype) -> None:
        batch = make_batch(seed=4, dtype=dtype)
        total, log = combine_losses({**batch.terms(), **rpn_terms(dtype)}, LossConfig())
        assert torch.isfinite(total) and total.item() > 0
        assert 0.1 <= log["lambda"] <= 0.9
        total.backward()
        for leaf in batch.leaves():
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert batch.box_log_var.grad is not None and batch.box_log_var.grad.abs().sum() > 0

    def test_missing_key_raises(self) -> None:
        losses = self.hand_losses()
        del losses["loss_eiou"]
        with pytest.raises(KeyError, match="loss_eiou"):
            combine_losses(losses, LossConfig())
        combine_losses(losses, LossConfig(kind="standard"))  # standard does not need it


class TestNoPositives:
    """Label Studio tasks with no boxes: every term is a zero attached to the graph."""

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_negative_only_batch(self, dtype: torch.dtype) -> None:
        batch = make_batch(num_pos=0, num_neg=5, dtype=dtype)
        terms = batch.terms()
        for name in LOSS_KEYS:
            assert isinstance(terms[name], Tensor) and terms[name].shape == (), name
            assert torch.isfinite(terms[name]) and terms[name].requires_grad, name
            assert_finite_grads(terms[name], batch.leaves())
        for name in ("loss_box_reg", "loss_aware", "loss_eiou"):
            assert terms[name].item() == 0.0, name
        assert terms["loss_classifier"].item() > 0
        assert terms["beta_loc"].item() == 0.0
        assert 0.0 <= terms["beta_cls"].item() <= 1.0

    def test_negative_only_matches_torchvision(self) -> None:
        batch = make_batch(num_pos=0, num_neg=5)
        terms = batch.terms()
        tv_cls, tv_box = fastrcnn_loss(batch.class_logits, batch.box_regression, batch.labels, batch.regression_targets)
        torch.testing.assert_close(terms["loss_classifier"], tv_cls)
        torch.testing.assert_close(terms["loss_box_reg"], tv_box)

    def test_one_image_without_positives_among_others(self) -> None:
        batch = make_batch(num_pos=2, num_neg=3)
        batch.labels[1] = torch.zeros_like(batch.labels[1])
        terms = batch.terms()
        assert all(torch.isfinite(v) for v in terms.values())
        assert terms["loss_eiou"].item() > 0

    def test_no_sampled_proposal_at_all(self) -> None:
        batch = make_batch(num_pos=0, num_neg=0)
        terms = batch.terms()
        for name in LOSS_KEYS:
            assert terms[name].item() == 0.0 and terms[name].requires_grad, name
        assert terms["beta_cls"].item() == 0.0 and terms["beta_loc"].item() == 0.0

    @pytest.mark.parametrize("name", LOSS_NAMES)
    def test_combined_loss_backpropagates(self, name: str) -> None:
        batch = make_batch(num_pos=0, num_neg=5)
        total, log = combine_losses({**batch.terms(), **rpn_terms()}, LossConfig.from_name(name))
        assert torch.isfinite(total) and all(math.isfinite(v) for v in log.values())
        total.backward()
        used = batch.leaves() if name != "standard" else batch.leaves()[:2]  # standard ignores alpha
        for leaf in used:
            assert leaf.grad is not None and torch.isfinite(leaf.grad).all()

    def test_kl_loss_of_no_rows(self) -> None:
        deltas = torch.zeros(0, 4, requires_grad=True)
        log_var = torch.zeros(0, 4, requires_grad=True)
        loss = kl_regression_loss(deltas, torch.zeros(0, 4), log_var, 0)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
        assert log_var.grad is not None and log_var.grad.shape == (0, 4)

    def test_eiou_loss_of_no_elements(self) -> None:
        assert eiou_loss(torch.zeros(0)).shape == (0,)


class TestLossNames:
    @pytest.mark.parametrize("name", LOSS_NAMES)
    def test_round_trip(self, name: str) -> None:
        assert LossConfig.from_name(name).name == name

    def test_forms(self) -> None:
        """``synchronic`` is the paper's form, the default; ``synchronic-balanced`` our ablation."""
        assert LossConfig.from_name("synchronic").form == "paper" == LossConfig().form
        assert LossConfig().name == "synchronic"
        assert LossConfig.from_name("synchronic-balanced").form == "balanced"
        assert LossConfig.from_name("standard", eiou_gamma=0.5).eiou_gamma == 0.5

    @pytest.mark.parametrize("bad", ["", "paper", "synchronic-paper", "synchronic-default", "Standard"])
    def test_unknown_name(self, bad: str) -> None:
        with pytest.raises(ValueError, match="unknown loss"):
            LossConfig.from_name(bad)

    @pytest.mark.parametrize("bad", ["literal", "default", ""])
    def test_unknown_form(self, bad: str) -> None:
        with pytest.raises(ValueError, match="form must be 'paper' or 'balanced'"):
            LossConfig(form=bad)


class TestBoundedLogVar:
    def test_identity_near_zero_and_bounded_far_out(self) -> None:
        raw = torch.tensor([-1e4, -0.01, 0.0, 0.01, 1e4])
        alpha = bounded_log_var(raw, 5.0)
        assert alpha[2].item() == 0.0
        torch.testing.assert_close(alpha[1:4], raw[1:4], atol=1e-6, rtol=1e-4)
        assert alpha.abs().max().item() <= 5.0

    def test_gradient_never_vanishes_inside_the_bound(self) -> None:
        raw = torch.linspace(-10, 10, 21, requires_grad=True)
        (grad,) = torch.autograd.grad(bounded_log_var(raw, 5.0).sum(), raw)
        assert (grad > 0).all()

    def test_aware_loss_stays_finite_for_huge_raw_outputs(self) -> None:
        """exp(-alpha) <= e^5 even when the head's raw output is -1e4 (unbounded: inf)."""
        alpha = bounded_log_var(torch.full((3, 4), -1e4), 5.0)
        loss = kl_regression_loss(torch.ones(3, 4), torch.zeros(3, 4), alpha, 3)
        assert torch.isfinite(loss) and loss.item() < math.exp(5.0) * 4

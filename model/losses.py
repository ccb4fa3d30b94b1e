"""Losses of the RoI head: torchvision's standard loss and the synchronic loss.

The functions follow ``torchvision.models.detection.roi_heads.fastrcnn_loss``:
free functions over proposals that ``select_training_samples`` has already
matched, sampled and encoded, returning scalar tensors that the caller names in
a dict. They never see a matcher or a config object; ``combine_losses`` is the
only place where ``LossConfig`` is read.

The synchronic loss is defined in docs/method.md, section 4. What the paper states is marked
[paper]; definitions and constants that it leaves open are marked [ours], and
every constant is a ``LossConfig`` setting with the default of docs/method.md, but the
log-variance bound of ``bounded_log_var``: the predictor applies it in its
forward pass, so it is part of the architecture (``DetectorConfig.log_var_bound``).

Every term is a zero that stays attached to the autograd graph when a batch
has no positive proposal (a Label Studio task with no boxes), as
``maskrcnn_loss`` does, so ``backward`` works on any batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou, generalized_box_iou

_TORCHVISION_BETA: float = 1.0 / 9
"""The smooth-L1 beta hard-coded in torchvision's ``fastrcnn_loss``."""

_RPN_KEYS: tuple[str, str] = ("loss_objectness", "loss_rpn_box_reg")
_STANDARD_KEYS: tuple[str, ...] = ("loss_classifier", "loss_box_reg") + _RPN_KEYS
_SYNCHRONIC_KEYS: tuple[str, ...] = (
    "loss_classifier",
    "loss_aware",
    "loss_eiou",
    "beta_cls",
    "beta_loc",
) + _RPN_KEYS


LOSS_NAMES: tuple[str, ...] = ("standard", "synchronic", "synchronic-balanced")
"""The names a user or a benchmark gives a loss (the results' ``loss`` column): ``synchronic``
is the paper's form, ``synchronic-balanced`` our ablation (``LOSS=synchronic SYNC_FORM=balanced``)."""


@dataclass(frozen=True)
class LossConfig:
    """Which RoI-head loss to train with, and its constants (docs/method.md, section 4).

    Attributes:
        kind (str): ``"synchronic"`` [paper] or ``"standard"`` (torchvision's
            sum of the four Faster R-CNN losses, kept for benchmarks).
        form (str): how the synchronic terms combine. ``"paper"``, the default:
            the paper's ``lambda * L_EIoU + (1 - lambda) * (L_rpn + L_aware)``;
            it is the paper's own and measured best of the three losses (+2.8
            AP50 over the standard loss on the warm benchmark; docs/method.md,
            section 4). ``"balanced"`` [ours], an ablation only: the RPN at weight
            1 outside the mix, lambda balancing L_EIoU against L_aware alone.
        eiou_gamma (float): gamma of the EIoU loss [paper: 0.8, gamma <= 1];
            must lie in (0, 1].
        lambda_fixed (float | None): ``None`` matches lambda dynamically each
            step [ours, "dynamic parameter matching"]; a number in [0, 1] fixes it.
        lambda_clip (tuple[float, float]): bounds of the dynamic lambda [ours:
            (0.1, 0.9)], with 0 <= low <= high <= 1.
        smooth_l1_beta (float): beta of every smooth-L1 term (L_loc and
            L_aware); torchvision's ``fastrcnn_loss`` uses 1/9. Must be >= 0.

    Raises:
        ValueError: for an unknown ``kind`` or a constant out of its range.
    """

    SYNCHRONIC: ClassVar[str] = "synchronic"
    STANDARD: ClassVar[str] = "standard"
    PAPER_FORM: ClassVar[str] = "paper"
    BALANCED_FORM: ClassVar[str] = "balanced"

    kind: str = "synchronic"
    form: str = "paper"
    eiou_gamma: float = 0.8
    lambda_fixed: float | None = None
    lambda_clip: tuple[float, float] = (0.1, 0.9)
    smooth_l1_beta: float = _TORCHVISION_BETA

    def __post_init__(self) -> None:
        if self.kind not in (self.SYNCHRONIC, self.STANDARD):
            raise ValueError(f"kind must be 'synchronic' or 'standard', got {self.kind!r}")
        if self.form not in (self.PAPER_FORM, self.BALANCED_FORM):
            raise ValueError(f"form must be 'paper' or 'balanced', got {self.form!r}")
        if not 0.0 < self.eiou_gamma <= 1.0:
            raise ValueError(f"eiou_gamma must lie in (0, 1], got {self.eiou_gamma}")
        if self.lambda_fixed is not None and not 0.0 <= self.lambda_fixed <= 1.0:
            raise ValueError(f"lambda_fixed must be None or lie in [0, 1], got {self.lambda_fixed}")
        _check_clip(self.lambda_clip)
        if not self.smooth_l1_beta >= 0.0:
            raise ValueError(f"smooth_l1_beta must be >= 0, got {self.smooth_l1_beta}")

    @classmethod
    def from_name(cls, name: str, **constants: object) -> LossConfig:
        """The loss called ``name`` (one of :data:`LOSS_NAMES`), with ``constants`` set.

        Raises:
            ValueError: for a name not in :data:`LOSS_NAMES`.
        """
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose one of {LOSS_NAMES}")
        kind, _, form = name.partition("-")
        return cls(kind=kind, form=form or cls.PAPER_FORM, **constants)

    @property
    def name(self) -> str:
        """The inverse of :meth:`from_name`."""
        if self.kind == self.STANDARD:
            return self.STANDARD
        return self.SYNCHRONIC + ("-balanced" if self.form == self.BALANCED_FORM else "")


def _check_clip(clip: tuple[float, float]) -> None:
    low, high = clip
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"lambda_clip must satisfy 0 <= low <= high <= 1, got {clip}")


def _mean_or_zero(values: Tensor) -> Tensor:
    """Mean of ``values``, or a zero attached to their graph when they are empty."""
    if values.numel() == 0:
        return values.sum() * 0
    return values.mean()


def eiou_loss(giou: Tensor, gamma: float = 0.8, eps: float = 1e-6) -> Tensor:
    """EIoU loss [paper]: ``(1 + giou)^gamma * (1 - giou)``, elementwise.

    It is 0 at GIoU 1 and decreasing in GIoU only for
    GIoU > (gamma - 1) / (gamma + 1) (about -0.11 at gamma 0.8); below that it
    increases. Positive proposals (IoU >= 0.5) lie in the decreasing range.

    Args:
        giou (Tensor[...]): generalized IoU values in [-1, 1].
        gamma (float): exponent [paper: 0.8, gamma <= 1].
        eps (float): ``1 + giou`` is clamped at ``eps`` before the power, so
            the gradient stays finite at GIoU -1 (where ``x^gamma`` has an
            infinite slope for gamma < 1).

    Returns:
        Tensor[...]: the loss of each element, same shape as ``giou``.
    """
    return (1 + giou).clamp(min=eps).pow(gamma) * (1 - giou)


def bounded_log_var(raw: Tensor, bound: float = 5.0) -> Tensor:
    """``bound * tanh(raw / bound)`` [ours]: the log-variance alpha in (-bound, bound).

    Near zero it is the identity (a head initialised at zero starts at sigma 1);
    far out it saturates, so ``exp(-alpha)`` in L_aware stays below e^bound.
    """
    return bound * torch.tanh(raw / bound)


def kl_regression_loss(
    deltas: Tensor, targets: Tensor, log_var: Tensor, num_sampled: int, beta: float = _TORCHVISION_BETA
) -> Tensor:
    """Uncertainty-aware box loss L_aware [paper; KL-Loss of He et al., CVPR 2019].

    Per coordinate ``exp(-alpha) * smoothL1(delta - target) + alpha / 2``,
    summed over the positives and their 4 coordinates and divided by N, the
    number of sampled proposals [ours]: torchvision's normalisation of its box
    loss, so that at ``log_var == 0`` L_aware equals torchvision's
    ``loss_box_reg`` exactly. A mean over the P positives alone would be N / P
    times larger (4x at 32 RoIs) and drive the gradient clip.

    Args:
        deltas (Tensor[P, 4]): predicted box deltas of the positives, for
            their own class.
        targets (Tensor[P, 4]): encoded regression targets of the positives.
        log_var (Tensor[P, 4]): predicted log-variance alpha of each delta.
        num_sampled (int): N, the sampled proposals (positives and negatives).
        beta (float): smooth-L1 beta (torchvision: 1/9).

    Returns:
        Tensor[]: the loss; a zero attached to the graph when P or N is 0.
    """
    smooth_l1 = F.smooth_l1_loss(deltas, targets, beta=beta, reduction="none")
    summed = (torch.exp(-log_var) * smooth_l1 + log_var / 2).sum()
    return summed / num_sampled if num_sampled > 0 else summed * 0


def emphasis_factors(class_logits: Tensor, labels: Tensor, ious: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic emphasis factors beta_cls and beta_loc [ours].

    ``beta_cls`` is the mean over sampled proposals of ``1 - p_true`` (the
    softmax probability of the proposal's label, background included);
    ``beta_loc`` is the mean over positives of ``1 - IoU(decoded box, gt)``.
    Both are detached and lie in [0, 1]; each is 0 when its set is empty.

    Args:
        class_logits (Tensor[N, C+1]): classifier logits of the sampled proposals.
        labels (Tensor[N]): int64 labels, 0 = background.
        ious (Tensor[P]): IoU of each positive's decoded box with its gt box.

    Returns:
        tuple[Tensor[], Tensor[]]: ``(beta_cls, beta_loc)``.
    """
    with torch.no_grad():
        if labels.numel() == 0:
            beta_cls = class_logits.new_zeros(())
        else:
            probs = F.softmax(class_logits.detach(), dim=-1)
            p_true = probs.gather(1, labels[:, None]).squeeze(1)
            beta_cls = (1 - p_true).mean().clamp(0.0, 1.0)
        if ious.numel() == 0:
            beta_loc = class_logits.new_zeros(())
        else:
            beta_loc = (1 - ious.detach()).mean().clamp(0.0, 1.0).to(class_logits.dtype)
    return beta_cls, beta_loc


def match_lambda(eiou: Tensor, rest: Tensor, clip: tuple[float, float] = (0.1, 0.9)) -> Tensor:
    """Dynamic parameter matching of the synchronic term [ours].

    ``lambda = |B| / (|A| + |B|)`` with A = L_EIoU, on detached values, so that
    ``lambda * A`` and ``(1 - lambda) * B`` carry equal magnitude; then clipped
    to ``clip``. It is 0.5 (before clipping) when both are 0. B is L_rpn + L_aware
    in the paper form and L_aware in the balanced form.

    Args:
        eiou (Tensor[]): A, the EIoU loss.
        rest (Tensor[]): B.
        clip (tuple[float, float]): ``(low, high)`` with 0 <= low <= high <= 1.

    Returns:
        Tensor[]: lambda, detached, in ``[low, high]``.

    Raises:
        ValueError: when ``clip`` is not an ordered pair inside [0, 1].
    """
    _check_clip(clip)
    a = eiou.detach().abs()
    b = rest.detach().abs()
    total = a + b
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    lam = torch.where(total > 0, b / safe_total, torch.full_like(total, 0.5))
    return lam.clamp(clip[0], clip[1])


def _classification_and_box_loss(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor, beta: float
) -> tuple[Tensor, Tensor]:
    """torchvision's ``fastrcnn_loss`` on concatenated labels and targets.

    Identical to it for ``beta = 1/9``, except that an empty batch (N = 0)
    gives zeros attached to the graph instead of NaN.
    """
    if labels.numel() == 0:
        return class_logits.sum() * 0, box_regression.sum() * 0
    classification_loss = F.cross_entropy(class_logits, labels)
    pos = torch.where(labels > 0)[0]
    n = class_logits.shape[0]
    box_regression = box_regression.reshape(n, box_regression.size(-1) // 4, 4)
    box_loss = F.smooth_l1_loss(box_regression[pos, labels[pos]], regression_targets[pos], beta=beta, reduction="sum")
    return classification_loss, box_loss / labels.numel()


def _own_class_rows(values: Tensor, pos: Tensor, labels_pos: Tensor) -> Tensor:
    """Rows ``pos`` of a ``[N, 4*(C+1)]`` tensor, at the 4 columns of each row's class.

    Returns:
        Tensor[P, 4]
    """
    return values.reshape(values.shape[0], values.shape[-1] // 4, 4)[pos, labels_pos]


def _paired_giou_and_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """GIoU and IoU of each pair ``(boxes1[i], boxes2[i])``, in O(P).

    Uses the batch dimension of torchvision's pairwise ops (``[P, 1, 4]``
    against ``[P, 1, 4]`` gives ``[P, 1, 1]``) instead of a ``[P, P]`` matrix.

    Args:
        boxes1 (Tensor[P, 4]): (x1, y1, x2, y2), x1 < x2 and y1 < y2.
        boxes2 (Tensor[P, 4]): same format.

    Returns:
        tuple[Tensor[P], Tensor[P]]: ``(giou, iou)``; the IoU is detached.
    """
    b1, b2 = boxes1[:, None, :], boxes2[:, None, :]
    giou = generalized_box_iou(b1, b2).reshape(-1)
    with torch.no_grad():
        iou = box_iou(b1.detach(), b2.detach()).reshape(-1)
    return giou, iou


def fastrcnn_synchronic_terms(
    class_logits: Tensor,
    box_regression: Tensor,
    box_log_var: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    proposals: list[Tensor],
    matched_gt_boxes: list[Tensor],
    box_coder: BoxCoder,
    smooth_l1_beta: float = _TORCHVISION_BETA,
    eiou_gamma: float = 0.8,
) -> dict[str, Tensor]:
    """Every RoI-head term of the standard and the synchronic loss.

    Args:
        class_logits (Tensor[N, C+1]): classifier logits of the sampled proposals.
        box_regression (Tensor[N, 4*(C+1)]): class-specific box deltas,
            torchvision layout (4 columns per class, background first).
        box_log_var (Tensor[N, 4*(C+1)]): log-variance alpha of each delta,
            same layout.
        labels (list[Tensor[n_i]]): int64 label per proposal, 0 = background
            (the output of ``select_training_samples``).
        regression_targets (list[Tensor[n_i, 4]]): targets encoded by ``box_coder``.
        proposals (list[Tensor[n_i, 4]]): (x1, y1, x2, y2) proposals.
        matched_gt_boxes (list[Tensor[n_i, 4]]): (x1, y1, x2, y2) gt box matched
            to each proposal; rows of background proposals are ignored.
        box_coder (BoxCoder): the coder of the RoI heads, to decode deltas.
        smooth_l1_beta (float): beta of L_loc and L_aware (torchvision: 1/9).
        eiou_gamma (float): gamma of the EIoU loss [paper: 0.8].

    Returns:
        dict[str, Tensor]: scalar tensors ``loss_classifier`` and
        ``loss_box_reg`` (torchvision's ``fastrcnn_loss``, exactly, at beta
        1/9), ``loss_aware`` (``kl_regression_loss``, normalised by N),
        ``loss_eiou`` (mean over positives of ``eiou_loss`` of the GIoU between
        the box decoded for the positive's own class and its gt box), and the
        detached ``beta_cls`` and ``beta_loc`` of ``emphasis_factors``. With no
        positive, every loss is a zero attached to the graph.
    """
    labels_cat = torch.cat(labels, dim=0)
    targets_cat = torch.cat(regression_targets, dim=0)
    loss_classifier, loss_box_reg = _classification_and_box_loss(
        class_logits, box_regression, labels_cat, targets_cat, smooth_l1_beta
    )
    pos = torch.where(labels_cat > 0)[0]
    labels_pos = labels_cat[pos]
    deltas_pos = _own_class_rows(box_regression, pos, labels_pos)
    log_var_pos = _own_class_rows(box_log_var, pos, labels_pos)
    loss_aware = kl_regression_loss(deltas_pos, targets_cat[pos], log_var_pos, labels_cat.numel(), smooth_l1_beta)
    decoded = box_coder.decode_single(deltas_pos, torch.cat(proposals, dim=0)[pos])
    gt_pos = torch.cat(matched_gt_boxes, dim=0)[pos].to(decoded.dtype)
    giou, iou = _paired_giou_and_iou(decoded, gt_pos)
    loss_eiou = _mean_or_zero(eiou_loss(giou, eiou_gamma))
    beta_cls, beta_loc = emphasis_factors(class_logits, labels_cat, iou)
    return {
        "loss_classifier": loss_classifier,
        "loss_box_reg": loss_box_reg,
        "loss_aware": loss_aware,
        "loss_eiou": loss_eiou,
        "beta_cls": beta_cls,
        "beta_loc": beta_loc,
    }


def _require(losses: dict[str, Tensor], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in losses]
    if missing:
        raise KeyError(f"losses lacks {missing}")


def _as_floats(terms: dict[str, Tensor]) -> dict[str, float]:
    """Detached scalars as Python floats, with one device sync for all of them."""
    names = list(terms)
    values = torch.stack([terms[name].detach().float().reshape(()) for name in names]).tolist()
    return dict(zip(names, values))


def combine_losses(losses: dict[str, Tensor], config: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """The training loss of Faster R-CNN, standard or synchronic (docs/method.md, section 4).

    standard: ``loss_classifier + loss_box_reg + loss_objectness +
    loss_rpn_box_reg`` (torchvision's sum).

    synchronic, with ``L_rpn = loss_objectness + loss_rpn_box_reg`` and the
    emphasis factors [paper] ``beta_cls``, ``beta_loc``:

    - paper form [paper; the default]: ``L_sync = lambda * L_EIoU + (1 - lambda) * (L_rpn + L_aware)``
      and ``total = (1 + beta_cls) * L_cls + (1 + beta_loc) * L_sync``.
    - balanced form [ours; an ablation]: ``L_box = 2 * (lambda * L_EIoU + (1 - lambda) * L_aware)``,
      lambda matched between the two box terms, and
      ``total = (1 + beta_cls) * L_cls + (1 + beta_loc) * L_box + L_rpn``: the RPN
      keeps torchvision's weight 1, and lambda = 0.5 is the plain sum.

    lambda is ``config.lambda_fixed`` or ``match_lambda`` [ours]. ``loss_box_reg``
    is not part of a synchronic total (L_aware replaces it).

    Args:
        losses (dict[str, Tensor[]]): the terms of ``fastrcnn_synchronic_terms``
            plus torchvision's RPN terms ``loss_objectness`` and ``loss_rpn_box_reg``.
        config (LossConfig): which loss, and its constants.

    Returns:
        tuple[Tensor[], dict[str, float]]: the total, and for logging every
        term of ``losses`` plus ``total`` (and, when synchronic, ``loss_rpn``,
        ``loss_box`` or ``loss_sync``, and ``lambda``) as floats.

    Raises:
        KeyError: when a term the chosen loss needs is missing.
    """
    if config.kind == LossConfig.STANDARD:
        _require(losses, _STANDARD_KEYS)
        total = (
            losses["loss_classifier"] + losses["loss_box_reg"] + losses["loss_objectness"] + losses["loss_rpn_box_reg"]
        )
        return total, _as_floats({**losses, "total": total})
    _require(losses, _SYNCHRONIC_KEYS)
    loss_rpn = losses["loss_objectness"] + losses["loss_rpn_box_reg"]
    eiou, aware = losses["loss_eiou"], losses["loss_aware"]
    paper = config.form == LossConfig.PAPER_FORM
    rest = loss_rpn + aware if paper else aware
    lam = _lambda(eiou, rest, config)
    mixed = lam * eiou + (1 - lam) * rest
    weighted_cls = (1 + losses["beta_cls"].detach()) * losses["loss_classifier"]
    emphasis_loc = 1 + losses["beta_loc"].detach()
    if paper:
        total = weighted_cls + emphasis_loc * mixed
        extra = {"loss_rpn": loss_rpn, "loss_sync": mixed, "lambda": lam, "total": total}
    else:
        total = weighted_cls + emphasis_loc * 2 * mixed + loss_rpn
        extra = {"loss_rpn": loss_rpn, "loss_box": 2 * mixed, "lambda": lam, "total": total}
    return total, _as_floats({**losses, **extra})


def _lambda(eiou: Tensor, rest: Tensor, config: LossConfig) -> Tensor:
    """The fixed lambda of ``config``, or lambda matched between ``eiou`` and ``rest``."""
    if config.lambda_fixed is not None:
        return torch.as_tensor(config.lambda_fixed, dtype=eiou.dtype, device=eiou.device)
    return match_lambda(eiou, rest, config.lambda_clip)

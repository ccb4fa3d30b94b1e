"""HUA ranking: retrieval gate, four metrics, aggregation and task scores.

Implements METHOD.md sections 1-3 (Nguyen et al., "Hierarchical Uncertainty
Aggregation and Emphasis Loss for Active Learning in Object Detection",
IEEE BigData 2023). What the paper states is marked **[paper]**; definitions
this project fixes where the paper is silent are marked **[ours]**.

The pipeline for a pool of N unlabeled images:

1. Retrieval gate [paper]: :func:`image_entropy` per image, then
   :func:`num_candidates` and :func:`select_candidates` keep the P most
   uncertain images.
2. Ranking stage [paper]: for each candidate, a second (horizontally flipped)
   forward pass and :func:`image_metrics` give the four metrics
   (SA, CD, OR, LC) [ours: their formulas].
3. Aggregation [paper + ours]: :func:`fit_scale` / :func:`normalise`
   (min-max over the candidates), :func:`aggregate` (l = sqrt(sum d_m^2)).
4. One number per task [ours]: :func:`priorities` and :func:`task_scores`
   (score = 1 - priority, so Label Studio's "lowest score first" is the HUA
   queue). :func:`rank_pool` bundles 3-4; :func:`score_single` places one new
   image on the stored :class:`Scale`.

Per-image metric functions take one image; everything that runs over the pool
is vectorised. Ranking arithmetic (normalise, aggregate, priorities) runs in
float64 so that a stored scale round-trips through JSON exactly and a single
task scored later gets bit-for-bit the score it had in the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

from model.detections import Detections

__all__ = [
    "METRIC_NAMES",
    "CANDIDATE_MARGIN",
    "EMPTY_IMAGE_ENTROPY",
    "HUAConfig",
    "Scale",
    "Ranking",
    "js_divergence",
    "image_entropy",
    "num_candidates",
    "select_candidates",
    "semantic_affinity",
    "category_diversity",
    "merge_classes",
    "overlap_ratio",
    "localization_uncertainty",
    "image_metrics",
    "fit_scale",
    "normalise",
    "aggregate",
    "priorities",
    "task_scores",
    "rank_pool",
    "score_single",
]

#: Column order of every metrics tensor (``Tensor[..., 4]``).
METRIC_NAMES: tuple[str, str, str, str] = (
    "semantic_affinity",
    "category_diversity",
    "overlap_ratio",
    "localization_uncertainty",
)

#: [ours] Candidates map to priorities in [0.5 + CANDIDATE_MARGIN / 2, 1], so
#: there is a visible gap above the non-candidates' [0, 0.5] (no float ties
#: between the two groups, even after ``1 - priority``).
CANDIDATE_MARGIN: float = 0.1

#: [ours] Entropy of an image whose detector produced no RoI at all (K = 0):
#: nothing seen counts as maximally uncertain, like SA = 1 for "no detections"
#: in METHOD.md section 2, so such images reach the ranking stage.
EMPTY_IMAGE_ENTROPY: float = 1.0

#: Largest possible l: every normalised metric lies in [0, 1], so l <= sqrt(4).
_MAX_INFORMATIVENESS: float = 2.0

#: [ours] Weight of H(x) in a candidate's priority: ties in l (every metric
#: constant over the candidates, as for a young model) are broken by the gate
#: entropy, higher first, never by pool order; l differing by more than this
#: share of its range always decides.
TIE_BREAK_WEIGHT: float = 1e-6

#: Arithmetic type of the ranking stage (see the module docstring).
_RANK_DTYPE: torch.dtype = torch.float64

#: Guards ``ceil(fraction * n)`` against float noise (0.1 * 30 = 3.0000000000000004).
_CEIL_TOLERANCE: float = 1e-9

_LN2: float = math.log(2.0)


@dataclass(frozen=True)
class HUAConfig:
    """Settings of HUA ranking (METHOD.md sections 1-2). Defaults are METHOD.md's.

    The gate's K (the RoIs whose entropies form H(x)) is not here: the detector
    fills ``Detections.top_probs`` with them (``DetectorConfig.gate_top_k``), and
    which detections the metrics see is the detector's score threshold
    (``DetectorConfig.score_threshold``, 0.05 by default, METHOD.md section 2).

    Attributes:
        retrieval_fraction (float): P = max(min_candidates,
            ceil(retrieval_fraction * N)) when neither ``candidates`` nor a budget
            is given [ours], in [0, 1].
        min_candidates (int): lower bound of P in that rule [ours], >= 0.
        candidates (int | None): an absolute P named by the user [ours]; takes
            precedence over both other rules. ``None``: not set.
        retrieval_ratio (float): P = ceil(retrieval_ratio * B) when a labeling
            budget B is known (benchmarks) [ours], > 0.
        overlap_iou (float): IoU at or above which two detections of one image
            overlap, for the Overlap Ratio [ours], in (0, 1].
        merge_iou (float): detections of different classes with an IoU above
            it are one object, merged (highest score kept) before the Overlap
            Ratio [ours: 0.7], in (0, 1].
        diversity (bool): re-order the top of the ranking by k-center greedy
            on pooled backbone features (``model.diversity``) [ours, beyond the paper].
        diversity_window (int): how many of the top images that pass re-orders.
    """

    retrieval_fraction: float = 0.5
    min_candidates: int = 64
    candidates: int | None = None
    retrieval_ratio: float = 4.0
    overlap_iou: float = 0.3
    merge_iou: float = 0.7
    diversity: bool = False
    diversity_window: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.retrieval_fraction <= 1.0:
            raise ValueError(
                f"retrieval_fraction must lie in [0, 1], got {self.retrieval_fraction}"
            )
        if self.min_candidates < 0:
            raise ValueError(f"min_candidates must be >= 0, got {self.min_candidates}")
        if self.candidates is not None and self.candidates < 0:
            raise ValueError(f"candidates must be >= 0 or None, got {self.candidates}")
        if not (self.retrieval_ratio > 0.0 and math.isfinite(self.retrieval_ratio)):
            raise ValueError(
                f"retrieval_ratio must be a finite number > 0, got {self.retrieval_ratio}"
            )
        if not 0.0 < self.overlap_iou <= 1.0:
            raise ValueError(f"overlap_iou must lie in (0, 1], got {self.overlap_iou}")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ValueError(f"merge_iou must lie in (0, 1], got {self.merge_iou}")


# --------------------------------------------------------------------------
# Divergences and the retrieval gate (METHOD.md section 1)
# --------------------------------------------------------------------------


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits, so that it lies in [0, 1].

    JS(p, q) = (KL(p || m) + KL(q || m)) / (2 ln 2) with m = (p + q) / 2 and
    natural logs. Zero probabilities are safe (0 log 0 = 0), and the result is
    exactly symmetric in ``p`` and ``q``.

    Args:
        p (Tensor[..., K]): distributions along the last dimension.
        q (Tensor[..., K]): distributions along the last dimension,
            broadcastable against ``p``.

    Returns:
        Tensor[...]: JS(p, q), clamped to [0, 1] against rounding.
    """
    m = (p + q) / 2
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=-1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=-1)
    return ((kl_pm + kl_qm) / (2 * _LN2)).clamp(0.0, 1.0)


def image_entropy(top_probs: Tensor) -> Tensor:
    """H(x), the gate's uncertainty of one image [ours, METHOD.md section 1].

    H(x) is the mean over the K rows of entropy(p_i) / ln(C + 1), so it lies in
    [0, 1]. With K = 0 (the detector produced no RoI at all) H is
    :data:`EMPTY_IMAGE_ENTROPY` = 1.0: nothing seen is maximally uncertain, so
    the image reaches the ranking stage (where SA = 1 for it as well).

    Args:
        top_probs (Tensor[K, C+1]): softmax rows (background in column 0) of the
            RoIs with the highest foreground probability, taken before the
            score threshold (``Detections.top_probs``).

    Returns:
        Tensor[]: H(x) in [0, 1], a scalar of ``top_probs``' floating dtype.

    Raises:
        ValueError: ``top_probs`` is not 2-D with at least 2 columns.
    """
    if top_probs.dim() != 2 or top_probs.shape[1] < 2:
        raise ValueError(
            f"top_probs must be Tensor[K, C+1] with C >= 1, got shape {tuple(top_probs.shape)}"
        )
    probs = top_probs if top_probs.is_floating_point() else top_probs.float()
    if probs.shape[0] == 0:
        return torch.tensor(EMPTY_IMAGE_ENTROPY, dtype=probs.dtype, device=probs.device)
    entropy = -torch.xlogy(probs, probs).sum(dim=-1) / math.log(probs.shape[1])
    return entropy.mean().clamp(0.0, 1.0)


def _ceil(value: float) -> int:
    """ceil(value) that ignores float noise just above an integer."""
    return max(0, math.ceil(value - _CEIL_TOLERANCE))


def num_candidates(n: int, config: HUAConfig, budget: int | None = None) -> int:
    """P, the number of images that pass the retrieval gate [ours, section 1].

    Precedence: an absolute ``config.candidates`` named by the user; else,
    with a labeling budget B, ceil(retrieval_ratio * B); else
    max(min_candidates, ceil(retrieval_fraction * n)). The result is clipped
    to [0, n].

    Args:
        n (int): N, the number of unlabeled images in the pool, >= 0.
        config (HUAConfig): the gate's settings.
        budget (int | None): B, images to label this cycle, when known.

    Returns:
        int: P in [0, n].

    Raises:
        ValueError: ``n`` or ``budget`` is negative.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0 or None, got {budget}")
    if config.candidates is not None:
        p = config.candidates
    elif budget is not None:
        p = _ceil(config.retrieval_ratio * budget)
    else:
        p = max(config.min_candidates, _ceil(config.retrieval_fraction * n))
    return min(p, n)


def select_candidates(entropy: Tensor, p: int) -> Tensor:
    """The retrieval gate: the ``p`` images of highest entropy [paper].

    Ties in entropy go to the lower image index, so the selection is
    deterministic.

    Args:
        entropy (Tensor[N]): H(x) of every image of the pool.
        p (int): number of candidates; clipped to [0, N].

    Returns:
        Tensor[N]: bool mask, True for the candidates.
    """
    n = entropy.shape[0]
    p = max(0, min(int(p), n))
    order = torch.sort(entropy, descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=entropy.device)
    mask[order[:p]] = True
    return mask


# --------------------------------------------------------------------------
# The four metrics of one image (METHOD.md section 2, formulas [ours])
# --------------------------------------------------------------------------


def _unflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Map (x1, y1, x2, y2) boxes of the horizontally flipped image back.

    x' = W - x, with x1 and x2 swapped so that x1 < x2 still holds.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def semantic_affinity(original: Detections, flipped: Detections) -> float:
    """d1, Semantic Affinity: how much the detector disagrees with itself [ours].

    ``flipped`` holds the detections of the horizontally flipped image, in the
    flipped image's pixels; they are mapped back with x' = W - x. Each original
    detection i is matched to the flipped detection of highest IoU (CALD's
    matching; ties to the first), and
    SA = mean_i [1 - IoU(b_i, b*_i) * (1 - JS(p_i, p*_i))].
    An unmatched detection (IoU 0, or no flipped detections) counts 1; an image
    with no original detections has SA = 1. SA = 0 when both passes agree
    exactly.

    Args:
        original (Detections): detections of the image, D of them.
        flipped (Detections): detections of its horizontal flip.

    Returns:
        float: SA in [0, 1].

    Raises:
        ValueError: the two images have different widths.
    """
    if original.width != flipped.width:
        raise ValueError(f"original and flipped widths differ: {original.width} != {flipped.width}")
    if len(original) == 0 or len(flipped) == 0:
        return 1.0
    boxes = _unflip_boxes(flipped.boxes.to(original.boxes.dtype), flipped.width)
    iou = box_iou(original.boxes, boxes).nan_to_num(0.0)
    best_iou, match = iou.max(dim=1)
    js = js_divergence(original.probs, flipped.probs[match].to(original.probs.dtype))
    sa = 1.0 - best_iou * (1.0 - js)
    return float(sa.mean().clamp(0.0, 1.0))


def category_diversity(probs: Tensor, labeled_class_freq: Tensor) -> float:
    """d2, Category Diversity: is the image about classes the labeled set lacks [ours].

    q(x) is the normalised sum of the foreground columns of the detections'
    softmax; p_L the normalised class frequency of the labeled boxes (uniform
    when it sums to 0, i.e. nothing is labeled yet). CD = JS(q(x), p_L).
    With no detections (or no foreground mass at all) the image says nothing
    about classes, so CD = 0.0 [ours]: it is not "diverse", and SA = 1 already
    flags it as uncertain.

    Args:
        probs (Tensor[D, C+1]): softmax of each detection, background in column 0.
        labeled_class_freq (Tensor[C]): box counts (or frequencies) per class
            1..C in the labeled set.

    Returns:
        float: CD in [0, 1].

    Raises:
        ValueError: the class counts of the two arguments disagree.
    """
    num_classes = labeled_class_freq.shape[-1]
    if probs.dim() != 2 or probs.shape[1] != num_classes + 1:
        raise ValueError(
            f"probs must be Tensor[D, {num_classes + 1}] to match labeled_class_freq "
            f"Tensor[{num_classes}], got shape {tuple(probs.shape)}"
        )
    q = probs[:, 1:].to(_RANK_DTYPE).sum(dim=0)
    if probs.shape[0] == 0 or float(q.sum()) <= 0.0:
        return 0.0
    freq = labeled_class_freq.to(device=q.device, dtype=_RANK_DTYPE).clamp_min(0.0)
    total = float(freq.sum())
    p_l = freq / total if total > 0.0 else torch.full_like(freq, 1.0 / num_classes)
    return float(js_divergence(q / q.sum(), p_l))


def merge_classes(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.7) -> Tensor:
    """The boxes left when detections of one object under different labels are merged [ours].

    The detector's NMS runs per class, so one object can come back as "car"
    and "truck"; the Overlap Ratio must not count that as a crowd. torchvision's
    class-agnostic ``nms`` keeps the highest score of each group (it drops IoU
    strictly above the threshold; METHOD.md's ">= 0.7" differs only on exact ties).

    Args:
        boxes (Tensor[D, 4]): (x1, y1, x2, y2) boxes of one image.
        scores (Tensor[D]): their scores.
        iou_threshold (float): ``HUAConfig.merge_iou``.

    Returns:
        Tensor[D', 4]: the kept boxes, highest score first.
    """
    if boxes.shape[0] <= 1:
        return boxes
    return boxes[nms(boxes.float(), scores.float(), iou_threshold)]


def overlap_ratio(boxes: Tensor, iou_threshold: float = 0.3) -> float:
    """d3, Overlap Ratio: how crowded or occluded the scene is [ours].

    The fraction of detections whose IoU with some other detection of the same
    image is >= ``iou_threshold``. One or no detection: 0. Pass the boxes of
    :func:`merge_classes`.

    Args:
        boxes (Tensor[D, 4]): (x1, y1, x2, y2) boxes of one image.
        iou_threshold (float): overlap threshold (``HUAConfig.overlap_iou``).

    Returns:
        float: OR in [0, 1].
    """
    d = boxes.shape[0]
    if d <= 1:
        return 0.0
    iou = box_iou(boxes, boxes).nan_to_num(0.0)
    iou.fill_diagonal_(0.0)
    overlapping = (iou >= iou_threshold).any(dim=1)
    return float(overlapping.sum()) / d


def localization_uncertainty(sigmas: Tensor) -> float:
    """d4, Localization uncertainty: mean sigma over detections and edges [ours].

    Args:
        sigmas (Tensor[D, 4]): per-edge standard deviation exp(alpha / 2) of
            each box, in the box-delta space.

    Returns:
        float: LC >= 0; 0.0 with no detections.
    """
    if sigmas.numel() == 0:
        return 0.0
    return float(sigmas.to(_RANK_DTYPE).mean())


def image_metrics(
    original: Detections,
    flipped: Detections,
    labeled_class_freq: Tensor,
    config: HUAConfig,
) -> Tensor:
    """The four metrics of one candidate image, in :data:`METRIC_NAMES` order.

    Args:
        original (Detections): detections of the image.
        flipped (Detections): detections of its horizontal flip, in the flipped
            image's pixel coordinates.
        labeled_class_freq (Tensor[C]): class frequency of the labeled boxes.
        config (HUAConfig): supplies ``overlap_iou`` and ``merge_iou``.

    Returns:
        Tensor[4]: float64 (SA, CD, OR, LC). An image with no detections gets
        (1, 0, 0, 0).
    """
    values = (
        semantic_affinity(original, flipped),
        category_diversity(original.probs, labeled_class_freq),
        overlap_ratio(merge_classes(original.boxes, original.scores, config.merge_iou), config.overlap_iou),
        localization_uncertainty(original.sigmas),
    )
    return torch.tensor(values, dtype=_RANK_DTYPE)


# --------------------------------------------------------------------------
# Aggregation (METHOD.md section 2: [paper] l = sqrt(sum d_m^2), [ours] scale)
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Scale:
    """Normalisation constants of the last pool ranking [ours].

    Stored in a model version's meta.json (:meth:`to_dict`) so that a task
    scored later by :func:`score_single` lands on the same scale as the pool.
    ``eq=False``: tensors have no single truth value; compare ``to_dict()``.

    Attributes:
        mins (Tensor[4]): per-metric minimum over the candidates (float64).
        maxs (Tensor[4]): per-metric maximum over the candidates, >= ``mins``.
        entropy_cutoff (float): entropy of the last (least uncertain) candidate
            of that ranking: a later image with H >= entropy_cutoff is one that
            would have passed the gate. ``math.inf`` when the pool had no
            candidate (nothing passes; serialised as ``None``).
    """

    mins: Tensor
    maxs: Tensor
    entropy_cutoff: float = 0.0

    def __post_init__(self) -> None:
        for name in ("mins", "maxs"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or tuple(value.shape) != (4,):
                raise ValueError(f"Scale.{name} must be a Tensor[4], got {value!r}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"Scale.{name} must be finite, got {value.tolist()}")
        if bool((self.mins > self.maxs).any()):
            raise ValueError(
                f"Scale.mins must be <= maxs, got {self.mins.tolist()} > {self.maxs.tolist()}"
            )
        if math.isnan(self.entropy_cutoff):
            raise ValueError("Scale.entropy_cutoff must not be NaN")

    def to_dict(self) -> dict[str, list[str] | list[float] | float | None]:
        """A JSON-friendly form (plain lists and floats; no Infinity)."""
        cutoff = self.entropy_cutoff if math.isfinite(self.entropy_cutoff) else None
        return {
            "metrics": list(METRIC_NAMES),
            "mins": [float(v) for v in self.mins.tolist()],
            "maxs": [float(v) for v in self.maxs.tolist()],
            "entropy_cutoff": cutoff,
        }

    @classmethod
    def from_dict(cls, data: dict[str, list[str] | list[float] | float | None]) -> "Scale":
        """Inverse of :meth:`to_dict`; exact for float64 values.

        Raises:
            ValueError: missing keys, wrong lengths, or a different metric order.
        """
        metrics = data.get("metrics")
        if metrics is not None and tuple(metrics) != METRIC_NAMES:
            raise ValueError(f"Scale metrics {metrics} differ from {list(METRIC_NAMES)}")
        try:
            mins = torch.tensor(data["mins"], dtype=_RANK_DTYPE)
            maxs = torch.tensor(data["maxs"], dtype=_RANK_DTYPE)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"Scale needs numeric lists 'mins' and 'maxs': {error}") from error
        cutoff = data.get("entropy_cutoff", 0.0)
        return cls(mins, maxs, math.inf if cutoff is None else float(cutoff))


def fit_scale(metrics: Tensor, entropy_cutoff: float = 0.0) -> Scale:
    """Min-max constants of the candidates' metrics [paper: normalise; ours: stored].

    Args:
        metrics (Tensor[P, 4]): metrics of the P candidates.
        entropy_cutoff (float): stored as :attr:`Scale.entropy_cutoff`;
            :func:`rank_pool` passes the last candidate's entropy.

    Returns:
        Scale: float64 per-metric minima and maxima; zeros when P = 0.
    """
    values = metrics.to(_RANK_DTYPE).reshape(-1, 4)
    if values.shape[0] == 0:
        zeros = torch.zeros(4, dtype=_RANK_DTYPE, device=values.device)
        return Scale(zeros, zeros.clone(), entropy_cutoff)
    return Scale(values.amin(dim=0), values.amax(dim=0), entropy_cutoff)


def normalise(metrics: Tensor, scale: Scale) -> Tensor:
    """Min-max normalisation of each metric on a stored scale [paper + ours].

    d_m = (x_m - min_m) / (max_m - min_m), clipped to [0, 1] so that a value
    outside the stored range (a task scored later) stays on the same scale.
    A metric that was constant over the candidates (max_m = min_m) becomes 0.

    Args:
        metrics (Tensor[N, 4]): raw metrics in :data:`METRIC_NAMES` order.
        scale (Scale): the constants, from :func:`fit_scale`.

    Returns:
        Tensor[N, 4]: float64 values in [0, 1], never NaN for finite input.
    """
    values = metrics.to(_RANK_DTYPE).reshape(-1, 4)
    mins = scale.mins.to(device=values.device, dtype=_RANK_DTYPE)
    spread = scale.maxs.to(device=values.device, dtype=_RANK_DTYPE) - mins
    varies = spread > 0
    scaled = (values - mins) / torch.where(varies, spread, torch.ones_like(spread))
    return torch.where(varies, scaled.clamp(0.0, 1.0), torch.zeros_like(scaled))


def aggregate(normalised: Tensor) -> Tensor:
    """l(x) = sqrt(sum_m d_m(x)^2), the informativeness of each image [paper].

    Args:
        normalised (Tensor[N, 4]): output of :func:`normalise`.

    Returns:
        Tensor[N]: l in [0, 2]; larger is more informative.
    """
    return torch.linalg.vector_norm(normalised, ord=2, dim=-1)


# --------------------------------------------------------------------------
# One number per task (METHOD.md section 3, [ours])
# --------------------------------------------------------------------------


def priorities(entropy: Tensor, candidate_mask: Tensor, informativeness: Tensor) -> Tensor:
    """The priority of every task: candidates by l above non-candidates by H [ours].

    The mapping (fixed, so a stored scale places later tasks consistently):

    - candidate:     0.5 + 0.5 * (CANDIDATE_MARGIN + (1 - CANDIDATE_MARGIN) * s),
      s = (1 - TIE_BREAK_WEIGHT) * l / 2 + TIE_BREAK_WEIGHT * H,
      which lies in [0.55, 1] (strictly above 0.5) and increases with l, then
      with H where l ties (l is clipped to [0, 2], its range after :func:`normalise`);
    - non-candidate: 0.5 * H, which lies in [0, 0.5] and increases with H
      (H is clipped to [0, 1]).

    So every candidate is above every non-candidate, with a gap of at least
    0.05 that rounding cannot close.

    Args:
        entropy (Tensor[N]): H(x) of every image.
        candidate_mask (Tensor[N]): bool, True for the gate's candidates.
        informativeness (Tensor[N]): l(x); only read where ``candidate_mask``.

    Returns:
        Tensor[N]: float64 priority in [0, 1]; higher is more worth labeling.
    """
    entropy = entropy.to(_RANK_DTYPE).clamp(0.0, 1.0).nan_to_num(0.0)
    share = informativeness.to(_RANK_DTYPE).clamp(0.0, _MAX_INFORMATIVENESS) / _MAX_INFORMATIVENESS
    share = (1.0 - TIE_BREAK_WEIGHT) * share.nan_to_num(0.0) + TIE_BREAK_WEIGHT * entropy
    candidate = 0.5 + 0.5 * (CANDIDATE_MARGIN + (1.0 - CANDIDATE_MARGIN) * share)
    return torch.where(candidate_mask.to(torch.bool), candidate, 0.5 * entropy)


def task_scores(priority: Tensor) -> Tensor:
    """Label Studio's task-level prediction score, 1 - priority [ours].

    Label Studio sorts the lowest score first, so ascending score is the HUA queue.

    Args:
        priority (Tensor[N]): output of :func:`priorities`.

    Returns:
        Tensor[N]: scores in [0, 1].
    """
    return 1.0 - priority


@dataclass(frozen=True, eq=False)
class Ranking:
    """Result of :func:`rank_pool` over a pool of N images with P candidates.

    Attributes:
        order (Tensor[N]): int64 image indices, most informative first; equal
            to a stable ascending sort of ``score`` (ties: lower index first).
        priority (Tensor[N]): float64 priority in [0, 1] (:func:`priorities`).
        score (Tensor[N]): float64 task score, 1 - priority (:func:`task_scores`).
        scale (Scale): the normalisation used; store it for :func:`score_single`.
        candidate_mask (Tensor[N]): bool, True for the candidates.
        informativeness (Tensor[P]): float64 l of the candidates, in ascending
            image index (the row order of ``candidate_metrics``).
    """

    order: Tensor
    priority: Tensor
    score: Tensor
    scale: Scale
    candidate_mask: Tensor
    informativeness: Tensor


def _check_pool(entropy: Tensor, candidate_metrics: Tensor, candidate_mask: Tensor) -> None:
    """Raise ValueError unless the three pool tensors agree in shape."""
    if entropy.dim() != 1:
        raise ValueError(f"entropy must be Tensor[N], got shape {tuple(entropy.shape)}")
    if candidate_mask.dtype != torch.bool or candidate_mask.shape != entropy.shape:
        raise ValueError(
            f"candidate_mask must be a bool Tensor[{entropy.shape[0]}], "
            f"got {candidate_mask.dtype} of shape {tuple(candidate_mask.shape)}"
        )
    p = int(candidate_mask.sum())
    if tuple(candidate_metrics.shape) != (p, 4):
        raise ValueError(
            f"candidate_metrics must be Tensor[{p}, 4] (one row per candidate), "
            f"got shape {tuple(candidate_metrics.shape)}"
        )


def rank_pool(
    entropy: Tensor,
    candidate_metrics: Tensor,
    candidate_mask: Tensor,
    scale: Scale | None = None,
) -> Ranking:
    """Rank a whole pool: normalise, aggregate, prioritise and order [paper + ours].

    Args:
        entropy (Tensor[N]): H(x) of every image.
        candidate_metrics (Tensor[P, 4]): metrics of the candidates, one row per
            True of ``candidate_mask`` in ascending image index.
        candidate_mask (Tensor[N]): bool, the gate's candidates (P of them).
        scale (Scale | None): normalisation to use; ``None`` fits one on
            ``candidate_metrics`` with ``entropy_cutoff`` = the lowest candidate
            entropy (``math.inf`` when P = 0).

    Returns:
        Ranking: order, priority, score, scale, mask and l.

    Raises:
        ValueError: the shapes disagree.
    """
    _check_pool(entropy, candidate_metrics, candidate_mask)
    if scale is None:
        cand_entropy = entropy[candidate_mask]
        cutoff = float(cand_entropy.min()) if cand_entropy.numel() else math.inf
        scale = fit_scale(candidate_metrics, entropy_cutoff=cutoff)
    l_cand = aggregate(normalise(candidate_metrics, scale))
    l_all = torch.zeros(entropy.shape[0], dtype=_RANK_DTYPE, device=entropy.device)
    l_all[candidate_mask] = l_cand.to(l_all.device)
    priority = priorities(entropy, candidate_mask, l_all)
    score = task_scores(priority)
    order = torch.sort(score, stable=True).indices
    return Ranking(order, priority, score, scale, candidate_mask, l_cand)


def score_single(
    entropy: float,
    metrics: Tensor | None,
    scale: Scale,
    entropy_threshold: float | None = None,
) -> float:
    """Task score of ONE new image on a stored scale [ours].

    "Same scale" means: the image is placed where it would have been in the
    stored pool ranking. It is a candidate when its entropy is >= the entropy
    of the last candidate of that ranking (``scale.entropy_cutoff``, ties
    admitted); then its metrics are normalised with the stored (clipped)
    min-max constants and mapped like the pool's candidates, else it is placed
    by H like a non-candidate. For an image that was in the pool (and not tied
    with the cutoff) this returns exactly its pool score.

    Args:
        entropy (float): H(x) of the image.
        metrics (Tensor[4] | None): its (SA, CD, OR, LC). May be ``None`` only
            when the image is not a candidate (the flip pass can be skipped).
        scale (Scale): stored by the last :func:`rank_pool`.
        entropy_threshold (float | None): overrides ``scale.entropy_cutoff``.

    Returns:
        float: the task score 1 - priority, in [0, 1].

    Raises:
        ValueError: the image is a candidate but ``metrics`` is None, or
            ``metrics`` is not a Tensor[4].
    """
    cutoff = scale.entropy_cutoff if entropy_threshold is None else entropy_threshold
    is_candidate = entropy >= cutoff
    if is_candidate and metrics is None:
        raise ValueError(
            f"entropy {entropy} >= cutoff {cutoff}: the image is a candidate, pass its metrics"
        )
    l_value = torch.zeros(1, dtype=_RANK_DTYPE)
    if is_candidate and metrics is not None:
        if metrics.numel() != 4:
            raise ValueError(f"metrics must be a Tensor[4], got shape {tuple(metrics.shape)}")
        l_value = aggregate(normalise(metrics.detach().cpu().reshape(1, 4), scale))
    entropy_t = torch.tensor([entropy], dtype=_RANK_DTYPE)
    mask = torch.tensor([is_candidate], dtype=torch.bool)
    return float(task_scores(priorities(entropy_t, mask, l_value))[0])

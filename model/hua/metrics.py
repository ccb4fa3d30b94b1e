"""The four metrics of one candidate image (METHOD.md section 2, formulas [ours]).

Each metric is a 0-d tensor on the detections' device, so that scoring a pool
never waits on the device per metric; :func:`image_metrics` stacks them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

from model.detections import Detections
from model.hua.config import RANK_DTYPE, HUAConfig

_LN2: float = math.log(2.0)


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


def _unflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Map (x1, y1, x2, y2) boxes of the horizontally flipped image back.

    x' = W - x, with x1 and x2 swapped so that x1 < x2 still holds.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def semantic_affinity(original: Detections, flipped: Detections) -> Tensor:
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
        Tensor[]: float64 SA in [0, 1].

    Raises:
        ValueError: the two images have different widths.
    """
    if original.width != flipped.width:
        raise ValueError(f"original and flipped widths differ: {original.width} != {flipped.width}")
    if len(original) == 0 or len(flipped) == 0:
        return torch.ones((), dtype=RANK_DTYPE, device=original.boxes.device)
    boxes = _unflip_boxes(flipped.boxes.to(original.boxes.dtype), flipped.width)
    iou = box_iou(original.boxes, boxes).nan_to_num(0.0)
    best_iou, match = iou.max(dim=1)
    js = js_divergence(original.probs, flipped.probs[match].to(original.probs.dtype))
    sa = 1.0 - best_iou * (1.0 - js)
    return sa.mean().clamp(0.0, 1.0).to(RANK_DTYPE)


def category_diversity(probs: Tensor, labeled_class_freq: Tensor) -> Tensor:
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
        Tensor[]: float64 CD in [0, 1].

    Raises:
        ValueError: the class counts of the two arguments disagree.
    """
    num_classes = labeled_class_freq.shape[-1]
    if probs.dim() != 2 or probs.shape[1] != num_classes + 1:
        raise ValueError(
            f"probs must be Tensor[D, {num_classes + 1}] to match labeled_class_freq "
            f"Tensor[{num_classes}], got shape {tuple(probs.shape)}"
        )
    q = probs[:, 1:].to(RANK_DTYPE).sum(dim=0)
    mass = q.sum()  # 0 with no detections
    freq = labeled_class_freq.to(device=q.device, dtype=RANK_DTYPE).clamp_min(0.0)
    total = freq.sum()
    p_l = torch.where(total > 0.0, freq / total, 1.0 / num_classes)
    # where() rather than an if: choosing a branch would wait on the device
    return torch.where(mass > 0.0, js_divergence(q / mass, p_l), 0.0)


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


def overlap_ratio(boxes: Tensor, iou_threshold: float = 0.3) -> Tensor:
    """d3, Overlap Ratio: how crowded or occluded the scene is [ours].

    The fraction of detections whose IoU with some other detection of the same
    image is >= ``iou_threshold``. One or no detection: 0. Pass the boxes of
    :func:`merge_classes`.

    Args:
        boxes (Tensor[D, 4]): (x1, y1, x2, y2) boxes of one image.
        iou_threshold (float): overlap threshold (``HUAConfig.overlap_iou``).

    Returns:
        Tensor[]: float64 OR in [0, 1].
    """
    d = boxes.shape[0]
    if d <= 1:
        return torch.zeros((), dtype=RANK_DTYPE, device=boxes.device)
    iou = box_iou(boxes, boxes).nan_to_num(0.0)
    iou.fill_diagonal_(0.0)
    overlapping = (iou >= iou_threshold).any(dim=1)
    return overlapping.sum().to(RANK_DTYPE) / d


def localization_uncertainty(sigmas: Tensor) -> Tensor:
    """d4, Localization uncertainty: mean sigma over detections and edges [ours].

    Args:
        sigmas (Tensor[D, 4]): per-edge standard deviation exp(alpha / 2) of
            each box, in the box-delta space.

    Returns:
        Tensor[]: float64 LC >= 0; 0 with no detections.
    """
    if sigmas.numel() == 0:
        return torch.zeros((), dtype=RANK_DTYPE, device=sigmas.device)
    return sigmas.to(RANK_DTYPE).mean()


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
        Tensor[4]: float64 (SA, CD, OR, LC) on the detections' device. An image
        with no detections gets (1, 0, 0, 0).
    """
    return torch.stack((
        semantic_affinity(original, flipped),
        category_diversity(original.probs, labeled_class_freq),
        overlap_ratio(merge_classes(original.boxes, original.scores, config.merge_iou), config.overlap_iou),
        localization_uncertainty(original.sigmas),
    ))


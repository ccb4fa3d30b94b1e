"""The four metrics of a candidate image (docs/method.md section 2, formulas [ours]).

Each per-detection function returns float64 Tensor[D] on the detections' device (a pool is never
synchronised); :func:`image_metrics` aggregates all four with the same A.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

from model.detections import Detections
from model.geometry import hflip_boxes
from model.hua.analysis import analysis_set, image_aggregate
from model.hua.config import RANK_DTYPE, HUAConfig

_LN2: float = math.log(2.0)

#: The ``mean`` of each metric over an empty analysis set, in METRIC_NAMES order:
#: nothing seen is fully inconsistent (SA 1), and neither rare, crowded nor loose.
EMPTY_METRICS: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits, so in [0, 1]; exactly symmetric, 0 log 0 = 0.

    ``p``, ``q`` Tensor[..., K] (broadcastable) -> Tensor[...].
    """
    m = (p + q) / 2
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=-1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=-1)
    return ((kl_pm + kl_qm) / (2 * _LN2)).clamp(0.0, 1.0)


def semantic_affinity(original: Detections, flipped: Detections) -> Tensor:
    """d1: sa_i = 1 - IoU(b_i, b*_i) (1 - JS(p_i, p*_i)), float64 Tensor[D] [ours].

    ``flipped`` is the mirrored image's analysis set in its own pixels; its boxes are mapped back and
    each detection is matched to the one of highest IoU (CALD's matching). No match: 1.
    """
    if original.width != flipped.width:
        raise ValueError(f"original and flipped widths differ: {original.width} != {flipped.width}")
    if len(flipped) == 0:
        return torch.ones(len(original), dtype=RANK_DTYPE, device=original.boxes.device)
    boxes = hflip_boxes(flipped.boxes.to(original.boxes.dtype), flipped.width)
    best_iou, match = box_iou(original.boxes, boxes).nan_to_num(0.0).max(dim=1)
    js = js_divergence(original.probs, flipped.probs[match].to(original.probs.dtype))
    return (1.0 - best_iou * (1.0 - js)).clamp(0.0, 1.0).to(RANK_DTYPE)


def rarity(probs: Tensor, labeled_class_freq: Tensor) -> Tensor:
    """d2, Category Diversity as rarity: r_i = sum_c q_i(c) (1 - f_c / max_c' f_c') [ours].

    ``probs`` Tensor[D, C+1] (q_i: its foreground renormalised), ``labeled_class_freq`` Tensor[C] of
    the labeled boxes -> float64 Tensor[D]. Nothing labeled yet: every class is rare, r_i = 1.
    """
    num_classes = labeled_class_freq.shape[-1]
    if probs.dim() != 2 or probs.shape[1] != num_classes + 1:
        raise ValueError(
            f"probs must be Tensor[D, {num_classes + 1}] to match labeled_class_freq "
            f"Tensor[{num_classes}], got shape {tuple(probs.shape)}"
        )
    fg = probs[:, 1:].to(RANK_DTYPE)
    q = fg / fg.sum(dim=1, keepdim=True).clamp_min(torch.finfo(RANK_DTYPE).tiny)
    freq = labeled_class_freq.to(device=fg.device, dtype=RANK_DTYPE).clamp_min(0.0)
    top = freq.max() if freq.numel() else freq.new_zeros(())
    commonness = torch.where(top > 0.0, freq / top.clamp_min(torch.finfo(RANK_DTYPE).tiny), 0.0)
    return (q * (1.0 - commonness)).sum(dim=1).clamp(0.0, 1.0)


def overlaps(boxes: Tensor, scores: Tensor, iou_threshold: float, min_score: float) -> Tensor:
    """d3: 1 for a confident detection overlapping another confident one [ours].

    On the analysis set what still overlaps are distinct objects (occlusion, crowds).
    ``boxes`` Tensor[D, 4], ``scores`` Tensor[D] -> float64 Tensor[D].
    """
    confident = scores >= min_score
    if boxes.shape[0] <= 1:
        return torch.zeros(boxes.shape[0], dtype=RANK_DTYPE, device=boxes.device)
    iou = box_iou(boxes, boxes).nan_to_num(0.0)
    iou.fill_diagonal_(0.0)
    crowded = ((iou >= iou_threshold) & confident[None, :]).any(dim=1)
    return (crowded & confident).to(RANK_DTYPE)


def edge_uncertainty(sigmas: Tensor) -> Tensor:
    """d4: the mean sigma of the 4 box edges, in box-delta space [ours]: Tensor[D, 4] -> float64 Tensor[D]."""
    return sigmas.to(RANK_DTYPE).mean(dim=1)


def image_metrics(
    original: Detections,
    flipped: Detections,
    labeled_class_freq: Tensor,
    config: HUAConfig,
) -> Tensor:
    """(SA, CD, OR, LC) of one candidate image: float64 Tensor[4] in :data:`METRIC_NAMES` order.

    ``flipped``: the detections of its horizontal flip, in the flipped image's pixels. An empty
    analysis set gives 0s under ``sum`` and :data:`EMPTY_METRICS` under ``mean``.
    """
    kept = analysis_set(original, config.merge_iou)
    values = (
        semantic_affinity(kept, analysis_set(flipped, config.merge_iou)),
        rarity(kept.probs, labeled_class_freq),
        overlaps(kept.boxes, kept.scores, config.overlap_iou, config.confident_score),
        edge_uncertainty(kept.sigmas),
    )
    return torch.stack(
        [image_aggregate(v, kept.scores, config.aggregate, empty) for v, empty in zip(values, EMPTY_METRICS)]
    )

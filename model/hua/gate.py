"""The retrieval gate (docs/method.md section 1): H(x) per image, and the P most uncertain images.

Only those P get the second (mirrored) forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.detections import Detections
from model.hua.analysis import analysis_set, image_aggregate
from model.hua.config import RANK_DTYPE, HUAConfig

#: [ours] H(x) under ``mean`` of an image with an empty analysis set: nothing
#: seen is maximally uncertain. Under ``sum`` such an image has H = 0.
EMPTY_IMAGE_ENTROPY: float = 1.0

#: Guards ``ceil(fraction * n)`` against float noise (0.1 * 30 = 3.0000000000000004).
_CEIL_TOLERANCE: float = 1e-9


def detection_entropy(probs: Tensor) -> Tensor:
    """h_i = entropy(p_i) / ln(C + 1), in [0, 1] [ours].

    ``probs`` Tensor[D, C+1], background in column 0, C >= 1 -> float64 Tensor[D].
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be Tensor[D, C+1] with C >= 1, got shape {tuple(probs.shape)}")
    rows = probs.to(RANK_DTYPE)
    return (-torch.xlogy(rows, rows).sum(dim=-1) / math.log(rows.shape[1])).clamp(0.0, 1.0)


def image_entropy(detections: Detections, config: HUAConfig) -> Tensor:
    """H(x) = A(h) over the analysis set [ours, section 1]: float64 Tensor[], in [0, 1] under ``mean``."""
    kept = analysis_set(detections, config.merge_iou)
    return image_aggregate(detection_entropy(kept.probs), kept.scores, config.aggregate, EMPTY_IMAGE_ENTROPY)


def entropy_score(entropy: float | Tensor) -> float:
    """1 / (1 + H), the score of an image no ranking has placed yet [ours].

    Lower is less certain, as in Label Studio's uncertainty sampling; bounded though H is not under ``sum``.
    """
    return 1.0 / (1.0 + float(entropy))


def _ceil(value: float) -> int:
    """ceil(value) that ignores float noise just above an integer."""
    return max(0, math.ceil(value - _CEIL_TOLERANCE))


def num_candidates(n: int, config: HUAConfig, budget: int | None = None) -> int:
    """P in [0, n], the images that pass the gate [ours, section 1].

    ``config.candidates`` when set; else ceil(retrieval_ratio * budget) when a budget is known;
    else max(min_candidates, ceil(retrieval_fraction * n)).
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
    """The gate [paper]: bool Tensor[N], True for the ``p`` highest of ``entropy`` (Tensor[N]).

    Ties go to the lower index, so the selection is deterministic.
    """
    n = entropy.shape[0]
    p = max(0, min(int(p), n))
    order = torch.sort(entropy, descending=True, stable=True).indices
    mask = torch.zeros(n, dtype=torch.bool, device=entropy.device)
    mask[order[:p]] = True
    return mask

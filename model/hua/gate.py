"""The retrieval gate (docs/method.md section 1): H(x) per image, and the P most uncertain images.

Images the gate does not pass are never run a second time; an image no
ranking has placed yet is scored by its entropy alone (:func:`entropy_score`).
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
    """h_i = entropy(p_i) / ln(C + 1) of each detection's softmax, in [0, 1] [ours].

    Args:
        probs (Tensor[D, C+1]): softmax rows, background in column 0, C >= 1.

    Returns:
        Tensor[D]: float64 normalised entropies.

    Raises:
        ValueError: ``probs`` is not 2-D with at least 2 columns.
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must be Tensor[D, C+1] with C >= 1, got shape {tuple(probs.shape)}")
    rows = probs.to(RANK_DTYPE)
    return (-torch.xlogy(rows, rows).sum(dim=-1) / math.log(rows.shape[1])).clamp(0.0, 1.0)


def image_entropy(detections: Detections, config: HUAConfig) -> Tensor:
    """H(x) = A(h) over the image's analysis set [ours, docs/method.md section 1].

    Args:
        detections (Detections): the image's detections, as the detector returns them.
        config (HUAConfig): ``merge_iou`` and ``aggregate``.

    Returns:
        Tensor[]: float64 H(x) >= 0 (in [0, 1] under ``mean``).
    """
    kept = analysis_set(detections, config.merge_iou)
    return image_aggregate(detection_entropy(kept.probs), kept.scores, config.aggregate, EMPTY_IMAGE_ENTROPY)


def entropy_score(entropy: float | Tensor) -> float:
    """The task score of an image no ranking has placed: 1 / (1 + H) [ours].

    Lower means less certain, the order of Label Studio's uncertainty sampling;
    a monotone map into (0, 1] because H has no upper bound under ``sum``.
    """
    return 1.0 / (1.0 + float(entropy))


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

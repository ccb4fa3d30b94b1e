"""The retrieval gate (METHOD.md section 1): H(x) per image, and the P most uncertain images.

Images the gate does not pass are never run a second time; an image no
ranking has placed yet is scored by its entropy alone (:func:`entropy_score`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.hua.config import HUAConfig

#: [ours] Entropy of an image whose detector produced no RoI at all (K = 0):
#: nothing seen counts as maximally uncertain, like SA = 1 for "no detections"
#: in METHOD.md section 2, so such images reach the ranking stage.
EMPTY_IMAGE_ENTROPY: float = 1.0

#: Guards ``ceil(fraction * n)`` against float noise (0.1 * 30 = 3.0000000000000004).
_CEIL_TOLERANCE: float = 1e-9


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



def entropy_score(top_probs: Tensor) -> Tensor:
    """The task score of an image placed by no ranking: 1 - H(x) [ours].

    Lower means less certain, which is the order Label Studio's uncertainty
    sampling and prediction-score column use. Computed in float64, so that it
    equals ``1.0 - float(image_entropy(top_probs))`` exactly.

    Args:
        top_probs (Tensor[K, C+1]): as for :func:`image_entropy`.

    Returns:
        Tensor[]: float64 score in [0, 1].
    """
    return 1.0 - image_entropy(top_probs).double()


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


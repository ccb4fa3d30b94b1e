"""Optional diversity pass over the top of a ranking [ours, beyond the paper].

HUA scores images one by one, so the most informative batch can be twenty
near-duplicates of one hard scene. Following PPAL's use of k-center greedy on
image features, the top ``window`` images of the ranking are re-ordered so that
each next image is the one farthest (in pooled backbone features) from those
already chosen, starting from the top-ranked one.
"""

from __future__ import annotations

import torch
from torch import Tensor


def k_center_greedy(features: Tensor, k: int, first: int = 0) -> Tensor:
    """Indices of ``k`` rows chosen by k-center greedy, starting from ``first``.

    Args:
        features (Tensor[N, D]): one feature vector per item.
        k (int): how many to choose (clipped to N).
        first (int): the row chosen first.

    Returns:
        Tensor[k]: int64 row indices in the order they were chosen (distinct).
    """
    n = features.shape[0]
    k = min(k, n)
    if k <= 0:
        return torch.zeros(0, dtype=torch.int64)
    feats = features.double()
    chosen = [first]
    nearest = torch.cdist(feats, feats[first : first + 1]).squeeze(1)
    for _ in range(k - 1):
        nearest[chosen] = -1.0
        pick = int(torch.argmax(nearest))
        chosen.append(pick)
        nearest = torch.minimum(nearest, torch.cdist(feats, feats[pick : pick + 1]).squeeze(1))
    return torch.tensor(chosen, dtype=torch.int64)


def diversify(order: Tensor, score: Tensor, features: Tensor, window: int) -> tuple[Tensor, Tensor]:
    """Re-order the top ``window`` of a ranking by k-center greedy; keep everything else.

    The task scores of the window are re-assigned in the new order (the same
    set of values, ascending), so that sorting by score still gives the order.

    Args:
        order (Tensor[N]): image indices, most informative first.
        score (Tensor[N]): task scores (ascending along ``order``).
        features (Tensor[N, D]): pooled features per image index.
        window (int): how many of the top images to re-order.

    Returns:
        (Tensor[N], Tensor[N]): the new order and the new scores.
    """
    window = min(window, order.shape[0])
    if window < 3:
        return order.clone(), score.clone()
    top = order[:window]
    picked = top[k_center_greedy(features[top], window)]
    new_order = torch.cat([picked, order[window:]])
    new_score = score.clone()
    new_score[picked] = torch.sort(score[top]).values
    return new_order, new_score

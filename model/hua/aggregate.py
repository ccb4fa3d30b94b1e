"""Aggregation (METHOD.md section 2: [paper] l = sqrt(sum d_m^2), [ours] the stored scale)
and one number per task (METHOD.md section 3, [ours]).

:func:`fit_scale` / :func:`normalise` (min-max over the candidates) and
:func:`aggregate` give l; :func:`priorities` and :func:`task_scores` turn it
into a task score (score = 1 - priority, so Label Studio's "lowest score
first" is the HUA queue). :func:`rank_pool` bundles them for a pool;
:func:`score_single` places one new image on the stored :class:`Scale`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from model.hua.config import METRIC_NAMES, RANK_DTYPE

#: [ours] Candidates map to priorities in [0.5 + CANDIDATE_MARGIN / 2, 1], so
#: there is a visible gap above the non-candidates' [0, 0.5] (no float ties
#: between the two groups, even after ``1 - priority``).
CANDIDATE_MARGIN: float = 0.1

#: Largest possible l: every normalised metric lies in [0, 1], so l <= sqrt(4).
_MAX_INFORMATIVENESS: float = 2.0

#: [ours] Weight of H(x) in a candidate's priority: ties in l (every metric
#: constant over the candidates, as for a young model) are broken by the gate
#: entropy, higher first, never by pool order; l differing by more than this
#: share of its range always decides.
TIE_BREAK_WEIGHT: float = 1e-6


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
            mins = torch.tensor(data["mins"], dtype=RANK_DTYPE)
            maxs = torch.tensor(data["maxs"], dtype=RANK_DTYPE)
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
    values = metrics.to(RANK_DTYPE).reshape(-1, 4)
    if values.shape[0] == 0:
        zeros = torch.zeros(4, dtype=RANK_DTYPE, device=values.device)
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
    values = metrics.to(RANK_DTYPE).reshape(-1, 4)
    mins = scale.mins.to(device=values.device, dtype=RANK_DTYPE)
    spread = scale.maxs.to(device=values.device, dtype=RANK_DTYPE) - mins
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
    entropy = entropy.to(RANK_DTYPE).clamp(0.0, 1.0).nan_to_num(0.0)
    share = informativeness.to(RANK_DTYPE).clamp(0.0, _MAX_INFORMATIVENESS) / _MAX_INFORMATIVENESS
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
    l_all = torch.zeros(entropy.shape[0], dtype=RANK_DTYPE, device=entropy.device)
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
    l_value = torch.zeros(1, dtype=RANK_DTYPE)
    if is_candidate and metrics is not None:
        if metrics.numel() != 4:
            raise ValueError(f"metrics must be a Tensor[4], got shape {tuple(metrics.shape)}")
        l_value = aggregate(normalise(metrics.detach().cpu().reshape(1, 4), scale))
    entropy_t = torch.tensor([entropy], dtype=RANK_DTYPE)
    mask = torch.tensor([is_candidate], dtype=torch.bool)
    return float(task_scores(priorities(entropy_t, mask, l_value))[0])

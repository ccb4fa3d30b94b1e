"""Rank normalisation, l = sqrt(sum d_m^2) [paper] and task scores (docs/method.md sections 2-3).

:class:`Scale` holds all a later image needs; :func:`rank_position` places pool and later images
alike, so a pool image scored again gets its pool score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from model.hua.config import METRIC_NAMES, RANK_DTYPE

#: [ours] Candidates map to priorities in [0.5 + CANDIDATE_MARGIN / 2, 1], so there is
#: a gap above the non-candidates' [0, 0.5] that rounding cannot close.
CANDIDATE_MARGIN: float = 0.1

#: [ours] Weight of H's rank in a candidate's priority: candidates tied in l are
#: ordered by the gate entropy, higher first, never by pool order.
TIE_BREAK_WEIGHT: float = 1e-6

#: The format of :meth:`Scale.to_json` (1 was the min-max scale of 2026-12-01).
SCALE_FORMAT: int = 2


def rank_position(values: Tensor, reference: Tensor) -> Tensor:
    """Where each value lies among sorted ``reference`` (Tensor[M]): float64 Tensor[N] in [0, 1] [ours].

    Ties get their mean rank, so the reference against itself is section 2's rank normalisation;
    values between entries interpolate, outside ones clip. M < 2 or a constant reference: 0.
    """
    values = values.to(RANK_DTYPE).reshape(-1).contiguous()
    ref = reference.to(device=values.device, dtype=RANK_DTYPE).reshape(-1).contiguous()
    m = ref.numel()
    if m < 2 or bool(ref[0] == ref[-1]):
        return torch.zeros_like(values)
    lo = torch.searchsorted(ref, values, right=False)
    hi = torch.searchsorted(ref, values, right=True)
    below, above = ref[(lo - 1).clamp(0, m - 1)], ref[lo.clamp(0, m - 1)]
    gap = above - below
    between = (lo - 1).to(RANK_DTYPE) + torch.where(gap > 0, (values - below) / gap.clamp_min(1e-300), 0.0)
    position = torch.where(hi > lo, (lo + hi - 1).to(RANK_DTYPE) / 2, between)
    return position.clamp(0.0, m - 1) / (m - 1)


def _quantiles(values: Tensor, points: int) -> Tensor:
    """``values`` sorted, or ``points`` evenly spaced quantiles of them when there are more."""
    ordered = torch.sort(values.to(RANK_DTYPE).reshape(-1)).values
    if ordered.numel() <= points:
        return ordered
    return torch.quantile(ordered, torch.linspace(0.0, 1.0, points, dtype=RANK_DTYPE))


@dataclass(frozen=True, eq=False)
class Scale:
    """What a later image needs to land on a pool ranking's scale [ours]; ``eq=False``: compare ``to_json()``.

    Attributes:
        metrics (Tensor[M, 4]): the candidates' sorted values of each metric (or quantiles).
        informativeness (Tensor[M]): the candidates' sorted l.
        entropy (Tensor[K]): the pool's sorted H(x).
        entropy_cutoff: H of the last candidate; ``math.inf`` (JSON ``None``) without candidates.
    """

    metrics: Tensor
    informativeness: Tensor
    entropy: Tensor
    entropy_cutoff: float = 0.0

    def __post_init__(self) -> None:
        if self.metrics.dim() != 2 or self.metrics.shape[1] != 4:
            raise ValueError(f"Scale.metrics must be Tensor[M, 4], got shape {tuple(self.metrics.shape)}")
        for name in ("metrics", "informativeness", "entropy"):
            if not bool(torch.isfinite(getattr(self, name)).all()):
                raise ValueError(f"Scale.{name} must be finite")
        if math.isnan(self.entropy_cutoff):
            raise ValueError("Scale.entropy_cutoff must not be NaN")

    def to_json(self) -> dict[str, object]:
        """A JSON-friendly form (plain lists and floats; no Infinity)."""
        return {
            "format": SCALE_FORMAT,
            "metrics": {name: column.tolist() for name, column in zip(METRIC_NAMES, self.metrics.T)},
            "informativeness": self.informativeness.tolist(),
            "entropy": self.entropy.tolist(),
            "entropy_cutoff": self.entropy_cutoff if math.isfinite(self.entropy_cutoff) else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Scale:
        """Inverse of :meth:`to_json`, exact in float64; ValueError for another format or bad columns."""
        if data.get("format") != SCALE_FORMAT:
            raise ValueError(f"Scale format {data.get('format', 1)} is not {SCALE_FORMAT}: rank the pool again")
        try:
            columns = [torch.tensor(data["metrics"][name], dtype=RANK_DTYPE) for name in METRIC_NAMES]
            metrics = torch.stack(columns, dim=1) if columns[0].numel() else torch.zeros((0, 4), dtype=RANK_DTYPE)
            informativeness = torch.tensor(data["informativeness"], dtype=RANK_DTYPE)
            entropy = torch.tensor(data["entropy"], dtype=RANK_DTYPE)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"Scale needs numeric lists per metric, 'informativeness' and 'entropy': {error}"
            ) from error
        cutoff = data.get("entropy_cutoff")
        return cls(metrics, informativeness, entropy, math.inf if cutoff is None else float(cutoff))


def _normalise(metrics: Tensor, reference: Tensor) -> Tensor:
    """d_m of each row: the rank position of each metric among ``reference``'s column."""
    values = metrics.to(RANK_DTYPE).reshape(-1, 4)
    return torch.stack([rank_position(values[:, m], reference[:, m]) for m in range(4)], dim=1)


def aggregate(normalised: Tensor) -> Tensor:
    """l = sqrt(sum_m d_m^2) in [0, 2] [paper]: Tensor[N, 4] -> Tensor[N], larger is more informative."""
    return torch.linalg.vector_norm(normalised, ord=2, dim=-1)


def fit_scale(candidate_metrics: Tensor, entropy: Tensor, entropy_cutoff: float, points: int = 1000) -> Scale:
    """A pool's scale [ours]: its P candidates' metrics (Tensor[P, 4]) and l, and its N entropies.

    At most ``points`` sorted values each; ``entropy_cutoff`` is ``math.inf`` when P = 0.
    """
    values = candidate_metrics.to(RANK_DTYPE).reshape(-1, 4)
    metrics = torch.stack([_quantiles(values[:, m], points) for m in range(4)], dim=1) if len(values) else values
    informativeness = aggregate(_normalise(values, metrics))
    return Scale(metrics, _quantiles(informativeness, points), _quantiles(entropy, points), entropy_cutoff)


def normalise(metrics: Tensor, scale: Scale) -> Tensor:
    """d_m, each metric's rank among the candidates [ours, section 2]: Tensor[N, 4] -> float64 Tensor[N, 4].

    By rank, a saturated metric spreads no wider than any other, and a constant one is 0.
    """
    return _normalise(metrics, scale.metrics)


def priorities(entropy: Tensor, candidate_mask: Tensor, informativeness: Tensor, scale: Scale) -> Tensor:
    """Priority in [0, 1] of every task: candidates by l above non-candidates by H [ours, section 3].

    Placed by rank, never clipped, so no two tasks tie at a bound; P candidates spread over [0.55, 1]
    in steps of about 0.45 / P (distinct at three decimals up to P of about 450):

    - candidate: 0.5 + 0.5 (CANDIDATE_MARGIN + (1 - CANDIDATE_MARGIN) s),
      s = (1 - TIE_BREAK_WEIGHT) pos(l) + TIE_BREAK_WEIGHT pos(H);
    - non-candidate: 0.5 pos(H).

    All Tensor[N]; ``informativeness`` is read only where ``candidate_mask``.
    """
    entropy_rank = rank_position(entropy.nan_to_num(0.0), scale.entropy)
    share = rank_position(informativeness.nan_to_num(0.0), scale.informativeness)
    share = (1.0 - TIE_BREAK_WEIGHT) * share + TIE_BREAK_WEIGHT * entropy_rank
    candidate = 0.5 + 0.5 * (CANDIDATE_MARGIN + (1.0 - CANDIDATE_MARGIN) * share)
    return torch.where(candidate_mask.to(device=candidate.device, dtype=torch.bool), candidate, 0.5 * entropy_rank)


def task_scores(priority: Tensor) -> Tensor:
    """Label Studio's task score, 1 - priority: it sorts the lowest first, so ascending is the queue [ours]."""
    return 1.0 - priority


@dataclass(frozen=True, eq=False)
class Ranking:
    """Result of :func:`rank_pool` over N images with P candidates.

    Attributes:
        order (Tensor[N]): image indices, most informative first (stable ascending sort of ``score``).
        priority, score (Tensor[N]): float64 priority and 1 - priority.
        scale (Scale): what :func:`score_single` places a later image with.
        candidate_mask (Tensor[N]): bool.
        informativeness (Tensor[P]): the candidates' l, in image order.
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
    points: int = 1000,
) -> Ranking:
    """Normalise, aggregate, prioritise and order a whole pool [paper + ours].

    ``entropy`` Tensor[N]; ``candidate_metrics`` Tensor[P, 4], one row per True of ``candidate_mask``
    (Tensor[N]) in image order. ``scale=None`` fits the pool's own (cutoff: lowest candidate H).
    """
    _check_pool(entropy, candidate_metrics, candidate_mask)
    if scale is None:
        cand_entropy = entropy[candidate_mask]
        cutoff = float(cand_entropy.min()) if cand_entropy.numel() else math.inf
        scale = fit_scale(candidate_metrics, entropy, cutoff, points)
    l_cand = aggregate(normalise(candidate_metrics, scale))
    l_all = torch.zeros(entropy.shape[0], dtype=RANK_DTYPE, device=entropy.device)
    l_all[candidate_mask] = l_cand.to(l_all.device)
    priority = priorities(entropy, candidate_mask, l_all, scale)
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

    A candidate when ``entropy`` >= the cutoff (ties admitted), placed by its ``metrics`` (Tensor[4];
    ``None`` only for a non-candidate) and l; otherwise by H. A pool image not tied with the cutoff
    gets exactly its pool score.
    """
    cutoff = scale.entropy_cutoff if entropy_threshold is None else entropy_threshold
    is_candidate = entropy >= cutoff
    if is_candidate and metrics is None:
        raise ValueError(f"entropy {entropy} >= cutoff {cutoff}: the image is a candidate, pass its metrics")
    l_value = torch.zeros(1, dtype=RANK_DTYPE)
    if is_candidate:
        if metrics.numel() != 4:
            raise ValueError(f"metrics must be a Tensor[4], got shape {tuple(metrics.shape)}")
        l_value = aggregate(normalise(metrics.detach().cpu().reshape(1, 4), scale))
    entropy_t = torch.tensor([entropy], dtype=RANK_DTYPE)
    mask = torch.tensor([is_candidate], dtype=torch.bool)
    return float(task_scores(priorities(entropy_t, mask, l_value, scale))[0])

"""Rank normalisation and aggregation (docs/method.md section 2: [paper] l = sqrt(sum d_m^2),
[ours] rank normalisation and the stored scale) and one number per task (section 3, [ours]).

Every number a pool ranking needs to place a later image is in :class:`Scale`:
the candidates' sorted values of each metric and of l, and the pool's sorted
entropies. :func:`rank_position` is the one placement rule, used for the pool
and for a later image alike, so a pool image scored again gets its pool score.
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
    """Where each value lies among the sorted ``reference``, in [0, 1] [ours].

    A value equal to reference entries gets their mean rank, (r - 1) / (M - 1)
    with r the average 1-based rank, so ranking the reference against itself is
    the rank normalisation of docs/method.md section 2; a value between two
    entries is interpolated linearly, and one outside them is clipped. A
    reference of fewer than 2 values, or a constant one, gives 0.

    Args:
        values (Tensor[N]): the values to place.
        reference (Tensor[M]): sorted ascending.

    Returns:
        Tensor[N]: float64 positions in [0, 1].
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
    """What a later image needs to land on a pool ranking's scale [ours].

    Stored with the ranking (:meth:`to_json`). ``eq=False``: tensors have no
    single truth value; compare ``to_json()``.

    Attributes:
        metrics (Tensor[M, 4]): each column the candidates' sorted values of one
            metric (all of them, or ``scale_points`` quantiles).
        informativeness (Tensor[M]): the candidates' sorted l.
        entropy (Tensor[K]): the whole pool's sorted H(x) (or quantiles).
        entropy_cutoff (float): H of the last candidate: a later image with
            H >= it would have passed the gate; ``math.inf`` when the pool had
            no candidate (serialised as ``None``).
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
        """Inverse of :meth:`to_json`; exact for float64 values.

        Raises:
            ValueError: another format (an older ranking's min-max scale), missing
                keys, or columns of different lengths.
        """
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
    """l(x) = sqrt(sum_m d_m(x)^2), the informativeness of each image [paper].

    Args:
        normalised (Tensor[N, 4]): rank-normalised metrics in [0, 1].

    Returns:
        Tensor[N]: l in [0, 2]; larger is more informative.
    """
    return torch.linalg.vector_norm(normalised, ord=2, dim=-1)


def fit_scale(candidate_metrics: Tensor, entropy: Tensor, entropy_cutoff: float, points: int = 1000) -> Scale:
    """The scale of a pool: its candidates' sorted metrics and l, and its sorted entropies [ours].

    Args:
        candidate_metrics (Tensor[P, 4]): raw metrics of the P candidates.
        entropy (Tensor[N]): H(x) of every image of the pool.
        entropy_cutoff (float): the last candidate's H (``math.inf`` when P = 0).
        points (int): at most this many sorted values per quantity (``HUAConfig.scale_points``).
    """
    values = candidate_metrics.to(RANK_DTYPE).reshape(-1, 4)
    metrics = torch.stack([_quantiles(values[:, m], points) for m in range(4)], dim=1) if len(values) else values
    informativeness = aggregate(_normalise(values, metrics))
    return Scale(metrics, _quantiles(informativeness, points), _quantiles(entropy, points), entropy_cutoff)


def normalise(metrics: Tensor, scale: Scale) -> Tensor:
    """Rank normalisation of each metric on a stored scale [ours, docs/method.md section 2].

    d_m = the metric's rank position among the candidates (:func:`rank_position`),
    so a saturated metric (most candidates at its maximum) spreads no wider than
    any other, and a constant one is 0.

    Args:
        metrics (Tensor[N, 4]): raw metrics in :data:`METRIC_NAMES` order.
        scale (Scale): the pool's scale.

    Returns:
        Tensor[N, 4]: float64 values in [0, 1].
    """
    return _normalise(metrics, scale.metrics)


def priorities(entropy: Tensor, candidate_mask: Tensor, informativeness: Tensor, scale: Scale) -> Tensor:
    """The priority of every task: candidates by l above non-candidates by H [ours, section 3].

    Both are placed by rank on the stored scale, never by clipping, so no two
    tasks tie because both exceed a bound, and a pool of P candidates spreads
    over [0.55, 1] in steps of about 0.45 / P (neighbours stay apart at three
    decimals for P up to about 450):

    - candidate: 0.5 + 0.5 (CANDIDATE_MARGIN + (1 - CANDIDATE_MARGIN) s),
      s = (1 - TIE_BREAK_WEIGHT) pos(l) + TIE_BREAK_WEIGHT pos(H);
    - non-candidate: 0.5 pos(H).

    Args:
        entropy (Tensor[N]): H(x) of every image.
        candidate_mask (Tensor[N]): bool, True for the gate's candidates.
        informativeness (Tensor[N]): l(x); only read where ``candidate_mask``.
        scale (Scale): the pool's scale.

    Returns:
        Tensor[N]: float64 priority in [0, 1]; higher is more worth labeling.
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
    """Result of :func:`rank_pool` over a pool of N images with P candidates.

    Attributes:
        order (Tensor[N]): int64 image indices, most informative first (a stable
            ascending sort of ``score``).
        priority (Tensor[N]): float64 priority in [0, 1] (:func:`priorities`).
        score (Tensor[N]): float64 task score, 1 - priority.
        scale (Scale): what a later image is placed with (:func:`score_single`).
        candidate_mask (Tensor[N]): bool, True for the candidates.
        informativeness (Tensor[P]): float64 l of the candidates, in ascending
            image index (the row order of the candidate metrics).
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
    """Rank a whole pool: normalise, aggregate, prioritise and order [paper + ours].

    Args:
        entropy (Tensor[N]): H(x) of every image.
        candidate_metrics (Tensor[P, 4]): metrics of the candidates, one row per
            True of ``candidate_mask`` in ascending image index.
        candidate_mask (Tensor[N]): bool, the gate's candidates.
        scale (Scale | None): the scale to place them on; ``None`` fits the
            pool's own (:func:`fit_scale`, cutoff the lowest candidate entropy).
        points (int): ``HUAConfig.scale_points`` for a fitted scale.

    Raises:
        ValueError: the shapes disagree.
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

    The image is placed where it would have been in the stored pool ranking: a
    candidate when its entropy is >= ``scale.entropy_cutoff`` (ties admitted),
    placed by its metrics' and l's rank positions; else placed by H like a
    non-candidate. For an image of the pool (not tied with the cutoff) this is
    exactly its pool score.

    Args:
        entropy (float): H(x) of the image.
        metrics (Tensor[4] | None): its raw (SA, CD, OR, LC); ``None`` only when
            it is not a candidate (its mirrored pass was skipped).
        scale (Scale): stored by the last :func:`rank_pool`.
        entropy_threshold (float | None): overrides ``scale.entropy_cutoff``.

    Raises:
        ValueError: the image is a candidate but ``metrics`` is None or not a Tensor[4].
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

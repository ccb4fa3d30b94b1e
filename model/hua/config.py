"""HUA's settings, and what its stages share: metric names and ``RANK_DTYPE``.

Ranking runs in float64 so that a stored scale round-trips through JSON exactly and a task scored
later gets bit-for-bit its pool score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Column order of every metrics tensor (``Tensor[..., 4]``).
METRIC_NAMES: tuple[str, str, str, str] = (
    "semantic_affinity",
    "category_diversity",
    "overlap_ratio",
    "localization_uncertainty",
)

#: The image aggregations A of docs/method.md section 1 (HUA_AGGREGATE).
AGGREGATES: tuple[str, str] = ("sum", "mean")

#: Arithmetic type of the ranking stage (see the module docstring).
RANK_DTYPE: torch.dtype = torch.float64


@dataclass(frozen=True)
class HUAConfig:
    """Settings of HUA ranking (docs/method.md sections 1-3); defaults are the method's, all [ours].

    The analysis set starts at the detector's ``analysis_threshold`` (0.05), not here.

    Attributes:
        aggregate: A, "sum" (expected error per image; a budget in images) or "mean" (per box).
        retrieval_fraction, min_candidates: P = max(min_candidates, ceil(fraction * N)) by default.
        candidates: an absolute P; takes precedence when not ``None``.
        retrieval_ratio: P = ceil(ratio * B) when a labeling budget B is known (benchmarks).
        merge_iou: the analysis set's class-agnostic NMS.
        overlap_iou, confident_score: when two detections overlap, for the Overlap Ratio.
        scale_points: at most this many sorted values (quantiles) per quantity in a stored scale.
        diversity, diversity_window: k-center re-ordering of the ranking's top window
            (``model.diversity``), beyond the paper.
    """

    aggregate: str = "sum"
    retrieval_fraction: float = 0.5
    min_candidates: int = 64
    candidates: int | None = None
    retrieval_ratio: float = 4.0
    merge_iou: float = 0.7
    overlap_iou: float = 0.3
    confident_score: float = 0.3
    scale_points: int = 1000
    diversity: bool = False
    diversity_window: int = 64

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if not 0.0 <= self.retrieval_fraction <= 1.0:
            raise ValueError(f"retrieval_fraction must lie in [0, 1], got {self.retrieval_fraction}")
        if self.min_candidates < 0:
            raise ValueError(f"min_candidates must be >= 0, got {self.min_candidates}")
        if self.candidates is not None and self.candidates < 0:
            raise ValueError(f"candidates must be >= 0 or None, got {self.candidates}")
        if not (self.retrieval_ratio > 0.0 and math.isfinite(self.retrieval_ratio)):
            raise ValueError(f"retrieval_ratio must be a finite number > 0, got {self.retrieval_ratio}")
        for name in ("merge_iou", "overlap_iou"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.confident_score <= 1.0:
            raise ValueError(f"confident_score must lie in [0, 1], got {self.confident_score}")
        if self.scale_points < 2:
            raise ValueError(f"scale_points must be >= 2, got {self.scale_points}")

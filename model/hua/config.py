"""What HUA ranking is configured by, and the names and arithmetic type its stages share.

``RANK_DTYPE``: ranking arithmetic (metrics, rank normalisation, aggregation,
priorities) runs in float64 so that a stored scale round-trips through JSON
exactly and a single task scored later gets bit-for-bit the score it had in the pool.
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
    """Settings of HUA ranking (docs/method.md sections 1-3). Defaults are the method's.

    Which detections the analysis set starts from is the detector's score
    threshold (``DetectorConfig.analysis_threshold``, 0.05 by default).

    Attributes:
        aggregate (str): the image aggregation A [ours]: "sum" (sum_i s_i v_i, the
            expected error in an image; a budget counted in images) or "mean"
            (score-weighted mean; a budget counted in boxes).
        retrieval_fraction (float): P = max(min_candidates,
            ceil(retrieval_fraction * N)) when neither ``candidates`` nor a budget
            is given [ours], in [0, 1].
        min_candidates (int): lower bound of P in that rule [ours], >= 0.
        candidates (int | None): an absolute P named by the user [ours]; takes
            precedence over both other rules. ``None``: not set.
        retrieval_ratio (float): P = ceil(retrieval_ratio * B) when a labeling
            budget B is known (benchmarks) [ours], > 0.
        merge_iou (float): the analysis set keeps one detection per object:
            class-agnostic NMS at this IoU [ours: 0.7], in (0, 1].
        overlap_iou (float): IoU at or above which two confident detections
            overlap, for the Overlap Ratio [ours: 0.3], in (0, 1].
        confident_score (float): the score from which a detection counts for the
            Overlap Ratio [ours: 0.3], in [0, 1].
        scale_points (int): how many sorted values of each metric (evenly spaced
            quantiles) a stored scale keeps [ours: 1000], >= 2.
        diversity (bool): re-order the top of the ranking by k-center greedy
            on pooled backbone features (``model.diversity``) [ours, beyond the paper].
        diversity_window (int): how many of the top images that pass re-orders.
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

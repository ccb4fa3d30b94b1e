"""What HUA ranking is configured by, and the names and arithmetic type its stages share.

``RANK_DTYPE``: ranking arithmetic (metrics, normalise, aggregate, priorities)
runs in float64 so that a stored scale round-trips through JSON exactly and a
single task scored later gets bit-for-bit the score it had in the pool.
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

#: Arithmetic type of the ranking stage (see the module docstring).
RANK_DTYPE: torch.dtype = torch.float64


@dataclass(frozen=True)
class HUAConfig:
    """Settings of HUA ranking (METHOD.md sections 1-2). Defaults are METHOD.md's.

    The gate's K (the RoIs whose entropies form H(x)) is not here: the detector
    fills ``Detections.top_probs`` with them (``DetectorConfig.gate_top_k``), and
    which detections the metrics see is the detector's score threshold
    (``DetectorConfig.score_threshold``, 0.05 by default, METHOD.md section 2).

    Attributes:
        retrieval_fraction (float): P = max(min_candidates,
            ceil(retrieval_fraction * N)) when neither ``candidates`` nor a budget
            is given [ours], in [0, 1].
        min_candidates (int): lower bound of P in that rule [ours], >= 0.
        candidates (int | None): an absolute P named by the user [ours]; takes
            precedence over both other rules. ``None``: not set.
        retrieval_ratio (float): P = ceil(retrieval_ratio * B) when a labeling
            budget B is known (benchmarks) [ours], > 0.
        overlap_iou (float): IoU at or above which two detections of one image
            overlap, for the Overlap Ratio [ours], in (0, 1].
        merge_iou (float): detections of different classes with an IoU above
            it are one object, merged (highest score kept) before the Overlap
            Ratio [ours: 0.7], in (0, 1].
        diversity (bool): re-order the top of the ranking by k-center greedy
            on pooled backbone features (``model.diversity``) [ours, beyond the paper].
        diversity_window (int): how many of the top images that pass re-orders.
    """

    retrieval_fraction: float = 0.5
    min_candidates: int = 64
    candidates: int | None = None
    retrieval_ratio: float = 4.0
    overlap_iou: float = 0.3
    merge_iou: float = 0.7
    diversity: bool = False
    diversity_window: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.retrieval_fraction <= 1.0:
            raise ValueError(
                f"retrieval_fraction must lie in [0, 1], got {self.retrieval_fraction}"
            )
        if self.min_candidates < 0:
            raise ValueError(f"min_candidates must be >= 0, got {self.min_candidates}")
        if self.candidates is not None and self.candidates < 0:
            raise ValueError(f"candidates must be >= 0 or None, got {self.candidates}")
        if not (self.retrieval_ratio > 0.0 and math.isfinite(self.retrieval_ratio)):
            raise ValueError(
                f"retrieval_ratio must be a finite number > 0, got {self.retrieval_ratio}"
            )
        if not 0.0 < self.overlap_iou <= 1.0:
            raise ValueError(f"overlap_iou must lie in (0, 1], got {self.overlap_iou}")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ValueError(f"merge_iou must lie in (0, 1], got {self.merge_iou}")

"""HUA ranking: retrieval gate, four metrics, aggregation and task scores.

Implements METHOD.md sections 1-3 (Nguyen et al., "Hierarchical Uncertainty
Aggregation and Emphasis Loss for Active Learning in Object Detection",
IEEE BigData 2023). What the paper states is marked **[paper]**; definitions
this project fixes where the paper is silent are marked **[ours]**.

The pipeline for a pool of N unlabeled images, one module per stage:

1. ``gate`` [paper]: :func:`image_entropy` per image, then
   :func:`num_candidates` and :func:`select_candidates` keep the P most
   uncertain images.
2. ``metrics`` [paper; ours: their formulas]: for each candidate, a second
   (horizontally flipped) forward pass and :func:`image_metrics` give the four
   metrics (SA, CD, OR, LC).
3. ``aggregate`` [paper + ours]: :func:`fit_scale` / :func:`normalise`
   (min-max over the candidates), :func:`aggregate` (l = sqrt(sum d_m^2)),
   then one number per task, :func:`priorities` and :func:`task_scores`.
   :func:`rank_pool` bundles them; :func:`score_single` places one new image
   on the stored :class:`Scale`.

``config`` holds :class:`HUAConfig` and what the stages share. Per-image metric
functions take one image; everything that runs over the pool is vectorised.
``model.scoring`` runs the detector and these stages over a pool or new images.
"""

from model.hua.aggregate import (
    CANDIDATE_MARGIN,
    Ranking,
    Scale,
    aggregate,
    fit_scale,
    normalise,
    priorities,
    rank_pool,
    score_single,
    task_scores,
)
from model.hua.config import METRIC_NAMES, HUAConfig
from model.hua.gate import EMPTY_IMAGE_ENTROPY, entropy_score, image_entropy, num_candidates, select_candidates
from model.hua.metrics import (
    category_diversity,
    image_metrics,
    js_divergence,
    localization_uncertainty,
    merge_classes,
    overlap_ratio,
    semantic_affinity,
)

__all__ = [
    "METRIC_NAMES",
    "CANDIDATE_MARGIN",
    "EMPTY_IMAGE_ENTROPY",
    "HUAConfig",
    "Scale",
    "Ranking",
    "js_divergence",
    "image_entropy",
    "entropy_score",
    "num_candidates",
    "select_candidates",
    "semantic_affinity",
    "category_diversity",
    "merge_classes",
    "overlap_ratio",
    "localization_uncertainty",
    "image_metrics",
    "fit_scale",
    "normalise",
    "aggregate",
    "priorities",
    "task_scores",
    "rank_pool",
    "score_single",
]

"""HUA ranking: retrieval gate, four metrics, aggregation and task scores.

Implements docs/method.md sections 1-3 (Nguyen et al., "Hierarchical Uncertainty
Aggregation and Emphasis Loss for Active Learning in Object Detection", IEEE
BigData 2023). What the paper states is marked **[paper]**; definitions this
project fixes where the paper is silent are marked **[ours]**.

The pipeline for a pool of N unlabeled images, one module per stage:

1. ``analysis``: an image's analysis set (one detection per object) and the
   score-weighted image aggregation A (``sum`` or ``mean``) every quantity uses.
2. ``gate`` [paper]: :func:`image_entropy` per image, then :func:`num_candidates`
   and :func:`select_candidates` keep the P most uncertain images.
3. ``metrics`` [paper; ours: their formulas]: for each candidate, a second
   (mirrored) forward pass and :func:`image_metrics` give SA, CD, OR and LC.
4. ``aggregate`` [paper + ours]: rank normalisation on a stored :class:`Scale`,
   l = sqrt(sum d_m^2), and one number per task; :func:`rank_pool` for a pool,
   :func:`score_single` for one new image on the stored scale.

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
    rank_position,
    score_single,
    task_scores,
)
from model.hua.analysis import analysis_set, image_aggregate
from model.hua.config import AGGREGATES, METRIC_NAMES, HUAConfig
from model.hua.gate import (
    EMPTY_IMAGE_ENTROPY,
    detection_entropy,
    entropy_score,
    image_entropy,
    num_candidates,
    select_candidates,
)
from model.hua.metrics import (
    EMPTY_METRICS,
    edge_uncertainty,
    image_metrics,
    js_divergence,
    overlaps,
    rarity,
    semantic_affinity,
)

__all__ = [
    "AGGREGATES",
    "METRIC_NAMES",
    "CANDIDATE_MARGIN",
    "EMPTY_IMAGE_ENTROPY",
    "EMPTY_METRICS",
    "HUAConfig",
    "Scale",
    "Ranking",
    "analysis_set",
    "image_aggregate",
    "detection_entropy",
    "image_entropy",
    "entropy_score",
    "num_candidates",
    "select_candidates",
    "js_divergence",
    "semantic_affinity",
    "rarity",
    "overlaps",
    "edge_uncertainty",
    "image_metrics",
    "rank_position",
    "fit_scale",
    "normalise",
    "aggregate",
    "priorities",
    "task_scores",
    "rank_pool",
    "score_single",
]

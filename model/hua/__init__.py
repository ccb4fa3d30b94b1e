"""HUA ranking (docs/method.md sections 1-3): retrieval gate, four metrics, aggregation, task scores.

Nguyen et al., IEEE BigData 2023. **[paper]** marks what the paper states, **[ours]** what this
project fixes where it is silent. One module per stage: ``analysis`` (analysis set, aggregation A),
``gate`` (H(x), the P most uncertain images), ``metrics`` (SA, CD, OR, LC from a mirrored pass),
``aggregate`` (rank normalisation on a stored :class:`Scale`, l, task scores). ``model.scoring``
runs the detector and these stages.
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

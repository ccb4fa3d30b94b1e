"""Scoring a pool of images with HUA: one forward pass for all, a flipped one for the candidates.

The first pass gives every image its detections (the pre-annotations) and its
gate entropy; only the top-P images by entropy are run again, mirrored, for
the Semantic Affinity metric (METHOD.md section 2). That is what makes HUA
cheaper than consistency-based scoring, which augments every image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from model.detections import Detections
from model.detector import Detector
from model.diversity import diversify
from model.hua import (
    METRIC_NAMES,
    HUAConfig,
    Ranking,
    Scale,
    image_entropy,
    image_metrics,
    num_candidates,
    rank_pool,
    score_single,
    select_candidates,
)

logger = logging.getLogger(__name__)

ImageSource = Callable[[Hashable], Tensor]
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class PoolScores:
    """HUA over a pool: per image its detections, entropy and task score.

    Attributes:
        keys (list[Hashable]): the images that could be scored, in input order.
        detections (list[Detections]): first-pass detections, aligned with ``keys``.
        entropy (Tensor[N]): gate entropy H(x) of each image.
        ranking (Ranking): order, priority, score and the Scale to store.
        failed (dict[Hashable, str]): images that could not be loaded, and why.
        candidate_metrics (Tensor[P, 4]): raw (SA, CD, OR, LC) of the candidates,
            in ascending image index (the rows of ``ranking.informativeness``).
    """

    keys: list[Hashable]
    detections: list[Detections]
    entropy: Tensor
    ranking: Ranking
    failed: dict[Hashable, str]
    candidate_metrics: Tensor

    def explain(self) -> list[dict[str, object]]:
        """Why each image ranks where it does, aligned with ``keys``: its gate entropy,
        whether it passed the gate, and for candidates the four raw metrics and l."""
        rows = zip(self.candidate_metrics.tolist(), self.ranking.informativeness.tolist())
        explained: list[dict[str, object]] = []
        for entropy, candidate in zip(self.entropy.tolist(), self.ranking.candidate_mask.tolist()):
            entry: dict[str, object] = {"entropy": entropy, "candidate": bool(candidate)}
            if candidate:
                metrics, informativeness = next(rows)
                entry |= {"metrics": dict(zip(METRIC_NAMES, metrics)), "informativeness": informativeness}
            explained.append(entry)
        return explained


def labeled_class_frequency(labels: Sequence[Tensor], num_classes: int) -> Tensor:
    """Class frequency of the labelled boxes (``Tensor[C]``; zeros when nothing is labelled)."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for image_labels in labels:
        if image_labels.numel():
            counts += torch.bincount(image_labels.reshape(-1) - 1, minlength=num_classes)[:num_classes].double()
    total = counts.sum()
    return counts / total if total > 0 else counts


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load(keys: Sequence[Hashable], source: ImageSource, failed: dict[Hashable, str]) -> list[tuple[Hashable, Tensor]]:
    """Images of ``keys``; a key whose image raises is recorded in ``failed`` and dropped."""
    loaded = []
    for key in keys:
        try:
            loaded.append((key, source(key)))
        except Exception as exc:  # any loader failure ranks that image last, never the pool
            failed[key] = f"{type(exc).__name__}: {exc}"
    return loaded


def predict_pool(
    detector: Detector, keys: Sequence[Hashable], source: ImageSource, batch_size: int,
    flip: bool = False, progress: Progress | None = None, features: bool = False,
) -> tuple[list[Hashable], list[Detections], dict[Hashable, str]]:
    """Detections of every loadable image, in batches (images are not kept in memory)."""
    done_keys: list[Hashable] = []
    detections: list[Detections] = []
    failed: dict[Hashable, str] = {}
    for batch in _batches(list(keys), batch_size):
        loaded = _load(batch, source, failed)
        detections.extend(detector.predict([image for _, image in loaded], flip=flip, features=features))
        done_keys.extend(key for key, _ in loaded)
        if progress:
            progress((len(done_keys) + len(failed)) / max(1, len(keys)), "flipped pass" if flip else "first pass")
    return done_keys, detections, failed


def score_pool(
    detector: Detector,
    keys: Sequence[Hashable],
    source: ImageSource,
    labeled_freq: Tensor,
    config: HUAConfig,
    batch_size: int = 8,
    budget: int | None = None,
    progress: Progress | None = None,
) -> PoolScores:
    """Rank a pool with HUA (sections 1-3 of METHOD.md).

    Args:
        source: loads one image as ``Tensor[3, H, W]`` in [0, 1]; may raise.
        labeled_freq (Tensor[C]): from ``labeled_class_frequency``.
        budget: a known labelling budget B makes P = retrieval_ratio * B.
        progress: (fraction, message); the first pass is the first 80%.
    """
    first = (lambda f, m: progress(0.8 * f, m)) if progress else None
    done, detections, failed = predict_pool(
        detector, keys, source, batch_size, progress=first, features=config.diversity
    )
    entropy = torch.stack([image_entropy(d.top_probs) for d in detections]).double() if detections else torch.zeros(0, dtype=torch.float64)
    mask = select_candidates(entropy, num_candidates(len(done), config, budget))
    candidates = [done[i] for i in torch.nonzero(mask).flatten().tolist()]
    second = (lambda f, m: progress(0.8 + 0.2 * f, m)) if progress else None
    flip_keys, flipped, flip_failed = predict_pool(detector, candidates, source, batch_size, flip=True, progress=second)
    if flip_failed:  # a candidate whose image failed on reload has no SA: it leaves the pool, listed as failed
        failed.update(flip_failed)
        keep = [i for i, k in enumerate(done) if k not in flip_failed]
        done, detections, entropy, mask = [done[i] for i in keep], [detections[i] for i in keep], entropy[keep], mask[keep]
        candidates = [k for k in candidates if k not in flip_failed]
    by_key = dict(zip(done, detections))
    flipped_by_key = dict(zip(flip_keys, flipped))
    rows = [image_metrics(by_key[k], flipped_by_key[k], labeled_freq, config) for k in candidates]
    metrics = torch.stack(rows) if rows else torch.zeros((0, 4), dtype=torch.float64)
    ranking = rank_pool(entropy, metrics, mask)
    if config.diversity and detections:
        ranking = _diversified(ranking, torch.stack([d.features for d in detections]), config.diversity_window)
    return PoolScores(done, detections, entropy, ranking, failed, metrics)


def _diversified(ranking: Ranking, features: Tensor, window: int) -> Ranking:
    """The ranking with its top ``window`` re-ordered by k-center greedy (``model.diversity``)."""
    order, score = diversify(ranking.order, ranking.score, features, window)
    return replace(ranking, order=order, score=score, priority=1.0 - score)


def score_new_images(
    detector: Detector, images: Sequence[Tensor], labeled_freq: Tensor, scale: Scale, config: HUAConfig
) -> list[tuple[Detections, float]]:
    """Detections and task scores of a few new images on a stored pool scale.

    The flipped pass runs only for the images the stored gate would admit.
    """
    detections = detector.predict(list(images))
    entropies = [float(image_entropy(d.top_probs)) for d in detections]
    chosen = [i for i, h in enumerate(entropies) if h >= scale.entropy_cutoff]
    flipped = dict(zip(chosen, detector.predict([images[i] for i in chosen], flip=True)))
    scores = []
    for i, det in enumerate(detections):
        metrics = image_metrics(det, flipped[i], labeled_freq, config) if i in flipped else None
        scores.append(score_single(entropies[i], metrics, scale))
    return list(zip(detections, scores))

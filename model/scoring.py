"""Scoring images with HUA: a whole pool, or a few new images on a stored pool's scale.

Both run one path: a first forward pass for every image (its detections, the
pre-annotations, and its gate entropy), then a second, mirrored one only for
the images the gate passes, for the Semantic Affinity metric (docs/method.md
section 2). That is what makes HUA cheaper than consistency-based scoring,
which augments every image. A pool's gate is its top P by entropy
(``score_pool``, which fits the Scale); a new image's is the stored Scale's
entropy cutoff (``score_new_images``). Images come from a ``source`` a batch at
a time, so a large pool is never held in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

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
from model.progress import Progress

ImageSource = Callable[[Hashable], Tensor]
Predict = Callable[[list[Tensor]], list[Detections]]

#: What a ranking's progress says to a user in each pass (shown on /jobs and /ui).
DETECTING = "finding objects in every image"
CHECKING = "double-checking the most uncertain images (mirrored)"


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


@dataclass(frozen=True)
class NewScores:
    """New images scored on a stored Scale: per image its detections and task score.

    Attributes:
        keys (list[Hashable]): the images that could be scored, in input order.
        detections (list[Detections]): first-pass detections, aligned with ``keys``.
        scores (list[float]): task scores (``model.hua.score_single``), aligned with ``keys``.
        failed (dict[Hashable, str]): images that could not be loaded, and why.
    """

    keys: list[Hashable]
    detections: list[Detections]
    scores: list[float]
    failed: dict[Hashable, str]


@dataclass
class FirstPass:
    """The images still scored (loaded for the first pass, not lost on the second) and their first-pass results.

    A sharded ranking (``backend/jobs/shards.py``) computes one per shard and
    joins them in pool order (``join``): the same keys, detections and
    entropies, in the same order, as one pass over the whole pool.
    """

    keys: list[Hashable]
    detections: list[Detections]
    entropy: Tensor
    failed: dict[Hashable, str]

    @classmethod
    def join(cls, parts: Sequence[FirstPass]) -> FirstPass:
        """The passes of consecutive slices of a pool, as one pass over the pool."""
        entropies = [p.entropy for p in parts if p.entropy.numel()]
        return cls(
            [key for p in parts for key in p.keys],
            [det for p in parts for det in p.detections],
            torch.cat(entropies) if entropies else torch.zeros(0, dtype=torch.float64),
            {key: why for p in parts for key, why in p.failed.items()},
        )

    def by_key(self) -> dict[Hashable, Detections]:
        """Each image's first-pass detections, by key (what the mirrored pass compares against)."""
        return dict(zip(self.keys, self.detections))

    def drop(self, failed: dict[Hashable, str]) -> None:
        """Remove the images whose second pass failed (they have no SA), listing them as failed."""
        if not failed:
            return
        self.failed.update(failed)
        keep = [i for i, key in enumerate(self.keys) if key not in failed]
        self.keys = [self.keys[i] for i in keep]
        self.detections = [self.detections[i] for i in keep]
        self.entropy = self.entropy[keep]


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


def _predict_batches(
    predict: Predict,
    keys: Sequence[Hashable],
    source: ImageSource,
    batch_size: int,
    progress: Progress | None,
    message: str,
) -> tuple[list[Hashable], list[Detections], dict[Hashable, str]]:
    """``predict`` over every loadable image of ``keys``, ``batch_size`` at a time."""
    done_keys: list[Hashable] = []
    detections: list[Detections] = []
    failed: dict[Hashable, str] = {}
    for batch in _batches(list(keys), batch_size):
        loaded = _load(batch, source, failed)
        detections.extend(predict([image for _, image in loaded]))
        done_keys.extend(key for key, _ in loaded)
        if progress:
            progress((len(done_keys) + len(failed)) / max(1, len(keys)), message)
    return done_keys, detections, failed


def predict_pool(
    detector: Detector,
    keys: Sequence[Hashable],
    source: ImageSource,
    *,
    batch_size: int,
    flip: bool = False,
    progress: Progress | None = None,
) -> tuple[list[Hashable], list[Detections], dict[Hashable, str]]:
    """Detections of every loadable image, in batches (images are not kept in memory)."""
    predict = partial(detector.predict, flip=flip)
    return _predict_batches(predict, keys, source, batch_size, progress, CHECKING if flip else DETECTING)


def first_pass(
    predict: Predict,
    keys: Sequence[Hashable],
    source: ImageSource,
    config: HUAConfig,
    batch_size: int,
    progress: Progress | None = None,
) -> FirstPass:
    """Detections and float64 gate entropies of every loadable image of ``keys`` (the map step of a ranking)."""
    done, detections, failed = _predict_batches(predict, keys, source, batch_size, progress, DETECTING)
    entropy = (
        torch.stack([image_entropy(d, config) for d in detections])
        if detections
        else torch.zeros(0, dtype=torch.float64)
    )
    return FirstPass(done, detections, entropy, failed)


def pool_candidates(first: FirstPass, config: HUAConfig, budget: int | None = None) -> list[Hashable]:
    """The gate over a whole pool's first pass: its P most uncertain images, in pool order."""
    mask = select_candidates(first.entropy, num_candidates(len(first.keys), config, budget))
    return [first.keys[i] for i in torch.nonzero(mask).flatten().tolist()]


def flipped_metrics(
    detector: Detector,
    originals: dict[Hashable, Detections],
    keys: Sequence[Hashable],
    source: ImageSource,
    labeled_freq: Tensor,
    config: HUAConfig,
    batch_size: int,
    progress: Progress | None = None,
) -> tuple[dict[Hashable, Tensor], dict[Hashable, str]]:
    """The four metrics of each of ``keys`` (images the gate passed), from its mirrored pass.

    Args:
        originals: each key's first-pass detections.

    Returns:
        The metrics (Tensor[4]) by key, and the images whose reload failed, with why.
    """
    flip_keys, flipped, failed = predict_pool(
        detector, keys, source, batch_size=batch_size, flip=True, progress=progress
    )
    metrics = {key: image_metrics(originals[key], det, labeled_freq, config) for key, det in zip(flip_keys, flipped)}
    return metrics, failed


def rank_first_pass(
    first: FirstPass,
    metrics_by_key: dict[Hashable, Tensor],
    flip_failed: dict[Hashable, str],
    config: HUAConfig,
) -> PoolScores:
    """The reduce step of a ranking: a pool's first pass and its candidates' metrics, ranked.

    Candidates whose mirrored pass failed leave the pool (``FirstPass.drop``).
    """
    first.drop(flip_failed)
    mask = torch.tensor([key in metrics_by_key for key in first.keys], dtype=torch.bool)
    rows = [metrics_by_key[key] for key in first.keys if key in metrics_by_key]
    metrics = torch.stack(rows) if rows else torch.zeros((0, 4), dtype=torch.float64)
    ranking = rank_pool(first.entropy, metrics, mask, points=config.scale_points)
    if config.diversity and first.detections:
        ranking = _diversified(ranking, torch.stack([d.features for d in first.detections]), config.diversity_window)
    return PoolScores(first.keys, first.detections, first.entropy, ranking, first.failed, metrics)


def _share(progress: Progress | None, start: float, width: float) -> Progress | None:
    """``progress`` for one stage that covers [start, start + width] of the whole."""
    return (lambda f, m: progress(start + width * f, m)) if progress else None


def first_pass_predict(detector: Detector, config: HUAConfig) -> Predict:
    """The first pass's forward: with pooled features when the diversity pass will need them."""
    return partial(detector.predict, features=True) if config.diversity else detector.predict


def score_pool(
    detector: Detector,
    keys: Sequence[Hashable],
    source: ImageSource,
    labeled_freq: Tensor,
    config: HUAConfig,
    *,
    batch_size: int = 8,
    budget: int | None = None,
    progress: Progress | None = None,
) -> PoolScores:
    """Rank a pool with HUA (docs/method.md sections 1-3) in this process.

    Args:
        source: loads one image as ``Tensor[3, H, W]`` in [0, 1]; may raise.
        labeled_freq (Tensor[C]): from ``labeled_class_frequency``.
        budget: a known labelling budget B makes P = retrieval_ratio * B.
        progress: (fraction, message); the first pass is the first 80%.
    """
    predict = first_pass_predict(detector, config)
    first = first_pass(predict, keys, source, config, batch_size, _share(progress, 0.0, 0.8))
    candidates = pool_candidates(first, config, budget)
    metrics, failed = flipped_metrics(
        detector, first.by_key(), candidates, source, labeled_freq, config, batch_size, _share(progress, 0.8, 0.2)
    )
    return rank_first_pass(first, metrics, failed, config)


def _diversified(ranking: Ranking, features: Tensor, window: int) -> Ranking:
    """The ranking with its top ``window`` re-ordered by k-center greedy (``model.diversity``)."""
    order, score = diversify(ranking.order, ranking.score, features, window)
    return replace(ranking, order=order, score=score, priority=1.0 - score)


def score_new_images(
    detector: Detector,
    keys: Sequence[Hashable],
    source: ImageSource,
    labeled_freq: Tensor,
    scale: Scale,
    config: HUAConfig,
    *,
    batch_size: int,
) -> NewScores:
    """Detections and task scores of new images on a stored pool scale.

    The mirrored pass runs only for the images the stored gate would admit
    (entropy at least ``scale.entropy_cutoff``), as for the pool's candidates.
    """
    first = first_pass(detector.predict, keys, source, config, batch_size)
    gated = [key for key, h in zip(first.keys, first.entropy.tolist()) if h >= scale.entropy_cutoff]
    metrics, failed = flipped_metrics(detector, first.by_key(), gated, source, labeled_freq, config, batch_size)
    first.drop(failed)
    scores = [score_single(h, metrics.get(key), scale) for key, h in zip(first.keys, first.entropy.tolist())]
    return NewScores(first.keys, first.detections, scores, first.failed)

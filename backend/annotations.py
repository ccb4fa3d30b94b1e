"""From Label Studio's annotated tasks to training samples.

Per task the newest annotation that was not cancelled counts. Its
rectanglelabels regions are converted from percent of the displayed image to
pixels; rotated boxes, unknown labels and images that cannot be fetched are
skipped with a warning naming the task, never fatal to the training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from backend.errors import ImageError
from backend.images import ImageLoader
from backend.labels import ProjectLabels
from model.samples import Sample

logger = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Samples plus what was left out and why (for the job's record)."""

    samples: list[Sample] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)  # aligned with samples: a task re-annotated is not new
    annotation_updated: dict[str, str] = field(default_factory=dict)  # id -> updated_at: edits keep the id
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def newest_annotation(task: dict) -> dict | None:
    """The task's newest annotation that was not cancelled (skipped), or None."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not kept:
        return None
    return max(kept, key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id") or 0))


_BOX_KEYS = ("x", "y", "width", "height")


def region_box(value: dict, width: int, height: int) -> list[float]:
    """A region's percent x/y/width/height as pixel x1, y1, x2, y2, clipped to the image."""
    x, y, w, h = (float(value[k]) for k in _BOX_KEYS)
    x1 = max(0.0, x * width / 100.0)
    y1 = max(0.0, y * height / 100.0)
    x2 = min(float(width), (x + w) * width / 100.0)
    y2 = min(float(height), (y + h) * height / 100.0)
    return [x1, y1, x2, y2]


def _is_box(value: dict) -> bool:
    """x, y, width and height all present and finite numbers (hand-made imports may lack some)."""
    try:
        return all(math.isfinite(float(value[k])) for k in _BOX_KEYS)
    except (KeyError, TypeError, ValueError):
        return False


def _is_rectangle(region: dict, names: ProjectLabels) -> bool:
    """A rectangle drawn with the project's RectangleLabels control."""
    return region.get("type") == "rectanglelabels" and region.get("from_name") == names.from_name


def annotation_regions(annotation: dict, names: ProjectLabels, task_id: object) -> list[tuple[dict, int]]:
    """(value, class index 1..C) of an annotation's usable rectangles.

    Rotated boxes are refused and unknown labels skipped, each with a warning.
    """
    regions = []
    for region in annotation.get("result") or []:
        if not _is_rectangle(region, names):
            continue
        value = region.get("value") or {}
        if not _is_box(value):
            logger.warning(
                "task %s: region %s has no numeric x, y, width and height, skipped", task_id, region.get("id")
            )
            continue
        if abs(float(value.get("rotation") or 0.0)) > 1e-6:
            logger.warning("task %s: rotated box refused (the detector predicts axis-aligned boxes)", task_id)
            continue
        label = (value.get("rectanglelabels") or [None])[0]
        if label not in names.labels:
            logger.warning("task %s: label %r is not in the label config, region skipped", task_id, label)
            continue
        regions.append((value, names.labels.index(label) + 1))
    return regions


def _has_rectangles(annotation: dict, names: ProjectLabels) -> bool:
    """Whether the annotator drew any rectangle with the project's control (an empty result is a negative image)."""
    return any(_is_rectangle(region, names) for region in annotation.get("result") or [])


def annotation_boxes(
    annotation: dict, names: ProjectLabels, width: int, height: int, task_id: object
) -> tuple[list[list[float]], list[int]]:
    """Pixel boxes and class indices (1..C) of one annotation's rectangles."""
    boxes, labels = [], []
    for value, cls in annotation_regions(annotation, names, task_id):
        box = region_box(value, width, height)
        if box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0:
            boxes.append(box)
            labels.append(cls)
    return boxes, labels


def training_set(tasks: Sequence[dict], names: ProjectLabels, loader: ImageLoader, *, workers: int) -> TrainingSet:
    """Samples for every task with a usable annotation; images fetched concurrently."""
    chosen = [(task, newest_annotation(task)) for task in tasks]
    chosen = [(task, ann) for task, ann in chosen if ann is not None]
    urls = [((task.get("data") or {}).get(names.value_key), task.get("id")) for task, _ in chosen]
    paths = loader.path_many(urls, workers=workers)
    result = TrainingSet()
    for (task, annotation), path in zip(chosen, paths):
        try:
            if isinstance(path, ImageError):
                raise path
            width, height = loader.size(path)
        except ImageError as exc:
            logger.warning("task %s: image skipped for training: %s", task.get("id"), exc)
            result.skip("image")
            continue
        boxes, labels = annotation_boxes(annotation, names, width, height, task.get("id"))
        if not boxes and _has_rectangles(annotation, names):
            # Every region was refused: training on it as an empty image would teach "nothing here".
            logger.warning("task %s: no usable box in its annotation, task skipped for training", task.get("id"))
            result.skip("no usable box")
            continue
        result.samples.append(
            Sample(
                image_path=path,
                boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.int64),
                key=str(annotation.get("id")),
            )
        )
        result.annotation_ids.append(int(annotation.get("id") or 0))
        result.task_ids.append(int(task.get("id") or 0))
        stamp = annotation.get("updated_at") or annotation.get("created_at") or ""
        result.annotation_updated[str(annotation.get("id"))] = str(stamp)
    return result

"""From Label Studio tasks to Label Studio predictions.

One ``/predict`` call may hold every task of a project ("Retrieve
predictions"): images are fetched concurrently, run through the detector in
batches, and every task gets exactly one item in the answer, in order. A task
whose image fails gets an empty result (and the error is logged with its id);
the other tasks are unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from backend.errors import ImageError
from backend.images import ImageLoader
from backend.labels import ProjectLabels
from backend.ranking_store import StoredRanking
from model.detections import Detections
from model.detector import image_tensor
from model.hua import HUAConfig, image_entropy
from model.ranking import score_new_images
from model.registry import ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskImage:
    """A task's id and its decoded image (the detector's input tensor), or the reason it has none."""

    task_id: int | None
    image: Tensor | None
    error: str | None = None


def box_result(box: Sequence[float], label: str, score: float, width: int, height: int, names: ProjectLabels) -> dict:
    """One rectanglelabels region in Label Studio's percent coordinates.

    Args:
        box (Sequence[float]): x1, y1, x2, y2 in pixels of the image as displayed.
        width (int), height (int): that image's size in pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "from_name": names.from_name,
        "to_name": names.to_name,
        "type": "rectanglelabels",
        "value": {
            "x": 100.0 * x1 / width,
            "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width,
            "height": 100.0 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
        "score": float(score),
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
    }


def task_prediction(
    detections: Detections, labels: Sequence[str], names: ProjectLabels, version: str, *, min_score: float
) -> dict:
    """A task's prediction: its boxes scoring at least ``min_score`` (SCORE_THRESHOLD) and a task-level confidence.

    The detector returns boxes down to HUA's analysis threshold (0.05) for the
    ranking; annotators are shown only the confident ones. The task score is
    ``1 - H(x)``, H the retrieval gate's normalised entropy (METHOD.md section
    1): lower means less certain, which is the order Label Studio's uncertainty
    sampling and prediction-score column use.
    """
    shown = detections.above(min_score)
    result = [
        box_result(box.tolist(), labels[int(cls) - 1], float(score), shown.width, shown.height, names)
        for box, cls, score in zip(shown.boxes, shown.labels, shown.scores)
    ]
    return {"result": result, "score": 1.0 - float(image_entropy(detections.top_probs)), "model_version": version}


def empty_prediction(version: str) -> dict:
    """The item of a task that could not be predicted: no boxes, no score."""
    return {"result": [], "score": None, "model_version": version}


def _batches(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def load_task_images(tasks: Sequence[dict], names: ProjectLabels, loader: ImageLoader, workers: int) -> list[TaskImage]:
    """Fetch, decode and convert the tasks' images concurrently; failures are kept per task."""
    items = [(task.get("data", {}).get(names.value_key), task.get("id")) for task in tasks]
    images = []
    for (_, task_id), item in zip(items, loader.load_many(items, workers, then=image_tensor)):
        if isinstance(item, ImageError):
            logger.warning("task %s: %s", task_id, item)
            images.append(TaskImage(task_id, None, str(item)))
        else:
            images.append(TaskImage(task_id, item))
    return images


def predict_images(
    served: ServedModel, tensors: list[Tensor], names: ProjectLabels, ranking: StoredRanking | None, hua: HUAConfig,
    *, min_score: float,
) -> list[dict]:
    """Predictions of decoded images (``image_tensor``); scored on the stored ranking's scale when there is one."""
    labels = served.detector.labels
    if ranking is None or ranking.scale is None:
        return [task_prediction(det, labels, names, served.name, min_score=min_score)
                for det in served.detector.predict(tensors)]
    freq = torch.tensor(ranking.labeled_freq, dtype=torch.float64)
    scored = score_new_images(served.detector, tensors, freq, ranking.scale, hua)
    return [{**task_prediction(det, labels, names, served.name, min_score=min_score), "score": score}
            for det, score in scored]


def predict_tasks(
    tasks: Sequence[dict],
    names: ProjectLabels,
    served: ServedModel,
    loader: ImageLoader,
    batch_size: int,
    workers: int,
    ranking: StoredRanking | None = None,
    hua: HUAConfig = HUAConfig(),
    *,
    min_score: float,
) -> list[dict]:
    """One prediction per task, in order (see the module docstring).

    Tasks the serving version's ranking already scored are answered from it
    without running the model; the others are fetched and predicted a batch
    at a time (so a huge request never holds all its images in memory).
    """
    results = [empty_prediction(served.name) for _ in tasks]
    todo = []
    for i, task in enumerate(tasks):
        cached = ranking.tasks.get(task.get("id")) if ranking is not None else None
        if cached is not None:
            results[i] = {**cached, "model_version": served.name}
        else:
            todo.append(i)
    for batch in _batches(todo, batch_size):
        images = load_task_images([tasks[i] for i in batch], names, loader, workers)
        ok = [(i, item.image) for i, item in zip(batch, images) if item.image is not None]
        try:
            predictions = predict_images(served, [image for _, image in ok], names, ranking, hua,
                                         min_score=min_score) if ok else []
        except RuntimeError:  # e.g. out of memory: these tasks stay empty, the others go on
            logger.exception("prediction failed for tasks %s", [tasks[i].get("id") for i, _ in ok])
            continue
        for (i, _), prediction in zip(ok, predictions):
            results[i] = prediction
    return results

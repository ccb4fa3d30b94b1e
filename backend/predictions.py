"""From Label Studio tasks to Label Studio predictions.

One ``/predict`` call may hold every task of a project ("Retrieve
predictions"): images are fetched concurrently, run through the detector in
batches, and every task gets exactly one item in the answer, in order. A task
whose image fails gets ``[]`` (the error is logged with its id and counted by
reason); the other tasks are unaffected. With a deadline (PREDICT_DEADLINE),
the tasks not reached in time get ``[]`` too and are listed as deferred, for
``backend.deferred`` to predict in the background.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from backend.errors import ImageError
from backend.images import ImageLoader
from backend.inference import InferenceQueue, QueuedDetector
from backend.labels import ProjectLabels
from backend.ranking_store import StoredRanking
from model.detections import Detections
from model.detector import Detector
from model.hua import HUAConfig, entropy_score, image_entropy
from model.images import image_tensor
from model.registry import ServedModel
from model.scoring import score_new_images

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFailure:
    """A task that got no prediction: its id, a reason from ``ImageError.REASONS`` or "inference", and why."""

    task_id: int | None
    reason: str
    message: str


@dataclass(frozen=True)
class TaskImage:
    """A task's id and its decoded image (the detector's input tensor), or why it has none."""

    task_id: int | None
    image: Tensor | None
    failure: TaskFailure | None = None


def region(box: Sequence[float], label: str, width: int, height: int, from_name: str, to_name: str) -> dict:
    """One rectanglelabels region in Label Studio's percent coordinates (a prediction's or an annotation's).

    Args:
        box (Sequence[float]): x1, y1, x2, y2 in pixels of the image as displayed.
        width (int), height (int): that image's size in pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    return {
        "from_name": from_name,
        "to_name": to_name,
        "type": "rectanglelabels",
        "value": {
            "x": 100.0 * x1 / width,
            "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width,
            "height": 100.0 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
    }


def box_result(box: Sequence[float], label: str, score: float, width: int, height: int, names: ProjectLabels) -> dict:
    """A predicted :func:`region` of the project's control, with its score."""
    return {**region(box, label, width, height, names.from_name, names.to_name), "score": float(score)}


def task_prediction(
    detections: Detections,
    labels: Sequence[str],
    names: ProjectLabels,
    version: str,
    *,
    display_threshold: float,
    score: float,
) -> dict:
    """A task's prediction: its boxes scoring at least ``display_threshold`` (SCORE_THRESHOLD) and its task score.

    The detector returns boxes down to HUA's analysis threshold (0.05) for the
    ranking; annotators are shown only the confident ones. ``score`` is HUA's
    (``model.hua``, docs/method.md section 3): lower means more worth labeling,
    the order of Label Studio's uncertainty sampling and prediction-score column.
    """
    shown = detections.above(display_threshold)
    result = [
        box_result(box.tolist(), labels[int(cls) - 1], float(score), shown.width, shown.height, names)
        for box, cls, score in zip(shown.boxes, shown.labels, shown.scores)
    ]
    return {"result": result, "score": score, "model_version": version}


@dataclass
class PredictedTasks:
    """What ``predict_tasks`` made of a request's tasks.

    Attributes:
        results (list[dict | list]): per task, in order, its prediction or ``[]``.
            Label Studio stores each element of a list item as one prediction, so
            ``[]`` stores nothing: a failed or deferred task stays without one
            (a stored empty prediction would tell the annotator "nothing here").
        deferred (list[int]): ids of the tasks the deadline left unpredicted.
        failures (list[TaskFailure]): the tasks that could not be predicted.
    """

    results: list[dict | list]
    deferred: list[int] = field(default_factory=list)
    failures: list[TaskFailure] = field(default_factory=list)


@dataclass(frozen=True)
class Deadline:
    """When an answer is due (on ``clock``, ``time.monotonic`` by default).

    A batch is started only while the previous one's duration still fits before
    ``at``: the answer comes at most about one batch late, never one request late.
    """

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def fits(self, seconds: float) -> bool:
        """True if ``seconds`` more of work would end before the deadline."""
        return self.clock() + seconds <= self.at


def load_task_images(
    tasks: Sequence[dict], names: ProjectLabels, loader: ImageLoader, *, workers: int
) -> list[TaskImage]:
    """Fetch, decode and convert the tasks' images concurrently; failures are kept per task."""
    items = [(task.get("data", {}).get(names.value_key), task.get("id")) for task in tasks]
    images = []
    for (_, task_id), item in zip(items, loader.load_many(items, workers=workers, then=image_tensor)):
        if isinstance(item, ImageError):
            logger.warning("task %s: %s", task_id, item)
            images.append(TaskImage(task_id, None, TaskFailure(task_id, item.reason, str(item))))
        else:
            images.append(TaskImage(task_id, item))
    return images


def predict_images(
    detector: Detector | QueuedDetector,
    version: str,
    tensors: list[Tensor],
    names: ProjectLabels,
    ranking: StoredRanking | None,
    hua: HUAConfig,
    *,
    display_threshold: float,
) -> list[dict]:
    """Predictions of decoded images (``image_tensor``); scored on the stored ranking's scale when there is one."""
    labels = detector.labels
    if ranking is None or ranking.scale is None:
        return [
            task_prediction(
                det,
                labels,
                names,
                version,
                display_threshold=display_threshold,
                score=entropy_score(image_entropy(det, hua)),
            )
            for det in detector.predict(tensors)
        ]
    freq = torch.tensor(ranking.labeled_freq, dtype=torch.float64)
    scored = score_new_images(
        detector, range(len(tensors)), tensors.__getitem__, freq, ranking.scale, hua, batch_size=max(1, len(tensors))
    )  # the caller's batch, one forward pass
    return [
        task_prediction(det, labels, names, version, display_threshold=display_threshold, score=score)
        for det, score in zip(scored.detections, scored.scores)
    ]


@dataclass(frozen=True)
class _BatchPredictor:
    """What every batch of one ``predict_tasks`` call shares."""

    names: ProjectLabels
    detector: Detector | QueuedDetector
    version: str
    loader: ImageLoader
    workers: int
    ranking: StoredRanking | None
    hua: HUAConfig
    display_threshold: float

    def __call__(self, tasks: Sequence[dict]) -> list[dict | TaskFailure]:
        """Each task's prediction or failure; a failing forward pass fails its batch only."""
        images = load_task_images(tasks, self.names, self.loader, workers=self.workers)
        out: list[dict | TaskFailure] = [item.failure for item in images]
        ok = [i for i, item in enumerate(images) if item.image is not None]
        try:
            predictions = (
                predict_images(
                    self.detector,
                    self.version,
                    [images[i].image for i in ok],
                    self.names,
                    self.ranking,
                    self.hua,
                    display_threshold=self.display_threshold,
                )
                if ok
                else []
            )
        except RuntimeError as exc:  # e.g. out of memory: these tasks stay empty, the others go on
            logger.exception("prediction failed for tasks %s", [images[i].task_id for i in ok])
            predictions = [TaskFailure(images[i].task_id, "inference", f"{type(exc).__name__}: {exc}") for i in ok]
        for i, prediction in zip(ok, predictions):
            out[i] = prediction
        return out


def _answer_from_ranking(
    tasks: Sequence[dict], ranking: StoredRanking | None, version: str, results: list[dict | list]
) -> list[int]:
    """Fill in the tasks the stored ranking scored; returns the indices of the others."""
    todo = []
    for i, task in enumerate(tasks):
        cached = ranking.tasks.get(task.get("id")) if ranking is not None else None
        if cached is not None:
            results[i] = {**cached, "model_version": version}
        else:
            todo.append(i)
    return todo


def predict_tasks(
    tasks: Sequence[dict],
    names: ProjectLabels,
    served: ServedModel,
    loader: ImageLoader,
    *,
    batch_size: int,
    workers: int,
    ranking: StoredRanking | None = None,
    hua: HUAConfig = HUAConfig(),
    display_threshold: float,
    queue: InferenceQueue | None = None,
    deadline: Deadline | None = None,
) -> PredictedTasks:
    """One item per task, in order (see the module docstring and ``PredictedTasks``).

    Tasks the serving version's ranking already scored are answered from it
    without running the model; the others are fetched and predicted a batch
    at a time (so a huge request never holds all its images in memory),
    through ``queue`` when given (shared with the process's other requests),
    until ``deadline``: the tasks not reached by then are listed as deferred.
    """
    out = PredictedTasks(results=[[] for _ in tasks])
    todo = _answer_from_ranking(tasks, ranking, served.name, out.results)
    detector = queue.bind(served.detector) if queue is not None else served.detector
    run = _BatchPredictor(names, detector, served.name, loader, workers, ranking, hua, display_threshold)
    clock, last_batch = deadline.clock if deadline is not None else time.monotonic, 0.0
    for start in range(0, len(todo), batch_size):
        if deadline is not None and not deadline.fits(last_batch):
            out.deferred = [tasks[i]["id"] for i in todo[start:] if tasks[i].get("id") is not None]
            break
        began, batch = clock(), todo[start : start + batch_size]
        for i, item in zip(batch, run([tasks[i] for i in batch])):
            if isinstance(item, TaskFailure):
                out.failures.append(item)
            else:
                out.results[i] = item
        last_batch = clock() - began
    return out


@dataclass(frozen=True)
class TaskPredictor:
    """``predict_tasks`` with its settings bound once: what /predict, the rank job and the predict job share.

    Args:
        images: fetches and decodes task images under the image policy.
        hua: the HUA settings new tasks are scored with.
        batch_size: images per forward pass (BATCH_SIZE).
        fetch_workers: images fetched at once (FETCH_WORKERS).
        display_threshold: SCORE_THRESHOLD, the lowest score a pre-annotation keeps.
    """

    images: ImageLoader
    hua: HUAConfig
    batch_size: int
    fetch_workers: int
    display_threshold: float

    def predict(
        self,
        tasks: Sequence[dict],
        names: ProjectLabels,
        served: ServedModel,
        ranking: StoredRanking | None = None,
        *,
        queue: InferenceQueue | None = None,
        deadline: Deadline | None = None,
    ) -> PredictedTasks:
        return predict_tasks(
            tasks,
            names,
            served,
            self.images,
            batch_size=self.batch_size,
            workers=self.fetch_workers,
            ranking=ranking,
            hua=self.hua,
            display_threshold=self.display_threshold,
            queue=queue,
            deadline=deadline,
        )

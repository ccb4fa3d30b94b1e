"""A training job: Label Studio's annotations in, a new model version out.

The data always come from Label Studio's API with the backend's own token,
never from a webhook payload. The new version is written atomically; the
serving model is only swapped (by the caller) once the version is complete, so
a failed or killed training never replaces the model that is serving.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from torchvision.models.detection import FasterRCNN

from backend.annotations import TrainingSet, training_set
from backend.evaluation import evaluate_serving
from backend.images import ImageLoader
from backend.labels import ProjectLabels, parse_label_config
from backend.lsclient import LabelStudioClient
from model.detector import build_model
from model.distributed import is_main_process
from model.evaluate import Prequential
from model.progress import Progress
from model.registry import ModelRegistry, load_version_model
from model.train import TrainConfig, TrainResult, train
from model.version_meta import VersionMeta
from model.versions import Version, VersionStore

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A training that cannot run (no usable annotations, no Label Studio)."""


class NothingNew(Exception):
    """The serving version was trained on exactly the annotations that exist now."""


def _same_data(meta: VersionMeta, ids: list[int], updated: dict[str, str], names: ProjectLabels) -> bool:
    """A version's meta says it was trained on these annotations, unedited, with these labels.

    An edited annotation (ANNOTATION_UPDATED) keeps its id: its update time tells.
    """
    return (
        meta.annotation_ids == sorted(ids) and meta.annotation_updated == updated and meta.labels == list(names.labels)
    )


def _data_meta(data: TrainingSet) -> dict:
    """What a version was trained on: the next training evaluates it on everything else."""
    return {
        "annotation_ids": sorted(data.annotation_ids),
        "annotation_updated": data.annotation_updated,
        "task_ids": sorted(data.task_ids),
        "skipped": data.skipped,
    }


@dataclass(frozen=True)
class TrainingJob:
    """The parts a training uses, and the training itself (``run``).

    Args:
        client: Label Studio, for the label config and the annotations.
        images: fetches and decodes the annotated images.
        store: where the new version is saved.
        registry: the serving version (the starting point) and the device.
        config: TRAIN_* settings, the loss among them.
        fetch_workers: images fetched at once (FETCH_WORKERS).
        reinit: TRAIN_REINIT, the paper's protocol: every training starts from the base weights.
        eval_min_tasks: EVAL_MIN_TASKS, for the serving version's prequential figures.
        display_threshold: SCORE_THRESHOLD, the pre-annotations' cut-off those figures are read at.
    """

    client: LabelStudioClient
    images: ImageLoader
    store: VersionStore
    registry: ModelRegistry
    config: TrainConfig
    fetch_workers: int
    reinit: bool
    eval_min_tasks: int
    display_threshold: float

    def run(self, project: str, progress: Progress | None = None) -> Version | None:
        """Fetch the project's annotations, fine-tune, and save a new version.

        Before fine-tuning, the serving version is evaluated on the tasks
        annotated since it was trained (``backend.evaluation``); the figures go
        into the new version's meta as ``evaluation``. Under torchrun every rank
        trains on its share; only rank 0 evaluates and saves (and returns the
        version), the other ranks return None.

        Raises:
            TrainingError: nothing usable to train on.
            NothingNew: the serving version already saw every annotation.
        """
        names = parse_label_config(self.client.project(project)["label_config"])
        data = training_set(self.client.labeled_tasks(project), names, self.images, workers=self.fetch_workers)
        if not data.samples:
            raise TrainingError(f"project {project} has no usable annotations (skipped: {data.skipped})")
        latest = self.store.latest(project)
        if latest is not None and _same_data(latest.meta, data.annotation_ids, data.annotation_updated, names):
            raise NothingNew(f"{latest.name} was trained on the same {len(data.annotation_ids)} annotations")
        logger.info("project %s: training on %d images (skipped %s)", project, len(data.samples), data.skipped)
        evaluation = self._evaluate(latest, names, data, progress) if is_main_process() else None
        model, parent, origin = self._starting_point(project, names)
        result = train(model, data.samples, self.config, self.registry.device, progress)
        if not is_main_process():
            return None
        meta = self._meta(names, data, origin, parent, evaluation, result)
        version = self.store.save(project, model.cpu().state_dict(), meta)
        logger.info("project %s: trained %s (parent %s), metrics %s", project, version.name, parent, result.metrics)
        return version

    def _meta(
        self,
        names: ProjectLabels,
        data: TrainingSet,
        origin: str,
        parent: str | None,
        evaluation: Prequential,
        result: TrainResult,
    ) -> VersionMeta:
        """The new version's meta: where it started, what it saw, how training went."""
        return VersionMeta(
            labels=list(names.labels),
            backbone=self.registry.config.backbone,
            weights=origin,
            parent=parent,
            **_data_meta(data),
            evaluation=evaluation,
            metrics=result.metrics,
            epoch_losses=result.epoch_losses,
            loss_summary=result.summary,
            held_out=result.held_out,
            train_config={**{k: v for k, v in asdict(self.config).items() if k != "loss"}, "reinit": self.reinit},
            loss=asdict(self.config.loss),
        )

    def _evaluate(
        self, latest: Version | None, names: ProjectLabels, data: TrainingSet, progress: Progress | None
    ) -> Prequential:
        return evaluate_serving(
            self.registry,
            latest,
            names,
            data,
            min_tasks=self.eval_min_tasks,
            display_threshold=self.display_threshold,
            progress=progress,
        )

    def _starting_point(self, project: str, names: ProjectLabels) -> tuple[FasterRCNN, str | None, str]:
        """(model, parent version, origin): the newest version for the project's labels, or the base weights.

        ``ModelRegistry.version_for`` finds it, or makes it when the labels are new
        (warm-started from the newest trained version, so a changed label config
        keeps what the project learned). Base weights when TRAIN_REINIT asks for
        the paper's protocol (re-initialise each time).
        """
        config = self.registry.config
        if not self.reinit:
            start = self.registry.version_for(project, names.labels, names.aliases)
            model = load_version_model(config, start, loss=self.config.loss)
            return model, start.name, start.meta.weights or "unknown"
        model, report = build_model(config, list(names.labels), names.aliases, loss=self.config.loss)
        return model, None, report.used

"""A training job: Label Studio's annotations in, a new model version out.

The data always come from Label Studio's API with the backend's own token,
never from a webhook payload. The new version is written atomically; the
serving model is only swapped (by the caller) once the version is complete, so
a failed or killed training never replaces the model that is serving.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from backend.annotations import TrainingSet, training_set
from backend.evaluation import evaluate_serving
from backend.labels import ProjectLabels, parse_label_config
from backend.service import Service
from model.detector import build_model
from model.registry import load_version_model
from model.train import Progress, is_main_process, train
from model.versions import Version

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A training that cannot run (no usable annotations, no Label Studio)."""


class NothingNew(Exception):
    """The serving version was trained on exactly the annotations that exist now."""


def _starting_point(service: Service, project: str, names: ProjectLabels) -> tuple[object, str | None, str]:
    """(model, parent version, origin): the newest version for the project's labels, or the base weights.

    ``ModelRegistry.version_for`` finds it, or makes it when the labels are new
    (warm-started from the newest trained version, so a changed label config
    keeps what the project learned). Base weights when TRAIN_REINIT asks for
    the paper's protocol (re-initialise each time).
    """
    config = service.detector_config
    if not service.settings.train_reinit:
        start = service.registry.version_for(project, names.labels, names.aliases)
        return load_version_model(config, start), start.name, start.meta.get("weights", "unknown")
    model, report = build_model(config, list(names.labels), names.aliases)
    return model, None, report.used


def _same_data(meta: dict, ids: list[int], updated: dict[str, str], names: ProjectLabels) -> bool:
    """A version's meta says it was trained on these annotations, unedited, with these labels.

    An edited annotation (ANNOTATION_UPDATED) keeps its id: its update time tells.
    """
    return (
        meta.get("annotation_ids") == sorted(ids)
        and meta.get("annotation_updated") == updated
        and meta.get("labels") == list(names.labels)
    )


def _data_meta(data: TrainingSet) -> dict:
    """What a version was trained on: the next training evaluates it on everything else."""
    return {
        "annotation_ids": sorted(data.annotation_ids),
        "annotation_updated": data.annotation_updated,
        "task_ids": sorted(data.task_ids),
        "skipped": data.skipped,
    }


def run_training(service: Service, project: str, progress: Progress | None = None) -> Version | None:
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
    client = service.ls_client
    names = parse_label_config(client.project(project)["label_config"])
    data = training_set(client.labeled_tasks(project), names, service.images, workers=service.settings.fetch_workers)
    if not data.samples:
        raise TrainingError(f"project {project} has no usable annotations (skipped: {data.skipped})")
    latest = service.store.latest(project)
    if latest is not None and _same_data(latest.meta, data.annotation_ids, data.annotation_updated, names):
        raise NothingNew(f"{latest.name} was trained on the same {len(data.annotation_ids)} annotations")
    logger.info("project %s: training on %d images (skipped %s)", project, len(data.samples), data.skipped)
    evaluation = evaluate_serving(service, latest, names, data, progress) if is_main_process() else None
    model, parent, origin = _starting_point(service, project, names)
    config = service.settings.train_config()
    result = train(model, data.samples, config, service.registry.device, progress)
    if not is_main_process():
        return None
    meta = {
        "labels": list(names.labels),
        "backbone": service.detector_config.backbone,
        "weights": origin,
        "parent": parent,
        **_data_meta(data),
        "evaluation": evaluation.to_json(),
        "metrics": result.metrics,
        "epoch_losses": result.epoch_losses,
        "loss_summary": result.summary,
        "held_out": result.held_out,
        "train_config": {k: v for k, v in asdict(config).items() if k != "loss"},
        "loss": asdict(config.loss),
    }
    version = service.store.save(project, model.cpu().state_dict(), meta)
    logger.info("project %s: trained %s (parent %s), metrics %s", project, version.name, parent, result.metrics)
    return version

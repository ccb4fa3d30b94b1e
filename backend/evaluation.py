"""Prequential evaluation at the start of a training (model/evaluate.py does the maths).

Before a training fine-tunes anything, the version serving the project is
scored on the annotated tasks it has never seen: those annotated since it was
trained. No label is held back for it, and the figures are honest, since the
version predicted those tasks before anyone labeled them. They are stored in
the new version's meta (``evaluation``) and shown by /projects/<id>/report,
/versions, /metrics and /ui.
"""

from __future__ import annotations

import logging

from backend.annotations import TrainingSet
from backend.labels import ProjectLabels
from model.evaluate import Prequential, low_threshold_outputs, prequential, sample_target
from model.progress import Progress
from model.registry import ModelRegistry, load_version_model
from model.versions import CheckpointError, Version, check_meta

logger = logging.getLogger(__name__)


def unseen_samples(version: Version, data: TrainingSet) -> list[int]:
    """Indices of ``data.samples`` whose task ``version`` was not trained on.

    A task counts as seen when its task id (or, for versions made before task
    ids were recorded, its annotation id) is in the version's meta: a task
    annotated again is not new to the version.
    """
    seen_tasks = set(version.meta.task_ids or [])
    seen_annotations = set(version.meta.annotation_ids or [])
    return [
        i
        for i, (task, annotation) in enumerate(zip(data.task_ids, data.annotation_ids))
        if task not in seen_tasks and annotation not in seen_annotations
    ]


def evaluate_serving(
    registry: ModelRegistry,
    version: Version | None,
    names: ProjectLabels,
    data: TrainingSet,
    *,
    min_tasks: int,
    display_threshold: float,
    progress: Progress | None = None,
) -> Prequential:
    """``version``'s figures on the tasks of ``data`` it has never seen, or why there are none.

    A failure (a version of other labels or another backbone, an image that
    no longer decodes) is reported in the result, never raised: the training
    that follows matters more than its report.
    """
    if version is None:
        return Prequential(None, "none", "no earlier version to evaluate: this is the project's first model")
    unseen = unseen_samples(version, data)
    context = {
        "tasks": len(unseen),
        "min_tasks": min_tasks,
        "trained_on_tasks": len(version.meta.annotation_ids or []),
        "task_ids": sorted(data.task_ids[i] for i in unseen),
        "display_threshold": display_threshold,
    }
    if len(unseen) < min_tasks:
        message = (
            f"{len(unseen)} task(s) annotated since {version.name} was trained; "
            f"figures need at least {min_tasks} (EVAL_MIN_TASKS)"
        )
        return Prequential(version.name, "too_few", message, **context)
    if progress:
        progress(0.0, f"measuring how well {version.name} did on the {len(unseen)} tasks annotated since its training")
    samples = [data.samples[i] for i in unseen]
    try:
        check_meta(version.meta, list(names.labels), registry.config.backbone)
        model = load_version_model(registry.config, version).to(registry.device)
        outputs = low_threshold_outputs(model, samples)
    except (CheckpointError, RuntimeError, OSError) as exc:
        logger.warning("project %s: %s not evaluated: %s", version.project, version.name, exc)
        return Prequential(version.name, "failed", f"{type(exc).__name__}: {exc}", **context)
    report = prequential(
        outputs, [sample_target(s) for s in samples], list(names.labels), model_version=version.name, **context
    )
    logger.info("project %s: %s on %d new tasks: %s", version.project, version.name, len(unseen), report.figures())
    return report

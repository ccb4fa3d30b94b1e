"""The HUA queue: rank a project's unlabeled tasks and write the order into Label Studio.

A ranking belongs to a model version. Its results (boxes and task score per
task) and its normalisation scale are kept in the version's folder
(``ranking.json``), so that

- /predict answers tasks the ranking already scored without running the model,
  and scores new tasks on the same scale;
- a rank job after TASKS_CREATED scores only the tasks the ranking lacks.

In Label Studio the ranking becomes predictions of that model version (boxes +
task score = 1 - priority), the project's model_version, and a Data Manager
tab "HUA queue" of unlabeled tasks sorted by prediction score ascending.
"""

from __future__ import annotations

import logging
from types import MappingProxyType

import torch

from backend.annotations import annotation_regions, newest_annotation
from backend.deferred import holds_version
from backend.labels import ProjectLabels, parse_label_config
from backend.ranking_store import StoredRanking
from backend.predictions import predict_tasks, task_prediction
from backend.service import Service
from model.detector import image_tensor
from model.ranking import labeled_class_frequency, score_pool
from model.registry import ServedModel

logger = logging.getLogger(__name__)

QUEUE_TITLE = "HUA queue"
QUEUE_VIEW = MappingProxyType({
    "ordering": ["tasks:predictions_score"],
    "filters": {
        "conjunction": "and",
        "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
    },
})


def labeled_frequency(tasks: list[dict], names: ProjectLabels) -> torch.Tensor:
    """Class frequency of the labelled boxes (CD's p_L), from the newest annotation per task."""
    labels = []
    for task in tasks:
        annotation = newest_annotation(task)
        if annotation is not None:
            labels.append(torch.tensor([cls for _, cls in annotation_regions(annotation, names, task.get("id"))], dtype=torch.int64))
    return labeled_class_frequency(labels, len(names.labels))


def _unlabeled(tasks: list[dict]) -> list[dict]:
    return [t for t in tasks if not t.get("is_labeled") and not t.get("total_annotations")]


def _fetch(service: Service, tasks: list[dict], names: ProjectLabels) -> tuple[dict[int, str], dict[int, str]]:
    """Image paths by task id (downloaded concurrently into the cache) and failures."""
    items = [((t.get("data") or {}).get(names.value_key), t["id"]) for t in tasks]
    paths, failed = {}, {}
    for (_, task_id), path in zip(items, service.images.path_many(items, workers=service.settings.fetch_workers)):
        if isinstance(path, Exception):
            failed[task_id] = str(path)
        else:
            paths[task_id] = path
    return paths, failed


def _rank_all(service: Service, served: ServedModel, tasks: list[dict], names: ProjectLabels,
              freq: torch.Tensor, progress) -> tuple[StoredRanking, dict[int, str]]:
    paths, failed = _fetch(service, tasks, names)
    source = lambda task_id: image_tensor(service.images.decode(paths[task_id]))  # noqa: E731
    pool = score_pool(served.detector, list(paths), source, freq, service.settings.hua_config(),
                      service.settings.batch_size, progress=progress)
    failed.update({int(k): v for k, v in pool.failed.items()})
    ranking = StoredRanking(scale=pool.ranking.scale, labeled_freq=freq.tolist())
    for key, det, score, why in zip(pool.keys, pool.detections, pool.ranking.score.tolist(), pool.explain()):
        prediction = task_prediction(det, served.detector.labels, names, served.name,
                                     min_score=service.settings.score_threshold)
        ranking.tasks[int(key)] = {**prediction, "score": score}
        ranking.details[int(key)] = why
    return ranking, failed


def _rank_new(service: Service, served: ServedModel, tasks: list[dict], names: ProjectLabels,
              ranking: StoredRanking) -> tuple[dict[int, dict], dict[int, str]]:
    """Score tasks on the stored scale (as /predict does); returns the new entries and failures."""
    settings = service.settings
    outcome = predict_tasks(tasks, names, served, service.images, batch_size=settings.batch_size,
                            workers=settings.fetch_workers, ranking=ranking, hua=settings.hua_config(),
                            min_score=settings.score_threshold)
    added = {t["id"]: r for t, r in zip(tasks, outcome.results) if r}
    failed = {f.task_id: f"{f.reason}: {f.message}" for f in outcome.failures}
    return added, failed


def _push(service: Service, project: str, entries: dict[int, dict], version: str, replace: bool) -> int:
    client = service.ls_client
    if replace and entries:  # LS also clears the project's model_version when it deletes
        client.delete_version_predictions(project, version)
    body = [{"task": task_id, **entry} for task_id, entry in entries.items()]
    created = client.import_predictions(project, body) if body else 0
    if created:  # LS refuses (400) a model_version it holds no prediction of
        client.set_model_version(project, version)
    client.save_view(project, QUEUE_TITLE, QUEUE_VIEW)
    return created


def run_ranking(service: Service, project: str, progress=None, full: bool = False) -> dict:
    """Bring the project's HUA queue up to date with the serving model.

    A full ranking when the serving version has none yet, or one that scored
    no task (or ``full``);
    otherwise only the unlabeled tasks the stored ranking lacks are scored,
    on its stored scale, and pushed.
    """
    client = service.ls_client
    names = parse_label_config(client.project(project)["label_config"])
    served = service.registry.get(project, names.labels, names.aliases)
    all_tasks = client.tasks(project)
    freq = labeled_frequency([t for t in all_tasks if t.get("annotations")], names)
    pool = _unlabeled(all_tasks)
    stored = service.rankings.get(served.version)
    if full or stored.scale is None or not stored.tasks:  # an empty pool's scale admits nothing later
        stored, failed = _rank_all(service, served, pool, names, freq, progress)
        created = _push(service, project, stored.tasks, served.name, replace=True)
    else:
        missing = [t for t in pool if t["id"] not in stored.tasks]
        added, failed = _rank_new(service, served, missing, names, stored)
        stored = StoredRanking(stored.scale, stored.labeled_freq, {**stored.tasks, **added}, stored.details)
        pushed = {t["id"] for t in missing if not holds_version(t, served.name)}  # a push cut short: no duplicates
        created = _push(service, project, {k: v for k, v in added.items() if k in pushed}, served.name, replace=False)
    stored.write(served.version)
    for task_id, reason in failed.items():
        logger.warning("project %s task %s: not ranked: %s", project, task_id, reason)
    return {"model_version": served.name, "ranked": len(stored.tasks), "pushed": created, "failed": failed}

"""The tasks /predict could not reach before PREDICT_DEADLINE, predicted by a background job.

Label Studio waits 100 s for /predict and stores nothing at all from a later
answer. So /predict answers by the deadline with what it has: every task the
stored ranking covers and every task predicted in time; the others get ``[]``
(Label Studio stores nothing for them) and their ids go to a "predict" job,
run like trainings and rankings (a child process or RQ, progress in /jobs).

The job predicts them with the serving model, on the stored ranking's scale
when there is one (so they join the HUA queue), and pushes them into Label
Studio in bulk a few batches at a time, so they appear while it runs. Every
task ends with exactly one prediction of that version: a task that already
holds one (answered by a later retrieve, or pushed by an earlier job that was
killed after pushing) is skipped, never predicted twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from backend.labels import ProjectLabels, parse_label_config
from backend.predictions import predict_tasks
from backend.ranking_store import StoredRanking
from backend.service import Service
from model.registry import ServedModel

logger = logging.getLogger(__name__)

KIND = "predict"
#: Tasks predicted between two bulk pushes: they show up in Label Studio as the job goes.
PUSH_EVERY = 64

Progress = Callable[[float, str], None]


class DeferredTasks:
    """Task ids handed from /predict to the predict job: ``MODEL_DIR/<project>/.jobs/predict.tasks/*.json``.

    One new file per hand-over (written whole, then renamed), so concurrent
    requests need no lock and the job never reads half a list. The job deletes
    the files it read once their tasks are done: ids handed over meanwhile are
    in newer files, left for the next job, and a job that dies leaves its files
    for the next one.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _folder(self, project: str) -> Path:
        return self.root / project / ".jobs" / f"{KIND}.tasks"

    def add(self, project: str, task_ids: list[int]) -> None:
        folder = self._folder(project)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{uuid.uuid4().hex}"
        tmp = folder / f".{name}.tmp"
        tmp.write_text(json.dumps(sorted(set(task_ids))))
        os.replace(tmp, folder / f"{name}.json")

    def pending(self, project: str) -> tuple[list[Path], set[int]]:
        """The files handed over so far and the task ids they hold."""
        files = sorted(self._folder(project).glob("*.json"))
        ids: set[int] = set()
        for path in files:
            ids.update(int(i) for i in json.loads(path.read_text()))
        return files, ids

    def drop(self, files: list[Path]) -> None:
        for path in files:
            path.unlink(missing_ok=True)


def defer_predictions(service: Service, project: str, task_ids: list[int]) -> str:
    """Hand ``task_ids`` to the project's predict job and schedule it; returns the scheduler's outcome.

    A failure to schedule (Redis down, a full disk) is logged, not raised: the
    answer for the tasks that were predicted must still reach Label Studio.
    """
    try:
        DeferredTasks(service.settings.model_dir).add(project, task_ids)
        outcome = service.scheduler.request(project, KIND)
    except Exception:  # noqa: BLE001 (see the docstring)
        logger.exception("project %s: could not schedule the prediction of %d deferred tasks", project, len(task_ids))
        return "failed"
    logger.info("project %s: %d tasks not reached within PREDICT_DEADLINE=%gs are predicted in the background "
                "(job %s); follow it in GET /jobs (project %s, kind %s)",
                project, len(task_ids), service.settings.predict_deadline, outcome, project, KIND)
    return outcome


def holds_version(task: dict, version: str) -> bool:
    """The task already has a prediction of ``version`` in Label Studio."""
    return any(p.get("model_version") == version for p in task.get("predictions") or [] if isinstance(p, dict))


def run_deferred_predictions(service: Service, project: str, progress: Progress | None = None) -> dict:
    """Predict and push the tasks handed over so far (the "predict" job's work)."""
    handed = DeferredTasks(service.settings.model_dir)
    files, wanted = handed.pending(project)
    if not wanted:
        handed.drop(files)
        return {"requested": 0}
    client = service.ls_client
    names = parse_label_config(client.project(project)["label_config"])
    served = service.registry.get(project, names.labels, names.aliases)
    tasks = [t for t in client.tasks(project) if t.get("id") in wanted]
    todo = [t for t in tasks if not holds_version(t, served.name)]
    summary = _predict_and_push(service, project, served, names, todo, progress)
    handed.drop(files)
    for task_id, reason in summary["failed"].items():
        logger.warning("project %s task %s: no prediction: %s", project, task_id, reason)
    return {"model_version": served.name, "requested": len(wanted), "gone": len(wanted) - len(tasks),
            "already_predicted": len(tasks) - len(todo), **summary}


def _predict_and_push(service: Service, project: str, served: ServedModel, names: ProjectLabels,
                      tasks: list[dict], progress: Progress | None) -> dict:
    """Predict ``tasks`` a chunk at a time and push each chunk; join the ranking at the end."""
    settings, client = service.settings, service.ls_client
    ranking = service.rankings.get(served.version)
    added: dict[int, dict] = {}
    failed: dict[int, str] = {}
    for start in range(0, len(tasks), PUSH_EVERY):
        chunk = tasks[start : start + PUSH_EVERY]
        outcome = predict_tasks(chunk, names, served, service.images, batch_size=settings.batch_size,
                                workers=settings.fetch_workers, ranking=ranking, hua=settings.hua_config(),
                                min_score=settings.score_threshold)
        entries = {task["id"]: result for task, result in zip(chunk, outcome.results) if result}
        if entries:
            client.import_predictions(project, [{"task": task_id, **entry} for task_id, entry in entries.items()])
        added.update(entries)
        failed.update({f.task_id: f"{f.reason}: {f.message}" for f in outcome.failures})
        if progress is not None:
            progress((start + len(chunk)) / len(tasks), f"{start + len(chunk)} of {len(tasks)} tasks predicted")
    if added and ranking.scale is not None:
        _join_ranking(service, project, served, added)
    return {"predicted": len(added), "failed": failed}


def _join_ranking(service: Service, project: str, served: ServedModel, added: dict[int, dict]) -> None:
    """Add the pushed tasks to the version's stored ranking, so a later rank job neither scores nor pushes them again.

    Under the rank job's lock: a rank job reads ranking.json when it starts and
    rewrites it when it ends, which would otherwise drop these entries.
    """
    with service.board.running(project, "rank"):
        stored = StoredRanking.read(served.version)
        stored.tasks.update(added)
        stored.write(served.version)

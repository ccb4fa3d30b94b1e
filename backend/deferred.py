"""The tasks /predict could not reach before PREDICT_DEADLINE, predicted by a background job.

Label Studio waits 100 s for /predict and stores nothing at all from a later
answer. So /predict answers by the deadline with what it has: every task the
stored ranking covers and every task predicted in time; the others get ``[]``
(Label Studio stores nothing for them) and their ids go to a "predict" job,
run like trainings and rankings (a child process or RQ, progress in /jobs).

The job (``backend.jobs.predict``) predicts them with the serving model, on
the stored ranking's scale when there is one (so they join the HUA queue),
and pushes them into Label Studio in bulk a few batches at a time, so they
appear while it runs. Every task ends with exactly one prediction of that
version: a task that already holds one (answered by a later retrieve, or
pushed by an earlier job that was killed after pushing) is skipped, never
predicted twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path

from backend.jobs.scheduler import Scheduler

logger = logging.getLogger(__name__)

KIND = "predict"


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


def defer_predictions(
    handed: DeferredTasks, scheduler: Scheduler, project: str, task_ids: list[int], deadline_s: float
) -> str:
    """Hand ``task_ids`` to the project's predict job and schedule it; returns the scheduler's outcome.

    A failure to schedule (Redis down, a full disk) is logged, not raised: the
    answer for the tasks that were predicted must still reach Label Studio.
    """
    try:
        handed.add(project, task_ids)
        outcome = scheduler.request(project, KIND)
    except Exception:  # noqa: BLE001 (see the docstring)
        logger.exception("project %s: could not schedule the prediction of %d deferred tasks", project, len(task_ids))
        return "failed"
    logger.info(
        "project %s: %d tasks not reached within PREDICT_DEADLINE=%gs are predicted in the background "
        "(job %s); follow it in GET /jobs (project %s, kind %s)",
        project,
        len(task_ids),
        deadline_s,
        outcome,
        project,
        KIND,
    )
    return outcome


def holds_version(task: dict, version: str) -> bool:
    """The task already has a prediction of ``version`` in Label Studio."""
    return any(p.get("model_version") == version for p in task.get("predictions") or [] if isinstance(p, dict))

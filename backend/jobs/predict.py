"""The predict job: the tasks /predict handed over at PREDICT_DEADLINE (``backend.deferred``), predicted and pushed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from backend.deferred import DeferredTasks, holds_version
from backend.jobs.board import JobBoard
from backend.labels import ProjectLabels, parse_label_config
from backend.lsclient import LabelStudioClient
from backend.predictions import TaskPredictor
from backend.ranking_store import RankingCache, StoredRanking
from model.progress import Progress
from model.registry import ModelRegistry, ServedModel

logger = logging.getLogger(__name__)

#: Tasks predicted between two bulk pushes: they show up in Label Studio as the job goes.
PUSH_EVERY = 64


@dataclass(frozen=True)
class PredictJob:
    """The parts the predict job uses, and the job itself (``run``).

    Args:
        handed: the task ids /predict handed over.
        client: Label Studio: the tasks in, their predictions out.
        registry: the serving model.
        rankings: the serving version's stored ranking, whose scale new tasks are scored on.
        predictor: fetching, batching and the HUA settings, shared with /predict.
        board: the rank job's lock, held while the stored ranking is extended.
    """

    handed: DeferredTasks
    client: LabelStudioClient
    registry: ModelRegistry
    rankings: RankingCache
    predictor: TaskPredictor
    board: JobBoard

    def run(self, project: str, progress: Progress | None = None) -> dict:
        """Predict and push the tasks handed over so far."""
        files, wanted = self.handed.pending(project)
        if not wanted:
            self.handed.drop(files)
            return {"requested": 0}
        names = parse_label_config(self.client.project(project)["label_config"])
        served = self.registry.get(project, names.labels, names.aliases)
        tasks = [t for t in self.client.tasks(project) if t.get("id") in wanted]
        todo = [t for t in tasks if not holds_version(t, served.name)]
        summary = self._predict_and_push(project, served, names, todo, progress)
        self.handed.drop(files)
        for task_id, reason in summary["failed"].items():
            logger.warning("project %s task %s: no prediction: %s", project, task_id, reason)
        return {
            "model_version": served.name,
            "requested": len(wanted),
            "gone": len(wanted) - len(tasks),
            "already_predicted": len(tasks) - len(todo),
            **summary,
        }

    def _predict_and_push(
        self, project: str, served: ServedModel, names: ProjectLabels, tasks: list[dict], progress: Progress | None
    ) -> dict:
        """Predict ``tasks`` a chunk at a time and push each chunk; join the ranking at the end."""
        ranking = self.rankings.get(served.version)
        added: dict[int, dict] = {}
        failed: dict[int, str] = {}
        for start in range(0, len(tasks), PUSH_EVERY):
            chunk = tasks[start : start + PUSH_EVERY]
            outcome = self.predictor.predict(chunk, names, served, ranking)
            entries = {task["id"]: result for task, result in zip(chunk, outcome.results) if result}
            if entries:
                body = [{"task": task_id, **entry} for task_id, entry in entries.items()]
                self.client.import_predictions(project, body)
            added.update(entries)
            failed.update({f.task_id: f"{f.reason}: {f.message}" for f in outcome.failures})
            if progress is not None:
                progress((start + len(chunk)) / len(tasks), f"{start + len(chunk)} of {len(tasks)} tasks pre-annotated")
        if added and ranking.scale is not None:
            self._join_ranking(project, served, added)
        return {"predicted": len(added), "failed": failed}

    def _join_ranking(self, project: str, served: ServedModel, added: dict[int, dict]) -> None:
        """Add the pushed tasks to the version's stored ranking: a later rank job neither scores nor pushes them again.

        Under the rank job's lock: a rank job reads ranking.json when it starts and
        rewrites it when it ends, which would otherwise drop these entries.
        """
        with self.board.running(project, "rank"):
            stored = StoredRanking.read(served.version)
            stored.tasks.update(added)
            stored.write(served.version)

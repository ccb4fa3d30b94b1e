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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import torch

from backend.annotations import annotation_regions, newest_annotation
from backend.deferred import holds_version
from backend.images import ImageLoader
from backend.jobs.board import HandedOn
from backend.jobs.shards import (
    RunFolder,
    ShardPlan,
    claim_run,
    ensure_current,
    fetched_source,
    new_run_id,
    pool_scores,
    shard_size,
)
from backend.labels import ProjectLabels, parse_label_config
from backend.lsclient import LabelStudioClient
from backend.predictions import TaskPredictor, task_prediction
from backend.ranking_store import RankingCache, StoredRanking
from model.detections import Detections
from model.hua import HUAConfig
from model.images import image_tensor
from model.progress import Progress
from model.registry import ModelRegistry, ServedModel
from model.scoring import ImageSource, PoolScores, labeled_class_frequency, score_new_images, score_pool

logger = logging.getLogger(__name__)

QUEUE_TITLE = "HUA queue"
QUEUE_VIEW = MappingProxyType(
    {
        "ordering": ["tasks:predictions_score"],
        "filters": {  # nested values stay plain: the body goes through json.dumps
            "conjunction": "and",
            "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
        },
    }
)


def labeled_frequency(tasks: list[dict], names: ProjectLabels) -> torch.Tensor:
    """Class frequency of the labelled boxes (CD's p_L), from the newest annotation per task."""
    labels = []
    for task in tasks:
        annotation = newest_annotation(task)
        if annotation is not None:
            regions = annotation_regions(annotation, names, task.get("id"))
            labels.append(torch.tensor([cls for _, cls in regions], dtype=torch.int64))
    return labeled_class_frequency(labels, len(names.labels))


def _unlabeled(tasks: list[dict]) -> list[dict]:
    return [t for t in tasks if not t.get("is_labeled") and not t.get("total_annotations")]


class Shards(Protocol):
    """Where a full ranking's shards run (``backend/jobs/runners.py``: child processes or RQ)."""

    def rank(
        self, folder: RunFolder, plan: ShardPlan, hua: HUAConfig, progress: Progress | None
    ) -> PoolScores | HandedOn: ...

    def cancel(self, project: str, run: str) -> None: ...


@dataclass(frozen=True)
class RankingJob:
    """The parts a ranking uses, and the ranking itself (``run``).

    Args:
        client: Label Studio: tasks in, predictions and the queue's tab out.
        registry: the serving model.
        rankings: the stored rankings of the versions (``ranking.json``).
        predictor: fetching, batching and the HUA settings, shared with /predict.
        root: MODEL_DIR, where a project's current run is named (``backend/jobs/shards.py``).
        shards: where a full ranking's shards run; None: all in this process.
        shard_size: RANK_SHARD_SIZE.
    """

    client: LabelStudioClient
    registry: ModelRegistry
    rankings: RankingCache
    predictor: TaskPredictor
    root: Path | None = None
    shards: Shards | None = None
    shard_size: int = 1000

    def claim(self, project: str) -> str:
        """A new run, made the project's current one; a running ranking of the project is superseded."""
        run = new_run_id()
        previous = claim_run(self._root, project, run)
        if previous is not None and self.shards is not None:
            self.shards.cancel(project, previous)
        return run

    @property
    def _root(self) -> Path:
        return self.root if self.root is not None else self.registry.store.root

    def run(self, project: str, progress: Progress | None = None, full: bool = False, run: str | None = None) -> dict:
        """Bring the project's HUA queue up to date with the serving model.

        A full ranking when the serving version has none yet, or one that scored
        no task (or ``full``); otherwise only the unlabeled tasks the stored
        ranking lacks are scored, on its stored scale, and pushed. ``run`` is
        this ranking's (``claim``), claimed here when None.
        """
        run = run or self.claim(project)
        names = parse_label_config(self.client.project(project)["label_config"])
        served = self.registry.get(project, names.labels, names.aliases)
        all_tasks = self.client.tasks(project)
        freq = labeled_frequency([t for t in all_tasks if t.get("annotations")], names)
        pool = _unlabeled(all_tasks)
        stored = self.rankings.get(served.version)
        if full or stored.scale is None or not stored.tasks:  # an empty pool's scale admits nothing later
            plan = ShardPlan(run, project, served.name, _items(pool, names), freq.tolist(), self._shard_size)
            scores = self._rank_all(served, plan, progress)
            if isinstance(scores, HandedOn):
                return scores
            return self.finish(project, served, names, plan, scores)
        missing = [t for t in pool if t["id"] not in stored.tasks]
        added, failed = self._rank_new(served, missing, names, stored)
        stored = StoredRanking(stored.scale, stored.labeled_freq, {**stored.tasks, **added}, stored.details)
        pushed = {t["id"] for t in missing if not holds_version(t, served.name)}  # a push cut short: no duplicates
        created = self._push(project, {k: v for k, v in added.items() if k in pushed}, served.name, replace=False)
        return self._stored(project, served, stored, created, failed)

    def finish(
        self, project: str, served: ServedModel, names: ProjectLabels, plan: ShardPlan, scores: PoolScores
    ) -> dict:
        """A full ranking's last step: its predictions pushed (replacing the version's), ``ranking.json`` written."""
        ensure_current(self._root, project, plan.run)  # a superseded run never pushes its stale order
        freq = torch.tensor(plan.labeled_freq, dtype=torch.float64)
        stored = self._stored_ranking(served, names, freq, scores)
        created = self._push(project, stored.tasks, served.name, replace=True)
        return self._stored(project, served, stored, created, {int(k): v for k, v in scores.failed.items()})

    def finish_run(self, folder: RunFolder) -> dict:
        """The last reduce of a ranking whose shards ran on RQ: its scores from their results, then ``finish``."""
        plan = folder.plan()
        names = parse_label_config(self.client.project(plan.project)["label_config"])
        version = self.registry.store.get(plan.project, plan.version)
        scores = pool_scores(folder, plan, self.predictor.hua)
        return self.finish(plan.project, self.registry.load(version), names, plan, scores)

    def _stored(
        self, project: str, served: ServedModel, stored: StoredRanking, created: int, failed: dict[int, str]
    ) -> dict:
        stored.write(served.version)
        for task_id, reason in failed.items():
            logger.warning("project %s task %s: not ranked: %s", project, task_id, reason)
        return {"model_version": served.name, "ranked": len(stored.tasks), "pushed": created, "failed": failed}

    @property
    def _shard_size(self) -> int:
        return shard_size(self.shard_size, self.predictor.batch_size)

    def _fetch(self, tasks: list[dict], names: ProjectLabels) -> tuple[dict[int, str], dict[int, str]]:
        """Image paths by task id (downloaded concurrently into the cache) and failures."""
        items = [((t.get("data") or {}).get(names.value_key), t["id"]) for t in tasks]
        paths, failed = {}, {}
        fetched = self.predictor.images.path_many(items, workers=self.predictor.fetch_workers)
        for (_, task_id), path in zip(items, fetched):
            if isinstance(path, Exception):
                failed[task_id] = str(path)
            else:
                paths[task_id] = path
        return paths, failed

    def _rank_all(self, served: ServedModel, plan: ShardPlan, progress: Progress | None) -> PoolScores | HandedOn:
        """The pool's scores: in this process when it is one shard (or no shards are set up), else in shards."""
        hua = self.predictor.hua
        if self.shards is not None and plan.first_shards > 1:
            folder = RunFolder(served.version, plan.run)
            folder.write_plan(plan)
            return self.shards.rank(folder, plan, hua, progress)
        predictor = self.predictor
        check = self._checked(plan, progress)
        return score_pool(
            served.detector,
            [key for key, _ in plan.items],
            fetched_source(predictor.images, plan.items, predictor.fetch_workers),
            torch.tensor(plan.labeled_freq, dtype=torch.float64),
            hua,
            batch_size=predictor.batch_size,
            progress=check,
        )

    def _checked(self, plan: ShardPlan, progress: Progress | None) -> Progress:
        """``progress``, which also stops the ranking (``Superseded``) once a newer one has started."""

        def report(fraction: float, message: str) -> None:
            ensure_current(self._root, plan.project, plan.run)
            if progress:
                progress(fraction, message)

        return report

    def _stored_ranking(
        self, served: ServedModel, names: ProjectLabels, freq: torch.Tensor, pool: PoolScores
    ) -> StoredRanking:
        scored = _predictions(
            served, names, pool.keys, pool.detections, pool.ranking.score.tolist(), self.predictor.display_threshold
        )
        details = {int(key): why for key, why in zip(pool.keys, pool.explain())}
        return StoredRanking(pool.ranking.scale, freq.tolist(), scored, details)

    def _rank_new(
        self, served: ServedModel, tasks: list[dict], names: ProjectLabels, ranking: StoredRanking
    ) -> tuple[dict[int, dict], dict[int, str]]:
        """Score tasks on the stored scale (as /predict does); returns the new entries and failures."""
        paths, failed = self._fetch(tasks, names)
        predictor = self.predictor
        freq = torch.tensor(ranking.labeled_freq, dtype=torch.float64)
        new = score_new_images(
            served.detector,
            list(paths),
            _image_source(predictor.images, paths),
            freq,
            ranking.scale,
            predictor.hua,
            batch_size=predictor.batch_size,
        )
        failed.update({int(k): v for k, v in new.failed.items()})
        return _predictions(served, names, new.keys, new.detections, new.scores, predictor.display_threshold), failed

    def _push(self, project: str, entries: dict[int, dict], version: str, replace: bool) -> int:
        if replace and entries:  # LS also clears the project's model_version when it deletes
            self.client.delete_version_predictions(project, version)
        body = [{"task": task_id, **entry} for task_id, entry in entries.items()]
        created = self.client.import_predictions(project, body) if body else 0
        if created:  # LS refuses (400) a model_version it holds no prediction of
            self.client.set_model_version(project, version)
        self.client.save_view(project, QUEUE_TITLE, QUEUE_VIEW)
        return created


def _items(tasks: list[dict], names: ProjectLabels) -> list[list]:
    """``[task id, image url]`` of each task, in order: a ranking's plan."""
    return [[t["id"], (t.get("data") or {}).get(names.value_key)] for t in tasks]


def _image_source(images: ImageLoader, paths: dict[int, str]) -> ImageSource:
    """The detector's input for a fetched task image, decoded when ``model.scoring`` asks (a batch at a time)."""
    return lambda task_id: image_tensor(images.decode(paths[task_id]))


def _predictions(
    served: ServedModel,
    names: ProjectLabels,
    keys: list,
    detections: list[Detections],
    scores: list[float],
    display_threshold: float,
) -> dict[int, dict]:
    """Per scored task, its Label Studio prediction carrying the HUA task score."""
    labels = served.detector.labels
    return {
        int(key): task_prediction(det, labels, names, served.name, display_threshold=display_threshold, score=score)
        for key, det, score in zip(keys, detections, scores)
    }

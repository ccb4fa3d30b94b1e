"""A project's model folder as a few trainings leave it, for the /ui and report tests:
four versions (two with figures, one measured on too few tasks, the newest not
measured yet), a ranking with the reasons of each task's place, and job records."""

from __future__ import annotations

from pathlib import Path

from backend.jobs.board import JobBoard, JobRecord
from backend.ranking_store import StoredRanking
from model.evaluate import Prequential
from model.hua import METRIC_NAMES
from model.version_meta import VersionMeta
from model.versions import VersionStore

PROJECT = "3"
LABELS = ["car", "person"]
# evaluated version -> (AP50, AP, accepted, recall, tasks it was measured on)
FIGURES = {"v0001": (0.20, 0.08, 0.30, 0.25, 6), "v0002": (0.45, 0.21, 0.62, 0.55, 12)}
QUEUE = {  # task id -> (task score, entropy, candidate)
    101: (0.21, 0.91, True),
    102: (0.34, 0.88, True),
    103: (0.62, 0.40, False),
    104: (0.80, 0.12, False),
}


def _evaluation(version: str, trained_on: int) -> Prequential:
    map_50, map_, accepted, recall, tasks = FIGURES[version]
    return Prequential(
        version,
        "ok",
        tasks=tasks,
        min_tasks=5,
        trained_on_tasks=trained_on,
        task_ids=list(range(tasks)),
        map=map_,
        map_50=map_50,
        per_class={"car": {"ap": map_, "ap50": map_50}},
        acceptance={"predicted": 10, "annotated": 12, "matched": 6, "accepted": accepted, "recall": recall},
    )


def _meta(parent: str | None, tasks: int, evaluation: Prequential | None) -> VersionMeta:
    return VersionMeta(
        labels=LABELS,
        backbone="mobilenet_v3_320_fpn",
        weights="none",
        parent=parent,
        annotation_ids=list(range(1, tasks + 1)),
        task_ids=list(range(1, tasks + 1)),
        evaluation=evaluation,
    )


def populate(model_dir: Path | str, project: str = PROJECT) -> None:
    """Write the versions, ranking and job records described in the module docstring."""
    store = VersionStore(model_dir)
    store.save(project, {}, _meta(None, 0, None))
    store.save(project, {}, _meta("v0001", 6, _evaluation("v0001", 0)))
    store.save(project, {}, _meta("v0002", 18, _evaluation("v0002", 6)))
    too_few = Prequential(
        "v0003",
        "too_few",
        "2 task(s) annotated since v0003 was trained; figures need at least 5 (EVAL_MIN_TASKS)",
        tasks=2,
        min_tasks=5,
        trained_on_tasks=18,
    )
    newest = store.save(project, {}, _meta("v0003", 20, too_few))
    ranking = StoredRanking(
        tasks={t: {"result": [], "score": s, "model_version": newest.name} for t, (s, _, _) in QUEUE.items()}
    )
    for task_id, (_, entropy, candidate) in QUEUE.items():
        why = {"metrics": dict(zip(METRIC_NAMES, (0.1, 0.2, 0.3, 0.4))), "informativeness": 1.1} if candidate else {}
        ranking.details[task_id] = {"entropy": entropy, "candidate": candidate, **why}
    ranking.write(newest)
    board = JobBoard(model_dir)
    board.write(
        JobRecord(
            project, "train", status="running", progress=0.25, message="step 5/20", started="2026-12-01T10:00:00+00:00"
        )
    )
    board.write(JobRecord(project, "rank", status="done", progress=1.0, finished="2026-12-01T09:58:00+00:00"))

"""A project's report: its versions with their prequential figures, its jobs and the head of its queue.

Read from MODEL_DIR only (versions' meta, ranking.json, the job board), so it
answers whether or not Label Studio is up. Served as JSON by
/projects/<id>/report, in /versions' detail and /metrics, and drawn by /ui.
"""

from __future__ import annotations

from backend.ranking_store import RankingCache
from backend.service import Service
from backend.weights import describe_version
from model.evaluate import Prequential
from model.versions import Version, VersionStore

QUEUE_HEAD = 15

NOT_MEASURED = "not measured yet: its figures come when the next training starts, on the tasks annotated after it"


def evaluations(versions: list[Version]) -> dict[str, tuple[str, Prequential]]:
    """Evaluated version name -> (the version whose training measured it, the figures)."""
    found: dict[str, tuple[str, Prequential]] = {}
    for version in versions:
        evaluation = version.meta.evaluation
        if evaluation and evaluation.model_version:
            found[evaluation.model_version] = (version.name, evaluation)
    return found


def version_rows(versions: list[Version]) -> list[dict]:
    """Each version, oldest first, with the figures measured on it (none until the next training)."""
    measured = evaluations(versions)
    rows = []
    for version in versions:
        by, evaluation = measured.get(version.name, (None, None))
        rows.append(
            {
                "model_version": version.name,
                "created": version.meta.created,
                "parent": version.meta.parent,
                "weights": version.meta.weights,
                "trained_on_tasks": len(version.meta.annotation_ids or []),
                "held_out": version.meta.metrics or {},
                "evaluated_by": by,
                "evaluation": evaluation.to_json() if evaluation else None,
                "figures": evaluation.figures() if evaluation else {},
                "status": evaluation.status if evaluation else "not_measured",
                "message": evaluation.message if evaluation else NOT_MEASURED,
            }
        )
    return rows


def latest_evaluation(versions: list[Version]) -> Prequential | None:
    """The figures the newest training measured (on the version it replaced), if any."""
    for version in reversed(versions):
        evaluation = version.meta.evaluation
        if evaluation and evaluation.model_version:
            return evaluation
    return None


def queue_head(versions: list[Version], rankings: RankingCache, link: str, size: int = QUEUE_HEAD) -> dict:
    """The first ``size`` tasks of the newest ranking, lowest task score (highest priority) first.

    Each task carries its task score (what Label Studio shows, 1 - priority),
    the priority, and why: the gate entropy, and for candidates the four
    metrics and l. ``link`` is a format string with ``{task_id}``.
    """
    for version in reversed(versions):
        ranking = rankings.get(version)
        if ranking.tasks:
            order = sorted(ranking.tasks, key=lambda t: (ranking.tasks[t]["score"], t))
            tasks = [_queue_row(t, ranking.tasks[t]["score"], ranking.details.get(t, {}), link) for t in order[:size]]
            return {"model_version": version.name, "ranked": len(order), "tasks": tasks}
    return {"model_version": None, "ranked": 0, "tasks": []}


def _queue_row(task_id: int, score: float, why: dict, link: str) -> dict:
    return {
        "task_id": task_id,
        "score": score,
        "priority": 1.0 - score,
        "entropy": why.get("entropy"),
        "candidate": why.get("candidate"),
        "metrics": why.get("metrics"),
        "informativeness": why.get("informativeness"),
        "link": link.format(task_id=task_id) if link else None,
    }


def project_report(service: Service, project: str, queue_size: int = QUEUE_HEAD) -> dict:
    """Everything /ui shows of one project, as JSON."""
    versions = service.store.versions(project)
    base = service.settings.label_studio_url.rstrip("/")
    link = f"{base}/projects/{project}/data?task={{task_id}}" if base else ""
    latest = latest_evaluation(versions)
    return {
        "project": project,
        "serving": versions[-1].name if versions else None,
        "weights": describe_version(versions[-1].name, versions[-1].meta, service.registry.weights_reports.get(project))
        if versions
        else None,
        "min_tasks": service.settings.eval_min_tasks,
        "versions": version_rows(versions),
        "latest_evaluation": latest.to_json() if latest else None,
        "queue": queue_head(versions, service.rankings, link, queue_size),
        "jobs": service.board.all().get(project, {}),
    }


def known_projects(store: VersionStore, jobs: dict[str, dict]) -> list[str]:
    """Projects with a version or a job record, in numeric order."""
    return sorted(set(store.projects()) | set(jobs), key=lambda p: (len(p), p))


def refresh_quality_gauges(service: Service) -> None:
    """Set /metrics' prequential gauges from the newest evaluation of each project on disk
    (a training's job process wrote it; this process only reads)."""
    for project in service.store.projects():
        latest = latest_evaluation(service.store.versions(project))
        if latest is not None and latest.model_version:
            service.metrics.set_quality(project, latest.model_version, latest.figures(), latest.tasks)

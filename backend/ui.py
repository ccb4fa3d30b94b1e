"""A page for people: /ui, with its plot, and the JSON report it is drawn from.

Per project: the versions with their prequential figures, a plot of AP50 and
pre-annotation acceptance against annotated tasks, the jobs with progress bars
that follow /jobs, and the head of the HUA queue with the reasons for each
task's place. Everything comes from MODEL_DIR; Label Studio is asked only for
each project's title and counts, briefly, so the page renders when it is down.
The app's basic auth covers these routes like every other.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import requests
from flask import Blueprint, Response, jsonify, render_template

from backend.lsclient import LabelStudioClient, LabelStudioError
from backend.plot import quality_png
from backend.report import known_projects, project_report, version_rows
from backend.routes import project_id
from backend.service import Service, app_service
from backend.weights import summary
from model.hua import METRIC_NAMES

logger = logging.getLogger(__name__)

bp = Blueprint("ui", __name__, template_folder="templates")

# Seconds the page waits for Label Studio per project: a page, not a job.
LABEL_STUDIO_TIMEOUT_S = 2.0
# The page's one time format, in UTC (its script writes the same).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


@bp.app_template_filter("pct")
def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.1f} %"


@bp.app_template_filter("num")
def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


@bp.app_template_filter("utc")
def _utc(value: str | None) -> str:
    """An ISO time (the job board's, in UTC) as "2026-12-03 17:07:51 UTC", the one format of the page."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(TIME_FORMAT)


@bp.get("/projects/<project>/report")
def report(project: str) -> Response:
    """One project's versions with their figures, jobs and queue head, as JSON."""
    return jsonify(project_report(app_service(), project_id({"project": project})))


@bp.get("/ui/projects/<project>/quality.png")
def plot(project: str) -> Response:
    """The learning curve of /ui (PNG, drawn on each request: versions change under it)."""
    service = app_service()
    rows = version_rows(service.store.versions(project_id({"project": project})))
    response = Response(quality_png(rows, service.settings.eval_min_tasks), mimetype="image/png")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/ui")
def page() -> str:
    """Every project this backend knows (a version or a job), newest version first in each table."""
    service = app_service()
    names = known_projects(service.store, service.board.all())
    statuses = _label_studio_statuses(service, names)
    projects = [{"project": p, "report": project_report(service, p), "label_studio": statuses[p]} for p in names]
    started = {p["project"]: p["report"]["weights"] for p in projects if p["report"]["weights"]}
    weights = summary(started, service.settings.weights, service.registry.config.backbone)
    return render_template(
        "ui.html",
        projects=projects,
        metric_names=METRIC_NAMES,
        weights=weights,
        min_tasks=service.settings.eval_min_tasks,
        display_threshold=service.settings.display_threshold,
    )


def _label_studio_statuses(service: Service, projects: list[str]) -> dict[str, dict]:
    """Per project its title and task counts from Label Studio, or why there are none.

    After one request that got no answer at all, the other projects are not
    asked: the page would otherwise wait the timeout once per project.
    """
    settings = service.settings
    client = LabelStudioClient(service.auth, timeout=LABEL_STUDIO_TIMEOUT_S) if settings.label_studio_url else None
    reason = "LABEL_STUDIO_URL is not set"
    statuses = {}
    for project in projects:
        if client is None:
            statuses[project] = {"reachable": False, "error": reason}
            continue
        try:
            found = client.project(project)
        except (LabelStudioError, requests.RequestException) as exc:
            logger.info("/ui: Label Studio, project %s: %s", project, exc)
            statuses[project] = {"reachable": False, "error": f"no answer ({exc})"}
            if "HTTP" not in str(exc):  # not even an error page: it is down or unreachable
                client, reason = None, f"unreachable at {settings.label_studio_url}"
            continue
        statuses[project] = {
            "reachable": True,
            "title": found.get("title", ""),
            "tasks": found.get("task_number", 0),
            "annotated": found.get("num_tasks_with_annotations", 0),
            "url": f"{settings.label_studio_url.rstrip('/')}/projects/{project}/data",
        }
    return statuses

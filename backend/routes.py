"""The HTTP contract Label Studio expects of an ML backend (docs/label-studio.md).

Routes and payloads keep label-studio-ml 2.x's names. Every handler validates
its body first and answers 400 naming the field at fault; domain errors are
``backend.errors.APIError`` subclasses turned into JSON by ``backend.app``.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

from flask import Blueprint, Response, jsonify, request

from backend.auth import check_basic_auth
from backend.deferred import defer_predictions
from backend.errors import BadRequest, Unauthorized
from backend.health import problems, project_disk_use
from backend.jobs.scheduler import ANNOTATION_EVENTS, RANK_NEW, TRAIN_NOW
from backend.labels import ProjectLabels, parse_label_config
from backend.metrics import ServiceMetrics
from backend.predictions import Deadline, PredictedTasks
from backend.report import refresh_quality_gauges, version_rows
from backend.service import app_service
from backend.settings import Settings
from backend.weights import serving_weights
from model.versions import project_id as canonical_project_id

logger = logging.getLogger(__name__)

bp = Blueprint("backend", __name__)

MODEL_CLASS = "HUAFasterRCNN"
NO_VERSION = "v0000"


WEBHOOK_ACTIONS = TRAIN_NOW | ANNOTATION_EVENTS | RANK_NEW


def check_webhook_secret(settings: Settings) -> None:
    """With WEBHOOK_SECRET set, /webhook needs it (header) or the basic-auth pair."""
    if not settings.webhook_secret:
        return
    given = request.headers.get("X-Webhook-Secret", "")
    if hmac.compare_digest(given.encode(), settings.webhook_secret.encode()):
        return
    if settings.basic_auth_user and check_basic_auth(request, settings.basic_auth_user, settings.basic_auth_pass):
        return
    raise Unauthorized()


def json_body() -> dict:
    """The request's JSON object, or a 400 that says what is wrong with it.

    Python's parser recurses once per nesting level: a body nested deeper
    than the interpreter's recursion limit is refused, not a 500.
    """
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def project_id(body: dict) -> str:
    """Label Studio's ``project`` is ``"<id>.<created_at>"`` or an int; the id names the folder.

    The id must pass ``model.versions.project_id``, the rule the store and the
    job board apply too: anything else is a 400 here, never a folder or a 500.
    """
    raw = body.get("project")
    if isinstance(raw, dict):  # webhooks carry the serialised project
        raw = raw.get("id")
    if raw is None or raw == "":
        raise BadRequest("field 'project' is required")
    if not isinstance(raw, (str, int)) or isinstance(raw, bool):
        raise BadRequest("field 'project' must be a string or an integer")
    try:
        return canonical_project_id(str(raw).split(".")[0])
    except ValueError as exc:
        raise BadRequest(f"field 'project': {exc}") from None


def _labels(body: dict, field: str) -> ProjectLabels:
    config = body.get(field)
    if not isinstance(config, str):
        raise BadRequest(f"field '{field}' must be the project's label config (an XML string)")
    return parse_label_config(config)


def _tasks(body: dict) -> list[dict]:
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BadRequest("field 'tasks' must be a list")
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BadRequest(f"field 'tasks[{i}]' must be an object with a 'data' object")
    return tasks


@bp.get("/")
@bp.get("/health")
def health() -> Response:
    """Liveness plus what a user needs to see: the backbone (BACKBONE=auto's choice), which weights the serving
    models started from and what that means (``backend.weights``), device, versions, disk use per project, and
    "degraded" with the problems of ``backend.health``."""
    service = app_service()
    registry = service.registry
    root = Path(service.settings.model_dir)
    found = problems(root, service.board, service.settings.redis_url)
    body = {
        "status": "degraded" if found else "UP",
        "model_class": MODEL_CLASS,
        "backbone": registry.config.backbone,
        "weights": serving_weights(registry, service.settings.weights),
        "disk": {"projects": project_disk_use(root)},
    }
    if found:
        body["problems"] = found
    serving = registry.serving()
    if serving:  # the device is named once a model runs there: asking earlier would touch CUDA
        body["device"] = str(registry.device)
        body["serving"] = serving
    return jsonify(body)


@bp.post("/setup")
def setup() -> Response:
    """Fast: checks the label config and names the newest version; loads nothing."""
    body = json_body()
    pid = project_id(body)
    if body.get("schema") is not None:
        _labels(body, "schema")
    latest = app_service().store.latest(pid)
    return jsonify({"model_version": latest.name if latest else NO_VERSION})


@bp.post("/predict")
def predict() -> Response:
    """One item per task, in the order of ``tasks``: a prediction, or ``[]`` (see ``PredictedTasks``).

    Answered within PREDICT_DEADLINE; the tasks not reached by then are
    predicted by a background job (``backend.deferred``).
    """
    deadline = Deadline.after(app_service().settings.predict_deadline)
    body = json_body()
    tasks = _tasks(body)
    names = _labels(body, "label_config")
    pid = project_id(body)
    service = app_service()
    served = service.registry.get(pid, names.labels, names.aliases)
    service.metrics.set_version(pid, served.name)
    outcome = service.predictor.predict(
        tasks, names, served, service.rankings.get(served.version), queue=service.inference, deadline=deadline
    )
    if outcome.deferred:
        defer_predictions(service.deferred, service.scheduler, pid, outcome.deferred, service.settings.predict_deadline)
    _count(service.metrics, outcome)
    return jsonify({"results": outcome.results, "model_version": served.name})


def _count(metrics: ServiceMetrics, outcome: PredictedTasks) -> None:
    """Tasks answered, failed (by reason) and deferred, for /metrics."""
    ok, failed = sum(1 for r in outcome.results if r), len(outcome.failures)
    metrics.predictions.labels(outcome="ok").inc(ok)
    metrics.predictions.labels(outcome="failed").inc(failed)
    metrics.predictions.labels(outcome="deferred").inc(len(outcome.results) - ok - failed)
    for failure in outcome.failures:
        metrics.task_failures.labels(reason=failure.reason).inc()


@bp.post("/webhook")
def webhook() -> Response:
    """Schedule work for Label Studio's events and answer at once (LS waits 1 s).

    Unauthenticated calls are accepted as a trigger only: nothing but the
    project id and the action is read, the data come from Label Studio's API.
    With WEBHOOK_SECRET set, the X-Webhook-Secret header (or basic auth) is required.
    """
    service = app_service()
    check_webhook_secret(service.settings)
    body = json_body()
    action = body.get("action")
    if not isinstance(action, str):
        raise BadRequest("field 'action' must be a string")
    if action not in WEBHOOK_ACTIONS:
        return jsonify({"status": "ignored", "action": action}), 200
    outcome = service.scheduler.on_event(project_id(body), action)
    return jsonify({"status": outcome, "action": action}), 202 if outcome in ("scheduled", "coalesced") else 200


@bp.post("/versions")
def versions() -> Response:
    """The project's model versions on disk, oldest first; ``detail`` adds each one's prequential figures."""
    pid = project_id(json_body())
    found = app_service().store.versions(pid)
    return jsonify({"versions": [v.name for v in found], "detail": version_rows(found)})


@bp.get("/versions")
def all_versions() -> Response:
    """Label Studio's GET /versions names no project: every version name known, or one project's."""
    store = app_service().store
    pid = request.args.get("project")
    projects = [project_id({"project": pid})] if pid else store.projects()
    names = sorted({v.name for p in projects for v in store.versions(p)})
    if pid:  # one project: its versions' figures too, as POST /versions gives them
        return jsonify({"versions": names, "detail": version_rows(store.versions(projects[0]))})
    return jsonify({"versions": names})


@bp.post("/rank")
def rank() -> Response:
    """Schedule a ranking of the project's unlabeled tasks (the HUA queue)."""
    outcome = app_service().scheduler.request(project_id(json_body()), "rank")
    return jsonify({"status": outcome}), 202


@bp.get("/jobs")
def jobs() -> Response:
    """Per project, the running or last job of each kind: status, progress, error."""
    return jsonify({"jobs": app_service().board.all()})


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text; the prequential gauges are read from MODEL_DIR at each scrape (jobs write them)."""
    service = app_service()
    refresh_quality_gauges(service)
    return Response(service.metrics.render(), mimetype="text/plain; version=0.0.4")

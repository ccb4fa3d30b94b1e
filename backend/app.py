"""The application factory: ``gunicorn 'backend.app:create_app()'``."""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.admission import HEAVY_ENDPOINTS
from backend.auth import check_basic_auth
from backend.errors import APIError, Busy, Unauthorized
from backend.routes import bp
from backend.service import Service, app_service, attach_service, build_service
from backend.settings import Settings
from backend.ui import bp as ui_bp

logger = logging.getLogger(__name__)

# Label Studio's automatic webhook carries no credentials: /webhook is a
# trigger only (it reads nothing but the project id and the action).
_OPEN_ENDPOINTS = frozenset({"backend.webhook"})


def create_app(settings: Settings | None = None, service: Service | None = None) -> Flask:
    """The Flask app on ``service``, or on the parts ``settings`` build (default: the environment, read once)."""
    if service is None:
        service = build_service(settings or Settings.from_env())
    settings = service.settings
    _configure_logging(settings.log_level)
    app = Flask(__name__)
    attach_service(app, service)
    _recover_jobs(service)
    app.register_blueprint(bp)
    app.register_blueprint(ui_bp)
    app.before_request(_start_timer)
    app.before_request(_authenticate)
    app.before_request(_admit)
    app.teardown_request(_leave)
    app.after_request(_observe)
    app.register_error_handler(APIError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    logger.info("backend ready: %r", settings)
    return app


def _recover_jobs(service: Service) -> None:
    """Clear what a crash left (pending flags of dead processes), so events schedule jobs again at once."""
    try:
        service.board.recover()
    except OSError as exc:  # an unwritable MODEL_DIR is reported by gunicorn's on_starting and /health
        logger.warning("could not check MODEL_DIR for jobs left by dead processes: %s", exc)


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root.setLevel(level.upper())


def _authenticate() -> None:
    settings = app_service().settings
    if request.endpoint in _OPEN_ENDPOINTS:
        return
    if not check_basic_auth(request, settings.basic_auth_user, settings.basic_auth_pass):
        raise Unauthorized()


def _admit() -> None:
    """A heavy request runs only while threads remain for the light routes (``backend.admission``)."""
    if request.endpoint not in HEAVY_ENDPOINTS:
        return
    admission = app_service().admission
    if not admission.enter():
        raise Busy(f"{admission.limit} predictions are in progress in this worker; try again in a second")
    g.admitted = True


def _leave(error: BaseException | None) -> None:
    if g.pop("admitted", False):
        app_service().admission.leave()


def _start_timer() -> None:
    g.started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.get("started")
    if started is not None:
        route = request.url_rule.rule if request.url_rule else "unknown"
        app_service().metrics.observe_request(route, response.status_code, time.perf_counter() - started)
    return response


def _api_error(error: APIError) -> tuple[Response, int]:
    response = jsonify(error.to_json())
    if isinstance(error, Unauthorized):  # RFC 7235: a browser asks for the pair (/ui) only when challenged
        response.headers["WWW-Authenticate"] = 'Basic realm="HUA backend", charset="UTF-8"'
    if isinstance(error, Busy):
        response.headers["Retry-After"] = "1"
    return response, error.status_code


def _http_error(error: HTTPException) -> tuple[Response, int]:
    return jsonify({"error": error.description, "status": error.code}), error.code or 500


def _unexpected_error(error: Exception) -> tuple[Response, int]:
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return jsonify({"error": "internal server error", "status": 500}), 500

"""Tests of backend/lsclient.py against a local stand-in for Label Studio's API: retries on what a
restart looks like (connection refused, 5xx), none on a client error, and an unknown project."""

from __future__ import annotations

import json
import socket

import pytest

from backend.lsclient import DEFAULT_VIEW_TITLE, LabelStudioAuth, LabelStudioClient, LabelStudioError, ProjectNotFound
from helpers import LocalServer, Route

PROJECT = {"id": 3, "label_config": "<View/>"}


def _client(url: str, retries: int = 3) -> LabelStudioClient:
    return LabelStudioClient(LabelStudioAuth(url, "legacy-token"), timeout=5, retries=retries, backoff=0.0)


def _answers(*statuses: int):
    """A route answering with ``statuses`` in turn, then 200 with the project."""
    left = list(statuses)

    def route(seen) -> Route:
        status = left.pop(0) if left else 200
        body = json.dumps(PROJECT).encode() if status == 200 else b"busy"
        return Route(status, body, "application/json")

    return route


class TestRetries:
    def test_5xx_answers_are_retried_until_label_studio_is_back(self):
        with LocalServer({"/api/projects/3/": _answers(502, 503)}) as server:
            assert _client(server.url).project(3) == PROJECT
            assert len(server.seen) == 3

    def test_a_persistent_5xx_fails_clearly_after_the_tries(self):
        with LocalServer({"/api/projects/3/": _answers(*[500] * 10)}) as server:
            with pytest.raises(LabelStudioError, match=r"HTTP 500 busy \(4 tries\)"):
                _client(server.url).project(3)
            assert len(server.seen) == 4

    def test_a_refused_connection_is_retried_then_named(self):
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]  # closed again: nothing listens there
        with pytest.raises(LabelStudioError, match=r"ConnectionError \(3 tries\)"):
            _client(f"http://127.0.0.1:{port}", retries=2).labeled_tasks(3)

    def test_client_errors_are_not_retried(self):
        with LocalServer({"/api/projects/3/export": Route(403, b"forbidden")}) as server:
            with pytest.raises(LabelStudioError, match="HTTP 403"):
                _client(server.url).labeled_tasks(3)
            assert len(server.seen) == 1

    def test_task_pages_are_retried_too(self):
        with LocalServer({"/api/tasks": _answers(503)}) as server:  # then a page that holds no task
            assert _client(server.url).tasks(3) == []
            assert len(server.seen) == 2

    def test_the_token_never_appears_in_an_error(self):
        with LocalServer({"/api/projects/3/": _answers(*[500] * 10)}) as server:
            with pytest.raises(LabelStudioError) as caught:
                _client(server.url, retries=0).project(3)
        assert "legacy-token" not in str(caught.value)


def _views(*existing: dict):
    """/api/dm/views: GET lists ``existing`` plus the views POSTed since; POST answers the new view."""
    views = list(existing)

    def route(seen) -> Route:
        if seen.method == "POST":
            views.append({"id": 100 + len(views), **json.loads(seen.body)})
            return Route(201, json.dumps(views[-1]).encode(), "application/json")
        return Route(200, json.dumps(views).encode(), "application/json")

    return route


def _posted(server: LocalServer) -> list[dict]:
    return [json.loads(s.body) for s in server.seen if s.method == "POST"]


QUEUE = {
    "ordering": ["tasks:predictions_score"],
    "filters": {
        "conjunction": "and",
        "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
    },
}


class TestSaveView:
    def test_a_project_without_tabs_gets_label_studios_default_tab_first(self):
        """Label Studio makes no "Default" tab once a tab exists: the backend makes it, unfiltered, then its own."""
        with LocalServer({"/api/dm/views": _views()}) as server:
            saved = _client(server.url).save_view(3, "HUA queue", QUEUE)
            default, queue = _posted(server)
        assert default == {
            "project": 3,
            "data": {"title": DEFAULT_VIEW_TITLE, "ordering": [], "filters": {"conjunction": "and", "items": []}},
        }
        assert DEFAULT_VIEW_TITLE == "Default"
        assert queue == {"project": 3, "data": {**QUEUE, "title": "HUA queue"}}
        assert saved["data"]["title"] == "HUA queue"

    def test_a_project_with_tabs_gets_only_the_queue_tab(self):
        """The user's tabs (or Label Studio's own Default) are left alone, and no second Default is made."""
        mine = {"id": 7, "project": 3, "data": {"title": "Tab 1", "filters": {"conjunction": "and", "items": []}}}
        with LocalServer({"/api/dm/views": _views(mine)}) as server:
            _client(server.url).save_view(3, "HUA queue", QUEUE)
            (queue,) = _posted(server)
        assert queue["data"]["title"] == "HUA queue"


class TestUnknownProject:
    def test_a_404_is_project_not_found_at_once(self):
        with LocalServer({}) as server:
            with pytest.raises(ProjectNotFound, match="Label Studio has no project 12"):
                _client(server.url).project(12)
            assert len(server.seen) == 1

    def test_a_job_for_an_unknown_project_fails_before_any_model(self, tmp_path, monkeypatch):
        """A webhook for an id Label Studio does not know: the job fails on its first call, no model made."""
        from backend.jobs.board import JobBoard
        from backend.jobs.entry import run_job_from_env

        with LocalServer({}) as server:
            monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
            monkeypatch.setenv("LABEL_STUDIO_URL", server.url)
            monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token")
            for kind in ("train", "rank"):
                with pytest.raises(ProjectNotFound):
                    run_job_from_env("12", kind)
                record = JobBoard(tmp_path / "models").read("12", kind)
                assert record.status == "failed" and "has no project 12" in record.error
        assert not list((tmp_path / "models" / "12").glob("v*")), "a model was made for an unknown project"

"""Tests of backend/admission.py through the app: while /predict holds every thread it may have,
the next /predict is refused at once (503, Retry-After) and the light routes still answer."""

from __future__ import annotations

import threading

import pytest

from backend.app import create_app
from backend.service import app_service
from backend.settings import SettingsError
from helpers import SMALL, local_task, make_settings, predict_body


@pytest.fixture
def blocked_app(tmp_path, image_root):
    """THREADS=4, LIGHT_THREADS=2: two /predict at once; the model lookup waits until ``release`` is set."""
    app = create_app(
        make_settings(tmp_path / "models", threads=4, light_threads=2, local_files_document_root=str(image_root))
    )
    service = app_service(app)
    entered, release = threading.Semaphore(0), threading.Event()
    real_get = service.registry.get

    def slow_get(*args, **kwargs):
        entered.release()
        release.wait(60)
        return real_get(*args, **kwargs)

    service.registry.get = slow_get
    return app, entered, release


class TestAdmission:
    def test_light_routes_answer_while_predict_holds_its_threads(self, blocked_app):
        app, entered, release = blocked_app
        answers = []
        body = predict_body([local_task(1, SMALL)])
        callers = [
            threading.Thread(target=lambda: answers.append(app.test_client().post("/predict", json=body)))
            for _ in range(2)
        ]
        for caller in callers:
            caller.start()
        assert entered.acquire(timeout=60) and entered.acquire(timeout=60)  # both inside /predict
        client = app.test_client()
        busy = client.post("/predict", json=body)
        assert (busy.status_code, busy.headers["Retry-After"]) == (503, "1")
        assert "2 predictions are in progress" in busy.get_json()["error"]
        for path in ("/health", "/jobs", "/metrics"):
            assert client.get(path).status_code == 200, path
        webhook = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
        assert webhook.status_code == 200
        release.set()
        for caller in callers:
            caller.join(60)
        assert [a.status_code for a in answers] == [200, 200]
        assert client.post("/predict", json=body).status_code == 200  # the places were given back

    def test_a_failing_predict_gives_its_place_back(self, blocked_app):
        app, entered, release = blocked_app
        release.set()
        client = app.test_client()
        for _ in range(3):  # more failures than places
            assert client.post("/predict", json={"tasks": "nope"}).status_code == 400
        assert client.post("/predict", json=predict_body([local_task(1, SMALL)])).status_code == 200


def test_light_threads_must_leave_predict_a_thread(tmp_path):
    with pytest.raises(SettingsError, match="LIGHT_THREADS"):
        make_settings(tmp_path, threads=4, light_threads=4)

"""Tests of backend/jobs/scheduler.py behind /webhook: coalescing under a burst of webhooks,
and the webhook secret.

The scheduler is the real one; its runner is replaced by ``ThreadRunner``,
which runs ``run_job`` in a thread (as the child process would) after a short
start-up delay, so no ``python -m backend`` process is spawned by accident.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from backend.app import create_app
from backend.jobs.board import JobBoard, run_job
from backend.service import build_service
from helpers import make_settings, webhook

PROJECT = "5"


class ThreadRunner:
    """Runs each submitted job with ``run_job`` in a thread of its own.

    ``start_delay`` stands for the start-up of the child process or RQ worker
    that runs a job for real (seconds in production, importing torch).
    """

    def __init__(self, board: JobBoard, work, start_delay: float = 0.0) -> None:
        self.board = board
        self.work = work
        self.start_delay = start_delay
        self.submitted: list[tuple[str, str]] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def submit(self, project: str, kind: str) -> None:
        self.submitted.append((project, kind))
        thread = threading.Thread(target=self._run, args=(project, kind), daemon=True)
        self.threads.append(thread)
        thread.start()

    def _run(self, project: str, kind: str) -> None:
        time.sleep(self.start_delay)
        try:
            run_job(self.board, project, kind, self.work)
        except BaseException as exc:  # recorded by run_job; kept for the test
            self.errors.append(exc)

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:  # a job may be submitted while we wait
            alive = [t for t in self.threads if t.is_alive()]
            if not alive:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(alive)} job threads still running")
            alive[0].join(0.1)


def _app_with(tmp_path: Path, work, start_delay: float = 0.0, **settings):
    """An app whose Service uses the real Scheduler and JobBoard with a ThreadRunner."""
    config = make_settings(tmp_path / "models", **settings)
    runner = ThreadRunner(JobBoard(config.model_dir, stale_after=config.job_timeout), work, start_delay)
    service = build_service(config, runner=runner)
    return create_app(service=service), service, runner


class TestWebhookScheduling:
    def test_burst_of_100_webhooks_makes_at_most_two_trainings(self, tmp_path):
        annotations: list[int] = []  # what Label Studio holds (an annotation exists before its webhook)
        trainings: list[list[int]] = []  # what each training saw when it started
        lock = threading.Lock()
        request_threads = set()
        work_threads = set()
        burst_over = threading.Event()

        def work(progress):
            """A training outlasts the burst (real ones take minutes): it ends after the last webhook."""
            work_threads.add(threading.get_ident())
            with lock:
                trainings.append(list(annotations))
            progress(0.5, "training")
            burst_over.wait(60)
            time.sleep(0.2)
            return {"annotations": len(trainings[-1])}

        app, service, runner = _app_with(tmp_path, work, train_every=3)
        client = app.test_client()
        outcomes = []
        for i in range(100):
            with lock:
                annotations.append(i)
            response = client.post("/webhook", json=webhook("ANNOTATION_CREATED", annotation={"id": i}, task={"id": i}))
            request_threads.add(threading.get_ident())
            assert response.status_code in (200, 202), response.get_data(as_text=True)
            outcomes.append(response.get_json()["status"])
        # Every answer came back while the trainings were still blocked on the burst's end:
        # no webhook waited for the work it triggered (Label Studio waits 1 s).
        assert not burst_over.is_set() and len(trainings) >= 1
        burst_over.set()
        runner.join()

        assert not (work_threads & request_threads), "work ran inside a request"
        assert set(outcomes) <= {"counted", "scheduled", "coalesced"}
        assert outcomes.count("scheduled") == len(trainings) == len(runner.submitted)
        assert 1 <= len(trainings) <= 2, f"{len(trainings)} trainings for one burst"
        assert trainings[-1] == list(range(100)), "the last training misses annotations"
        assert runner.errors == []
        record = service.board.read(PROJECT, "train")
        assert record.status == "done" and record.result == {"annotations": 100}
        assert not service.board.is_pending(PROJECT, "train")

    def test_a_trigger_during_a_running_job_keeps_its_record(self, tmp_path):
        """/jobs goes on showing the running job's progress; the waiting one shows as next_queued."""
        started, release = threading.Event(), threading.Event()

        def work(progress):
            progress(0.4, "epoch 2/5")
            started.set()
            release.wait(30)
            return {}

        app, service, runner = _app_with(tmp_path, work, train_every=1)
        client = app.test_client()
        client.post("/webhook", json=webhook("START_TRAINING"))
        assert started.wait(30)
        assert client.post("/webhook", json=webhook("START_TRAINING")).get_json()["status"] == "scheduled"
        shown = client.get("/jobs").get_json()["jobs"][PROJECT]["train"]
        assert (shown["status"], shown["progress"], shown["next_queued"]) == ("running", 0.4, True)
        release.set()
        runner.join()
        assert service.board.read(PROJECT, "train").status == "done"

    def test_start_training_then_annotation_created_is_one_training(self, tmp_path):
        """LS with "start training on annotation" sends START_TRAINING then ANNOTATION_CREATED
        for one annotation; even with TRAIN_EVERY=1 that is one training."""
        ran = []
        app, service, runner = _app_with(tmp_path, lambda p: ran.append(1) or {}, start_delay=0.3, train_every=1)
        client = app.test_client()
        first = client.post("/webhook", json=webhook("START_TRAINING"))
        second = client.post("/webhook", json=webhook("ANNOTATION_CREATED", annotation={"id": 1}))
        assert (first.status_code, first.get_json()["status"]) == (202, "scheduled")
        assert (second.status_code, second.get_json()["status"]) == (202, "coalesced")
        runner.join()
        assert ran == [1] and len(runner.submitted) == 1
        assert service.board.read(PROJECT, "train").status == "done"

    def test_start_training_resets_the_annotation_count(self, tmp_path):
        app, service, runner = _app_with(tmp_path, lambda p: {}, train_every=3)
        client = app.test_client()
        statuses = [
            client.post("/webhook", json=webhook(a)).get_json()["status"]
            for a in ("ANNOTATION_CREATED", "ANNOTATION_CREATED", "START_TRAINING")
        ]
        runner.join()
        statuses += [client.post("/webhook", json=webhook("ANNOTATION_UPDATED")).get_json()["status"] for _ in range(3)]
        runner.join()
        assert statuses == ["counted", "counted", "scheduled", "counted", "counted", "scheduled"]
        assert client.post("/webhook", json=webhook("ANNOTATIONS_DELETED")).get_json()["status"] == "counted"

    @pytest.mark.parametrize("action", ["PROJECT_UPDATED", "SOMETHING_NEW", "start_training", ""])
    def test_unknown_actions_are_acknowledged_and_ignored(self, tmp_path, action):
        app, service, runner = _app_with(tmp_path, lambda p: {}, train_every=1)
        response = app.test_client().post("/webhook", json=webhook(action))
        assert response.status_code == 200
        assert response.get_json() == {"status": "ignored", "action": action}
        assert runner.submitted == [] and service.board.all() == {}

    def test_projects_are_independent(self, tmp_path):
        app, service, runner = _app_with(tmp_path, lambda p: {}, start_delay=0.2)
        client = app.test_client()
        assert client.post("/webhook", json=webhook("START_TRAINING", "1")).get_json()["status"] == "scheduled"
        assert client.post("/webhook", json=webhook("START_TRAINING", "2")).get_json()["status"] == "scheduled"
        assert client.post("/webhook", json=webhook("START_TRAINING", "1")).get_json()["status"] == "coalesced"
        runner.join()
        assert sorted(runner.submitted) == [("1", "train"), ("2", "train")]

    def test_a_failing_submit_leaves_nothing_pending(self, tmp_path):
        class Broken:
            def submit(self, project, kind):
                raise ConnectionError("queue unreachable")

        service = build_service(make_settings(tmp_path / "models"), runner=Broken())
        app = create_app(service=service)
        assert app.test_client().post("/webhook", json=webhook("START_TRAINING")).status_code == 500
        assert not service.board.is_pending(PROJECT, "train")


class TestWebhookSecret:
    SECRET = "s3cret-webhook-value"

    def _client(self, tmp_path, **settings):
        app, service, runner = _app_with(tmp_path, lambda p: {}, webhook_secret=self.SECRET, **settings)
        return app.test_client(), runner

    def test_no_or_wrong_header_is_refused(self, tmp_path):
        client, runner = self._client(tmp_path)
        assert client.post("/webhook", json=webhook("START_TRAINING")).status_code == 401
        wrong = {"X-Webhook-Secret": self.SECRET + "x"}
        assert client.post("/webhook", json=webhook("START_TRAINING"), headers=wrong).status_code == 401
        assert runner.submitted == []

    def test_right_header_is_accepted(self, tmp_path):
        client, runner = self._client(tmp_path)
        right = {"X-Webhook-Secret": self.SECRET}
        response = client.post("/webhook", json=webhook("START_TRAINING"), headers=right)
        assert (response.status_code, response.get_json()["status"]) == (202, "scheduled")
        runner.join()
        assert runner.submitted == [(PROJECT, "train")]

    def test_basic_auth_is_accepted_too(self, tmp_path):
        """LS's START_TRAINING (Train button) carries the ML backend's basic auth, not the header."""
        import base64

        client, runner = self._client(tmp_path, basic_auth_user="ml", basic_auth_pass="pw")
        auth = {"Authorization": "Basic " + base64.b64encode(b"ml:pw").decode()}
        assert client.post("/webhook", json=webhook("START_TRAINING"), headers=auth).status_code == 202
        bad = {"Authorization": "Basic " + base64.b64encode(b"ml:nope").decode()}
        assert client.post("/webhook", json=webhook("START_TRAINING"), headers=bad).status_code == 401

    def test_without_a_secret_the_webhook_is_open(self, tmp_path):
        app, _, runner = _app_with(tmp_path, lambda p: {}, basic_auth_user="ml", basic_auth_pass="pw")
        response = app.test_client().post("/webhook", json=webhook("START_TRAINING"))
        assert response.status_code == 202
        runner.join()

"""Tests of background training (backend/jobs/, backend/cli.py)
without Label Studio: the job board, the scheduler's coalescing under a burst
of webhooks, failures (errors, out of memory, killed processes) and the
atomicity of a version write killed halfway.

The scheduler is the real one; its runner is replaced by ``ThreadRunner``,
which runs ``run_job`` in a thread (as the child process would) after a short
start-up delay, so no ``python -m backend`` process is spawned by accident.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import LABEL_CONFIG, LABELS, SMALL, WIDE, make_settings

from backend.app import create_app
from backend.jobs.board import JobBoard, JobRecord, ProgressWriter, run_job
from backend.jobs.entry import JOBS, run_job_from_env
from backend.jobs.runners import EmbeddedRunner
from backend.jobs.scheduler import Scheduler
from backend.jobs.train import TrainingError
from backend.service import build_service, swap_when_done
from model.version_meta import VersionMeta
from model.versions import VersionStore

REPO = Path(__file__).resolve().parent.parent
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


def _webhook(action: str, project=PROJECT, **extra) -> dict:
    return {"action": action, "project": {"id": int(project), "title": "p"}, **extra}


# --------------------------------------------------------------------------------------
# the job board


class TestJobBoard:
    def test_pending_is_claimed_once(self, tmp_path):
        board = JobBoard(tmp_path)
        assert board.claim_pending("1", "train") is True
        assert board.claim_pending("1", "train") is False
        assert board.is_pending("1", "train")
        assert board.claim_pending("2", "train") is True  # per project
        assert board.claim_pending("1", "rank") is True  # and per kind
        board.clear_pending("1", "train")
        assert not board.is_pending("1", "train")
        assert board.claim_pending("1", "train") is True

    def test_a_stale_pending_flag_can_be_claimed_again(self, tmp_path):
        board = JobBoard(tmp_path, stale_after=60)
        assert board.claim_pending("1", "train")
        flag = tmp_path / "1" / ".jobs" / "train.pending"
        old = time.time() - 120
        os.utime(flag, (old, old))
        assert board.claim_pending("1", "train") is True

    def test_annotation_counter(self, tmp_path):
        board = JobBoard(tmp_path)
        assert [board.count_annotation("1", 3) for _ in range(7)] == [False, False, True, False, False, True, False]
        board.reset_annotations("1")
        assert [board.count_annotation("1", 3) for _ in range(3)] == [False, False, True]
        assert board.count_annotation("9", 1) is True

    def test_records_round_trip_and_list(self, tmp_path):
        board = JobBoard(tmp_path)
        assert board.read("1", "train") is None
        board.write(JobRecord("1", "train", status="running", progress=0.5))
        board.write(JobRecord("2", "train", status="failed", error="boom"))
        assert board.read("1", "train").progress == 0.5
        everything = board.all()
        assert everything["1"]["train"]["status"] == "running"
        assert everything["2"]["train"]["error"] == "boom"
        assert not list(tmp_path.glob("*/.jobs/*.tmp"))

    @pytest.mark.parametrize("project", ["\u0661\u0662", "\u00b2", "0001", "1" * 101, "../1", "abc"])
    def test_project_ids_follow_the_stores_rule(self, tmp_path, project):
        board = JobBoard(tmp_path)
        for touch in (board.claim_pending, board.read, board.is_pending):
            with pytest.raises(ValueError, match="invalid project id"):
                touch(project, "train")
        assert list(tmp_path.iterdir()) == []

    def test_a_corrupt_record_reads_as_none(self, tmp_path):
        board = JobBoard(tmp_path)
        (tmp_path / "1" / ".jobs").mkdir(parents=True)
        (tmp_path / "1" / ".jobs" / "train.json").write_text("{not json")
        assert board.read("1", "train") is None
        assert board.all() == {}

    def test_progress_writer_throttles(self, tmp_path):
        board = JobBoard(tmp_path)
        record = JobRecord("1", "train", status="running")
        write = ProgressWriter(board, record, interval=3600)
        write(0.1, "a")
        write(0.2, "b")  # within the interval: kept in memory only
        assert board.read("1", "train").progress == 0.1
        write(1.0, "done")  # the end is always written
        assert board.read("1", "train").message == "done"

    def test_first_report_written_just_after_boot(self, tmp_path, monkeypatch):
        """``time.monotonic`` counts from boot: a machine up for 2 s must not lose the first report."""
        monkeypatch.setattr("backend.jobs.board.time.monotonic", lambda: 2.0)
        board = JobBoard(tmp_path)
        record = JobRecord("1", "train", status="running")
        ProgressWriter(board, record, interval=3600)(0.1, "first")
        assert board.read("1", "train").progress == 0.1


class TestRunJob:
    def test_success_is_recorded(self, tmp_path):
        board = JobBoard(tmp_path)
        board.claim_pending("1", "train")

        def work(progress):
            assert not board.is_pending("1", "train")  # cleared when the job starts
            assert board.read("1", "train").status == "running"
            progress(0.5, "half way")
            return {"model_version": "v0002"}

        assert run_job(board, "1", "train", work) == {"model_version": "v0002"}
        record = board.read("1", "train")
        assert (record.status, record.progress, record.error) == ("done", 1.0, None)
        assert record.result == {"model_version": "v0002"}
        assert record.started and record.finished

    @pytest.mark.parametrize(
        "error",
        [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), TrainingError("no usable annotations"), MemoryError()],
    )
    def test_failure_is_recorded_and_the_next_trigger_runs(self, tmp_path, error):
        board = JobBoard(tmp_path)
        scheduler = Scheduler(board, lambda p, k: None, train_every=10)
        assert scheduler.request("1", "train") == "scheduled"

        def work(progress):
            progress(0.3, "training")
            raise error

        with pytest.raises(type(error)):
            run_job(board, "1", "train", work)
        record = board.read("1", "train")
        assert record.status == "failed" and record.finished
        assert record.error.startswith(type(error).__name__)
        assert str(error) in record.error
        assert not board.is_pending("1", "train")
        assert scheduler.request("1", "train") == "scheduled"  # tries again
        run_job(board, "1", "train", lambda progress: {"ok": True})
        assert board.read("1", "train").status == "done" and board.read("1", "train").error is None

    def test_one_job_at_a_time_per_project(self, tmp_path):
        board = JobBoard(tmp_path)
        active, overlaps, lock = [0], [], threading.Lock()

        def work(progress):
            with lock:
                active[0] += 1
                overlaps.append(active[0])
            time.sleep(0.2)
            with lock:
                active[0] -= 1
            return {}

        threads = [threading.Thread(target=run_job, args=(board, "1", "train", work)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert overlaps == [1, 1, 1]

    def test_a_killed_job_releases_its_lock(self, tmp_path):
        """kill -9 of the process running a job: the kernel drops its lock, the next job runs."""
        started = tmp_path / "started"
        script = textwrap.dedent(
            f"""
            import pathlib, time
            from backend.jobs.board import JobBoard, run_job
            def work(progress):
                pathlib.Path({str(started)!r}).touch()
                time.sleep(600)
            run_job(JobBoard({str(tmp_path / "models")!r}), "1", "train", work)
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
        try:
            _wait_for(started.exists, 60, "the job to start")
            board = JobBoard(tmp_path / "models")
            assert board.read("1", "train").status == "running"
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        record = board.read("1", "train")  # nobody holds the lock: the process is gone
        assert record.status == "failed" and "died" in record.error and record.finished is None
        assert board.all()["1"]["train"]["status"] == "failed"
        done = threading.Event()
        thread = threading.Thread(target=lambda: (run_job(board, "1", "train", lambda p: {}), done.set()))
        thread.start()
        assert done.wait(10), "the next job waits for the lock of a killed process"
        assert board.read("1", "train").status == "done"


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# the scheduler behind /webhook


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
            response = client.post("/webhook", json=_webhook("ANNOTATION_CREATED", annotation={"id": i}, task={"id": i}))
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
        client.post("/webhook", json=_webhook("START_TRAINING"))
        assert started.wait(30)
        assert client.post("/webhook", json=_webhook("START_TRAINING")).get_json()["status"] == "scheduled"
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
        first = client.post("/webhook", json=_webhook("START_TRAINING"))
        second = client.post("/webhook", json=_webhook("ANNOTATION_CREATED", annotation={"id": 1}))
        assert (first.status_code, first.get_json()["status"]) == (202, "scheduled")
        assert (second.status_code, second.get_json()["status"]) == (202, "coalesced")
        runner.join()
        assert ran == [1] and len(runner.submitted) == 1
        assert service.board.read(PROJECT, "train").status == "done"

    def test_start_training_resets_the_annotation_count(self, tmp_path):
        app, service, runner = _app_with(tmp_path, lambda p: {}, train_every=3)
        client = app.test_client()
        statuses = [client.post("/webhook", json=_webhook(a)).get_json()["status"] for a in
                    ("ANNOTATION_CREATED", "ANNOTATION_CREATED", "START_TRAINING")]
        runner.join()
        statuses += [client.post("/webhook", json=_webhook("ANNOTATION_UPDATED")).get_json()["status"] for _ in range(3)]
        runner.join()
        assert statuses == ["counted", "counted", "scheduled", "counted", "counted", "scheduled"]
        assert client.post("/webhook", json=_webhook("ANNOTATIONS_DELETED")).get_json()["status"] == "counted"

    @pytest.mark.parametrize("action", ["PROJECT_UPDATED", "SOMETHING_NEW", "start_training", ""])
    def test_unknown_actions_are_acknowledged_and_ignored(self, tmp_path, action):
        app, service, runner = _app_with(tmp_path, lambda p: {}, train_every=1)
        response = app.test_client().post("/webhook", json=_webhook(action))
        assert response.status_code == 200
        assert response.get_json() == {"status": "ignored", "action": action}
        assert runner.submitted == [] and service.board.all() == {}

    def test_projects_are_independent(self, tmp_path):
        app, service, runner = _app_with(tmp_path, lambda p: {}, start_delay=0.2)
        client = app.test_client()
        assert client.post("/webhook", json=_webhook("START_TRAINING", "1")).get_json()["status"] == "scheduled"
        assert client.post("/webhook", json=_webhook("START_TRAINING", "2")).get_json()["status"] == "scheduled"
        assert client.post("/webhook", json=_webhook("START_TRAINING", "1")).get_json()["status"] == "coalesced"
        runner.join()
        assert sorted(runner.submitted) == [("1", "train"), ("2", "train")]

    def test_a_failing_submit_leaves_nothing_pending(self, tmp_path):
        class Broken:
            def submit(self, project, kind):
                raise ConnectionError("queue unreachable")

        service = build_service(make_settings(tmp_path / "models"), runner=Broken())
        app = create_app(service=service)
        assert app.test_client().post("/webhook", json=_webhook("START_TRAINING")).status_code == 500
        assert not service.board.is_pending(PROJECT, "train")


class TestWebhookSecret:
    SECRET = "s3cret-webhook-value"

    def _client(self, tmp_path, **settings):
        app, service, runner = _app_with(tmp_path, lambda p: {}, webhook_secret=self.SECRET, **settings)
        return app.test_client(), runner

    def test_no_or_wrong_header_is_refused(self, tmp_path):
        client, runner = self._client(tmp_path)
        assert client.post("/webhook", json=_webhook("START_TRAINING")).status_code == 401
        wrong = {"X-Webhook-Secret": self.SECRET + "x"}
        assert client.post("/webhook", json=_webhook("START_TRAINING"), headers=wrong).status_code == 401
        assert runner.submitted == []

    def test_right_header_is_accepted(self, tmp_path):
        client, runner = self._client(tmp_path)
        right = {"X-Webhook-Secret": self.SECRET}
        response = client.post("/webhook", json=_webhook("START_TRAINING"), headers=right)
        assert (response.status_code, response.get_json()["status"]) == (202, "scheduled")
        runner.join()
        assert runner.submitted == [(PROJECT, "train")]

    def test_basic_auth_is_accepted_too(self, tmp_path):
        """LS's START_TRAINING (Train button) carries the ML backend's basic auth, not the header."""
        import base64

        client, runner = self._client(tmp_path, basic_auth_user="ml", basic_auth_pass="pw")
        auth = {"Authorization": "Basic " + base64.b64encode(b"ml:pw").decode()}
        assert client.post("/webhook", json=_webhook("START_TRAINING"), headers=auth).status_code == 202
        bad = {"Authorization": "Basic " + base64.b64encode(b"ml:nope").decode()}
        assert client.post("/webhook", json=_webhook("START_TRAINING"), headers=bad).status_code == 401

    def test_without_a_secret_the_webhook_is_open(self, tmp_path):
        app, _, runner = _app_with(tmp_path, lambda p: {}, basic_auth_user="ml", basic_auth_pass="pw")
        response = app.test_client().post("/webhook", json=_webhook("START_TRAINING"))
        assert response.status_code == 202
        runner.join()


# --------------------------------------------------------------------------------------
# training jobs of the service, with Label Studio replaced by a stand-in client


class FakeLabelStudio:
    """What the training job reads from Label Studio: the project and its exported tasks."""

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks = tasks

    def project(self, project):
        return {"id": int(project), "label_config": LABEL_CONFIG}

    def labeled_tasks(self, project):
        return self.tasks


def _annotated(task_id: int, image: str, ann_id: int, label: str = "car") -> dict:
    region = {
        "from_name": "label", "to_name": "image", "type": "rectanglelabels",
        "value": {"x": 10, "y": 10, "width": 40, "height": 50, "rotation": 0, "rectanglelabels": [label]},
    }
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d={image}"},
        "annotations": [{"id": ann_id, "result": [region], "was_cancelled": False, "created_at": "2025-01-01T00:00:00Z"}],
    }


@pytest.fixture
def training_service(tmp_path, image_root):
    """A Service serving project 5 (version v0001 from base weights), with a fake Label Studio."""
    settings = make_settings(tmp_path / "models", local_files_document_root=str(image_root), epochs=1,
                             loss="synchronic")  # its version meta must keep lambda and the betas
    service = build_service(settings, ls_client=FakeLabelStudio(
        [_annotated(1, WIDE, 101), _annotated(2, SMALL, 102, "person"), _annotated(3, "missing.png", 103)]
    ))
    served = service.registry.get(PROJECT, list(LABELS))
    assert served.name == "v0001"
    return service


@pytest.mark.slow
class TestTrainingJobs:
    def test_a_training_makes_a_version_that_serves(self, training_service):
        service = training_service
        result = run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        assert result["model_version"] == "v0002"
        version = service.store.get(PROJECT, "v0002")
        meta = json.loads((version.path / "meta.json").read_text())
        assert meta["annotation_ids"] == [101, 102]
        assert meta["skipped"] == {"image": 1}
        assert meta["parent"] == "v0001" and meta["labels"] == list(LABELS)
        assert len(meta["epoch_losses"]) == 1
        assert meta["loss_summary"]["iterations"] == 1 and "lambda" in meta["loss_summary"]
        assert result["loss"] == meta["loss_summary"]
        assert service.registry.peek(PROJECT).name == "v0001"  # swapped only when the job is done
        swap_when_done(service.registry)(PROJECT, "train", True)
        assert service.registry.peek(PROJECT).name == "v0002"
        assert service.board.read(PROJECT, "train").status == "done"

    def test_nothing_new_is_skipped_but_an_edit_is_not(self, training_service):
        """A second trigger with the same annotations makes no version; an edited annotation
        (ANNOTATION_UPDATED: same id, new updated_at) does."""
        service = training_service
        assert run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))["model_version"] == "v0002"
        again = run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        assert "skipped" in again and "v0002" in again["skipped"]
        assert [v.name for v in service.store.versions(PROJECT)] == ["v0001", "v0002"]
        edited = service.ls_client.tasks[0]["annotations"][0]
        edited["updated_at"] = "2025-02-01T00:00:00Z"
        edited["result"][0]["value"]["rectanglelabels"] = ["person"]
        assert run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))["model_version"] == "v0003"
        meta = service.store.get(PROJECT, "v0003").meta
        assert meta.annotation_ids == [101, 102]
        assert meta.annotation_updated["101"] == "2025-02-01T00:00:00Z"

    @pytest.mark.parametrize(
        "break_it, expected",
        [
            ("out_of_memory", "RuntimeError: CUDA out of memory"),
            ("no_annotations", "TrainingError: project 5 has no usable annotations"),
            ("diverged", "FloatingPointError: training loss is not finite"),
            ("bad_annotations", "TrainingError: project 5 has no usable annotations"),
        ],
    )
    def test_a_failed_training_keeps_the_serving_version(self, training_service, monkeypatch, break_it, expected):
        service = training_service
        before = [v.name for v in service.store.versions(PROJECT)]
        if break_it == "out_of_memory":
            def oom(*args, **kwargs):
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
            monkeypatch.setattr("backend.jobs.train.train", oom)
        elif break_it == "no_annotations":
            monkeypatch.setattr(service.ls_client, "tasks", [_annotated(3, "missing.png", 103)])
        elif break_it == "bad_annotations":  # regions without a width (hand-edited JSON, a broken import)
            broken = [_annotated(1, WIDE, 101), _annotated(2, SMALL, 102)]
            for task in broken:
                del task["annotations"][0]["result"][0]["value"]["width"]
            monkeypatch.setattr(service.ls_client, "tasks", broken)
        else:
            def nan(*args, **kwargs):
                raise FloatingPointError("training loss is not finite: {'total': nan}")
            monkeypatch.setattr("backend.jobs.train.train", nan)
        assert service.scheduler is not None  # the real scheduler; submit is not called here
        with pytest.raises(Exception):
            run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        swap_when_done(service.registry)(PROJECT, "train", False)
        record = service.board.read(PROJECT, "train")
        assert record.status == "failed"
        assert record.error.startswith(expected), record.error
        assert [v.name for v in service.store.versions(PROJECT)] == before
        assert service.registry.peek(PROJECT).name == "v0001"
        assert not list((service.store.root / PROJECT).glob(".tmp-*"))
        # the next trigger tries again, and succeeds once the cause is gone
        monkeypatch.undo()
        service = replace(service, ls_client=FakeLabelStudio([_annotated(1, WIDE, 101)]))
        run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        assert service.board.read(PROJECT, "train").status == "done"
        assert [v.name for v in service.store.versions(PROJECT)] == before + ["v0002"]

    def test_label_studio_unreachable_fails_the_job_from_env(self, tmp_path, monkeypatch):
        """The function RQ workers run: settings from the environment, failure recorded."""
        monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
        monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # discard port: refused
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token")
        monkeypatch.setenv("BACKBONE", "mobilenet_v3_320_fpn")
        monkeypatch.setenv("WEIGHTS", "none")
        with pytest.raises(Exception, match="Label Studio|/api/projects"):
            run_job_from_env("4", "train")
        record = JobBoard(tmp_path / "models").read("4", "train")
        assert record.status == "failed" and "/api/projects/4" in record.error
        assert "token" not in record.error



class TestEmbeddedRunner:
    def _runner(self, tmp_path, env=None, models: Path | None = None):
        board = JobBoard(models or tmp_path / "models")
        finished: list[tuple[str, str, bool]] = []
        runner = EmbeddedRunner(board, lambda p, k, ok: finished.append((p, k, ok)), env=env)
        return board, runner, finished

    def _submit_and_wait(self, board, runner, finished, project="1", timeout=120):
        scheduler = Scheduler(board, runner.submit, train_every=10)
        assert scheduler.request(project, "train") == "scheduled"
        _wait_for(lambda: finished, timeout, "the job process to end", interval=0.1)
        return scheduler

    def test_a_killed_child_is_recorded_as_failed(self, tmp_path, monkeypatch):
        """The child is killed (-9, e.g. by the OOM killer) halfway through its job."""
        board, runner, finished = self._runner(tmp_path)
        commands = self._fake_child(monkeypatch, tmp_path, """
            def work(progress):
                progress(0.4, "epoch 2/5")
                os.kill(os.getpid(), signal.SIGKILL)
            run_job(board, "1", "train", work)
            """)
        scheduler = self._submit_and_wait(board, runner, finished)
        assert commands[0][1:] == ["-m", "backend", "train", "--project", "1", "--quiet"]
        assert finished == [("1", "train", False)]
        record = board.read("1", "train")
        assert record.status == "failed" and record.error == f"job process exited with {-signal.SIGKILL}"
        assert record.started  # it did start: the failure is the kill, not the start-up
        assert not board.is_pending("1", "train")
        assert scheduler.request("1", "train") == "scheduled"  # the next trigger tries again

    def _fake_child(self, monkeypatch, tmp_path, body: str, models: Path | None = None) -> list[list[str]]:
        """Run ``body`` in place of the job process, with ``board`` (the test's JobBoard on ``models``,
        default tmp_path/models), ``run_job``, os, signal and sys in scope, and the job's arguments in
        sys.argv; returns the commands the runner asked for."""
        script = (
            "import os, signal, sys\nfrom backend.jobs.board import JobBoard, run_job\n"
            f"board = JobBoard({str(models or tmp_path / 'models')!r})\n" + textwrap.dedent(body)
        )
        commands = []
        real_popen = subprocess.Popen

        def popen(command, **kwargs):
            commands.append(command)
            return real_popen([sys.executable, "-c", script, *command[3:]], cwd=REPO, **kwargs)

        monkeypatch.setattr(subprocess, "Popen", popen)
        return commands

    def test_a_failed_follow_up_does_not_fail_the_training(self, tmp_path, monkeypatch):
        """The child trains (done), then its follow-up ranking fails: exit 1, yet the training's record stays done."""
        board, runner, finished = self._runner(tmp_path)
        self._fake_child(monkeypatch, tmp_path, """
            run_job(board, "1", "train", lambda progress: {"model_version": "v0002"})
            try:
                run_job(board, "1", "rank", lambda progress: 1 / 0)
            except ZeroDivisionError:
                sys.exit(1)
            """)
        self._submit_and_wait(board, runner, finished)
        assert finished == [("1", "train", False)]
        train = board.read("1", "train")
        assert (train.status, train.error, train.result) == ("done", None, {"model_version": "v0002"})
        rank = board.read("1", "rank")
        assert rank.status == "failed" and rank.error.startswith("ZeroDivisionError")

    def test_a_child_killed_in_its_follow_up(self, tmp_path, monkeypatch):
        board, runner, finished = self._runner(tmp_path)
        self._fake_child(monkeypatch, tmp_path, """
            run_job(board, "1", "train", lambda progress: {"model_version": "v0002"})
            run_job(board, "1", "rank", lambda progress: os.kill(os.getpid(), signal.SIGKILL))
            """)
        self._submit_and_wait(board, runner, finished)
        assert board.read("1", "train").status == "done"
        rank = board.read("1", "rank")
        assert rank.status == "failed" and "died" in rank.error

    def test_a_child_that_dies_before_starting_frees_the_pending_flag(self, tmp_path, monkeypatch):
        board, runner, finished = self._runner(tmp_path)
        self._fake_child(monkeypatch, tmp_path, """
            print("ImportError: no module named torch", file=sys.stderr)
            sys.exit(2)
            """)
        scheduler = self._submit_and_wait(board, runner, finished)
        record = board.read("1", "train")
        assert record.status == "failed"
        assert record.error == "job process exited with 2: ImportError: no module named torch"
        assert scheduler.request("1", "train") == "scheduled"

    def test_a_process_that_cannot_be_started_frees_the_pending_flag(self, tmp_path, monkeypatch):
        board, runner, finished = self._runner(tmp_path, env={"PATH": ""})
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
        scheduler = self._submit_and_wait(board, runner, finished)
        record = board.read("1", "train")
        assert record.status == "failed" and record.error.startswith("job process did not start: FileNotFoundError")
        assert scheduler.request("1", "train") == "scheduled"

    @pytest.mark.slow
    def test_the_real_child_reports_its_error(self, tmp_path):
        """``python -m backend train`` with Label Studio unreachable: exit 1, its own error kept."""
        env = {
            **os.environ,
            "MODEL_DIR": str(tmp_path / "models"),
            "LABEL_STUDIO_URL": "http://127.0.0.1:9",
            "LABEL_STUDIO_API_KEY": "token",
            "BACKBONE": "mobilenet_v3_320_fpn",
            "WEIGHTS": "none",
            "PYTHONPATH": str(REPO),
        }
        board, runner, finished = self._runner(tmp_path, env=env)
        self._submit_and_wait(board, runner, finished)
        assert finished == [("1", "train", False)]
        record = board.read("1", "train")
        assert record.status == "failed"
        assert record.error.startswith("LabelStudioError") and "/api/projects/1" in record.error

    def test_a_full_disk_names_its_cause_and_leaves_no_tmp_file(self, tmp_path, small_disk, monkeypatch):
        board, runner, finished = self._runner(tmp_path, models=small_disk)
        self._fake_child(monkeypatch, tmp_path, f"""
            def work(progress):
                progress(0.5, "saving")
                if not os.path.exists({str(tmp_path / "filled")!r}):  # the first job fills the disk
                    open({str(tmp_path / "filled")!r}, "w").close()
                    with open({str(small_disk / "filler")!r}, "wb") as f:
                        f.write(b"x" * 4_000_000)  # twice the disk
                return {{}}
            run_job(board, "1", "train", work)
            """, models=small_disk)
        scheduler = self._submit_and_wait(board, runner, finished)
        record = board.read("1", "train")
        assert record.status == "failed" and "No space left on device" in record.error, record.error
        assert not list(small_disk.rglob("*.tmp")), "a record's temporary file was left behind"
        assert not board.is_pending("1", "train")
        (small_disk / "filler").unlink()
        assert scheduler.request("1", "train") == "scheduled"
        _wait_for(lambda: len(finished) == 2, 120, "the next job process to end", interval=0.1)
        assert board.read("1", "train").status == "done"

    def test_a_flood_of_projects_runs_one_job_process_at_a_time_in_order(self, tmp_path, monkeypatch):
        """Unauthenticated webhooks for new project ids: the processes start one after the other, in order."""
        board, runner, finished = self._runner(tmp_path)
        log = tmp_path / "log"
        self._fake_child(monkeypatch, tmp_path, f"""
            import time
            project = sys.argv[sys.argv.index("--project") + 1]
            def note(what):
                with open({str(log)!r}, "a") as f:
                    f.write(f"{{what}} {{project}}\\n")
            note("start")
            time.sleep(0.2)  # a window in which an overlapping process would write its start
            run_job(board, project, "train", lambda progress: {{}})
            note("end")
            """)
        scheduler = Scheduler(board, runner.submit, train_every=10)
        projects = [str(p) for p in range(11, 17)]
        assert [scheduler.request(p, "train") for p in projects] == ["scheduled"] * len(projects)
        _wait_for(lambda: len(finished) == len(projects), 240, "every job process to end", interval=0.1)
        assert log.read_text().split("\n")[:-1] == [f"{what} {p}" for p in projects for what in ("start", "end")]
        assert all(ok for _, _, ok in finished)
        assert not list((tmp_path / "models" / ".queue").glob("*.ticket"))


# --------------------------------------------------------------------------------------
# a version write killed halfway


_SAVE_SCRIPT = """
import os, pathlib, sys, time
import torch
import model.versions as versions
from model.version_meta import VersionMeta

root, stage, marker = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
real_save = torch.save

def stall():
    marker.touch()
    time.sleep(600)

if stage == "weights":  # killed while torch.save is writing the weights file
    def partial_save(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as f:  # as if only the first half had reached the disk yet
            f.truncate(os.path.getsize(path) // 2)
        stall()
    versions.torch.save = partial_save
else:  # killed after the weights, while writing meta.json (before the rename)
    real_write = versions._write_json
    def write_then_stall(path, data):
        real_write(path, data)
        stall()
    versions._write_json = write_then_stall

state = {f"layer{i}.weight": torch.randn(1024, 1024) for i in range(48)}  # ~200 MB
versions.VersionStore(root).save("3", state, VersionMeta(labels=["car"]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["weights", "meta"])
def test_a_killed_save_leaves_no_version(tmp_path, stage):
    store = VersionStore(tmp_path / "models")
    first = store.save("3", {"w": torch.ones(2)}, VersionMeta(labels=["car"]))
    marker = tmp_path / "stalled"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVE_SCRIPT, str(store.root), stage, str(marker)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        _wait_for(lambda: marker.exists() or proc.poll() is not None, 120, "the save to start", interval=0.05)
        assert proc.poll() is None, f"the writer exited with {proc.returncode} before it was killed"
        partial = list((store.root / "3").glob(".tmp-*"))
        assert len(partial) == 1 and (partial[0] / "weights.pt").is_file()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [v.name for v in store.versions("3")] == ["v0001"]
    assert store.latest("3") == first
    assert store.projects() == ["3"]
    nxt = store.save("3", {"w": torch.zeros(2)}, VersionMeta(labels=["car"]))  # cleans up first: its writer is dead
    assert nxt.name == "v0002"
    assert not list((store.root / "3").glob(".tmp-*")), "the killed save's folder waits for its hour"


# --------------------------------------------------------------------------------------
# recovery without waiting for JOB_TIMEOUT: owners of flags and records that are gone


def _sleeper(script: str, *args: str) -> subprocess.Popen:
    """A real process running ``script`` (with ``backend`` importable) that ends by printing "ready" and sleeping."""
    code = textwrap.dedent(script) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", "the process ended before it was ready"
    return proc


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


class TestOwnersThatAreGone:
    def test_a_process_is_recognised_and_its_end_seen(self):
        from model.owners import ProcessOwner, _start_time

        me = ProcessOwner.current()
        assert me.pid == os.getpid() and not me.is_gone()
        assert ProcessOwner.from_json(me.to_json()) == me
        proc = _sleeper("")
        owner = ProcessOwner(proc.pid, me.host, _start_time(proc.pid))
        assert not owner.is_gone()
        _kill9(proc)
        assert owner.is_gone()

    def test_a_reused_pid_is_not_the_owner(self):
        """After a container restart the new processes get the old small pids: the start time tells them apart."""
        from model.owners import ProcessOwner

        me = ProcessOwner.current()
        assert ProcessOwner(me.pid, me.host, me.started + "0").is_gone()

    def test_an_owner_on_another_host_is_never_called_gone(self):
        from model.owners import ProcessOwner

        assert not ProcessOwner(2**22 + 1, "some-other-host", "x").is_gone()
        assert ProcessOwner.from_json({"pid": "x"}) is None and ProcessOwner.from_json(None) is None

    def test_a_flag_whose_owner_was_killed_is_claimed_at_the_next_event(self, tmp_path):
        board = JobBoard(tmp_path, stale_after=6 * 3600)
        proc = _sleeper(f"""
            from backend.jobs.board import JobBoard
            assert JobBoard({str(tmp_path)!r}).claim_pending("1", "train")
            """)
        try:
            assert board.claim_pending("1", "train") is False  # its owner is alive: the flag holds
        finally:
            _kill9(proc)
        assert board.claim_pending("1", "train") is True  # at once, not after JOB_TIMEOUT
        assert board.claim_pending("1", "train") is False  # and the new flag is this process's

    def test_a_flag_of_another_host_waits_for_stale_after(self, tmp_path):
        board = JobBoard(tmp_path, stale_after=60)
        flag = tmp_path / "1" / ".jobs" / "train.pending"
        flag.parent.mkdir(parents=True)
        flag.write_text(json.dumps({"pid": 1, "host": "another-host", "started": "x"}))
        assert board.claim_pending("1", "train") is False
        old = time.time() - 120
        os.utime(flag, (old, old))
        assert board.claim_pending("1", "train") is True

    def test_start_up_clears_dead_flags_and_records_dead_jobs(self, tmp_path):
        """The serving process and its job killed together: the next start finds the flag and a "running" record."""
        proc = _sleeper(f"""
            import threading, time
            from backend.jobs.board import JobBoard, run_job
            board = JobBoard({str(tmp_path)!r})
            started = threading.Event()
            threading.Thread(target=run_job, args=(board, "1", "train", lambda p: started.set() or time.sleep(600)),
                             daemon=True).start()
            started.wait(60)
            assert board.claim_pending("1", "train")
            """)
        _kill9(proc)
        raw = json.loads((tmp_path / "1" / ".jobs" / "train.json").read_text())
        assert raw["status"] == "running" and (tmp_path / "1" / ".jobs" / "train.pending").exists()
        board = JobBoard(tmp_path)
        board.recover()
        assert not board.is_pending("1", "train")
        raw = json.loads((tmp_path / "1" / ".jobs" / "train.json").read_text())
        assert raw["status"] == "failed" and "died" in raw["error"]

    def test_a_training_killed_just_after_publishing_is_done(self, tmp_path):
        """kill -9 between the version's rename and the record's "done": the version is there, so is the job."""
        proc = _sleeper(f"""
            import threading, time, torch
            from backend.jobs.board import JobBoard, run_job
            from model.version_meta import VersionMeta
            from model.versions import VersionStore
            saved = threading.Event()
            def work(progress):
                VersionStore({str(tmp_path)!r}).save("3", {{"w": torch.ones(1)}}, VersionMeta(labels=["car"]))
                saved.set()
                time.sleep(600)
            threading.Thread(target=run_job, args=(JobBoard({str(tmp_path)!r}), "3", "train", work), daemon=True).start()
            saved.wait(60)
            """)
        _kill9(proc)
        record = JobBoard(tmp_path).read("3", "train")
        assert (record.status, record.result["model_version"], record.error) == ("done", "v0001", None)

    def test_a_failure_after_the_claim_clears_the_flag(self, tmp_path, monkeypatch):
        """The record's write fails (a full disk) after the flag was claimed: the next event schedules again."""
        board = JobBoard(tmp_path)
        submitted = []
        scheduler = Scheduler(board, lambda p, k: submitted.append(p), train_every=1)

        def full(record):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(board, "write", full)
        with pytest.raises(OSError, match="No space"):
            scheduler.request("1", "train")
        assert not board.is_pending("1", "train") and submitted == []
        monkeypatch.undo()
        assert scheduler.request("1", "train") == "scheduled" and submitted == ["1"]

    def test_the_annotation_counter_loses_nothing_across_processes(self, tmp_path):
        """Four processes count 50 events each while resets happen: every count survives a reset or lands after it."""
        script = f"""
            import sys
            from backend.jobs.board import JobBoard
            board = JobBoard({str(tmp_path)!r})
            reached = sum(board.count_annotation("1", 1_000_000) for _ in range(50))
            """
        procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO) for _ in range(4)]
        for proc in procs:
            assert proc.wait(120) == 0
        assert (tmp_path / "1" / ".jobs" / "annotations").read_text() == "200"



_SERVER = """
from werkzeug.serving import make_server
from backend.app import create_app
server = make_server("127.0.0.1", 0, create_app(), threaded=True)
print(server.server_port, flush=True)
server.serve_forever()
"""


class _Backend:
    """The app in a process group of its own (its job processes join it), so a test can kill -9 them all."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def kill_all(self) -> None:
        """kill -9 of the server and every job process it started (a container restart, the OOM killer)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.slow
def test_server_and_jobs_killed_together_then_the_next_event_schedules(tmp_path):
    """The issue's case: after kill -9 of everything, START_TRAINING must not answer "coalesced" for JOB_TIMEOUT."""
    import socket

    silent = socket.socket()  # Label Studio that accepts and never answers: the job hangs in its first call
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODEL_DIR": str(tmp_path / "models"),
           "LABEL_STUDIO_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "LABEL_STUDIO_API_KEY": "token",
           "BACKBONE": "mobilenet_v3_320_fpn", "WEIGHTS": "none", "ALLOW_WEIGHTS_DOWNLOAD": "false"}
    start = _webhook("START_TRAINING", "8")
    backend = _Backend(env)
    try:
        assert backend.call("POST", "/webhook", start)["status"] == "scheduled"
        _wait_for(lambda: backend.call("GET", "/jobs")["jobs"].get("8", {}).get("train", {}).get("status") == "running",
                  120, "the job process to start", interval=0.2)
        assert backend.call("POST", "/webhook", start)["status"] == "scheduled"  # waits behind the running one
        assert backend.call("POST", "/webhook", start)["status"] == "coalesced"
    finally:
        backend.kill_all()
    backend = _Backend(env)
    try:
        shown = backend.call("GET", "/jobs")["jobs"]["8"]["train"]
        assert (shown["status"], shown["next_queued"]) == ("failed", False) and "died" in shown["error"]
        assert backend.call("POST", "/webhook", start)["status"] == "scheduled"
    finally:
        backend.kill_all()
        silent.close()

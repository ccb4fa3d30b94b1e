"""Tests of model/owners.py and the recovery it allows without waiting for JOB_TIMEOUT: flags,
records and versions whose owning process is gone (board, scheduler, version store, a killed server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend.jobs.board import JobBoard
from backend.jobs.scheduler import Scheduler
from helpers import kill9, wait_for, webhook

REPO = Path(__file__).resolve().parent.parent
PROJECT = "5"


def _sleeper(script: str, *args: str) -> subprocess.Popen:
    """A real process running ``script`` (with ``backend`` importable) that ends by printing "ready" and sleeping."""
    code = textwrap.dedent(script) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready", "the process ended before it was ready"
    return proc


class TestOwnersThatAreGone:
    def test_a_process_is_recognised_and_its_end_seen(self):
        from model.owners import ProcessOwner, _start_time

        me = ProcessOwner.current()
        assert me.pid == os.getpid() and not me.is_gone()
        assert ProcessOwner.from_json(me.to_json()) == me
        proc = _sleeper("")
        owner = ProcessOwner(proc.pid, me.host, _start_time(proc.pid))
        assert not owner.is_gone()
        kill9(proc)
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
            kill9(proc)
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
        kill9(proc)
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
            board = JobBoard({str(tmp_path)!r})
            threading.Thread(target=run_job, args=(board, "3", "train", work), daemon=True).start()
            saved.wait(60)
            """)
        kill9(proc)
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
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
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
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MODEL_DIR": str(tmp_path / "models"),
        "LABEL_STUDIO_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
        "LABEL_STUDIO_API_KEY": "token",
        "BACKBONE": "mobilenet_v3_320_fpn",
        "WEIGHTS": "none",
        "ALLOW_WEIGHTS_DOWNLOAD": "false",
    }
    start = webhook("START_TRAINING", "8")
    backend = _Backend(env)
    try:
        assert backend.call("POST", "/webhook", start)["status"] == "scheduled"
        wait_for(
            lambda: backend.call("GET", "/jobs")["jobs"].get("8", {}).get("train", {}).get("status") == "running",
            120,
            "the job process to start",
            interval=0.2,
        )
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

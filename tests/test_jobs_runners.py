"""Tests of backend/jobs/runners.py: the embedded runner's child processes, their failures
(killed, never started, full disk) and one job process at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.jobs.board import JobBoard
from backend.jobs.runners import EmbeddedRunner
from backend.jobs.scheduler import Scheduler
from helpers import wait_for

REPO = Path(__file__).resolve().parent.parent


class TestEmbeddedRunner:
    def _runner(self, tmp_path, env=None, models: Path | None = None):
        board = JobBoard(models or tmp_path / "models")
        finished: list[tuple[str, str, bool]] = []
        runner = EmbeddedRunner(board, lambda p, k, ok: finished.append((p, k, ok)), env=env)
        return board, runner, finished

    def _submit_and_wait(self, board, runner, finished, project="1", timeout=120):
        scheduler = Scheduler(board, runner.submit, train_every=10)
        assert scheduler.request(project, "train") == "scheduled"
        wait_for(lambda: finished, timeout, "the job process to end", interval=0.1)
        return scheduler

    def test_a_killed_child_is_recorded_as_failed(self, tmp_path, monkeypatch):
        """The child is killed (-9, e.g. by the OOM killer) halfway through its job."""
        board, runner, finished = self._runner(tmp_path)
        commands = self._fake_child(
            monkeypatch,
            tmp_path,
            """
            def work(progress):
                progress(0.4, "epoch 2/5")
                os.kill(os.getpid(), signal.SIGKILL)
            run_job(board, "1", "train", work)
            """,
        )
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
        self._fake_child(
            monkeypatch,
            tmp_path,
            """
            run_job(board, "1", "train", lambda progress: {"model_version": "v0002"})
            try:
                run_job(board, "1", "rank", lambda progress: 1 / 0)
            except ZeroDivisionError:
                sys.exit(1)
            """,
        )
        self._submit_and_wait(board, runner, finished)
        assert finished == [("1", "train", False)]
        train = board.read("1", "train")
        assert (train.status, train.error, train.result) == ("done", None, {"model_version": "v0002"})
        rank = board.read("1", "rank")
        assert rank.status == "failed" and rank.error.startswith("ZeroDivisionError")

    def test_a_child_killed_in_its_follow_up(self, tmp_path, monkeypatch):
        board, runner, finished = self._runner(tmp_path)
        self._fake_child(
            monkeypatch,
            tmp_path,
            """
            run_job(board, "1", "train", lambda progress: {"model_version": "v0002"})
            run_job(board, "1", "rank", lambda progress: os.kill(os.getpid(), signal.SIGKILL))
            """,
        )
        self._submit_and_wait(board, runner, finished)
        assert board.read("1", "train").status == "done"
        rank = board.read("1", "rank")
        assert rank.status == "failed" and "died" in rank.error

    def test_a_child_that_dies_before_starting_frees_the_pending_flag(self, tmp_path, monkeypatch):
        board, runner, finished = self._runner(tmp_path)
        self._fake_child(
            monkeypatch,
            tmp_path,
            """
            print("ImportError: no module named torch", file=sys.stderr)
            sys.exit(2)
            """,
        )
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
        self._fake_child(
            monkeypatch,
            tmp_path,
            f"""
            def work(progress):
                progress(0.5, "saving")
                if not os.path.exists({str(tmp_path / "filled")!r}):  # the first job fills the disk
                    open({str(tmp_path / "filled")!r}, "w").close()
                    with open({str(small_disk / "filler")!r}, "wb") as f:
                        f.write(b"x" * 4_000_000)  # twice the disk
                return {{}}
            run_job(board, "1", "train", work)
            """,
            models=small_disk,
        )
        scheduler = self._submit_and_wait(board, runner, finished)
        record = board.read("1", "train")
        assert record.status == "failed" and "No space left on device" in record.error, record.error
        assert not list(small_disk.rglob("*.tmp")), "a record's temporary file was left behind"
        assert not board.is_pending("1", "train")
        (small_disk / "filler").unlink()
        assert scheduler.request("1", "train") == "scheduled"
        wait_for(lambda: len(finished) == 2, 120, "the next job process to end", interval=0.1)
        assert board.read("1", "train").status == "done"

    def test_a_flood_of_projects_runs_one_job_process_at_a_time_in_order(self, tmp_path, monkeypatch):
        """Unauthenticated webhooks for new project ids: the processes start one after the other, in order."""
        board, runner, finished = self._runner(tmp_path)
        log = tmp_path / "log"
        self._fake_child(
            monkeypatch,
            tmp_path,
            f"""
            import time
            project = sys.argv[sys.argv.index("--project") + 1]
            def note(what):
                with open({str(log)!r}, "a") as f:
                    f.write(f"{{what}} {{project}}\\n")
            note("start")
            time.sleep(0.2)  # a window in which an overlapping process would write its start
            run_job(board, project, "train", lambda progress: {{}})
            note("end")
            """,
        )
        scheduler = Scheduler(board, runner.submit, train_every=10)
        projects = [str(p) for p in range(11, 17)]
        assert [scheduler.request(p, "train") for p in projects] == ["scheduled"] * len(projects)
        wait_for(lambda: len(finished) == len(projects), 240, "every job process to end", interval=0.1)
        assert log.read_text().split("\n")[:-1] == [f"{what} {p}" for p in projects for what in ("start", "end")]
        assert all(ok for _, _, ok in finished)
        assert not list((tmp_path / "models" / ".queue").glob("*.ticket"))

"""Tests of backend/jobs/board.py: the job board (flags, records, progress) and ``run_job``'s
lock, record and failures (errors, killed processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from backend.jobs.board import JobBoard, JobRecord, ProgressWriter, run_job
from backend.jobs.scheduler import Scheduler
from backend.jobs.train import TrainingError
from helpers import kill9, reaped, wait_for

REPO = Path(__file__).resolve().parent.parent


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
        [
            RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            TrainingError("no usable annotations"),
            MemoryError(),
        ],
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
        with reaped(subprocess.Popen([sys.executable, "-c", script], cwd=REPO)) as proc:
            wait_for(started.exists, 60, "the job to start")
            board = JobBoard(tmp_path / "models")
            assert board.read("1", "train").status == "running"
            kill9(proc)
        record = board.read("1", "train")  # nobody holds the lock: the process is gone
        assert record.status == "failed" and "died" in record.error and record.finished is None
        assert board.all()["1"]["train"]["status"] == "failed"
        done = threading.Event()
        thread = threading.Thread(target=lambda: (run_job(board, "1", "train", lambda p: {}), done.set()))
        thread.start()
        assert done.wait(10), "the next job waits for the lock of a killed process"
        assert board.read("1", "train").status == "done"

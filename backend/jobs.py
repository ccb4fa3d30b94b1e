"""Background jobs (training, ranking): their state, coalescing and dispatch.

Everything a job needs to coordinate lives in MODEL_DIR, so it works the same
with one gunicorn worker, several, or RQ workers on other machines sharing
MODEL_DIR:

- ``<project>/.jobs/<kind>.json``: the last or running job's record (status,
  progress, error), readable by every process for /jobs and /health;
- ``<project>/.jobs/<kind>.pending``: a job is waiting to start. Claimed with
  O_EXCL, so a burst of events queues at most one more job;
- ``<project>/.jobs/<kind>.lock``: held (fcntl) by the job that runs, so at most
  one runs per project and kind; the kernel releases it if the job is killed;
- ``<project>/.jobs/annotations``: annotation events since the last training.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

logger = logging.getLogger(__name__)

TRAIN_NOW = {"START_TRAINING"}
RANK_NEW = {"TASKS_CREATED"}
ANNOTATION_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class JobRecord:
    """The state of a project's job of one kind, as shown by /jobs."""

    project: str
    kind: str
    status: str = "queued"  # queued | running | done | failed
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    queued: str = field(default_factory=_now)
    started: str | None = None
    finished: str | None = None
    result: dict = field(default_factory=dict)


class JobBoard:
    """Job records, pending flags, locks and event counters under MODEL_DIR.

    Args:
        root (Path): MODEL_DIR.
        stale_after (float): seconds after which a pending flag whose job never
            started is considered lost (its process died) and may be claimed again.
    """

    def __init__(self, root: Path | str, stale_after: float = 6 * 3600) -> None:
        self.root = Path(root)
        self.stale_after = stale_after

    def _dir(self, project: str) -> Path:
        path = self.root / project / ".jobs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read(self, project: str, kind: str) -> JobRecord | None:
        """The record; a "running" one whose process died (kill -9, OOM killer) reads as failed."""
        path = self.root / project / ".jobs" / f"{kind}.json"
        try:
            record = JobRecord(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None
        if record.status == "running" and self._abandoned(project, kind):
            record.status = "failed"
            record.error = record.error or "the job's process died before it finished (killed?)"
        return record

    def _abandoned(self, project: str, kind: str) -> bool:
        """True when the record says running but nobody holds the job's lock.

        run_job writes "running" (and the outcome) only while it holds the lock,
        and the kernel releases a lock when its process dies; checked again
        with the lock held so that a job finishing meanwhile is not misread.
        """
        jobs = self.root / project / ".jobs"
        try:
            fd = os.open(jobs / f"{kind}.lock", os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # held: the job is alive
            try:
                return json.loads((jobs / f"{kind}.json").read_text()).get("status") == "running"
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def write(self, record: JobRecord) -> None:
        """Replace the record atomically (readers never see half a file)."""
        path = self._dir(record.project) / f"{record.kind}.json"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(asdict(record), indent=1))
        os.replace(tmp, path)

    def all(self) -> dict[str, dict[str, dict]]:
        """Every project's records, for /jobs."""
        found: dict[str, dict[str, dict]] = {}
        for path in sorted(self.root.glob("*/.jobs/*.json")):
            record = self.read(path.parent.parent.name, path.stem)
            if record is not None:
                shown = asdict(record) | {"next_queued": self.is_pending(record.project, record.kind)}
                found.setdefault(record.project, {})[record.kind] = shown
        return found

    def claim_pending(self, project: str, kind: str) -> bool:
        """True if this caller may queue a job (none is waiting already)."""
        path = self._dir(project) / f"{kind}.pending"
        try:
            if time.time() - path.stat().st_mtime > self.stale_after:
                path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            return False

    def clear_pending(self, project: str, kind: str) -> None:
        (self._dir(project) / f"{kind}.pending").unlink(missing_ok=True)

    def is_pending(self, project: str, kind: str) -> bool:
        return (self.root / project / ".jobs" / f"{kind}.pending").exists()

    @contextmanager
    def running(self, project: str, kind: str) -> Iterator[None]:
        """Hold the project's job lock for ``kind`` (waits while another job runs)."""
        with open(self._dir(project) / f"{kind}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def count_annotation(self, project: str, threshold: int) -> bool:
        """Count one annotation event; True (and reset) when ``threshold`` is reached."""
        path = self._dir(project) / "annotations"
        with open(self._dir(project) / "annotations.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            count = int(path.read_text() or 0) + 1 if path.exists() else 1
            reached = count >= threshold
            path.write_text("0" if reached else str(count))
            return reached

    def reset_annotations(self, project: str) -> None:
        (self._dir(project) / "annotations").write_text("0")


class ProgressWriter:
    """Writes a running job's progress to its record, at most once per ``interval`` seconds.

    The first report is always written: ``time.monotonic`` has no defined origin
    (on Linux it counts from boot), so no start value can stand for "never".
    """

    def __init__(self, board: JobBoard, record: JobRecord, interval: float = 1.0) -> None:
        self.board = board
        self.record = record
        self.interval = interval
        self._last: float | None = None

    def __call__(self, fraction: float, message: str) -> None:
        self.record.progress = round(float(fraction), 4)
        self.record.message = message
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval or fraction >= 1.0:
            self._last = now
            self.board.write(self.record)


def run_job(board: JobBoard, project: str, kind: str, work: Callable[[Callable[[float, str], None]], dict]) -> dict:
    """Run ``work`` as the project's ``kind`` job: lock, record, errors.

    The pending flag is cleared when the job starts, so events arriving while
    it runs queue exactly one more job. A failure is recorded and re-raised.
    """
    with board.running(project, kind):
        board.clear_pending(project, kind)
        record = board.read(project, kind) or JobRecord(project, kind)
        record = JobRecord(project, kind, status="running", queued=record.queued, started=_now())
        board.write(record)
        try:
            record.result = work(ProgressWriter(board, record))
        except BaseException as exc:
            record.status, record.error, record.finished = "failed", f"{type(exc).__name__}: {exc}", _now()
            board.write(record)
            raise
        record.status, record.progress, record.finished = "done", 1.0, _now()
        board.write(record)
        return record.result


class EmbeddedRunner:
    """Runs each job as a child process (``python -m backend <kind> --project P``).

    A child process, not a thread: a crash or an out-of-memory kill of a
    training cannot take the serving worker down, and its memory is returned
    when it ends. ``on_done(project, kind, ok)`` runs in this process after the
    child exits (the service reloads the model there).
    """

    def __init__(self, board: JobBoard, on_done: Callable[[str, str, bool], None], env: dict[str, str] | None = None) -> None:
        self.board = board
        self.on_done = on_done
        self.env = env

    def submit(self, project: str, kind: str) -> None:
        threading.Thread(target=self._run, args=(project, kind), name=f"{kind}-{project}", daemon=True).start()

    def _run(self, project: str, kind: str) -> None:
        command = [sys.executable, "-m", "backend", kind, "--project", project, "--quiet"]
        code = subprocess.call(command, env=self.env, stdin=subprocess.DEVNULL)
        ok = code == 0
        if not ok:
            record = self.board.read(project, kind)
            if record is None or record.finished is None:  # the job recorded no outcome: killed, or never started
                record = record or JobRecord(project, kind)
                record.status, record.error, record.finished = "failed", f"job process exited with {code}", _now()
                self.board.write(record)
            if record.started is None:  # it never ran: nothing will clear its pending flag
                self.board.clear_pending(project, kind)
        self.on_done(project, kind, ok)


class RQRunner:
    """Sends jobs to an RQ queue; ``rq worker`` processes (GPU machines) run them.

    The worker runs ``backend.cli.run_job_from_env`` with its own environment
    (MODEL_DIR shared with the serving replicas, which pick up new versions
    from there).
    """

    def __init__(self, redis_url: str, queue: str, timeout: int) -> None:
        from redis import Redis
        from rq import Queue

        self.queue = Queue(queue, connection=Redis.from_url(redis_url))
        self.timeout = timeout

    def submit(self, project: str, kind: str) -> None:
        self.queue.enqueue("backend.cli.run_job_from_env", project, kind, job_timeout=self.timeout)


class Scheduler:
    """Turns Label Studio events into at most one running and one waiting job per project.

    Args:
        board (JobBoard): shared state.
        submit (Callable[[str, str], None]): starts a job (EmbeddedRunner or RQRunner).
        train_every (int): annotation events that trigger a training.
    """

    def __init__(self, board: JobBoard, submit: Callable[[str, str], None], train_every: int) -> None:
        self.board = board
        self.submit = submit
        self.train_every = train_every

    def on_event(self, project: str, action: str) -> str:
        """What the event did: scheduled, coalesced, counted or ignored."""
        if action in TRAIN_NOW:
            return self.request(project, "train")
        if action in RANK_NEW:
            return self.request(project, "rank")
        if action in ANNOTATION_EVENTS:
            if self.board.count_annotation(project, self.train_every):
                return self.request(project, "train")
            return "counted"
        return "ignored"

    def request(self, project: str, kind: str) -> str:
        """Queue a job unless one is already waiting."""
        if kind == "train":
            self.board.reset_annotations(project)
        if not self.board.claim_pending(project, kind):
            return "coalesced"
        current = self.board.read(project, kind)
        if current is None or current.status != "running":  # a running job keeps its record; the flag says one waits
            self.board.write(JobRecord(project, kind))
        try:
            self.submit(project, kind)
        except Exception:
            self.board.clear_pending(project, kind)
            raise
        return "scheduled"

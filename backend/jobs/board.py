"""The job board: every job's state, shared through MODEL_DIR by all processes.

Everything a job needs to coordinate lives in MODEL_DIR, so it works the same
with one gunicorn worker, several, or RQ workers on other machines sharing
MODEL_DIR:

- ``<project>/.jobs/<kind>.json``: the last or running job's record (status,
  progress, error), readable by every process for /jobs and /health;
- ``<project>/.jobs/<kind>.pending``: a job is waiting to start. Created
  exclusively, so a burst of events queues at most one more job. It names its
  owner (``ProcessOwner``): a flag whose owner died (kill -9, a restart) is
  cleared at the next event or at start-up (``recover``), one whose owner
  cannot be checked (another host) after ``stale_after`` seconds;
- ``<project>/.jobs/<kind>.lock``: held (fcntl) by the job that runs, so at most
  one runs per project and kind; the kernel releases it if the job is killed;
  the job's record names the process, so a dead job's record reads as failed
  (or done, when the version it was saving had been published);
- ``<project>/.jobs/annotations``: annotation events since the last training.

A ranking whose shards run as RQ jobs (``backend/jobs/shards.py``) outlives
the job that planned it: its record names the run (``JobRecord.run``), holds
no lock, and the run's own steps write its progress and outcome
(``update_run``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from model.owners import ProcessOwner
from model.progress import Progress
from model.versions import VersionStore, is_project_id, project_id

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class JobRecord:
    """The state of a project's job of one kind, as shown by /jobs."""

    project: str
    kind: str
    status: str = "queued"  # queued | running | done | failed
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    queued: str = field(default_factory=utc_now)
    started: str | None = None
    finished: str | None = None
    result: dict = field(default_factory=dict)
    owner: dict | None = None  # ProcessOwner.to_json() of the process running it
    run: str | None = None  # a ranking handed on to RQ shards: its run, whose steps record the outcome


class HandedOn(dict):
    """What a job's work returns when it goes on in other processes (a ranking's RQ shards).

    ``run_job`` then leaves the record running, naming ``run``; the run's
    last step records its outcome (``JobBoard.update_run``).
    """

    def __init__(self, run: str, **result: object) -> None:
        super().__init__(result, run=run)
        self.run = run


def read_json(path: Path) -> object:
    """A small JSON file's content; None when it is empty or damaged (FileNotFoundError passes)."""
    try:
        return json.loads(path.read_text() or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _create_exclusive(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` unless it exists; readers never see it empty.

    Written to a private file first, then hard-linked into place: ``link``
    fails when the name exists, so exactly one of several callers wins.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Rewrite an existing file within the blocks it already holds (works on a full disk); False if it cannot."""
    try:
        with open(path, "r+b") as f:
            if len(data) > os.fstat(f.fileno()).st_blocks * 512:
                return False
            f.write(data)
            f.truncate()
        return True
    except OSError:
        return False


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
        path = self.root / project_id(project) / ".jobs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def read(self, project: str, kind: str) -> JobRecord | None:
        """The record, reconciled with what is on disk.

        A "running" record whose process died (kill -9, OOM killer) reads as
        failed, or as done when that process had already published its version
        (killed between the rename and the record's update).
        """
        try:
            record = JobRecord(**json.loads((self.root / project_id(project) / ".jobs" / f"{kind}.json").read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None
        if record.status == "running" and self._abandoned(project, kind, record):
            published = self._published_by(record)
            if published:
                record.status, record.progress, record.finished = "done", 1.0, record.finished or utc_now()
                record.result = {"model_version": published, "reconciled": "the job was killed after publishing it"}
            else:
                record.status = "failed"
                record.error = record.error or "the job's process died before it finished (killed?)"
        return record

    def _published_by(self, record: JobRecord) -> str | None:
        """The version a dead training had written (its meta names the writer), if any."""
        owner = ProcessOwner.from_json(record.owner)
        if record.kind != "train" or owner is None:
            return None
        versions = VersionStore(self.root).versions(record.project)
        return next((v.name for v in reversed(versions) if v.meta.writer == owner), None)

    def _abandoned(self, project: str, kind: str, record: JobRecord) -> bool:
        if record.run is not None:  # no process holds it: abandoned when no step wrote it for stale_after
            path = self.root / project_id(project) / ".jobs" / f"{kind}.json"
            return time.time() - path.stat().st_mtime > self.stale_after
        owner = ProcessOwner.from_json(record.owner)
        return (owner is not None and owner.is_gone()) or self._unlocked(project, kind)

    def _unlocked(self, project: str, kind: str) -> bool:
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
        """Replace the record atomically (readers never see half a file).

        When the disk is full the temporary file is removed (no empty ``.tmp``
        left behind) and the record is rewritten in the blocks the old one
        holds, so that a failure's cause ("No space left on device") still
        reaches /jobs.
        """
        path = self._dir(record.project) / f"{record.kind}.json"
        data = json.dumps(asdict(record), indent=1)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            if not _overwrite_in_place(path, data.encode()):
                raise

    def update_run(self, project: str, kind: str, run: str, change: Callable[[JobRecord], None]) -> bool:
        """Apply ``change`` to the record of ``run`` and write it; False (nothing written) when the
        record is another job's by now (a newer job superseded the run)."""
        with open(self._dir(project) / f"{kind}.record.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                record = self.read(project, kind)
                if record is None or record.run != run:
                    return False
                change(record)
                self.write(record)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def all(self) -> dict[str, dict[str, dict]]:
        """Every project's records, for /jobs."""
        found: dict[str, dict[str, dict]] = {}
        for path in sorted(self.root.glob("*/.jobs/*.json")):
            if not is_project_id(path.parent.parent.name):
                continue
            record = self.read(path.parent.parent.name, path.stem)
            if record is not None:
                shown = asdict(record) | {"next_queued": self.is_pending(record.project, record.kind)}
                found.setdefault(record.project, {})[record.kind] = shown
        return found

    def claim_pending(self, project: str, kind: str) -> bool:
        """True if this caller may queue a job (none is waiting already).

        A flag left by a process that is gone is cleared first. Two callers
        clearing the same stale flag at once may both queue a job: one
        training too many, never none.
        """
        path = self._dir(project) / f"{kind}.pending"
        self._clear_if_stale(path)
        return _create_exclusive(path, json.dumps(ProcessOwner.current().to_json()))

    def _clear_if_stale(self, path: Path) -> bool:
        """Remove a pending flag whose owner is gone, or older than ``stale_after``; True if removed."""
        try:
            age = time.time() - path.stat().st_mtime
            owner = ProcessOwner.from_json(read_json(path))
        except FileNotFoundError:
            return False
        if age > self.stale_after or (owner is not None and owner.is_gone()):
            path.unlink(missing_ok=True)
            logger.warning("cleared %s: its owner %s is gone", path, owner or "(unknown)")
            return True
        return False

    def recover(self) -> None:
        """At start-up: clear what dead processes left (pending flags) and record their jobs' outcome.

        A "running" record of a dead job is rewritten as ``read`` sees it
        (failed, or done when its version was published).
        """
        for flag in self.root.glob("*/.jobs/*.pending"):
            self._clear_if_stale(flag)
        for path in self.root.glob("*/.jobs/*.json"):
            if not is_project_id(path.parent.parent.name):
                continue
            stored = read_json(path)
            record = self.read(path.parent.parent.name, path.stem)
            if isinstance(stored, dict) and stored.get("status") == "running" and record and record.status != "running":
                self.write(record)

    def clear_pending(self, project: str, kind: str) -> None:
        (self._dir(project) / f"{kind}.pending").unlink(missing_ok=True)

    def is_pending(self, project: str, kind: str) -> bool:
        return (self.root / project_id(project) / ".jobs" / f"{kind}.pending").exists()

    @contextmanager
    def running(self, project: str, kind: str) -> Iterator[None]:
        """Hold the project's job lock for ``kind`` (waits while another job runs); the lock file names the holder."""
        with open(self._dir(project) / f"{kind}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                lock.truncate(0)
                lock.write(json.dumps(ProcessOwner.current().to_json()))
                lock.flush()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _counter(self, project: str) -> Iterator[Path]:
        """The annotation counter's file, under its lock (every gunicorn worker counts into it)."""
        with open(self._dir(project) / "annotations.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self._dir(project) / "annotations"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def count_annotation(self, project: str, threshold: int) -> bool:
        """Count one annotation event; True (and reset) when ``threshold`` is reached."""
        with self._counter(project) as path:
            count = int(path.read_text() or 0) + 1 if path.exists() else 1
            reached = count >= threshold
            path.write_text("0" if reached else str(count))
            return reached

    def reset_annotations(self, project: str) -> None:
        with self._counter(project) as path:
            path.write_text("0")


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


def run_job(board: JobBoard, project: str, kind: str, work: Callable[[Progress], dict]) -> dict:
    """Run ``work`` as the project's ``kind`` job: lock, record, errors.

    The pending flag is cleared when the job starts, so events arriving while
    it runs queue exactly one more job. A failure is recorded and re-raised;
    when even the record cannot be written (a full disk), the original error
    is what is raised, so the job process's last words name the cause.
    """
    with board.running(project, kind):
        board.clear_pending(project, kind)
        record = board.read(project, kind) or JobRecord(project, kind)
        record = JobRecord(
            project,
            kind,
            status="running",
            queued=record.queued,
            started=utc_now(),
            owner=ProcessOwner.current().to_json(),
        )
        board.write(record)
        try:
            result = work(ProgressWriter(board, record))
        except BaseException as exc:
            record.status, record.error, record.finished = "failed", f"{type(exc).__name__}: {exc}", utc_now()
            try:
                board.write(record)
            except OSError as write_error:
                logger.error("could not record the failure of %s %s: %s", kind, project, write_error)
            raise
        record.result = dict(result)
        if isinstance(result, HandedOn):  # its run's steps record the outcome
            record.run, record.owner = result.run, None
        else:
            record.status, record.progress, record.finished = "done", 1.0, utc_now()
        board.write(record)
        return record.result

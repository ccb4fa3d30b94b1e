"""Where jobs run: child processes of the serving process, or RQ workers.

``.queue/`` under MODEL_DIR holds the tickets and slot locks that bound the
job processes of all projects together (``JobSlots``), whichever process
asked for them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.jobs.board import JobBoard, JobRecord, read_json, utc_now
from model.owners import ProcessOwner

logger = logging.getLogger(__name__)


class JobSlots:
    """At most ``limit`` job processes at once, among all processes sharing MODEL_DIR, started in the order asked.

    Each job takes a ticket (a file named by the time it asked, naming its
    owner) in ``MODEL_DIR/.queue`` and waits until its ticket is the oldest and
    one of ``limit`` slot locks (fcntl) is free. The slot's descriptor is handed
    to the job process, so the slot stays taken while that process lives, even
    when the serving process that started it is killed, and the kernel frees it
    when the job ends. Tickets of processes that are gone are dropped.

    Args:
        root (Path): MODEL_DIR.
        limit (int): MAX_JOB_PROCESSES.
        stale_after (float): seconds after which a ticket whose owner cannot be
            checked (another host) is dropped.
        poll (float): seconds between looks at the queue while waiting.
    """

    def __init__(self, root: Path | str, limit: int, stale_after: float = 6 * 3600, poll: float = 0.2) -> None:
        self.folder = Path(root) / ".queue"
        self.limit = limit
        self.stale_after = stale_after
        self.poll = poll

    def ticket(self) -> Path:
        """A place in the queue, taken when the job is asked for (so the order is the order of the events)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ticket = self.folder / f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}.ticket"
        ticket.write_text(json.dumps(ProcessOwner.current().to_json()))
        return ticket

    @contextmanager
    def held(self, ticket: Path) -> Iterator[int]:
        """Wait for ``ticket``'s turn and a free slot; yields the slot lock's descriptor."""
        try:
            fd = self._wait_for_turn(ticket.name)
        finally:
            ticket.unlink(missing_ok=True)
        try:
            yield fd
        finally:
            os.close(fd)

    def _wait_for_turn(self, name: str) -> int:
        while True:
            if self._first() == name:
                fd = self._free_slot()
                if fd is not None:
                    return fd
            time.sleep(self.poll)

    def _first(self) -> str | None:
        """The oldest ticket whose owner may still be waiting; the others are removed."""
        for path in sorted(self.folder.glob("*.ticket")):
            try:
                owner = ProcessOwner.from_json(read_json(path))
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > self.stale_after or (owner is not None and owner.is_gone()):
                path.unlink(missing_ok=True)
                continue
            return path.name
        return None

    def _free_slot(self) -> int | None:
        for i in range(self.limit):
            fd = os.open(self.folder / f"slot-{i}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
        return None


# "2026-01-01 10:00:00,123 ERROR backend.jobs.entry: " before a job process's own words.
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ [\w.]+: ")


def _last_words(lines: deque[bytes]) -> str:
    """The last line a job process wrote to stderr, without the log prefix: its error, or a traceback's last line."""
    for raw in reversed(lines):
        line = raw.decode(errors="replace").strip()
        if line:
            return _LOG_PREFIX.sub("", line)[:500]
    return ""


def _run_child(command: list[str], env: dict[str, str] | None, slot: int) -> tuple[int, str]:
    """Run a job process holding ``slot``; its exit status and last words.

    Its stderr is passed on to ours line by line (the job's log stays in the
    service's) and its tail kept, because a process that cannot write its
    record (a full disk) can still say why it failed there.
    """
    tail: deque[bytes] = deque(maxlen=20)
    with subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(slot,)) as proc:
        for line in proc.stderr:
            tail.append(line)
            sys.stderr.write(line.decode(errors="replace"))
        code = proc.wait()
    return code, _last_words(tail)


class EmbeddedRunner:
    """Runs each job as a child process (``python -m backend <kind> --project P``).

    A child process, not a thread: a crash or an out-of-memory kill of a
    training cannot take the serving worker down, and its memory is returned
    when it ends. Jobs wait for a slot (``JobSlots``) before their process is
    started, so a flood of events for many projects starts them one after
    the other. ``on_done(project, kind, ok)`` runs in this process after the
    child exits (the service reloads the model there).
    """

    def __init__(
        self,
        board: JobBoard,
        on_done: Callable[[str, str, bool], None],
        env: dict[str, str] | None = None,
        slots: JobSlots | None = None,
    ) -> None:
        self.board = board
        self.on_done = on_done
        self.env = env
        self.slots = slots or JobSlots(board.root, 1, stale_after=board.stale_after)

    def submit(self, project: str, kind: str) -> None:
        ticket = self.slots.ticket()
        try:
            threading.Thread(
                target=self._run, args=(project, kind, ticket), name=f"{kind}-{project}", daemon=True
            ).start()
        except BaseException:
            ticket.unlink(missing_ok=True)
            raise

    def _run(self, project: str, kind: str, ticket: Path) -> None:
        command = [sys.executable, "-m", "backend", kind, "--project", project, "--quiet"]
        try:
            with self.slots.held(ticket) as slot:
                code, cause = _run_child(command, self.env, slot)
        except Exception as exc:  # the process could not be started: say so, free the flag
            logger.exception("%s for project %s could not start", kind, project)
            code, cause = None, f"{type(exc).__name__}: {exc}"
        if code != 0:
            self._record_failure(project, kind, code, cause)
        self.on_done(project, kind, code == 0)

    def _record_failure(self, project: str, kind: str, code: int | None, cause: str) -> None:
        """Record a job that recorded no outcome itself (killed, never started, disk full), with its cause."""
        record = self.board.read(project, kind)
        if record is None or record.finished is None:
            record = record or JobRecord(project, kind)
            said = f"job process exited with {code}" if code is not None else "job process did not start"
            record.status, record.error, record.finished = "failed", f"{said}: {cause}" if cause else said, utc_now()
            self.board.write(record)
        if record.started is None:  # it never ran: nothing will clear its pending flag
            self.board.clear_pending(project, kind)


class RQRunner:
    """Sends jobs to an RQ queue; ``rq worker`` processes (GPU machines) run them.

    The worker runs ``backend.jobs.entry.run_job_from_env`` with its own environment
    (MODEL_DIR shared with the serving replicas, which pick up new versions
    from there).
    """

    def __init__(self, redis_url: str, queue: str, timeout: int) -> None:
        from redis import Redis
        from rq import Queue

        self.queue = Queue(queue, connection=Redis.from_url(redis_url))
        self.timeout = timeout

    def submit(self, project: str, kind: str) -> None:
        self.queue.enqueue("backend.jobs.entry.run_job_from_env", project, kind, job_timeout=self.timeout)

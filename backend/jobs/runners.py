"""Where jobs and a ranking's shards run: child processes of the serving process, or RQ workers.

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
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from backend.jobs.board import HandedOn, JobBoard, JobRecord, read_json, utc_now
from backend.jobs.shards import (
    FIRST,
    FLIP,
    RunFolder,
    ShardFailed,
    ShardPlan,
    ensure_current,
    gate,
    pool_scores,
    shard_progress,
)
from model.hua import HUAConfig
from model.owners import ProcessOwner
from model.progress import Progress
from model.scoring import PoolScores

if TYPE_CHECKING:
    from redis.lock import Lock

logger = logging.getLogger(__name__)

REDUCE_LOCK_TTL_S = 60.0  # a dead reduce's lock lapses within this; RQ retries its job after the worker TTL


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

    def free_slot(self) -> int | None:
        """A free slot's lock descriptor at once, or None: for a process that joins a running job (a shard)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self._free_slot()


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

    While Redis is unreachable a job is not lost: it waits in
    ``MODEL_DIR/.outbox`` (its pending flag stays, so later events coalesce
    into it) and a thread of this process sends it once Redis answers again;
    a process started later sends what an earlier one left there.

    Args:
        root (Path | None): MODEL_DIR, where the outbox lives; None: no outbox (a failure raises).
        retry_every (float): seconds between tries to send the outbox.
    """

    def __init__(
        self, redis_url: str, queue: str, timeout: int, root: Path | str | None = None, retry_every: float = 2.0
    ) -> None:
        from rq import Queue

        self.queue = Queue(queue, connection=redis_connection(redis_url))
        self.timeout = timeout
        self.outbox = Path(root) / ".outbox" if root is not None else None
        self.retry_every = retry_every
        self._sender: threading.Thread | None = None
        self._lock = threading.Lock()
        if self.outbox is not None and any(self.outbox.glob("*.job")):
            self._start_sender()

    def submit(self, project: str, kind: str) -> None:
        from redis.exceptions import ConnectionError, TimeoutError

        try:
            self._enqueue(project, kind)
        except (ConnectionError, TimeoutError) as exc:
            if self.outbox is None:
                raise
            logger.warning("Redis is unreachable (%s): %s for project %s waits in %s", exc, kind, project, self.outbox)
            self.outbox.mkdir(parents=True, exist_ok=True)
            (self.outbox / f"{project}.{kind}.job").write_text(json.dumps({"project": project, "kind": kind}))
            self._start_sender()

    def _enqueue(self, project: str, kind: str) -> None:
        self.queue.enqueue("backend.jobs.entry.run_job_from_env", project, kind, job_timeout=self.timeout)

    def waiting(self) -> int:
        """Jobs in the outbox, waiting for Redis."""
        return len(list(self.outbox.glob("*.job"))) if self.outbox is not None else 0

    def _start_sender(self) -> None:
        with self._lock:
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(target=self._send_outbox, name="rq-outbox", daemon=True)
                self._sender.start()

    def _send_outbox(self) -> None:
        """Send the outbox's jobs, oldest first, until it is empty (trying every ``retry_every`` seconds)."""
        from redis.exceptions import ConnectionError, TimeoutError

        while jobs := sorted(self.outbox.glob("*.job"), key=lambda p: p.stat().st_mtime):
            try:
                for path in jobs:
                    job = json.loads(path.read_text())
                    self._enqueue(job["project"], job["kind"])
                    path.unlink(missing_ok=True)
                    logger.info("Redis is back: %s for project %s sent", job["kind"], job["project"])
            except (ConnectionError, TimeoutError, FileNotFoundError):
                time.sleep(self.retry_every)


def redis_connection(url: str, timeout: float = 2.0):
    """A Redis client that gives up after ``timeout`` seconds, so a request never waits on a Redis that is down."""
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)


class ProcessShards:
    """Runs a ranking's shards as child processes (``python -m backend rank-shard``), several at once.

    The rank job's own process (and its MAX_JOB_PROCESSES slot) stands for
    the first; each further one needs a free slot of ``JobSlots``, taken
    without waiting, so the bound holds across all jobs. A shard whose process
    fails or is killed is run again, up to ``retries`` more times.
    """

    def __init__(
        self, slots: JobSlots, processes: int, retries: int, env: dict[str, str] | None, poll: float = 0.2
    ) -> None:
        self.root = slots.folder.parent  # MODEL_DIR
        self.slots = slots
        self.processes = processes
        self.retries = retries
        self.env = env
        self.poll = poll
        self.timings: list[tuple[str, int, float]] = []  # (stage, shard, seconds) of each finished shard process

    def rank(self, folder: RunFolder, plan: ShardPlan, hua: HUAConfig, progress: Progress | None) -> PoolScores:
        """Both map steps here, with the reduce steps in this process between and after them."""

        def report() -> None:
            if progress:
                progress(*shard_progress(folder, plan))

        def check() -> None:
            ensure_current(self.root, plan.project, plan.run)

        try:
            self.map(folder, FIRST, plan.first_shards, report, check)
            candidates = gate(folder, plan, hua)
            self.map(folder, FLIP, len(candidates), report, check)
            return pool_scores(folder, plan, hua)
        finally:
            shutil.rmtree(folder.path, ignore_errors=True)

    def cancel(self, project: str, run: str) -> None:
        """Nothing to do: the superseded run's own process sees the newer run and stops its shards."""

    def map(self, folder: RunFolder, stage: str, count: int, on_done: Callable[[], None], check: Callable) -> None:
        """Run shards 0..count-1 of ``stage``; raises ``ShardFailed``, or ``Superseded`` from ``check``."""
        plan = folder.plan()
        todo = [i for i in range(count) if not folder.result(stage, i).exists()]
        tries = dict.fromkeys(todo, 0)
        running: dict[int, tuple[subprocess.Popen, int | None, float]] = {}
        try:
            while todo or running:
                check()
                self._start(folder, plan, stage, todo, running, tries)
                time.sleep(self.poll)
                for index, (proc, slot, started) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[index]
                    _close(slot)
                    if proc.returncode == 0 and folder.result(stage, index).exists():
                        self.timings.append((stage, index, time.monotonic() - started))
                        on_done()
                    elif tries[index] <= self.retries:
                        logger.warning("%s; trying again", folder.reason(stage, index))
                        todo.append(index)
                    else:
                        raise ShardFailed(folder.reason(stage, index))
        finally:
            for proc, slot, _ in running.values():
                proc.kill()
                proc.wait()
                _close(slot)

    def _start(self, folder: RunFolder, plan: ShardPlan, stage: str, todo: list, running: dict, tries: dict) -> None:
        while todo and len(running) < self.processes:
            slot = None
            if running:  # beyond the rank job's own slot: only with a free one
                slot = self.slots.free_slot()
                if slot is None:
                    return
            index = todo.pop(0)
            tries[index] += 1
            folder.error(stage, index).unlink(missing_ok=True)
            proc = subprocess.Popen(
                shard_command(plan, stage, index), env=self.env, stdin=subprocess.DEVNULL, pass_fds=_fds(slot)
            )
            running[index] = (proc, slot, time.monotonic())


def shard_command(plan: ShardPlan, stage: str, index: int) -> list[str]:
    """The command line of one shard (``backend/cli.py``)."""
    return [
        *(sys.executable, "-m", "backend", "rank-shard", "--project", plan.project, "--version", plan.version),
        *("--run", plan.run, "--stage", stage, "--shard", str(index)),
    ]


def _fds(slot: int | None) -> tuple[int, ...]:
    return () if slot is None else (slot,)


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


SHARD_JOB = "backend.jobs.entry.run_shard_from_env"
REDUCE_JOB = "backend.jobs.entry.reduce_ranking_from_env"


class RQShards:
    """A ranking's shards as RQ jobs: any number of ``rq worker``s share one ranking.

    Each stage is its shard jobs (retried by RQ: ``Retry``) and one reduce job
    that depends on all of them (``Dependency(allow_failure=True)``), so it
    runs once every shard has finished or failed for good, and says which;
    a reduce is retried too (it only reads the shards' results).
    The first reduce enqueues the second stage the same way; the last one
    pushes the ranking and records the outcome.
    """

    def __init__(self, redis_url: str, queue: str, timeout: int, retries: int) -> None:
        from rq import Queue

        self.queue = Queue(queue, connection=redis_connection(redis_url, timeout=10.0))
        self.timeout = timeout
        self.retries = retries

    def rank(self, folder: RunFolder, plan: ShardPlan, hua: HUAConfig, progress: Progress | None) -> HandedOn:
        self.enqueue(plan, FIRST, plan.first_shards)
        return HandedOn(plan.run, version=plan.version, tasks=len(plan.items), shards=plan.first_shards)

    def enqueue(self, plan: ShardPlan, stage: str, count: int) -> None:
        """Stage ``stage``'s ``count`` shard jobs and its reduce job, which waits for all of them."""
        from rq import Retry
        from rq.job import Dependency

        retry = Retry(max=self.retries) if self.retries else None
        args = (plan.project, plan.version, plan.run, stage)
        shards = [
            self.queue.enqueue(
                SHARD_JOB, *args, i, job_id=_job_id(plan, f"{stage}-{i}"), job_timeout=self.timeout, retry=retry
            )
            for i in range(count)
        ]
        depends = Dependency(jobs=shards, allow_failure=True) if shards else None
        self.queue.enqueue(
            REDUCE_JOB,
            *args,
            job_id=_job_id(plan, f"reduce-{stage}"),
            job_timeout=self.timeout,
            depends_on=depends,
            retry=retry,
        )

    @contextmanager
    def reduce_lock(self, project: str, run: str, stage: str, ttl: float = REDUCE_LOCK_TTL_S) -> Iterator[None]:
        """Hold a Redis lock for one reduce step of a run's stage (waiting up to the job timeout for it).

        RQ can start a reduce twice, even at once: two shards that fail together
        each see every dependency ended and each enqueue it. The second one waits
        here, then sees the first's outcome (``RunFolder.reduced``). The lock
        lives ``ttl`` seconds and is renewed while its holder runs, so one whose
        process died lapses about as soon as RQ retries its job.
        """
        from redis.exceptions import LockError

        name = f"{_run_prefix(project, run)}reduce-{stage}:lock"
        # thread_local=False: the renewing thread uses the token the acquiring thread got
        lock = self.queue.connection.lock(name, timeout=ttl, blocking_timeout=self.timeout, thread_local=False)
        if not lock.acquire():
            raise LockError(f"{name}: still held after {self.timeout} s")
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lock, ttl / 3, stop), name="reduce-lock", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                lock.release()
            except LockError as exc:  # it lapsed (Redis restarted?): the step's work is done all the same
                logger.warning("%s: %s", name, exc)

    def cancel(self, project: str, run: str) -> None:
        """Cancel a superseded run's jobs: those waiting are cancelled, those running stopped."""
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job, JobStatus

        prefix = _run_prefix(project, run)
        for job_id in self._job_ids(prefix):
            try:
                job = Job.fetch(job_id, connection=self.queue.connection)
                if job.get_status() == JobStatus.STARTED:
                    send_stop_job_command(self.queue.connection, job_id)
                elif job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                    job.cancel()
            except (NoSuchJobError, InvalidJobOperation):
                continue

    def _job_ids(self, prefix: str) -> list[str]:
        q = self.queue
        ids = [*q.get_job_ids(), *q.deferred_job_registry.get_job_ids(), *q.scheduled_job_registry.get_job_ids()]
        ids += [i.split(":")[0] for i in q.started_job_registry.get_job_ids()]  # {job id}:{execution id}
        return sorted({i for i in ids if i.startswith(prefix)})


def _renew(lock: Lock, every: float, stop: threading.Event) -> None:
    """Reset ``lock``'s time to live every ``every`` seconds until ``stop`` (or until it is lost)."""
    from redis.exceptions import LockError, RedisError

    while not stop.wait(every):
        try:
            lock.reacquire()
        except (LockError, RedisError) as exc:
            logger.warning("reduce lock %s not renewed: %s", lock.name, exc)
            return


def _run_prefix(project: str, run: str) -> str:
    """What the RQ ids of a run's jobs (and its reduce locks) start with."""
    return f"hua-rank-{project}-{run}-"


def _job_id(plan: ShardPlan, step: str) -> str:
    return _run_prefix(plan.project, plan.run) + step

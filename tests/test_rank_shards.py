"""A ranking in shards (backend/jobs/shards.py): the same task scores as one process, in child
processes (MAX_JOB_PROCESSES > 1) and on RQ workers, with shards that fail, are killed or are
superseded.

The real small detector on the CPU (``test_scoring.calibrated_model``), local image files, and
the in-memory Label Studio of ``test_ranking_job`` (over HTTP for the RQ workers). A pool of 11
unlabeled tasks (one image broken) with BATCH_SIZE 2 and RANK_SHARD_SIZE 4: 3 first-pass
shards, P = 5 candidates, 2 mirrored-pass shards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_ranking_job import FakeLabelStudio, _car_annotation
from test_rq import redis_server
from test_scoring import CONFIG, calibrated_model, make_image
from torchvision.transforms.functional import to_pil_image

from backend.app import create_app
from backend.jobs.board import run_job
from backend.jobs.entry import ranking_job
from backend.jobs.shards import RunFolder, ShardFailed, Superseded, current_run
from backend.labels import parse_label_config
from backend.ranking_store import RANKING_FILE
from backend.service import build_service
from helpers import LABEL_CONFIG, LABELS, make_settings, predict_body
from model.version_meta import VersionMeta

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PROJECT = "9"
NAMES = parse_label_config(LABEL_CONFIG)
SIZES = [(64, 48), (48, 64), (56, 56), (40, 48), (64, 40), (52, 60), (60, 52), (44, 60), (64, 56), (48, 48)]
LABELED, BROKEN = 1, 12
SHARDING = dict(batch_size=2, rank_shard_size=4, hua_min_candidates=0, hua_retrieval_fraction=0.5)
REPO_ROOT = Path(__file__).resolve().parent.parent


def _task(task_id: int) -> dict:
    annotations = [_car_annotation()] if task_id == LABELED else []
    name = "broken.png" if task_id == BROKEN else f"s{task_id}.png"
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d={name}"},
        "annotations": annotations,
        "total_annotations": len(annotations),
        "is_labeled": bool(annotations),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard-images")
    for task_id, (w, h) in enumerate(SIZES, start=1):
        to_pil_image(make_image(100 + task_id, w, h)).save(root / f"s{task_id}.png")
    to_pil_image(make_image(200, 36, 52)).save(root / "s11.png")
    (root / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """MODEL_DIR with the project's first version: the calibrated real detector."""
    path = tmp_path_factory.mktemp("shard-models")
    meta = VersionMeta(
        labels=list(LABELS), backbone=CONFIG.backbone, weights="none", weights_requested="none", parent=None
    )
    settings = make_settings(path)
    build_service(settings).store.save(PROJECT, calibrated_model().state_dict(), meta)
    return path


def _service(model_dir: Path, root: Path, fake: FakeLabelStudio | None = None, **overrides):
    settings = make_settings(model_dir, local_files_document_root=str(root), **(SHARDING | overrides))
    return build_service(settings, ls_client=fake or FakeLabelStudio([_task(i) for i in range(1, 13)]))


def _stored(service) -> dict:
    version = service.store.get(PROJECT, "v0001")
    return json.loads((version.path / RANKING_FILE).read_text())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every process of a ranking here computes with one torch thread, as the RQ workers do. A
    convolution summed over another thread count rounds otherwise (CI, where an earlier test had
    left pytest at one thread, saw raw metrics differ in the 5th digit and boxes by 0.03 % of the
    image), and a shard must change nothing but the process the work runs in."""
    threads, saved = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the child processes' (ProcessShards passes os.environ on)
    yield
    torch.set_num_threads(threads)
    if saved is None:
        del os.environ["OMP_NUM_THREADS"]
    else:
        os.environ["OMP_NUM_THREADS"] = saved


@pytest.fixture(scope="module")
def one_process(model_dir, root) -> dict:
    """The reference: the whole pool ranked in the rank job's process (MAX_JOB_PROCESSES=1)."""
    service = _service(model_dir, root)
    result = ranking_job(service).run(PROJECT, full=True)
    assert result["ranked"] == 10 and set(result["failed"]) == {BROKEN}
    return _stored(service)


def _children(parent: int, marker: bytes = b"") -> list[int]:
    """Pids of the child processes of ``parent`` whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and marker in cmdline:
            found.append(int(proc.name))
    return found


def _in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


class TestChildProcesses:
    def test_the_same_scores_as_one_process(self, model_dir, root, one_process):
        service = _service(model_dir, root, max_job_processes=2)
        messages: list[str] = []
        result = ranking_job(service).run(PROJECT, lambda f, m: messages.append(m), full=True)
        stored = _stored(service)
        assert result["ranked"] == 10 and set(result["failed"]) == {BROKEN}
        assert stored == one_process  # scores, boxes, raw metrics and the stored scale alike
        assert any(re.fullmatch(r"[48] of 11 tasks scored, [12] of 3 shards", m) for m in messages), messages
        assert "11 of 11 tasks scored, 3 of 3 shards" in messages
        assert "5 of 5 candidates double-checked (mirrored), 2 of 2 shards" in messages
        assert list((service.store.get(PROJECT, "v0001").path / "shards").iterdir()) == []  # a run's files go

    def test_a_killed_shard_is_run_again(self, model_dir, root, one_process, caplog):
        service = _service(model_dir, root, max_job_processes=2)
        caplog.set_level(logging.WARNING, logger="backend.jobs.runners")
        thread, outcome = _in_thread(lambda: ranking_job(service).run(PROJECT, full=True))
        deadline = time.monotonic() + 120
        while not (shards := _children(os.getpid(), b"rank-shard")):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(shards[0], signal.SIGKILL)
        thread.join(300)
        assert "error" not in outcome, outcome
        assert any("died without a word" in m and "trying again" in m for m in caplog.messages), caplog.messages
        assert _stored(service) == one_process

    def test_a_shard_that_keeps_failing_fails_the_ranking(self, model_dir, root, one_process, tmp_path):
        """Every try of every shard fails (its version's weights are damaged after the rank job
        loaded them): the ranking fails with the shard's reason and pushes nothing; the
        version's previous ranking stays."""
        fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
        service = _service(model_dir, root, fake, max_job_processes=2, rank_shard_retries=1)
        service.registry.get(PROJECT, NAMES.labels, NAMES.aliases)  # the rank job's model, loaded before the damage
        weights = service.store.get(PROJECT, "v0001").weights_path
        saved = tmp_path / "weights.pt"
        saved.write_bytes(weights.read_bytes())
        try:
            weights.write_bytes(b"damaged")
            with pytest.raises(ShardFailed, match=r"shard first \d failed: .*Error"):
                ranking_job(service).run(PROJECT, full=True)
        finally:
            weights.write_bytes(saved.read_bytes())
        assert fake.predictions == []
        assert _stored(service) == one_process

    def test_a_newer_ranking_supersedes_a_running_one(self, model_dir, root):
        fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
        service = _service(model_dir, root, fake, max_job_processes=2)
        job = ranking_job(service)
        thread, outcome = _in_thread(lambda: job.run(PROJECT, full=True))
        deadline = time.monotonic() + 120
        while not _children(os.getpid(), b"rank-shard"):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.05)
        newer = job.claim(PROJECT)
        thread.join(60)
        assert isinstance(outcome.get("error"), Superseded), outcome
        assert current_run(service.store.root, PROJECT) == newer
        assert fake.predictions == []  # no stale order pushed
        assert _children(os.getpid(), b"rank-shard") == []  # its shards are stopped, not left to finish


# --------------------------------------------------------------------------
# RQ: 2 rq workers on a real redis-server
# --------------------------------------------------------------------------

RQ = Path(sys.executable).parent / "rq"
DOWN_S = 60  # how long Redis stays down: a minute, the scenario


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _worker_env(model_dir: Path, root: Path, ls_url: str, redis_url: str, **overrides) -> dict[str, str]:
    settings = make_settings(
        model_dir,
        local_files_document_root=str(root),
        label_studio_url=ls_url,
        api_key="token",
        redis_url=redis_url,
        **(SHARDING | overrides),
    )
    return os.environ | settings.to_env() | {"OMP_NUM_THREADS": "1"}


@contextmanager
def _rq_workers(
    env: dict[str, str], logs: Path, count: int = 2, supervise: bool = False
) -> Iterator[list[subprocess.Popen]]:
    """``count`` ``rq worker`` processes on queue hua, stopped (SIGTERM, then SIGKILL) after.

    ``supervise``: a worker that exits is started again, as a deployment's supervisor (systemd, Docker's
    restart policy) does; their registry maintenance runs every 30 s, so jobs whose worker died are
    retried soon after their heartbeat (90 s) lapses.
    """
    files = [open(logs / f"worker{i}.log", "ab") for i in range(count)]
    command = [
        str(RQ),
        "worker",
        "--url",
        env["REDIS_URL"],
        "--worker-ttl",
        "60",
        "--maintenance-interval",
        "30",
        "hua",
    ]
    workers = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=f, stderr=f) for f in files]
    stop = threading.Event()

    def restart() -> None:
        while not stop.wait(1.0):
            for i, worker in enumerate(workers):
                if worker.poll() is not None:
                    workers[i] = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=files[i], stderr=files[i])

    supervisor = threading.Thread(target=restart, daemon=True)
    if supervise:
        supervisor.start()
    try:
        yield workers
    finally:
        stop.set()
        if supervise:
            supervisor.join()
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for f in files:
            f.close()


def _hand_to_rq(service) -> dict:
    """The rank job as the service runs it: planned here, handed on to the RQ shards."""
    job = ranking_job(service)
    run = job.claim(PROJECT)
    return run_job(service.board, PROJECT, "rank", lambda p: job.run(PROJECT, p, full=True, run=run))


def _wait_while_running(service, logs: Path, deadline: float) -> tuple[object, set[str]]:
    messages = set()
    while (record := service.board.read(PROJECT, "rank")).status == "running":
        assert time.monotonic() < deadline, (record, _tails(logs))
        messages.add(record.message)
        time.sleep(0.1)
    return record, messages


def _horses(workers: list[subprocess.Popen]) -> list[int]:
    """The work horses (the forked processes that run a job) of ``workers``."""
    return [pid for worker in workers for pid in _children(worker.pid)]


def _nothing_left(redis_url: str, within: float = 15.0) -> None:
    """No job of queue hua left queued, deferred, scheduled or started (the last job's bookkeeping may
    end just after it recorded the ranking's outcome)."""
    from redis import Redis
    from rq import Queue

    queue = Queue("hua", connection=Redis.from_url(redis_url))
    deadline = time.monotonic() + within
    while True:
        registries = (queue.deferred_job_registry, queue.started_job_registry, queue.scheduled_job_registry)
        left = [queue.count, *(r.count for r in registries)]
        if not any(left) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not any(left), f"queued, deferred, started, scheduled: {left}"


def test_rq_workers_give_the_same_scores_with_a_horse_killed(model_dir, root, one_process, redis_url, tmp_path):
    from fake_labelstudio import LabelStudioStub
    from redis import Redis

    Redis.from_url(redis_url).flushall()
    fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
    with (
        LabelStudioStub(fake) as stub,
        _rq_workers(_worker_env(model_dir, root, stub.url, redis_url), tmp_path) as workers,
    ):
        service = _service(model_dir, root, fake, redis_url=redis_url)
        handed = _hand_to_rq(service)
        assert handed["shards"] == 3 and service.board.read(PROJECT, "rank").status == "running"
        deadline = time.monotonic() + 240
        while not (horses := _horses(workers)):
            assert time.monotonic() < deadline, _tails(tmp_path)
            time.sleep(0.05)
        time.sleep(0.5)
        os.kill(horses[0], signal.SIGKILL)
        record, messages = _wait_while_running(service, tmp_path, deadline)
        _nothing_left(redis_url)
    assert record.status == "done", (record, _tails(tmp_path))
    assert any(re.fullmatch(r"\d+ of 11 tasks scored, \d of 3 shards", m) for m in messages), messages
    logged = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("worker*.log"))
    assert re.search(r"Work horse killed for job hua-rank-9-[\w-]+-first-\d", logged), logged[-3000:]
    assert _stored(service) == one_process
    assert {p["task"] for p in fake.predictions} == {int(k) for k in one_process["tasks"]}
    assert record.result["ranked"] == 10


def test_rq_a_shard_that_keeps_failing_fails_the_ranking(model_dir, root, one_process, redis_url, tmp_path):
    from fake_labelstudio import LabelStudioStub
    from redis import Redis

    Redis.from_url(redis_url).flushall()
    fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
    service = _service(model_dir, root, fake, redis_url=redis_url, rank_shard_retries=1)
    service.registry.get(PROJECT, NAMES.labels, NAMES.aliases)  # the rank job's model, loaded before the damage
    weights = service.store.get(PROJECT, "v0001").weights_path
    saved = weights.read_bytes()
    env = _worker_env(model_dir, root, "", redis_url, rank_shard_retries=1)
    try:
        weights.write_bytes(b"damaged")
        with LabelStudioStub(fake) as stub, _rq_workers(env | {"LABEL_STUDIO_URL": stub.url}, tmp_path):
            _hand_to_rq(service)
            record, _ = _wait_while_running(service, tmp_path, time.monotonic() + 240)
            _nothing_left(redis_url)
    finally:
        weights.write_bytes(saved)
    assert record.status == "failed", (record, _tails(tmp_path))
    assert re.match(r"ShardFailed: shard first \d failed: UnpicklingError", record.error), record.error
    assert fake.predictions == []
    assert _stored(service) == one_process


def _reduce_twice(stage: str, handed: dict, at_once: bool, caplog) -> None:
    """A stage's reduce step started twice, as RQ does when two shards end together (each sees every
    dependency ended, and each enqueues the reduce): at once, or the second once the first has ended."""
    from backend.jobs.entry import reduce_ranking_from_env

    barrier = threading.Barrier(2 if at_once else 1)

    def reduce() -> None:
        barrier.wait()
        reduce_ranking_from_env(PROJECT, handed["version"], handed["run"], stage)

    threads = [threading.Thread(target=reduce) for _ in range(2)]
    with caplog.at_level(logging.INFO, logger="backend.jobs.entry"):
        for thread in threads:
            thread.start()
            if not at_once:
                thread.join(120)
        for thread in threads:
            thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    skipped = [r for r in caplog.records if f"its {stage} reduce step has run already" in r.getMessage()]
    assert len(skipped) == 1, "the reduce step ran twice"


def _shards_here(handed: dict, stage: str, count: int) -> None:
    """Shards 0..count-1 of ``stage`` run in this process (what an RQ worker's job runs); a failing one fails."""
    from backend.jobs.entry import run_shard_from_env

    for index in range(count):
        try:
            run_shard_from_env(PROJECT, handed["version"], handed["run"], stage, index)
        except Exception:  # its reason is in the run's folder, as on a worker
            continue


@pytest.fixture
def worker_environ(model_dir, root, redis_url, monkeypatch) -> Iterator[FakeLabelStudio]:
    """This process's environment as an RQ worker's, against an HTTP Label Studio stub."""
    from fake_labelstudio import LabelStudioStub
    from redis import Redis

    Redis.from_url(redis_url).flushall()
    fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
    with LabelStudioStub(fake) as stub:
        for key, value in _worker_env(model_dir, root, stub.url, redis_url).items():
            monkeypatch.setenv(key, value)
        yield fake


@pytest.mark.parametrize("at_once", [True, False], ids=["at-once", "one-after-the-other"])
def test_rq_a_reduce_started_twice_pushes_and_records_once(
    model_dir, root, one_process, redis_url, worker_environ, at_once, caplog
):
    fake = worker_environ
    service = _service(model_dir, root, fake, redis_url=redis_url)
    handed = _hand_to_rq(service)
    _shards_here(handed, "first", handed["shards"])
    _reduce_twice("first", handed, at_once, caplog)
    folder = RunFolder(service.store.get(PROJECT, handed["version"]), handed["run"])
    _shards_here(handed, "flip", len(folder.candidates()))
    _reduce_twice("flip", handed, at_once, caplog)
    record = service.board.read(PROJECT, "rank")
    assert record.status == "done" and record.result["ranked"] == 10, record
    assert len(fake.predictions) == 10  # one push
    assert _stored(service) == one_process
    assert not folder.path.exists()


@pytest.mark.parametrize("at_once", [True, False], ids=["at-once", "one-after-the-other"])
def test_rq_a_failed_reduce_started_twice_keeps_its_reason(model_dir, root, redis_url, worker_environ, at_once, caplog):
    """The outcome of the first of two reduces stays: the second neither fails on the removed run
    folder (FileNotFoundError, as CI once saw) nor overwrites the reason."""
    service = _service(model_dir, root, worker_environ, redis_url=redis_url)
    service.registry.get(PROJECT, NAMES.labels, NAMES.aliases)  # the rank job's model, loaded before the damage
    weights = service.store.get(PROJECT, "v0001").weights_path
    saved = weights.read_bytes()
    try:
        weights.write_bytes(b"damaged")
        handed = _hand_to_rq(service)
        _shards_here(handed, "first", handed["shards"])
        _reduce_twice("first", handed, at_once, caplog)
    finally:
        weights.write_bytes(saved)
    record = service.board.read(PROJECT, "rank")
    assert record.status == "failed", record
    assert re.match(r"ShardFailed: shard first \d failed: UnpicklingError", record.error), record.error
    assert worker_environ.predictions == []


def test_rq_a_newer_ranking_cancels_the_running_ones_shards(model_dir, root, one_process, redis_url, tmp_path):
    """A newer ranking on RQ: the running one's queued shards are cancelled and its running shard
    stopped, so it never pushes; the newer one completes with the same scores."""
    from fake_labelstudio import LabelStudioStub
    from redis import Redis
    from rq.job import Job, JobStatus

    connection = Redis.from_url(redis_url)
    connection.flushall()
    fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
    with (
        LabelStudioStub(fake) as stub,
        _rq_workers(_worker_env(model_dir, root, stub.url, redis_url), tmp_path, count=1) as workers,
    ):
        service = _service(model_dir, root, fake, redis_url=redis_url)
        older = _hand_to_rq(service)["run"]
        deadline = time.monotonic() + 240
        running = Job.fetch(f"hua-rank-{PROJECT}-{older}-first-0", connection=connection)
        # a horse is forked before its job is marked started; in between, no registry lists the job, so a
        # cancel cannot reach it and the shard ends itself at its next check (FINISHED, not STOPPED)
        while not (_horses(workers) and running.get_status() == JobStatus.STARTED):
            assert time.monotonic() < deadline, _tails(tmp_path)
            time.sleep(0.05)
        newer = _hand_to_rq(service)["run"]
        record, _ = _wait_while_running(service, tmp_path, deadline)
        _nothing_left(redis_url)
        old_jobs = [
            Job.fetch(f"hua-rank-{PROJECT}-{older}-{step}", connection=connection)
            for step in ("first-0", "first-1", "first-2", "reduce-first")
        ]
        statuses = [job.get_status() for job in old_jobs]
    assert record.status == "done" and record.run == newer, (record, _tails(tmp_path))
    assert statuses[0] == JobStatus.STOPPED, statuses  # it was running: stopped, not left to finish
    assert set(statuses[1:]) == {JobStatus.CANCELED}, statuses
    assert len(fake.predictions) == 10  # the newer ranking's push only
    assert _stored(service) == one_process


def _redis_server(port: int, folder: Path) -> subprocess.Popen:
    """redis-server with its state kept on disk (append-only file), as a deployment's is: a restart loses no job."""
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--appendonly", "yes"]
    log = open(folder / "redis.log", "ab")  # noqa: SIM115  (open while the server runs)
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 30
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip() != b"PONG":
        assert proc.poll() is None and time.monotonic() < deadline, (folder / "redis.log").read_text()
        time.sleep(0.1)
    return proc


def _timed(call) -> tuple[object, float]:
    start = time.monotonic()
    answer = call()
    return answer, time.monotonic() - start


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_stopped_in_the_middle_of_a_ranking(model_dir, root, one_process, tmp_path):
    """Redis stops while 2 workers run a sharded ranking and comes back DOWN_S later: meanwhile /health says
    degraded and names Redis, /webhook and /predict answer at once, and a training trigger waits; after,
    the trigger's job runs, the ranking ends (done, or failed with its reason) and nothing stays pending."""
    from fake_labelstudio import LabelStudioStub

    from labelstudio import free_port, stop_process

    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}"
    redis = _redis_server(port, tmp_path)
    fake = FakeLabelStudio([_task(i) for i in range(1, 13)])
    try:
        with (
            LabelStudioStub(fake) as stub,
            _rq_workers(_worker_env(model_dir, root, stub.url, redis_url), tmp_path, supervise=True) as workers,
        ):
            service = _service(model_dir, root, fake, redis_url=redis_url)
            client = create_app(service=service).test_client()
            _hand_to_rq(service)
            deadline = time.monotonic() + 240
            while not _horses(workers):
                assert time.monotonic() < deadline, _tails(tmp_path)
                time.sleep(0.05)
            stop_process(redis)
            health, health_s = _timed(lambda: client.get("/health").get_json())
            assert health["status"] == "degraded" and any("Redis" in p for p in health["problems"]), health
            hook, hook_s = _timed(
                lambda: client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 10}})
            )
            assert hook.status_code == 202 and hook.get_json()["status"] == "scheduled"
            predicted, predict_s = _timed(lambda: client.post("/predict", json=predict_body([_task(2)], project="9.1")))
            assert predicted.status_code == 200 and predicted.get_json()["results"], predicted.get_json()
            assert max(health_s, hook_s, predict_s) < 3, (health_s, hook_s, predict_s)
            time.sleep(DOWN_S)
            redis = _redis_server(port, tmp_path)
            deadline = time.monotonic() + 400
            record, _ = _wait_while_running(service, tmp_path, deadline)
            while (train := service.board.read("10", "train")) is None or train.status in ("queued", "running"):
                assert time.monotonic() < deadline, (train, _tails(tmp_path))
                time.sleep(0.2)
            assert not any("Redis" in p for p in client.get("/health").get_json().get("problems", []))
            _nothing_left(redis_url)
    finally:
        stop_process(redis)
    assert record.status == "done" or record.error, (record, _tails(tmp_path))
    if record.status == "done":
        assert _stored(service) == one_process
    assert "ProjectNotFound" in train.error  # the trigger's job ran, once Redis was back
    assert not service.board.is_pending("10", "train") and not service.board.is_pending(PROJECT, "rank")
    assert list((model_dir / ".outbox").glob("*.job")) == []


def _tails(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(folder.glob("worker*.log")))

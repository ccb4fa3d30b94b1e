"""The RQ path (REDIS_URL set): webhooks enqueue jobs on a real redis-server, and
``rq worker`` processes run them with ``backend.jobs.entry.run_job_from_env``.

redis-server is started on a free loopback port for this module (nothing is
saved to disk). The test that trains needs a real Label Studio and is marked e2e.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backend.app import create_app
from backend.service import RQ_QUEUE, app_service
from helpers import LABEL_CONFIG, make_settings

# The Label Studio harness is a plugin (one server per session); pytest imports it,
# so its helpers are imported inside the functions below.
REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RQ = Path(sys.executable).parent / "rq"


@contextmanager
def redis_server(base: Path) -> Iterator[str]:
    """A redis-server on a free loopback port, saving nothing to disk; yields its URL, stops it after."""
    from labelstudio import free_port, log_tail, stop_process

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")
    from redis import Redis

    port = free_port()
    log = base / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"redis://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if Redis.from_url(url, socket_timeout=1).ping():
                break
        except Exception:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"redis-server did not start\n{log_tail(log)}", pytrace=False)
        time.sleep(0.1)
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def redis(redis_url):
    """A connection to an empty redis (every test starts with no queued job)."""
    from redis import Redis

    conn = Redis.from_url(redis_url)
    conn.flushall()
    yield conn
    conn.flushall()


def _queue(redis):
    from rq import Queue

    return Queue(RQ_QUEUE, connection=redis)


def _webhook(client, action: str, project: int):
    response = client.post("/webhook", json={"action": action, "project": {"id": project}})
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    return response.get_json()["status"]


def _child_env() -> dict[str, str]:
    from labelstudio import _child_env as child_env

    return child_env()


def log_tail(path: Path) -> str:
    from labelstudio import log_tail as tail

    return tail(path)


def _run_worker(redis_url: str, env: dict[str, str], log: Path, timeout: float = 600) -> int:
    """``rq worker --burst``: runs what is queued, then exits."""
    with open(log, "wb") as out:
        return subprocess.run(
            [str(RQ), "worker", "--burst", "--url", redis_url, RQ_QUEUE],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        ).returncode


def test_webhooks_enqueue_one_job(redis, redis_url, tmp_path):
    app = create_app(make_settings(tmp_path / "models", redis_url=redis_url, train_every=1))
    client = app.test_client()
    assert _webhook(client, "START_TRAINING", 4) == "scheduled"
    assert _webhook(client, "ANNOTATION_CREATED", 4) == "coalesced"
    assert _webhook(client, "START_TRAINING", 4) == "coalesced"
    queue = _queue(redis)
    assert queue.count == 1
    (job,) = queue.get_jobs()
    assert job.func_name == "backend.jobs.entry.run_job_from_env"
    assert job.args == ("4", "train")
    assert job.timeout == app_service(app).settings.job_timeout
    record = app_service(app).board.read("4", "train")
    assert record.status == "queued"
    assert _webhook(client, "START_TRAINING", 5) == "scheduled"  # another project: its own job
    assert queue.count == 2


def test_a_failing_job_is_recorded_and_retried(redis, redis_url, tmp_path):
    """The worker runs the job with Label Studio unreachable: the job fails, the record
    says why, the pending flag is gone and the next trigger enqueues again."""
    model_dir = tmp_path / "models"
    app = create_app(make_settings(model_dir, redis_url=redis_url))
    client = app.test_client()
    assert _webhook(client, "START_TRAINING", 4) == "scheduled"
    env = _child_env()
    env.update(
        {
            "MODEL_DIR": str(model_dir),
            "LABEL_STUDIO_URL": "http://127.0.0.1:9",
            "LABEL_STUDIO_API_KEY": "token",
            "BACKBONE": "mobilenet_v3_320_fpn",
            "WEIGHTS": "none",
        }
    )
    log = tmp_path / "worker.log"
    assert _run_worker(redis_url, env, log) == 0, log_tail(log)
    from rq.registry import FailedJobRegistry

    queue = _queue(redis)
    assert queue.count == 0
    assert FailedJobRegistry(queue=queue).count == 1, log_tail(log)
    board = app_service(app).board
    record = board.read("4", "train")
    assert record.status == "failed", log_tail(log)
    assert record.error.startswith("LabelStudioError") and "/api/projects/4" in record.error
    assert not board.is_pending("4", "train")
    assert app_service(app).store.versions("4") == []
    assert _webhook(client, "START_TRAINING", 4) == "scheduled"
    assert queue.count == 1


def _die_in_job(model_dir: str, project: str) -> None:
    """An RQ job whose work horse is killed (-9, as by the OOM killer) halfway through a training."""
    import os
    import signal

    from backend.jobs.board import JobBoard, run_job

    def work(progress):
        progress(0.3, "epoch 1/3")
        os.kill(os.getpid(), signal.SIGKILL)

    run_job(JobBoard(model_dir), project, "train", work)


def test_a_killed_work_horse_is_recorded_as_failed(redis, redis_url, tmp_path):
    model_dir = tmp_path / "models"
    app = create_app(make_settings(model_dir, redis_url=redis_url))
    client = app.test_client()
    assert _webhook(client, "START_TRAINING", 4) == "scheduled"
    queue = _queue(redis)
    queue.empty()  # replaced by a job that dies the same way a real training would
    queue.enqueue("test_rq._die_in_job", str(model_dir), "4", job_timeout=600)
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        rc = subprocess.run(
            [str(RQ), "worker", "--burst", "--url", redis_url, "--path", ".", "--path", "tests", RQ_QUEUE],
            cwd=REPO_ROOT,
            env=_child_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=300,
        ).returncode
    assert rc == 0, log_tail(log)
    from rq.registry import FailedJobRegistry

    assert FailedJobRegistry(queue=queue).count == 1, log_tail(log)
    board = app_service(app).board
    record = board.read("4", "train")
    assert record.status == "failed" and "died" in record.error, (record, log_tail(log))
    assert app.test_client().get("/jobs").get_json()["jobs"]["4"]["train"]["status"] == "failed"
    assert _webhook(client, "START_TRAINING", 4) == "scheduled"  # the next trigger tries again


@pytest.mark.e2e
def test_worker_trains_against_label_studio(redis, redis_url, label_studio, ls_client, square_images, tmp_path):
    from labelstudio import square_result

    project = ls_client.create_project("e2e training by rq", LABEL_CONFIG)
    ls_client.create_local_storage(project, square_images.folder, use_blob_urls=False)
    ls_client.import_tasks(project, square_images.tasks())
    tasks = sorted(ls_client.tasks(project), key=lambda t: t["id"])
    annotation_ids = [
        int(ls_client.create_annotation(t["id"], square_result(square_images.for_url(t["data"]["image"]), "car"))["id"])
        for t in tasks[:2]
    ]
    model_dir = tmp_path / "models"
    app = create_app(
        make_settings(model_dir, redis_url=redis_url, label_studio_url=label_studio.url, api_key=label_studio.token)
    )
    assert _webhook(app.test_client(), "START_TRAINING", project) == "scheduled"
    queue = _queue(redis)
    assert queue.count == 1

    from labelstudio import job_env

    env = job_env(label_studio, model_dir)
    log = tmp_path / "worker.log"
    assert _run_worker(redis_url, env, log) == 0, log_tail(log)
    assert queue.count == 0
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    assert FailedJobRegistry(queue=queue).count == 0, log_tail(log)
    assert FinishedJobRegistry(queue=queue).count == 1, log_tail(log)

    service = app_service(app)
    # v0001: the base version the training starts from (as the service makes it); v0002: the trained one
    assert [v.name for v in service.store.versions(str(project))] == ["v0001", "v0002"], log_tail(log)
    record = service.board.read(str(project), "train")
    assert record.status == "done" and record.result["model_version"] == "v0002", record
    meta = json.loads((model_dir / str(project) / "v0002" / "meta.json").read_text())
    assert meta["annotation_ids"] == sorted(annotation_ids) and meta["parent"] == "v0001"
    # the serving app sees the worker's version (shared MODEL_DIR)
    setup = app.test_client().post("/setup", json={"project": str(project)})
    assert setup.get_json() == {"model_version": "v0002"}


def _hold_reduce_lock(shards, ttl: float, seconds: float, events: list[str]) -> None:
    with shards.reduce_lock("9", "run", "first", ttl=ttl):
        events.append("held")
        time.sleep(seconds)
        events.append("released")


def test_a_reduce_lock_is_renewed_while_its_holder_runs(redis, redis_url):
    """Held 3 times its time to live: a second reduce of the same stage waits for all of it."""
    from backend.jobs.runners import RQShards

    shards = RQShards(redis_url, RQ_QUEUE, timeout=30, retries=0)
    events: list[str] = []
    holder = threading.Thread(target=_hold_reduce_lock, args=(shards, 2.0, 6.0, events))
    holder.start()
    while not events:
        time.sleep(0.01)
    with shards.reduce_lock("9", "run", "first", ttl=2.0):
        events.append("second")
    holder.join()
    assert events == ["held", "released", "second"]
    with shards.reduce_lock("9", "run", "flip", ttl=2.0):  # another stage's lock is another lock
        pass


def test_a_reduce_lock_whose_holder_was_killed_lapses(redis, redis_url):
    """A work horse killed inside a reduce (OOM, SIGKILL) leaves its lock; it lapses after its time to
    live, so RQ's retry of the reduce goes on instead of waiting for the job timeout (6 h)."""
    from backend.jobs.runners import RQShards

    code = (
        "import sys, time\n"
        "from backend.jobs.runners import RQShards\n"
        f"shards = RQShards({redis_url!r}, {RQ_QUEUE!r}, timeout=30, retries=0)\n"
        "with shards.reduce_lock('9', 'run', 'first', ttl=3.0):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        holder.kill()
    finally:
        holder.wait()
    start = time.monotonic()
    with RQShards(redis_url, RQ_QUEUE, timeout=30, retries=0).reduce_lock("9", "run", "first", ttl=3.0):
        waited = time.monotonic() - start
    assert 0.5 < waited < 10, waited  # it was held (2-3 s left when killed), then lapsed

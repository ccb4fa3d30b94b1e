"""End to end, images in a bucket: a real S3 server (moto's standalone server on 127.0.0.1)
connected to the real Label Studio 1.23.2 as an S3 source storage (``s3_endpoint`` set),
synced into tasks whose image is ``s3://bucket/key``.

In both of Label Studio's modes (presigned redirect, proxied bytes): a storage sync
sends TASKS_CREATED and the new tasks join the HUA queue, "Retrieve predictions"
predicts them, annotations train a new version whose ranking and predictions reach
Label Studio, and every object is downloaded from the bucket once (counted in the S3
server's own request log). Then the faults: a key deleted after the sync, an object
that is not an image, the S3 server stopped in the middle, and (presign off) keys
that Label Studio can no longer use. Fixtures come from tests/labelstudio.py.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import pytest
from test_e2e_ranking import _queue_view, _record, _wait_for_rank
from test_e2e_training import _new_training

from helpers import LABEL_CONFIG
from s3server import DEFAULT_KEYS, REGION, S3Server, start_s3_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

JOB_TIMEOUT_S = 420.0


# --------------------------------------------------------------------------
# the S3 server and its objects
# --------------------------------------------------------------------------


@pytest.fixture
def s3_server(tmp_path):
    server = start_s3_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _jpeg(index: int, width: int = 128, height: int = 96, side: int = 48) -> tuple[bytes, tuple[int, int, int, int]]:
    """A grey JPEG with one red square at a place fixed by ``index``; returns it and the square's box."""
    from PIL import Image, ImageDraw

    x, y = (17 * index) % (width - side), (11 * index) % (height - side)
    img = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(img).rectangle([x, y, x + side - 1, y + side - 1], fill=(255, 0, 0))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue(), (x, y, x + side, y + side)


def _fill(s3, names: list[str], bucket: str) -> dict[str, tuple[int, int, int, int]]:
    """Upload one JPEG per name (``create`` the bucket first); returns each key's box."""
    boxes = {}
    for name in names:
        body, boxes[name] = _jpeg(int(re.sub(r"\D", "", name) or 0))
        s3.put_object(Bucket=bucket, Key=name, Body=body, ContentType="image/jpeg")
    return boxes


# --------------------------------------------------------------------------
# Label Studio's S3 storage
# --------------------------------------------------------------------------


def _create_storage(
    ls_client, project: int, server: S3Server, bucket: str, *, presign: bool, keys: dict | None = None
) -> int:
    """An S3 source storage on ``server``: one task per .jpg object (use_blob_urls)."""
    body = {
        "project": project,
        "title": "e2e bucket",
        "bucket": bucket,
        "prefix": "",
        "regex_filter": r".*\.jpg",
        "use_blob_urls": True,
        "presign": presign,
        "presign_ttl": 1,
        "recursive_scan": True,
        "region_name": REGION,
        "s3_endpoint": server.url,
        **(keys or DEFAULT_KEYS),
    }
    return int(ls_client.post("/api/storages/s3", json=body)["id"])


def _sync(ls_client, storage: int, timeout_s: float = 120.0) -> dict:
    info = ls_client.post(f"/api/storages/s3/{storage}/sync")
    deadline = time.monotonic() + timeout_s
    while info.get("status") not in ("completed", "failed", "completed_with_errors"):
        assert time.monotonic() < deadline, f"storage {storage} sync still {info.get('status')!r}"
        time.sleep(0.5)
        info = ls_client.get(f"/api/storages/s3/{storage}")
    assert info["status"] == "completed", info.get("traceback") or info
    return info


def _tasks_by_key(ls_client, project: int, bucket: str) -> dict[str, dict]:
    tasks = ls_client.tasks(project, resolve_uri="false")  # else LS answers <LS>/tasks/<id>/resolve/?fileuri=
    assert all(t["data"]["image"].startswith(f"s3://{bucket}/") for t in tasks), [t["data"] for t in tasks]
    return {t["data"]["image"].rsplit("/", 1)[1]: t for t in tasks}


def _box_result(box: tuple[int, int, int, int], label: str, width: int = 128, height: int = 96) -> list[dict]:
    from labelstudio import SquareImage, square_result

    return square_result(SquareImage("", "", Path(), width, height, box), label)


def _of_version(ls_client, task_id: int, version: str) -> list[dict]:
    return [p for p in ls_client.predictions(task=task_id) if p.get("model_version") == version and p["result"]]


# --------------------------------------------------------------------------
# the loop, in both modes
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud_backend(label_studio, tmp_path_factory):
    """A backend of its own that trains after every 2 annotation events."""
    from labelstudio import training_backend

    with training_backend(label_studio, tmp_path_factory.mktemp("cloud-backend"), LOG_LEVEL="INFO") as server:
        yield server


def _connect(ls_client, backend, project: int) -> int:
    return ls_client.connect_ml_backend(
        project, backend.url, "hua e2e cloud", user=backend.user, password=backend.password
    )


@pytest.mark.parametrize("presign", [True, False], ids=["presigned-redirect", "proxied-bytes"])
def test_bucket_tasks_are_queued_predicted_and_trained_on(label_studio, ls_client, cloud_backend, s3_server, presign):
    from labelstudio import wait_for_job

    backend, s3, bucket = cloud_backend, s3_server.client(), f"e2e-loop-{'presigned' if presign else 'proxied'}"
    s3.create_bucket(Bucket=bucket)
    boxes = _fill(s3, [f"img{i}.jpg" for i in range(4)], bucket)
    project = ls_client.create_project(f"e2e cloud presign={presign}", LABEL_CONFIG)
    _connect(ls_client, backend, project)
    storage = _create_storage(ls_client, project, s3_server, bucket, presign=presign)

    # a sync sends TASKS_CREATED: a full ranking of the new tasks (each object downloaded once)
    before = _record(backend, project)
    _sync(ls_client, storage)
    record = _wait_for_rank(label_studio, backend, project, before)
    assert record["result"]["pushed"] == 4 and record["result"]["failed"] == {}, f"{record}\n{backend.log_tail(5000)}"
    version = record["result"]["model_version"]
    assert s3_server.object_gets(bucket) == 4

    # "Retrieve predictions": every task predicted, nothing downloaded again
    answer = ls_client.retrieve_predictions(project)
    assert answer.get("processed_items") == 4, answer
    tasks = _tasks_by_key(ls_client, project, bucket)
    assert all(_of_version(ls_client, t["id"], version) for t in tasks.values())
    assert s3_server.object_gets(bucket) == 4

    # two new objects and a second sync: only they are scored, and they join the queue
    boxes |= _fill(s3, ["img4.jpg", "img5.jpg"], bucket)
    before = _record(backend, project)
    _sync(ls_client, storage)
    record = _wait_for_rank(label_studio, backend, project, before)
    assert (record["result"]["pushed"], record["result"]["ranked"]) == (2, 6), record
    tasks = _tasks_by_key(ls_client, project, bucket)
    view = _queue_view(ls_client, project)["id"]
    queued = {t["id"]: t["predictions_score"] for t in ls_client.tasks(project, view=view)}
    assert set(queued) == {t["id"] for t in tasks.values()} and None not in queued.values(), queued
    assert s3_server.object_gets(bucket) == 6

    # two annotations train a new version; its ranking and predictions reach Label Studio
    trained_before = backend.post("/versions", json={"project": str(project)}).json()["versions"]
    for key, label in (("img0.jpg", "car"), ("img1.jpg", "person")):
        ls_client.create_annotation(tasks[key]["id"], _box_result(boxes[key], label))
    train = wait_for_job(backend, project, "train", _new_training(trained_before), JOB_TIMEOUT_S)
    assert train["status"] == "done", f"{train}\n{backend.log_tail(6000)}"
    new_version = train["result"]["model_version"]
    meta = json.loads((backend.model_dir / str(project) / new_version / "meta.json").read_text())
    assert meta["task_ids"] == sorted([tasks["img0.jpg"]["id"], tasks["img1.jpg"]["id"]]) and meta["skipped"] == {}
    rank = wait_for_job(backend, project, "rank", lambda r: r["status"] in ("done", "failed"), JOB_TIMEOUT_S)
    assert rank["status"] == "done" and rank["result"]["model_version"] == new_version, rank
    answer = ls_client.retrieve_predictions(project)
    assert answer.get("processed_items") == 6, answer
    missing = [k for k, t in tasks.items() if not _of_version(ls_client, t["id"], new_version)]
    assert not missing, f"no prediction of {new_version}: {missing}\n{backend.log_tail(6000)}"
    assert ls_client.get_project(project)["model_version"] == new_version
    # training, the new ranking and the retrieve read the cache: still one download per object
    assert s3_server.object_gets(bucket) == 6


# --------------------------------------------------------------------------
# faults
# --------------------------------------------------------------------------


def _failures(backend) -> dict[str, float]:
    """hua_task_failures by reason, from /metrics."""
    text = backend.get("/metrics", timeout=30).text
    return {
        m[1]: float(m[2]) for m in re.finditer(r'^hua_task_failures_total\{reason="(\w+)"\} ([\d.e+]+)$', text, re.M)
    }


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


@pytest.mark.parametrize("presign", [True, False], ids=["presigned-redirect", "proxied-bytes"])
def test_faults_give_each_task_its_outcome(label_studio, ls_client, cloud_backend, s3_server, presign):
    """A key deleted after the sync, a PDF named .jpg (``undecodable``); then the S3 server stops:
    the images already fetched are predicted, the others ``unreachable``.

    The deleted key: through a presigned URL moto answers 403 SignatureDoesNotMatch (AWS: 404
    NoSuchKey, or 403 AccessDenied when the keys may not list the bucket), so it is ``refused``, its
    message naming S3's code. When Label Studio proxies, it answers 424 "Stream is None" whatever
    S3 said (it logs the cause itself): ``unreachable``, the message saying so.
    """
    backend, s3, bucket = cloud_backend, s3_server.client(), f"e2e-faults-{'presigned' if presign else 'proxied'}"
    s3.create_bucket(Bucket=bucket)
    _fill(s3, ["ok0.jpg", "ok1.jpg", "ok2.jpg", "ok3.jpg", "gone4.jpg"], bucket)
    s3.put_object(Bucket=bucket, Key="notes5.jpg", Body=b"%PDF-1.4 not an image", ContentType="application/pdf")
    project = ls_client.create_project(f"e2e cloud faults presign={presign}", LABEL_CONFIG)
    _sync(ls_client, _create_storage(ls_client, project, s3_server, bucket, presign=presign))  # not connected yet
    _connect(ls_client, backend, project)
    s3.delete_object(Bucket=bucket, Key="gone4.jpg")
    ids = {k: t["id"] for k, t in _tasks_by_key(ls_client, project, bucket).items()}

    before = _failures(backend)
    ls_client.retrieve_predictions(project, [ids["ok0.jpg"], ids["ok1.jpg"], ids["gone4.jpg"], ids["notes5.jpg"]])
    gone = (
        ("refused", r"image access denied \(HTTP 403 .*SignatureDoesNotMatch")
        if presign
        else ("unreachable", r"Label Studio could not read the image from its storage \(HTTP 424 .*Stream is None")
    )
    assert _delta(_failures(backend), before) == {gone[0]: 1, "undecodable": 1}, backend.log_tail(4000)
    log = backend.log_tail(20000)
    assert re.search(rf"task {ids['gone4.jpg']}: {gone[1]}", log), log
    assert re.search(rf"task {ids['notes5.jpg']}: not a decodable image", log), log
    predicted = {k for k, i in ids.items() if [p for p in ls_client.predictions(task=i) if p["result"]]}
    assert predicted == {"ok0.jpg", "ok1.jpg"}, predicted

    s3_server.stop()  # in the middle: ok0 and ok1 are in the cache, ok2 and ok3 are not
    before = _failures(backend)
    answer = ls_client.retrieve_predictions(project)
    assert answer.get("processed_items") == 6, answer
    assert _delta(_failures(backend), before) == {"unreachable": 4}, backend.log_tail(4000)
    for key in ("ok2.jpg", "ok3.jpg"):
        assert re.search(
            rf"task {ids[key]}: (could not fetch the image|Label Studio could not read)", backend.log_tail(20000)
        )
        assert not [p for p in ls_client.predictions(task=ids[key]) if p["result"]]
    for key in ("ok0.jpg", "ok1.jpg"):
        assert [p for p in ls_client.predictions(task=ids[key]) if p["result"]], key


def test_keys_label_studio_can_no_longer_use(label_studio, ls_client, cloud_backend, tmp_path):
    """Presign off, moto checking credentials: the storage's access key is deleted after the sync;
    S3 answers Label Studio InvalidAccessKeyId, Label Studio answers 424 "Stream is None" (it logs
    S3's error itself): the task is ``unreachable``, its message pointing at Label Studio's log.
    (moto cannot check presigned URLs: with presign on, S3's 403 is covered by tests/test_images.py.)"""
    server = start_s3_server(tmp_path, no_auth_actions=3)
    try:
        iam = server.client("iam")
        iam.create_user(UserName="label-studio")
        key = iam.create_access_key(UserName="label-studio")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        iam.put_user_policy(UserName="label-studio", PolicyName="all", PolicyDocument=json.dumps(policy))
        keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        s3 = server.client(**keys)
        s3.create_bucket(Bucket="e2e-revoked")
        _fill(s3, ["key0.jpg"], "e2e-revoked")
        project = ls_client.create_project("e2e cloud revoked keys", LABEL_CONFIG)
        _sync(ls_client, _create_storage(ls_client, project, server, "e2e-revoked", presign=False, keys=keys))
        _connect(ls_client, cloud_backend, project)
        # moto ignores a key made Inactive; a deleted one is refused
        server.client("iam", **keys).delete_access_key(UserName="label-studio", AccessKeyId=key["AccessKeyId"])
        (task,) = ls_client.tasks(project)
        before = _failures(cloud_backend)
        ls_client.retrieve_predictions(project)
        assert _delta(_failures(cloud_backend), before) == {"unreachable": 1}, cloud_backend.log_tail(4000)
        assert re.search(
            rf"task {task['id']}: Label Studio could not read the image from its storage .*revoked "
            "credentials",
            cloud_backend.log_tail(20000),
        ), cloud_backend.log_tail(4000)
        assert "InvalidAccessKeyId" in label_studio.log_tail(20000)
    finally:
        server.stop()

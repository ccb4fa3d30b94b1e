"""End to end against a real Label Studio 1.23.2: connect the backend, retrieve
predictions for images served both as /data/local-files and /data/upload (and
absolute URLs of a synced storage), and check what Label Studio stored.

Fixtures (label_studio, ls_client, ml_backend, e2e_images) come from
tests/labelstudio.py.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

import pytest

from helpers import LABEL_CONFIG

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

LABELS = ("car", "person")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _diagnostics(ls, backend) -> str:
    return f"\n{backend.log_tail(8000)}\n{ls.log_tail(4000)}"


def _make_project(ls_client, e2e_images, title: str) -> int:
    """A project with every kind of image URL LS hands a backend."""
    project = ls_client.create_project(title, LABEL_CONFIG)
    # /data/local-files/?d=... (relative): a storage (no sync) lets LS serve the folder
    ls_client.create_local_storage(project, e2e_images.local_dir, use_blob_urls=False)
    ls_client.import_tasks(project, e2e_images.local_tasks())
    # /data/upload/<project>/<hash>-<name> (relative)
    for spec in e2e_images.upload:
        ls_client.upload_file(project, spec.path)
    # http://<ls host>/data/local-files/?d=... (ABSOLUTE): one task per file of a
    # use_blob_urls storage, as a user syncing an image folder gets them
    ls_client.create_local_storage(project, e2e_images.synced_dir, use_blob_urls=True, sync=True)
    return project


def _backend_model_version(ml_backend, ls_client, project: int) -> str:
    """The version the backend reports for this project now, asked as LS asks: /setup.

    Also checked against the backend's POST /versions {project} when it answers 200.
    """
    proj = ls_client.get_project(project)
    created = datetime.fromisoformat(proj["created_at"].replace("Z", "+00:00"))
    uid = f"{project}.{int(created.timestamp())}"  # what LS sends as "project"
    r = ml_backend.post(
        "/setup",
        json={
            "project": uid,
            "schema": proj["label_config"],
            "hostname": ls_client.url,
            "access_token": ls_client.token,
            "extra_params": None,
        },
        timeout=30,
    )
    assert r.status_code == 200, f"/setup -> {r.status_code} {r.text[:500]}"
    version = r.json().get("model_version")
    assert isinstance(version, str) and version, f"/setup gave no model_version: {r.text[:500]}"
    rv = ml_backend.post("/versions", json={"project": uid}, timeout=30)
    if rv.status_code == 200:
        assert version in rv.json().get("versions", []), f"/setup says {version!r}, /versions {rv.text[:500]}"
    return version


def _check_box(item: dict, spec, where: str) -> None:
    assert item.get("from_name") == "label", where
    assert item.get("to_name") == "image", where
    v = item["value"]
    for k in ("x", "y", "width", "height"):
        assert _is_number(v.get(k)), f"{where}: value.{k} = {v.get(k)!r}"
        assert 0.0 <= v[k] <= 100.0, f"{where}: value.{k} = {v[k]} outside [0, 100]"
    assert v["width"] > 0 and v["height"] > 0, f"{where}: empty box {v}"
    assert v["x"] + v["width"] <= 100.0 + 1e-6, f"{where}: box leaves the image {v}"
    assert v["y"] + v["height"] <= 100.0 + 1e-6, f"{where}: box leaves the image {v}"
    labels = v.get("rectanglelabels")
    assert isinstance(labels, list) and labels, f"{where}: rectanglelabels = {labels!r}"
    assert set(labels) <= set(LABELS), f"{where}: labels {labels} not in {LABELS}"
    assert item.get("original_width") == spec.width, (
        f"{where}: original_width {item.get('original_width')} != {spec.width}"
    )
    assert item.get("original_height") == spec.height, (
        f"{where}: original_height {item.get('original_height')} != {spec.height}"
    )
    if "score" in item:
        assert _is_number(item["score"]), f"{where}: result score {item['score']!r}"


def test_retrieve_predictions_stores_boxes(label_studio, ls_client, ml_backend, e2e_images):
    project = _make_project(ls_client, e2e_images, "e2e retrieve predictions")
    tasks = ls_client.tasks(project)
    assert len(tasks) == len(e2e_images.all), [t["data"] for t in tasks]
    urls = [t["data"]["image"] for t in tasks]
    assert any(u.startswith("/data/local-files/?d=") for u in urls), urls
    assert any(u.startswith("/data/upload/") for u in urls), urls
    assert any(u.startswith(label_studio.url + "/data/local-files/?d=") for u in urls), urls

    ls_client.connect_ml_backend(
        project, ml_backend.url, "hua-backend e2e", user=ml_backend.user, password=ml_backend.password
    )

    t0 = time.monotonic()
    answer = ls_client.retrieve_predictions(project)
    took = time.monotonic() - t0
    # NOTE: LS answers {"processed_items": <selected tasks>, "detail": "Retrieved <n>
    # predictions"} whatever the backend did: only the stored predictions tell.
    assert answer.get("processed_items") == len(tasks), answer
    # The bound is the contract, not a speed figure: LS waits at most 100 s for /predict
    # and drops a slower answer silently (nothing is stored).
    assert took < 100, f"retrieve predictions took {took:.1f} s"

    # Asked after predicting: before its first model exists a backend may name a
    # placeholder version in /setup.
    version = _backend_model_version(ml_backend, ls_client, project)
    tasks = ls_client.tasks(project)
    problems = []
    for task in tasks:
        url = task["data"]["image"]
        spec = e2e_images.spec_for_url(url)
        preds = task["predictions"]
        ours = [p for p in preds if p.get("model_version") == version]
        if not ours:
            problems.append(
                f"task {task['id']} ({url}): no prediction of version {version!r}: "
                f"{[p.get('model_version') for p in preds]}"
            )
            continue
        for pred in ours:
            where = f"task {task['id']} ({url}) prediction {pred['id']}"
            assert _is_number(pred.get("score")), f"{where}: score {pred.get('score')!r}"
            boxes = [r for r in pred["result"] if r.get("type") == "rectanglelabels"]
            assert boxes, f"{where}: no rectanglelabels box in {pred['result'][:3]}"
            for i, item in enumerate(boxes):
                _check_box(item, spec, f"{where} box {i}")
    assert not problems, "\n".join(problems) + _diagnostics(label_studio, ml_backend)

    # the same through /api/predictions
    for task in tasks:
        stored = ls_client.predictions(task=task["id"])
        assert any(p["model_version"] == version for p in stored), stored


def test_versions_through_label_studio(label_studio, ls_client, ml_backend, e2e_images):
    """Project settings > Model lists versions through LS's GET /api/ml/{id}/versions,
    for which LS calls the backend's **GET** /versions with no project (no body, no
    query). The backend must answer that with 200 {"versions": [...]} or with 404
    (LS then falls back to the version /setup named at connect time); anything else
    (e.g. 405 from a POST-only route) reaches the user as an error."""
    project = ls_client.create_project("e2e versions", LABEL_CONFIG)
    ls_client.create_local_storage(project, e2e_images.local_dir, use_blob_urls=False)
    ls_client.import_tasks(project, e2e_images.local_tasks()[:1])
    ml = ls_client.connect_ml_backend(
        project, ml_backend.url, "hua-backend e2e", user=ml_backend.user, password=ml_backend.password
    )
    ls_client.retrieve_predictions(project)
    r = ls_client.ml_versions(ml)
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}{_diagnostics(label_studio, ml_backend)}"
    versions = r.json()["versions"]
    assert isinstance(versions, list) and versions, r.json()
    assert all(isinstance(v, str) and v for v in versions), versions

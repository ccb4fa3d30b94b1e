"""End to end against a real Label Studio 1.23.2: "Retrieve predictions" over more
tasks than PREDICT_DEADLINE allows.

A backend of its own with PREDICT_DEADLINE=2 s and BATCH_SIZE=4 (the small CPU
model) gets one retrieve of 100 tasks: the tasks reached before the deadline
must hold their prediction as soon as Label Studio answers, every other task
after the background predict job, exactly one per task and version; the two
tasks whose image is broken (one in the first batch, one in the deferred part)
get none and stop nothing. Fixtures (label_studio, ls_client) come from
tests/labelstudio.py.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import LABEL_CONFIG, write_image
from labelstudio import start_ml_backend, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

FOLDER = "e2e-deferred"
TASKS = 100
BROKEN_AT = (0, TASKS - 1)  # first batch (answered at once) and last (deferred)
DEADLINE_S = 2.0


@pytest.fixture(scope="module")
def deadline_backend(label_studio, tmp_path_factory):
    base = tmp_path_factory.mktemp("deferred-backend")
    server = start_ml_backend(
        label_studio,
        base / "model",
        base / "gunicorn.log",
        extra_env={"PREDICT_DEADLINE": str(DEADLINE_S), "BATCH_SIZE": "4"},
    )
    try:
        yield server
    finally:
        server.stop()


def _image_urls(document_root) -> list[str]:
    folder = document_root / FOLDER
    for i in range(10):
        write_image(folder / f"{i}.png", 64 + 8 * i, 48, (25 * i, 120, 200 - 15 * i))
    (folder / "broken.png").write_text("not an image")
    return [f"/data/local-files/?d={FOLDER}/{'broken' if i in BROKEN_AT else i % 10}.png" for i in range(TASKS)]


def _counters(backend) -> dict[tuple[str, str], float]:
    text = backend.get("/metrics", timeout=30).text
    return {
        (s.name, s.labels.get("outcome") or s.labels.get("reason", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _versions_per_task(ls_client, project: int) -> dict[int, Counter]:
    return {t["id"]: Counter(p["model_version"] for p in t["predictions"]) for t in ls_client.tasks(project)}


def test_a_retrieve_past_the_deadline_is_finished_in_the_background(label_studio, ls_client, deadline_backend):
    backend = deadline_backend
    project = ls_client.create_project("e2e deferred retrieve", LABEL_CONFIG)
    urls = _image_urls(label_studio.document_root)
    ls_client.create_local_storage(project, label_studio.document_root / FOLDER, use_blob_urls=False)
    ls_client.import_tasks(project, [{"image": url} for url in urls])
    ls_client.connect_ml_backend(
        project, backend.url, "hua-backend deferred", user=backend.user, password=backend.password
    )
    # load the model first: the deadline is about predicting, not about creating the first version
    warm = backend.post("/predict", json={"tasks": [], "project": project, "label_config": LABEL_CONFIG}, timeout=120)
    assert warm.status_code == 200, warm.text
    version = warm.json()["model_version"]
    before = _counters(backend)

    started = time.monotonic()
    answer = ls_client.retrieve_predictions(project)
    took = time.monotonic() - started
    assert answer.get("processed_items") == TASKS, answer
    assert took < 100, f"Label Studio waited {took:.1f} s"
    after = _counters(backend)
    reached = after[("hua_predictions_total", "ok")] - before.get(("hua_predictions_total", "ok"), 0)
    deferred = after[("hua_predictions_total", "deferred")] - before.get(("hua_predictions_total", "deferred"), 0)
    assert reached >= 1 and deferred >= 1, (reached, deferred, backend.log_tail(4000))
    assert after[("hua_task_failures_total", "undecodable")] >= 1  # the broken image of the first batch

    # at once: every reached task holds its prediction (the job may have added more by now)
    tasks = {t["id"]: t for t in ls_client.tasks(project)}
    ids = sorted(tasks)
    holding = [i for i in ids if any(p["model_version"] == version for p in tasks[i]["predictions"])]
    assert len(holding) >= reached

    record = wait_for_job(
        backend,
        project,
        "predict",
        lambda r: r["status"] in ("done", "failed") and not r.get("next_queued"),
        timeout_s=600,
    )
    assert record["status"] == "done", record
    broken = {ids[i] for i in BROKEN_AT}
    counts = _versions_per_task(ls_client, project)
    assert {i: c[version] for i, c in counts.items() if i in broken} == {i: 0 for i in broken}
    assert {c[version] for i, c in counts.items() if i not in broken} == {1}, counts
    assert all(sum(c.values()) == c[version] for c in counts.values())  # no other version either

    # a second retrieve: Label Studio asks only for the tasks without this version's
    # prediction (the broken ones); nothing is stored twice
    ls_client.retrieve_predictions(project)
    assert _versions_per_task(ls_client, project) == counts

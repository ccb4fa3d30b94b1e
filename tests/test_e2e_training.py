"""End to end, training against a real Label Studio 1.23.2: annotations made through
Label Studio's API reach the backend as LS's own webhooks (no auth header), a
training runs in the background, a new model version appears, and Label
Studio's "Retrieve predictions" stores predictions of that version. Also the
Train button (START_TRAINING) and ``python -m backend train`` in the foreground.

These tests check the plumbing, not learning: a random-init small model
(mobilenet_v3_320_fpn, WEIGHTS=none), one epoch, 128x96 images.
Fixtures come from tests/labelstudio.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LABEL_CONFIG

# The harness is a plugin (one Label Studio per session, whichever module asks first);
# it is imported by pytest, so its helpers are imported inside the functions below.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]

JOB_TIMEOUT_S = 420.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def _child_env() -> dict[str, str]:
    from labelstudio import _child_env as child_env

    return child_env()


def _backend_env(label_studio, model_dir: Path) -> dict[str, str]:
    """The settings a foreground job (CLI) needs, as environment variables."""
    from labelstudio import job_env

    return job_env(label_studio, model_dir, LOG_LEVEL="INFO")


@pytest.fixture(scope="module")
def training_backend(label_studio, tmp_path_factory):
    """A backend of its own that trains after every 2 annotation events."""
    from labelstudio import training_backend as started

    with started(label_studio, tmp_path_factory.mktemp("training-backend")) as server:
        yield server


def _project(ls_client, square_images, title: str) -> tuple[int, list[dict]]:
    project = ls_client.create_project(title, LABEL_CONFIG)
    ls_client.create_local_storage(project, square_images.folder, use_blob_urls=False)
    ls_client.import_tasks(project, square_images.tasks())
    tasks = sorted(ls_client.tasks(project), key=lambda t: t["id"])
    assert len(tasks) == len(square_images.images)
    return project, tasks


def _annotate(ls_client, square_images, task: dict, label: str = "car") -> int:
    from labelstudio import square_result

    image = square_images.for_url(task["data"]["image"])
    return int(ls_client.create_annotation(task["id"], square_result(image, label))["id"])


def _meta(model_dir: Path, project: int, version: str) -> dict:
    return json.loads((Path(model_dir) / str(project) / version / "meta.json").read_text())


def _versions(backend, project: int) -> list[str]:
    r = backend.post("/versions", json={"project": str(project)}, timeout=30)
    assert r.status_code == 200, f"{r.status_code} {r.text[:500]}"
    return r.json()["versions"]


def _new_training(before: list[str]):
    """A train record that finished after ``before``: failed, skipped or a version not in it."""

    def finished(record: dict) -> bool:
        if record["status"] == "failed":
            return True
        return record["status"] == "done" and record["result"].get("model_version") not in (None, *before)

    return finished


@pytest.fixture(scope="module")
def trained() -> dict:
    """What the training test below made (project, versions), for the /ui test that follows it."""
    return {}


def test_annotations_train_a_new_version_that_serves(label_studio, ls_client, training_backend, square_images, trained):
    from labelstudio import wait_for_job

    backend = training_backend
    project, tasks = _project(ls_client, square_images, "e2e training by webhooks")
    ml = ls_client.connect_ml_backend(
        project, backend.url, "hua e2e training", user=backend.user, password=backend.password
    )
    assert any(backend.url in (w.get("url") or "") for w in ls_client.webhooks(project)), ls_client.webhooks(project)
    before = _versions(backend, project)

    # two annotations: LS POSTs ANNOTATION_CREATED twice (no auth); TRAIN_EVERY=2 starts a training
    annotation_ids = [
        _annotate(ls_client, square_images, tasks[0], "car"),
        _annotate(ls_client, square_images, tasks[1], "person"),
    ]
    record = wait_for_job(backend, project, "train", _new_training(before), JOB_TIMEOUT_S)
    assert record["status"] == "done", f"{record}\n{backend.log_tail(8000)}"
    assert record["error"] is None and record["progress"] == 1.0
    version = record["result"]["model_version"]

    versions = _versions(backend, project)
    assert version in versions and version not in before, versions
    meta = _meta(backend.model_dir, project, version)
    assert meta["annotation_ids"] == sorted(annotation_ids)
    assert meta["labels"] == ["car", "person"] and meta["model_version"] == version
    assert meta["skipped"] == {}
    assert meta["task_ids"] == [tasks[0]["id"], tasks[1]["id"]]
    assert meta["evaluation"]["model_version"] in (None, *before)  # nothing, or a version made at a /predict

    # the follow-up ranking runs in the same background job; wait for it before predicting
    rank = wait_for_job(backend, project, "rank", lambda r: r["status"] in ("done", "failed"), JOB_TIMEOUT_S)
    assert rank["status"] == "done", rank

    answer = ls_client.retrieve_predictions(project)
    assert answer.get("processed_items") == len(tasks), answer
    problems = []
    for task in ls_client.tasks(project):
        ours = [p for p in task["predictions"] if p.get("model_version") == version]
        if not ours:
            problems.append(
                f"task {task['id']}: no prediction of {version}: "
                f"{[p.get('model_version') for p in task['predictions']]}"
            )
        for pred in ours:
            assert pred["result"], f"task {task['id']}: empty prediction (SCORE_THRESHOLD=0 keeps boxes)"
            for region in pred["result"]:
                assert region["type"] == "rectanglelabels"
                assert region["value"]["rectanglelabels"][0] in ("car", "person")
    assert not problems, "\n".join(problems) + "\n" + backend.log_tail(6000)

    # the Train button: LS sends START_TRAINING (with basic auth); one more annotation since
    # the last training (counted only, TRAIN_EVERY=2) so there is something new to train on
    annotation_ids.append(_annotate(ls_client, square_images, tasks[2], "car"))
    before = _versions(backend, project)
    response = ls_client.train(ml)
    assert response.status_code == 200, response.text
    record = wait_for_job(backend, project, "train", _new_training(before), JOB_TIMEOUT_S)
    assert record["status"] == "done", f"{record}\n{backend.log_tail(8000)}"
    second = record["result"]["model_version"]
    assert _versions(backend, project) == before + [second]
    meta = _meta(backend.model_dir, project, second)
    assert meta["annotation_ids"] == sorted(annotation_ids)
    assert meta["parent"] == version
    _check_prequential(backend, project, version, second, meta["evaluation"], tasks[2]["id"])
    trained.update(project=str(project), first=version, second=second)

    jobs = backend.get("/jobs", timeout=30).json()["jobs"][str(project)]
    assert jobs["train"]["status"] == "done"


def _check_prequential(backend, project: int, first: str, second: str, evaluation: dict, new_task: int) -> None:
    """The second training measured the first version on the one task annotated in between
    (EVAL_MIN_TASKS=1), and the report, /versions and /metrics say the same."""
    assert evaluation["model_version"] == first and evaluation["status"] == "ok", evaluation
    assert evaluation["task_ids"] == [new_task] and evaluation["tasks"] == 1 and evaluation["trained_on_tasks"] == 2
    assert evaluation["acceptance"]["annotated"] == 1  # square_result draws one box
    figures = {
        "map_50": evaluation["map_50"],
        "map": evaluation["map"],
        "accepted": evaluation["acceptance"]["accepted"],
        "recall": evaluation["acceptance"]["recall"],
    }
    assert all(0.0 <= v <= 1.0 for v in figures.values()), figures
    report = backend.get(f"/projects/{project}/report", timeout=30).json()
    row = next(r for r in report["versions"] if r["model_version"] == first)
    assert row["evaluated_by"] == second and row["figures"] == figures
    detail = backend.post("/versions", json={"project": str(project)}, timeout=30).json()["detail"]
    assert next(r for r in detail if r["model_version"] == first)["figures"] == figures
    text = backend.get("/metrics", timeout=30).text
    assert f'hua_prequential{{figure="map_50",model_version="{first}",project="{project}"}}' in text


def test_the_ui_shows_the_trainings_in_a_browser(training_backend, trained):
    """/ui after the two trainings above, in headless Chromium: the versions table and the plot
    agree with /projects/<id>/report, the job bars with /jobs; the screenshot is the README's."""
    from browser import (
        backend_json,
        check_plot,
        check_versions_table,
        chromium_or_skip,
        open_ui,
        progress_of,
        screenshot,
    )

    sync_playwright = chromium_or_skip()
    assert trained, "the training test above did not get as far as its second training"
    backend, project = training_backend, trained["project"]
    with sync_playwright() as playwright:
        browser, page = open_ui(playwright, backend.url, backend.auth)
        try:
            report = backend_json(backend.url, f"/projects/{project}/report", backend.auth)
            assert report["serving"] == trained["second"]
            check_versions_table(page, report)
            check_plot(page, project)
            jobs = backend_json(backend.url, "/jobs", backend.auth)["jobs"][project]
            assert progress_of(page, project, "train") == jobs["train"]["progress"] == 1.0
            screenshot(page, "ui-e2e")
        finally:
            browser.close()


def _train_cli(env: dict[str, str], *args: str, timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
    """``python -m backend train ARGS`` in the foreground, as an operator runs it, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "backend", "train", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_trains_in_the_foreground(label_studio, ls_client, square_images, tmp_path):
    project, tasks = _project(ls_client, square_images, "e2e training by the CLI")
    annotation_ids = [_annotate(ls_client, square_images, task) for task in tasks[:3]]
    model_dir = tmp_path / "models"
    env = _backend_env(label_studio, model_dir)
    done = _train_cli(env, "--project", str(project))
    assert done.returncode == 0, f"rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    # v0001 is the base version the training starts from (made once, as the service makes it), v0002 the trained one
    assert "v0002" in done.stdout, done.stdout
    base, meta = _meta(model_dir, project, "v0001"), _meta(model_dir, project, "v0002")
    assert meta["annotation_ids"] == sorted(annotation_ids)
    assert meta["parent"] == "v0001" and base["parent"] is None and base["weights"] == "none"
    records = {p.stem: json.loads(p.read_text()) for p in (model_dir / str(project) / ".jobs").glob("*.json")}
    assert records["train"]["status"] == "done" and records["train"]["result"]["model_version"] == "v0002"
    # the follow-up ranking pushed the new version's predictions to LS's unlabeled tasks
    assert records["rank"]["status"] == "done", records["rank"]
    unlabeled = [t for t in ls_client.tasks(project) if not t["annotations"]]
    assert unlabeled and all(any(p["model_version"] == "v0002" for p in t["predictions"]) for t in unlabeled)

    # run again with nothing new: no new version
    again = _train_cli(env, "--project", str(project), "--quiet", "--no-follow-up")
    assert again.returncode == 0, again.stderr[-4000:]
    assert sorted(p.name for p in (model_dir / str(project)).glob("v*")) == ["v0001", "v0002"]


def test_cli_fails_cleanly_without_label_studio(tmp_path):
    env = _child_env()
    env.update(
        {
            "MODEL_DIR": str(tmp_path / "models"),
            "LABEL_STUDIO_URL": "http://127.0.0.1:9",
            "LABEL_STUDIO_API_KEY": "secret-token-value",
            "WEIGHTS": "none",
            "BACKBONE": "mobilenet_v3_320_fpn",
        }
    )
    done = _train_cli(env, "--project", "8", "--quiet", timeout=300)
    assert done.returncode == 1
    assert "failed" in done.stderr and "secret-token-value" not in done.stderr + done.stdout
    record = json.loads((tmp_path / "models" / "8" / ".jobs" / "train.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("LabelStudioError")
    assert not [p for p in (tmp_path / "models" / "8").glob("v*")]

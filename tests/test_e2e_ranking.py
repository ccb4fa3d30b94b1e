"""End to end against a real Label Studio 1.23.2: the HUA queue.

A rank job (POST /rank to the running backend, or ``python -m backend rank``; in one process or in shards)
must leave in Label Studio one prediction per unlabeled task of the serving
version (boxes + task score), the project's model_version set to it, and one
Data Manager tab "HUA queue" listing the unlabeled tasks by ascending score;
``/next?view=`` then hands out the top task, and importing tasks (TASKS_CREATED
to the connected backend) puts the new tasks into the queue.

Each project's first model version is written here, before the backend sees
the project: the real small detector without weights, its frozen batch-norm
statistics set from noise (``test_scoring.calibrated_model``) so that scores
differ between images. Fixtures (label_studio, ls_client, ml_backend) come from
tests/labelstudio.py.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_scoring import CONFIG, calibrated_model, make_image
from torchvision.transforms.functional import to_pil_image

from backend.jobs.shards import SHARDS_DIR
from helpers import LABEL_CONFIG
from model.version_meta import VersionMeta
from model.versions import VersionStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

LABELS = ("car", "person")
QUEUE_TITLE = "HUA queue"
FOLDER = "e2e-rank"
# distinct sizes: distinct boxes and metrics
SIZES = [(64, 48), (48, 64), (72, 40), (56, 56), (40, 60), (80, 52), (60, 44), (44, 70), (68, 68), (52, 36)]
JOB_TIMEOUT_S = 480.0
WEBHOOK_TIMEOUT_S = 60.0
SCORE_TOLERANCE = 1e-9


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _diagnostics(label_studio, ml_backend) -> str:
    return f"\n{ml_backend.log_tail(8000)}\n{label_studio.log_tail(3000)}"


def _url(name: str) -> str:
    return f"/data/local-files/?d={FOLDER}/{name}"


def _seed_version(ml_backend, project: int) -> str:
    """The project's first version, written where the backend will find it."""
    meta = VersionMeta(
        labels=list(LABELS), backbone=ml_backend.env["BACKBONE"], weights="none", weights_requested="none", parent=None
    )
    assert ml_backend.env["BACKBONE"] == CONFIG.backbone
    return VersionStore(ml_backend.model_dir).save(str(project), calibrated_model().state_dict(), meta).name


def _make_project(ls_client, ml_backend, folder: Path, title: str, names: list[str]) -> int:
    project = ls_client.create_project(title, LABEL_CONFIG)
    ls_client.create_local_storage(project, folder, use_blob_urls=False)
    if names:
        ls_client.import_tasks(project, [{"image": _url(n)} for n in names])
    _seed_version(ml_backend, project)
    return project


def _annotate(ls_client, task_id: int) -> None:
    value = {"x": 10, "y": 10, "width": 40, "height": 40, "rotation": 0, "rectanglelabels": ["car"]}
    ls_client.create_annotation(
        task_id,
        [
            {
                "type": "rectanglelabels",
                "from_name": "label",
                "to_name": "image",
                "value": value,
                "original_width": 64,
                "original_height": 48,
            }
        ],
    )


def _connect(ls_client, ml_backend, project: int) -> int:
    return ls_client.connect_ml_backend(
        project, ml_backend.url, "hua-backend e2e", user=ml_backend.user, password=ml_backend.password
    )


def _record(ml_backend, project: int) -> dict | None:
    r = ml_backend.get("/jobs", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["jobs"].get(str(project), {}).get("rank")


def _busy(ml_backend, project: int) -> bool:
    """A rank job of the project waits (pending flag) or runs (holds the lock)."""
    jobs = Path(ml_backend.model_dir) / str(project) / ".jobs"
    if (jobs / "rank.pending").exists():
        return True
    lock = jobs / "rank.lock"
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _wait_for_rank(label_studio, ml_backend, project: int, before: dict | None) -> dict:
    """Wait for a rank job scheduled after ``before`` (the record seen earlier) and for
    every job it queued to end; returns the final record, which must be 'done'."""
    t0 = time.monotonic()
    while True:
        record = _record(ml_backend, project)
        changed = record is not None and (before is None or record != before)
        if changed and record["status"] in ("done", "failed") and not _busy(ml_backend, project):
            break
        if not changed and time.monotonic() - t0 > WEBHOOK_TIMEOUT_S:
            pytest.fail(
                f"no rank job for project {project} after {WEBHOOK_TIMEOUT_S:.0f} s: {record}"
                + _diagnostics(label_studio, ml_backend)
            )
        if time.monotonic() - t0 > JOB_TIMEOUT_S:
            pytest.fail(f"rank job of project {project} still {record}" + _diagnostics(label_studio, ml_backend))
        time.sleep(0.5)
    assert record["status"] == "done", f"{record}{_diagnostics(label_studio, ml_backend)}"
    return record


def _rank(label_studio, ml_backend, project: int) -> dict:
    """POST /rank and wait for the job."""
    before = _record(ml_backend, project)
    r = ml_backend.post("/rank", json={"project": project}, timeout=30)
    assert r.status_code == 202, r.text
    return _wait_for_rank(label_studio, ml_backend, project, before)


def _cli_rank(ml_backend, project: int, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m backend rank --project P`` with the backend's environment (and ``env`` over it)."""
    from labelstudio import REPO_ROOT, _child_env  # imported here: pytest loads it as a plugin first

    env = {**_child_env(), **ml_backend.env, **(env or {})}
    python = REPO_ROOT / ".venv" / "bin" / "python"
    command = [
        str(python if python.exists() else sys.executable),
        "-m",
        "backend",
        "rank",
        "--project",
        str(project),
        "--quiet",
        *args,
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )


def _ranking(ml_backend, project: int) -> tuple[str, dict]:
    version = VersionStore(ml_backend.model_dir).latest(str(project))
    return version.name, json.loads((version.path / "ranking.json").read_text())


def _queue_view(ls_client, project: int) -> dict:
    views = [v for v in ls_client.views(project) if (v.get("data") or {}).get("title") == QUEUE_TITLE]
    assert len(views) == 1, f"{len(views)} views titled {QUEUE_TITLE!r}: {views}"
    return views[0]


def _ours(ls_client, task_id: int, version: str) -> list[dict]:
    return [p for p in ls_client.predictions(task=task_id) if p.get("model_version") == version]


def _check_order(ids: list[int], scores: dict[int, float]) -> None:
    """``ids`` (a view's order) sorts ``scores`` ascending; ties may come in any order."""
    listed = [scores[t] for t in ids]
    assert listed == sorted(scores.values()), f"view order {list(zip(ids, listed))}"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rank_folder(label_studio) -> Path:
    """Ten small images under Label Studio's document root (q0.png ... q9.png)."""
    folder = Path(label_studio.document_root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(SIZES):
        to_pil_image(make_image(500 + i, w, h)).save(folder / f"q{i}.png")
    return folder


@pytest.fixture(scope="module")
def queue(label_studio, ls_client, ml_backend, rank_folder) -> dict:
    """A project of 6 tasks with images, 1 whose image is missing and 1 labelled one,
    connected to the backend and ranked once through POST /rank."""
    names = [f"q{i}.png" for i in range(6)] + ["missing.png", "q6.png"]
    project = _make_project(ls_client, ml_backend, rank_folder, "e2e hua queue", names)
    tasks = {t["data"]["image"]: t["id"] for t in ls_client.tasks(project)}
    labeled, broken = tasks[_url("q6.png")], tasks[_url("missing.png")]
    _annotate(ls_client, labeled)
    _connect(ls_client, ml_backend, project)
    record = _rank(label_studio, ml_backend, project)
    version, ranking = _ranking(ml_backend, project)
    return {
        "project": project,
        "tasks": tasks,
        "labeled": labeled,
        "broken": broken,
        "ranked": sorted(set(tasks.values()) - {labeled, broken}),
        "record": record,
        "version": version,
        "ranking": ranking,
    }


# --------------------------------------------------------------------------
# the queue after one ranking
# --------------------------------------------------------------------------


def test_rank_job_pushes_one_scored_prediction_per_unlabeled_task(label_studio, ls_client, ml_backend, queue):
    project, version, ranking = queue["project"], queue["version"], queue["ranking"]
    result = queue["record"]["result"]
    assert result["model_version"] == version
    assert result["ranked"] == 6 and result["pushed"] == 6, result
    # the missing image is reported, not fatal
    assert list(result["failed"]) == [str(queue["broken"])], result
    assert sorted(int(t) for t in ranking["tasks"]) == queue["ranked"]
    assert ranking["labeled_freq"] == [1.0, 0.0]  # read from the annotation through LS's API
    for task_id in queue["ranked"]:
        entry = ranking["tasks"][str(task_id)]
        (prediction,) = _ours(ls_client, task_id, version)
        assert prediction["score"] == pytest.approx(entry["score"], abs=SCORE_TOLERANCE)
        assert len(prediction["result"]) == len(entry["result"]) > 0
        for stored, pushed in zip(entry["result"], prediction["result"]):  # the boxes of the ranking
            assert pushed["value"]["rectanglelabels"] == stored["value"]["rectanglelabels"]
            for key in ("x", "y", "width", "height"):
                assert pushed["value"][key] == pytest.approx(stored["value"][key], abs=1e-9)
    assert _ours(ls_client, queue["broken"], version) == []
    assert _ours(ls_client, queue["labeled"], version) == []
    # the project's model_version is the ranking's: the prediction-score column uses it
    assert ls_client.get_project(project)["model_version"] == version


def test_queue_view_lists_unlabeled_tasks_in_hua_order(label_studio, ls_client, ml_backend, queue):
    project, ranking = queue["project"], queue["ranking"]
    view = _queue_view(ls_client, project)
    assert view["data"]["ordering"] == ["tasks:predictions_score"]
    # LS keeps the filters as a FilterGroup and gives them back in the shape they were sent
    assert view["data"]["filters"] == {
        "conjunction": "and",
        "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
    }
    listed = ls_client.tasks(project, view=view["id"])
    ids = [t["id"] for t in listed]
    assert queue["labeled"] not in ids  # the filter: unlabeled only
    scores = {int(t): e["score"] for t, e in ranking["tasks"].items()}
    # the scored tasks by ascending score, then the task without a score
    _check_order(ids[:-1], scores)
    assert ids[-1] == queue["broken"], ids
    by_id = {t["id"]: t for t in listed}
    for task_id, score in scores.items():
        assert by_id[task_id]["predictions_score"] == pytest.approx(score, abs=SCORE_TOLERANCE)
    assert by_id[queue["broken"]]["predictions_score"] is None
    assert len(set(scores.values())) > 1, f"every score ties: {scores}"


def _check_default_tab_first(ls_client, project: int) -> None:
    """Label Studio makes no "Default" tab once a tab exists: the backend made it before its queue, unfiltered,
    so that every task, the annotated ones included, stays in a tab."""
    views = ls_client.views(project)
    titles = [(v.get("data") or {}).get("title") for v in views]
    assert titles == ["Default", QUEUE_TITLE], views
    default = views[0]["data"]
    assert not (default.get("filters") or {}).get("items") and not default.get("ordering"), default
    listed = sorted(t["id"] for t in ls_client.tasks(project, view=views[0]["id"]))
    assert listed == sorted(t["id"] for t in ls_client.tasks(project))


def test_a_default_tab_lists_every_task_before_the_queue(label_studio, ls_client, ml_backend, queue):
    _check_default_tab_first(ls_client, queue["project"])
    default = ls_client.views(queue["project"])[0]
    assert queue["labeled"] in {t["id"] for t in ls_client.tasks(queue["project"], view=default["id"])}


def test_next_in_the_queue_view_is_the_top_task(label_studio, ls_client, ml_backend, queue):
    """NOTE: /next locks the task it returns for this user: one call per project."""
    project = queue["project"]
    _, ranking = _ranking(ml_backend, project)
    scores = {int(t): e["score"] for t, e in ranking["tasks"].items()}
    top = min(scores.values())
    task = ls_client.next_task(project, view=_queue_view(ls_client, project)["id"])
    assert task is not None
    assert scores.get(task["id"]) == top, f"/next gave {task['id']}, scores {scores}"


def test_ranking_again_is_idempotent(label_studio, ls_client, ml_backend, queue):
    project, version = queue["project"], queue["version"]
    view_before = _queue_view(ls_client, project)
    # an incremental run with nothing new, through the backend
    record = _rank(label_studio, ml_backend, project)
    assert record["result"]["pushed"] == 0 and record["result"]["ranked"] == 6, record
    # a full re-ranking from the command line replaces the version's predictions
    done = _cli_rank(ml_backend, project, "--full")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    view_after = _queue_view(ls_client, project)
    assert view_after["id"] == view_before["id"] and view_after["data"] == view_before["data"]
    for task_id in queue["ranked"]:
        assert len(_ours(ls_client, task_id, version)) == 1, task_id
    assert ls_client.model_versions(project).get(version) == 6
    assert ls_client.get_project(project)["model_version"] == version
    _, ranking = _ranking(ml_backend, project)
    for task_id in queue["ranked"]:  # the same model and images: the same scores
        assert ranking["tasks"][str(task_id)]["score"] == pytest.approx(
            queue["ranking"]["tasks"][str(task_id)]["score"], abs=1e-6
        )


def test_imported_tasks_join_the_queue(label_studio, ls_client, ml_backend, queue):
    """Importing tasks sends TASKS_CREATED to the connected backend: a rank job
    scores only the new tasks, on the stored scale, and pushes them."""
    project, version = queue["project"], queue["version"]
    _, before = _ranking(ml_backend, project)
    old = {t: [(p["id"], p["score"]) for p in _ours(ls_client, t, version)] for t in queue["ranked"]}
    record_before = _record(ml_backend, project)
    ls_client.import_tasks(project, [{"image": _url("q7.png")}, {"image": _url("q8.png")}])
    record = _wait_for_rank(label_studio, ml_backend, project, record_before)  # the webhook arrived
    new = sorted(t["id"] for t in ls_client.tasks(project) if t["data"]["image"] in (_url("q7.png"), _url("q8.png")))
    assert record["result"]["pushed"] == 2 and record["result"]["ranked"] == len(before["tasks"]) + 2, record
    _, after = _ranking(ml_backend, project)
    assert set(after["tasks"]) == set(before["tasks"]) | {str(t) for t in new}
    assert {t: after["tasks"][t] for t in before["tasks"]} == before["tasks"]
    assert after["scale"] == before["scale"]
    # the old tasks' predictions are untouched
    assert {t: [(p["id"], p["score"]) for p in _ours(ls_client, t, version)] for t in queue["ranked"]} == old
    # the new tasks have one prediction of the current version and sit in the queue by score
    for task_id in new:
        (prediction,) = _ours(ls_client, task_id, version)
        assert prediction["score"] == pytest.approx(after["tasks"][str(task_id)]["score"], abs=SCORE_TOLERANCE)
    view = _queue_view(ls_client, project)
    listed = ls_client.tasks(project, view=view["id"])
    ids = [t["id"] for t in listed]
    assert set(new) <= set(ids)
    assert all(t["predictions_score"] is not None for t in listed if t["id"] in new)
    scores = {int(t): e["score"] for t, e in after["tasks"].items()}
    _check_order([t for t in ids if t in scores], scores)


def test_predict_answers_ranked_tasks_from_the_stored_ranking(label_studio, ls_client, ml_backend, queue):
    project = ls_client.get_project(queue["project"])
    _, ranking = _ranking(ml_backend, queue["project"])
    tasks = [t for t in ls_client.tasks(queue["project"]) if str(t["id"]) in ranking["tasks"]][:3]
    body = {
        "tasks": [{"id": t["id"], "data": t["data"]} for t in tasks],
        "project": f"{project['id']}.1",
        "label_config": project["label_config"],
    }
    r = ml_backend.post("/predict", json=body, timeout=120)
    assert r.status_code == 200, r.text
    for task, result in zip(tasks, r.json()["results"]):
        assert result == ranking["tasks"][str(task["id"])]


# --------------------------------------------------------------------------
# a project connected before its tasks exist
# --------------------------------------------------------------------------


def test_a_project_connected_before_its_tasks(label_studio, ls_client, ml_backend, rank_folder):
    """Ranking a project with no unlabeled task succeeds and sets nothing; the tasks
    imported afterwards get a full ranking (TASKS_CREATED) and the queue."""
    project = _make_project(ls_client, ml_backend, rank_folder, "e2e hua late tasks", ["q9.png"])
    (only,) = ls_client.tasks(project)
    _annotate(ls_client, only["id"])
    _connect(ls_client, ml_backend, project)
    title = ls_client.get_project(project)["model_version"]
    record = _rank(label_studio, ml_backend, project)
    assert record["result"]["ranked"] == 0 and record["result"]["pushed"] == 0, record
    assert ls_client.get_project(project)["model_version"] == title
    _queue_view(ls_client, project)
    _check_default_tab_first(ls_client, project)  # its only task is annotated: in the Default tab alone

    before = _record(ml_backend, project)
    ls_client.import_tasks(project, [{"image": _url("q1.png")}, {"image": _url("q2.png")}, {"image": _url("q3.png")}])
    record = _wait_for_rank(label_studio, ml_backend, project, before)
    assert record["result"]["pushed"] == 3, record
    version, ranking = _ranking(ml_backend, project)
    assert ranking["scale"]["entropy_cutoff"] is not None  # a real pool ranking, not an empty one
    assert ls_client.get_project(project)["model_version"] == version
    view = _queue_view(ls_client, project)
    ids = [t["id"] for t in ls_client.tasks(project, view=view["id"])]
    _check_order(ids, {int(t): e["score"] for t, e in ranking["tasks"].items()})
    assert only["id"] not in ids


# --------------------------------------------------------------------------
# the same queue, ranked in shards
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_backend(label_studio, tmp_path_factory):
    """A second backend on the same Label Studio that ranks in shards of 2 tasks (batches of 2),
    run as child processes (MAX_JOB_PROCESSES=2, no Redis), each on one torch thread as RQ
    workers would be (so that a one-process ranking rounds alike)."""
    from labelstudio import start_ml_backend  # imported here: pytest loads it as a plugin first

    base = tmp_path_factory.mktemp("ml-backend-sharded")
    env = {"MAX_JOB_PROCESSES": "2", "RANK_SHARD_SIZE": "2", "BATCH_SIZE": "2", "OMP_NUM_THREADS": "1"}
    server = start_ml_backend(label_studio, base / "model", base / "gunicorn.log", extra_env=env)
    try:
        yield server
    finally:
        server.stop()


def test_a_ranking_in_shards_pushes_what_one_process_ranks(label_studio, ls_client, sharded_backend, rank_folder):
    """A pool of 7 tasks (one image missing) and a labelled one, ranked in 4 first-pass shards
    through POST /rank: one prediction per unlabeled task in Label Studio with its stored score,
    the queue tab in that order; then ranked again in one process (the CLI, MAX_JOB_PROCESSES=1):
    the same ranking.json."""
    names = [f"q{i}.png" for i in range(6)] + ["missing.png", "q6.png"]
    project = _make_project(ls_client, sharded_backend, rank_folder, "e2e hua shards", names)
    tasks = {t["data"]["image"]: t["id"] for t in ls_client.tasks(project)}
    _annotate(ls_client, tasks[_url("q6.png")])
    _connect(ls_client, sharded_backend, project)
    record = _rank(label_studio, sharded_backend, project)
    assert record["result"]["ranked"] == 6 and record["result"]["pushed"] == 6, record
    assert list(record["result"]["failed"]) == [str(tasks[_url("missing.png")])], record
    version, sharded = _ranking(sharded_backend, project)
    shards = VersionStore(sharded_backend.model_dir).get(str(project), version).path / SHARDS_DIR
    assert shards.is_dir() and not any(shards.iterdir())  # where the shards wrote, emptied once reduced
    scores = {int(t): e["score"] for t, e in sharded["tasks"].items()}
    for task_id, score in scores.items():
        (prediction,) = _ours(ls_client, task_id, version)
        assert prediction["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)
    ids = [t["id"] for t in ls_client.tasks(project, view=_queue_view(ls_client, project)["id"])]
    _check_order(ids[:-1], scores)  # the scored tasks by ascending score, then the one without a score
    assert ids[-1] == tasks[_url("missing.png")], ids

    done = _cli_rank(sharded_backend, project, "--full", env={"MAX_JOB_PROCESSES": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert _ranking(sharded_backend, project) == (version, sharded)

"""Tests of the HUA queue job (backend/ranking.py), its stored ranking
(backend/ranking_store.py) and /predict answering from it, with the real small
detector on the CPU and a fake Label Studio client (the same methods as
backend.lsclient.LabelStudioClient, recording every call).

The project's first version is made here from ``test_scoring.calibrated_model``
(the real detector without weights, its frozen batch-norm statistics set from
noise) so that entropies and metrics depend on the image.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import replace

import pytest
import torch
from test_scoring import CONFIG, CountingDetector, calibrated_model, make_image
from torchvision.transforms.functional import to_pil_image, to_tensor

from backend.app import create_app
from backend.jobs.entry import ranking_job
from backend.jobs.rank import QUEUE_TITLE, QUEUE_VIEW
from backend.jobs.scheduler import Scheduler
from backend.labels import parse_label_config
from backend.lsclient import LabelStudioError
from backend.predictions import task_prediction
from backend.ranking_store import RANKING_FILE, RankingCache, StoredRanking
from backend.service import app_service, build_service
from helpers import LABEL_CONFIG, LABELS, make_settings, predict_body
from model.hua import (
    METRIC_NAMES,
    HUAConfig,
    Scale,
    fit_scale,
    image_entropy,
    image_metrics,
    num_candidates,
    score_single,
)
from model.registry import ServedModel
from model.version_meta import VersionMeta

pytestmark = pytest.mark.slow

PROJECT = "7"
NAMES = parse_label_config(LABEL_CONFIG)
# A pool of 5 unlabeled tasks, one of whose images is broken: 4 are scored and P = 2.
HUA = dict(hua_min_candidates=0, hua_retrieval_fraction=0.5)
SIZES = {
    1: (64, 48),
    2: (48, 64),
    3: (64, 48),
    4: (56, 56),
    5: (40, 48),
    6: (64, 40),
    100: (48, 48),
    101: (64, 56),
    200: (52, 60),
    300: (60, 52),
    301: (44, 60),
}
LABELED, BROKEN = 1, 6


def _url(name: str) -> str:
    return f"/data/local-files/?d={name}"


def _task(task_id: int, annotations: list | None = None) -> dict:
    name = "broken.png" if task_id == BROKEN else f"t{task_id}.png"
    annotations = annotations or []
    return {
        "id": task_id,
        "data": {"image": _url(name)},
        "annotations": annotations,
        "total_annotations": len(annotations),
        "is_labeled": bool(annotations),
        "predictions": [],
    }


def _car_annotation() -> dict:
    value = {"x": 10, "y": 10, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": ["car"]}
    return {
        "id": 1,
        "was_cancelled": False,
        "created_at": "2026-01-01T00:00:00Z",
        "result": [{"type": "rectanglelabels", "from_name": "label", "to_name": "image", "value": value}],
    }


class FakeLabelStudio:
    """The LabelStudioClient methods run_ranking uses, over an in-memory project."""

    def __init__(self, tasks: list[dict]) -> None:
        self.task_list = tasks
        self.predictions: list[dict] = []
        self.views: list[dict] = []
        self.model_version = "hua-backend"  # LS sets the backend's title on connect
        self.calls: list[tuple] = []
        self._next_id = 1

    def project(self, project):
        self.calls.append(("project", str(project)))
        return {"id": int(project), "label_config": LABEL_CONFIG, "model_version": self.model_version}

    def tasks(self, project, page_size=500):
        self.calls.append(("tasks", str(project)))
        return copy.deepcopy(self.task_list)

    def import_predictions(self, project, predictions, chunk=1000):
        self.calls.append(("import_predictions", str(project), [p["task"] for p in predictions]))
        known = {t["id"] for t in self.task_list}
        for item in predictions:
            assert set(item) == {"task", "result", "score", "model_version"}, item
            assert item["task"] in known
            self.predictions.append({"id": self._next_id, **copy.deepcopy(item)})
            self._next_id += 1
        return len(predictions)

    def delete_version_predictions(self, project, model_version):
        self.calls.append(("delete_version_predictions", str(project), model_version))
        # LS 1.23.2 (Project.delete_predictions) also clears the project's model_version when
        # it is this version or the connected backend's title
        if self.model_version in (model_version, "hua-backend"):
            self.model_version = None
        self.predictions = [p for p in self.predictions if p["model_version"] != model_version]

    def set_model_version(self, project, model_version):
        self.calls.append(("set_model_version", str(project), model_version))
        # LS answers 400 unless the version is known (a stored prediction or the backend's title)
        assert any(p["model_version"] == model_version for p in self.predictions), "unknown model_version"
        self.model_version = model_version

    def save_view(self, project, title, data):
        self.calls.append(("save_view", str(project), title, copy.deepcopy(dict(data))))
        existing = [v for v in self.views if v["data"]["title"] == title]
        if existing:
            existing[0]["data"] = {**data, "title": title}
            return existing[0]
        view = {"id": len(self.views) + 1, "project": int(project), "data": {**data, "title": title}}
        self.views.append(view)
        return view

    def count(self, task_id: int, version: str) -> int:
        return sum(1 for p in self.predictions if p["task"] == task_id and p["model_version"] == version)

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranking-files")
    for task_id, (w, h) in SIZES.items():
        if task_id != BROKEN:
            to_pil_image(make_image(task_id, w, h)).save(root / f"t{task_id}.png")
    (root / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def fake_ls():
    return FakeLabelStudio([_task(LABELED, [_car_annotation()]), *(_task(i) for i in (2, 3, 4, 5, BROKEN))])


@pytest.fixture(scope="module")
def app(tmp_path_factory, root, fake_ls):
    settings = make_settings(
        tmp_path_factory.mktemp("ranking-models"), local_files_document_root=str(root), batch_size=4, **HUA
    )
    app = create_app(service=build_service(settings, ls_client=fake_ls))
    service = app_service(app)
    # the project's first version: the calibrated real detector, saved as the registry would
    meta = VersionMeta(
        labels=list(LABELS), backbone=CONFIG.backbone, weights="none", weights_requested="none", parent=None
    )
    service.store.save(PROJECT, calibrated_model().state_dict(), meta)
    return app


@pytest.fixture(scope="module")
def service(app):
    return app_service(app)


@pytest.fixture(scope="module")
def counting(service) -> CountingDetector:
    """The registry's served detector, wrapped to count its predict calls."""
    served = service.registry.get(PROJECT, NAMES.labels, NAMES.aliases)
    wrapper = CountingDetector(served.detector)
    service.registry._served[PROJECT] = ServedModel(wrapper, served.version)
    assert service.registry.get(PROJECT, NAMES.labels, NAMES.aliases).detector is wrapper
    return wrapper


@pytest.fixture(scope="module")
def first_run(service, fake_ls, counting):
    records = Records()
    logger = logging.getLogger("backend.jobs.rank")
    logger.addHandler(records)
    try:
        result = ranking_job(service).run(PROJECT)
    finally:
        logger.removeHandler(records)
    served = service.registry.get(PROJECT, NAMES.labels, NAMES.aliases)
    path = served.version.path / RANKING_FILE
    return {
        "result": result,
        "version": served.version,
        "path": path,
        "stored": json.loads(path.read_text()),
        "calls": list(fake_ls.calls),
        "predictions": copy.deepcopy(fake_ls.predictions),
        "detector_calls": list(counting.calls),
        "warnings": records.messages,
    }


def _image_tensor(service, task_id: int) -> torch.Tensor:
    return to_tensor(service.images.load(_url(f"t{task_id}.png"), task_id))


def _expected_scores(detector, images: list[torch.Tensor], stored: dict) -> list[float]:
    """Scores on the stored scale, recomputed from the detector and model.hua.score_single
    (one batch for the first pass and one for the admitted images' flipped pass, as
    backend.predictions batches them)."""
    scale = Scale.from_json(stored["scale"])
    freq = torch.tensor(stored["labeled_freq"], dtype=torch.float64)
    config = HUAConfig(min_candidates=0, retrieval_fraction=0.5)
    dets = detector.predict(images)
    entropies = [float(image_entropy(d, config)) for d in dets]
    chosen = [i for i, h in enumerate(entropies) if h >= scale.entropy_cutoff]
    flipped = dict(zip(chosen, detector.predict([images[i] for i in chosen], flip=True)))
    return [
        score_single(h, image_metrics(dets[i], flipped[i], freq, config) if i in flipped else None, scale)
        for i, h in enumerate(entropies)
    ]


# --------------------------------------------------------------------------
# the first ranking of a project
# --------------------------------------------------------------------------


class TestFullRanking:
    def test_result(self, first_run):
        result = first_run["result"]
        assert result["model_version"] == first_run["version"].name == "v0001"
        assert result["ranked"] == 4 and result["pushed"] == 4
        assert set(result["failed"]) == {BROKEN}

    def test_a_broken_image_is_reported_not_fatal(self, first_run):
        assert "decodable" in first_run["result"]["failed"][BROKEN]
        assert any(f"task {BROKEN}" in m and "not ranked" in m for m in first_run["warnings"]), first_run["warnings"]
        # no prediction: Label Studio sorts it after every scored task
        assert all(p["task"] != BROKEN for p in first_run["predictions"])

    def test_ranking_json_holds_every_unlabeled_task_it_could_score(self, first_run):
        stored = first_run["stored"]
        assert set(stored["tasks"]) == {"2", "3", "4", "5"}  # not the labelled task, not the broken one
        assert stored["labeled_freq"] == [1.0, 0.0]  # one car box in the labelled task
        scale = Scale.from_json(stored["scale"])
        assert scale.to_json() == stored["scale"]
        for entry in stored["tasks"].values():
            assert entry["model_version"] == "v0001"
            assert 0.0 <= entry["score"] <= 1.0
            assert entry["result"] and all(r["type"] == "rectanglelabels" for r in entry["result"])

    def test_ranking_json_says_why_each_task_ranks_where_it_does(self, first_run):
        details = first_run["stored"]["details"]
        assert set(details) == {"2", "3", "4", "5"}
        candidates = [d for d in details.values() if d["candidate"]]
        assert len(candidates) == 2  # P of the pool
        assert all(set(d["metrics"]) == set(METRIC_NAMES) and d["informativeness"] >= 0 for d in candidates)
        assert all(d["entropy"] >= 0.0 for d in details.values())  # a score-weighted sum: no upper bound
        # the explanation stays with us: Label Studio gets the prediction only
        assert not any({"entropy", "metrics", "candidate"} & set(p) for p in first_run["predictions"])

    def test_predictions_are_pushed_in_bulk_before_the_version_is_set(self, first_run):
        calls = [c for c in first_run["calls"] if c[0] not in ("project", "tasks")]
        assert [c[0] for c in calls] == [
            "delete_version_predictions",
            "import_predictions",
            "set_model_version",
            "save_view",
        ]
        assert calls[0][2] == "v0001" and calls[2][2] == "v0001"
        assert sorted(calls[1][2]) == [2, 3, 4, 5]

    def test_pushed_predictions_are_the_stored_entries(self, first_run):
        stored = first_run["stored"]["tasks"]
        pushed = {p["task"]: p for p in first_run["predictions"]}
        assert set(pushed) == {2, 3, 4, 5}
        for task_id, prediction in pushed.items():
            entry = stored[str(task_id)]
            assert prediction["score"] == entry["score"]
            assert prediction["result"] == entry["result"]
            assert prediction["model_version"] == "v0001"

    def test_the_queue_view(self, first_run):
        (save,) = [c for c in first_run["calls"] if c[0] == "save_view"]
        assert save[1:] == (PROJECT, QUEUE_TITLE, QUEUE_VIEW)
        assert QUEUE_TITLE == "HUA queue"
        assert QUEUE_VIEW["ordering"] == ["tasks:predictions_score"]  # ascending: lowest score first

    def test_the_flipped_pass_ran_for_the_p_candidates_only(self, first_run):
        p = num_candidates(4, HUAConfig(**{"min_candidates": 0, "retrieval_fraction": 0.5}))
        assert p == 2
        calls = first_run["detector_calls"]
        assert sum(len(images) for flip, images, _ in calls if not flip) == 4
        assert sum(len(images) for flip, images, _ in calls if flip) == p
        # candidates (top by entropy) are ahead of everything else in the queue
        scores = sorted(e["score"] for e in first_run["stored"]["tasks"].values())
        assert scores[1] < 0.5 <= scores[2]

    def test_the_pre_annotations_are_the_first_pass_boxes(self, first_run):
        first_pass = [det for flip, _, dets in first_run["detector_calls"] if not flip for det in dets]
        expected = [
            task_prediction(det, list(LABELS), NAMES, "v0001", display_threshold=0.0, score=0.5)["result"]
            for det in first_pass
        ]
        stored = [first_run["stored"]["tasks"][str(t)]["result"] for t in (2, 3, 4, 5)]
        assert stored == json.loads(json.dumps(expected))


# --------------------------------------------------------------------------
# running it again
# --------------------------------------------------------------------------


class TestRankingAgain:
    def test_a_second_run_with_nothing_new_pushes_nothing(self, service, fake_ls, first_run):
        before = first_run["path"].read_text()
        fake_ls.calls.clear()
        result = ranking_job(service).run(PROJECT)
        assert result["pushed"] == 0 and result["ranked"] == 4 and set(result["failed"]) == {BROKEN}
        assert "import_predictions" not in fake_ls.methods()
        assert "delete_version_predictions" not in fake_ls.methods()
        assert first_run["path"].read_text() == before
        assert len(fake_ls.views) == 1 and fake_ls.views[0]["data"]["title"] == QUEUE_TITLE
        assert all(fake_ls.count(t, "v0001") == 1 for t in (2, 3, 4, 5))

    def test_new_tasks_are_scored_on_the_stored_scale_and_only_they_are_pushed(
        self, service, fake_ls, first_run, counting
    ):
        before = json.loads(first_run["path"].read_text())
        old_predictions = copy.deepcopy(fake_ls.predictions)
        fake_ls.task_list += [_task(100), _task(101)]
        fake_ls.calls.clear()
        result = ranking_job(service).run(PROJECT)
        after = json.loads(first_run["path"].read_text())
        # ranking.json grows by exactly the new tasks; the old entries and scale stay
        assert set(after["tasks"]) == set(before["tasks"]) | {"100", "101"}
        assert {k: after["tasks"][k] for k in before["tasks"]} == before["tasks"]
        assert after["scale"] == before["scale"] and after["labeled_freq"] == before["labeled_freq"]
        assert result["pushed"] == 2 and result["ranked"] == 6
        # only the new tasks are pushed; the old predictions are untouched
        imports = [c for c in fake_ls.calls if c[0] == "import_predictions"]
        assert [sorted(c[2]) for c in imports] == [[100, 101]]
        assert "delete_version_predictions" not in fake_ls.methods()
        assert fake_ls.predictions[: len(old_predictions)] == old_predictions
        assert all(fake_ls.count(t, "v0001") == 1 for t in (2, 3, 4, 5, 100, 101))
        assert fake_ls.model_version == "v0001" and len(fake_ls.views) == 1
        # the scores are those of model.hua.score_single on the stored Scale
        expected = _expected_scores(counting.inner, [_image_tensor(service, 100), _image_tensor(service, 101)], before)
        assert [after["tasks"]["100"]["score"], after["tasks"]["101"]["score"]] == expected

    def test_a_push_cut_short_leaves_no_duplicates_when_run_again(self, service, fake_ls, first_run, monkeypatch):
        """Label Studio stored the first prediction, then the connection broke: the next run pushes only the rest."""
        fake_ls.task_list += [_task(300), _task(301)]
        real_import, real_tasks = fake_ls.import_predictions, fake_ls.tasks

        def cut_short(project, predictions, chunk=1000):
            real_import(project, predictions[:1])
            raise LabelStudioError("POST /api/projects/7/import/predictions: ConnectionError (5 tries)")

        def tasks_with_predictions(project, page_size=500):  # as LS lists them: with their predictions
            return [
                {**t, "predictions": [p for p in fake_ls.predictions if p["task"] == t["id"]]}
                for t in real_tasks(project)
            ]

        monkeypatch.setattr(fake_ls, "tasks", tasks_with_predictions)
        monkeypatch.setattr(fake_ls, "import_predictions", cut_short)
        with pytest.raises(LabelStudioError):
            ranking_job(service).run(PROJECT)
        assert sum(fake_ls.count(t, "v0001") for t in (300, 301)) == 1
        monkeypatch.setattr(fake_ls, "import_predictions", real_import)
        result = ranking_job(service).run(PROJECT)
        assert result["pushed"] == 1
        assert [fake_ls.count(t, "v0001") for t in (300, 301)] == [1, 1]

    def test_a_full_rerun_replaces_the_versions_predictions(self, service, fake_ls, first_run):
        fake_ls.calls.clear()
        result = ranking_job(service).run(PROJECT, full=True)
        ranked = [t["id"] for t in fake_ls.task_list if t["id"] not in (LABELED, BROKEN)]
        assert result["ranked"] == result["pushed"] == len(ranked)
        methods = fake_ls.methods()
        assert methods.index("delete_version_predictions") < methods.index("import_predictions")
        assert all(fake_ls.count(t, "v0001") == 1 for t in ranked)
        assert len(fake_ls.views) == 1


# --------------------------------------------------------------------------
# the stored ranking
# --------------------------------------------------------------------------


class TestRankingStore:
    def test_round_trip(self, tmp_path):
        from model.versions import Version

        version = Version(PROJECT, "v0003", tmp_path, VersionMeta())
        scale = fit_scale(
            torch.tensor([[0.1, 0.2, 0.0, 1.0], [0.3, 0.2, 0.5, 1.7]], dtype=torch.float64),
            torch.tensor([0.2, 0.9, 0.123456789012345], dtype=torch.float64),
            0.123456789012345,
        )
        why = {"entropy": 0.75, "candidate": True, "metrics": {"semantic_affinity": 0.1}, "informativeness": 1.2}
        ranking = StoredRanking(
            scale, [0.25, 0.75], {5: {"result": [], "score": 0.5, "model_version": "v0003"}}, {5: why}
        )
        ranking.write(version)
        back = StoredRanking.read(version)
        assert back.scale.to_json() == scale.to_json() and back.labeled_freq == [0.25, 0.75]
        assert back.tasks == {5: {"result": [], "score": 0.5, "model_version": "v0003"}}
        assert back.details == {5: why}
        assert not list(tmp_path.glob("*.tmp"))

    def test_no_file_is_an_empty_ranking(self, tmp_path):
        from model.versions import Version

        empty = StoredRanking.read(Version(PROJECT, "v0001", tmp_path, VersionMeta()))
        assert empty.scale is None and empty.tasks == {}

    def test_the_cache_rereads_a_changed_file(self, tmp_path):
        import os

        from model.versions import Version

        version = Version(PROJECT, "v0001", tmp_path, VersionMeta())
        cache = RankingCache()
        assert cache.get(version).tasks == {}
        StoredRanking(None, [], {1: {"score": 0.1}}).write(version)
        assert cache.get(version).tasks == {1: {"score": 0.1}}
        StoredRanking(None, [], {1: {"score": 0.2}}).write(version)
        os.utime(version.path / RANKING_FILE, ns=(1, 1))  # a different mtime, whatever the clock's grain
        assert cache.get(version).tasks == {1: {"score": 0.2}}


# --------------------------------------------------------------------------
# /predict with a stored ranking
# --------------------------------------------------------------------------


def _predict(client, tasks: list[dict]) -> dict:
    response = client.post("/predict", json=predict_body(tasks, project=f"{PROJECT}.1700000000"))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


class TestPredictFromRanking:
    def test_ranked_tasks_are_answered_without_running_the_model(self, app, service, first_run, counting):
        stored = json.loads(first_run["path"].read_text())["tasks"]
        counting.calls.clear()
        body = _predict(app.test_client(), [_task(t) for t in (4, 2, 5)])
        assert counting.calls == []
        assert body["model_version"] == "v0001"
        assert body["results"] == [stored["4"], stored["2"], stored["5"]]

    def test_a_new_task_gets_a_score_on_the_same_scale(self, app, service, first_run, counting):
        stored = json.loads(first_run["path"].read_text())
        counting.calls.clear()
        (result,) = _predict(app.test_client(), [_task(200)])["results"]
        assert sum(len(images) for flip, images, _ in counting.calls if not flip) == 1
        (expected,) = _expected_scores(counting.inner, [_image_tensor(service, 200)], stored)
        assert result["score"] == expected
        assert result["model_version"] == "v0001" and result["result"]
        assert "200" not in json.loads(first_run["path"].read_text())["tasks"]  # /predict does not store

    def test_ranked_and_new_tasks_keep_their_order(self, app, first_run, counting):
        stored = json.loads(first_run["path"].read_text())["tasks"]
        counting.calls.clear()
        results = _predict(app.test_client(), [_task(3), _task(200), _task(BROKEN), _task(2)])["results"]
        assert results[0] == stored["3"] and results[3] == stored["2"]
        assert results[1]["score"] is not None and results[2] == []
        assert sum(len(images) for flip, images, _ in counting.calls if not flip) == 1  # task 200 only


# --------------------------------------------------------------------------
# TASKS_CREATED and POST /rank schedule a rank job
# --------------------------------------------------------------------------


class TestRankScheduling:
    @pytest.fixture
    def submitted(self, service):
        """The jobs submitted by an app of the same parts whose scheduler records them instead of running them."""
        jobs: list[tuple[str, str]] = []
        scheduler = Scheduler(service.board, lambda p, k: jobs.append((p, k)), 10)
        yield create_app(service=replace(service, scheduler=scheduler)), jobs
        service.board.clear_pending(PROJECT, "rank")

    def test_tasks_created_schedules_one_rank_job(self, submitted):
        app, submitted = submitted
        client = app.test_client()
        body = {"action": "TASKS_CREATED", "project": {"id": int(PROJECT)}, "tasks": [{"id": 300}]}
        first = client.post("/webhook", json=body)
        assert first.status_code == 202 and first.get_json()["status"] == "scheduled"
        second = client.post("/webhook", json=body)
        assert second.status_code == 202 and second.get_json()["status"] == "coalesced"
        assert submitted == [(PROJECT, "rank")]

    def test_post_rank_schedules_a_rank_job(self, submitted):
        app, submitted = submitted
        response = app.test_client().post("/rank", json={"project": PROJECT})
        assert response.status_code == 202 and response.get_json()["status"] == "scheduled"
        assert submitted == [(PROJECT, "rank")]
        jobs = app.test_client().get("/jobs").get_json()["jobs"]
        assert jobs[PROJECT]["rank"]["status"] == "queued"


# --------------------------------------------------------------------------
# a project with nothing to rank yet
# --------------------------------------------------------------------------


class TestNothingToRank:
    """A rank job on a project whose tasks are all labelled (or that has none yet):
    it must succeed, and must not pin the version to an empty scale."""

    EMPTY = "8"

    @pytest.fixture
    def empty_ls(self):
        return FakeLabelStudio([{**_task(LABELED, [_car_annotation()]), "id": 50}])

    def test_a_project_without_unlabeled_tasks(self, service, empty_ls):
        result = ranking_job(replace(service, ls_client=empty_ls)).run(self.EMPTY)
        assert result["ranked"] == 0 and result["pushed"] == 0 and result["failed"] == {}
        # Label Studio refuses a model_version it does not know, and deleting predictions
        # clears the project's: neither is called, the project keeps its model_version
        assert "set_model_version" not in empty_ls.methods()
        assert "delete_version_predictions" not in empty_ls.methods()
        assert empty_ls.model_version == "hua-backend"
        assert len(empty_ls.views) == 1

    def test_tasks_imported_later_get_a_full_ranking(self, service, empty_ls):
        ranking_job(replace(service, ls_client=empty_ls)).run(self.EMPTY)
        empty_ls.task_list += [_task(2), _task(3), _task(4)]
        result = ranking_job(replace(service, ls_client=empty_ls)).run(self.EMPTY)
        assert result["pushed"] == 3
        served = service.registry.get(self.EMPTY, NAMES.labels, NAMES.aliases)
        stored = StoredRanking.read(served.version)
        # a real pool ranking: P = ceil(0.5 * 3) = 2 candidates set the cutoff
        assert stored.scale is not None and stored.scale.entropy_cutoff != float("inf")
        scores = sorted(e["score"] for e in stored.tasks.values())
        assert scores[1] < 0.5 <= scores[2]
        assert empty_ls.model_version == served.name

"""Tests of backend/deferred.py and backend/jobs/predict.py: the predict job that finishes what /predict deferred.

The real small model on the CPU and a fake Label Studio (test_ranking_job's,
with each task's predictions inlined as /api/tasks?fields=all gives them), so
that the checks are on what Label Studio ends up holding: exactly one
prediction of the serving version per task, whatever runs twice.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_ranking_job import FakeLabelStudio

from backend.deferred import KIND, DeferredTasks, holds_version
from backend.jobs.board import run_job
from backend.jobs.entry import JOBS, predict_job
from backend.labels import parse_label_config
from backend.ranking_store import RANKING_FILE, StoredRanking
from backend.service import Service, build_service
from helpers import LABEL_CONFIG, make_settings, write_image
from model.hua import fit_scale

PROJECT = "3"
NAMES = parse_label_config(LABEL_CONFIG)
BROKEN = 4


class InliningLabelStudio(FakeLabelStudio):
    """Tasks come with their stored predictions, as Label Studio's /api/tasks?fields=all has them."""

    def tasks(self, project, page_size=500):
        tasks = super().tasks(project, page_size)
        for task in tasks:
            task["predictions"] = [copy.deepcopy(p) for p in self.predictions if p["task"] == task["id"]]
        return tasks


def _task(task_id: int) -> dict:
    name = "broken.png" if task_id == BROKEN else f"{task_id}.png"
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d={name}"},
        "annotations": [],
        "total_annotations": 0,
        "is_labeled": False,
        "predictions": [],
    }


@pytest.fixture
def service(tmp_path) -> Service:
    root = tmp_path / "files"
    for task_id in range(1, 8):
        write_image(root / f"{task_id}.png", 40 + task_id, 32, (20 * task_id, 90, 160))
    (root / "broken.png").write_text("not an image")
    settings = make_settings(tmp_path / "models", local_files_document_root=str(root), batch_size=2)
    return build_service(settings, ls_client=InliningLabelStudio([_task(i) for i in range(1, 8)]))


def _hand_over(service: Service, *task_ids: int) -> None:
    service.deferred.add(PROJECT, list(task_ids))


def _version(service: Service) -> str:
    return service.registry.get(PROJECT, NAMES.labels, NAMES.aliases).name


class TestDeferredTasks:
    def test_hand_overs_add_up_and_are_dropped_once_done(self, tmp_path):
        store = DeferredTasks(tmp_path)
        store.add(PROJECT, [3, 1])
        store.add(PROJECT, [1, 2])
        files, ids = store.pending(PROJECT)
        assert ids == {1, 2, 3} and len(files) == 2
        store.add(PROJECT, [9])  # while the job runs: left for the next one
        store.drop(files)
        assert store.pending(PROJECT)[1] == {9}

    def test_nothing_handed_over(self, tmp_path):
        assert DeferredTasks(tmp_path).pending(PROJECT) == ([], set())


class TestPredictJob:
    def test_pushes_one_prediction_per_task_and_reports_broken_images(self, service):
        _hand_over(service, 1, 2, 3, BROKEN)
        result = predict_job(service).run(PROJECT)
        fake, version = service.ls_client, _version(service)
        assert [fake.count(i, version) for i in (1, 2, 3, BROKEN, 5)] == [1, 1, 1, 0, 0]
        assert result["predicted"] == 3 and result["requested"] == 4
        assert list(result["failed"]) == [BROKEN] and result["failed"][BROKEN].startswith("undecodable")
        assert all(p["result"] and p["model_version"] == version for p in fake.predictions)
        assert service.deferred.pending(PROJECT) == ([], set())

    def test_running_twice_never_duplicates(self, service):
        _hand_over(service, 1, 2)
        predict_job(service).run(PROJECT)
        _hand_over(service, 1, 2, 5)  # a second retrieve deferred the same tasks again
        result = predict_job(service).run(PROJECT)
        version = _version(service)
        assert [service.ls_client.count(i, version) for i in (1, 2, 5)] == [1, 1, 1]
        assert result["already_predicted"] == 2 and result["predicted"] == 1

    def test_pushes_as_it_goes(self, service, monkeypatch):
        monkeypatch.setattr("backend.jobs.predict.PUSH_EVERY", 2)
        _hand_over(service, 1, 2, 3, 5, 6)
        progress: list[float] = []
        predict_job(service).run(PROJECT, lambda fraction, message: progress.append(fraction))
        pushes = [c[2] for c in service.ls_client.calls if c[0] == "import_predictions"]
        assert pushes == [[1, 2], [3, 5], [6]]
        assert progress == pytest.approx([0.4, 0.8, 1.0])

    def test_deleted_tasks_are_skipped(self, service):
        _hand_over(service, 1, 99)
        result = predict_job(service).run(PROJECT)
        assert result["gone"] == 1 and result["predicted"] == 1

    def test_runs_as_a_job_with_its_record(self, service):
        _hand_over(service, 6, 7)
        result = run_job(service.board, PROJECT, KIND, JOBS[KIND](service, PROJECT))
        record = service.board.read(PROJECT, KIND)
        assert record.status == "done" and record.progress == 1.0
        assert record.result == json.loads(json.dumps(result)) and result["predicted"] == 2


class TestRankedVersion:
    """With a stored ranking, deferred tasks are scored on its scale and join it."""

    @pytest.fixture
    def ranked(self, service):
        served = service.registry.get(PROJECT, NAMES.labels, NAMES.aliases)
        scale = fit_scale(torch.tensor([[0.0] * 4, [1.0] * 4], dtype=torch.float64), torch.ones(2), 0.0)
        entry = {"result": [], "score": 0.5, "model_version": served.name}
        StoredRanking(scale, [0.5, 0.5], {7: entry}).write(served.version)
        return served

    def test_pushed_tasks_join_the_stored_ranking(self, service, ranked):
        _hand_over(service, 1, 2)
        predict_job(service).run(PROJECT)
        stored = json.loads((ranked.version.path / RANKING_FILE).read_text())["tasks"]
        pushed = {p["task"]: p for p in service.ls_client.predictions}
        assert set(stored) == {"1", "2", "7"}
        for task_id in (1, 2):
            assert stored[str(task_id)]["score"] == pushed[task_id]["score"]

    def test_a_task_the_ranking_holds_is_pushed_from_it(self, service, ranked):
        _hand_over(service, 7)
        predict_job(service).run(PROJECT)
        (pushed,) = service.ls_client.predictions
        assert (pushed["task"], pushed["score"], pushed["result"]) == (7, 0.5, [])


def test_holds_version():
    task = {"predictions": [{"model_version": "v0001"}, {"model_version": "v0002"}]}
    assert holds_version(task, "v0002") and not holds_version(task, "v0003")
    assert not holds_version({"predictions": []}, "v0001") and not holds_version({}, "v0001")

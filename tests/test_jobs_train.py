"""Tests of backend/jobs/train.py (and its entry in backend/jobs/entry.py): the service's training
jobs, with Label Studio replaced by a stand-in client."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from backend.jobs.board import JobBoard, run_job
from backend.jobs.entry import JOBS, run_job_from_env
from backend.service import build_service, swap_when_done
from helpers import LABEL_CONFIG, LABELS, SMALL, WIDE, make_settings

PROJECT = "5"


class FakeLabelStudio:
    """What the training job reads from Label Studio: the project and its exported tasks."""

    def __init__(self, tasks: list[dict]) -> None:
        self.tasks = tasks

    def project(self, project):
        return {"id": int(project), "label_config": LABEL_CONFIG}

    def labeled_tasks(self, project):
        return self.tasks


def _annotated(task_id: int, image: str, ann_id: int, label: str = "car") -> dict:
    region = {
        "from_name": "label",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": 10, "y": 10, "width": 40, "height": 50, "rotation": 0, "rectanglelabels": [label]},
    }
    return {
        "id": task_id,
        "data": {"image": f"/data/local-files/?d={image}"},
        "annotations": [
            {"id": ann_id, "result": [region], "was_cancelled": False, "created_at": "2025-01-01T00:00:00Z"}
        ],
    }


@pytest.fixture
def training_service(tmp_path, image_root):
    """A Service serving project 5 (version v0001 from base weights), with a fake Label Studio."""
    settings = make_settings(
        tmp_path / "models", local_files_document_root=str(image_root), epochs=1, loss="synchronic"
    )  # its version meta must keep lambda and the betas
    service = build_service(
        settings,
        ls_client=FakeLabelStudio(
            [_annotated(1, WIDE, 101), _annotated(2, SMALL, 102, "person"), _annotated(3, "missing.png", 103)]
        ),
    )
    served = service.registry.get(PROJECT, list(LABELS))
    assert served.name == "v0001"
    return service


@pytest.mark.slow
class TestTrainingJobs:
    def test_a_training_makes_a_version_that_serves(self, training_service):
        service = training_service
        result = run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        assert result["model_version"] == "v0002"
        version = service.store.get(PROJECT, "v0002")
        meta = json.loads((version.path / "meta.json").read_text())
        assert meta["annotation_ids"] == [101, 102]
        assert meta["skipped"] == {"image": 1}
        assert meta["parent"] == "v0001" and meta["labels"] == list(LABELS)
        assert len(meta["epoch_losses"]) == 1
        assert meta["loss_summary"]["iterations"] == 1 and "lambda" in meta["loss_summary"]
        assert result["loss"] == meta["loss_summary"]
        assert service.registry.peek(PROJECT).name == "v0001"  # swapped only when the job is done
        swap_when_done(service.registry)(PROJECT, "train", True)
        assert service.registry.peek(PROJECT).name == "v0002"
        assert service.board.read(PROJECT, "train").status == "done"

    def test_nothing_new_is_skipped_but_an_edit_is_not(self, training_service):
        """A second trigger with the same annotations makes no version; an edited annotation
        (ANNOTATION_UPDATED: same id, new updated_at) does."""
        service = training_service
        assert run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))["model_version"] == "v0002"
        again = run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        assert "skipped" in again and "v0002" in again["skipped"]
        assert [v.name for v in service.store.versions(PROJECT)] == ["v0001", "v0002"]
        edited = service.ls_client.tasks[0]["annotations"][0]
        edited["updated_at"] = "2025-02-01T00:00:00Z"
        edited["result"][0]["value"]["rectanglelabels"] = ["person"]
        assert run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))["model_version"] == "v0003"
        meta = service.store.get(PROJECT, "v0003").meta
        assert meta.annotation_ids == [101, 102]
        assert meta.annotation_updated["101"] == "2025-02-01T00:00:00Z"

    @pytest.mark.parametrize(
        "break_it, expected",
        [
            ("out_of_memory", "RuntimeError: CUDA out of memory"),
            ("no_annotations", "TrainingError: project 5 has no usable annotations"),
            ("diverged", "FloatingPointError: training loss is not finite"),
            ("bad_annotations", "TrainingError: project 5 has no usable annotations"),
        ],
    )
    def test_a_failed_training_keeps_the_serving_version(self, training_service, monkeypatch, break_it, expected):
        service = training_service
        before = [v.name for v in service.store.versions(PROJECT)]
        if break_it == "out_of_memory":

            def oom(*args, **kwargs):
                raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

            monkeypatch.setattr("backend.jobs.train.train", oom)
        elif break_it == "no_annotations":
            monkeypatch.setattr(service.ls_client, "tasks", [_annotated(3, "missing.png", 103)])
        elif break_it == "bad_annotations":  # regions without a width (hand-edited JSON, a broken import)
            broken = [_annotated(1, WIDE, 101), _annotated(2, SMALL, 102)]
            for task in broken:
                del task["annotations"][0]["result"][0]["value"]["width"]
            monkeypatch.setattr(service.ls_client, "tasks", broken)
        else:

            def nan(*args, **kwargs):
                raise FloatingPointError("training loss is not finite: {'total': nan}")

            monkeypatch.setattr("backend.jobs.train.train", nan)
        assert service.scheduler is not None  # the real scheduler; submit is not called here
        with pytest.raises(Exception):  # noqa: B017 -- each case its own type; the record's error is checked below
            run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        swap_when_done(service.registry)(PROJECT, "train", False)
        record = service.board.read(PROJECT, "train")
        assert record.status == "failed"
        assert record.error.startswith(expected), record.error
        assert [v.name for v in service.store.versions(PROJECT)] == before
        assert service.registry.peek(PROJECT).name == "v0001"
        assert not list((service.store.root / PROJECT).glob(".tmp-*"))
        # the next trigger tries again, and succeeds once the cause is gone
        monkeypatch.undo()
        service = replace(service, ls_client=FakeLabelStudio([_annotated(1, WIDE, 101)]))
        run_job(service.board, PROJECT, "train", JOBS["train"](service, PROJECT))
        assert service.board.read(PROJECT, "train").status == "done"
        assert [v.name for v in service.store.versions(PROJECT)] == before + ["v0002"]

    def test_label_studio_unreachable_fails_the_job_from_env(self, tmp_path, monkeypatch):
        """The function RQ workers run: settings from the environment, failure recorded."""
        monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
        monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # discard port: refused
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "token")
        monkeypatch.setenv("BACKBONE", "mobilenet_v3_320_fpn")
        monkeypatch.setenv("WEIGHTS", "none")
        with pytest.raises(Exception, match="Label Studio|/api/projects"):
            run_job_from_env("4", "train")
        record = JobBoard(tmp_path / "models").read("4", "train")
        assert record.status == "failed" and "/api/projects/4" in record.error
        assert "token" not in record.error

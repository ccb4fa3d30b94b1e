"""Tests of backend/health.py through /health: "degraded", with the reason, when MODEL_DIR cannot hold
another version (a real 2 MB tmpfs) or a project's last job failed for a cause that will repeat."""

from __future__ import annotations

import torch

from backend.app import create_app
from backend.jobs.board import JobRecord
from backend.service import app_service
from helpers import make_settings
from model.version_meta import VersionMeta
from model.versions import VersionStore


def _health(model_dir) -> dict:
    app = create_app(make_settings(model_dir))
    response = app.test_client().get("/health")
    assert response.status_code == 200  # the HEALTHCHECK: a restart would fix none of this
    return response.get_json()


def _board(model_dir):
    return app_service(create_app(make_settings(model_dir))).board


class TestDisk:
    def test_room_for_a_version_is_up_with_disk_use_per_project(self, tmp_path):
        store = VersionStore(tmp_path)
        version = store.save("4", {"w": torch.zeros(1000)}, VersionMeta(labels=["car"]))
        body = _health(tmp_path)
        assert body["status"] == "UP" and "problems" not in body
        assert body["disk"]["projects"]["4"] >= version.weights_path.stat().st_size

    def test_a_disk_smaller_than_one_version_is_degraded(self, small_disk):
        store = VersionStore(small_disk)
        store.save("4", {"w": torch.zeros(300_000)}, VersionMeta(labels=["car"]))  # 1.2 MB of 2: no room for another
        body = _health(small_disk)
        assert body["status"] == "degraded"
        (problem,) = body["problems"]
        assert str(small_disk) in problem and "MB free" in problem and "cannot be saved" in problem

    def test_a_tiny_disk_without_any_version_is_degraded(self, small_disk):
        """The first /predict would have to write a base version of tens of MB."""
        assert _health(small_disk)["status"] == "degraded"


class TestJobFailures:
    def test_a_cause_that_will_repeat_is_named(self, tmp_path):
        board = _board(tmp_path)
        board.write(JobRecord("3", "train", status="failed", error="OSError: [Errno 28] No space left on device"))
        board.write(JobRecord("5", "rank", status="failed", error="ProjectNotFound: Label Studio has no project 5"))
        body = _health(tmp_path)
        assert body["status"] == "degraded"
        assert [p.split(":")[0] for p in body["problems"]] == ["project 3", "project 5"]
        assert "No space left on device" in body["problems"][0] and "rank" in body["problems"][1]

    def test_a_passing_failure_or_a_later_success_is_up(self, tmp_path):
        board = _board(tmp_path)
        board.write(JobRecord("3", "train", status="failed", error="RuntimeError: CUDA out of memory"))
        board.write(JobRecord("4", "train", status="done"))
        assert _health(tmp_path)["status"] == "UP"
        board.write(JobRecord("3", "train", status="done"))
        assert _health(tmp_path)["status"] == "UP"

"""Tests of backend/service.py: the app built from explicit parts, with no Label Studio and no model loaded."""

from __future__ import annotations

import dataclasses

import pytest

from backend.app import create_app
from backend.jobs.entry import predict_job, ranking_job, training_job
from backend.jobs.runners import EmbeddedRunner
from backend.lsclient import LabelStudioClient, LabelStudioError
from backend.service import build_service
from helpers import LABEL_CONFIG, make_settings


class RecordingRunner:
    """A job runner that records what it is asked to start and starts nothing."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, str]] = []

    def submit(self, project: str, kind: str) -> None:
        self.submitted.append((project, kind))


class SilentLabelStudio:
    """A Label Studio client that must never be called while the app only schedules."""

    def __getattr__(self, name: str):
        raise AssertionError(f"Label Studio was called: {name}")


@pytest.fixture
def parts(tmp_path):
    runner, client = RecordingRunner(), SilentLabelStudio()
    service = build_service(make_settings(tmp_path / "models"), ls_client=client, runner=runner)
    return service, runner, client


class TestExplicitParts:
    def test_the_app_serves_its_light_routes_on_the_given_parts(self, parts):
        service, runner, _ = parts
        client = create_app(service=service).test_client()
        assert client.get("/health").get_json()["status"] == "UP"
        assert client.post("/setup", json={"project": "3", "schema": LABEL_CONFIG}).get_json() == {
            "model_version": "v0000"
        }
        answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
        assert answer.status_code == 202 and runner.submitted == [("3", "train")]
        assert client.get("/jobs").get_json()["jobs"]["3"]["train"]["status"] == "queued"
        assert service.registry.serving() == {}  # no model loaded by any of it

    def test_the_jobs_get_the_same_parts(self, parts):
        service, _, client = parts
        for job in (training_job(service), ranking_job(service), predict_job(service)):
            assert job.client is client and job.registry is service.registry
        assert ranking_job(service).predictor is service.predictor is predict_job(service).predictor

    def test_a_job_gets_the_settings_it_uses(self, tmp_path):
        settings = make_settings(tmp_path / "models", train_reinit=True, eval_min_tasks=7, fetch_workers=3)
        job = training_job(build_service(settings, runner=RecordingRunner()))
        assert (job.reinit, job.eval_min_tasks, job.fetch_workers) == (True, 7, 3)
        assert job.config == settings.train_config()

    def test_the_parts_cannot_be_swapped_after_the_fact(self, parts):
        service, _, _ = parts
        with pytest.raises(dataclasses.FrozenInstanceError):
            service.ls_client = None

    def test_jobs_run_in_child_processes_without_redis(self, tmp_path):
        service = build_service(make_settings(tmp_path / "models"))
        assert isinstance(service.scheduler.submit.__self__, EmbeddedRunner)


def test_without_label_studio_url_a_call_fails_not_the_client(tmp_path):
    """A backend that only serves predictions builds without LABEL_STUDIO_URL; a job's first call says why it fails."""
    service = build_service(make_settings(tmp_path / "models", label_studio_url=""))
    assert isinstance(service.ls_client, LabelStudioClient)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL is not set"):
        service.ls_client.project(3)

"""The prequential evaluation a training starts with (backend/evaluation.py), on a real small model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from backend.annotations import TrainingSet
from backend.evaluation import evaluate_serving, unseen_samples
from backend.labels import parse_label_config
from backend.service import Service, build_service
from helpers import LABEL_CONFIG, make_settings, write_image
from model.samples import Sample
from model.version_meta import VersionMeta
from model.versions import Version

NAMES = parse_label_config(LABEL_CONFIG)
PROJECT = "4"


def _data(tmp_path, task_ids: list[int]) -> TrainingSet:
    data = TrainingSet()
    for task_id in task_ids:
        path = write_image(tmp_path / f"t{task_id}.png", 96, 64, colour=(40 * (task_id % 5), 90, 160))
        data.samples.append(
            Sample(str(path), torch.tensor([[10.0, 8.0, 60.0, 50.0]]), torch.tensor([1]), key=str(100 + task_id))
        )
        data.annotation_ids.append(100 + task_id)
        data.task_ids.append(task_id)
    return data


def _evaluate(service: Service, version: Version | None, names, data):
    """``evaluate_serving`` with the service's parts and settings, as the training job calls it."""
    return evaluate_serving(
        service.registry,
        version,
        names,
        data,
        min_tasks=service.settings.eval_min_tasks,
        display_threshold=service.settings.display_threshold,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Service:
    settings = make_settings(tmp_path_factory.mktemp("evaluation-models"), eval_min_tasks=2, display_threshold=0.5)
    return build_service(settings)


@pytest.fixture(scope="module")
def base_version(service) -> Version:
    """v0001 from the base weights, as the registry makes it: trained on no annotation."""
    return service.registry.get(PROJECT, NAMES.labels, NAMES.aliases).version


class TestUnseenSamples:
    def test_tasks_the_version_was_trained_on_are_seen(self, tmp_path):
        version = Version(PROJECT, "v0002", tmp_path, VersionMeta(task_ids=[1, 2], annotation_ids=[101, 102]))
        assert unseen_samples(version, _data(tmp_path, [1, 2, 3, 4])) == [2, 3]

    def test_a_version_without_task_ids_is_read_by_annotation_id(self, tmp_path):
        version = Version(PROJECT, "v0002", tmp_path, VersionMeta(annotation_ids=[103]))
        assert unseen_samples(version, _data(tmp_path, [1, 3])) == [0]


class TestEvaluateServing:
    def test_figures_of_the_serving_version_on_new_tasks(self, service, base_version, tmp_path):
        report = _evaluate(service, base_version, NAMES, _data(tmp_path, [5, 6, 7]))
        assert report.status == "ok" and report.model_version == "v0001"
        assert report.tasks == 3 and report.task_ids == [5, 6, 7] and report.trained_on_tasks == 0
        assert report.min_tasks == 2 and report.display_threshold == 0.5
        assert set(report.figures()) == {"map_50", "map", "accepted", "recall"}
        assert all(0.0 <= v <= 1.0 for v in report.figures().values())
        assert report.acceptance["annotated"] == 3

    def test_too_few_new_tasks_give_no_number(self, service, base_version, tmp_path):
        report = _evaluate(service, base_version, NAMES, _data(tmp_path, [5]))
        assert report.status == "too_few" and report.figures() == {} and report.map_50 is None
        assert "at least 2 (EVAL_MIN_TASKS)" in report.message and report.tasks == 1

    def test_no_version_to_evaluate(self, service, tmp_path):
        report = _evaluate(service, None, NAMES, _data(tmp_path, [5, 6]))
        assert report.status == "none" and report.model_version is None and report.figures() == {}

    def test_a_version_of_other_labels_is_reported_not_raised(self, service, base_version, tmp_path):
        other = Version(PROJECT, "v0009", base_version.path, replace(base_version.meta, labels=["cat"]))
        report = _evaluate(service, other, NAMES, _data(tmp_path, [5, 6]))
        assert report.status == "failed" and "labels" in report.message and report.figures() == {}

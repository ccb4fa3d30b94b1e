"""Empty cases, on purpose: no tasks, no detections, nothing to rank."""

from __future__ import annotations

import math

import pytest
import torch

from backend.app import create_app
from backend.labels import parse_label_config
from backend.predictions import task_prediction
from backend.service import app_service
from helpers import LABEL_CONFIG, LABELS, WIDE, local_task, make_settings, predict_body
from model.detections import Detections
from model.hua import HUAConfig, entropy_score, image_entropy


@pytest.fixture(scope="module")
def strict_app(tmp_path_factory, image_root):
    """display_threshold 1.0: no detection can pass (scores are probabilities)."""
    models = tmp_path_factory.mktemp("strict_models")
    return create_app(make_settings(models, display_threshold=1.0, local_files_document_root=str(image_root)))


class TestNoTasks:
    def test_predict_with_no_tasks(self, client):
        response = client.post("/predict", json=predict_body([]))
        assert response.status_code == 200
        assert response.get_json()["results"] == []


class TestNoDetections:
    def test_task_gets_an_empty_result_and_a_defined_score(self, strict_app):
        response = strict_app.test_client().post("/predict", json=predict_body([local_task(1, WIDE)]))
        assert response.status_code == 200
        (item,) = response.get_json()["results"]
        assert item["result"] == []
        score = item["score"]
        assert isinstance(score, float) and math.isfinite(score) and 0.0 <= score <= 1.0
        assert item["model_version"] == "v0001"

    def test_detector_still_reports_the_analysis_detections(self, strict_app):
        """Nothing passes SCORE_THRESHOLD 1.0, yet HUA sees the analysis-threshold boxes."""
        detector = app_service(strict_app).registry.get("1", LABELS).detector
        (det,) = detector.predict([torch.rand(3, 48, 64)])
        shown = det.above(1.0)
        assert len(shown) == 0 and len(det) > 0 and bool((det.scores >= 0.05).all())
        assert shown.boxes.shape == (0, 4) and shown.probs.shape == (0, len(LABELS) + 1)
        assert (det.width, det.height) == (64, 48)


class TestEmptyDetections:
    def test_shapes(self):
        det = Detections.empty(num_classes=3, width=20, height=10)
        assert len(det) == 0
        assert det.num_classes == 3
        assert det.boxes.shape == (0, 4) and det.labels.shape == (0,) and det.labels.dtype == torch.int64
        assert det.probs.shape == (0, 4) and det.sigmas.shape == (0, 4)

    def test_prediction_of_an_image_with_no_roi_at_all(self):
        det = Detections.empty(num_classes=len(LABELS), width=20, height=10)
        score = entropy_score(image_entropy(det, HUAConfig()))
        out = task_prediction(
            det, list(LABELS), parse_label_config(LABEL_CONFIG), "v0001", display_threshold=0.0, score=score
        )
        assert out["result"] == []
        # under HUA_AGGREGATE=sum an image with nothing seen has H = 0: nothing to be wrong about
        assert out["score"] == 1.0
        assert out["model_version"] == "v0001"

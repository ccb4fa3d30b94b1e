"""WEIGHTS=<checkpoint>: a detector saved by this project warm-starts another project's model."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch

from backend.settings import Settings, SettingsError
from model.checkpoint import class_rows
from model.detector import DetectorConfig, build_model
from model.registry import ModelRegistry
from model.version_meta import VersionMeta
from model.versions import CheckpointError, VersionStore

CONFIG = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False, min_size=64, max_size=96)
OLD_LABELS = ["car", "person"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking 2-class detector saved as a version, and the model it was saved from."""
    torch.manual_seed(0)
    model, _ = build_model(CONFIG, OLD_LABELS)
    with torch.no_grad():  # make every class row distinguishable
        for layer in (model.roi_heads.box_predictor.bbox_pred, model.roi_heads.box_predictor.bbox_log_var):
            layer.weight.normal_()
            layer.bias.normal_()
    store = VersionStore(tmp_path_factory.mktemp("models"))
    meta = VersionMeta(labels=OLD_LABELS, backbone=CONFIG.backbone, weights="none", parent=None)
    version = store.save("1", model.state_dict(), meta)
    return version, model


def _rows(layer: torch.nn.Linear, cls: int, width: int) -> torch.Tensor:
    return layer.weight[cls * width : (cls + 1) * width]


class TestClassRows:
    def test_known_labels_keep_their_rows_and_new_ones_share_the_regression(self):
        classifier, regression = class_rows(["person", "bike", "car"], OLD_LABELS)
        assert classifier == {1: [2], 3: [1]}
        assert regression == {1: [2], 2: [1, 2], 3: [1]}


class TestWarmStart:
    @pytest.mark.parametrize("point_at", ["folder", "weights.pt"])
    def test_everything_but_the_class_layers_is_kept(self, saved, point_at):
        version, old = saved
        path = version.path if point_at == "folder" else version.weights_path
        new, report = build_model(replace(CONFIG, weights=str(path)), ["person", "bike", "car"])
        assert report.used == str(path) and not report.fell_back
        old_state, new_state = old.state_dict(), new.state_dict()
        shared = [k for k in old_state if not k.startswith("roi_heads.box_predictor.")]
        assert shared and all(torch.equal(old_state[k], new_state[k]) for k in shared)
        before, after = old.roi_heads.box_predictor, new.roi_heads.box_predictor
        assert after.cls_score.out_features == 4 and after.bbox_pred.out_features == 16
        for new_cls, old_cls in ((0, 0), (1, 2), (3, 1)):  # background, person, car
            assert torch.equal(_rows(after.cls_score, new_cls, 1), _rows(before.cls_score, old_cls, 1))
            assert torch.equal(_rows(after.bbox_pred, new_cls, 4), _rows(before.bbox_pred, old_cls, 4))
        mean_fg = (_rows(before.bbox_pred, 1, 4) + _rows(before.bbox_pred, 2, 4)) / 2
        torch.testing.assert_close(_rows(after.bbox_pred, 2, 4), mean_fg)  # "bike" regresses as the old objects did
        mean_var = (_rows(before.bbox_log_var, 1, 4) + _rows(before.bbox_log_var, 2, 4)) / 2
        torch.testing.assert_close(_rows(after.bbox_log_var, 2, 4), mean_var)

    def test_the_warm_started_model_predicts(self, saved):
        version, _ = saved
        model, _ = build_model(replace(CONFIG, weights=str(version.path)), ["a"])
        model.eval()
        with torch.no_grad():
            (out,) = model([torch.rand(3, 48, 64)])
        assert out["probs"].shape[1] == 2 and bool((out["labels"] == 1).all())

    def test_another_backbone_is_refused(self, saved, tmp_path):
        version, _ = saved
        meta = replace(version.meta, backbone="mobilenet_v2_fpn")
        other = VersionStore(tmp_path).save("2", torch.load(version.weights_path), meta)
        with pytest.raises(CheckpointError, match="backbone"):
            build_model(replace(CONFIG, weights=str(other.path)), ["car"])

    def test_unreadable_checkpoint_is_refused(self, tmp_path):
        with pytest.raises(CheckpointError, match="cannot read"):
            build_model(replace(CONFIG, weights=str(tmp_path)), ["car"])

    def test_a_damaged_meta_is_refused(self, saved, tmp_path):
        version, _ = saved
        copy = shutil.copytree(version.path, tmp_path / "v0001")
        (copy / "meta.json").write_text("[]")
        with pytest.raises(CheckpointError, match="cannot read"):
            build_model(replace(CONFIG, weights=str(copy)), ["car"])

    def test_a_project_registry_starts_from_the_checkpoint(self, saved, tmp_path):
        version, old = saved
        registry = ModelRegistry(VersionStore(tmp_path), replace(CONFIG, weights=str(version.path)), "cpu")
        served = registry.get("7", ["car"])
        assert served.name == "v0001" and served.version.meta.weights == str(version.path)
        assert torch.equal(served.detector.model.rpn.head.conv[0][0].weight, old.rpn.head.conv[0][0].weight)


def test_settings_refuse_a_missing_checkpoint(tmp_path):
    with pytest.raises(SettingsError, match="WEIGHTS"):
        Settings.from_env({"WEIGHTS": str(tmp_path / "nowhere")})
    assert Settings.from_env({"WEIGHTS": str(tmp_path)}).weights == str(tmp_path)

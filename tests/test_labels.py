"""Tests of backend/labels.py (the project's label config) and of model.detector's
mapping from project labels to the rows of a COCO-pretrained box head."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import (
    FasterRCNN_MobileNet_V3_Large_320_FPN_Weights,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from backend.errors import BadRequest
from backend.labels import parse_label_config
from helpers import CHOICES_CONFIG, LABEL_CONFIG, LABELS
from model.detector import DetectorConfig, adapt_head, coco_head_rows
from model.heads import UncertainBoxPredictor, UncertaintyRoIHeads

# torchvision's category list (meta only: nothing is downloaded). Index = head row.
COCO = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.meta["categories"]


class TestParseLabelConfig:
    def test_finds_control_image_and_value_key(self):
        names = parse_label_config(LABEL_CONFIG)
        assert (names.from_name, names.to_name, names.value_key) == ("label", "image", "image")
        assert names.labels == LABELS
        assert names.aliases == {}

    def test_labels_keep_the_config_order(self):
        config = (
            '<View><Image name="photo" value="$img_url"/>'
            '<RectangleLabels name="boxes" toName="photo">'
            '<Label value="zebra"/><Label value="apple"/><Label value="Mango"/>'
            "</RectangleLabels></View>"
        )
        names = parse_label_config(config)
        assert names.labels == ("zebra", "apple", "Mango")
        assert (names.from_name, names.to_name, names.value_key) == ("boxes", "photo", "img_url")

    def test_predicted_values_become_aliases(self):
        config = (
            '<View><Image name="image" value="$image"/>'
            '<RectangleLabels name="label" toName="image">'
            '<Label value="Vehicle" predicted_values="car, truck ,bus"/>'
            '<Label value="Human" predicted_values="person"/>'
            '<Label value="Other"/>'
            "</RectangleLabels></View>"
        )
        names = parse_label_config(config)
        assert names.aliases == {"Vehicle": ["car", "truck", "bus"], "Human": ["person"]}
        assert names.labels == ("Vehicle", "Human", "Other")

    def test_skips_other_controls_and_uses_the_rectangle_labels_image(self):
        config = (
            '<View><Image name="first" value="$first"/>'
            '<Choices name="quality" toName="first"><Choice value="ok"/></Choices>'
            '<Image name="second" value="$second"/>'
            '<RectangleLabels name="boxes" toName="second"><Label value="a"/></RectangleLabels>'
            "</View>"
        )
        names = parse_label_config(config)
        assert (names.from_name, names.to_name, names.value_key, names.labels) == ("boxes", "second", "second", ("a",))

    def test_no_rectangle_labels_is_a_bad_request(self):
        with pytest.raises(BadRequest, match="RectangleLabels") as info:
            parse_label_config(CHOICES_CONFIG)
        assert info.value.status_code == 400

    def test_rectangle_labels_without_labels_is_a_bad_request(self):
        config = '<View><Image name="image" value="$image"/><RectangleLabels name="l" toName="image"/></View>'
        with pytest.raises(BadRequest, match="RectangleLabels"):
            parse_label_config(config)

    def test_rectangle_labels_on_text_is_a_bad_request(self):
        config = (
            '<View><Text name="t" value="$text"/>'
            '<RectangleLabels name="l" toName="t"><Label value="a"/></RectangleLabels></View>'
        )
        with pytest.raises(BadRequest, match="Image"):
            parse_label_config(config)

    @pytest.mark.parametrize("config", ['<View><Image name="image" value="$image"><RectangleLabels', "not xml at all"])
    def test_invalid_xml_is_a_bad_request(self, config):
        with pytest.raises(BadRequest, match="label_config") as info:
            parse_label_config(config)
        assert info.value.status_code == 400

    @pytest.mark.parametrize("config", ["", "   ", None, 42])
    def test_empty_or_not_a_string(self, config):
        with pytest.raises(BadRequest, match="label_config"):
            parse_label_config(config)


class TestCocoHeadRows:
    def test_category_list_is_torchvisions(self):
        # the indices below are worked out from this list: row 0 background, 1 person, 3 car, 8 truck
        assert (COCO[0], COCO[1], COCO[3], COCO[8]) == ("__background__", "person", "car", "truck")

    def test_exact_names(self):
        rows = coco_head_rows(["person", "car"], {}, COCO)
        assert rows == {1: [COCO.index("person")], 2: [COCO.index("car")]}

    def test_case_insensitive_names(self):
        rows = coco_head_rows(["Person", "CAR"], {}, COCO)
        assert rows == {1: [COCO.index("person")], 2: [COCO.index("car")]}

    def test_predicted_values_come_first(self):
        # "car" would match itself, but its predicted_values say it stands for trucks and buses
        rows = coco_head_rows(["car", "pedestrian"], {"car": ["truck", "Bus"], "pedestrian": ["person"]}, COCO)
        assert rows == {1: [COCO.index("truck"), COCO.index("bus")], 2: [COCO.index("person")]}

    def test_unknown_names_are_absent(self):
        rows = coco_head_rows(["unicorn", "dog", "wheel"], {"wheel": ["rim", "tyre"]}, COCO)
        assert rows == {2: [COCO.index("dog")]}

    def test_unknown_aliases_are_dropped_known_ones_kept(self):
        rows = coco_head_rows(["vehicle"], {"vehicle": ["hovercraft", "car"]}, COCO)
        assert rows == {1: [COCO.index("car")]}

    def test_na_placeholders_never_match(self):
        assert "N/A" in COCO
        assert coco_head_rows(["N/A", "n/a"], {}, COCO) == {}

    def test_exact_match_beats_case_insensitive(self):
        categories = ["__background__", "car", "Car", "CAR"]
        assert coco_head_rows(["Car"], {}, categories) == {1: [2]}
        # no exact match: the first case-insensitive one
        assert coco_head_rows(["cAr"], {}, categories) == {1: [1]}

    def test_no_labels(self):
        assert coco_head_rows([], {}, COCO) == {}


class _TinyDetector(nn.Module):
    """Just what adapt_head touches: ``roi_heads`` with a torchvision predictor
    (``old_classes`` rows, background included), plus a BatchNorm to freeze."""

    def __init__(self, old_classes: int, features: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["0"], 2, 2), TwoMLPHead(4 * 2 * 2, features), FastRCNNPredictor(features, old_classes),
            0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100,
        )  # fmt: skip
        predictor = self.roi_heads.box_predictor
        with torch.no_grad():  # row r of the old head holds the value r (weights) and 100 + r (bias)
            for r in range(old_classes):
                predictor.cls_score.weight[r] = r
                predictor.cls_score.bias[r] = 100 + r
                predictor.bbox_pred.weight[4 * r : 4 * r + 4] = 1000 + r
                predictor.bbox_pred.bias[4 * r : 4 * r + 4] = 2000 + r


CONFIG = DetectorConfig(
    backbone="mobilenet_v3_320_fpn", weights="none", analysis_threshold=0.3, nms_iou=0.4, max_detections=7
)


class TestAdaptHead:
    def test_copies_mapped_rows_and_background(self):
        model = adapt_head(_TinyDetector(old_classes=6), 2, {1: [3], 2: [5]}, CONFIG)
        new = model.roi_heads.box_predictor
        for cls, old_row in [(0, 0), (1, 3), (2, 5)]:
            assert torch.all(new.cls_score.weight[cls] == old_row)
            assert new.cls_score.bias[cls] == 100 + old_row
            assert torch.all(new.bbox_pred.weight[4 * cls : 4 * cls + 4] == 1000 + old_row)
            assert torch.all(new.bbox_pred.bias[4 * cls : 4 * cls + 4] == 2000 + old_row)

    def test_averages_several_rows(self):
        model = adapt_head(_TinyDetector(old_classes=6), 1, {1: [2, 5]}, CONFIG)
        new = model.roi_heads.box_predictor
        assert torch.allclose(new.cls_score.weight[1], torch.full((8,), 3.5))  # (2 + 5) / 2
        assert new.cls_score.bias[1].item() == pytest.approx(103.5)
        assert torch.allclose(new.bbox_pred.weight[4:8], torch.full((4, 8), 1003.5))
        assert torch.allclose(new.bbox_pred.bias[4:8], torch.full((4,), 2003.5))

    def test_unmapped_class_keeps_a_fresh_initialisation(self):
        model = adapt_head(_TinyDetector(old_classes=6), 2, {1: [4]}, CONFIG)
        row = model.roi_heads.box_predictor.cls_score.weight[2].detach()
        assert torch.isfinite(row).all()
        old_values = {float(r) for r in range(6)}
        assert not all(v in old_values for v in row.tolist())  # not a copy of any old row

    def test_same_size_head_without_rows_is_loaded_as_is(self):
        tiny = _TinyDetector(old_classes=3)
        old = {k: v.clone() for k, v in tiny.roi_heads.box_predictor.state_dict().items()}
        new = adapt_head(tiny, 2, {}, CONFIG).roi_heads.box_predictor
        for key, value in old.items():
            assert torch.equal(new.state_dict()[key], value)

    def test_head_shapes_thresholds_and_frozen_batchnorm(self):
        model = adapt_head(_TinyDetector(old_classes=6), 2, {1: [1]}, CONFIG)
        heads = model.roi_heads
        assert isinstance(heads, UncertaintyRoIHeads)
        assert isinstance(heads.box_predictor, UncertainBoxPredictor)
        assert heads.box_predictor.cls_score.out_features == 3
        assert heads.box_predictor.bbox_pred.out_features == 12
        assert torch.all(heads.box_predictor.bbox_log_var.weight == 0)  # sigma = 1 at the start
        assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.3, 0.4, 7)
        assert isinstance(model.backbone[1], FrozenBatchNorm2d)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())

"""Tests of model/detector.py: building (weights fallback, devices) and batched
inference of the real small detector on the CPU (no weights are downloaded)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torchvision.ops import misc

from model.detections import Detections
from model.detector import (
    BACKBONES,
    Detector,
    DetectorConfig,
    FrozenBatchNorm2d,
    build_base_model,
    build_empty_model,
    build_model,
    device_kind,
    resolve_backbone,
    select_device,
)
from model.losses import LossConfig

LABELS = ["car", "person", "dog"]
CONFIG = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False, analysis_threshold=0.0)


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    model, _ = build_model(CONFIG, LABELS)
    return Detector(model, LABELS, torch.device("cpu"))


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A 200 x 100 image (W x H) with some structure: a bright rectangle on noise."""
    gen = torch.Generator().manual_seed(1)
    img = torch.rand(3, 100, 200, generator=gen) * 0.3
    img[:, 20:70, 30:90] = 0.9
    return img


@pytest.fixture(scope="module")
def pair(detector, image) -> list[Detections]:
    """Detections of ``image`` and of a 40 x 90 image in one batch (computed once:
    inference is the slow part)."""
    return detector.predict([image, torch.rand(3, 90, 40, generator=torch.Generator().manual_seed(2))])


@pytest.fixture(scope="module")
def single(pair) -> Detections:
    return pair[0]


class TestDetectorConfig:
    def test_unknown_backbone(self):
        with pytest.raises(ValueError, match="backbone"):
            DetectorConfig(backbone="vgg16")

    @pytest.mark.parametrize("threshold", [-0.01, 1.01])
    def test_threshold_out_of_range(self, threshold):
        with pytest.raises(ValueError, match="analysis_threshold"):
            DetectorConfig(analysis_threshold=threshold)

    def test_log_var_bound_and_test_proposals_out_of_range(self):
        with pytest.raises(ValueError, match="log_var_bound"):
            DetectorConfig(log_var_bound=0.0)
        with pytest.raises(ValueError, match="rpn_test_proposals"):
            DetectorConfig(rpn_test_proposals=0)


class TestSelectDevice:
    def test_cuda_without_cuda_raises(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        with pytest.raises(ValueError, match="CUDA"):
            select_device("cuda")

    def test_auto_without_cuda_is_cpu(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert select_device("auto") == torch.device("cpu")

    def test_cpu(self):
        assert select_device("cpu") == torch.device("cpu")


class TestBackboneChoice:
    """BACKBONE=auto: the quality model where a GPU runs it, the light one on a CPU."""

    @pytest.mark.parametrize("available, kind", [(True, "cuda"), (False, "cpu")])
    def test_auto_device_follows_cuda(self, monkeypatch, available, kind):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert device_kind("auto") == kind

    def test_explicit_devices_need_no_probe(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("CUDA probed"))
        assert (device_kind("cpu"), device_kind("cuda")) == ("cpu", "cuda")

    @pytest.mark.parametrize("kind, backbone", [("cuda", "resnet50_fpn_v2"), ("cpu", "mobilenet_v3_fpn")])
    def test_auto_resolves_per_device(self, kind, backbone):
        assert resolve_backbone("auto", kind) == backbone

    @pytest.mark.parametrize("kind", ["cuda", "cpu"])
    def test_a_named_backbone_is_kept(self, kind):
        assert resolve_backbone("mobilenet_v2_fpn", kind) == "mobilenet_v2_fpn"


class TestWeightsFallback:
    """TORCH_HOME is an empty folder (conftest), so no weights file is cached."""

    def test_coco_offline_falls_back_to_none(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        config = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="coco", allow_download=False)
        model, report = build_base_model(config, 3)
        assert (report.requested, report.used, report.fell_back) == ("coco", "none", True)
        assert len(report.reasons) == 2
        assert "coco" in report.reasons[0] and "imagenet" in report.reasons[1]
        assert all("mobilenet_v3_320_fpn" in r for r in report.reasons)
        assert model.roi_heads.box_predictor.cls_score.out_features == 3
        assert not list(tmp_path.rglob("*.pth"))  # nothing was downloaded

    def test_imagenet_offline_names_only_imagenet(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        config = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="imagenet", allow_download=False)
        _, report = build_base_model(config, 3)
        assert report.used == "none"
        assert len(report.reasons) == 1 and "imagenet" in report.reasons[0]

    def test_none_needs_no_fallback(self):
        _, report = build_base_model(CONFIG, 3)
        assert (report.used, report.fell_back, report.reasons) == ("none", False, ())

    def test_corrupt_cached_file_is_skipped_with_a_reason(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        url = BACKBONES["mobilenet_v3_320_fpn"].coco.url
        cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"not a checkpoint")
        config = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="coco", allow_download=False)
        _, report = build_base_model(config, 3)
        assert report.used == "none"
        assert "coco" in report.reasons[0] and "failed to load" in report.reasons[0]

    def test_build_model_offline_gives_a_head_per_label(self, tmp_path, monkeypatch):
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        config = DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="coco", allow_download=False)
        model, report = build_model(config, LABELS)
        assert report.used == "none"
        predictor = model.roi_heads.box_predictor
        assert predictor.cls_score.out_features == len(LABELS) + 1
        assert predictor.bbox_log_var.out_features == 4 * (len(LABELS) + 1)

    def test_architecture_settings_reach_the_model(self):
        config = replace(CONFIG, log_var_bound=3.0, rpn_test_proposals=40)
        model, _ = build_model(config, LABELS)
        assert model.roi_heads.box_predictor.log_var_bound == 3.0
        assert model.train().rpn.pre_nms_top_n() == 2000  # training keeps its own
        model.eval()
        assert model.rpn.pre_nms_top_n() == 40 and model.rpn.post_nms_top_n() == 40
        assert model.roi_heads.loss == LossConfig()  # inference needs no loss; a training builds with its own

    def test_the_heads_take_their_loss_at_construction(self):
        standard = LossConfig.from_name("standard")
        model, _ = build_model(CONFIG, LABELS, loss=standard)
        assert model.roi_heads.loss == standard
        assert build_empty_model(CONFIG, len(LABELS), loss=standard).roi_heads.loss == standard

    def test_the_builders_test_proposals_are_kept_by_default(self):
        model, _ = build_model(CONFIG, LABELS)
        assert model.eval().rpn.post_nms_top_n() == 150  # the 320 px builder's own default

    def test_empty_model_has_the_same_keys_as_a_built_one(self):
        built, _ = build_model(CONFIG, LABELS)
        empty = build_empty_model(CONFIG, len(LABELS))
        assert built.state_dict().keys() == empty.state_dict().keys()
        empty.load_state_dict(built.state_dict())  # strict


class TestDetectorPredict:
    def test_no_images(self, detector):
        assert detector.predict([]) == []

    def test_detection_fields(self, single):
        det = single
        assert isinstance(det, Detections)
        assert (det.width, det.height) == (200, 100)
        d, c1 = len(det), len(LABELS) + 1
        assert d > 0  # analysis_threshold 0: every class of every kept RoI competes
        assert det.boxes.shape == (d, 4) and det.labels.shape == (d,) and det.scores.shape == (d,)
        assert det.probs.shape == (d, c1) and det.sigmas.shape == (d, 4)
        assert det.num_classes == len(LABELS)
        assert torch.allclose(det.probs.sum(-1), torch.ones(d), atol=1e-5)
        assert (det.sigmas > 0).all()
        assert det.labels.dtype == torch.int64
        assert ((det.labels >= 1) & (det.labels <= len(LABELS))).all()
        # a detection's score is its class's probability in its own softmax row
        assert torch.allclose(det.scores, det.probs.gather(1, det.labels[:, None]).squeeze(1))
        assert len(det) <= CONFIG.max_detections

    def test_boxes_inside_the_image(self, single):
        x1, y1, x2, y2 = single.boxes.unbind(-1)
        assert ((0 <= x1) & (x1 < x2) & (x2 <= 200)).all()
        assert ((0 <= y1) & (y1 < y2) & (y2 <= 100)).all()

    def test_batch_keeps_each_image_size(self, pair):
        wide, narrow = pair
        assert (wide.width, wide.height) == (200, 100)
        assert (narrow.width, narrow.height) == (40, 90)
        assert (narrow.boxes[:, 2] <= 40).all() and (narrow.boxes[:, 3] <= 90).all()

    def test_flip_returns_boxes_of_the_mirrored_image(self, detector, image):
        before = image.clone()
        (flipped,) = detector.predict([image], flip=True)
        assert torch.equal(image, before)  # the caller's tensor is not flipped in place
        (mirrored,) = detector.predict([image.flip(-1)])
        assert (flipped.width, flipped.height) == (200, 100)
        assert torch.allclose(flipped.boxes, mirrored.boxes, atol=1e-3)
        assert torch.allclose(flipped.scores, mirrored.scores, atol=1e-5)


class TestSmallObjectBackbone:
    """``mobilenet_v2_fpn_stride8`` exists for objects of 12-32 px (docs/method.md, section 7)."""

    @staticmethod
    def _feature_sizes(backbone: str) -> list[int]:
        config = DetectorConfig(backbone=backbone, weights="none", allow_download=False, min_size=256, max_size=256)
        model = build_empty_model(config, len(LABELS)).eval()
        with torch.no_grad():
            maps = model.backbone(torch.rand(1, 3, 256, 256))
        return [m.shape[-1] for m in maps.values()]

    def test_the_default_sees_only_stride_32(self):
        assert max(self._feature_sizes("mobilenet_v2_fpn")) == 256 // 32

    def test_stride8_adds_finer_maps_and_16px_anchors(self):
        assert self._feature_sizes("mobilenet_v2_fpn_stride8") == [32, 16, 8, 8, 4]
        config = DetectorConfig(backbone="mobilenet_v2_fpn_stride8", weights="none", allow_download=False)
        anchors = build_empty_model(config, len(LABELS)).rpn.anchor_generator
        assert min(min(sizes) for sizes in anchors.sizes) == 16


class TestFrozenBatchNorm:
    """Our FrozenBatchNorm2d is torchvision's in one fused kernel: the same map, the same keys."""

    @staticmethod
    def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
        gen = torch.Generator().manual_seed(0)
        theirs = misc.FrozenBatchNorm2d(6, eps=1e-3)
        for name in ("weight", "bias", "running_mean"):
            getattr(theirs, name).copy_(torch.randn(6, generator=gen))
        theirs.running_var.copy_(torch.rand(6, generator=gen) + 0.1)
        ours = FrozenBatchNorm2d(6, eps=1e-3)
        ours.load_state_dict(theirs.state_dict())  # strict: the same keys
        return theirs, ours

    def test_same_output_and_input_gradient(self):
        theirs, ours = self._pair()
        x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
        y_theirs, y_ours = theirs(x), ours(x)
        assert torch.allclose(y_ours, y_theirs, atol=1e-5)
        (g_theirs,) = torch.autograd.grad(y_theirs.square().sum(), x)
        (g_ours,) = torch.autograd.grad(y_ours.square().sum(), x)
        assert torch.allclose(g_ours, g_theirs, atol=1e-4)
        assert not any(p.requires_grad for p in ours.parameters())  # nothing to train
        ours.train()
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        ours(x)
        assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())  # never updated

    def test_every_batchnorm_of_a_built_model_is_ours(self):
        model, _ = build_model(replace(CONFIG, weights="imagenet", allow_download=False), LABELS)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | misc.FrozenBatchNorm2d)]
        assert norms and all(type(m) is FrozenBatchNorm2d for m in norms)

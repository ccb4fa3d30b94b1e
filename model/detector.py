"""Construction of the Faster R-CNN detector and batched inference.

A detector is built for one project: its box head has one row per project
label (plus background). The backbone is a setting; the initial weights are
resolved in the order the user asked for and, when a file is not available
(no network, no cache), the next best source is used and the fallback reported.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, MobileNet_V3_Large_Weights, ResNet50_Weights
from torchvision.models._api import WeightsEnum
from torchvision.models.detection import faster_rcnn as frcnn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone
from torchvision.ops import misc

from model.checkpoint import checkpoint_labels, copy_class_rows, resized_predictor
from model.detections import Detections
from model.heads import UncertainBoxPredictor, UncertaintyRoIHeads
from model.losses import LossConfig

logger = logging.getLogger(__name__)

WEIGHT_SOURCES = ("coco", "imagenet", "none")


@dataclass(frozen=True)
class DetectorConfig:
    """How to build and run a detector.

    ``weights`` is "coco", "imagenet", "none" or a path to a checkpoint of ours.
    ``analysis_threshold`` is the lowest score a detection is returned with: HUA's
    analysis threshold [ours: 0.05, torchvision's and CALD's default], so that
    the ranking sees a young model's doubts; the boxes shown to annotators are
    filtered higher by the service (``SCORE_THRESHOLD``, ``Detections.above``).
    ``log_var_bound`` is a_max of the predictor's bounded log-variance
    ``alpha = a_max * tanh(raw / a_max)`` [ours: 5], so that exp(-alpha) never
    explodes and the gradient never vanishes; it must be > 0. It is part of the
    forward pass, hence of the architecture; the loss is the training's
    (``model.train.TrainConfig.loss``), given to the builders as ``loss``.
    ``rpn_test_proposals`` caps the RPN's proposals at inference, before and
    after NMS (torchvision's ``rpn_pre/post_nms_top_n_test``); ``None`` keeps
    the builder's default (1000, 150 for the 320 px MobileNet).
    ``allow_download`` lets torchvision fetch a missing weights file; when False
    (tests, offline servers) only files already in torch's cache are used.
    """

    backbone: str = "mobilenet_v3_fpn"
    weights: str = "coco"
    analysis_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100
    min_size: int | None = None
    max_size: int | None = None
    sampled_rois: int = 256
    log_var_bound: float = 5.0
    rpn_test_proposals: int | None = None
    allow_download: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
        if not 0.0 <= self.analysis_threshold <= 1.0:
            raise ValueError(f"analysis_threshold must be in [0, 1], got {self.analysis_threshold}")
        if not self.log_var_bound > 0.0:
            raise ValueError(f"log_var_bound must be > 0, got {self.log_var_bound}")
        if self.rpn_test_proposals is not None and self.rpn_test_proposals < 1:
            raise ValueError(f"rpn_test_proposals must be None or at least 1, got {self.rpn_test_proposals}")


@dataclass(frozen=True)
class Backbone:
    """A torchvision detection builder and the weights it can start from."""

    build: Callable[..., frcnn.FasterRCNN]
    coco: WeightsEnum | None
    imagenet: WeightsEnum


def _mobilenet_v2_fpn(
    *,
    weights: None,
    weights_backbone: WeightsEnum | None,
    num_classes: int,
    returned_layers: list[int] | None = None,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
    **kwargs,
) -> frcnn.FasterRCNN:
    """MobileNetV2 + FPN (torchvision has no builder for it; its ImageNet file is the one available offline).

    torchvision's default ``returned_layers`` (the last two stages) gives the FPN two
    maps of stride 32 only; ``returned_layers=[2, 3, 4, 5]`` adds strides 8 and 16.
    """
    backbone = mobilenet_backbone(
        backbone_name="mobilenet_v2",
        weights=weights_backbone,
        fpn=True,
        trainable_layers=3,
        returned_layers=returned_layers,
    )
    levels = len(backbone.fpn.inner_blocks) + 1  # the FPN's maps and its max-pool level
    anchors = AnchorGenerator((anchor_sizes,) * levels, ((0.5, 1.0, 2.0),) * levels)
    kwargs.setdefault("min_size", 320)
    kwargs.setdefault("max_size", 640)
    return frcnn.FasterRCNN(backbone, num_classes, rpn_anchor_generator=anchors, **kwargs)


#: Small objects (docs/method.md, section 7): the FPN from stride 8 with 16 px anchors. A 12 px
#: object covers 1.5 cells of its finest map, where the default's stride 32 gives it 0.4. It costs
#: 1.95x the CPU time of ``mobilenet_v2_fpn``'s training step at 256 px (``bench/bench_backbones.py``).
_mobilenet_v2_fpn_stride8 = functools.partial(
    _mobilenet_v2_fpn, returned_layers=[2, 3, 4, 5], anchor_sizes=(16, 32, 64, 128, 256)
)


BACKBONES: Mapping[str, Backbone] = MappingProxyType(
    {
        "mobilenet_v3_320_fpn": Backbone(
            frcnn.fasterrcnn_mobilenet_v3_large_320_fpn,
            frcnn.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
            MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        ),
        "mobilenet_v3_fpn": Backbone(
            frcnn.fasterrcnn_mobilenet_v3_large_fpn,
            frcnn.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
            MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        ),
        "resnet50_fpn_v2": Backbone(
            frcnn.fasterrcnn_resnet50_fpn_v2,
            frcnn.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
            ResNet50_Weights.IMAGENET1K_V1,
        ),
        "mobilenet_v2_fpn": Backbone(_mobilenet_v2_fpn, None, MobileNet_V2_Weights.IMAGENET1K_V1),
        "mobilenet_v2_fpn_stride8": Backbone(_mobilenet_v2_fpn_stride8, None, MobileNet_V2_Weights.IMAGENET1K_V1),
    }
)


AUTO_BACKBONE = "auto"
#: What BACKBONE=auto builds on each kind of device: torchvision's best Faster
#: R-CNN where a GPU makes its cost small, the MobileNetV3 FPN where a CPU would
#: make a labeller wait (4.5 against 280 GFLOPs per image in torchvision's tables).
AUTO_BACKBONES: Mapping[str, str] = MappingProxyType({"cuda": "resnet50_fpn_v2", "cpu": "mobilenet_v3_fpn"})


def resolve_backbone(name: str, device_kind: str) -> str:
    """The backbone to build: ``auto`` chosen for ``device_kind`` ("cuda" or "cpu"), any other name as is."""
    return AUTO_BACKBONES[device_kind] if name == AUTO_BACKBONE else name


@dataclass(frozen=True)
class WeightsReport:
    """Which initial weights were asked for and which were used, and why."""

    requested: str
    used: str
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fell_back(self) -> bool:
        return self.requested != self.used


def _weights_file_available(weights: WeightsEnum | None, allow_download: bool) -> bool:
    if weights is None:
        return False
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    return allow_download or os.path.exists(cached)


def _build_base(config: DetectorConfig, source: str, num_classes: int, backbone: Backbone) -> frcnn.FasterRCNN:
    kwargs = {"box_batch_size_per_image": config.sampled_rois}
    optional = (
        ("min_size", config.min_size),
        ("max_size", config.max_size),
        ("rpn_pre_nms_top_n_test", config.rpn_test_proposals),
        ("rpn_post_nms_top_n_test", config.rpn_test_proposals),
    )
    kwargs.update({k: v for k, v in optional if v})
    if source == "coco":
        return backbone.build(weights=backbone.coco, weights_backbone=None, **kwargs)
    weights_backbone = backbone.imagenet if source == "imagenet" else None
    return backbone.build(weights=None, weights_backbone=weights_backbone, num_classes=num_classes, **kwargs)


def build_base_model(config: DetectorConfig, num_classes: int) -> tuple[frcnn.FasterRCNN, WeightsReport]:
    """Build torchvision's detector from the best available initial weights.

    Tries ``config.weights`` then the sources after it in ``WEIGHT_SOURCES``;
    a source whose file is missing, or whose load fails, is skipped with a reason.
    With "coco" the head keeps COCO's 91 classes (see ``adapt_head``).
    """
    backbone = BACKBONES[config.backbone]
    start = WEIGHT_SOURCES.index(config.weights) if config.weights in WEIGHT_SOURCES else 0
    reasons: list[str] = []
    for source in WEIGHT_SOURCES[start:]:
        file = {"coco": backbone.coco, "imagenet": backbone.imagenet}.get(source)
        if source != "none" and not _weights_file_available(file, config.allow_download):
            reasons.append(f"{source} weights for {config.backbone} are not available offline")
            continue
        try:
            model = _build_base(config, source, num_classes, backbone)
        except Exception as exc:  # a download or hash failure: fall back, and say why
            reasons.append(f"{source} weights for {config.backbone} failed to load: {exc}")
            continue
        return model, WeightsReport(config.weights, source, tuple(reasons))
    raise AssertionError("'none' weights cannot fail")


def coco_head_rows(
    labels: Sequence[str], aliases: dict[str, list[str]], categories: Sequence[str]
) -> dict[int, list[int]]:
    """Map project classes (1..C) to COCO head rows that initialise them.

    A label's aliases (Label Studio's ``predicted_values``) name the model
    classes it stands for; without aliases the label's own name is matched,
    exactly first, then case-insensitively. Labels with no match are absent.
    """
    exact = {name: i for i, name in enumerate(categories) if name != "N/A"}
    folded = {name.lower(): i for name, i in reversed(list(exact.items()))}
    rows: dict[int, list[int]] = {}
    for cls, label in enumerate(labels, start=1):
        names = aliases.get(label) or [label]
        found = [exact.get(n, folded.get(n.lower())) for n in names]
        found = [i for i in found if i is not None]
        if found:
            rows[cls] = found
    return rows


def _init_from_rows(new: nn.Linear, old: nn.Linear, rows: dict[int, list[int]], width: int) -> None:
    """Copy (the mean of) old class rows into new class rows; ``width`` rows per class; background from row 0."""
    copy_class_rows(new, old, {0: [0], **rows}, width)


def adapt_head(
    model: frcnn.FasterRCNN,
    num_classes: int,
    rows: dict[int, list[int]],
    config: DetectorConfig,
    *,
    loss: LossConfig = LossConfig(),
) -> frcnn.FasterRCNN:
    """Replace the box predictor by an uncertainty-aware one with ``num_classes`` + 1 rows; heads train with ``loss``.

    ``rows`` (from ``coco_head_rows``) initialises the classes that a pretrained
    head already knows; background always comes from the old head's row 0.
    """
    old = model.roi_heads.box_predictor
    predictor = UncertainBoxPredictor(old.cls_score.in_features, num_classes + 1, config.log_var_bound)
    if old.cls_score.out_features != predictor.cls_score.out_features or rows:
        _init_from_rows(predictor.cls_score, old.cls_score, rows, 1)
        _init_from_rows(predictor.bbox_pred, old.bbox_pred, rows, 4)
    else:
        predictor.load_state_dict(old.state_dict(), strict=False)
    heads = UncertaintyRoIHeads.from_torchvision(model.roi_heads, predictor, loss=loss)
    heads.score_thresh = config.analysis_threshold
    heads.nms_thresh = config.nms_iou
    heads.detections_per_img = config.max_detections
    model.roi_heads = heads
    return _freeze_batchnorm(model)


class _FrozenNorm(torch.autograd.Function):
    """Batch norm with fixed statistics: the forward in torch's fused kernel, the backward as one
    product. The statistics and affine terms are buffers, so only the input has a gradient, and
    autograd's own batch-norm backward (made for learnt statistics) cost a CPU training step 7 %."""

    @staticmethod
    def forward(ctx, x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(weight * (var + eps).rsqrt())
        return F.batch_norm(x, mean, var, weight, bias, training=False, momentum=0.0, eps=eps)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype).reshape(1, -1, 1, 1), None, None, None, None, None


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` (the same buffers and state-dict keys), computed by
    torch's fused batch-norm kernel.

    torchvision's forward rebuilds the scale and shift from the four buffers on
    every call and applies them as two elementwise passes, whose float32 scale
    also turns float16 activations back to float32 under autocast. The fused
    kernel is the same affine map in one pass (cuDNN on CUDA) that keeps the
    activations' dtype: on an H200 our backbone had been 14 % slower than
    torchvision's own model with the same weights (``bench.gpu_check`` (a)), and
    on a CPU the forward takes 0.35-0.66x the time. The statistics never change.
    """

    def forward(self, x: Tensor) -> Tensor:
        return _FrozenNorm.apply(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)


def _freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d, and torchvision's FrozenBatchNorm2d, by our ``FrozenBatchNorm2d``
    with the same statistics.

    Detection batches are a few images: batch statistics are noise, which is why
    torchvision freezes them for pretrained backbones. Doing it for every source
    also gives all checkpoints of a backbone the same state-dict keys.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d | misc.FrozenBatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
            frozen = FrozenBatchNorm2d(child.weight.shape[0], eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)
    return module


def build_model(
    config: DetectorConfig,
    labels: Sequence[str],
    aliases: dict[str, list[str]] | None = None,
    *,
    loss: LossConfig = LossConfig(),
) -> tuple[frcnn.FasterRCNN, WeightsReport]:
    """A detector for ``labels`` from the configured base weights, or warm-started from a checkpoint of ours.

    ``loss`` is the loss its heads train with (``TrainConfig.loss``); inference ignores it.

    Raises:
        CheckpointError: ``weights`` names a checkpoint that cannot be read or
            was made with another backbone (never silently replaced by other weights).
    """
    if config.weights not in WEIGHT_SOURCES:
        return warm_start(config, labels, loss=loss), WeightsReport(config.weights, config.weights)
    model, report = build_base_model(config, len(labels) + 1)
    rows: dict[int, list[int]] = {}
    if report.used == "coco":
        categories = BACKBONES[config.backbone].coco.meta["categories"]
        rows = coco_head_rows(labels, aliases or {}, categories)
    return adapt_head(model, len(labels), rows, config, loss=loss), report


def warm_start(config: DetectorConfig, labels: Sequence[str], *, loss: LossConfig = LossConfig()) -> frcnn.FasterRCNN:
    """The checkpoint at ``config.weights`` with its class layers re-sized to ``labels`` (``model.checkpoint``)."""
    state, known = checkpoint_labels(config.weights, config.backbone)
    model = build_empty_model(config, len(known), loss=loss)
    model.load_state_dict(state)
    model.roi_heads.box_predictor = resized_predictor(model.roi_heads.box_predictor, labels, known)
    return model


def build_empty_model(config: DetectorConfig, num_labels: int, *, loss: LossConfig = LossConfig()) -> frcnn.FasterRCNN:
    """The architecture only, to load a checkpoint into; its heads train with ``loss``."""
    model, _ = build_base_model(replace(config, weights="none"), num_labels + 1)
    return adapt_head(model, num_labels, {}, config, loss=loss)


def device_kind(name: str) -> str:
    """ "cuda" or "cpu": where DEVICE=``name`` runs, decided without creating a CUDA context.

    ``torch.cuda.is_available`` only counts devices, so /health can name the
    backbone that BACKBONE=auto chose before any model touches the GPU.
    """
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error.

    CUDA means the current device (``torch.cuda.set_device``), so each torchrun
    process trains on its own GPU.
    """
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("DEVICE=cuda but no CUDA device is available")
    if device_kind(name) == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Detector:
    """A built model, its labels and its device: batched inference on images.

    Args:
        model (FasterRCNN): with ``UncertaintyRoIHeads`` (see ``build_model``).
        labels (list[str]): project class names; class i is ``labels[i - 1]``.
        device (torch.device): where inference runs.
        amp (bool): float16 autocast on CUDA, as the service runs; False keeps
            float32 (``bench.gpu_check`` times both).
    """

    def __init__(self, model: frcnn.FasterRCNN, labels: Sequence[str], device: torch.device, amp: bool = True) -> None:
        self.model = model.to(device).eval()
        self.labels = list(labels)
        self.device = device
        self.amp = amp

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def predict(self, images: Sequence[Tensor], flip: bool = False, features: bool = False) -> list[Detections]:
        """Detect objects in float images ``Tensor[3, H, W]`` in [0, 1].

        With ``flip`` the images are mirrored horizontally first and the boxes
        are returned in the mirrored image's coordinates (HUA maps them back).
        With ``features`` each result carries its pooled backbone feature.
        """
        if not images:
            return []
        batch = [img.to(self.device, non_blocking=True) for img in images]
        if flip:
            batch = [img.flip(-1) for img in batch]
        pooled: list[Tensor] = []
        hook = (
            self.model.backbone.register_forward_hook(lambda _m, _i, out: pooled.append(_pool(out)))
            if features
            else None
        )
        try:
            with self._autocast():
                outputs = self.model(batch)
        finally:
            if hook is not None:
                hook.remove()
        feats = list(pooled[0].float().cpu()) if pooled else [None] * len(images)
        return [_to_detections(out, img, f) for out, img, f in zip(outputs, images, feats)]


def _pool(features: dict[str, Tensor]) -> Tensor:
    """Global average of the coarsest feature map: ``Tensor[B, D]``."""
    return list(features.values())[-1].mean(dim=(-2, -1))


def _to_detections(out: dict[str, Tensor], image: Tensor, features: Tensor | None = None) -> Detections:
    return Detections(
        boxes=out["boxes"].float().cpu(),
        labels=out["labels"].cpu(),
        scores=out["scores"].float().cpu(),
        probs=out["probs"].float().cpu(),
        sigmas=out["sigmas"].float().cpu(),
        width=int(image.shape[-1]),
        height=int(image.shape[-2]),
        features=features,
    )

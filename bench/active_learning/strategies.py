"""Selection strategies: which unlabeled images of the pool to "annotate" next.

Every strategy sees the same :class:`PoolView` (the detector trained this cycle,
the pool, which images are labeled, the budget B) and returns at most B pool
indices, none of them labeled. The detector, its inference and the HUA ranking
are the service's own code (``model.detector.Detector``, ``model.scoring``,
``model.hua``); this module adds only what the service has no use for:

- ``random``: B images uniformly at random (the baseline).
- ``entropy``: the retrieval gate alone (docs/method.md, section 1): the B images of
  highest H(x).
- ``cald``: CALD-style consistency (Yu et al., CVPR-W 2022), two stages as in
  CALD's ``cald_train.py``: (1) consistency of the detections under flip,
  cutout, resize (x0.8) and rotation (5 degrees), the ``mr * B`` least
  consistent images go on; (2) of those, the B whose predicted class profile
  diverges most (JS) from the labeled set's. Detections are the detector's at
  its configured score threshold (the service's 0.5; CALD's code used 0.05).
- ``hua``: HUA (``model.scoring.score_pool`` with P = retrieval_ratio * B): the
  top B of its ranking.
- ``hua_kcenter``: HUA with the service's optional diversity pass
  (``HUA_DIVERSITY``, ``model.diversity``): k-center greedy on pooled backbone
  features over the top ``diversity_ratio * B`` of the ranking, then its top B.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from torchvision.ops import box_iou
from torchvision.transforms.functional import InterpolationMode, resize, rotate

from model.detections import Detections
from model.detector import Detector
from model.geometry import hflip_boxes
from model.hua import HUAConfig, image_entropy, js_divergence
from model.images import load_image
from model.samples import Sample
from model.scoring import labeled_class_frequency, predict_pool, score_pool

_LN2: float = math.log(2.0)

#: The score from which a detection counts for :func:`select_density` (the service's display threshold).
DENSITY_MIN_SCORE: float = 0.5


@dataclass(frozen=True)
class PoolView:
    """What a strategy sees at one cycle.

    Attributes:
        detector (Detector): the model trained on the labeled images this cycle.
        pool (Sequence[Sample]): every image of the pool, labeled or not (ground truth
            of the unlabeled ones is never read by a strategy).
        labeled (Sequence[int]): indices into ``pool`` of the labeled images.
        unlabeled (Sequence[int]): indices into ``pool`` of the others, in ascending order.
        budget (int): B, the number of images to select.
        num_classes (int): C.
        seed (int): for the random parts (random choice, cutout positions).
        batch_size (int): images per forward pass.
    """

    detector: Detector
    pool: Sequence[Sample]
    labeled: Sequence[int]
    unlabeled: Sequence[int]
    budget: int
    num_classes: int
    seed: int
    batch_size: int = 8

    def load(self, index: int) -> Tensor:
        """The image of pool entry ``index``, as the service loads it."""
        return load_image(self.pool[index].image_path)


@dataclass(frozen=True)
class CALDConfig:
    """CALD's settings, with the defaults of its code (``cald_train.py``: ``-mr 1.2``, ``-bp 1.3``, augs FCDR).

    Attributes:
        augmentations (tuple[str, ...]): among "flip", "cutout", "resize", "rotate".
        mutual_range (float): mr, stage 1 keeps the ``mr * B`` least consistent images.
        base_point (float): bp, consistency is |IoU + score agreement - bp|.
        resize_ratio (float): the "smaller resize" factor.
        rotate_degrees (float): the rotation angle.
        cutouts (int): rectangles cut out per image.
    """

    augmentations: tuple[str, ...] = ("flip", "cutout", "resize", "rotate")
    mutual_range: float = 1.2
    base_point: float = 1.3
    resize_ratio: float = 0.8
    rotate_degrees: float = 5.0
    cutouts: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.augmentations) - set(AUGMENTATIONS)
        if unknown or not self.augmentations:
            raise ValueError(f"augmentations must be a non-empty subset of {sorted(AUGMENTATIONS)}, got {unknown}")
        if self.mutual_range < 1.0:
            raise ValueError(f"mutual_range must be >= 1, got {self.mutual_range}")


@dataclass(frozen=True)
class StrategySettings:
    """Settings of every strategy (each reads its own).

    Attributes:
        hua (HUAConfig): HUA's settings; with a budget B, P = retrieval_ratio * B.
        cald (CALDConfig): CALD's settings.
        diversity_ratio (float): ``hua_kcenter`` runs k-center greedy over the top
            ``ceil(diversity_ratio * B)`` of the HUA ranking [ours].
    """

    hua: HUAConfig = field(default_factory=lambda: HUAConfig(retrieval_ratio=4.0))
    cald: CALDConfig = field(default_factory=CALDConfig)
    diversity_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.diversity_ratio < 1.0:
            raise ValueError(f"diversity_ratio must be >= 1, got {self.diversity_ratio}")


# --------------------------------------------------------------------------
# random, entropy, HUA, HUA + k-center
# --------------------------------------------------------------------------


def select_random(view: PoolView, settings: StrategySettings) -> list[int]:
    """B unlabeled images uniformly at random (seeded)."""
    count = min(view.budget, len(view.unlabeled))
    return random.Random(view.seed).sample(list(view.unlabeled), count)


def select_entropy(view: PoolView, settings: StrategySettings) -> list[int]:
    """The retrieval gate alone: the B images of highest H(x), ties to the lower index."""
    keys, detections, _ = predict_pool(view.detector, list(view.unlabeled), view.load, batch_size=view.batch_size)
    if not keys:
        return []
    entropy = torch.stack([image_entropy(d, settings.hua) for d in detections])
    order = torch.sort(entropy, descending=True, stable=True).indices
    return [keys[i] for i in order[: view.budget].tolist()]


def select_density(view: PoolView, settings: StrategySettings) -> list[int]:
    """The B images with the largest sum of confident detection scores (>= 0.5), ties to the lower index.

    A baseline that knows nothing about uncertainty (docs/method.md section 7): it
    buys boxes, so a selector that only matches it is buying density, not doubt.
    """
    keys, detections, _ = predict_pool(view.detector, list(view.unlabeled), view.load, batch_size=view.batch_size)
    if not keys:
        return []
    mass = torch.stack([d.scores[d.scores >= DENSITY_MIN_SCORE].sum() for d in detections])
    order = torch.sort(mass, descending=True, stable=True).indices
    return [keys[i] for i in order[: view.budget].tolist()]


def hua_ranking(view: PoolView, settings: StrategySettings) -> list[int]:
    """The unlabeled pool in HUA order, most informative first (``model.scoring.score_pool``)."""
    freq = labeled_class_frequency([view.pool[i].labels for i in view.labeled], view.num_classes)
    scores = score_pool(
        view.detector,
        list(view.unlabeled),
        view.load,
        freq,
        settings.hua,
        batch_size=view.batch_size,
        budget=view.budget,
    )
    return [scores.keys[i] for i in scores.ranking.order.tolist()]


def select_hua(view: PoolView, settings: StrategySettings) -> list[int]:
    """The top B of the HUA ranking (the settings' aggregation, ``sum`` by default)."""
    return hua_ranking(view, settings)[: view.budget]


def select_hua_mean(view: PoolView, settings: StrategySettings) -> list[int]:
    """The top B of the HUA ranking with HUA_AGGREGATE=mean (uncertainty per object)."""
    return select_hua(view, replace(settings, hua=replace(settings.hua, aggregate="mean")))


def select_hua_kcenter(view: PoolView, settings: StrategySettings) -> list[int]:
    """The top B of the HUA ranking re-ordered by the diversity pass over its top ``diversity_ratio * B``.

    k-center greedy adds one image at a time, so the first B of the re-ordered
    window are the B most spread-out images of that window, starting at HUA's first.
    """
    window = math.ceil(settings.diversity_ratio * view.budget)
    hua = replace(settings.hua, diversity=True, diversity_window=window)
    return hua_ranking(view, replace(settings, hua=hua))[: view.budget]


# --------------------------------------------------------------------------
# CALD-style consistency
# --------------------------------------------------------------------------


def flip_view(image: Tensor, boxes: Tensor, rng: random.Random, config: CALDConfig) -> tuple[Tensor, Tensor]:
    """Horizontal flip; boxes mirrored (x' = W - x)."""
    width = image.shape[-1]
    return image.flip(-1), hflip_boxes(boxes, width)


def cutout_view(image: Tensor, boxes: Tensor, rng: random.Random, config: CALDConfig) -> tuple[Tensor, Tensor]:
    """CALD's cutout: up to ``cutouts`` black rectangles (5-20 % of each side) that cover
    10-40 % of the most covered box (50 tries); boxes unchanged."""
    out = image.clone()
    height, width = image.shape[-2:]
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(1e-6)
    done = 0
    for _ in range(50):
        h, w = rng.uniform(0.05 * height, 0.2 * height), rng.uniform(0.05 * width, 0.2 * width)
        left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
        rect = torch.tensor([[int(left), int(top), int(left + w), int(top + h)]], dtype=boxes.dtype)
        lt, rb = torch.maximum(rect[:, :2], boxes[:, :2]), torch.minimum(rect[:, 2:], boxes[:, 2:])
        ratio = float(((rb - lt).clamp_min(0).prod(dim=1) / areas).max())
        if not 0.1 <= ratio <= 0.4:
            continue
        out[:, int(top) : int(top + h), int(left) : int(left + w)] = 0.0
        done += 1
        if done >= config.cutouts:
            break
    return out, boxes


def resize_view(image: Tensor, boxes: Tensor, rng: random.Random, config: CALDConfig) -> tuple[Tensor, Tensor]:
    """CALD's "smaller resize": the image scaled by ``resize_ratio`` (bilinear), boxes with it."""
    height, width = image.shape[-2:]
    size = [max(1, int(height * config.resize_ratio)), max(1, int(width * config.resize_ratio))]
    return resize(image, size, InterpolationMode.BILINEAR, antialias=True), boxes * config.resize_ratio


def rotated_boxes(boxes: Tensor, width: int, height: int, degrees: float, canvas: tuple[int, int]) -> Tensor:
    """Boxes of a ``width`` x ``height`` image after an anticlockwise rotation by ``degrees``
    about its centre onto an expanded ``canvas`` (w, h), centred, as torchvision's
    ``rotate(expand=True)`` does: the enclosing boxes of the rotated corners ``Tensor[N, 4]``."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    xs = boxes[:, [0, 2, 0, 2]] - width / 2
    ys = boxes[:, [1, 1, 3, 3]] - height / 2
    rx = cos * xs + sin * ys + canvas[0] / 2
    ry = -sin * xs + cos * ys + canvas[1] / 2
    return torch.stack([rx.amin(1), ry.amin(1), rx.amax(1), ry.amax(1)], dim=1)


def rotate_view(image: Tensor, boxes: Tensor, rng: random.Random, config: CALDConfig) -> tuple[Tensor, Tensor]:
    """CALD's rotation: ``rotate_degrees`` anticlockwise, canvas expanded, resized back to H x W."""
    height, width = image.shape[-2:]
    turned = rotate(image, config.rotate_degrees, InterpolationMode.BILINEAR, expand=True)
    canvas = (turned.shape[-1], turned.shape[-2])
    scale = torch.tensor([width / canvas[0], height / canvas[1]] * 2, dtype=boxes.dtype)
    out = rotated_boxes(boxes, width, height, config.rotate_degrees, canvas) * scale
    limit = torch.tensor([width, height] * 2, dtype=boxes.dtype)
    out = torch.minimum(out.clamp_min(0), limit)
    return resize(turned, [height, width], InterpolationMode.BILINEAR, antialias=True), out


Augmentation = Callable[[Tensor, Tensor, random.Random, CALDConfig], tuple[Tensor, Tensor]]

AUGMENTATIONS: dict[str, Augmentation] = {
    "flip": flip_view,
    "cutout": cutout_view,
    "resize": resize_view,
    "rotate": rotate_view,
}


def cald_consistency(reference: Detections, boxes_in_view: Tensor, augmented: Detections, base_point: float) -> float:
    """CALD's consistency of one image under one augmentation (lower = less consistent).

    Each reference detection i, its box mapped into the augmented image, is
    matched to the augmented detection of highest IoU; its agreement is
    IoU + (1 - JS) * (pm_i + pm*_i) / 2 with pm the largest softmax probability
    and JS in nats (as CALD's scipy call). The image's value is
    min(1, min_i |agreement_i - base_point|); no augmented detection: 0.
    """
    if len(augmented) == 0:
        return 0.0
    iou = box_iou(boxes_in_view, augmented.boxes).nan_to_num(0.0)
    best, match = iou.max(dim=1)
    js = js_divergence(reference.probs, augmented.probs[match]) * _LN2
    agreement = best + (1 - js) * 0.5 * (reference.probs.amax(dim=1) + augmented.probs[match].amax(dim=1))
    return min(1.0, float((agreement - base_point).abs().min()))


def class_profile(detections: Detections, num_classes: int) -> Tensor:
    """Per class, the highest score of a detection of that class (0 when none): ``Tensor[C]``."""
    profile = torch.zeros(num_classes, dtype=torch.float64)
    if len(detections):
        profile.scatter_reduce_(0, detections.labels - 1, detections.scores.double(), reduce="amax")
    return profile


def _image_cald(
    detector: Detector,
    image: Tensor,
    reference: Detections,
    rng: random.Random,
    view: PoolView,
    config: CALDConfig,
) -> tuple[float, Tensor]:
    """Stage-1 consistency (mean over augmentations) and mean class profile of one image."""
    profiles = [class_profile(reference, view.num_classes)]
    if len(reference) == 0:
        return 0.0, profiles[0]
    views = [AUGMENTATIONS[name](image, reference.boxes, rng, config) for name in config.augmentations]
    outputs = detector.predict([v[0] for v in views])
    values = [cald_consistency(reference, boxes, out, config.base_point) for (_, boxes), out in zip(views, outputs)]
    profiles += [class_profile(out, view.num_classes) for out in outputs]
    return sum(values) / len(values), torch.stack(profiles).mean(dim=0)


def cald_scores(view: PoolView, config: CALDConfig) -> tuple[list[int], Tensor, Tensor]:
    """(keys, consistency Tensor[N], class profiles Tensor[N, C]) of the unlabeled images."""
    rng = random.Random(view.seed)
    keys, consistency, profiles = [], [], []
    for start in range(0, len(view.unlabeled), view.batch_size):
        chunk = list(view.unlabeled[start : start + view.batch_size])
        images = [view.load(i) for i in chunk]
        for key, image, reference in zip(chunk, images, view.detector.predict(images)):
            value, profile = _image_cald(view.detector, image, reference, rng, view, config)
            keys.append(key)
            consistency.append(value)
            profiles.append(profile)
    return keys, torch.tensor(consistency, dtype=torch.float64), torch.stack(profiles)


def _labeled_profile(view: PoolView) -> Tensor:
    """Mean over labeled images of their per-class box counts (CALD's ``result``)."""
    counts = torch.zeros(view.num_classes, dtype=torch.float64)
    for i in view.labeled:
        counts += torch.bincount(view.pool[i].labels - 1, minlength=view.num_classes)[: view.num_classes].double()
    return counts / max(1, len(view.labeled))


def select_cald(view: PoolView, settings: StrategySettings) -> list[int]:
    """CALD, two stages.

    Stage 1: the ``int(mr * B)`` images of lowest consistency (ties to the lower index).
    Stage 2: first those with no detection at all (an all-zero profile), then by
    JS(softmax(labeled profile), softmax(class profile)) descending, as CALD's
    ``cls_kldiv`` (whose running update is commented out, so the order is static).
    """
    keys, consistency, profiles = cald_scores(view, settings.cald)
    if not keys:
        return []
    stage1 = torch.sort(consistency, stable=True).indices[: int(settings.cald.mutual_range * view.budget)]
    candidates = profiles[stage1]
    js = js_divergence(torch.softmax(_labeled_profile(view), 0)[None], torch.softmax(candidates, 1))
    js = torch.where(candidates.sum(dim=1) == 0, torch.full_like(js, math.inf), js)
    order = torch.sort(js, descending=True, stable=True).indices[: view.budget]
    return [keys[i] for i in stage1[order].tolist()]


Strategy = Callable[[PoolView, StrategySettings], list[int]]

STRATEGIES: dict[str, Strategy] = {
    "random": select_random,
    "entropy": select_entropy,
    "cald": select_cald,
    "density": select_density,
    "hua": select_hua,
    "hua_mean": select_hua_mean,
    "hua_kcenter": select_hua_kcenter,
}


def select(name: str, view: PoolView, settings: StrategySettings) -> list[int]:
    """Run strategy ``name`` and check its answer.

    Raises:
        KeyError: unknown strategy.
        RuntimeError: the strategy picked a labeled or unknown image, one twice, or more than B.
    """
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    picked = STRATEGIES[name](view, settings)
    allowed = set(view.unlabeled)
    if len(picked) > view.budget or len(set(picked)) != len(picked) or not set(picked) <= allowed:
        raise RuntimeError(f"strategy {name!r} made an invalid selection: {picked}")
    return picked

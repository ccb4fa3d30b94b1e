"""HUA's scoring cost on one pool: (a) a plain pass, (b) HUA, (c) a CALD-style pass, (d) HUA with the
diversity pass (``HUA_DIVERSITY``, the service's default: pooled features in the first pass, k-center
greedy over the ranking's top ``diversity_window``).

The steps are defined in ``bench.bench_hua``'s docstring, which runs them with
the aggregation and the ranked /predict; ``bench.gpu_check`` runs (a) and (b)
on a GPU. This module imports nothing of the service beyond ``model``, so the
GPU check runs on a machine without the service's web and Label Studio packages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from bench.common import SHAPE_LABELS, interleaved, median, synthetic_scenes
from model.detections import Detections
from model.detector import Detector, DetectorConfig, build_model, select_device
from model.geometry import hflip_boxes
from model.hua import HUAConfig, js_divergence, num_candidates
from model.scoring import labeled_class_frequency, predict_pool, score_pool

AUGMENTATIONS = ("flip", "cutout", "resize", "rotate90")
RESIZE_FACTOR = 0.8


# --- (c) CALD-style consistency -------------------------------------------------------


def _cutout(image: Tensor, key: int, holes: int = 2, fraction: float = 0.25) -> Tensor:
    """``image`` with ``holes`` grey rectangles of ``fraction`` of each side (seeded by ``key``)."""
    out = image.clone()
    _, h, w = image.shape
    gen = torch.Generator().manual_seed(1000 + int(key))
    ch, cw = max(1, int(h * fraction)), max(1, int(w * fraction))
    for _ in range(holes):
        y = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        out[:, y : y + ch, x : x + cw] = 0.5
    return out


def augment(image: Tensor, kind: str, key: int) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """The augmented image and the map of its boxes back to ``image``'s pixels."""
    _, h, w = image.shape
    if kind == "flip":
        return image.flip(-1), lambda b: hflip_boxes(b, w)
    if kind == "cutout":
        return _cutout(image, key), lambda b: b
    if kind == "resize":
        small = F.interpolate(image[None], scale_factor=RESIZE_FACTOR, mode="bilinear", align_corners=False)[0]
        sx, sy = w / small.shape[-1], h / small.shape[-2]
        return small, lambda b: b * torch.tensor([sx, sy, sx, sy], dtype=b.dtype)
    if kind == "rotate90":
        # torch.rot90(k=1) on (H, W): a point (x, y) goes to (y, W - x); back: x = W - y', y = x'.
        return torch.rot90(image, 1, (1, 2)), lambda b: torch.stack((w - b[:, 3], b[:, 0], w - b[:, 1], b[:, 2]), dim=1)
    raise ValueError(f"unknown augmentation {kind!r}")


def consistency(original: Detections, boxes_back: Tensor, probs: Tensor) -> float:
    """Mean over original detections of IoU(best match) x (1 - JS(p, p*)); 0 when either side is empty."""
    if len(original) == 0 or boxes_back.shape[0] == 0:
        return 0.0
    best_iou, match = box_iou(original.boxes, boxes_back).nan_to_num(0.0).max(dim=1)
    return float((best_iou * (1.0 - js_divergence(original.probs, probs[match]))).mean())


def cald_pool(detector: Detector, keys: list[int], source, batch_size: int) -> Tensor:
    """Consistency of every image over the original and its 4 augmentations (5 forward passes each).

    Returns:
        Tensor[N]: float64, the minimum over augmentations of the image's consistency
        (lower = less consistent = more informative, in CALD's sense).
    """
    scores = []
    for start in range(0, len(keys), batch_size):
        batch = keys[start : start + batch_size]
        images = [source(k) for k in batch]
        originals = detector.predict(images)
        per_aug = []
        for kind in AUGMENTATIONS:
            augmented = [augment(img, kind, k) for img, k in zip(images, batch)]
            dets = detector.predict([a for a, _ in augmented])
            per_aug.append(
                [
                    consistency(orig, back(det.boxes), det.probs)
                    for orig, det, (_, back) in zip(originals, dets, augmented)
                ]
            )
        scores.extend(min(values) for values in zip(*per_aug))
    return torch.tensor(scores, dtype=torch.float64)


# --- the model part -------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """``n`` synthetic scenes of ``width`` x ``height`` and the detector that scores them."""

    n: int
    width: int
    height: int
    backbone: str
    weights: str
    analysis_threshold: float
    batch_size: int
    device: str = "cpu"
    seed: int = 0


def build_detector(pool: Pool) -> tuple[Detector, str]:
    """The pool's detector (fixed seed, weights never downloaded) and the weights it got."""
    torch.manual_seed(pool.seed)
    config = DetectorConfig(
        backbone=pool.backbone, weights=pool.weights, allow_download=False, analysis_threshold=pool.analysis_threshold
    )
    model, report = build_model(config, list(SHAPE_LABELS))
    used = report.used + (f" (asked for {report.requested}: {'; '.join(report.reasons)})" if report.fell_back else "")
    return Detector(model, list(SHAPE_LABELS), select_device(pool.device)), used


def _scoring_steps(
    detector: Detector,
    images: list[Tensor],
    hua: HUAConfig,
    batch_size: int,
    outputs: dict,
    cald: bool,
    diversity: bool = False,
) -> dict[str, Callable[[], None]]:
    """The timed steps (a), (b), with ``cald`` (c), with ``diversity`` (d); each keeps its last output in
    ``outputs``."""
    keys = list(range(len(images)))
    source = images.__getitem__
    freq = labeled_class_frequency([], len(SHAPE_LABELS))
    steps = {
        "a": lambda: outputs.update(plain=predict_pool(detector, keys, source, batch_size=batch_size)),
        "b": lambda: outputs.update(hua=score_pool(detector, keys, source, freq, hua, batch_size=batch_size)),
    }
    if diversity:
        diverse = replace(hua, diversity=True)
        steps["d"] = lambda: outputs.update(
            diverse=score_pool(detector, keys, source, freq, diverse, batch_size=batch_size)
        )
    # warm-up: every input shape each step will see (batched, flipped, rotated, resized)
    warm = keys[: min(len(keys), 2)]
    predict_pool(detector, warm, source, batch_size=batch_size)
    predict_pool(detector, warm, source, batch_size=batch_size, flip=True)
    if cald:
        steps["c"] = lambda: outputs.update(cald=cald_pool(detector, keys, source, batch_size))
        cald_pool(detector, warm, source, batch_size)
    return steps


def _clock_summary(samples: dict[str, dict[str, list[float]]], clock: str, n: int) -> dict:
    """Medians of one clock, the per-image forward time and the ratios b/a (and c/b)."""
    med = {k: median(v[clock]) for k, v in samples.items()}
    summary = {
        "median_s": med,
        "per_image_forward_s": med["a"] / n,
        "b_over_a": med["b"] / med["a"],
        "round_b_over_a": [b / a for a, b in zip(samples["a"][clock], samples["b"][clock])],
    }
    for step in ("c", "d"):
        if step in samples:
            summary[f"{step}_over_b"] = med[step] / med["b"]
            summary[f"round_{step}_over_b"] = [x / b for b, x in zip(samples["b"][clock], samples[step][clock])]
    return summary


#: (d) / (b) at most this: the diversity pass adds a mean over one feature map per image and k-center
#: greedy over the ranking's top ``diversity_window`` (fixed before its first run).
DIVERSITY_GOAL = 1.05


def time_scoring(pool: Pool, repeats: int, cald: bool = True, diversity: bool = False) -> dict:
    """(a), (b), with ``cald`` (c), with ``diversity`` (d) on one pool, ``repeats`` interleaved rounds;
    medians and ratios.

    The goals are judged on wall time, the time a user waits.
    """
    detector, weights_used = build_detector(pool)
    images = [image for image, _, _ in synthetic_scenes(pool.n, pool.width, pool.height, pool.seed)]
    hua = HUAConfig(retrieval_fraction=0.5, min_candidates=0)
    n, p = pool.n, num_candidates(pool.n, hua)
    outputs: dict[str, object] = {}
    steps = _scoring_steps(detector, images, hua, pool.batch_size, outputs, cald, diversity)
    samples = interleaved(steps, repeats)
    p_seen = int(outputs["hua"].ranking.candidate_mask.sum())
    if p_seen != p:
        raise RuntimeError(f"score_pool ranked {p_seen} candidates, expected P = {p}")
    _, plain_dets, _ = outputs["plain"]
    result = {
        "N": n,
        "P": p,
        "device": str(detector.device),
        "weights_used": weights_used,
        "detections_per_image": sum(len(d) for d in plain_dets) / n,
        "forward_passes": {"a": n, "b": n + p},
        "samples_s": samples,
        "b_over_a_ideal": (n + p) / n,
        "b_over_a_goal": 1 + p / n + 0.1,
        **{clock: _clock_summary(samples, clock, n) for clock in ("wall", "cpu")},
    }
    result["b_over_a_met"] = result["wall"]["b_over_a"] <= result["b_over_a_goal"]
    if cald:
        result["forward_passes"]["c"] = (1 + len(AUGMENTATIONS)) * n
        result["c_over_b_ideal"] = (1 + len(AUGMENTATIONS)) * n / (n + p)
        result["c_over_b_goal"] = 2.0
        result["cald_mean_consistency"] = float(outputs["cald"].mean())
        result["c_over_b_met"] = result["wall"]["c_over_b"] >= result["c_over_b_goal"]
    if diversity:
        result["forward_passes"]["d"] = n + p
        result["d_over_b_goal"] = DIVERSITY_GOAL
        result["d_over_b_met"] = result["wall"]["d_over_b"] <= DIVERSITY_GOAL
        result["diversity_window"] = min(n, hua.diversity_window)
    return result

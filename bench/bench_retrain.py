"""Does a project's first retraining learn? The service's recipe on 2 annotated images, per loss form.

docs/method.md, section 4 and issue 9: with the paper's synchronic form (the service's
default LOSS=synchronic) and 8 epochs of a 2-image project (8 steps, all inside the
warm-up) the RPN's objectness loss stayed at chance (ln 2 = 0.693). This runs Settings' own training recipe (a
floor of TRAIN_MIN_ITERATIONS steps, its warm-up and learning rate) from the
ImageNet MobileNetV2-FPN (the file `make weights` fetches; the RPN and box head
start from random, as with a user's first photos) on 2 synthetic photos of 20
small objects of 2 classes, and prints, for each loss form, the mean of the
objectness and classifier losses over the first and the last 10 steps.

    .venv/bin/python -m bench.bench_retrain                    # 200 steps (the default floor), 3 forms
    .venv/bin/python -m bench.bench_retrain --iterations 60 --forms synchronic
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

import torch
from PIL import Image, ImageDraw

from backend.settings import Settings
from bench.common import REPO_TORCH_HOME
from model.detector import DetectorConfig, build_model
from model.losses import LOSS_NAMES, LossConfig
from model.samples import Sample
from model.train import TrainResult, train

COLOURS = ((220, 30, 30), (30, 60, 220))  # class 1 red, class 2 blue
WATCHED = ("loss_objectness", "loss_classifier")


def scenes(folder: Path, count: int, objects: int, size: tuple[int, int] = (160, 128), seed: int = 0) -> list[Sample]:
    """``count`` grey images with ``objects`` non-overlapping squares of 2 classes each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cells = [(x, y) for x in range(0, size[0] - 16, 20) for y in range(0, size[1] - 16, 20)]
    samples = []
    for i in range(count):
        img = Image.new("RGB", size, (128, 128, 128))
        draw = ImageDraw.Draw(img)
        boxes, labels = [], []
        for x, y in rng.sample(cells, objects):
            side, cls = rng.randint(10, 16), rng.randint(1, 2)
            draw.rectangle([x, y, x + side - 1, y + side - 1], fill=COLOURS[cls - 1])
            boxes.append([x, y, x + side, y + side])
            labels.append(cls)
        path = folder / f"scene-{i}.png"
        img.save(path)
        samples.append(Sample(str(path), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), key=str(i)))
    return samples


def imagenet_model(seed: int = 0, loss: LossConfig = LossConfig()) -> torch.nn.Module:
    """MobileNetV2-FPN with torchvision's ImageNet backbone for classes "red" and "blue", training with ``loss``.

    Raises:
        RuntimeError: the ImageNet file is not in ./.cache/torch (run `make weights`).
    """
    config = DetectorConfig(
        backbone="mobilenet_v2_fpn", weights="imagenet", allow_download=False, min_size=128, max_size=160
    )
    torch.manual_seed(seed)
    with patch.dict(os.environ, TORCH_HOME=str(REPO_TORCH_HOME)):  # only while building: the caller's cache stays
        model, report = build_model(config, ["red", "blue"], loss=loss)
    if report.fell_back:
        raise RuntimeError(f"ImageNet weights unavailable: {report.reasons}; run `make weights`")
    return model


def retrain(name: str, samples: list[Sample], iterations: int | None = None, seed: int = 0) -> TrainResult:
    """Settings' training recipe with loss ``name`` (``iterations`` overrides the floor).

    Seeded (initialisation, data order and flips), as TRAIN_SEED would seed it: every loss form
    sees the same steps, and a run is repeatable.
    """
    loss = LossConfig.from_name(name)
    config = replace(Settings(loss=loss.kind, sync_form=loss.form).train_config(), seed=seed)
    if iterations is not None:
        config = replace(config, min_iterations=iterations)
    return train(imagenet_model(seed, config.loss), samples, config, torch.device("cpu"))


def first_and_last(result: TrainResult, key: str, steps: int = 10) -> tuple[float, float]:
    """Mean of ``key`` over the first and the last ``steps`` steps (one pass is one step here)."""
    rows = result.epoch_losses
    mean = lambda part: sum(r[key] for r in part) / len(part)  # noqa: E731
    return mean(rows[:steps]), mean(rows[-steps:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=None, help="default: Settings' TRAIN_MIN_ITERATIONS")
    parser.add_argument("--forms", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        samples = scenes(Path(folder), 2, objects=20)
        print("loss form          steps  " + "  ".join(f"{k} first -> last" for k in WATCHED) + "  lambda  clipped")
        for name in args.forms:
            result = retrain(name, samples, args.iterations)
            pairs = (first_and_last(result, key) for key in WATCHED)
            figures = "  ".join(f"{first:.3f} -> {last:.3f}" for first, last in pairs)
            print(
                f"{name:18} {int(result.summary['iterations']):5}  {figures}  "
                f"{result.summary.get('lambda', float('nan')):.2f}  {result.summary['clip_fraction']:.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmarks: synthetic scenes, interleaved timing, tables, the backend's environment.

Nothing here downloads anything. ``use_repo_torch_home`` points torch's cache at
``<repo>/.cache/torch`` (which holds torchvision's ImageNet MobileNetV2 file)
unless TORCH_HOME is already set, and the benchmarks build every detector with
``allow_download=False``: a weights file that is not cached falls back to the
next source (``model.detector.build_base_model``), and the benchmarks print
which weights were really used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from backend.settings import ENVIRONMENT
from model.images import image_tensor
from model.samples import Sample

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_TORCH_HOME = REPO_ROOT / ".cache" / "torch"
#: torchvision's ImageNet MobileNetV2 file in the repository's cache (``make weights`` puts it there).
IMAGENET_FILE = REPO_TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"

#: Classes of the synthetic scenes, in the order of their class indices 1..3.
SHAPE_LABELS: tuple[str, ...] = ("circle", "square", "triangle")


def label_config(labels: Sequence[str] = SHAPE_LABELS) -> str:
    """A Label Studio label config with one RectangleLabels control over ``labels``."""
    return (
        '<View><Image name="image" value="$image"/>'
        '<RectangleLabels name="label" toName="image">'
        + "".join(f'<Label value="{label}"/>' for label in labels)
        + "</RectangleLabels></View>"
    )


def use_repo_torch_home() -> str:
    """Set TORCH_HOME to the repository's cache unless it is set already; returns the one in use."""
    os.environ.setdefault("TORCH_HOME", str(REPO_TORCH_HOME))
    return os.environ["TORCH_HOME"]


def add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` and ``--weights`` as the CPU benchmarks take them (ImageNet weights from TORCH_HOME)."""
    parser.add_argument("--backbone", default="mobilenet_v2_fpn", help="detector backbone (default mobilenet_v2_fpn)")
    parser.add_argument(
        "--weights",
        default="imagenet",
        choices=("imagenet", "none"),
        help="initial weights, never downloaded (default imagenet, from TORCH_HOME)",
    )


def parse_size(text: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (e.g. ``"320x240"``) as ``(width, height)``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise ValueError(f"image size must be WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from error
    if width < 16 or height < 16:
        raise ValueError(f"image size must be at least 16x16, got {text!r}")
    return width, height


# --- synthetic scenes ---------------------------------------------------------------


def shape_scene(
    rng: np.random.Generator, width: int, height: int, min_shapes: int = 3, max_shapes: int = 7
) -> tuple[Image.Image, Tensor, Tensor]:
    """A shaded, noisy RGB background with several filled coloured shapes.

    Returns:
        tuple[Image, Tensor[K, 4], Tensor[K]]: the image, each shape's xyxy box in
        pixels and its class in 1..3 (``SHAPE_LABELS``).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    tilt = rng.uniform(-60, 60, size=3)
    canvas = base + tilt * (xx / width)[..., None] + tilt[::-1] * (yy / height)[..., None]
    canvas += rng.normal(0, 8, size=canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    boxes, labels = [], []
    low = max(4, min(width, height) // 8)
    high = max(low + 1, min(width, height) // 2)
    for _ in range(int(rng.integers(min_shapes, max_shapes + 1))):
        w, h = int(rng.integers(low, high)), int(rng.integers(low, high))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cls = int(rng.integers(1, len(SHAPE_LABELS) + 1))
        box = (x, y, x + w, y + h)
        if cls == 1:
            draw.ellipse(box, fill=colour)
        elif cls == 2:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x + w / 2, y), (x, y + h), (x + w, y + h)], fill=colour)
        boxes.append(box)
        labels.append(cls)
    return image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64)


def synthetic_scenes(n: int, width: int, height: int, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``n`` scenes as ``(image Tensor[3, H, W] in [0, 1], boxes, labels)``, from a fixed seed."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        image, boxes, labels = shape_scene(rng, width, height)
        scenes.append((image_tensor(image), boxes, labels))
    return scenes


def scene_samples(folder: Path, n: int, width: int, height: int, seed: int) -> list[Sample]:
    """``n`` scenes written as PNG files under ``folder``: training samples, from a fixed seed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        image, boxes, labels = shape_scene(rng, width, height)
        path = folder / f"scene_{i:04d}.png"
        image.save(path)
        samples.append(Sample(str(path), boxes, labels, str(i)))
    return samples


# --- timing -------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """The GPU's name (``torch.cuda.get_device_name``), or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:  # not Linux
        found = None
    return f"CPU {found.group(1).strip() if found else platform.processor()}".strip()


def synchronize(device: torch.device | str) -> None:
    """Wait for queued CUDA work so that wall time covers it (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of each step, ``repeats`` rounds, the steps taken in turn within a round.

    The order rotates from round to round (a b c, b c a, c a b, ...) so that no
    step always runs first after a pause or right after a particular other one.
    CPU seconds are this process's (all its threads, ``time.process_time``): on a
    machine shared with other programs they move much less than wall time.
    Warm-up is the caller's business.

    Returns:
        dict: per step name, ``{"wall": [...], "cpu": [...]}`` in round order.
    """
    names = list(steps)
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for rnd in range(repeats):
        for k in range(len(names)):
            name = names[(rnd + k) % len(names)]
            cpu, start = time.process_time(), time.perf_counter()
            steps[name]()
            samples[name]["wall"].append(time.perf_counter() - start)
            samples[name]["cpu"].append(time.process_time() - cpu)
    return samples


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt_goal(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def print_table(header: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table under a one-line header."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    print(header)
    for j, row in enumerate(cells):
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: Path | str, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def run_and_report(
    name: str,
    args: object,
    run: Callable[[object, Path], dict],
    report: Callable[[dict], None],
) -> dict:
    """``run(args, folder)`` in a temporary folder, its table printed, its figures written to ``args.out`` if set."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        figures = run(args, Path(tmp))
    report(figures)
    if getattr(args, "out", None):
        write_json(args.out, figures)
    return figures


# --- the service --------------------------------------------------------------------


def backend_env(port: int, model_dir: Path, backbone: str, **extra: str) -> dict[str, str]:
    """The backend's variables for a benchmark run under gunicorn on 127.0.0.1.

    WEIGHTS=none, DEVICE=cpu, no download; every other backend variable from this
    process's environment is dropped (``extra`` adds some back, by variable name).
    """
    settings = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODEL_DIR": str(model_dir),
        "WEIGHTS": "none",
        "ALLOW_WEIGHTS_DOWNLOAD": "false",
        "BACKBONE": backbone,
        "DEVICE": "cpu",
        **extra,
    }
    inherited = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    return {**inherited, **settings}

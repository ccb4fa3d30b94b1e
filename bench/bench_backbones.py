"""Cost of a training step per backbone: the same batch, steps interleaved, ratios to the first.

Why a backbone is chosen for a preset (``mobilenet_v2_fpn_stride8`` for ``varied``'s
small digits) is a trade of resolution against time; this measures the time side
on the machine at hand. Each backbone is built without pretrained weights (the
cost does not depend on them) at the same input size, and one step is
``model.train.train_step`` with the default loss. One warm-up step each, then
``--repeats`` rounds with the order rotated; the table gives median CPU seconds
(steadier than wall time on a shared machine) and the ratio to the first backbone.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_backbones --size 256 --batch-size 4 --repeats 5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import SHAPE_LABELS, interleaved, median, print_table, synthetic_scenes, write_json
from model.detector import BACKBONES, DetectorConfig, build_empty_model
from model.losses import LossConfig
from model.train import train_step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["mobilenet_v2_fpn", "mobilenet_v2_fpn_stride8"],
        choices=sorted(BACKBONES),
        help="backbones to compare; ratios are to the first (default mobilenet_v2_fpn, mobilenet_v2_fpn_stride8)",
    )
    parser.add_argument("--size", type=int, default=256, help="square input size in pixels (default 256)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    parser.add_argument("--sampled-rois", type=int, default=32, help="RoIs sampled per image (default 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per backbone (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    return parser.parse_args(argv)


def step_function(backbone: str, args: argparse.Namespace, batch: tuple[list, list]):
    """One training step of a freshly built ``backbone`` on ``batch``, as a callable."""
    config = DetectorConfig(
        backbone=backbone,
        weights="none",
        allow_download=False,
        min_size=args.size,
        max_size=args.size,
        sampled_rois=args.sampled_rois,
    )
    torch.manual_seed(0)
    model = build_empty_model(config, len(SHAPE_LABELS)).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets = batch
    return lambda: train_step(model, images, targets, optimizer, LossConfig())


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scenes = synthetic_scenes(args.batch_size, args.size, args.size, seed=0)
    batch = ([image for image, _, _ in scenes], [{"boxes": b, "labels": lab} for _, b, lab in scenes])
    steps = {name: step_function(name, args, batch) for name in args.backbones}
    for step in steps.values():
        step()  # warm-up
    samples = interleaved(steps, args.repeats)
    first = median(samples[args.backbones[0]]["cpu"])
    return {
        "size": args.size,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "backbones": {
            name: {
                "cpu_s": median(s["cpu"]),
                "wall_s": median(s["wall"]),
                "ratio": median(s["cpu"]) / first,
            }
            for name, s in samples.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    figures = run(args)
    rows = [
        [name, f"{f['cpu_s']:.2f}", f"{f['wall_s']:.2f}", f"{f['ratio']:.2f}"]
        for name, f in figures["backbones"].items()
    ]
    header = (
        f"training step, batch {args.batch_size} of {args.size} px, {args.threads} torch thread(s), "
        f"medians of {args.repeats}"
    )
    print_table(header, ["backbone", "CPU s", "wall s", f"/ {args.backbones[0]}"], rows)
    if args.out:
        write_json(args.out, figures)
    return figures


if __name__ == "__main__":
    main()

"""The GPU path in one run: inference, a training step, torchrun and HUA scoring, side by side.

Every figure in the README so far is from a CPU; this one script exercises the
CUDA and autocast paths of inference, training and torchrun, and prints on one
screen, with the device's name (``torch.cuda.get_device_name``):

(a) inference images/s of our /predict path, ``model.detector.Detector.predict``
    (images to the device, our RoI heads with class probabilities and sigmas,
    results back on the CPU), against torchvision's bare model: its own builder
    for the same backbone (its own norm layers, RoIHeads and FastRCNNPredictor)
    carrying the same weights and thresholds, called as torchvision documents
    it. The same images: JPEG scenes decoded once as /predict decodes them
    (``bench.bench_predict``). fp32 and autocast (float16, what the service
    runs on CUDA; a CPU has fp32 only), batch 1 and 8, interleaved rounds
    (``bench.common.interleaved``), medians. Goal: ours >= 0.95x bare at batch 8.
    The fp32 outputs of both are compared: the same boxes and scores.
(b) one synchronic training step against one standard step, same weights and
    batch: ``bench.bench_train_step`` (time ratio, peak GPU memory of each).
(c) a two-step data-parallel training under torchrun, one process per visible
    GPU (NCCL; one process with gloo on a CPU): the launcher of
    ``python -m backend train`` (``model.distributed.torchrun_command``) starting
    this module's ``--ddp-worker``, which trains with ``model.train.train``.
    Reported: steps, seconds, and whether the replicas ended identical.
(d) HUA scoring of a 1,000-image pool against one plain pass over it:
    ``bench.hua_scoring.time_scoring`` (``bench_hua``'s) without its CALD step
    (b/a, ideal 1 + P/N).

It imports torch, torchvision, numpy, Pillow, requests and this repository's
``model`` and ``bench`` only (not Flask, gunicorn or the Label Studio SDK), so
it runs on a GPU machine's stock PyTorch image.

Weights default to none (nothing is downloaded, and nothing on a GPU machine
need be cached): speed does not depend on the values, and the score threshold
0.05 gives the untrained heads' post-processing its full 100 detections per image.
The backbone defaults to BACKBONE=auto's choice for the device.

Usage (from the repository root)::

    .venv/bin/python -m bench.gpu_check --out /tmp/gpu_check.json   # a GPU machine: 76 s on an H200
    .venv/bin/python -m bench.gpu_check --smoke                      # any machine, seconds: tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torchvision.models.detection import FasterRCNN

from bench import bench_train_step
from bench.bench_predict import decoded_tensors, write_images
from bench.common import (
    REPO_ROOT,
    SHAPE_LABELS,
    device_name,
    fmt_goal,
    interleaved,
    median,
    parse_size,
    print_table,
    scene_samples,
    synchronize,
    use_repo_torch_home,
    write_json,
)
from bench.hua_scoring import Pool, time_scoring
from model.detector import (
    AUTO_BACKBONE,
    BACKBONES,
    Detector,
    DetectorConfig,
    build_base_model,
    build_model,
    resolve_backbone,
    select_device,
)
from model.distributed import join_process_group, torchrun_command
from model.train import TrainConfig, train

INFERENCE_GOAL = 0.95
ANALYSIS_THRESHOLD = 0.05
DDP_STEPS = 2
WARMUP_CALLS = 2


@dataclass(frozen=True)
class Plan:
    """The sizes of one run: the full check for a GPU, or ``--smoke``'s seconds on a CPU.

    Image sizes are WIDTHxHEIGHT before the detector's own resize (800 px for
    the FPN backbones, 320 for the 320 one), so the pool's small scenes cost
    the GPU what photos would.
    """

    backbone: str
    image_size: str
    batch_sizes: tuple[int, ...]
    inference_repeats: int
    train_image_size: str
    train_batch: int
    train_repeats: int
    sampled_rois: int
    pool: int
    pool_image_size: str
    pool_batch: int
    pool_repeats: int
    smoke: bool = False


FULL = Plan(
    backbone=AUTO_BACKBONE,
    image_size="640x480",
    batch_sizes=(1, 8),
    inference_repeats=10,
    train_image_size="640x480",
    train_batch=2,
    train_repeats=10,
    sampled_rois=256,
    pool=1000,
    pool_image_size="320x240",
    pool_batch=8,
    pool_repeats=2,
)
SMOKE = Plan(
    backbone="mobilenet_v3_320_fpn",
    image_size="64x48",
    batch_sizes=(1, 2),
    inference_repeats=1,
    train_image_size="64x48",
    train_batch=1,
    train_repeats=1,
    sampled_rois=32,
    pool=8,
    pool_image_size="64x48",
    pool_batch=4,
    pool_repeats=1,
    smoke=True,
)


# --- (a) inference ------------------------------------------------------------------


def torchvision_twin(model: FasterRCNN, config: DetectorConfig, num_classes: int) -> FasterRCNN:
    """torchvision's own detector for ``config.backbone`` with ``model``'s weights and thresholds.

    Only our extra layer (the box log-variance) is left out, and only the
    BatchNorm step counters are missing: anything else would not be the same model.
    """
    twin, _ = build_base_model(replace(config, weights="none"), num_classes)
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    if any(not k.endswith("num_batches_tracked") for k in missing) or any("bbox_log_var" not in k for k in unexpected):
        raise RuntimeError(f"not the same architecture: missing {missing}, unexpected {unexpected}")
    heads = twin.roi_heads
    heads.score_thresh, heads.nms_thresh, heads.detections_per_img = (
        config.analysis_threshold,
        config.nms_iou,
        config.max_detections,
    )
    return twin


@torch.inference_mode()
def bare_predict(model: FasterRCNN, images: list[Tensor], device: torch.device, amp: bool) -> list[dict[str, Tensor]]:
    """torchvision's forward as its documentation calls it: images to the device, outputs back to the CPU."""
    batch = [image.to(device, non_blocking=True) for image in images]
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        outputs = model(batch)
    return [{k: v.cpu() for k, v in out.items()} for out in outputs]


def same_detections(ours: Detector, bare: FasterRCNN, images: list[Tensor]) -> bool:
    """fp32 boxes and scores of both (``ours`` without autocast), image by image: equal up to float noise."""
    theirs = bare_predict(bare, images, ours.device, amp=False)
    return all(
        det.boxes.shape == out["boxes"].shape
        and torch.allclose(det.boxes, out["boxes"], atol=1e-2)
        and torch.allclose(det.scores, out["scores"], atol=1e-4)
        for det, out in zip(ours.predict(images), theirs)
    )


def _inference_rows(
    model: FasterRCNN, bare: FasterRCNN, images: list[Tensor], device: torch.device, plan: Plan
) -> list[dict]:
    """Images/s of both at each batch size and precision, interleaved within a precision."""
    rows = []
    for amp in (False, True) if device.type == "cuda" else (False,):
        ours = Detector(model, list(SHAPE_LABELS), device, amp=amp)
        steps = {}
        for n in plan.batch_sizes:
            steps[f"ours {n}"] = lambda n=n, ours=ours: ours.predict(images[:n])
            steps[f"bare {n}"] = lambda n=n, amp=amp: bare_predict(bare, images[:n], device, amp)
        interleaved(steps, WARMUP_CALLS)
        samples = interleaved(steps, plan.inference_repeats)
        for n in plan.batch_sizes:
            ours_ips, bare_ips = (n / median(samples[f"{who} {n}"]["wall"]) for who in ("ours", "bare"))
            rows.append(
                {
                    "mode": "autocast" if amp else "fp32",
                    "batch_size": n,
                    "ours_images_per_s": ours_ips,
                    "bare_images_per_s": bare_ips,
                    "ratio": ours_ips / bare_ips,
                }
            )
    return rows


def inference_check(plan: Plan, config: DetectorConfig, device: torch.device, folder: Path) -> dict:
    """(a): ours against torchvision's bare model on the same decoded JPEGs."""
    width, height = parse_size(plan.image_size)
    names, source = write_images(folder, max(plan.batch_sizes), height, width, seed=0)
    images = decoded_tensors(folder, names)
    torch.manual_seed(0)
    model, report = build_model(config, list(SHAPE_LABELS))
    bare = torchvision_twin(model, config, len(SHAPE_LABELS) + 1).to(device).eval()
    same = same_detections(Detector(model, list(SHAPE_LABELS), device, amp=False), bare, images)
    rows = _inference_rows(model, bare, images, device, plan)
    largest = [r for r in rows if r["batch_size"] == max(plan.batch_sizes)]
    print_table(
        f"(a) inference, {config.backbone} ({report.used} weights), {plan.image_size} JPEGs ({source}), "
        f"{plan.inference_repeats} interleaved rounds, medians; fp32 outputs the same: {same}",
        ["precision", "batch", "ours img/s", "bare img/s", "ours/bare"],
        [
            [
                r["mode"],
                r["batch_size"],
                f"{r['ours_images_per_s']:.1f}",
                f"{r['bare_images_per_s']:.1f}",
                f"{r['ratio']:.3f}",
            ]
            for r in rows
        ],
    )
    return {
        "rows": rows,
        "same_detections": same,
        "weights_used": report.used,
        "goal": INFERENCE_GOAL,
        "met": all(r["ratio"] >= INFERENCE_GOAL for r in largest),
    }


# --- (b) one training step ------------------------------------------------------------


def train_step_check(plan: Plan, backbone: str, weights: str, device: torch.device) -> dict:
    """(b): ``bench.bench_train_step`` on this device (it prints its own table)."""
    print("(b) one training step, synchronic against standard loss:")
    argv = [
        "--backbone",
        backbone,
        "--weights",
        weights,
        "--device",
        device.type,
        "--batch-size",
        str(plan.train_batch),
        "--image-size",
        plan.train_image_size,
        "--repeats",
        str(plan.train_repeats),
        "--sampled-rois",
        str(plan.sampled_rois),
    ]
    return bench_train_step.main(argv + (["--no-memory"] if plan.smoke else []))


# --- (c) torchrun -------------------------------------------------------------------------


def _parameter_sum(model: torch.nn.Module) -> float:
    return sum(float(p.detach().double().sum()) for p in model.parameters())


def ddp_worker(args: argparse.Namespace) -> None:
    """One torchrun process of (c): train ``DDP_STEPS`` steps, write what it saw as ``rank<r>.json``."""
    rank = join_process_group()
    device, world, plan = select_device("auto"), dist.get_world_size(), SMOKE if args.smoke else FULL
    torch.manual_seed(0)  # the same initial weights on every rank
    config = DetectorConfig(
        backbone=args.backbone, weights=args.weights, allow_download=False, sampled_rois=plan.sampled_rois
    )
    model, _ = build_model(config, list(SHAPE_LABELS))
    width, height = parse_size(plan.train_image_size)
    samples = scene_samples(args.ddp_worker / f"images-{rank}", DDP_STEPS * plan.train_batch * world, width, height, 0)
    before, steps = _parameter_sum(model), []
    start = time.perf_counter()
    train(
        model,
        samples,
        TrainConfig(iterations=DDP_STEPS, batch_size=plan.train_batch, seed=0, holdout_fraction=0.0),
        device,
        progress=lambda fraction, message: steps.append(message),
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    (args.ddp_worker / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world": world,
                "device": device_name(device),
                "seconds": seconds,
                "steps": len(steps) if rank == 0 else None,
                "before": before,
                "after": _parameter_sum(model),
            }
        )
    )
    dist.destroy_process_group()


def torchrun_check(plan: Plan, backbone: str, weights: str, device: torch.device, folder: Path) -> dict:
    """(c): torchrun with one process per visible GPU (one on a CPU, with the GPUs hidden)."""
    processes = torch.cuda.device_count() if device.type == "cuda" else 1
    worker = ["bench.gpu_check", "--ddp-worker", str(folder), "--backbone", backbone, "--weights", weights]
    env = {**os.environ, **({} if device.type == "cuda" else {"CUDA_VISIBLE_DEVICES": ""})}
    start = time.perf_counter()
    done = subprocess.run(
        torchrun_command(processes, *worker, *(["--smoke"] if plan.smoke else [])),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(processes)]
    result = {
        "processes": processes,
        "wall_s": wall,
        "train_s": max(r["seconds"] for r in ranks),
        "steps": ranks[0]["steps"],
        "trained": ranks[0]["after"] != ranks[0]["before"],
        "in_sync": all(abs(r["after"] - ranks[0]["after"]) <= 1e-6 * max(1.0, abs(r["after"])) for r in ranks),
        "ranks": ranks,
    }
    print_table(
        f"(c) torchrun, {processes} process(es), {DDP_STEPS} steps of batch {plan.train_batch} per process",
        ["rank", "device", "train s", "replica in sync"],
        [[r["rank"], r["device"], f"{r['seconds']:.2f}", result["in_sync"]] for r in ranks],
    )
    return result


# --- (d) HUA pool scoring -----------------------------------------------------------------


def hua_check(plan: Plan, backbone: str, weights: str, device: torch.device) -> dict:
    """(d): ``bench_hua``'s (a) plain pass and (b) HUA scoring of one pool, on this device."""
    width, height = parse_size(plan.pool_image_size)
    pool = Pool(
        n=plan.pool,
        width=width,
        height=height,
        backbone=backbone,
        weights=weights,
        analysis_threshold=ANALYSIS_THRESHOLD,
        batch_size=plan.pool_batch,
        device=device.type,
    )
    result = time_scoring(pool, plan.pool_repeats, cald=False)
    wall = result["wall"]
    print_table(
        f"(d) HUA scoring on {result['device']}, {result['N']} images of {plan.pool_image_size} (P={result['P']}),"
        f" batch {plan.pool_batch}, {plan.pool_repeats} interleaved rounds,"
        f" {result['detections_per_image']:.1f} detections/image",
        ["step", "forward passes", "wall s"],
        [
            ["plain pass", result["forward_passes"]["a"], f"{wall['median_s']['a']:.2f}"],
            ["HUA score_pool", result["forward_passes"]["b"], f"{wall['median_s']['b']:.2f}"],
        ],
    )
    return result


# --- the run --------------------------------------------------------------------------------


def print_summary(result: dict) -> None:
    """The four checks side by side, with their goals."""
    a, b, c, d = (result[k] for k in ("inference", "train_step", "torchrun", "hua"))
    top = max(r["batch_size"] for r in a["rows"])
    rows = [
        [
            f"(a) {r['mode']} batch {r['batch_size']}",
            f"ours/bare {r['ratio']:.3f}",
            f">= {INFERENCE_GOAL}" if r["batch_size"] == top else "",
            fmt_goal(r["ratio"] >= INFERENCE_GOAL) if r["batch_size"] == top else "",
        ]
        for r in a["rows"]
    ]
    memory = b["memory_ratio"]
    rows.append(
        [
            "(b) synchronic/standard step",
            f"wall {b['ratio']['wall']:.3f}" + ("" if memory is None else f", peak memory {memory:.3f}"),
            f"<= {b['goal']}",
            fmt_goal(b["met"]),
        ]
    )
    rows.append(
        [
            "(c) torchrun",
            f"{c['processes']} process(es), {c['steps']} steps, {c['wall_s']:.1f} s",
            "in sync",
            fmt_goal(c["in_sync"] and c["trained"]),
        ]
    )
    rows.append(
        [
            f"(d) HUA {d['N']:,} images",
            f"b/a {d['wall']['b_over_a']:.3f} (ideal {d['b_over_a_ideal']:.3f})",
            f"<= {d['b_over_a_goal']:.3f}",
            fmt_goal(d["b_over_a_met"]),
        ]
    )
    print_table(
        f"gpu_check on {result['device_name']}: whole run {result['elapsed_s']:.0f} s",
        ["check", "result", "goal", "met"],
        rows,
    )


def run_checks(plan: Plan, args: argparse.Namespace, device: torch.device, header: dict) -> dict:
    """(a) to (d), each in turn, with the section's seconds; ``--out`` is rewritten after each
    section, so a run stopped at a machine's time limit still leaves what it measured."""
    config = DetectorConfig(
        backbone=args.backbone,
        weights=args.weights,
        allow_download=False,
        analysis_threshold=ANALYSIS_THRESHOLD,
        sampled_rois=plan.sampled_rois,
    )
    result, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        checks = {
            "inference": lambda: inference_check(plan, config, device, Path(tmp)),
            "train_step": lambda: train_step_check(plan, args.backbone, args.weights, device),
            "torchrun": lambda: torchrun_check(plan, args.backbone, args.weights, device, Path(tmp)),
            "hua": lambda: hua_check(plan, args.backbone, args.weights, device),
        }
        for name, check in checks.items():
            start = time.perf_counter()
            result[name] = check()
            seconds[name] = time.perf_counter() - start
            print(flush=True)
            if args.out:
                write_json(args.out, {**header, **result, "seconds": seconds, "complete": False})
    return {**result, "seconds": seconds}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on a CPU): checks the code paths")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--backbone",
        choices=sorted(BACKBONES),
        help="default: BACKBONE=auto's choice for the device (--smoke: mobilenet_v3_320_fpn)",
    )
    parser.add_argument(
        "--weights",
        default="none",
        choices=("none", "imagenet"),
        help="initial weights, never downloaded (default none)",
    )
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run (a) to (d), print each table and the summary, write --out; returns the results."""
    args = parse_args(argv)
    use_repo_torch_home()
    if args.ddp_worker:
        ddp_worker(args)
        return {}
    plan, device = SMOKE if args.smoke else FULL, select_device(args.device)
    args.backbone = args.backbone or resolve_backbone(plan.backbone, device.type)
    name = device_name(device)
    print(
        f"gpu_check on {name} ({device}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{torch.cuda.device_count()} visible GPU(s)): {args.backbone}, {args.weights} weights"
        + (", smoke sizes" if plan.smoke else ""),
        flush=True,
    )
    started = time.perf_counter()
    header = {
        "device_name": name,
        "device": str(device),
        "torch": torch.__version__,
        "backbone": args.backbone,
        "weights": args.weights,
        "smoke": plan.smoke,
    }
    result = {**header, **run_checks(plan, args, device, header), "complete": True}
    result["elapsed_s"] = time.perf_counter() - started
    print_summary(result)
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""Cost of the synchronic loss: one training step against the standard loss, same batch, same weights.

One step is ``model.train.train_step``: forward (RPN + RoI head, the chosen
loss), backward and an SGD step (TrainConfig's lr, momentum, weight decay; on
CUDA with autocast and a GradScaler, as ``model.train.train`` does). The RoI
head's loss kind is given at construction (``build_model(..., loss=LossConfig(kind=...))``,
one model per kind, built from the same seed) and the same LossConfig is passed to ``train_step``.

Same start for both: before EVERY step (warm-up and timed) the model's and the
optimizer's state are restored from one snapshot and torch's RNG is re-seeded,
so each step of either kind starts from the same weights and samples the same
RPN anchors and RoI proposals; the run checks that the RPN losses of the first
timed steps of both kinds are equal. Steps are interleaved (standard,
synchronic, synchronic, standard, ...: the order alternates each round) after one
warm-up step of each kind; medians reported. Restoring is not timed.

Peak memory of one step:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
  minus ``memory_allocated`` just before the step (the step's own peak above the
  resident model and optimizer state), median over the timed steps.
- CPU: torch's CPU allocator has no statistics and tracemalloc does not see
  it, so the peak resident set size is measured, in a fresh subprocess per loss
  kind (``--memory-probe``): glibc is told to serve every allocation of 64 KiB or
  more with mmap (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave the
  resident set at once, the kernel's high-water mark is reset
  (``/proc/self/clear_refs`` 5) right before the step, and the value reported is
  VmHWM after the step minus VmRSS before it (median of 3 steps, after one
  warm-up step). The probe's whole-process peak (``ru_maxrss``: imports, model
  build and all) is reported too.

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_train_step --repeats 5

The issue's goal: synchronic / standard at most 1.15.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import (
    REPO_ROOT,
    SHAPE_LABELS,
    add_detector_arguments,
    fmt_goal,
    median,
    parse_size,
    print_table,
    synchronize,
    synthetic_scenes,
    use_repo_torch_home,
    write_json,
)
from model.detector import DetectorConfig, build_model, select_device
from model.losses import LossConfig
from model.train import TrainConfig, train_step

KINDS = (LossConfig.STANDARD, LossConfig.SYNCHRONIC)
GOAL_RATIO = 1.15
MEMORY_STEPS = 3
PROBE_MARK = "MEMORY_PROBE_RESULT "
_MMAP_THRESHOLD = str(64 * 1024)


class StepBench:
    """A model and an optimizer per loss kind and one batch, restored to one snapshot before every step."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = select_device(args.device)
        self.seed = args.seed
        torch.manual_seed(args.seed)
        config = DetectorConfig(
            backbone=args.backbone, weights=args.weights, allow_download=False, sampled_rois=args.sampled_rois
        )
        self.losses = {kind: LossConfig(kind=kind) for kind in KINDS}
        self.models = {}
        for kind in KINDS:
            torch.manual_seed(args.seed)
            model, report = build_model(config, list(SHAPE_LABELS), loss=self.losses[kind])
            self.models[kind] = model.to(self.device).train()
        self.weights_used = report.used + (f" (asked for {report.requested})" if report.fell_back else "")
        scenes = synthetic_scenes(args.batch_size, args.width, args.height, args.seed)
        self.images = [image for image, _, _ in scenes]
        self.targets = [{"boxes": boxes, "labels": labels} for _, boxes, labels in scenes]
        train = TrainConfig()
        self.optimizers = {
            kind: torch.optim.SGD(
                [p for p in model.parameters() if p.requires_grad],
                lr=train.lr,
                momentum=train.momentum,
                weight_decay=train.weight_decay,
            )
            for kind, model in self.models.items()
        }
        # CUDA: autocast + one GradScaler for all steps, as model.train.train does; its loss
        # scale only decides whether a step with inf gradients is skipped, so it is not restored
        self.scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None
        self.model_state = copy.deepcopy(self.models[KINDS[0]].state_dict())
        self.optimizer_state = copy.deepcopy(self.optimizers[KINDS[0]].state_dict())

    def restore(self, kind: str) -> None:
        """The kind's model and optimizer at the one snapshot, the same RNG state."""
        self.models[kind].load_state_dict(self.model_state)
        self.optimizers[kind].load_state_dict(self.optimizer_state)
        torch.manual_seed(self.seed + 1)

    def step(self, kind: str) -> dict[str, float]:
        """One ``train_step`` (not restoring first)."""
        return train_step(
            self.models[kind], self.images, self.targets, self.optimizers[kind], self.losses[kind], self.scaler
        )

    def timed_step(self, kind: str) -> tuple[float, float, dict[str, float], int | None]:
        """Wall and CPU seconds of one step from the snapshot, its losses and (CUDA) its peak bytes."""
        self.restore(kind)
        synchronize(self.device)
        before = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        cpu, start = time.process_time(), time.perf_counter()
        logged = self.step(kind)
        synchronize(self.device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = torch.cuda.max_memory_allocated(self.device) - before if before is not None else None
        return wall, cpu, logged, peak


# --- CPU memory probe (runs in a fresh subprocess per kind) --------------------------------


def _proc_status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def memory_probe(args: argparse.Namespace) -> dict:
    """Peak RSS above the pre-step RSS of one step of ``args.memory_probe``, in this process."""
    bench = StepBench(args)
    kind = args.memory_probe
    bench.restore(kind)
    bench.step(kind)  # warm-up: one-time allocations (kernels' scratch, optimizer buffers) happen here
    deltas = []
    for _ in range(MEMORY_STEPS):
        bench.restore(kind)
        gc.collect()
        _malloc_trim()
        _reset_peak_rss()
        rss = _proc_status_kib("VmRSS")
        bench.step(kind)
        deltas.append((_proc_status_kib("VmHWM") - rss) * 1024)
    return {
        "kind": kind,
        "step_peak_bytes": median(deltas),
        "step_peak_samples": deltas,
        "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def cpu_memory(args: argparse.Namespace) -> dict[str, dict]:
    """Run the probe for each kind in its own fresh interpreter; parse its one result line."""
    argv = [
        "--backbone",
        args.backbone,
        "--weights",
        args.weights,
        "--batch-size",
        str(args.batch_size),
        "--image-size",
        args.image_size,
        "--sampled-rois",
        str(args.sampled_rois),
        "--device",
        "cpu",
        "--seed",
        str(args.seed),
        "--torch-threads",
        str(args.torch_threads),
    ]
    results = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": _MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": _MMAP_THRESHOLD}
    for kind in KINDS:
        cmd = [sys.executable, "-m", "bench.bench_train_step", *argv, "--memory-probe", kind]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(PROBE_MARK)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory probe for {kind} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        results[kind] = json.loads(lines[-1][len(PROBE_MARK) :])
    return results


# --- main ----------------------------------------------------------------------------------


def measure(bench: StepBench, repeats: int) -> dict[str, dict[str, list]]:
    """Warm-up one step of each kind, then ``repeats`` rounds alternating which kind goes first."""
    for kind in KINDS:
        bench.timed_step(kind)
    samples: dict[str, dict[str, list]] = {k: {"wall": [], "cpu": [], "peak": [], "losses": []} for k in KINDS}
    for rnd in range(repeats):
        for kind in KINDS if rnd % 2 == 0 else KINDS[::-1]:
            wall, cpu, logged, peak = bench.timed_step(kind)
            for key, value in (("wall", wall), ("cpu", cpu), ("peak", peak), ("losses", logged)):
                samples[kind][key].append(value)
    return samples


def check_same_start(samples: dict[str, dict[str, list]]) -> bool:
    """The RPN terms do not depend on the RoI loss: equal values mean same weights, same sampling."""
    first = {kind: samples[kind]["losses"][0] for kind in KINDS}
    return all(
        abs(first[KINDS[0]][key] - first[KINDS[1]][key]) <= 1e-5 * max(1.0, abs(first[KINDS[0]][key]))
        for key in ("loss_objectness", "loss_rpn_box_reg")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_detector_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--image-size", default="320x240", help="WIDTHxHEIGHT of the scenes (default 320x240)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps of each kind (default 5)")
    parser.add_argument("--sampled-rois", type=int, default=256, help="RoIs sampled per image (default 256)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch intra-op threads on the CPU (default: torch's, %(default)s here)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--memory-probe", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.batch_size, args.repeats, args.sampled_rois, args.torch_threads) < 1:
        parser.error("--batch-size, --repeats, --sampled-rois and --torch-threads must be >= 1")
    try:
        args.width, args.height = parse_size(args.image_size)
    except ValueError as error:
        parser.error(str(error))
    return args


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:.1f}"


def main(argv: list[str] | None = None) -> dict:
    """Time both kinds, measure their memory, print the table, write --out; returns the results."""
    args = parse_args(argv)
    use_repo_torch_home()
    torch.set_num_threads(args.torch_threads)
    if args.memory_probe:
        result = memory_probe(args)
        print(PROBE_MARK + json.dumps(result), flush=True)
        return result

    bench = StepBench(args)
    samples = measure(bench, args.repeats)
    same_start = check_same_start(samples)
    if not same_start:
        raise RuntimeError("the first steps of the two kinds had different RPN losses: not the same start")
    cuda = bench.device.type == "cuda"
    memory: dict[str, dict] = {}
    if cuda:
        memory = {
            k: {"step_peak_bytes": median(samples[k]["peak"]), "step_peak_samples": samples[k]["peak"]} for k in KINDS
        }
    elif not args.no_memory:
        memory = cpu_memory(args)

    med = {k: {clock: median(samples[k][clock]) for clock in ("wall", "cpu")} for k in KINDS}
    std, syn = LossConfig.STANDARD, LossConfig.SYNCHRONIC
    ratio = {clock: med[syn][clock] / med[std][clock] for clock in ("wall", "cpu")}
    met = ratio["wall"] <= GOAL_RATIO
    header = (
        f"one training step (forward + backward + SGD), {args.backbone} ({bench.weights_used} weights), "
        f"batch {args.batch_size} of {args.width}x{args.height} scenes, {args.sampled_rois} sampled RoIs/image, "
        f"{bench.device.type.upper()}"
        + ("" if cuda else f", {torch.get_num_threads()} torch threads")
        + f", {args.repeats} interleaved steps of each kind after 1 warm-up, medians; same start checked"
    )
    mem_label = "step peak MiB (CUDA allocated)" if cuda else "step peak RSS MiB"
    columns = ["loss", "wall s", "cpu s", mem_label, "process max RSS MiB"]
    rows = [
        [
            kind,
            f"{med[kind]['wall']:.3f}",
            f"{med[kind]['cpu']:.3f}",
            _mib(memory.get(kind, {}).get("step_peak_bytes")),
            _mib(memory.get(kind, {}).get("process_max_rss_bytes")),
        ]
        for kind in KINDS
    ]
    mem_ratio = None
    if memory:
        mem_ratio = (
            memory[syn]["step_peak_bytes"] / memory[std]["step_peak_bytes"] if memory[std]["step_peak_bytes"] else None
        )
    rows.append(
        [
            "synchronic / standard",
            f"{ratio['wall']:.3f}",
            f"{ratio['cpu']:.3f}",
            "" if mem_ratio is None else f"{mem_ratio:.3f}",
            "",
        ]
    )
    print_table(header, columns, rows)
    print(
        f"goal synchronic/standard <= {GOAL_RATIO} (wall): {fmt_goal(met)}; per-round wall ratios "
        f"{[round(s / t, 3) for t, s in zip(samples[std]['wall'], samples[syn]['wall'])]}",
        flush=True,
    )
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "memory_probe")},
        "device": str(bench.device),
        "torch_threads": torch.get_num_threads(),
        "weights_used": bench.weights_used,
        "same_start": same_start,
        "samples": {k: {c: samples[k][c] for c in ("wall", "cpu", "losses")} for k in KINDS},
        "median_s": med,
        "ratio": ratio,
        "goal": GOAL_RATIO,
        "met": met,
        "memory": memory,
        "memory_ratio": mem_ratio,
        "memory_method": (
            "torch.cuda.max_memory_allocated - memory_allocated before the step"
            if cuda
            else "fresh subprocess per kind, MALLOC_MMAP_THRESHOLD_=64KiB, "
            "VmHWM after the step - VmRSS before it (clear_refs 5 before)"
        )
        if memory
        else None,
    }
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""A ranking in shards against one process: wall time with 1 and K workers, and the overhead of sharding.

In one run, on this machine, over the same pool of N synthetic scenes served as local files
(BACKBONE mobilenet_v3_320_fpn on the CPU, one torch thread per process):

1. one process: the whole pool ranked in the rank job's process (MAX_JOB_PROCESSES=1), the
   one-worker ranking;
2. K workers: the same ranking in shards of --shard-size tasks, K shard processes at a time
   (``python -m backend rank-shard``, what an ``rq worker`` runs per shard, each with one torch
   thread), the reduce steps in the rank job's process;

repeated --repeats times, alternated. Printed: each wall time, their ratio, the sum of the
shards' own wall times (process start, model load and result file included) against the
one-process time (the overhead of sharding), the per-image cost, and whether both gave the
same task scores (they must: docs/operations.md, "A ranking in shards"). On a machine busy with
other work the wall times measure the contention too: the CPU seconds of the shard processes
against those of one process are the overhead that does not depend on it.

Label Studio is an in-process stand-in here (the push is not timed against a real one).

Usage (from the repository root)::

    .venv/bin/python -m bench.bench_rank_shards --tasks 200 --shard-size 50

The issue's figure is --tasks 2000 (default; --shard-size 250: 8 first-pass shards).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from backend.jobs.entry import ranking_job
from backend.jobs.rank import RankingJob
from backend.jobs.runners import JobSlots, ProcessShards
from backend.ranking_store import RANKING_FILE
from backend.service import build_service
from backend.settings import Settings
from bench.common import label_config, parse_size, print_table, run_and_report, scene_samples

PROJECT = "1"


class StandInLabelStudio:
    """The Label Studio calls of a ranking, answered in memory: the project, its tasks, the push."""

    def __init__(self, tasks: list[dict]) -> None:
        self.task_list = tasks
        self.pushed = 0

    def project(self, project: str) -> dict:
        return {"id": int(project), "label_config": label_config()}

    def tasks(self, project: str, page_size: int = 500) -> list[dict]:
        return self.task_list

    def import_predictions(self, project: str, predictions: list[dict], chunk: int = 1000) -> int:
        self.pushed += len(predictions)
        return len(predictions)

    def delete_version_predictions(self, project: str, model_version: str) -> None:
        pass

    def set_model_version(self, project: str, model_version: str) -> None:
        pass

    def save_view(self, project: str, title: str, data: dict) -> dict:
        return {"id": 1}


def _settings(args: argparse.Namespace, folder: Path) -> Settings:
    return Settings(
        model_dir=str(folder / "models"),
        backbone="mobilenet_v3_320_fpn",
        weights=args.weights,
        allow_weights_download=False,
        device="cpu",
        local_files_document_root=str(folder / "images"),
        max_image_pixels=10_000_000,
        batch_size=args.batch_size,
        rank_shard_size=args.shard_size,
        rank_shard_retries=0,
        max_job_processes=args.workers,
    )


def _sharded_job(service, workers: int) -> tuple[RankingJob, ProcessShards]:
    s = service.settings
    slots = JobSlots(s.model_dir, workers, stale_after=s.job_timeout)
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shards = ProcessShards(slots, workers, retries=0, env=os.environ | s.to_env() | one_thread)
    return replace(ranking_job(service), shards=shards), shards


def _scores(service) -> dict[str, float]:
    version = service.store.latest(PROJECT)
    stored = json.loads((version.path / RANKING_FILE).read_text())
    return {task: entry["score"] for task, entry in stored["tasks"].items()}


def run(args: argparse.Namespace, folder: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args, folder)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, folder: Path) -> dict:
    width, height = parse_size(args.size)
    scene_samples(folder / "images", args.tasks, width, height, seed=args.seed)
    tasks = [
        {"id": i + 1, "data": {"image": f"/data/local-files/?d=scene_{i:04d}.png"}, "annotations": []}
        for i in range(args.tasks)
    ]
    service = build_service(_settings(args, folder), ls_client=StandInLabelStudio(tasks))
    one = replace(ranking_job(service), shards=None)
    walls: dict[str, list[float]] = {"one process": [], f"{args.workers} workers": []}
    cpu: dict[str, list[float]] = {"one process": [], f"{args.workers} workers": []}
    shard_sums, same = [], []
    for _ in range(args.repeats):
        start, cpu_start = time.monotonic(), _cpu_seconds()
        one.run(PROJECT, full=True)
        walls["one process"].append(time.monotonic() - start)
        cpu["one process"].append(_cpu_seconds() - cpu_start)
        reference = _scores(service)
        job, shards = _sharded_job(service, args.workers)
        start, cpu_start = time.monotonic(), _cpu_seconds()
        job.run(PROJECT, full=True)
        walls[f"{args.workers} workers"].append(time.monotonic() - start)
        cpu[f"{args.workers} workers"].append(_cpu_seconds() - cpu_start)
        shard_sums.append(sum(seconds for _, _, seconds in shards.timings))
        same.append(_scores(service) == reference)
        shard_count = len(shards.timings)
    one_s, k_s = (statistics.median(v) for v in walls.values())
    one_cpu, k_cpu = (statistics.median(v) for v in cpu.values())
    return {
        "tasks": args.tasks,
        "shard_size": args.shard_size,
        "shards": shard_count,
        "workers": args.workers,
        "weights": args.weights,
        "wall_s": {k: v for k, v in walls.items()},
        "one_process_s": one_s,
        "sharded_s": k_s,
        "speedup": one_s / k_s,
        "sum_of_shards_s": statistics.median(shard_sums),
        "overhead": statistics.median(shard_sums) / one_s,
        "per_image_s": one_s / args.tasks,
        "per_shard_fixed_s": (statistics.median(shard_sums) - one_s) / shard_count,
        "cpu_s": {k: v for k, v in cpu.items()},
        "cpu_overhead": k_cpu / one_cpu,
        "per_image_cpu_s": one_cpu / args.tasks,
        "per_shard_fixed_cpu_s": (k_cpu - one_cpu) / shard_count,
        "load_average": os.getloadavg(),
        "same_scores": all(same),
    }


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the shard processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(f: dict) -> None:
    print_table(
        f"HUA ranking of {f['tasks']} tasks: one process against {f['workers']} shard workers "
        f"({f['shards']} shards of {f['shard_size']}, one torch thread each, WEIGHTS={f['weights']})",
        ["figure", "value"],
        [
            ["one process, wall (s)", f"{f['one_process_s']:.1f}"],
            [f"{f['workers']} workers, wall (s)", f"{f['sharded_s']:.1f}"],
            ["speed-up (one process / workers)", f"{f['speedup']:.2f}"],
            ["sum of the shards' times (s)", f"{f['sum_of_shards_s']:.1f}"],
            ["overhead (sum of shards / one process)", f"{f['overhead']:.2f}"],
            ["per image, one process (s)", f"{f['per_image_s']:.3f}"],
            ["fixed cost per shard (s)", f"{f['per_shard_fixed_s']:.1f}"],
            ["CPU overhead (CPU s of the shards / of one process)", f"{f['cpu_overhead']:.2f}"],
            ["per image, CPU (s)", f"{f['per_image_cpu_s']:.3f}"],
            ["fixed CPU cost per shard (s)", f"{f['per_shard_fixed_cpu_s']:.1f}"],
            ["load average during the run (1, 5, 15 min)", " ".join(f"{v:.1f}" for v in f["load_average"])],
            ["same task scores", "yes" if f["same_scores"] else "NO"],
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the scenes")
    parser.add_argument("--weights", default="none", help="WEIGHTS: none (random), or coco when cached")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the figures as JSON here")
    return run_and_report("rank-shards", parser.parse_args(argv), run, report)


if __name__ == "__main__":
    main()

"""Command line of the active-learning benchmark.

Usage (from the repository root)::

    .venv/bin/python -m bench.active_learning --config quick --out bench/out/quick
    .venv/bin/python -m bench.active_learning --config quick --out bench/out/quick --publish
    .venv/bin/python -m bench.active_learning --config paper --dataset voc07 --data-root /data/voc --out bench/out/paper
    .venv/bin/python -m bench.active_learning --config quick --seeds 0 --cycles 2 --out bench/out/smoke

Writes into ``--out``: ``results.csv`` (one row per strategy, loss, seed and
cycle), ``report.md`` (tables and the comparison with random), ``ap50.png``,
``summary.json`` and ``meta.json`` (command, machine, settings, duration).
``--publish`` copies the report, plot and CSV to ``bench/results/`` (committed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.active_learning.configs import DATASETS, PRESETS
    from bench.active_learning.strategies import STRATEGIES

    parser = argparse.ArgumentParser(prog="python -m bench.active_learning", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="quick", help="preset (default: quick)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (bench/out/ is git-ignored)")
    parser.add_argument("--publish", action="store_true", help="also copy report, plot and CSV to bench/results/")
    parser.add_argument("--resume", action="store_true", help="keep the complete runs already in OUT/results.csv")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from OUT/results.csv")
    parser.add_argument("--dataset", choices=DATASETS, help="override the preset's data set")
    parser.add_argument("--data-root", type=Path, help="VOC: the folder holding VOCdevkit; COCO: the one holding "
                        "annotations/, train2017/, val2017/")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "bench" / "out" / "data",
                        help="where digit scenes are rendered (default bench/out/data)")
    parser.add_argument("--runs", nargs="+", metavar="STRATEGY:LOSS",
                        help=f"override the runs; strategies {sorted(STRATEGIES)}, losses standard|synchronic")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the seeds")
    parser.add_argument("--cycles", type=int, help="override the number of selection cycles")
    parser.add_argument("--initial", type=int, help="override the initial random labeled set")
    parser.add_argument("--budget", type=int, help="override the images selected per cycle")
    parser.add_argument("--epochs", type=int, help="override the training epochs")
    parser.add_argument("--workers", type=int, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, help="torch threads per worker")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the device")
    parser.add_argument("--allow-download", action="store_true",
                        help="let torchvision download missing backbone weights (never needed for quick)")
    return parser.parse_args(argv)


def _parse_runs(items: list[str]) -> tuple[tuple[str, str], ...]:
    runs = []
    for item in items:
        strategy, _, loss = item.partition(":")
        runs.append((strategy, loss or "synchronic"))
    return tuple(runs)


def build_config(args: argparse.Namespace):
    """The preset with the command line's overrides."""
    from bench.active_learning.configs import PRESETS

    config = PRESETS[args.config]()
    sim = config.simulation
    sim = replace(sim, **{k: v for k, v in (("cycles", args.cycles), ("initial", args.initial),
                                            ("budget", args.budget), ("device", args.device)) if v is not None})
    if args.epochs is not None:
        drops = tuple(d for d in sim.train.lr_drop_epochs if d < args.epochs)
        sim = replace(sim, train=replace(sim.train, epochs=args.epochs, lr_drop_epochs=drops))
    if args.allow_download:
        sim = replace(sim, detector=replace(sim.detector, allow_download=True))
    changes = {"simulation": sim}
    for name, value in (("dataset", args.dataset), ("seeds", tuple(args.seeds) if args.seeds else None),
                        ("runs", _parse_runs(args.runs) if args.runs else None),
                        ("workers", args.workers), ("threads", args.threads)):
        if value is not None:
            changes[name] = value
    return replace(config, **changes)


def load_dataset(config, args: argparse.Namespace):
    from bench.active_learning import dataset

    if config.dataset == "digits":
        return dataset.digit_scenes_dataset(config.digits, args.cache)
    if args.data_root is None:
        raise SystemExit(f"--data-root is required for --dataset {config.dataset}")
    if config.dataset == "coco":
        return dataset.coco_dataset(args.data_root)
    return dataset.voc_dataset(args.data_root, ("2007",) if config.dataset == "voc07" else ("2007", "2012"))


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "platform": platform.platform()}


def _preamble(config, meta: dict) -> list[str]:
    sim, host = config.simulation, meta["machine"]
    det, tr = sim.detector, sim.train
    minutes = meta.get("wall_s", 0.0) / 60
    return [
        f"Command: `{meta['command']}`  ",
        f"Machine: {host['cpu']}, {host['cores']} cores"
        + (f", GPU {host['gpu']}" if host.get("gpu") else "")
        + f"; {config.workers} worker(s) x {config.threads} thread(s); torch {host['torch']}.  ",
        f"Wall time: {minutes:.1f} min for the runs in this folder ({meta.get('finished', '')}).  ",
        f"Data: {meta['dataset']} (pool {meta['pool']}, test {meta['test']} images, {meta['classes']} classes).  ",
        f"Protocol: {sim.initial} random images, then {sim.cycles} cycles of +{sim.budget}; "
        + ("detector re-initialised every cycle" if sim.reinit else "detector fine-tuned from cycle to cycle")
        + f" ({det.backbone}, {det.weights} weights, images {det.min_size}-{det.max_size} px, "
        f"{det.sampled_rois} sampled RoIs); {tr.epochs} epochs, SGD lr {tr.lr}, batch {tr.batch_size}, "
        f"lr x0.1 at epochs {list(tr.lr_drop_epochs)}, flip {tr.flip_prob}; "
        f"HUA P = {sim.strategies.hua.retrieval_ratio:g} x B; CALD mr {sim.strategies.cald.mutual_range}.  ",
        "AP: torchmetrics MeanAveragePrecision (COCO-style) on the fixed test split, x100.",
    ]


def write_report(rows, config, meta: dict, out: Path, publish: bool) -> None:
    from bench.active_learning import report

    plot_path = report.plot(rows, out / "ap50.png", f"{config.name} ({meta['dataset']})")
    text = report.markdown(rows, f"Active-learning benchmark: {config.name}", _preamble(config, meta), plot_path.name)
    text += "\n" + report.timing_table(rows) + "\n"
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(report.summary_numbers(rows), indent=2))
    if publish:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stem = f"active_learning_{config.name}"
        published_plot = RESULTS_DIR / f"{stem}.png"
        shutil.copyfile(plot_path, published_plot)
        (RESULTS_DIR / f"{stem}.md").write_text(text.replace(f"]({plot_path.name})", f"]({published_plot.name})"))
        shutil.copyfile(out / "results.csv", RESULTS_DIR / f"{stem}.csv")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TORCH_HOME", str(REPO_ROOT / ".cache" / "torch"))
    args = parse_args(argv)
    from bench.active_learning.loop import read_rows, run_all

    config = build_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config, args)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if args.report_only and meta_path.exists() else {}
    meta.update(command="python -m bench.active_learning " + shlex.join(sys.argv[1:] if argv is None else argv),
                machine=meta.get("machine") or machine(), dataset=data.name, pool=len(data.pool),
                test=len(data.test), classes=len(data.labels))
    if args.report_only:
        rows = read_rows(args.out / "results.csv")
    else:
        started = time.perf_counter()
        rows = run_all(config.specs(), data, config.simulation, args.out / "results.csv",
                       workers=config.workers, threads=config.threads, resume=args.resume)
        meta.update(wall_s=time.perf_counter() - started, finished=time.strftime("%Y-%m-%d %H:%M"),
                    config=dataclasses.asdict(config))
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    write_report(rows, config, meta, args.out, args.publish)
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

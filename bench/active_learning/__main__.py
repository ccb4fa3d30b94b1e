"""Command line of the active-learning benchmark.

Usage (from the repository root)::

    .venv/bin/python -m bench.active_learning --out bench/out/warm --max-minutes 85
    .venv/bin/python -m bench.active_learning --out bench/out/warm --max-minutes 85 --resume --publish
    .venv/bin/python -m bench.active_learning --out bench/out/warm --calibrate 200 400 800 --publish
    .venv/bin/python -m bench.active_learning --config paper --dataset voc07 --data-root /data/voc --out bench/out/paper
    .venv/bin/python -m bench.active_learning --config tiny --out bench/out/tiny
    .venv/bin/python -m bench.active_learning --config varied --seeds 0 1 --out bench/out/varied --scene-stats

The default preset is ``uniform`` (docs/method.md, section 6; ``warm`` is its former name, still
accepted, and its published files keep that name), ``varied`` the pool of section 7. Writes into ``--out``:
``results.csv`` (one row per strategy, loss, seed and cycle, with the images
each cycle picked, so that ``--resume`` continues any run at its next cycle),
``report.md`` (tables, the paired comparisons, the loss decision), ``ap50.png``,
``summary.json`` and ``meta.json`` (machine, settings, every invocation's
command and duration). ``--publish`` copies the report, plot, CSV and meta to
``bench/results/`` (committed); on a fresh clone, copying the CSV and meta back
into ``--out`` lets ``--resume`` continue there. The warm start and the scenes
are cached under ``--cache`` (rebuilt when missing, with the same seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.active_learning.configs import ALIASES, DATASETS, PRESETS
    from bench.active_learning.strategies import STRATEGIES
    from model.losses import LOSS_NAMES

    parser = argparse.ArgumentParser(prog="python -m bench.active_learning", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        "--preset",
        dest="config",
        choices=sorted(PRESETS) + sorted(ALIASES),
        default="uniform",
        help=f"preset (default: uniform; former names {ALIASES})",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (bench/out/ is git-ignored)")
    parser.add_argument("--publish", action="store_true", help="also copy report, plot and CSV to bench/results/")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in OUT/results.csv and continue every run at its next cycle",
    )
    parser.add_argument(
        "--max-minutes", type=float, help="start no cycle that would end after this many minutes (--resume continues)"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from OUT/results.csv")
    parser.add_argument(
        "--scene-stats",
        action="store_true",
        help="render (or read) each seed's digit scenes and write OUT/scenes.md: objects per "
        "image, class shares, near-duplicate groups, hard share (no training)",
    )
    parser.add_argument(
        "--calibrate",
        nargs="+",
        type=int,
        metavar="ITERATIONS",
        help="train cycle 0 of the first seed for each number of iterations and write "
        "OUT/calibration.md (no comparison is run)",
    )
    parser.add_argument("--dataset", choices=DATASETS, help="override the preset's data set")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="VOC: the folder holding VOCdevkit; COCO: the one holding annotations/, train2017/, val2017/",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=REPO_ROOT / "bench" / "out" / "cache",
        help="where digit scenes and the warm start are cached (default bench/out/cache)",
    )
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="STRATEGY:LOSS",
        help=f"override the runs; strategies {sorted(STRATEGIES)}, losses {'|'.join(LOSS_NAMES)}",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="override the seeds")
    parser.add_argument("--cycles", type=int, help="override the number of selection cycles")
    parser.add_argument("--initial", type=int, help="override the initial random labeled set")
    parser.add_argument("--budget", type=int, help="override the images selected per cycle")
    parser.add_argument("--iterations", type=int, help="override the training iterations per cycle")
    parser.add_argument("--epochs", type=int, help="override the training epochs (presets without iterations)")
    parser.add_argument("--workers", type=int, help="processes running cycles in parallel")
    parser.add_argument("--threads", type=int, help="torch threads per worker")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the device")
    parser.add_argument(
        "--allow-download", action="store_true", help="let torchvision download missing backbone weights"
    )
    return parser.parse_args(argv)


def _parse_runs(items: list[str]) -> tuple[tuple[str, str], ...]:
    runs = []
    for item in items:
        strategy, _, loss = item.partition(":")
        runs.append((strategy, loss or "synchronic"))
    return tuple(runs)


def build_config(args: argparse.Namespace):
    """The preset with the command line's overrides."""
    from bench.active_learning.configs import ALIASES, PRESETS

    config = PRESETS[ALIASES.get(args.config, args.config)]()
    sim = config.simulation
    sim = replace(
        sim,
        **{
            k: v
            for k, v in (
                ("cycles", args.cycles),
                ("initial", args.initial),
                ("budget", args.budget),
                ("device", args.device),
            )
            if v is not None
        },
    )
    train = {k: v for k, v in (("iterations", args.iterations), ("epochs", args.epochs)) if v is not None}
    sim = replace(sim, train=replace(sim.train, **train), model_cache=str(args.cache / "models"))
    if args.allow_download:
        sim = replace(sim, detector=replace(sim.detector, allow_download=True))
    changes = {"simulation": sim}
    for name, value in (
        ("dataset", args.dataset),
        ("seeds", tuple(args.seeds) if args.seeds else None),
        ("runs", _parse_runs(args.runs) if args.runs else None),
        ("workers", args.workers),
        ("threads", args.threads),
    ):
        if value is not None:
            changes[name] = value
    return replace(config, **changes)


def load_datasets(config, args: argparse.Namespace) -> dict:
    """Each seed's pool and test split: its own digit scenes, or the same VOC/COCO splits for all."""
    from bench.active_learning import dataset

    if config.dataset == "digits":
        return {s: dataset.digit_scenes_dataset(replace(config.digits, seed=s), args.cache) for s in config.seeds}
    if args.data_root is None:
        raise SystemExit(f"--data-root is required for --dataset {config.dataset}")
    if config.dataset == "coco":
        data = dataset.coco_dataset(args.data_root)
    else:
        data = dataset.voc_dataset(args.data_root, ("2007",) if config.dataset == "voc07" else ("2007", "2012"))
    return {s: data for s in config.seeds}


def warm_started(config, args: argparse.Namespace, data: dict) -> tuple[object, dict]:
    """``config`` with its detector built from the cached warm start (pretrained now if missing),
    and what the meta records about it; unchanged without a warm start."""
    if config.pretrain is None:
        return config, {}
    import torch

    from bench.active_learning.pretrain import warm_start
    from model.detector import select_device

    sim = config.simulation
    torch.set_num_threads(max(1, config.workers * config.threads))
    version = warm_start(
        config.pretrain,
        config.digits,
        sim.detector,
        args.cache,
        select_device(sim.device),
        check=data[config.seeds[0]].test,
        check_on=f"seed {config.seeds[0]}'s test split",
    )
    detector = replace(sim.detector, weights=str(version.path))
    info = {"path": str(version.path), "from": sim.detector.weights, **(version.meta.pretraining or {})}
    return replace(config, simulation=replace(sim, detector=detector)), info


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
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
    }


def _invocations(meta: dict) -> list[str]:
    """The commands that wrote the rows, and their wall time; an invocation that was killed
    has no wall time, but its rows are in the CSV, so it is listed as unfinished."""
    runs = meta.get("invocations", [])
    ended = [r for r in runs if r.get("wall_s") is not None]
    minutes = sum(r["wall_s"] for r in ended) / 60
    unfinished = len(runs) - len(ended)
    return [
        "Commands: " + "; ".join(f"`{r['command']}` ({_lasted(r)})" for r in runs) + "  ",
        f"Wall time: {minutes:.1f} min over {len(runs)} invocation(s)"
        + (f", not counting {unfinished} that did not finish" if unfinished else "")
        + ".  ",
    ]


def _lasted(invocation: dict) -> str:
    if invocation.get("wall_s") is None:
        return f"started {invocation.get('started', '?')}, did not finish"
    return f"{invocation['wall_s'] / 60:.0f} min"


def _settings(config, meta: dict) -> list[str]:
    """Machine, data, protocol and metric, as the report and the calibration state them."""
    sim, host, warm = config.simulation, meta["machine"], meta.get("warm_start")
    det, tr = sim.detector, sim.train
    length = f"{tr.iterations} iterations" if tr.iterations else f"{tr.epochs} epochs"
    start = (
        f"warm start pretrained on {warm.get('images')} scenes of held-back digits as one class "
        f"({warm.get('iterations')} iterations from {warm.get('from')} weights, class-agnostic AP50 "
        f"{100 * warm.get('check_ap50_agnostic', float('nan')):.1f} on "
        f"{warm.get('check_on') or 'the test split of the first seed of the invocation that built it'})"
        if warm
        else f"{det.weights} weights"
    )
    return [
        f"Machine: {host['cpu']}, {host['cores']} cores"
        + (f", GPU {host['gpu']}" if host.get("gpu") else "")
        + f"; {config.workers} worker(s) x {config.threads} thread(s); torch {host['torch']}.  ",
        f"Data: {meta['dataset']} (per seed: pool {meta['pool']}, test {meta['test']} images, "
        f"{meta['classes']} classes).  ",
        f"Protocol: {sim.initial} random images, then {sim.cycles} cycles of +{sim.budget}; every cycle's detector "
        f"re-initialised from the {start}; {det.backbone}, images {det.min_size}-{det.max_size} px, "
        f"{det.sampled_rois} sampled RoIs; {length} per cycle, SGD lr {tr.lr}, batch {tr.batch_size}, warm-up "
        f"{tr.warmup_fraction:g} of the steps, lr x0.1 at fractions {list(tr.lr_drops)}, flip {tr.flip_prob}; "
        f"HUA P = {sim.strategies.hua.retrieval_ratio:g} x B; CALD mr {sim.strategies.cald.mutual_range}.  ",
        "AP: torchmetrics MeanAveragePrecision (COCO-style) on the seed's test split, x100.",
    ]


def scene_section(config, cache: Path, seeds: Sequence[int] = ()) -> str:
    """The statistics of the digit scenes of ``seeds`` (the config's when empty; ``dataset.statistics_markdown``);
    empty for VOC and COCO."""
    from bench.active_learning import dataset

    if config.dataset != "digits":
        return ""
    return dataset.statistics_markdown(
        {s: dataset.prepare_digit_scenes(replace(config.digits, seed=s), cache) for s in seeds or config.seeds}
    )


def write_report(rows, config, meta: dict, out: Path, publish: bool, scenes: str = "") -> None:
    from bench.active_learning import report
    from bench.active_learning.configs import PRESETS, PUBLISHED_AS

    plot_path = report.plot(rows, out / "ap50.png", f"{config.name} ({meta['dataset']})")
    preamble = _invocations(meta) + _settings(config, meta) + (["", scenes] if scenes else [])
    text = report.markdown(
        rows,
        f"Active-learning benchmark: {config.name}",
        preamble,
        plot_path.name,
        cycles=config.simulation.cycles + 1,
        # complete means the preset's seeds, not those of this invocation (--seeds 0 runs one piece)
        seeds=len(set(config.seeds) | set(PRESETS[config.name]().seeds)),
    )
    text += "\n" + report.timing_table(rows) + "\n"
    (out / "report.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(report.summary_numbers(rows), indent=2))
    if publish:
        stem = f"active_learning_{PUBLISHED_AS.get(config.name, config.name)}"
        published_plot = RESULTS_DIR / f"{stem}.png"
        _publish(plot_path, published_plot.name)
        _publish(out / "results.csv", f"{stem}.csv")
        _publish(out / "meta.json", f"{stem}.meta.json")
        (RESULTS_DIR / f"{stem}.md").write_text(text.replace(f"]({plot_path.name})", f"]({published_plot.name})"))


def _publish(path: Path, name: str) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, RESULTS_DIR / name)


def calibrate_command(config, data: dict, meta: dict, args: argparse.Namespace) -> Path:
    """Cycle 0 of the first seed for each of ``--calibrate``; writes OUT/calibration.md (and publishes it)."""
    import torch

    from bench.active_learning import calibration
    from bench.active_learning.loop import RunSpec

    torch.set_num_threads(max(1, config.workers * config.threads))
    seed = config.seeds[0]
    spec = RunSpec(config.runs[0][0], config.runs[0][1], seed)
    trials = calibration.calibrate(args.calibrate, spec, data[seed], config.simulation)
    chosen = calibration.choose(trials)
    first = {s: calibration.class_boxes(data[s], config.simulation.initial, s) for s in config.seeds}
    preamble = [
        f"Command: `{meta['command']}`  ",
        *_settings(config, meta),
        f"Run calibrated: {spec.strategy} + {spec.loss}, seed {seed}, cycle 0 ({config.simulation.initial} "
        "images); the protocol line shows the preset's iterations, the table those tried.",
        "",
        scene_section(config, args.cache),
    ]
    path = args.out / "calibration.md"
    path.write_text(calibration.markdown(trials, chosen, preamble, first))
    if args.publish:  # uniform's (formerly warm's) calibration keeps its published name
        _publish(
            path,
            "active_learning_calibration.md"
            if config.name == "uniform"
            else f"active_learning_{config.name}_calibration.md",
        )
    return path


def _meta(args: argparse.Namespace, config, data: dict, argv: list[str] | None) -> dict:
    """meta.json: kept across ``--resume`` and ``--report-only``, with this invocation's facts."""
    path = args.out / "meta.json"
    meta = json.loads(path.read_text()) if (args.resume or args.report_only) and path.exists() else {}
    first = data[config.seeds[0]]
    meta.update(
        machine=meta.get("machine") or machine(),
        dataset=first.name,
        pool=len(first.pool),
        test=len(first.test),
        classes=len(first.labels),
    )
    command = "python -m bench.active_learning " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.report_only:  # writes no row: the command that wrote them stays the one on record
        meta.setdefault("command", command)
    else:
        meta["command"] = command
    meta.setdefault("invocations", [])
    return meta


def _write_meta(out: Path, meta: dict) -> None:
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def _exclusive(out: Path) -> IO[str]:
    """A lock on ``out``, held while the returned file is open: two invocations appending to one
    CSV would interleave their rows and each rewrite the file under the other.

    Raises:
        SystemExit: another invocation holds it.
    """
    handle = (out / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"another invocation is writing {out}: wait for it to end, or use another --out") from None
    return handle


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.common import use_repo_torch_home

    use_repo_torch_home()  # before the loop's imports build anything
    from bench.active_learning.storage import read_rows
    from bench.active_learning.workers import run_all

    config = build_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    lock = None if args.report_only or args.scene_stats else _exclusive(args.out)
    started = time.perf_counter()
    data = load_datasets(config, args)
    if args.scene_stats:
        text = scene_section(config, args.cache)
        (args.out / "scenes.md").write_text(text + "\n")
        seconds = time.perf_counter() - started
        print(f"{text}\n\nScenes of {len(config.seeds)} seed(s) rendered or read in {seconds:.1f} s.")
        return 0
    meta = _meta(args, config, data, argv)
    if args.report_only:
        rows = read_rows(args.out / "results.csv")
    else:
        config, meta["warm_start"] = warm_started(config, args, data)
        if args.calibrate:
            print(calibrate_command(config, data, meta, args).read_text())
            return 0
        started = time.perf_counter()
        # on record before the run: a piece killed midway (its rows stay) is still listed
        invocation = {
            "command": meta["command"],
            "started": time.strftime("%Y-%m-%d %H:%M"),
            "wall_s": None,
            # a fresh clone rebuilds the warm start, not bit for bit: which build this piece used
            "warm_start_check_ap50": meta["warm_start"].get("check_ap50_agnostic"),
        }
        meta["invocations"].append(invocation)
        _write_meta(args.out, meta)
        rows = run_all(
            config.specs(),
            data,
            config.simulation,
            args.out / "results.csv",
            workers=config.workers,
            threads=config.threads,
            resume=args.resume,
            max_minutes=args.max_minutes,
        )
        invocation.update(wall_s=time.perf_counter() - started, finished=time.strftime("%Y-%m-%d %H:%M"))
        meta["config"] = dataclasses.asdict(config)
    _write_meta(args.out, meta)
    # the scenes of the seeds the rows hold, whichever piece (--seeds) writes the report
    scenes = scene_section(config, args.cache, sorted({r.seed for r in rows}))
    write_report(rows, config, meta, args.out, args.publish, scenes)
    print((args.out / "report.md").read_text())
    if lock is not None:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

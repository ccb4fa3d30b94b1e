"""The error-capture diagnostic (docs/method.md section 7): which selector finds what the model gets wrong.

Cheap: no retraining per selector. For each seed it takes the benchmark's
cycle-0 detector (the cached warm start and the cached cycle-0 training of
``bench.active_learning.loop.trained_detector``, trained now when missing),
lets every selector pick its top B of the unlabeled pool, and measures, with
the ground truth as an oracle, what the model gets wrong in the picked images:

    soft-miss_j = 1 - max {s_i : IoU(b_i, g_j) >= 0.5, label_i = c_j}   (1 when none)
    fp(x)       = detections with s_i >= 0.5 matching no ground truth of their class at IoU 0.5
    error(x)    = sum_j soft-miss_j + fp(x)

Usage (from the repository root)::

    .venv/bin/python -m bench.active_learning.error_capture --preset varied --seeds 100 101 102 \\
        --out bench/results/error_capture_varied.json

Writes ``FILE`` (``summary``: per selector the means over seeds; ``random_range``:
random's 2.5-97.5 % range over 1,000 draws, averaged over seeds; ``seeds``: the
same per seed) and ``FILE`` with ``.md`` for the table. Seeds run as separate
processes (one core each) are joined into one report without any pass again::

    .venv/bin/python -m bench.active_learning.error_capture --merge A.json B.json C.json --out FILE.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import box_iou

from bench.active_learning.dataset import BenchDataset
from bench.active_learning.loop import RunSpec, SimulationConfig, Step, initial_set, trained_detector
from bench.active_learning.strategies import PoolView, select
from model.detections import Detections
from model.detector import Detector
from model.samples import Sample
from model.scoring import predict_pool

#: Selector names of the report -> the benchmark strategy that implements each.
SELECTORS: dict[str, str] = {
    "random": "random",
    "density": "density",
    "cald": "cald",
    "hua-sum": "hua",
    "hua-mean": "hua_mean",
    "gate": "entropy",
}
QUANTITIES: tuple[str, ...] = ("boxes_per_image", "error_per_image", "miss_per_image", "fp_per_image", "error_per_box")
#: Detections from this score are shown, so they count as false positives when wrong.
CONFIDENT: float = 0.5
MATCH_IOU: float = 0.5
RANDOM_DRAWS: int = 1000


@dataclass(frozen=True)
class ImageError:
    """What the model gets wrong in one image, against its ground truth."""

    boxes: int
    miss: float
    fp: int

    @property
    def error(self) -> float:
        return self.miss + self.fp


def image_error(detections: Detections, truth: Sample) -> ImageError:
    """Soft-misses and false positives of one image (module docstring)."""
    gt_boxes, gt_labels = truth.boxes.reshape(-1, 4).float(), truth.labels.reshape(-1)
    if len(detections) == 0 or gt_boxes.shape[0] == 0:
        confident = int((detections.scores >= CONFIDENT).sum())
        return ImageError(int(gt_boxes.shape[0]), float(gt_boxes.shape[0]), confident)
    same_class = detections.labels[:, None] == gt_labels[None, :]
    hit = (box_iou(detections.boxes.float(), gt_boxes) >= MATCH_IOU) & same_class  # [D, G]
    best = torch.where(hit, detections.scores[:, None], torch.zeros_like(hit, dtype=detections.scores.dtype))
    miss = float((1.0 - best.amax(dim=0)).sum())
    fp = int(((detections.scores >= CONFIDENT) & ~hit.any(dim=1)).sum())
    return ImageError(int(gt_boxes.shape[0]), miss, fp)


def capture(errors: Sequence[ImageError]) -> dict[str, float]:
    """The quantities of one selection: per-image means and the error per ground-truth box."""
    count = max(1, len(errors))
    boxes = sum(e.boxes for e in errors)
    return {
        "boxes_per_image": boxes / count,
        "error_per_image": sum(e.error for e in errors) / count,
        "miss_per_image": sum(e.miss for e in errors) / count,
        "fp_per_image": sum(e.fp for e in errors) / count,
        "error_per_box": sum(e.error for e in errors) / max(1, boxes),
    }


def random_draws(
    errors: dict[int, ImageError], budget: int, seed: int, draws: int = RANDOM_DRAWS
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Random selection's mean and 2.5-97.5 % range of every quantity over ``draws`` draws of B images."""
    rng = random.Random(seed)
    keys = sorted(errors)
    samples = [capture([errors[k] for k in rng.sample(keys, min(budget, len(keys)))]) for _ in range(draws)]
    mean, span = {}, {}
    for name in QUANTITIES:
        values = sorted(s[name] for s in samples)
        mean[name] = statistics.fmean(values)
        span[name] = [values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]]
    return mean, span


class SharedPasses:
    """The detector with its answers remembered per image (by content), flip and features.

    Every selector but random starts from the same first pass over the pool, and
    the HUA variants share their mirrored passes, so the diagnostic runs each of
    them once. The detector is deterministic on one input, so this changes no
    selection, only the time.
    """

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.labels = detector.labels
        self._seen: dict[tuple[bytes, bool, bool], Detections] = {}

    def predict(self, images: Sequence[torch.Tensor], flip: bool = False, features: bool = False) -> list[Detections]:
        keys = [(hashlib.sha1(image.numpy().tobytes()).digest(), flip, features) for image in images]
        missing = [i for i, key in enumerate(keys) if key not in self._seen]
        if missing:
            fresh = self.detector.predict([images[i] for i in missing], flip=flip, features=features)
            self._seen.update((keys[i], det) for i, det in zip(missing, fresh))
        return [self._seen[key] for key in keys]


def seed_capture(
    detector: Detector,
    data: BenchDataset,
    config: SimulationConfig,
    labeled: Sequence[int],
    seed: int,
    selectors: Sequence[str],
) -> dict[str, object]:
    """Every selector's capture on one seed's unlabeled pool, with random's range and each selector's seconds."""
    taken = set(labeled)
    unlabeled = [i for i in range(len(data.pool)) if i not in taken]
    view = PoolView(
        detector=SharedPasses(detector),
        pool=data.pool,
        labeled=list(labeled),
        unlabeled=unlabeled,
        budget=config.budget,
        num_classes=len(data.labels),
        seed=seed * 1000,
        batch_size=config.batch_size,
    )
    keys, detections, _ = predict_pool(view.detector, unlabeled, view.load, batch_size=config.batch_size)
    errors = {k: image_error(d, data.pool[k]) for k, d in zip(keys, detections)}
    mean, span = random_draws(errors, config.budget, seed)
    result: dict[str, object] = {"random_range": span, "selectors": {}, "seconds": {}}
    for name in selectors:
        if name == "random":
            result["selectors"]["random"] = mean
            continue
        started = time.perf_counter()
        picked = select(SELECTORS[name], view, config.strategies)
        result["seconds"][name] = time.perf_counter() - started
        result["selectors"][name] = capture([errors[k] for k in picked if k in errors])
    return result


def summarise(per_seed: dict[int, dict]) -> dict[str, object]:
    """Means over seeds of every selector's quantities and of random's range ends."""
    runs = list(per_seed.values())
    names = list(runs[0]["selectors"])
    summary = {n: {q: statistics.fmean(r["selectors"][n][q] for r in runs) for q in QUANTITIES} for n in names}
    span = {q: [statistics.fmean(r["random_range"][q][i] for r in runs) for i in (0, 1)] for q in QUANTITIES}
    return {"summary": summary, "random_range": span}


def verdict(summary: dict[str, dict[str, float]]) -> str:
    """docs/method.md section 7: HUA earns its ranking stage only where it captures more misses per image
    than both density and the gate alone."""
    lines = []
    for hua in ("hua-sum", "hua-mean"):
        if hua not in summary or not {"density", "gate"} <= set(summary):
            continue
        misses = summary[hua]["miss_per_image"]
        beats = misses > summary["density"]["miss_per_image"] and misses > summary["gate"]["miss_per_image"]
        lines.append(
            f"{hua}: {misses:.2f} misses per image against density "
            f"{summary['density']['miss_per_image']:.2f} and the gate {summary['gate']['miss_per_image']:.2f}"
            f": the ranking stage {'earns' if beats else 'does not earn'} its place."
        )
    return "\n".join(lines)


def markdown(report: dict[str, object]) -> str:
    """The summary table, random's range and the verdict."""
    span = report["random_range"]
    lines = [
        f"# Error capture, preset `{report['preset']}`, seeds {report['seed_list']}",
        "",
        f"Top {report['budget']} of the unlabeled pool per selector, scored by the cycle-0 detector "
        f"(mean AP50 {report['cycle0_ap50']:.3f}); means over seeds. Random: mean of {RANDOM_DRAWS} draws, "
        "2.5-97.5 % range below.",
        "",
        "| selector | boxes / image | error / image | misses / image | false pos. / image | error / box |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["summary"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[q]:.2f}" for q in QUANTITIES) + " |")
    lines.append("| random 95 % range | " + " | ".join(f"{span[q][0]:.2f}-{span[q][1]:.2f}" for q in QUANTITIES) + " |")
    return "\n".join(lines + ["", verdict(report["summary"]), ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from bench.active_learning.__main__ import REPO_ROOT
    from bench.active_learning.configs import ALIASES, PRESETS

    parser = argparse.ArgumentParser(
        prog="python -m bench.active_learning.error_capture", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--preset", "--config", dest="config", choices=sorted(PRESETS) + sorted(ALIASES), default="varied"
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--seeds", nargs="+", type=int, help="development seeds (100+)")
    inputs.add_argument(
        "--merge", nargs="+", type=Path, metavar="JSON", help="join reports of other seeds, run nothing"
    )
    parser.add_argument("--strategies", nargs="+", choices=list(SELECTORS), default=list(SELECTORS))
    parser.add_argument("--out", type=Path, required=True, help="the JSON file (a .md is written beside it)")
    parser.add_argument("--cache", type=Path, default=REPO_ROOT / "bench" / "out" / "cache")
    parser.add_argument("--iterations", type=int, help="override the preset's training iterations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = merged(args.merge) if args.merge else run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


def run(args: argparse.Namespace) -> dict[str, object]:
    """Train (or take from the cache) each seed's cycle-0 detector and measure every selector on it."""
    from bench.active_learning.__main__ import build_config, load_datasets, warm_started
    from bench.common import use_repo_torch_home

    use_repo_torch_home()  # the warm start is built from the repository's ImageNet file, as the benchmark's
    torch.set_num_threads(args.threads)
    cli = argparse.Namespace(
        **{
            **vars(args),
            "cycles": None,
            "initial": None,
            "budget": None,
            "device": None,
            "epochs": None,
            "allow_download": False,
            "dataset": None,
            "runs": None,
            "workers": None,
        }
    )
    config = build_config(cli)
    data = load_datasets(config, cli)
    config, _ = warm_started(config, cli, data)
    torch.set_num_threads(args.threads)  # warm_started sizes threads for the benchmark's workers
    sim, loss = config.simulation, config.runs[0][1]
    per_seed = {}
    for seed in args.seeds:
        labeled = tuple(initial_set(len(data[seed].pool), sim.initial, seed))
        step = Step((RunSpec("random", loss, seed),), 0, labeled)
        detector, metrics, _, _ = trained_detector(step, data[seed], sim)
        per_seed[seed] = {
            "cycle0_ap50": metrics["map_50"],
            **seed_capture(detector, data[seed], sim, labeled, seed, args.strategies),
        }
        print(
            f"seed {seed}: AP50 {metrics['map_50']:.3f}, "
            + ", ".join(
                f"{n} {r['miss_per_image']:.2f}+{r['fp_per_image']:.2f}" for n, r in per_seed[seed]["selectors"].items()
            ),
            flush=True,
        )
    return report_of(config.name, sim.budget, loss, per_seed)


def merged(paths: Sequence[Path]) -> dict[str, object]:
    """One report from the per-seed parts of several: the same preset, budget and loss, no seed twice."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    settings = {(p["preset"], p["budget"], p["loss"]) for p in parts}
    if len(settings) != 1:
        raise SystemExit(f"error_capture --merge: the reports differ in preset, budget or loss: {sorted(settings)}")
    per_seed = {int(seed): result for part in parts for seed, result in part["seeds"].items()}
    if len(per_seed) != sum(len(p["seeds"]) for p in parts):
        raise SystemExit("error_capture --merge: a seed is in more than one report")
    preset, budget, loss = settings.pop()
    return report_of(preset, budget, loss, dict(sorted(per_seed.items())))


def report_of(preset: str, budget: int, loss: str, per_seed: dict[int, dict]) -> dict[str, object]:
    return {
        "preset": preset,
        "seed_list": list(per_seed),
        "budget": budget,
        "loss": loss,
        "cycle0_ap50": statistics.fmean(r["cycle0_ap50"] for r in per_seed.values()),
        **summarise(per_seed),
        "seeds": {str(s): r for s, r in per_seed.items()},
    }


if __name__ == "__main__":
    raise SystemExit(main())

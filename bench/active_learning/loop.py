"""The pool-based simulation: labeling cycles with the service's own model code.

One *run* is one (strategy, loss, seed). It starts from ``initial`` pool images
drawn at random with the seed (the same first set for every strategy and loss
with that seed), then, for cycle 0..cycles: re-initialise the detector from its
base weights (the paper's protocol; or, with ``reinit=False``, keep the previous
cycle's model, as the service does), ``model.train.train`` on the labeled
images, ``model.train.evaluate_map`` on the fixed test split, and, except after
the last cycle, let the strategy pick ``budget`` more images, whose ground
truth is then "annotated" (moved to the labeled set). Every cycle yields a
:class:`Row`.

Runs are independent, so :func:`run_all` spreads them over worker processes
(one torch thread each by default: on a small CPU that scales better than
intra-op threads), streams their rows to a CSV as they come, and shows a tqdm
bar for the whole benchmark plus one per training in each worker.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import queue
import random
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from bench.active_learning.dataset import BenchDataset
from bench.active_learning.strategies import STRATEGIES, PoolView, StrategySettings, select
from model.detector import Detector, DetectorConfig, build_model
from model.losses import LossConfig
from model.train import TrainConfig, evaluate_map, train

CSV_FIELDS: tuple[str, ...] = (
    "strategy", "loss", "seed", "cycle", "labeled", "boxes", "ap50", "ap",
    "train_s", "eval_s", "select_s",
)


@dataclass(frozen=True)
class Row:
    """One cycle of one run: the labeled set's size, the test mAP and what it cost.

    Attributes:
        labeled (int): labeled images the model of this cycle was trained on.
        boxes (int): ground-truth boxes in them (what the annotator drew).
        ap50 (float): test AP at IoU 0.5 (torchmetrics ``map_50``), in [0, 1].
        ap (float): test AP 0.5:0.95 (torchmetrics ``map``), in [0, 1].
        train_s, eval_s, select_s (float): wall seconds of the training, the
            evaluation and the selection that followed it (0 after the last cycle).
    """

    strategy: str
    loss: str
    seed: int
    cycle: int
    labeled: int
    boxes: int
    ap50: float
    ap: float
    train_s: float
    eval_s: float
    select_s: float


@dataclass(frozen=True)
class RunSpec:
    """Which strategy and loss, with which seed."""

    strategy: str
    loss: str
    seed: int

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {sorted(STRATEGIES)}")
        LossConfig(kind=self.loss)  # raises for an unknown loss


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a run needs besides the data.

    Attributes:
        initial (int): images labeled at random before cycle 0.
        budget (int): B, images selected per cycle.
        cycles (int): selections; there are ``cycles + 1`` trainings and evaluations.
        detector (DetectorConfig): built afresh every cycle; its ``loss`` is set per run.
        train (TrainConfig): its ``loss`` and ``seed`` are set per run and cycle.
        strategies (StrategySettings): the strategies' own settings.
        rpn_test_proposals (int | None): proposals kept by the RPN at inference
            (torchvision's ``rpn_pre/post_nms_top_n_test``; ``None`` keeps the
            builder's 1000). A speed setting for small CPU runs [ours].
        device (str): "cpu", "cuda" or "auto".
        batch_size (int): images per inference pass.
        reinit (bool): re-initialise the detector from its base weights every cycle
            (the paper's protocol); False fine-tunes the previous cycle's model on the
            grown labeled set, as the service does by default (``TRAIN_REINIT=false``).
    """

    initial: int
    budget: int
    cycles: int
    detector: DetectorConfig
    train: TrainConfig
    strategies: StrategySettings = field(default_factory=StrategySettings)
    rpn_test_proposals: int | None = None
    device: str = "cpu"
    batch_size: int = 8
    reinit: bool = True

    def __post_init__(self) -> None:
        if self.initial < 1 or self.budget < 1 or self.cycles < 0:
            raise ValueError("need initial >= 1, budget >= 1 and cycles >= 0")


#: (fraction done, message) of the current training; a Row when a cycle ends.
TrainProgress = Callable[[float, str], None]
RowCallback = Callable[[Row], None]


def initial_set(pool_size: int, count: int, seed: int) -> list[int]:
    """The first labeled images: ``count`` pool indices drawn with ``seed`` (shared by all strategies)."""
    if count > pool_size:
        raise ValueError(f"initial set of {count} images from a pool of {pool_size}")
    return sorted(random.Random(seed).sample(range(pool_size), count))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def limit_test_proposals(model: torch.nn.Module, count: int | None) -> None:
    """Keep ``count`` RPN proposals at inference (before and after NMS), as torchvision's
    ``rpn_pre_nms_top_n_test`` / ``rpn_post_nms_top_n_test`` builder arguments do."""
    if count is not None:
        model.rpn._pre_nms_top_n["testing"] = count
        model.rpn._post_nms_top_n["testing"] = count


def fresh_model(config: SimulationConfig, loss: LossConfig, labels: Sequence[str], seed: int) -> torch.nn.Module:
    """The detector re-initialised from its base weights, with a seeded new head.

    Raises:
        RuntimeError: the configured weights are not available (no silent fallback).
    """
    torch.manual_seed(seed)
    model, report = build_model(replace(config.detector, loss=loss), list(labels))
    if report.fell_back:  # a benchmark must not quietly start from other weights than it says
        raise RuntimeError(f"{report.requested} weights unavailable ({'; '.join(report.reasons)}); "
                           "put the file in $TORCH_HOME/hub/checkpoints or pass --allow-download")
    limit_test_proposals(model, config.rpn_test_proposals)
    return model


def _train_and_evaluate(
    spec: RunSpec, cycle: int, labeled: Sequence[int], data: BenchDataset, config: SimulationConfig,
    model: torch.nn.Module | None, progress: TrainProgress | None,
) -> tuple[Detector, dict[str, float], float, float]:
    """Train ``model`` (a fresh one when None) on ``labeled``; (detector, test metrics, train s, eval s)."""
    loss = replace(config.train.loss, kind=spec.loss)
    device = _device(config.device)
    if model is None:
        model = fresh_model(config, loss, data.labels, spec.seed)
    started = time.perf_counter()
    train(model, [data.pool[i] for i in labeled],
          replace(config.train, loss=loss, seed=spec.seed * 1000 + cycle, holdout_fraction=0.0), device, progress)
    trained = time.perf_counter()
    metrics = evaluate_map(model, data.test)
    return Detector(model, data.labels, device), metrics, trained - started, time.perf_counter() - trained


def simulate(
    spec: RunSpec, data: BenchDataset, config: SimulationConfig,
    on_row: RowCallback | None = None, progress: TrainProgress | None = None,
) -> list[Row]:
    """One run: ``cycles + 1`` trainings and evaluations with ``cycles`` selections in between."""
    labeled = initial_set(len(data.pool), config.initial, spec.seed)
    rows: list[Row] = []
    detector: Detector | None = None
    for cycle in range(config.cycles + 1):
        previous = None if config.reinit or detector is None else detector.model
        detector, metrics, train_s, eval_s = _train_and_evaluate(
            spec, cycle, labeled, data, config, previous, progress)
        picked, select_s = [], 0.0
        if cycle < config.cycles:
            started = time.perf_counter()
            picked = select(spec.strategy, _view(detector, data, labeled, config, spec, cycle), config.strategies)
            select_s = time.perf_counter() - started
        boxes = sum(int(data.pool[i].labels.numel()) for i in labeled)
        row = Row(spec.strategy, spec.loss, spec.seed, cycle, len(labeled), boxes,
                  metrics["map_50"], metrics["map"], train_s, eval_s, select_s)
        rows.append(row)
        if on_row:
            on_row(row)
        labeled = labeled + picked
    return rows


def _view(detector: Detector, data: BenchDataset, labeled: Sequence[int], config: SimulationConfig,
          spec: RunSpec, cycle: int) -> PoolView:
    taken = set(labeled)
    return PoolView(
        detector=detector, pool=data.pool, labeled=list(labeled),
        unlabeled=[i for i in range(len(data.pool)) if i not in taken],
        budget=config.budget, num_classes=len(data.labels),
        seed=spec.seed * 1000 + cycle, batch_size=config.batch_size,
    )


# --------------------------------------------------------------------------
# Many runs: worker processes, progress bars, the CSV
# --------------------------------------------------------------------------


def read_rows(path: Path | str) -> list[Row]:
    """Rows of a CSV written by :func:`run_all` (an absent file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    types = {f.name: f.type for f in dataclasses.fields(Row)}
    cast = {"str": str, "int": int, "float": float}
    with path.open(newline="") as handle:
        return [Row(**{k: cast[types[k]](v) for k, v in record.items()}) for record in csv.DictReader(handle)]


def write_rows(path: Path | str, rows: Iterable[Row]) -> None:
    """All rows, sorted by strategy, loss, seed and cycle."""
    ordered = sorted(rows, key=lambda r: (r.strategy, r.loss, r.seed, r.cycle))
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in ordered)


def completed(rows: Iterable[Row], cycles: int) -> set[tuple[str, str, int]]:
    """(strategy, loss, seed) of the runs whose every cycle is in ``rows``."""
    seen: dict[tuple[str, str, int], set[int]] = {}
    for r in rows:
        seen.setdefault((r.strategy, r.loss, r.seed), set()).add(r.cycle)
    return {key for key, done in seen.items() if done >= set(range(cycles + 1))}


_WORKER: dict[str, object] = {}


def _init_worker(
    lock: multiprocessing.synchronize.RLock, slots: multiprocessing.sharedctypes.Synchronized, threads: int,
    data: BenchDataset, config: SimulationConfig,
) -> None:
    """Each worker: tqdm's shared lock, a bar line of its own, its thread count and the data."""
    tqdm.set_lock(lock)
    with slots.get_lock():
        slots.value += 1
        _WORKER["slot"] = slots.value
    torch.set_num_threads(threads)
    _WORKER.update(data=data, config=config)


def _worker_run(spec: RunSpec, events: queue.Queue) -> list[Row]:
    """A run in a worker; rows go to the parent through ``events`` as each cycle ends."""
    data, config = _WORKER["data"], _WORKER["config"]
    return _run_with_bar(spec, data, config, lambda row: events.put(row), int(_WORKER["slot"]))


def _run_with_bar(
    spec: RunSpec, data: BenchDataset, config: SimulationConfig, on_row: RowCallback, slot: int,
) -> list[Row]:
    """:func:`simulate` with a per-training tqdm bar on line ``slot``."""
    label = f"{spec.strategy}/{spec.loss}/s{spec.seed}"
    with tqdm(total=100, position=slot, leave=False, desc=label, unit="%", dynamic_ncols=True,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]") as bar:
        def progress(fraction: float, message: str) -> None:
            if 100 * fraction < bar.n:  # a new training: restart the clock
                bar.reset(total=100)
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        def row_done(row: Row) -> None:
            bar.set_description_str(f"{label} c{row.cycle + 1}")
            on_row(row)

        return simulate(spec, data, config, on_row=row_done, progress=progress)


def run_all(
    specs: Sequence[RunSpec], data: BenchDataset, config: SimulationConfig, csv_path: Path | str,
    workers: int = 1, threads: int = 1, resume: bool = False,
) -> list[Row]:
    """Run every spec (skipping, with ``resume``, those already complete in ``csv_path``).

    Rows are appended to ``csv_path`` as they arrive, then the file is rewritten sorted.
    Heavier strategies start first so that the workers finish together.
    """
    kept = [r for r in read_rows(csv_path) if resume]
    done = completed(kept, config.cycles)
    kept = [r for r in kept if (r.strategy, r.loss, r.seed) in done]
    todo = sorted((s for s in specs if (s.strategy, s.loss, s.seed) not in done), key=_cost_rank)
    write_rows(csv_path, kept)
    rows = list(kept)
    with Path(csv_path).open("a", newline="") as handle, tqdm(
        total=len(todo) * (config.cycles + 1), desc="benchmark", unit="cycle", position=0, dynamic_ncols=True,
    ) as overall:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)

        def record(row: Row) -> None:
            writer.writerow(dataclasses.asdict(row))
            handle.flush()
            rows.append(row)
            overall.update(1)
            overall.set_postfix_str(f"{row.strategy}/{row.loss}/s{row.seed} c{row.cycle} AP50 {row.ap50:.3f}")

        if workers <= 1 or len(todo) <= 1:
            torch.set_num_threads(threads)
            for spec in todo:
                _run_with_bar(spec, data, config, record, 1)
        else:
            _run_parallel(todo, data, config, record, workers, threads)
    write_rows(csv_path, rows)
    return rows


def _cost_rank(spec: RunSpec) -> tuple[int, int, str]:
    heavy = {"cald": 0, "hua_kcenter": 1, "hua": 1, "entropy": 2, "random": 3}
    return heavy.get(spec.strategy, 2), spec.seed, spec.loss


def _run_parallel(
    todo: Sequence[RunSpec], data: BenchDataset, config: SimulationConfig, record: RowCallback,
    workers: int, threads: int,
) -> None:
    """Runs in ``workers`` spawned processes; their rows are recorded here as they come."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        events = manager.Queue()
        slots = context.Value("i", 0)
        lock = context.RLock()  # tqdm's own lock belongs to the default (fork) context
        tqdm.set_lock(lock)
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker,
            initargs=(lock, slots, threads, data, config),
        ) as pool:
            futures = [pool.submit(_worker_run, spec, events) for spec in todo]
            while not all(f.done() for f in futures) or not events.empty():
                try:
                    record(events.get(timeout=0.5))
                except queue.Empty:
                    continue
            for future in futures:
                future.result()  # re-raise a worker's failure here

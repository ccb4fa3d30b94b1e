"""The pool-based simulation: labeling cycles with the service's own model code.

One *run* is one (strategy, loss, seed). It starts from ``initial`` pool images
drawn at random with the seed (the same first set for every strategy and loss
with that seed), then, for cycle 0..cycles: re-initialise the detector from its
base weights (the paper's protocol; the benchmark's base is a pretrained
checkpoint), ``model.train.train`` on the labeled images, ``model.evaluate.evaluate_map``
on the test split, and, except after the last cycle, let the strategy pick
``budget`` more images, whose ground truth is then "annotated" (moved to the
labeled set). Every cycle yields a :class:`Row`, which records the images picked
after it.

Because every cycle starts afresh, a cycle needs nothing from the previous one
but its labeled set, and that is in the rows: the unit of work is one cycle (a
:class:`Step`), a run can resume at any cycle from the rows (:func:`plan`), and runs
whose next training is the same (same loss, seed, cycle and labeled images: every
strategy's cycle 0) share one training and evaluation, then each selects.
The rows' CSV is ``bench.active_learning.storage``; the worker processes that run
the steps are ``bench.active_learning.workers``.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.active_learning.dataset import BenchDataset
from bench.active_learning.strategies import STRATEGIES, PoolView, StrategySettings, select
from model.detector import Detector, DetectorConfig, build_model, select_device
from model.evaluate import evaluate_map
from model.losses import LOSS_NAMES, LossConfig
from model.progress import Progress
from model.train import TrainConfig, train


@dataclass(frozen=True)
class Row:
    """One cycle of one run: the labeled set's size, the test mAP, what it cost, what it picked.

    Attributes:
        loss (str): one of ``model.losses.LOSS_NAMES``.
        labeled (int): labeled images the model of this cycle was trained on.
        boxes (int): ground-truth boxes in them (what the annotator drew).
        ap50 (float): test AP at IoU 0.5 (torchmetrics ``map_50``), in [0, 1].
        ap (float): test AP 0.5:0.95 (torchmetrics ``map``), in [0, 1].
        train_s, eval_s, select_s (float): wall seconds of the training, the
            evaluation and the selection that followed it (0 after the last cycle).
            A training shared by several runs is counted in each of their rows.
        unlabeled (int): pool images the strategy chose from (its cost is per image).
        picked (tuple[int, ...]): pool indices selected after this cycle, in order
            (empty after the last): the next cycle's labeled set is this one plus them.
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
    unlabeled: int
    picked: tuple[int, ...]

    @property
    def run(self) -> tuple[str, str, int]:
        return self.strategy, self.loss, self.seed


@dataclass(frozen=True)
class RunSpec:
    """Which strategy and loss (a name of ``model.losses.LOSS_NAMES``), with which seed."""

    strategy: str
    loss: str
    seed: int

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {sorted(STRATEGIES)}")
        if self.loss not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {LOSS_NAMES}")

    @property
    def run(self) -> tuple[str, str, int]:
        return self.strategy, self.loss, self.seed


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a run needs besides the data.

    Attributes:
        initial (int): images labeled at random before cycle 0.
        budget (int): B, images selected per cycle.
        cycles (int): selections; there are ``cycles + 1`` trainings and evaluations.
        detector (DetectorConfig): built afresh every cycle from its ``weights``;
            its ``rpn_test_proposals`` is a speed setting for small CPU runs [ours].
        train (TrainConfig): its ``loss`` and ``seed`` are set per run and cycle.
        strategies (StrategySettings): the strategies' own settings.
        device (str): "cpu", "cuda" or "auto".
        batch_size (int): images per inference pass.
        model_cache (str | None): a folder where cycle-0 trainings are kept and
            reused (every strategy's cycle 0, and the error-capture diagnostic's,
            is the same training); ``None``: nothing is kept.
    """

    initial: int
    budget: int
    cycles: int
    detector: DetectorConfig
    train: TrainConfig
    strategies: StrategySettings = field(default_factory=StrategySettings)
    device: str = "cpu"
    batch_size: int = 8
    model_cache: str | None = None

    def __post_init__(self) -> None:
        if self.initial < 1 or self.budget < 1 or self.cycles < 0:
            raise ValueError("need initial >= 1, budget >= 1 and cycles >= 0")


@dataclass(frozen=True)
class Step:
    """One training and evaluation, and the selections that follow it.

    Attributes:
        specs (tuple[RunSpec, ...]): the runs it serves; all share loss and seed,
            and so, on the same labeled images, the same model.
        cycle (int): their cycle.
        labeled (tuple[int, ...]): pool indices of the labeled images, in labeling order.
    """

    specs: tuple[RunSpec, ...]
    cycle: int
    labeled: tuple[int, ...]

    @property
    def loss(self) -> str:
        return self.specs[0].loss

    @property
    def seed(self) -> int:
        return self.specs[0].seed


def initial_set(pool_size: int, count: int, seed: int) -> list[int]:
    """The first labeled images: ``count`` pool indices drawn with ``seed`` (shared by all strategies)."""
    if count > pool_size:
        raise ValueError(f"initial set of {count} images from a pool of {pool_size}")
    return sorted(random.Random(seed).sample(range(pool_size), count))


def fresh_model(
    config: SimulationConfig, labels: Sequence[str], seed: int, loss: LossConfig = LossConfig()
) -> torch.nn.Module:
    """The detector re-initialised from its base weights, with a seeded new head that trains with ``loss``.

    Raises:
        RuntimeError: the configured weights are not available (no silent fallback).
    """
    torch.manual_seed(seed)
    model, report = build_model(config.detector, list(labels), loss=loss)
    if report.fell_back:  # a benchmark must not quietly start from other weights than it says
        raise RuntimeError(
            f"{report.requested} weights unavailable ({'; '.join(report.reasons)}); "
            "put the file in $TORCH_HOME/hub/checkpoints or pass --allow-download"
        )
    return model


def _cache_path(step: Step, data: BenchDataset, config: SimulationConfig) -> Path | None:
    """Where the training of ``step`` is kept: cycle 0 only (the one shared by every strategy), keyed
    by everything that decides its weights (training, detector with its warm start, data, labeled set)."""
    if config.model_cache is None or step.cycle != 0:
        return None
    identity = repr(
        (
            step.loss,
            step.seed,
            step.labeled,
            config.train,
            config.detector,
            data.labels,
            [(s.image_path, s.boxes.tolist(), s.labels.tolist()) for s in data.test[:5]],
        )
    )
    return Path(config.model_cache) / f"cycle0-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.pt"


def trained_detector(
    step: Step,
    data: BenchDataset,
    config: SimulationConfig,
    progress: Progress | None = None,
) -> tuple[Detector, dict[str, float], float, float]:
    """A fresh model trained on the step's labeled images; (detector, test metrics, train s, eval s).

    A cycle-0 training found in ``config.model_cache`` is loaded instead of
    repeated (training is deterministic, so the weights are the same); its
    recorded train and eval seconds are returned with it.
    """
    device = select_device(config.device)
    loss = LossConfig.from_name(step.loss)
    model = fresh_model(config, data.labels, step.seed, loss)
    cached = _cache_path(step, data, config)
    if cached is not None and cached.exists():
        stored = torch.load(cached, map_location="cpu", weights_only=True)
        model.load_state_dict(stored["weights"])
        return Detector(model.to(device), data.labels, device), stored["metrics"], *stored["seconds"]
    started = time.perf_counter()
    train(
        model,
        [data.pool[i] for i in step.labeled],
        replace(config.train, loss=loss, seed=step.seed * 1000 + step.cycle, holdout_fraction=0.0),
        device,
        progress,
    )
    trained = time.perf_counter()
    metrics = evaluate_map(model, data.test)
    seconds = (trained - started, time.perf_counter() - trained)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"weights": model.state_dict(), "metrics": metrics, "seconds": seconds}, tmp)
        os.replace(tmp, cached)
    return Detector(model, data.labels, device), metrics, *seconds


def run_step(step: Step, data: BenchDataset, config: SimulationConfig, progress: Progress | None = None) -> list[Row]:
    """Train and evaluate once, then let each of the step's runs select: one row per run."""
    detector, metrics, train_s, eval_s = trained_detector(step, data, config, progress)
    boxes = sum(int(data.pool[i].labels.numel()) for i in step.labeled)
    taken = set(step.labeled)
    unlabeled = [i for i in range(len(data.pool)) if i not in taken]
    rows = []
    for spec in step.specs:
        picked, select_s = [], 0.0
        if step.cycle < config.cycles:
            view = PoolView(
                detector=detector,
                pool=data.pool,
                labeled=list(step.labeled),
                unlabeled=unlabeled,
                budget=config.budget,
                num_classes=len(data.labels),
                seed=spec.seed * 1000 + step.cycle,
                batch_size=config.batch_size,
            )
            started = time.perf_counter()
            picked = select(spec.strategy, view, config.strategies)
            select_s = time.perf_counter() - started
        rows.append(
            Row(
                spec.strategy,
                spec.loss,
                spec.seed,
                step.cycle,
                len(step.labeled),
                boxes,
                metrics["map_50"],
                metrics["map"],
                train_s,
                eval_s,
                select_s,
                len(unlabeled),
                tuple(picked),
            )
        )
    return rows


def plan(
    specs: Sequence[RunSpec], rows: Iterable[Row], data: Mapping[int, BenchDataset], config: SimulationConfig
) -> list[Step]:
    """The next cycle of every unfinished run, runs with the same next training grouped into one step.

    A run's next labeled set is its first set plus what each of its done cycles
    picked. Steps come lowest seed first (a seed's runs complete together, so an
    interrupted benchmark still has whole seeds to report), then lowest cycle.
    """
    done: dict[tuple[str, str, int], dict[int, Row]] = {}
    for r in rows:
        done.setdefault(r.run, {})[r.cycle] = r
    groups: dict[tuple[str, int, int, tuple[int, ...]], list[RunSpec]] = {}
    for spec in specs:
        cycles = done.get(spec.run, {})
        labeled = initial_set(len(data[spec.seed].pool), config.initial, spec.seed)
        cycle = 0
        while cycle in cycles:
            labeled += cycles[cycle].picked
            cycle += 1
        if cycle <= config.cycles:
            groups.setdefault((spec.loss, spec.seed, cycle, tuple(labeled)), []).append(spec)
    steps = [Step(tuple(group), key[2], key[3]) for key, group in groups.items()]
    return sorted(steps, key=lambda s: (s.seed, s.cycle, min(_cost_rank(x) for x in s.specs), s.loss))


def _cost_rank(spec: RunSpec) -> int:
    """Heavier selections first, so that the workers finish together."""
    return {"cald": 0, "hua_kcenter": 1, "hua": 1, "entropy": 2, "random": 3}.get(spec.strategy, 2)

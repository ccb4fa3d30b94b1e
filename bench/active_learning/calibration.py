"""The calibration of the training length, run once before any comparison (docs/method.md, section 6).

A benchmark about selection must sit where the paper's first cycle sits (VOC07:
43-51 AP50 after 500 images), not where the detector has barely started: the
iterations per cycle are chosen so that cycle 0 of one seed reaches an AP50
between 30 and 50. Only cycle 0 is trained (no strategy is involved, so nothing
about the comparison can leak into the choice), and the rule that picks the
value is fixed here, before the runs: the fewest iterations tried whose AP50
lies in the band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from bench.active_learning.dataset import BenchDataset
from bench.active_learning.loop import RunSpec, SimulationConfig, Step, initial_set, run_step

#: The AP50 that cycle 0 must reach, as a fraction.
BAND: tuple[float, float] = (0.30, 0.50)


@dataclass(frozen=True)
class Trial:
    """Cycle 0 trained for ``iterations`` steps: its test AP50, AP and training seconds."""

    iterations: int
    ap50: float
    ap: float
    train_s: float


def calibrate(candidates: Sequence[int], spec: RunSpec, data: BenchDataset, config: SimulationConfig) -> list[Trial]:
    """Cycle 0 of ``spec`` trained for each number of ``candidates`` iterations."""
    labeled = tuple(initial_set(len(data.pool), config.initial, spec.seed))
    trials = []
    for iterations in candidates:
        once = replace(config, cycles=0, train=replace(config.train, iterations=iterations))
        (row,) = run_step(Step((spec,), 0, labeled), data, once)
        trials.append(Trial(iterations, row.ap50, row.ap, row.train_s))
    return trials


def choose(trials: Sequence[Trial], band: tuple[float, float] = BAND) -> int | None:
    """The rule: the fewest iterations whose AP50 lies in ``band``; None when no trial does."""
    inside = [t.iterations for t in trials if band[0] <= t.ap50 <= band[1]]
    return min(inside) if inside else None


def class_boxes(data: BenchDataset, count: int, seed: int) -> list[int]:
    """Boxes per class in the first labeled set of ``seed`` (``count`` images): the skew check."""
    labels = [data.pool[i].labels for i in initial_set(len(data.pool), count, seed)]
    return torch.bincount(torch.cat(labels) - 1, minlength=len(data.labels)).tolist()


def markdown(
    trials: Sequence[Trial], chosen: int | None, preamble: Sequence[str], first_sets: dict[int, list[int]]
) -> str:
    """The calibration as it is committed: what was tried, what it gave, what was chosen and why."""
    low, high = (100 * b for b in BAND)
    lines = [
        "## Calibration of the training length (cycle 0 only, before any comparison)",
        "",
        *preamble,
        "",
        f"Rule, fixed before the runs: the fewest iterations tried whose cycle-0 AP50 lies in [{low:.0f}, {high:.0f}].",
        "",
        "| iterations | AP50 (x100) | AP (x100) | training s |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {t.iterations} | {100 * t.ap50:.1f} | {100 * t.ap:.1f} | {t.train_s:.0f} |" for t in trials]
    verdict = (
        f"Chosen: **{chosen} iterations** per cycle."
        if chosen is not None
        else "No value tried lies in the band: try others."
    )
    lines += [
        "",
        verdict,
        "",
        "Boxes per class in each seed's first labeled set (classes 0-9):",
        "",
        "| seed | boxes per class | fewest |",
        "|---:|---|---:|",
    ]
    lines += [f"| {seed} | {' '.join(map(str, counts))} | {min(counts)} |" for seed, counts in first_sets.items()]
    return "\n".join(lines) + "\n"

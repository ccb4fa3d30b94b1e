"""Tables, comparisons and the plot of a benchmark's rows.

Everything here reads the rows (``loop.Row``, one per strategy, loss, seed and
cycle) and nothing else, so a report can be rebuilt from a CSV at any time
(``python -m bench.active_learning --report-only``).

The comparison with random is paired: every strategy starts, for a given seed,
from the same random first set as random does, so the difference per seed and
cycle removes the first set's luck. "Labeled images to reach random's final
AP50" is read off the mean curve, interpolated linearly between cycles.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.active_learning.loop import Row

BASELINE = "random"


@dataclass(frozen=True)
class Curve:
    """One (strategy, loss) over cycles and seeds.

    Attributes:
        labeled (list[int]): labeled images at each cycle (the same for every seed).
        seeds (list[int]): the seeds present at every cycle, ascending.
        ap50 (list[list[float]]): ``ap50[cycle][k]`` for seed ``seeds[k]``; ``ap`` likewise.
        boxes (list[float]): mean labeled boxes at each cycle.
    """

    strategy: str
    loss: str
    labeled: list[int]
    seeds: list[int]
    ap50: list[list[float]]
    ap: list[list[float]]
    boxes: list[float]

    @property
    def name(self) -> str:
        return f"{self.strategy} + {self.loss}"

    def mean(self, metric: str = "ap50") -> list[float]:
        return [statistics.fmean(values) for values in getattr(self, metric)]

    def std(self, metric: str = "ap50") -> list[float]:
        return [statistics.stdev(v) if len(v) > 1 else 0.0 for v in getattr(self, metric)]

    def spread(self, metric: str = "ap50") -> list[float]:
        """max - min over seeds at each cycle."""
        return [max(v) - min(v) for v in getattr(self, metric)]


def curves(rows: Sequence[Row]) -> list[Curve]:
    """The rows grouped into curves, random first, then by strategy and loss.

    Only cycles that every seed of a curve reached are kept.
    """
    groups: dict[tuple[str, str], dict[int, dict[int, Row]]] = {}
    for r in rows:
        groups.setdefault((r.strategy, r.loss), {}).setdefault(r.cycle, {})[r.seed] = r
    out = []
    for (strategy, loss), by_cycle in groups.items():
        seeds = sorted(set.union(*(set(v) for v in by_cycle.values())))
        cycles = [c for c in sorted(by_cycle) if set(by_cycle[c]) == set(seeds)]
        cycles = [c for i, c in enumerate(cycles) if c == i]  # contiguous from 0
        if not cycles:
            continue
        pick = [[by_cycle[c][s] for s in seeds] for c in cycles]
        out.append(Curve(
            strategy, loss, [p[0].labeled for p in pick], seeds,
            [[r.ap50 for r in p] for p in pick], [[r.ap for r in p] for p in pick],
            [statistics.fmean(r.boxes for r in p) for p in pick],
        ))
    return sorted(out, key=lambda c: (c.strategy != BASELINE, c.strategy, c.loss))


def labeled_to_reach(labeled: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """Labeled images at which a curve first reaches ``target``, interpolated linearly.

    Returns ``labeled[0]`` when the curve starts at or above the target and
    ``None`` when it never reaches it.
    """
    if values[0] >= target:
        return float(labeled[0])
    for i in range(1, len(values)):
        if values[i] >= target:
            x0, x1, y0, y1 = labeled[i - 1], labeled[i], values[i - 1], values[i]
            return x0 + (target - y0) / (y1 - y0) * (x1 - x0)
    return None


def baseline_for(curve: Curve, all_curves: Sequence[Curve]) -> Curve | None:
    """Random with the same loss, else random with any loss; None without a random run."""
    randoms = [c for c in all_curves if c.strategy == BASELINE]
    same = [c for c in randoms if c.loss == curve.loss]
    return (same or randoms or [None])[0]


@dataclass(frozen=True)
class Comparison:
    """A curve against its random baseline (paired by seed, over the cycles both reached).

    Attributes:
        cycles_at_or_above (int): cycles where the mean AP50 is >= random's mean.
        cycles (int): cycles compared.
        diff_mean (list[float]): per cycle, mean over seeds of (AP50 - random's AP50).
        diff_min, diff_max (list[float]): the same, min and max over seeds.
        reach (float | None): labeled images at which the mean curve reaches random's
            final mean AP50 (None: not within the run).
        reach_pct (float | None): ``reach`` as a percentage of random's final labeled count.
        reach_pct_seeds (list[float | None]): the same per seed, against that seed's random run.
    """

    curve: Curve
    baseline: Curve
    cycles_at_or_above: int
    cycles: int
    diff_mean: list[float]
    diff_min: list[float]
    diff_max: list[float]
    reach: float | None
    reach_pct: float | None
    reach_pct_seeds: list[float | None]


def compare(curve: Curve, baseline: Curve) -> Comparison:
    """Paired comparison of ``curve`` with ``baseline`` on their common cycles and seeds."""
    n = min(len(curve.labeled), len(baseline.labeled))
    seeds = [s for s in curve.seeds if s in baseline.seeds]
    ci = [curve.seeds.index(s) for s in seeds]
    bi = [baseline.seeds.index(s) for s in seeds]
    diffs = [[curve.ap50[c][i] - baseline.ap50[c][j] for i, j in zip(ci, bi)] for c in range(n)]
    mean_c = [statistics.fmean(curve.ap50[c][i] for i in ci) for c in range(n)]
    mean_b = [statistics.fmean(baseline.ap50[c][j] for j in bi) for c in range(n)]
    final = baseline.labeled[n - 1]
    reach = labeled_to_reach(curve.labeled[:n], mean_c, mean_b[-1])
    per_seed = []
    for i, j in zip(ci, bi):
        hit = labeled_to_reach(curve.labeled[:n], [curve.ap50[c][i] for c in range(n)], baseline.ap50[n - 1][j])
        per_seed.append(None if hit is None else 100.0 * hit / final)
    return Comparison(
        curve, baseline, sum(1 for a, b in zip(mean_c, mean_b) if a >= b), n,
        [statistics.fmean(d) for d in diffs], [min(d) for d in diffs], [max(d) for d in diffs],
        reach, None if reach is None else 100.0 * reach / final, per_seed,
    )


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def _cell(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def metric_table(all_curves: Sequence[Curve], metric: str) -> str:
    """Mean ± std over seeds, in AP points (x100), one row per cycle, one column per curve."""
    cycles = max(len(c.labeled) for c in all_curves)
    head = "| cycle | labeled | " + " | ".join(c.name for c in all_curves) + " |"
    rule = "|---:|---:|" + "---:|" * len(all_curves)
    lines = [head, rule]
    for k in range(cycles):
        labeled = next(c.labeled[k] for c in all_curves if len(c.labeled) > k)
        cells = [_cell(getattr(c, metric)[k]) if len(c.labeled) > k else "" for c in all_curves]
        lines.append(f"| {k} | {labeled} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} %"


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """One row per non-random curve: cycles at or above random, paired differences, labeled to reach."""
    lines = [
        "| run | vs | mean AP50 >= random | AP50 - random per cycle: mean [min, max] over seeds "
        "| labeled to reach random's final AP50 (mean curve) | same, per seed |",
        "|---|---|---:|---|---:|---|",
    ]
    for cmp in comparisons:
        diffs = "; ".join(
            f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
            for m, lo, hi in zip(cmp.diff_mean, cmp.diff_min, cmp.diff_max)
        )
        reach = "not reached" if cmp.reach is None else f"{cmp.reach:.0f} = {cmp.reach_pct:.0f} %"
        seeds = ", ".join(_pct(p) for p in cmp.reach_pct_seeds)
        lines.append(
            f"| {cmp.curve.name} | {cmp.baseline.name} | {cmp.cycles_at_or_above}/{cmp.cycles} cycles "
            f"| {diffs} | {reach} | {seeds} |"
        )
    return "\n".join(lines)


def comparisons(all_curves: Sequence[Curve]) -> list[Comparison]:
    """Every non-random curve against its random baseline (none without a random run)."""
    out = []
    for curve in all_curves:
        base = baseline_for(curve, all_curves)
        if curve.strategy != BASELINE and base is not None:
            out.append(compare(curve, base))
    return out


def markdown(rows: Sequence[Row], title: str, preamble: Sequence[str] = (), plot_name: str | None = None) -> str:
    """The whole report: settings lines, AP50 and AP tables, the comparison, the plot."""
    all_curves = curves(rows)
    if not all_curves:
        return f"## {title}\n\nNo complete cycle yet.\n"
    seeds = sorted({s for c in all_curves for s in c.seeds})
    parts = [f"## {title}", "", *preamble, ""]
    heading = f"### AP50 (x100), mean ± std over {len(seeds)} seed(s) {seeds}"
    parts += [heading, "", metric_table(all_curves, "ap50"), ""]
    parts += ["### AP 0.5:0.95 (x100), mean ± std", "", metric_table(all_curves, "ap"), ""]
    cmps = comparisons(all_curves)
    if cmps:
        parts += ["### Against random (paired: same seed, same first labeled set)", "", comparison_table(cmps), ""]
    parts += ["### Labeled boxes (mean over seeds): what the annotator drew", "", _boxes_table(all_curves), ""]
    if plot_name:
        parts += [f"![AP50 against labeled images]({plot_name})", ""]
    return "\n".join(parts)


def _boxes_table(all_curves: Sequence[Curve]) -> str:
    cycles = max(len(c.labeled) for c in all_curves)
    lines = ["| cycle | " + " | ".join(c.name for c in all_curves) + " |", "|---:|" + "---:|" * len(all_curves)]
    for k in range(cycles):
        cells = [f"{c.boxes[k]:.0f}" if len(c.boxes) > k else "" for c in all_curves]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot(rows: Sequence[Row], path: Path | str, title: str) -> Path:
    """AP50 (left) and AP (right) against labeled images: mean over seeds, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_curves = curves(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, metric, label in zip(axes, ("ap50", "ap"), ("AP50", "AP 0.5:0.95")):
        for curve in all_curves:
            values = getattr(curve, metric)
            mean = [100 * v for v in curve.mean(metric)]
            line, = ax.plot(curve.labeled, mean, marker="o", label=curve.name,
                            linestyle="--" if curve.strategy == BASELINE else "-")
            ax.fill_between(curve.labeled, [100 * min(v) for v in values], [100 * max(v) for v in values],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xlabel("labeled images")
        ax.set_ylabel(f"test {label} (x100)")
        ax.grid(True, alpha=0.3)
    seeds = sorted({s for c in all_curves for s in c.seeds})
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}: mean over {len(seeds)} seed(s), band = min..max over seeds", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_numbers(rows: Sequence[Row]) -> dict[str, dict[str, object]]:
    """The comparison as plain numbers, for a json file next to the report."""
    out: dict[str, dict[str, object]] = {}
    for cmp in comparisons(curves(rows)):
        out[cmp.curve.name] = {
            "baseline": cmp.baseline.name,
            "cycles_at_or_above": cmp.cycles_at_or_above,
            "cycles": cmp.cycles,
            "ap50_diff_mean": cmp.diff_mean,
            "ap50_diff_min": cmp.diff_min,
            "ap50_diff_max": cmp.diff_max,
            "labeled_to_reach_random_final": cmp.reach,
            "percent_of_random": cmp.reach_pct,
            "percent_of_random_per_seed": [None if p is None or math.isnan(p) else p for p in cmp.reach_pct_seeds],
        }
    return out


def timing_table(rows: Sequence[Row]) -> str:
    """Mean wall seconds per cycle of each run's training, evaluation and selection."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.strategy, r.loss), []).append(r)
    lines = ["### Time per cycle (wall seconds, mean over cycles and seeds)", "",
             "| run | train | evaluate | select | whole run |", "|---|---:|---:|---:|---:|"]
    for (strategy, loss), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != BASELINE, kv[0])):
        selecting = [r.select_s for r in group if r.select_s > 0] or [0.0]
        runs = {r.seed for r in group}
        whole = sum(r.train_s + r.eval_s + r.select_s for r in group) / len(runs)
        lines.append(f"| {strategy} + {loss} | {statistics.fmean(r.train_s for r in group):.1f} "
                     f"| {statistics.fmean(r.eval_s for r in group):.1f} | {statistics.fmean(selecting):.1f} "
                     f"| {whole:.0f} |")
    return "\n".join(lines)

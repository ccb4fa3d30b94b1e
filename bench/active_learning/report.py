"""Tables, comparisons, the loss decision and the plot of a benchmark's rows.

Everything here reads the rows (``loop.Row``, one per strategy, loss, seed and
cycle) and nothing else, so a report can be rebuilt from a CSV at any time
(``python -m bench.active_learning --report-only``).

Comparisons are paired: for a given seed every run starts from the same random
first set, and runs with the same loss share cycle 0's model, so the difference
per seed and cycle removes the first set's luck. A 95 % interval is Student's t
over the seeds' paired differences. "Labels (boxes) to reach random's final
AP50" is read off the mean curve, interpolated linearly between cycles.

Per image, runs are compared cycle by cycle (the same labeled images); per box, at
the baseline's labeled boxes: each seed's curve is interpolated linearly between
its cycles at the baseline's box count of the same seed and cycle, and paired with
the baseline there (``BoxComparison``). A run whose picks are busier than the
baseline's reaches a box count earlier, so per box it is judged at fewer images.
Learning curves are concave, so a straight line between two cycles lies below the
curve: the interpolation understates a run between its cycles, and leans against
the run whose cycles are further apart in boxes (the busier one).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.active_learning.loop import Row

BASELINE = "random"
CALD = "cald"
#: The loss the ablation compares the others with, and the form the decision rule is about: the
#: paper's synchronic form (``synchronic``; the balanced form ``synchronic-balanced`` is an ablation).
REFERENCE_LOSS = "standard"
CANDIDATE_LOSS = "synchronic"

#: Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975: tuple[float, ...] = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (scipy when installed)."""
    try:
        from scipy.stats import t
    except ImportError:
        return _T975[df - 1] if df <= len(_T975) else 1.96
    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Interval:
    """A mean over seeds and the half-width of its 95 % t-interval (nan with one seed)."""

    mean: float
    half: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        n = len(values)
        if n < 2:
            return cls(statistics.fmean(values), math.nan, n)
        return cls(statistics.fmean(values), t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n), n)

    def text(self, scale: float = 100.0) -> str:
        """``+1.2 [-0.3, +2.7]`` in AP points."""
        if math.isnan(self.half):
            return f"{scale * self.mean:+.1f}"
        low, high = self.mean - self.half, self.mean + self.half
        return f"{scale * self.mean:+.1f} [{scale * low:+.1f}, {scale * high:+.1f}]"


@dataclass(frozen=True)
class Curve:
    """One (strategy, loss) over cycles and seeds.

    Attributes:
        labeled (list[int]): labeled images at each cycle (the same for every seed).
        seeds (list[int]): the seeds that reached the curve's last cycle, ascending.
        ap50 (list[list[float]]): ``ap50[cycle][k]`` for seed ``seeds[k]``; ``ap`` likewise.
        boxes (list[float]): mean labeled boxes at each cycle.
        seed_boxes (list[list[int]]): ``seed_boxes[cycle][k]``, the labeled boxes of seed ``seeds[k]``.
    """

    strategy: str
    loss: str
    labeled: list[int]
    seeds: list[int]
    ap50: list[list[float]]
    ap: list[list[float]]
    boxes: list[float]
    seed_boxes: list[list[int]]

    @property
    def name(self) -> str:
        return f"{self.strategy} + {self.loss}"

    def mean(self, metric: str = "ap50") -> list[float]:
        return [statistics.fmean(values) for values in getattr(self, metric)]


def curves(rows: Sequence[Row]) -> list[Curve]:
    """The rows grouped into curves, random first, then by strategy and loss.

    A curve keeps the seeds that reached its furthest cycle (contiguous from 0),
    so a benchmark still running reports its finished seeds in full.
    """
    groups: dict[tuple[str, str], dict[int, dict[int, Row]]] = {}
    for r in rows:
        groups.setdefault((r.strategy, r.loss), {}).setdefault(r.seed, {})[r.cycle] = r
    out = []
    for (strategy, loss), by_seed in groups.items():
        reach = {seed: _contiguous(cycles) for seed, cycles in by_seed.items()}
        length = max(reach.values())
        if length == 0:
            continue
        seeds = sorted(s for s, n in reach.items() if n == length)
        pick = [[by_seed[s][c] for s in seeds] for c in range(length)]
        out.append(
            Curve(
                strategy,
                loss,
                [p[0].labeled for p in pick],
                seeds,
                [[r.ap50 for r in p] for p in pick],
                [[r.ap for r in p] for p in pick],
                [statistics.fmean(r.boxes for r in p) for p in pick],
                [[r.boxes for r in p] for p in pick],
            )
        )
    return sorted(out, key=lambda c: (c.strategy != BASELINE, c.strategy, c.loss))


def _contiguous(cycles: dict[int, Row]) -> int:
    """How many cycles 0, 1, ... are present."""
    n = 0
    while n in cycles:
        n += 1
    return n


def labeled_to_reach(labeled: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """Labeled images (or boxes) at which a curve first reaches ``target``, interpolated linearly.

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


@dataclass(frozen=True)
class Comparison:
    """A curve against a baseline, paired by seed over the cycles and seeds both reached.

    Attributes:
        seeds (list[int]): the seeds paired.
        diff (list[Interval]): per cycle, AP50 minus the baseline's: mean and 95 % interval over seeds.
        at_or_above (int): cycles 1.. where the mean AP50 is >= the baseline's (cycle 0 is
            equal by construction when the loss is the same, so it is not counted).
        compared (int): cycles counted in ``at_or_above``.
        overall (Interval): per seed, the mean difference over every compared cycle, 0 included.
        later (Interval | None): per seed, the mean difference over cycles 1.. (None before cycle 1).
        reach_labeled, reach_boxes (float | None): labeled images and boxes at which the mean
            curve reaches the baseline's final mean AP50 (None: not within the run).
        final_labeled, final_boxes (float): the baseline's labeled images and mean boxes there.
    """

    curve: Curve
    baseline: Curve
    seeds: list[int]
    diff: list[Interval]
    at_or_above: int
    compared: int
    overall: Interval
    later: Interval | None
    reach_labeled: float | None
    reach_boxes: float | None
    final_labeled: float
    final_boxes: float


def _over_cycles(per_cycle: Sequence[Sequence[float]]) -> Interval | None:
    """Per seed, the mean of its paired differences over ``per_cycle`` (a list per cycle, a value per seed),
    as an interval over the seeds; None without a cycle."""
    if not per_cycle:
        return None
    return Interval.of([statistics.fmean(d[k] for d in per_cycle) for k in range(len(per_cycle[0]))])


def compare(curve: Curve, baseline: Curve) -> Comparison | None:
    """Paired comparison of ``curve`` with ``baseline``; None without a common seed."""
    n = min(len(curve.labeled), len(baseline.labeled))
    seeds = [s for s in curve.seeds if s in baseline.seeds]
    if not seeds:
        return None
    ci = [curve.seeds.index(s) for s in seeds]
    bi = [baseline.seeds.index(s) for s in seeds]
    diffs = [[curve.ap50[c][i] - baseline.ap50[c][j] for i, j in zip(ci, bi)] for c in range(n)]
    mean_c = [statistics.fmean(curve.ap50[c][i] for i in ci) for c in range(n)]
    mean_b = [statistics.fmean(baseline.ap50[c][j] for j in bi) for c in range(n)]
    return Comparison(
        curve,
        baseline,
        seeds,
        [Interval.of(d) for d in diffs],
        sum(1 for a, b in zip(mean_c[1:], mean_b[1:]) if a >= b),
        n - 1,
        _over_cycles(diffs),
        _over_cycles(diffs[1:]),
        labeled_to_reach(curve.labeled[:n], mean_c, mean_b[-1]),
        labeled_to_reach(curve.boxes[:n], mean_c, mean_b[-1]),
        float(baseline.labeled[n - 1]),
        baseline.boxes[n - 1],
    )


def ap50_at_boxes(boxes: Sequence[float], ap50: Sequence[float], target: float) -> float | None:
    """One seed's AP50 at ``target`` labeled boxes, interpolated linearly between its cycles (None outside them)."""
    if not boxes[0] <= target <= boxes[-1]:
        return None
    return float(np.interp(target, boxes, ap50))


@dataclass(frozen=True)
class BoxComparison:
    """A curve against a baseline per labeled box: at each of the baseline's cycles 1.., the curve's AP50 at the
    baseline's labeled boxes (``ap50_at_boxes``, per seed) minus the baseline's AP50, paired by seed.

    Attributes:
        diff (list[Interval | None]): per baseline cycle 1.., the paired difference; None where a seed's curve
            does not span the baseline's boxes (sparser picks that never drew that many, within the run).
        later (Interval | None): per seed, the mean difference over the cycles that every seed spans.
    """

    diff: list[Interval | None]
    later: Interval | None


def compare_per_box(cmp: Comparison) -> BoxComparison:
    """``cmp``'s curves compared at the baseline's labeled boxes, cycles 1 to the last both reached."""
    curve, base = cmp.curve, cmp.baseline
    own = range(len(curve.seed_boxes))

    def difference(seed: int, cycle: int) -> float | None:
        i, j = curve.seeds.index(seed), base.seeds.index(seed)
        boxes, ap50 = [curve.seed_boxes[k][i] for k in own], [curve.ap50[k][i] for k in own]
        at = ap50_at_boxes(boxes, ap50, base.seed_boxes[cycle][j])
        return None if at is None else at - base.ap50[cycle][j]

    per_cycle = [[difference(s, c) for s in cmp.seeds] for c in range(1, len(cmp.diff))]
    spanned = [v for v in per_cycle if None not in v]
    return BoxComparison([Interval.of(v) if None not in v else None for v in per_cycle], _over_cycles(spanned))


def selection_comparisons(all_curves: Sequence[Curve]) -> list[Comparison]:
    """Every non-random curve against random with the same loss (none without one)."""
    randoms = {c.loss: c for c in all_curves if c.strategy == BASELINE}
    pairs = [(c, randoms.get(c.loss)) for c in all_curves if c.strategy != BASELINE]
    return [cmp for c, base in pairs if base is not None and (cmp := compare(c, base)) is not None]


def against_cald(all_curves: Sequence[Curve]) -> list[Comparison]:
    """Every HUA curve against CALD-style with the same loss, the strongest baseline measured before HUA's
    redefinition: "labeled images (boxes) to reach" then reads as against CALD's final AP50."""
    calds = {c.loss: c for c in all_curves if c.strategy == CALD}
    pairs = [(c, calds.get(c.loss)) for c in all_curves if c.strategy.startswith("hua")]
    return [cmp for c, base in pairs if base is not None and (cmp := compare(c, base)) is not None]


def loss_comparisons(all_curves: Sequence[Curve]) -> list[Comparison]:
    """Random with each loss against random with the standard loss: the same images for every loss."""
    randoms = {c.loss: c for c in all_curves if c.strategy == BASELINE}
    reference = randoms.get(REFERENCE_LOSS)
    if reference is None:
        return []
    found = [compare(c, reference) for loss, c in sorted(randoms.items()) if loss != REFERENCE_LOSS]
    return [cmp for cmp in found if cmp is not None]


@dataclass(frozen=True)
class Decision:
    """The rule of docs/method.md, section 6: the default loss is the paper's synchronic form only if its mean
    paired AP50 difference to the standard loss over cycles 0-4 is >= 0.

    Attributes:
        difference (Interval): per seed, the mean over cycles of synchronic (the paper's form) - standard.
        cycles (int): cycles it is averaged over (5 when complete).
        loss (str): the rule's outcome.
    """

    difference: Interval
    cycles: int
    loss: str

    def text(self, cycles: int, seeds: int) -> str:
        """The rule and its outcome; provisional until ``cycles`` cycles of ``seeds`` seeds are in."""
        done = self.cycles >= cycles and self.difference.n >= seeds
        state = "" if done else f" (provisional: {self.cycles} cycle(s), {self.difference.n} seed(s) so far)"
        return (
            f"Decision rule (docs/method.md, section 6): mean paired AP50 difference "
            f"{CANDIDATE_LOSS} (the paper's form) - {REFERENCE_LOSS} over cycles 0-{self.cycles - 1} = "
            f"{self.difference.text()} (95 % interval over {self.difference.n} seeds) "
            f"{'>=' if self.difference.mean >= 0 else '<'} 0, so the default LOSS is "
            f"**{self.loss}**{state}."
        )


def decide(all_curves: Sequence[Curve]) -> Decision | None:
    """The rule's outcome on random + synchronic (the paper's form) against random + standard;
    None without both."""
    match = [c for c in loss_comparisons(all_curves) if c.curve.loss == CANDIDATE_LOSS]
    if not match:
        return None
    (cmp,) = match
    loss = CANDIDATE_LOSS if cmp.overall.mean >= 0 else REFERENCE_LOSS
    return Decision(cmp.overall, len(cmp.diff), loss)


#: The runs the rules of docs/method.md, section 7 are about: HUA with each aggregate and with the diversity pass.
HUA_SUM, HUA_MEAN, HUA_DIVERSE = "hua", "hua_mean", "hua_kcenter"
#: The diversity rule's floor on the lower end of its 95 % interval, in AP50 (fraction).
DIVERSITY_FLOOR = -0.01


@dataclass(frozen=True)
class HuaRules:
    """The two rules of docs/method.md, section 7, fixed before the confirmatory runs, with their inputs.

    HUA_AGGREGATE becomes ``mean`` only if HUA (mean) reaches random's final AP50 with fewer labeled
    boxes than HUA (sum) does (a curve that never reaches it needs infinitely many) AND HUA (sum) does
    not beat random on labeled images, that is, does not reach random's final AP50 with fewer labeled
    images than random has there. HUA_DIVERSITY becomes on only if HUA (sum) + diversity minus HUA
    (sum), paired by seed and averaged over cycles 1.., has a mean >= 0 and a 95 % interval whose lower
    end is above ``DIVERSITY_FLOOR``. Either rule is None when its runs are missing.

    Attributes:
        hua_sum (Comparison | None): HUA (sum) against random.
        hua_mean (Comparison | None): HUA (mean) against random.
        diversity (Interval | None): per seed, the mean over cycles 1.. of HUA (sum) + diversity - HUA (sum).
        cycles (int): the fewest cycles any rule's curves reached (0 included); seeds likewise.
    """

    hua_sum: Comparison | None
    hua_mean: Comparison | None
    diversity: Interval | None
    cycles: int
    seeds: int

    @property
    def aggregate(self) -> str | None:
        if self.hua_sum is None or self.hua_mean is None:
            return None
        mean_boxes, sum_boxes = self.hua_mean.reach_boxes, self.hua_sum.reach_boxes
        fewer_boxes = mean_boxes is not None and (sum_boxes is None or mean_boxes < sum_boxes)
        sum_images = self.hua_sum.reach_labeled
        sum_beats_random = sum_images is not None and sum_images < self.hua_sum.final_labeled
        return "mean" if fewer_boxes and not sum_beats_random else "sum"

    @property
    def diversity_on(self) -> bool | None:
        if self.diversity is None or math.isnan(self.diversity.half):
            return None
        return self.diversity.mean >= 0 and self.diversity.mean - self.diversity.half > DIVERSITY_FLOOR

    def text(self, cycles: int, seeds: int) -> list[str]:
        """One paragraph per rule that has its runs; provisional until ``cycles`` cycles of ``seeds`` seeds."""
        done = self.cycles >= cycles and self.seeds >= seeds
        state = "" if done else f" (provisional: {self.cycles} cycle(s), {self.seeds} seed(s) so far)"
        out = []
        if self.aggregate is not None:
            s, m = self.hua_sum, self.hua_mean
            out.append(
                "Rule on HUA_AGGREGATE (docs/method.md, section 7): labeled boxes to reach random's final AP50, "
                f"HUA (mean) {_reach(m.reach_boxes, m.final_boxes)} against HUA (sum) "
                f"{_reach(s.reach_boxes, s.final_boxes)}; labeled images, HUA (sum) "
                f"{_reach(s.reach_labeled, s.final_labeled)} against random's {s.final_labeled:.0f}; "
                f"so HUA_AGGREGATE is **{self.aggregate}**{state}."
            )
        if self.diversity is not None:
            measured = (
                "Rule on HUA_DIVERSITY (docs/method.md, section 7): HUA (sum) + diversity - HUA (sum), mean over "
                f"cycles 1-{self.cycles - 1} = {self.diversity.text()}"
            )
            if self.diversity_on is None:
                out.append(
                    f"{measured} on {self.diversity.n} seed; the rule needs its 95 % interval, so it is "
                    "applied from 2 seeds on."
                )
            else:
                out.append(
                    f"{measured} (95 % interval over {self.diversity.n} seeds; on only if the mean is >= 0 and the "
                    f"lower end above {100 * DIVERSITY_FLOOR:+.0f}), "
                    f"so HUA_DIVERSITY is **{'on' if self.diversity_on else 'off'}**{state}."
                )
        return out


def hua_rules(all_curves: Sequence[Curve]) -> HuaRules | None:
    """The rules' inputs from the curves with the default loss; None when no rule has its runs."""
    by_strategy = {c.strategy: c for c in all_curves if c.loss == CANDIDATE_LOSS}
    random = by_strategy.get(BASELINE)
    hua_sum = by_strategy.get(HUA_SUM)
    if random is None or hua_sum is None:
        return None
    against_random = {s: compare(by_strategy[s], random) for s in (HUA_SUM, HUA_MEAN) if s in by_strategy}
    diverse = by_strategy.get(HUA_DIVERSE)
    pair = compare(diverse, hua_sum) if diverse is not None else None
    diversity = None if pair is None else pair.later
    used = [c for c in (random, hua_sum, by_strategy.get(HUA_MEAN), diverse) if c is not None]
    if against_random.get(HUA_MEAN) is None and diversity is None:
        return None
    return HuaRules(
        against_random.get(HUA_SUM),
        against_random.get(HUA_MEAN),
        diversity,
        min(len(c.labeled) for c in used),
        min(len(c.seeds) for c in used),
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
    head = "| cycle | labeled | " + " | ".join(f"{c.name} (n={len(c.seeds)})" for c in all_curves) + " |"
    lines = [head, "|---:|---:|" + "---:|" * len(all_curves)]
    for k in range(cycles):
        labeled = next(c.labeled[k] for c in all_curves if len(c.labeled) > k)
        cells = [_cell(getattr(c, metric)[k]) if len(c.labeled) > k else "" for c in all_curves]
        lines.append(f"| {k} | {labeled} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _reach(value: float | None, final: float) -> str:
    return "not reached" if value is None else f"{value:.0f} ({100 * value / final:.0f} %)"


def _text(interval: Interval | None, missing: str = "") -> str:
    return missing if interval is None else interval.text()


def _pair_table(
    columns: str, align: str, comparisons: Sequence[Comparison], cells: Callable[[Comparison], list[str]]
) -> str:
    """A table of comparisons: run, baseline and seeds, then ``columns``, whose cells ``cells(cmp)`` gives."""
    head = f"| run | vs | seeds | {columns} |"
    rows = [f"| {c.curve.name} | {c.baseline.name} | {len(c.seeds)} | {' | '.join(cells(c))} |" for c in comparisons]
    return "\n".join([head, f"|---|---|---:|{align}", *rows])


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """One row per comparison: paired differences per cycle and over cycles 1.., cycles at or above, labels and
    boxes to reach."""
    columns = (
        "AP50 - baseline per cycle: mean [95 % interval] | mean over cycles 1.. | mean AP50 >= baseline, cycles 1.. "
        "| labeled images to reach its final AP50 | labeled boxes to reach it"
    )
    return _pair_table(
        columns,
        "---|---|---:|---:|---:|",
        comparisons,
        lambda cmp: [
            "; ".join(d.text() for d in cmp.diff),
            _text(cmp.later),
            f"{cmp.at_or_above}/{cmp.compared}",
            f"{_reach(cmp.reach_labeled, cmp.final_labeled)} of {cmp.final_labeled:.0f}",
            f"{_reach(cmp.reach_boxes, cmp.final_boxes)} of {cmp.final_boxes:.0f}",
        ],
    )


def box_table(comparisons: Sequence[Comparison]) -> str:
    """One row per comparison at equal labeled boxes (``compare_per_box``), cycles 1.. of the baseline."""
    columns = (
        "AP50 - baseline at the baseline's labeled boxes, cycles 1..: mean [95 % interval] "
        "| mean over the cycles every seed spans"
    )

    def cells(cmp: Comparison) -> list[str]:
        per_box = compare_per_box(cmp)
        return ["; ".join(_text(d, "beyond its boxes") for d in per_box.diff), _text(per_box.later)]

    return _pair_table(columns, "---|---|", comparisons, cells)


def loss_table(comparisons: Sequence[Comparison]) -> str:
    """The loss ablation: per loss, the paired difference to the standard loss per cycle and over all cycles."""
    lines = [
        "| loss (random selection) | seeds | AP50 - standard per cycle: mean [95 % interval] "
        "| mean over the cycles [95 % interval] |",
        "|---|---:|---|---|",
    ]
    for cmp in comparisons:
        diffs = "; ".join(d.text() for d in cmp.diff)
        lines.append(f"| {cmp.curve.loss} | {len(cmp.seeds)} | {diffs} | {cmp.overall.text()} |")
    return "\n".join(lines)


PER_BOX = (
    "Per labeled box (each run's AP50 at the baseline's labeled boxes of the same seed and cycle, interpolated "
    "linearly between the run's cycles):"
)


def markdown(
    rows: Sequence[Row],
    title: str,
    preamble: Sequence[str] = (),
    plot_name: str | None = None,
    cycles: int = 5,
    seeds: int = 5,
) -> str:
    """The whole report: settings lines, AP50 and AP tables, the comparisons, the loss decision, the plot.

    ``cycles`` (0 included) and ``seeds`` are what the complete benchmark has: with
    fewer in the rows, the decision is marked provisional.
    """
    all_curves = curves(rows)
    if not all_curves:
        return f"## {title}\n\nNo complete cycle yet.\n"
    parts = [f"## {title}", "", *preamble, ""]
    parts += ["### AP50 (x100), mean ± std over seeds", "", metric_table(all_curves, "ap50"), ""]
    parts += ["### AP 0.5:0.95 (x100), mean ± std over seeds", "", metric_table(all_curves, "ap"), ""]
    for heading, comparisons in (
        ("Selection against random", selection_comparisons(all_curves)),
        ("HUA against CALD-style", against_cald(all_curves)),
    ):
        if comparisons:
            parts += [f"### {heading} (same loss, paired by seed)", "", "Per labeled image:", ""]
            parts += [comparison_table(comparisons), "", PER_BOX, "", box_table(comparisons), ""]
    losses = loss_comparisons(all_curves)
    if losses:
        parts += [
            "### Loss ablation (random selection: the same images for every loss, paired by seed)",
            "",
            loss_table(losses),
            "",
        ]
    decision = decide(all_curves)
    if decision:
        parts += [decision.text(cycles, seeds), ""]
    rules = hua_rules(all_curves)
    if rules:
        parts += [line for paragraph in rules.text(cycles, seeds) for line in (paragraph, "")]
    parts += ["### Labeled boxes (mean over seeds): what the annotator drew", "", _boxes_table(all_curves), ""]
    if plot_name:
        parts += [f"![AP50 against labeled images and boxes]({plot_name})", ""]
    return "\n".join(parts)


def _boxes_table(all_curves: Sequence[Curve]) -> str:
    cycles = max(len(c.labeled) for c in all_curves)
    lines = ["| cycle | " + " | ".join(c.name for c in all_curves) + " |", "|---:|" + "---:|" * len(all_curves)]
    for k in range(cycles):
        cells = [f"{c.boxes[k]:.0f}" if len(c.boxes) > k else "" for c in all_curves]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(rows: Sequence[Row]) -> str:
    """Median wall seconds per cycle of each run's training, evaluation and selection, and selection per image.

    Medians, not means: a benchmark run in pieces on a shared machine has cycles
    that include a pause (a suspended worker, a test suite run beside it), and
    one of those would move a mean by minutes.
    """
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.strategy, r.loss), []).append(r)
    lines = [
        "### Time per cycle (wall seconds, median over cycles and seeds; a shared cycle-0 training "
        "counts for each run)",
        "",
        "| run | train | evaluate | select | select per unlabeled image |",
        "|---|---:|---:|---:|---:|",
    ]
    for (strategy, loss), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != BASELINE, kv[0])):
        selecting = [r for r in group if r.unlabeled and r.picked]
        per_image = statistics.median(r.select_s / r.unlabeled for r in selecting) if selecting else 0.0
        select_s = statistics.median(r.select_s for r in selecting) if selecting else 0.0
        lines.append(
            f"| {strategy} + {loss} | {statistics.median(r.train_s for r in group):.1f} "
            f"| {statistics.median(r.eval_s for r in group):.1f} | {select_s:.1f} | {per_image:.3f} |"
        )
    return "\n".join(lines)


def _pair(interval: Interval | None) -> list[float] | None:
    """``[mean, half-width of its 95 % interval]``, or None."""
    return None if interval is None else [interval.mean, interval.half]


def summary_numbers(rows: Sequence[Row]) -> dict[str, object]:
    """The comparisons and the decision as plain numbers, for a json file next to the report."""
    all_curves = curves(rows)

    def numbers(cmp: Comparison) -> dict[str, object]:
        per_box = compare_per_box(cmp)
        return {
            "baseline": cmp.baseline.name,
            "seeds": cmp.seeds,
            "ap50_diff_mean": [d.mean for d in cmp.diff],
            "ap50_diff_half95": [d.half for d in cmp.diff],
            "ap50_later": _pair(cmp.later),
            "per_box_diff": [_pair(d) for d in per_box.diff],
            "per_box_later": _pair(per_box.later),
            "cycles_at_or_above": cmp.at_or_above,
            "cycles_compared": cmp.compared,
            "labeled_to_reach": cmp.reach_labeled,
            "boxes_to_reach": cmp.reach_boxes,
            "baseline_final_labeled": cmp.final_labeled,
            "baseline_final_boxes": cmp.final_boxes,
        }

    decision = decide(all_curves)
    rules = hua_rules(all_curves)
    return {
        "selection": {c.curve.name: numbers(c) for c in selection_comparisons(all_curves)},
        "against_cald": {c.curve.name: numbers(c) for c in against_cald(all_curves)},
        "loss": {c.curve.name: numbers(c) for c in loss_comparisons(all_curves)},
        "decision": None
        if decision is None
        else {
            "loss": decision.loss,
            "difference": decision.difference.mean,
            "half95": decision.difference.half,
            "seeds": decision.difference.n,
            "cycles": decision.cycles,
        },
        "hua_rules": None
        if rules is None
        else {
            "aggregate": rules.aggregate,
            "diversity": rules.diversity_on,
            "diversity_difference": None if rules.diversity is None else rules.diversity.mean,
            "diversity_half95": None if rules.diversity is None else rules.diversity.half,
            "seeds": rules.seeds,
            "cycles": rules.cycles,
        },
    }


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot(rows: Sequence[Row], path: Path | str, title: str) -> Path:
    """AP50 against labeled images (left) and labeled boxes (right): mean over seeds, band = min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_curves = curves(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, x_of, label in zip(axes, (lambda c: c.labeled, lambda c: c.boxes), ("labeled images", "labeled boxes")):
        for curve in all_curves:
            x = x_of(curve)
            (line,) = ax.plot(
                x,
                [100 * v for v in curve.mean()],
                marker="o",
                label=curve.name,
                linestyle="--" if curve.strategy == BASELINE else "-",
            )
            ax.fill_between(
                x,
                [100 * min(v) for v in curve.ap50],
                [100 * max(v) for v in curve.ap50],
                color=line.get_color(),
                alpha=0.12,
                linewidth=0,
            )
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test AP50 (x100)")
    axes[0].legend(fontsize=8, loc="lower right")
    seeds = sorted({s for c in all_curves for s in c.seeds})
    fig.suptitle(f"{title}: mean over {len(seeds)} seed(s), band = min..max over seeds", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

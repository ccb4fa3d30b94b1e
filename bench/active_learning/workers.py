"""Many steps at once: worker processes, progress bars, the CSV as rows come, the time limit.

:func:`run_all` spreads the simulation's steps (``bench.active_learning.loop``)
over worker processes (one torch thread each by default: on a small CPU that
scales better than intra-op threads), streams their rows to a CSV as they come
(``bench.active_learning.storage``), stops starting steps that would end after a
time limit, and shows a tqdm bar for the whole benchmark plus one per training
in each worker.
"""

from __future__ import annotations

import csv
import multiprocessing
import multiprocessing.sharedctypes
import multiprocessing.synchronize
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch
from tqdm import tqdm

from bench.active_learning.dataset import BenchDataset
from bench.active_learning.loop import Row, RunSpec, SimulationConfig, Step, plan, run_step
from bench.active_learning.storage import CSV_FIELDS, csv_record, read_rows, resumable, write_rows

RowCallback = Callable[[Row], None]


def run_all(
    specs: Sequence[RunSpec],
    data: Mapping[int, BenchDataset],
    config: SimulationConfig,
    csv_path: Path | str,
    workers: int = 1,
    threads: int = 1,
    resume: bool = False,
    max_minutes: float | None = None,
) -> list[Row]:
    """Run every spec's remaining cycles; returns every row in ``csv_path`` afterwards.

    Args:
        data (Mapping[int, BenchDataset]): each seed's pool and test split.
        resume (bool): keep the rows already in ``csv_path`` (any runs, so that
            invocations with different ``--runs`` add up) and continue each run
            where they stop; otherwise start a new CSV.
        max_minutes (float | None): start no step that would, at the longest step
            seen so far, end after this many minutes (the first steps always start).
    """
    rows = resumable(read_rows(csv_path), config.cycles) if resume else []
    write_rows(csv_path, rows)
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    left = sum(config.cycles + 1 - sum(1 for r in rows if r.run == s.run) for s in specs)
    with (
        Path(csv_path).open("a", newline="") as handle,
        tqdm(
            total=left,
            desc="benchmark",
            unit="cycle",
            position=0,
            dynamic_ncols=True,
        ) as overall,
        _executor(workers, threads, data, config) as pool,
    ):
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)

        def record(row: Row) -> None:
            writer.writerow(csv_record(row))
            handle.flush()
            rows.append(row)
            overall.update(1)
            overall.set_postfix_str(f"{row.strategy}/{row.loss}/s{row.seed} c{row.cycle} AP50 {row.ap50:.3f}")

        _schedule(specs, data, config, pool, max(1, workers), deadline, rows, record)
    write_rows(csv_path, rows)
    return rows


def _schedule(
    specs: Sequence[RunSpec],
    data: Mapping[int, BenchDataset],
    config: SimulationConfig,
    pool: Executor,
    slots: int,
    deadline: float | None,
    rows: list[Row],
    record: RowCallback,
) -> None:
    """Keep ``slots`` steps in flight until none is left or the next would pass ``deadline``
    (judged by the longest step so far: until one has finished, steps start)."""
    in_flight: dict[Future, tuple[Step, float]] = {}
    longest = 0.0
    while True:
        busy = {spec for step, _ in in_flight.values() for spec in step.specs}
        for step in plan(specs, rows, data, config):
            if len(in_flight) >= slots or (deadline is not None and longest and time.monotonic() + longest > deadline):
                break
            if not busy & set(step.specs):
                in_flight[pool.submit(_worker_step, step)] = (step, time.monotonic())
        if not in_flight:
            return
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in finished:
            _, started = in_flight.pop(future)
            longest = max(longest, time.monotonic() - started)
            for row in future.result():  # a worker's failure is raised here
                record(row)


_WORKER: dict[str, object] = {}


class _InProcess(Executor):
    """Runs each step at submission, in this process: ``workers=1`` takes the scheduler's one code path."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _executor(workers: int, threads: int, data: Mapping[int, BenchDataset], config: SimulationConfig) -> Executor:
    if workers <= 1:
        torch.set_num_threads(threads)
        _WORKER.update(data=data, config=config, slot=1)
        return _InProcess()
    context = multiprocessing.get_context("spawn")
    lock = context.RLock()  # tqdm's own lock belongs to the default (fork) context
    tqdm.set_lock(lock)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(lock, context.Value("i", 0), threads, data, config),
    )


def _init_worker(
    lock: multiprocessing.synchronize.RLock,
    slots: multiprocessing.sharedctypes.Synchronized,
    threads: int,
    data: Mapping[int, BenchDataset],
    config: SimulationConfig,
) -> None:
    """Each worker: tqdm's shared lock, a bar line of its own, its thread count and the data."""
    tqdm.set_lock(lock)
    with slots.get_lock():
        slots.value += 1
        _WORKER["slot"] = slots.value
    torch.set_num_threads(threads)
    _WORKER.update(data=data, config=config)


def _worker_step(step: Step) -> list[Row]:
    """:func:`run_step` with a tqdm bar for its training on the worker's own line."""
    data, config = _WORKER["data"][step.seed], _WORKER["config"]
    runs = "+".join(s.strategy for s in step.specs)
    with tqdm(
        total=100,
        position=int(_WORKER["slot"]),
        leave=False,
        unit="%",
        dynamic_ncols=True,
        desc=f"{runs}/{step.loss}/s{step.seed} c{step.cycle}",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
    ) as bar:

        def progress(fraction: float, message: str) -> None:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

        return run_step(step, data, config, progress)

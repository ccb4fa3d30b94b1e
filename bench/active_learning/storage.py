"""The benchmark's rows on disk: one CSV row per cycle of a run (:class:`~bench.active_learning.loop.Row`).

:func:`~bench.active_learning.workers.run_all` appends each row as it comes and
rewrites the file sorted at the end; :func:`resumable` says which rows a
resumed benchmark keeps.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable
from pathlib import Path

from bench.active_learning.loop import Row

CSV_FIELDS: tuple[str, ...] = (
    "strategy",
    "loss",
    "seed",
    "cycle",
    "labeled",
    "boxes",
    "ap50",
    "ap",
    "train_s",
    "eval_s",
    "select_s",
    "unlabeled",
    "picked",
)


def _parse(name: str, text: str) -> object:
    if name == "picked":
        return tuple(int(v) for v in text.split())
    kind = {"strategy": str, "loss": str, "seed": int, "cycle": int, "labeled": int, "boxes": int, "unlabeled": int}
    return kind.get(name, float)(text)


#: Loss names before issue 25 (2026-12-04), when the paper's form was ``synchronic-paper`` and our
#: balanced form ``synchronic``; a CSV with a ``synchronic-paper`` row uses them in every row.
LEGACY_LOSS_NAMES: dict[str, str] = {"synchronic-paper": "synchronic", "synchronic": "synchronic-balanced"}
LEGACY_MARKER = "synchronic-paper"
#: Columns that the first CSVs (bench/results/active_learning_quick.csv) do not have.
_OPTIONAL_FIELDS: dict[str, str] = {"unlabeled": "0", "picked": ""}


def read_rows(path: Path | str) -> list[Row]:
    """Rows of a CSV written by :func:`~bench.active_learning.workers.run_all` (an absent file: none),
    in today's loss names.

    A CSV in the names before issue 25 is recognised by its ``synchronic-paper`` rows, and its
    names are mapped (:data:`LEGACY_LOSS_NAMES`). ``run_all`` rewrites the whole file on
    ``--resume``, so a file never mixes the two namings; the committed results were rewritten.
    """
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        records = [{**_OPTIONAL_FIELDS, **record} for record in csv.DictReader(handle)]
    if any(record["loss"] == LEGACY_MARKER for record in records):
        records = [{**record, "loss": LEGACY_LOSS_NAMES.get(record["loss"], record["loss"])} for record in records]
    return [Row(**{k: _parse(k, v) for k, v in record.items()}) for record in records]


def csv_record(row: Row) -> dict[str, object]:
    return {**dataclasses.asdict(row), "picked": " ".join(map(str, row.picked))}


def write_rows(path: Path | str, rows: Iterable[Row]) -> None:
    """All rows, sorted by strategy, loss, seed and cycle."""
    ordered = sorted(rows, key=lambda r: (r.strategy, r.loss, r.seed, r.cycle))
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_record(r) for r in ordered)


def resumable(rows: Iterable[Row], cycles: int) -> list[Row]:
    """The rows a resumed benchmark keeps: of each run, its cycles 0, 1, ... up to the first gap."""
    by_run: dict[tuple[str, str, int], dict[int, Row]] = {}
    for r in rows:
        by_run.setdefault(r.run, {})[r.cycle] = r
    kept = []
    for done in by_run.values():
        cycle = 0
        while cycle in done and cycle <= cycles:
            kept.append(done[cycle])
            cycle += 1
    return kept

"""A ranking in shards: map steps over slices of the pool, reduce steps over their results.

A full ranking of N unlabeled tasks (docs/method.md sections 1-3) runs as

1. first-pass shards of RANK_SHARD_SIZE tasks: detections and gate entropy
   (``model.scoring.first_pass``), each written to ``first-<i>.pt``;
2. the gate over the whole pool (``pool_candidates``): ``candidates.json``,
   the candidates cut into shards of the same size;
3. mirrored-pass shards: the candidates' four metrics (``flipped_metrics``),
   each written to ``flip-<i>.pt``;
4. the ranking (``rank_first_pass``), then ``ranking.json`` and the push
   (``backend/jobs/rank.py``).

A run's files live in ``<version>/shards/<run>/`` (MODEL_DIR is shared by every
process that runs a shard). Shards run as child processes of the rank job
or as RQ jobs (``backend/jobs/runners.py``); either way a shard is the same
function, ``ShardWork.run``.

Same answer: a shard's size is a multiple of BATCH_SIZE, so every forward
batch holds the same images as in one pass over the pool, and the reduce steps
join the shards in pool order; the task scores are those of one process.

Supersede: ``<project>/.jobs/rank.run`` names the project's current run. A
newer ranking replaces it; every shard and step of an older run checks it
(between batches) and stops with ``Superseded``, so a stale order is never
pushed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from backend.images import ImageLoader
from backend.jobs.board import read_json
from model.detections import Detections
from model.detector import Detector
from model.hua import HUAConfig
from model.images import image_tensor
from model.progress import Progress
from model.scoring import (
    FirstPass,
    ImageSource,
    PoolScores,
    first_pass,
    first_pass_predict,
    flipped_metrics,
    pool_candidates,
    rank_first_pass,
)
from model.versions import Version, project_id

logger = logging.getLogger(__name__)

FIRST, FLIP = "first", "flip"
SHARDS_DIR = "shards"
RUN_FILE = "rank.run"


class Superseded(RuntimeError):
    """A newer ranking of the project replaced this run."""


class ShardFailed(RuntimeError):
    """A shard failed on every try; the ranking fails with its reason."""


def shard_size(setting: int, batch_size: int) -> int:
    """RANK_SHARD_SIZE rounded up to a multiple of BATCH_SIZE (so the batches are those of one pass)."""
    return math.ceil(setting / batch_size) * batch_size


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def claim_run(root: Path | str, project: str, run: str) -> str | None:
    """Make ``run`` the project's current ranking; returns the run it supersedes, if any."""
    path = Path(root) / project_id(project) / ".jobs" / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = current_run(root, project)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"run": run}))
    os.replace(tmp, path)
    return previous


def current_run(root: Path | str, project: str) -> str | None:
    try:
        data = read_json(Path(root) / project_id(project) / ".jobs" / RUN_FILE)
    except FileNotFoundError:
        return None
    return data.get("run") if isinstance(data, dict) else None


def ensure_current(root: Path | str, project: str, run: str) -> None:
    """Raise ``Superseded`` when a newer ranking of the project has started."""
    now = current_run(root, project)
    if now is not None and now != run:
        raise Superseded(f"a newer ranking of project {project} ({now}) replaced this one ({run})")


@dataclass(frozen=True)
class ShardPlan:
    """What every shard of a run reads: the pool in order, the labelled class frequency, the shard size.

    Attributes:
        items (list[list]): ``[task id, image url]`` of each unlabeled task, in pool order.
    """

    run: str
    project: str
    version: str
    items: list[list]
    labeled_freq: list[float]
    size: int

    @property
    def first_shards(self) -> int:
        return math.ceil(len(self.items) / self.size)

    def first_slice(self, index: int) -> list[list]:
        return self.items[index * self.size : (index + 1) * self.size]


class RunFolder:
    """A run's files in its version's folder: the plan, each shard's result, and what failed shards said."""

    def __init__(self, version: Version, run: str) -> None:
        self.path = version.path / SHARDS_DIR / run

    def write_plan(self, plan: ShardPlan) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path / "plan.json", json.dumps(plan.__dict__).encode())

    def plan(self) -> ShardPlan:
        return ShardPlan(**json.loads((self.path / "plan.json").read_text()))

    def result(self, stage: str, index: int) -> Path:
        return self.path / f"{stage}-{index:04d}.pt"

    def error(self, stage: str, index: int) -> Path:
        return self.path / f"{stage}-{index:04d}.error"

    def write_candidates(self, shards: list[list[int]]) -> None:
        _write_atomically(self.path / "candidates.json", json.dumps(shards).encode())

    def candidates(self) -> list[list[int]] | None:
        path = self.path / "candidates.json"
        return json.loads(path.read_text()) if path.exists() else None

    def mark_reduced(self, stage: str) -> None:
        _write_atomically(self.path / f"{stage}.reduced", b"")

    def reduced(self, stage: str) -> bool:
        """Whether ``stage``'s reduce step has run: its mark is there, or the run's folder is gone (the last
        reduce step, and one that fails, removes it)."""
        return (self.path / f"{stage}.reduced").exists() or not (self.path / "plan.json").exists()

    def done(self, stage: str, count: int) -> list[int]:
        return [i for i in range(count) if self.result(stage, i).exists()]

    def reason(self, stage: str, index: int) -> str:
        """Why a shard has no result: its last error, or that its process died without one."""
        path = self.error(stage, index)
        said = path.read_text().strip() if path.exists() else "its process died without a word (killed?)"
        return f"shard {stage} {index} failed: {said}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _detections_dict(det: Detections) -> dict:
    return {f.name: getattr(det, f.name) for f in fields(det)}


def save_first(path: Path, first: FirstPass) -> None:
    detections = [_detections_dict(d) for d in first.detections]
    _save(path, {"keys": first.keys, "detections": detections, "entropy": first.entropy, "failed": first.failed})


def load_first(path: Path) -> FirstPass:
    data = torch.load(path, weights_only=True)
    detections = [Detections(**d) for d in data["detections"]]
    return FirstPass(data["keys"], detections, data["entropy"], data["failed"])


def save_flip(path: Path, metrics: dict[Hashable, torch.Tensor], failed: dict[Hashable, str]) -> None:
    _save(path, {"metrics": metrics, "failed": failed})


def load_flip(path: Path) -> tuple[dict[Hashable, torch.Tensor], dict[Hashable, str]]:
    data = torch.load(path, weights_only=True)
    return data["metrics"], data["failed"]


def fetched_source(images: ImageLoader, items: list[list], workers: int) -> ImageSource:
    """The detector's input of each task of ``items``, fetched now (concurrently) and decoded when asked.

    A task whose image could not be fetched raises its fetch error when asked,
    so it fails in its place in the batch, as a decoding failure does.
    """
    fetched = dict(zip((i[0] for i in items), images.path_many([(url, k) for k, url in items], workers=workers)))

    def source(key: Hashable) -> torch.Tensor:
        path = fetched[key]
        if isinstance(path, Exception):
            raise path
        return image_tensor(images.decode(path))

    return source


def join_first(folder: RunFolder, plan: ShardPlan) -> FirstPass:
    """The first pass over the whole pool, from its shards' results, in pool order."""
    missing = [i for i in range(plan.first_shards) if not folder.result(FIRST, i).exists()]
    if missing:
        raise ShardFailed(folder.reason(FIRST, missing[0]))
    return FirstPass.join([load_first(folder.result(FIRST, i)) for i in range(plan.first_shards)])


def gate(folder: RunFolder, plan: ShardPlan, hua: HUAConfig) -> list[list[int]]:
    """The first reduce: the pool's candidates, cut into mirrored-pass shards (written to ``candidates.json``)."""
    candidates = pool_candidates(join_first(folder, plan), hua)
    shards = [candidates[i : i + plan.size] for i in range(0, len(candidates), plan.size)]
    folder.write_candidates(shards)
    return shards


def pool_scores(folder: RunFolder, plan: ShardPlan, hua: HUAConfig) -> PoolScores:
    """The second reduce: the pool's first pass and its candidates' metrics, ranked as one process ranks them."""
    first = join_first(folder, plan)
    metrics: dict[Hashable, torch.Tensor] = {}
    failed: dict[Hashable, str] = {}
    for index in range(len(folder.candidates() or [])):
        if not folder.result(FLIP, index).exists():
            raise ShardFailed(folder.reason(FLIP, index))
        shard_metrics, shard_failed = load_flip(folder.result(FLIP, index))
        metrics.update(shard_metrics)
        failed.update(shard_failed)
    return rank_first_pass(first, metrics, failed, hua)


def shard_progress(folder: RunFolder, plan: ShardPlan) -> tuple[float, str]:
    """(fraction, message) of a run from the results on disk: the first pass is the first 80 %."""
    first_done = folder.done(FIRST, plan.first_shards)
    scored = sum(len(plan.first_slice(i)) for i in first_done)
    candidates = folder.candidates()
    if candidates is None:
        fraction = 0.8 * scored / max(1, len(plan.items))
        return (
            fraction,
            f"{scored:,} of {len(plan.items):,} tasks scored, {len(first_done)} of {plan.first_shards} shards",
        )
    flip_done = folder.done(FLIP, len(candidates))
    checked = sum(len(candidates[i]) for i in flip_done)
    total = sum(len(c) for c in candidates)
    fraction = 0.8 + 0.2 * checked / max(1, total)
    return fraction, (
        f"{checked:,} of {total:,} candidates double-checked (mirrored), {len(flip_done)} of {len(candidates)} shards"
    )


@dataclass(frozen=True)
class ShardWork:
    """What a shard runs on besides the model of the plan's version: MODEL_DIR, the images, the HUA settings."""

    root: Path
    images: ImageLoader
    hua: HUAConfig
    batch_size: int
    fetch_workers: int

    def run(self, folder: RunFolder, load: Callable[[], Detector], stage: str, index: int) -> None:
        """Run shard ``index`` of ``stage`` with the detector ``load`` gives; write its result (or, raising, why)."""
        plan = folder.plan()
        check = self._checker(plan)
        try:
            check(0.0, "")
            detector = load()
            if stage == FIRST:
                self._first(folder, plan, detector, index, check)
            else:
                self._flip(folder, plan, detector, index, check)
        except Superseded:
            raise
        except BaseException as exc:
            said = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            _write_atomically(folder.error(stage, index), said[:500].encode())
            raise

    def _checker(self, plan: ShardPlan) -> Progress:
        return lambda fraction, message: ensure_current(self.root, plan.project, plan.run)

    def _first(self, folder: RunFolder, plan: ShardPlan, detector: Detector, index: int, check: Progress) -> None:
        items = plan.first_slice(index)
        source = fetched_source(self.images, items, self.fetch_workers)
        keys = [k for k, _ in items]
        first = first_pass(first_pass_predict(detector, self.hua), keys, source, self.hua, self.batch_size, check)
        save_first(folder.result(FIRST, index), first)

    def _flip(self, folder: RunFolder, plan: ShardPlan, detector: Detector, index: int, check: Progress) -> None:
        keys = (folder.candidates() or [])[index]
        wanted = set(keys)
        position = {key: i for i, (key, _) in enumerate(plan.items)}
        originals = {}
        for shard in sorted({position[key] // plan.size for key in keys}):
            first = load_first(folder.result(FIRST, shard))
            originals |= {k: d for k, d in first.by_key().items() if k in wanted}
        urls = dict(map(tuple, plan.items))
        source = fetched_source(self.images, [[k, urls[k]] for k in keys], self.fetch_workers)
        freq = torch.tensor(plan.labeled_freq, dtype=torch.float64)
        metrics, failed = flipped_metrics(detector, originals, keys, source, freq, self.hua, self.batch_size, check)
        save_flip(folder.result(FLIP, index), metrics, failed)

"""A version's stored ranking: its scale and the prediction of every task it scored.

Kept in the version's folder as ``ranking.json`` (written atomically), read by
every serving process through ``RankingCache``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model.hua import Scale
from model.versions import Version

RANKING_FILE = "ranking.json"

logger = logging.getLogger(__name__)


@dataclass
class StoredRanking:
    """A version's ranking: what a later task needs to be scored on the same scale
    (the Scale and the labelled class frequency CD compared against), per
    task id the prediction pushed to Label Studio, and per task of the last
    full ranking why it ranks there (``PoolScores.explain``: gate entropy and
    the four metrics), for /ui's queue."""

    scale: Scale | None = None
    labeled_freq: list[float] = field(default_factory=list)
    tasks: dict[int, dict] = field(default_factory=dict)
    details: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def read(cls, version: Version) -> StoredRanking:
        path = version.path / RANKING_FILE
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        scale = _scale(data.get("scale"), path)
        tasks = {int(k): v for k, v in data.get("tasks", {}).items()}
        details = {int(k): v for k, v in data.get("details", {}).items()}
        return cls(scale, data.get("labeled_freq", []), tasks, details)

    def write(self, version: Version) -> None:
        """Atomically (temporary file, then rename)."""
        path = version.path / RANKING_FILE
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        body = {
            "scale": self.scale.to_json() if self.scale else None,
            "labeled_freq": self.labeled_freq,
            "tasks": {str(k): v for k, v in self.tasks.items()},
            "details": {str(k): v for k, v in self.details.items()},
        }
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)


def _scale(data: dict | None, path: Path) -> Scale | None:
    """The stored scale; ``None`` (the next ranking is a full one) for none, or for an
    older format that places tasks by other rules than the serving code's."""
    if not data:
        return None
    try:
        return Scale.from_json(data)
    except ValueError as error:
        logger.warning("%s: its scale is not used (%s); the next ranking ranks the whole pool", path, error)
        return None


class RankingCache:
    """Stored rankings in memory, re-read when their file changes (another process ranked)."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[float, StoredRanking]] = {}
        self._lock = threading.Lock()

    def get(self, version: Version) -> StoredRanking:
        path = version.path / RANKING_FILE
        mtime = path.stat().st_mtime if path.exists() else 0.0
        with self._lock:
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, StoredRanking.read(version))
                self._cache[path] = cached
            return cached[1]

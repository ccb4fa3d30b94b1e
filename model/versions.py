"""Model versions on disk: ``<root>/<project>/<version>/{weights.pt, meta.json}``.

A version is written into a hidden temporary folder and renamed into place, so
a crash mid-write never leaves a half-written version that could be loaded:
readers only ever see folders whose name is a version and whose meta.json exists.
Several processes (gunicorn workers, RQ workers) share one store; a lock file
per project serialises the choice of the next version name.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from model.owners import ProcessOwner
from model.version_meta import VersionMeta

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
META_FILE = "meta.json"
OWNER_FILE = "owner.json"  # in a temporary folder: the process writing it (removed before the rename)
_VERSION = re.compile(r"^v(\d{4,})$")
PROJECT_ID_DIGITS = 12
# ASCII digits only ("١٢" and "²" are str.isdigit() too), no leading zero ("0001" would be a second project 1).
_PROJECT = re.compile(rf"^[1-9][0-9]{{0,{PROJECT_ID_DIGITS - 1}}}$")


def project_id(raw: str) -> str:
    """The one rule for a project id, in the folder names of the store and the job board and in every route.

    Label Studio's ids are positive integers; their canonical decimal form is
    the only spelling accepted, so that one project has one folder.

    Raises:
        ValueError: ``raw`` is not that form (the message says what is).
    """
    if not isinstance(raw, str) or not _PROJECT.fullmatch(raw):
        raise ValueError(
            f"invalid project id {str(raw)[:20]!r}: a positive integer in ASCII digits without leading zeros, "
            f"at most {PROJECT_ID_DIGITS} digits"
        )
    return raw


def is_project_id(name: str) -> bool:
    return bool(_PROJECT.fullmatch(name))


class CheckpointError(ValueError):
    """A checkpoint that does not fit the detector it should be loaded into."""


@dataclass(frozen=True)
class Version:
    """One complete version of a project's model."""

    project: str
    name: str
    path: Path
    meta: VersionMeta

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE


def version_name(number: int) -> str:
    """``v0001``, ``v0002``...: zero-padded so that name order is creation order."""
    return f"v{number:04d}"


class VersionStore:
    """Versions of every project's model under one root folder.

    Args:
        root (Path): MODEL_DIR; created when missing.
        keep (int): versions kept per project (KEEP_VERSIONS; 0: all), see ``prune``.
    """

    def __init__(self, root: Path | str, keep: int = 0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def _project_dir(self, project: str) -> Path:
        return self.root / project_id(project)

    def projects(self) -> list[str]:
        """Projects that have at least one complete version."""
        return sorted(p.name for p in self.root.iterdir() if is_project_id(p.name) and self.versions(p.name))

    def versions(self, project: str) -> list[Version]:
        """Complete versions of ``project``, oldest first."""
        folder = self._project_dir(project)
        if not folder.is_dir():
            return []
        found = []
        for path in _version_folders(folder):
            if (path / META_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
                meta = _read_meta(path)
                if meta is not None:
                    found.append(Version(project, path.name, path, meta))
        return found

    def latest(self, project: str) -> Version | None:
        """The newest complete version, or None."""
        versions = self.versions(project)
        return versions[-1] if versions else None

    def get(self, project: str, name: str) -> Version | None:
        """A version by name, or None when it does not exist (or is incomplete)."""
        return next((v for v in self.versions(project) if v.name == name), None)

    @contextmanager
    def _locked(self, project: str) -> Iterator[Path]:
        folder = self._project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def save(self, project: str, state_dict: dict[str, torch.Tensor], meta: VersionMeta) -> Version:
        """Write a new version atomically and return it.

        ``meta`` is stored with ``model_version``, ``project``, ``created`` and
        ``writer`` (the process, so that a job killed just after publishing it
        can be recognised as done) set. What killed saves left is removed
        first (``clean_partial``).
        """
        self.clean_partial(project)
        with self._staged(project, state_dict) as tmp, self._locked(project):
            return self._publish(project, tmp, meta)

    def newest_or_save(
        self,
        project: str,
        fits: Callable[[Version], bool],
        make: Callable[[], tuple[dict[str, torch.Tensor], VersionMeta]],
    ) -> tuple[Version, bool]:
        """The newest version that ``fits``, else a new one from ``make()`` (state dict, meta); True if made.

        Decided under the project's lock, so that concurrent first calls in
        several processes (gunicorn workers) make one version, not one each.
        """
        self.clean_partial(project)
        with self._locked(project):
            found = next((v for v in reversed(self.versions(project)) if fits(v)), None)
            if found is not None:
                return found, False
            state_dict, meta = make()
            with self._staged(project, state_dict) as tmp:
                return self._publish(project, tmp, meta), True

    @contextmanager
    def _staged(self, project: str, state_dict: dict[str, torch.Tensor]) -> Iterator[Path]:
        """The weights written into a temporary folder that names its writer; removed if anything fails."""
        folder = self._project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            (tmp / OWNER_FILE).write_text(json.dumps(ProcessOwner.current().to_json()))
            torch.save(state_dict, tmp / WEIGHTS_FILE)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _publish(self, project: str, tmp: Path, meta: VersionMeta) -> Version:
        """Name the staged folder as the next version and rename it into place (the caller holds the lock)."""
        taken = _version_folders(tmp.parent)  # damaged versions too: their names stay taken
        name = version_name(_version_number(taken[-1]) + 1 if taken else 1)
        full_meta = replace(meta, model_version=name, project=project, created=_now(), writer=ProcessOwner.current())
        _write_json(tmp / META_FILE, full_meta.to_json())
        (tmp / OWNER_FILE).unlink()
        os.rename(tmp, tmp.parent / name)
        self._prune(project)
        return Version(project, name, tmp.parent / name, full_meta)

    def _prune(self, project: str) -> list[str]:
        """Remove old versions beyond ``keep`` (the caller holds the lock); returns their names.

        Kept whatever their age: the newest ``keep``, and for each label set
        and backbone its newest version (what serves those labels, and what a
        switch back to them finds) with its parent.
        """
        versions = self.versions(project)
        if not self.keep or len(versions) <= self.keep:
            return []
        newest: dict[str, Version] = {}
        for version in versions:
            newest[json.dumps([version.meta.labels, version.meta.backbone])] = version
        kept = {v.name for v in versions[-self.keep :]} | {v.name for v in newest.values()}
        kept |= {v.meta.parent for v in newest.values()}
        gone = [v for v in versions if v.name not in kept]
        for version in gone:
            shutil.rmtree(version.path, ignore_errors=True)
        return [v.name for v in gone]

    def clean_partial(self, project: str, older_than: float = 3600.0) -> int:
        """Remove temporary folders left by killed writers; returns how many.

        A folder whose writer is gone goes at once; one whose writer cannot be
        told (another host, no owner file yet) only when untouched for
        ``older_than`` seconds, as it may be a save in progress elsewhere.
        """
        folder = self._project_dir(project)
        stale = [p for p in folder.glob(".tmp-*") if _abandoned(p, older_than)] if folder.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)


def _version_number(path: Path) -> int:
    return int(_VERSION.match(path.name).group(1))


def _version_folders(folder: Path) -> list[Path]:
    """The folders of ``folder`` named as versions, oldest first (v10000 after v9999)."""
    return sorted((p for p in folder.iterdir() if _VERSION.match(p.name)), key=_version_number)


def _read_meta(path: Path) -> VersionMeta | None:
    """A version's metadata; None, with a warning, when its meta.json cannot be read.

    A damaged file (a disk error, a hand edit) must cost that version only:
    raising here would stop every reader of the project, the serving model included.
    """
    try:
        return VersionMeta.from_json(json.loads((path / META_FILE).read_text()))
    except (OSError, ValueError) as exc:
        _warn_damaged(str(path), f"{type(exc).__name__}: {exc}")
        return None


@functools.lru_cache(maxsize=256)
def _warn_damaged(path: str, reason: str) -> None:
    """Logged once per folder and reason in a process: readers list versions on every request."""
    logger.warning("ignoring version %s: its %s cannot be read (%s)", path, META_FILE, reason)


def _abandoned(tmp: Path, older_than: float) -> bool:
    """A temporary folder whose writer is gone, or untouched for ``older_than`` seconds."""
    try:
        if time.time() - tmp.stat().st_mtime > older_than:
            return True
        owner = ProcessOwner.from_json(json.loads((tmp / OWNER_FILE).read_text()))
    except (OSError, ValueError):
        return False
    return owner is not None and owner.is_gone()


def load_weights(version: Version, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The state dict of a version (tensors only: ``weights_only`` loading)."""
    return torch.load(version.weights_path, map_location=map_location, weights_only=True)


def check_backbone(meta: VersionMeta, backbone: str) -> None:
    """Refuse a checkpoint made with another backbone: its weights belong to another architecture.

    Raises:
        CheckpointError: naming both backbones.
    """
    if meta.backbone != backbone:
        raise CheckpointError(f"checkpoint backbone {meta.backbone!r} differs from {backbone!r}")


def check_meta(meta: VersionMeta, labels: list[str], backbone: str) -> None:
    """Refuse a checkpoint whose classes or backbone differ from what is asked.

    Raises:
        CheckpointError: naming the field that disagrees.
    """
    check_backbone(meta, backbone)
    if list(meta.labels) != list(labels):
        raise CheckpointError(f"checkpoint labels {meta.labels} differ from the project's {list(labels)}")


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

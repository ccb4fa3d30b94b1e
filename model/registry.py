"""The model each project is served with, loaded from the version store.

Serving reads ``registry.get(...)`` once per request and keeps that object for
the whole request, so swapping in a new version (``reload``) is atomic for
readers: requests in flight finish on the model they started with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from torchvision.models.detection import FasterRCNN

from model.detector import (
    Detector,
    DetectorConfig,
    WeightsReport,
    build_empty_model,
    build_model,
    select_device,
    warm_start,
)
from model.losses import LossConfig
from model.version_meta import VersionMeta
from model.versions import CheckpointError, Version, VersionStore, check_backbone, check_meta, load_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """A loaded version: the detector and the version it came from."""

    detector: Detector
    version: Version

    @property
    def name(self) -> str:
        return self.version.name


def load_version_model(config: DetectorConfig, version: Version, *, loss: LossConfig = LossConfig()) -> FasterRCNN:
    """The model of a stored version (architecture from ``config``, classes from its meta), training with ``loss``.

    Raises:
        CheckpointError: the version was made with another backbone (BACKBONE
            changed, or BACKBONE=auto chose differently on another machine):
            its weights belong to another architecture and are never loaded.
    """
    check_backbone(version.meta, config.backbone)
    model = build_empty_model(config, len(version.meta.labels), loss=loss)
    model.load_state_dict(load_weights(version))
    return model


class ModelRegistry:
    """Loads, creates and caches one serving model per project.

    A project without a version gets one made from the configured base
    weights (saved as its first version, so that what serves is always on
    disk). A version whose labels no longer match the project's label config
    is replaced the same way, with a warning.

    Args:
        store (VersionStore): where versions live.
        config (DetectorConfig): backbone, base weights, thresholds.
        device (str): DEVICE ("auto", "cpu" or "cuda"), resolved at the first model loaded.
    """

    def __init__(self, store: VersionStore, config: DetectorConfig, device: str, refresh_every: float = 2.0) -> None:
        self.store = store
        self.config = config
        self.device_name = device
        self.refresh_every = refresh_every
        self._checked: dict[str, float] = {}
        self._served: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self._project_locks: dict[str, threading.Lock] = {}
        self.weights_reports: dict[str, WeightsReport] = {}

    def _project_lock(self, project: str) -> threading.Lock:
        with self._lock:
            return self._project_locks.setdefault(project, threading.Lock())

    @cached_property
    def device(self) -> torch.device:
        """Where models run; resolved on first use, so building a registry never touches CUDA."""
        return select_device(self.device_name)

    def serving(self) -> dict[str, str]:
        """The version each project is served with in this process (only projects loaded so far); loads nothing."""
        return {project: served.name for project, served in list(self._served.items())}

    def peek(self, project: str) -> ServedModel | None:
        """The model serving ``project`` now, without loading anything."""
        return self._served.get(project)

    def get(self, project: str, labels: Sequence[str], aliases: dict[str, list[str]] | None = None) -> ServedModel:
        """The model serving ``project`` for these labels, loading or creating it once."""
        served = self._served.get(project)
        if served is not None and served.detector.labels == list(labels):
            return self._refreshed(project, served)
        with self._project_lock(project):
            served = self._served.get(project)
            if served is None or served.detector.labels != list(labels):
                served = self._load_or_create(project, list(labels), aliases or {})
                self._served[project] = served
            return served

    def _refreshed(self, project: str, served: ServedModel) -> ServedModel:
        """``served``, or a newer version another process wrote (checked every ``refresh_every`` s)."""
        now, last = time.monotonic(), self._checked.get(project)
        if last is not None and now - last < self.refresh_every:  # monotonic's origin is arbitrary
            return served
        self._checked[project] = now
        latest = self.store.latest(project)
        if latest is None or latest.name == served.name or not self._fits(latest, served.detector.labels):
            return served
        return self.reload(project) or served

    def _fits(self, version: Version, labels: list[str]) -> bool:
        """The version has these labels and this registry's backbone."""
        try:
            check_meta(version.meta, labels, self.config.backbone)
        except CheckpointError:
            return False
        return True

    def reload(self, project: str) -> ServedModel | None:
        """Swap to the newest version on disk, if it differs from the one serving.

        A newest version of another backbone is not loaded: the current model
        keeps serving (None when there is none).
        """
        latest = self.store.latest(project)
        current = self._served.get(project)
        if latest is None or (current is not None and current.name == latest.name):
            return current
        with self._project_lock(project):
            try:
                served = self._load(latest)
            except CheckpointError as exc:
                logger.warning("project %s: not serving %s: %s", project, latest.name, exc)
                return current
            self._served[project] = served
            logger.info("project %s now serves %s", project, latest.name)
            return served

    def version_for(self, project: str, labels: Sequence[str], aliases: dict[str, list[str]] | None = None) -> Version:
        """The newest version made for ``labels`` (and this backbone), or a new one for them (``_new_model``).

        A label config changed back finds the version trained for it, not a
        new untrained one. Decided under the store's lock for the project:
        gunicorn workers that get their first request at once make one version.
        """
        return self._version_for(project, list(labels), aliases or {})[0]

    def _version_for(
        self, project: str, labels: list[str], aliases: dict[str, list[str]]
    ) -> tuple[Version, FasterRCNN | None]:
        """``version_for``, with the model when it was just made (so that it is not loaded again)."""
        built: list[FasterRCNN] = []

        def make() -> tuple[dict[str, torch.Tensor], VersionMeta]:
            model, meta = self._new_model(project, labels, aliases)
            built.append(model)
            return model.state_dict(), meta

        version, made = self.store.newest_or_save(project, lambda v: self._fits(v, labels), make)
        return version, built[0] if made else None

    def _new_model(
        self, project: str, labels: list[str], aliases: dict[str, list[str]]
    ) -> tuple[FasterRCNN, VersionMeta]:
        """A model for a label set the project has no version for, and its meta.

        Warm-started from the project's newest trained version of this backbone
        when there is one: the classes it knows keep their weights, new ones
        get fresh classifier rows (``model.detector.warm_start``). Otherwise
        from the configured base weights.
        """
        versions = self.store.versions(project)
        level = logging.WARNING if versions else logging.INFO  # a label config (or BACKBONE) changed
        source = next(
            (v for v in reversed(versions) if v.meta.trained and v.meta.backbone == self.config.backbone), None
        )
        if source is None:
            model, report = build_model(self.config, labels, aliases)
            self.weights_reports[project] = report
            logger.log(
                level, "project %s: no version for labels %s; a new model from %s weights", project, labels, report.used
            )
            return model, self._base_meta(labels, report)
        logger.log(level, "project %s: no version for labels %s; warm-starting from %s", project, labels, source.name)
        model = warm_start(replace(self.config, weights=str(source.path)), labels)
        meta = VersionMeta(
            labels=labels,
            backbone=self.config.backbone,
            weights=f"{source.name} (warm start)",
            weights_requested=self.config.weights,
            parent=source.name,
        )
        return model, meta

    def _load_or_create(self, project: str, labels: list[str], aliases: dict[str, list[str]]) -> ServedModel:
        version, model = self._version_for(project, labels, aliases)
        if model is None:
            return self._load(version)
        logger.info("project %s: created %s (%s)", project, version.name, version.meta.weights)
        return ServedModel(Detector(model, labels, self.device), version)

    def load(self, version: Version) -> ServedModel:
        """A stored version's model, built anew (not the cached serving one): what a ranking's shard runs,
        whichever version serves by then."""
        return self._load(version)

    def _load(self, version: Version) -> ServedModel:
        model = load_version_model(self.config, version)
        return ServedModel(Detector(model, version.meta.labels, self.device), version)

    def _base_meta(self, labels: list[str], report: WeightsReport) -> VersionMeta:
        """The meta of a version made from base weights (it has no parent)."""
        if report.fell_back:
            logger.warning(
                "weights %s unavailable, using %s: %s", report.requested, report.used, "; ".join(report.reasons)
            )
        return VersionMeta(
            labels=labels,
            backbone=self.config.backbone,
            weights=report.used,
            weights_requested=report.requested,
            parent=None,
        )

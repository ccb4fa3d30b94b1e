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
from dataclasses import dataclass

import torch
from torchvision.models.detection import FasterRCNN

from model.detector import Detector, DetectorConfig, WeightsReport, build_empty_model, build_model
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


def load_version_model(config: DetectorConfig, version: Version) -> FasterRCNN:
    """The model of a stored version (architecture from ``config``, classes from its meta).

    Raises:
        CheckpointError: the version was made with another backbone (BACKBONE
            changed, or BACKBONE=auto chose differently on another machine):
            its weights belong to another architecture and are never loaded.
    """
    check_backbone(version.meta, config.backbone)
    model = build_empty_model(config, len(version.meta["labels"]))
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
        device (torch.device): where models run.
    """

    def __init__(
        self, store: VersionStore, config: DetectorConfig, device: torch.device, refresh_every: float = 2.0
    ) -> None:
        self.store = store
        self.config = config
        self.device = device
        self.refresh_every = refresh_every
        self._checked: dict[str, float] = {}
        self._served: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self._project_locks: dict[str, threading.Lock] = {}
        self.weights_reports: dict[str, WeightsReport] = {}

    def _project_lock(self, project: str) -> threading.Lock:
        with self._lock:
            return self._project_locks.setdefault(project, threading.Lock())

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

    def _load_or_create(self, project: str, labels: list[str], aliases: dict[str, list[str]]) -> ServedModel:
        """The newest version if it fits, else a new one from base weights.

        Decided under the store's lock for the project: gunicorn workers that
        get their first request at once make one version and serve the same.
        """
        built: list[tuple[FasterRCNN, WeightsReport]] = []

        def make() -> tuple[dict[str, torch.Tensor], dict]:
            latest = self.store.latest(project)
            if latest is not None:
                logger.warning("project %s: %s does not fit labels %s and backbone %s; starting a new model from "
                               "base weights", project, latest.name, labels, self.config.backbone)
            built.append(build_model(self.config, labels, aliases))
            return built[0][0].state_dict(), self._base_meta(labels, built[0][1])

        version, made = self.store.latest_or_save(project, lambda v: self._fits(v, labels), make)
        if not made:
            return self._load(version)
        model, report = built[0]
        self.weights_reports[project] = report
        logger.info("project %s: created %s from %s weights", project, version.name, report.used)
        return ServedModel(Detector(model, labels, self.device), version)

    def _load(self, version: Version) -> ServedModel:
        model = load_version_model(self.config, version)
        return ServedModel(Detector(model, version.meta["labels"], self.device), version)

    def _base_meta(self, labels: list[str], report: WeightsReport) -> dict:
        """The meta of a version made from base weights (it has no parent)."""
        if report.fell_back:
            logger.warning("weights %s unavailable, using %s: %s", report.requested, report.used, "; ".join(report.reasons))
        return {
            "labels": labels,
            "backbone": self.config.backbone,
            "weights": report.used,
            "weights_requested": report.requested,
            "parent": None,
        }

"""The long-lived parts of one backend process, built once from Settings.

``build_service`` builds every part up front; none of them loads a model or
touches the GPU when built (the registry loads a project's model at its first
``get``), so building the app and answering /health or /setup stay cheap.
Tests and embedders pass their own Label Studio client or job runner through
its keyword arguments instead of replacing attributes afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from flask import Flask, current_app

from backend.admission import Admission
from backend.deferred import DeferredTasks
from backend.images import ImageLoader, ImagePolicy
from backend.inference import InferenceQueue
from backend.jobs.board import JobBoard
from backend.jobs.runners import EmbeddedRunner, JobSlots, RQRunner
from backend.jobs.scheduler import Scheduler
from backend.lsclient import LabelStudioAuth, LabelStudioClient
from backend.metrics import ServiceMetrics
from backend.predictions import TaskPredictor
from backend.ranking_store import RankingCache
from backend.settings import Settings
from model.detector import device_kind
from model.registry import ModelRegistry
from model.versions import VersionStore

RQ_QUEUE = "hua"
# Tries after the first for a job's call to Label Studio: 1 + 2 + 4 + 8 s of backoff, about 15 s of restart.
LS_RETRIES = 4


class Runner(Protocol):
    """Starts a job somewhere else (a child process, an RQ worker); returns at once."""

    def submit(self, project: str, kind: str) -> None: ...


@dataclass(frozen=True)
class Service:
    """Settings and the parts they build; routes read them, job factories hand them on one by one."""

    settings: Settings
    metrics: ServiceMetrics
    auth: LabelStudioAuth
    ls_client: LabelStudioClient
    store: VersionStore
    registry: ModelRegistry
    images: ImageLoader
    predictor: TaskPredictor
    inference: InferenceQueue
    admission: Admission
    rankings: RankingCache
    board: JobBoard
    scheduler: Scheduler
    deferred: DeferredTasks


#: Where ``create_app`` keeps the app's Service: ``Flask.extensions``, as Flask's own extensions do.
_EXTENSION = "hua"


def attach_service(app: Flask, service: Service) -> None:
    """Make ``service`` the one that ``app``'s views reach through :func:`app_service`."""
    app.extensions[_EXTENSION] = service


def app_service(app: Flask | None = None) -> Service:
    """The Service of ``app``; by default of the app handling the current request."""
    return (current_app if app is None else app).extensions[_EXTENSION]


def build_service(
    settings: Settings, *, ls_client: LabelStudioClient | None = None, runner: Runner | None = None
) -> Service:
    """Every part of a backend process for ``settings``.

    Args:
        ls_client: how jobs call Label Studio (default: the API with the
            backend's token, retried with backoff so that a restart of Label
            Studio does not fail a job).
        runner: where scheduled jobs run (default: RQ when REDIS_URL is set,
            else child processes of this one).
    """
    auth = LabelStudioAuth(settings.label_studio_url, settings.api_key)
    store = VersionStore(settings.model_dir, keep=settings.keep_versions)
    registry = ModelRegistry(store, settings.detector_config(device_kind(settings.device)), settings.device)
    images = ImageLoader(_image_policy(settings), auth.access_token)
    board = JobBoard(settings.model_dir, stale_after=settings.job_timeout)
    runner = runner or _default_runner(settings, board, registry)
    return Service(
        settings=settings,
        metrics=ServiceMetrics(),
        auth=auth,
        ls_client=ls_client or LabelStudioClient(auth, retries=LS_RETRIES),
        store=store,
        registry=registry,
        images=images,
        predictor=TaskPredictor(
            images,
            settings.hua_config(),
            batch_size=settings.batch_size,
            fetch_workers=settings.fetch_workers,
            display_threshold=settings.display_threshold,
        ),
        inference=InferenceQueue(settings.batch_size),
        admission=Admission(settings.threads - settings.light_threads),
        rankings=RankingCache(),
        board=board,
        scheduler=Scheduler(board, runner.submit, settings.train_every),
        deferred=DeferredTasks(settings.model_dir),
    )


def _default_runner(settings: Settings, board: JobBoard, registry: ModelRegistry) -> Runner:
    """RQ when REDIS_URL is set; else child processes, after which this process serves the new version at once."""
    if settings.redis_url:
        return RQRunner(settings.redis_url, RQ_QUEUE, settings.job_timeout, root=settings.model_dir)
    slots = JobSlots(settings.model_dir, settings.max_job_processes, stale_after=settings.job_timeout)
    return EmbeddedRunner(board, swap_when_done(registry), env=os.environ | settings.to_env(), slots=slots)


def swap_when_done(registry: ModelRegistry) -> Callable[[str, str, bool], None]:
    """An embedded job's ``on_done``: a project this process serves is swapped to the new version at once,
    not at the registry's next refresh; a failed job leaves the serving model alone."""

    def finished(project: str, kind: str, ok: bool) -> None:
        if ok and project in registry.serving():
            registry.reload(project)

    return finished


def _image_policy(settings: Settings) -> ImagePolicy:
    """Where images may come from, and how big and slow they may be (the security settings)."""
    s = settings
    return ImagePolicy(
        label_studio_url=s.label_studio_url,
        allowed_hosts=s.image_hosts,
        document_root=os.path.abspath(s.local_files_document_root) if s.local_files_document_root else "",
        max_pixels=s.max_image_pixels,
        timeout=s.fetch_timeout,
        cache_dir=s.image_cache_dir or os.path.join(s.model_dir, ".cache", "images"),
    )

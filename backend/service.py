"""The long-lived parts of one backend process, built once from Settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from backend.admission import Admission
from backend.images import ImageLoader, ImagePolicy
from backend.inference import InferenceQueue
from backend.jobs import EmbeddedRunner, JobBoard, JobSlots, RQRunner, Scheduler
from backend.lsclient import LabelStudioAuth, LabelStudioClient
from backend.metrics import ServiceMetrics
from backend.ranking_store import RankingCache
from backend.settings import Settings
from model.detector import DetectorConfig, device_kind, select_device
from model.registry import ModelRegistry
from model.versions import VersionStore

RQ_QUEUE = "hua"
# Tries after the first for a job's call to Label Studio: 1 + 2 + 4 + 8 s of backoff, about 15 s of restart.
LS_RETRIES = 4


@dataclass
class Service:
    """Settings plus what they build: version store, models, image loader, metrics.

    The model registry is created on first use, so building the app (and
    answering /health or /setup) never imports weights or touches the GPU.
    """

    settings: Settings
    metrics: ServiceMetrics

    @classmethod
    def create(cls, settings: Settings) -> "Service":
        return cls(settings=settings, metrics=ServiceMetrics())

    @cached_property
    def store(self) -> VersionStore:
        return VersionStore(self.settings.model_dir, keep=self.settings.keep_versions)

    @cached_property
    def detector_config(self) -> DetectorConfig:
        """The detector on this machine: BACKBONE=auto chosen for DEVICE, no CUDA context created."""
        return self.settings.detector_config(device_kind(self.settings.device))

    @cached_property
    def registry(self) -> ModelRegistry:
        device = select_device(self.settings.device)
        return ModelRegistry(self.store, self.detector_config, device)

    @cached_property
    def inference(self) -> InferenceQueue:
        """The process's one way to the model: requests batch together instead of competing for the cores."""
        return InferenceQueue(self.settings.batch_size)

    @cached_property
    def admission(self) -> Admission:
        """How many /predict calls may hold a thread at once: all but LIGHT_THREADS of the worker's THREADS."""
        return Admission(self.settings.threads - self.settings.light_threads)

    @cached_property
    def auth(self) -> LabelStudioAuth:
        return LabelStudioAuth(self.settings.label_studio_url, self.settings.api_key)

    @cached_property
    def rankings(self) -> RankingCache:
        return RankingCache()

    @cached_property
    def ls_client(self) -> LabelStudioClient:
        """Jobs call Label Studio through this: retried with backoff, so a restart of Label Studio does not fail them."""
        return LabelStudioClient(self.auth, retries=LS_RETRIES)

    @cached_property
    def board(self) -> JobBoard:
        return JobBoard(self.settings.model_dir, stale_after=self.settings.job_timeout)

    @cached_property
    def scheduler(self) -> Scheduler:
        """Jobs go to RQ when REDIS_URL is set, else to child processes of this one."""
        if self.settings.redis_url:
            runner = RQRunner(self.settings.redis_url, RQ_QUEUE, self.settings.job_timeout)
        else:
            slots = JobSlots(self.settings.model_dir, self.settings.max_job_processes, stale_after=self.settings.job_timeout)
            runner = EmbeddedRunner(self.board, self._job_finished, env=os.environ | self.settings.to_env(), slots=slots)
        return Scheduler(self.board, runner.submit, self.settings.train_every)

    def _job_finished(self, project: str, kind: str, ok: bool) -> None:
        """Swap the serving model as soon as an embedded job wrote a new version."""
        if ok and "registry" in self.__dict__:
            self.registry.reload(project)

    @cached_property
    def images(self) -> ImageLoader:
        s = self.settings
        policy = ImagePolicy(
            label_studio_url=s.label_studio_url,
            allowed_hosts=s.image_hosts,
            document_root=os.path.abspath(s.local_files_document_root) if s.local_files_document_root else "",
            max_pixels=s.max_image_pixels,
            timeout=s.fetch_timeout,
            cache_dir=s.image_cache_dir or os.path.join(s.model_dir, ".cache", "images"),
        )
        return ImageLoader(policy, self.auth.access_token)

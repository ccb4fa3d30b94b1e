"""Every setting of the service, read from the environment once.

Names follow label-studio-ml 2.x where it has one (BASIC_AUTH_USER,
BASIC_AUTH_PASS, LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, MODEL_DIR, LOG_LEVEL,
WORKERS, THREADS); the rest are ours and documented in the README's table,
which mirrors ``ENVIRONMENT`` below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse

from model.detector import WEIGHT_SOURCES, DetectorConfig, resolve_backbone
from model.hua import HUAConfig
from model.losses import LossConfig
from model.train import TrainConfig


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Build it with ``Settings.from_env``.

    Secrets (``api_key``, ``basic_auth_pass``, ``webhook_secret``) are excluded
    from ``repr`` so that logging a Settings object never leaks them.
    """

    host: str = "127.0.0.1"
    port: int = 9090
    model_dir: str = "./data/models"
    log_level: str = "INFO"
    workers: int = 1
    threads: int = 64
    light_threads: int = 4
    client_timeout: float = 30.0
    label_studio_url: str = ""
    api_key: str = field(default="", repr=False)
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    webhook_secret: str = field(default="", repr=False)
    device: str = "auto"
    backbone: str = "auto"
    weights: str = "coco"
    allow_weights_download: bool = True
    display_threshold: float = 0.5
    eval_min_tasks: int = 5
    batch_size: int = 8
    fetch_workers: int = 8
    fetch_timeout: float = 30.0
    predict_deadline: float = 60.0
    allowed_image_hosts: tuple[str, ...] = ()
    local_files_document_root: str = ""
    max_image_pixels: int = 50_000_000
    image_cache_dir: str = ""
    train_every: int = 10
    train_reinit: bool = False
    # The paper's synchronic form (docs/method.md, section 4): on the warm benchmark over 5 seeds
    # (bench/results/active_learning_warm.md) it is +2.8 [+2.0, +3.5] AP50 over the standard loss, the
    # balanced form (SYNC_FORM=balanced, an ablation) -2.5 [-3.2, -1.9].
    loss: str = "synchronic"
    sync_form: str = "paper"
    eiou_gamma: float = 0.8
    sync_lambda: float | None = None
    log_var_bound: float = 5.0
    epochs: int = 8
    train_iterations: int | None = None
    train_min_iterations: int = 200
    warmup_fraction: float = 0.1
    learning_rate: float = 0.01
    train_batch_size: int = 2
    train_seed: int | None = None
    grad_clip: float = 10.0
    redis_url: str = ""
    train_processes: int = 1
    job_timeout: int = 6 * 3600
    max_job_processes: int = 1
    keep_versions: int = 10
    # 1,000 tasks: a shard's fixed cost (a process, the model loaded; 8.9 CPU s measured) is +5 % of
    # its work on CPU workers, and a killed shard loses at most that much (docs/benchmarks.md).
    rank_shard_size: int = 1000
    rank_shard_retries: int = 2
    hua_aggregate: str = "sum"
    hua_retrieval_fraction: float = 0.5
    hua_min_candidates: int = 64
    hua_candidates: int | None = None
    hua_overlap_iou: float = 0.3
    analysis_threshold: float = 0.05
    hua_merge_iou: float = 0.7
    hua_confident_score: float = 0.3
    # on: the rule of docs/method.md section 7 on the confirmatory benchmark (+0.6 [-0.6, +1.8] AP50 over HUA alone);
    # model.hua.HUAConfig keeps it off, so that the benchmark's `hua` run stays HUA without the pass
    hua_diversity: bool = True
    hua_diversity_window: int = 64

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the variables of ``ENVIRONMENT`` from ``environ`` (default: os.environ)."""
        env = os.environ if environ is None else environ
        values = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, attr in ENVIRONMENT.items():
            if env.get(name, "") != "":
                values[attr] = _parse(name, env[name], types[attr])
        settings = cls(**values)
        settings.validate()
        return settings

    def to_env(self) -> dict[str, str]:
        """The inverse of ``from_env``: how a child process (a job) gets exactly these settings."""
        env = {}
        for name, attr in ENVIRONMENT.items():
            value = getattr(self, attr)
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[name] = "" if value is None else str(value)
        return env

    def validate(self) -> None:
        """Refuse combinations that cannot work, naming the variable."""
        if self.label_studio_url and urlparse(self.label_studio_url).scheme not in ("http", "https"):
            raise SettingsError("LABEL_STUDIO_URL must start with http:// or https://")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise SettingsError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingsError("DEVICE must be auto, cpu or cuda")
        for name in (
            "batch_size",
            "fetch_workers",
            "workers",
            "threads",
            "max_image_pixels",
            "train_processes",
            "hua_diversity_window",
            "eval_min_tasks",
            "max_job_processes",
            "light_threads",
            "rank_shard_size",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{_env_name(name)} must be at least 1")
        if self.light_threads >= self.threads:
            raise SettingsError(
                f"LIGHT_THREADS ({self.light_threads}) must be below THREADS ({self.threads}): "
                "/predict needs at least one thread"
            )
        if self.client_timeout <= 0:
            raise SettingsError(f"CLIENT_TIMEOUT must be above 0 seconds, got {self.client_timeout}")
        if self.predict_deadline <= 0:
            raise SettingsError(f"PREDICT_DEADLINE must be above 0 seconds, got {self.predict_deadline}")
        if self.keep_versions < 0:
            raise SettingsError(f"KEEP_VERSIONS must be 0 (keep all) or more, got {self.keep_versions}")
        if self.rank_shard_retries < 0:
            raise SettingsError(f"RANK_SHARD_RETRIES must be 0 or more, got {self.rank_shard_retries}")
        if self.train_every < 1:
            raise SettingsError("TRAIN_EVERY must be at least 1")
        if self.weights not in WEIGHT_SOURCES and not Path(self.weights).exists():
            raise SettingsError(
                f"WEIGHTS must be one of {', '.join(WEIGHT_SOURCES)} or the path of a checkpoint "
                f"folder saved by this backend (weights.pt + meta.json); {self.weights!r} does not exist"
            )
        if not 0.0 <= self.display_threshold <= 1.0:
            raise SettingsError(f"SCORE_THRESHOLD must be in [0, 1], got {self.display_threshold}")
        self._validate_loss()
        try:
            self.detector_config("cpu")  # checks the names; "cpu" or "cuda" alike
            self.train_config()
            self.hua_config()
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc

    def _validate_loss(self) -> None:
        """LOSS and SYNC_FORM name their choices (LossConfig checks the constants)."""
        kinds = (LossConfig.SYNCHRONIC, LossConfig.STANDARD)
        if self.loss not in kinds:
            raise SettingsError(f"LOSS must be {' or '.join(kinds)}, got {self.loss!r}")
        forms = (LossConfig.PAPER_FORM, LossConfig.BALANCED_FORM)
        if self.sync_form not in forms:
            raise SettingsError(
                f"SYNC_FORM must be {' or '.join(forms)} (the paper's form is the default), got {self.sync_form!r}"
            )

    def detector_config(self, device_kind: str) -> DetectorConfig:
        """The slice of the settings that ``model.detector`` needs, in a process on ``device_kind``.

        ``device_kind`` ("cuda" or "cpu", ``model.detector.device_kind``) decides BACKBONE=auto.
        """
        return DetectorConfig(
            backbone=resolve_backbone(self.backbone, device_kind),
            weights=self.weights,
            analysis_threshold=self.analysis_threshold,
            log_var_bound=self.log_var_bound,
            allow_download=self.allow_weights_download,
        )

    def hua_config(self) -> HUAConfig:
        """The slice of the settings that ``model.hua`` needs (docs/method.md, sections 1-2)."""
        return HUAConfig(
            aggregate=self.hua_aggregate,
            retrieval_fraction=self.hua_retrieval_fraction,
            min_candidates=self.hua_min_candidates,
            candidates=self.hua_candidates,
            overlap_iou=self.hua_overlap_iou,
            merge_iou=self.hua_merge_iou,
            confident_score=self.hua_confident_score,
            diversity=self.hua_diversity,
            diversity_window=self.hua_diversity_window,
        )

    def train_config(self) -> TrainConfig:
        """The slice of the settings that ``model.train`` needs; its loss is LOSS, SYNC_FORM,
        EIOU_GAMMA and SYNC_LAMBDA (empty: dynamic matching)."""
        return TrainConfig(
            epochs=self.epochs,
            iterations=self.train_iterations,
            min_iterations=self.train_min_iterations,
            warmup_fraction=self.warmup_fraction,
            lr=self.learning_rate,
            batch_size=self.train_batch_size,
            seed=self.train_seed,
            grad_clip=self.grad_clip,
            loss=LossConfig(
                kind=self.loss, form=self.sync_form, eiou_gamma=self.eiou_gamma, lambda_fixed=self.sync_lambda
            ),
        )

    @property
    def image_hosts(self) -> frozenset[str]:
        """Hosts (host[:port]) images may be fetched from: Label Studio's and the allowed ones."""
        hosts = {h.lower() for h in self.allowed_image_hosts}
        if self.label_studio_url:
            hosts.add(urlparse(self.label_studio_url).netloc.lower())
        return frozenset(hosts)


# Environment variable -> Settings attribute.
ENVIRONMENT: Mapping[str, str] = MappingProxyType(
    {
        "HOST": "host",
        "PORT": "port",
        "MODEL_DIR": "model_dir",
        "LOG_LEVEL": "log_level",
        "WORKERS": "workers",
        "THREADS": "threads",
        "LIGHT_THREADS": "light_threads",
        "CLIENT_TIMEOUT": "client_timeout",
        "LABEL_STUDIO_URL": "label_studio_url",
        "LABEL_STUDIO_API_KEY": "api_key",
        "BASIC_AUTH_USER": "basic_auth_user",
        "BASIC_AUTH_PASS": "basic_auth_pass",
        "WEBHOOK_SECRET": "webhook_secret",
        "DEVICE": "device",
        "BACKBONE": "backbone",
        "WEIGHTS": "weights",
        "ALLOW_WEIGHTS_DOWNLOAD": "allow_weights_download",
        "SCORE_THRESHOLD": "display_threshold",
        "EVAL_MIN_TASKS": "eval_min_tasks",
        "BATCH_SIZE": "batch_size",
        "FETCH_WORKERS": "fetch_workers",
        "FETCH_TIMEOUT": "fetch_timeout",
        "PREDICT_DEADLINE": "predict_deadline",
        "ALLOWED_IMAGE_HOSTS": "allowed_image_hosts",
        "LOCAL_FILES_DOCUMENT_ROOT": "local_files_document_root",
        "MAX_IMAGE_PIXELS": "max_image_pixels",
        "IMAGE_CACHE_DIR": "image_cache_dir",
        "TRAIN_EVERY": "train_every",
        "TRAIN_REINIT": "train_reinit",
        "LOSS": "loss",
        "SYNC_FORM": "sync_form",
        "EIOU_GAMMA": "eiou_gamma",
        "SYNC_LAMBDA": "sync_lambda",
        "LOG_VAR_BOUND": "log_var_bound",
        "EPOCHS": "epochs",
        "TRAIN_ITERATIONS": "train_iterations",
        "TRAIN_MIN_ITERATIONS": "train_min_iterations",
        "WARMUP_FRACTION": "warmup_fraction",
        "LEARNING_RATE": "learning_rate",
        "TRAIN_BATCH_SIZE": "train_batch_size",
        "TRAIN_SEED": "train_seed",
        "GRAD_CLIP": "grad_clip",
        "REDIS_URL": "redis_url",
        "TRAIN_PROCESSES": "train_processes",
        "JOB_TIMEOUT": "job_timeout",
        "MAX_JOB_PROCESSES": "max_job_processes",
        "KEEP_VERSIONS": "keep_versions",
        "RANK_SHARD_SIZE": "rank_shard_size",
        "RANK_SHARD_RETRIES": "rank_shard_retries",
        "HUA_AGGREGATE": "hua_aggregate",
        "HUA_RETRIEVAL_FRACTION": "hua_retrieval_fraction",
        "HUA_MIN_CANDIDATES": "hua_min_candidates",
        "HUA_CANDIDATES": "hua_candidates",
        "HUA_OVERLAP_IOU": "hua_overlap_iou",
        "HUA_SCORE_THRESHOLD": "analysis_threshold",
        "HUA_MERGE_IOU": "hua_merge_iou",
        "HUA_CONFIDENT_SCORE": "hua_confident_score",
        "HUA_DIVERSITY": "hua_diversity",
        "HUA_DIVERSITY_WINDOW": "hua_diversity_window",
    }
)


def _env_name(attr: str) -> str:
    return next(k for k, v in ENVIRONMENT.items() if v == attr)


def _parse(name: str, raw: str, kind: str) -> object:
    """Convert one variable to the attribute's type (annotations are strings here)."""
    kind = kind.replace(" | None", "")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from None
    return raw

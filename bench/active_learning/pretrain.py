"""The warm start of the digit benchmark: a class-agnostic detector pretrained once, cached on disk.

docs/method.md, section 6: a benchmark only says something about selection where the
detector is in the regime of the paper's first cycle, and a user's project
starts from COCO weights, not from an untrained FPN, RPN and box head. Here the
role of COCO is played by scenes of digits that the pool and the test split
never use (``DigitScenesConfig.pretrain_share``), every digit labelled "digit":
objectness, features and box regression are learned, the ten classes are not.

The checkpoint is a version of ``model.versions.VersionStore`` (``weights.pt`` +
``meta.json`` with its labels and backbone), the format the service's
``WEIGHTS=<path>`` loads, under a folder named by a hash of everything it
depends on: a changed setting pretrains again, an unchanged one never does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.active_learning.dataset import DigitScenesConfig, class_agnostic, pretrain_scenes
from model.detector import DetectorConfig, build_model
from model.evaluate import evaluate_map
from model.losses import LossConfig
from model.samples import Sample
from model.train import TrainConfig, train
from model.version_meta import VersionMeta
from model.versions import Version, VersionStore

#: The VersionStore project the pretrained checkpoints are saved under (a project id is a positive integer).
PROJECT: str = "1"


@dataclass(frozen=True)
class PretrainConfig:
    """How the warm start is trained [ours].

    Attributes:
        train (TrainConfig): its ``iterations`` fix the length. Its loss is
            torchvision's standard one, as for the COCO weights a user starts
            from, so the checkpoint favours neither loss form of the ablation.
        seed (int): initialisation and data order.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            iterations=500,
            lr=0.005,
            batch_size=4,
            warmup_fraction=0.1,
            lr_drops=(0.8,),
            holdout_fraction=0.0,
            loss=LossConfig.from_name("standard"),
        )
    )
    seed: int = 0

    def fingerprint(self, digits: DigitScenesConfig, detector: DetectorConfig) -> str:
        """A short hash of the pretraining, its scenes and the detector it starts from."""
        text = json.dumps(
            {
                "digits": digits.pretrain_fingerprint(),
                "pretrain": dataclasses.asdict(self),
                "detector": dataclasses.asdict(detector),
            },
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def cached_checkpoint(folder: Path) -> Version | None:
    """The newest checkpoint under ``folder``, or None."""
    return VersionStore(folder).latest(PROJECT) if folder.is_dir() else None


def warm_start(
    config: PretrainConfig,
    digits: DigitScenesConfig,
    detector: DetectorConfig,
    cache_root: Path | str,
    device: torch.device,
    check: Sequence[Sample] = (),
    check_on: str = "",
) -> Version:
    """The pretrained checkpoint of ``config``: from the cache, or trained now and cached.

    Args:
        detector (DetectorConfig): the detector to pretrain, from its own ``weights``
            (e.g. ImageNet); the benchmark then builds from the returned version's path.
        check (Sequence[Sample]): images (of any classes) on which the new checkpoint's
            class-agnostic AP50 is measured and kept in its meta (none: not measured),
            with the detector's own ``rpn_test_proposals``, as the benchmark measures.
        check_on (str): what ``check`` is, kept beside its AP50: a later invocation may read
            the cached checkpoint with other seeds, so only the build knows which split it was.
    Raises:
        RuntimeError: the detector's configured weights are not available.
    """
    folder = Path(cache_root) / f"pretrain-{config.fingerprint(digits, detector)}"
    cached = cached_checkpoint(folder)
    if cached is not None:
        return cached
    names, samples = pretrain_scenes(digits, cache_root)
    torch.manual_seed(config.seed)
    model, report = build_model(detector, list(names), loss=config.train.loss)
    if report.fell_back:
        raise RuntimeError(f"{report.requested} weights unavailable ({'; '.join(report.reasons)})")
    started = time.perf_counter()
    result = train(model, samples, replace(config.train, seed=config.seed), device)
    pretraining = {
        "images": len(samples),
        "iterations": config.train.iterations,
        "train_s": round(time.perf_counter() - started, 1),
        "losses": result.summary,
    }
    if check:
        pretraining["check_ap50_agnostic"] = evaluate_map(model, class_agnostic(check))["map_50"]
        pretraining["check_on"] = check_on
    meta = VersionMeta(
        labels=list(names),
        backbone=detector.backbone,
        weights=report.used,
        weights_requested=report.requested,
        parent=None,
        pretraining=pretraining,
    )
    return VersionStore(folder).save(PROJECT, model.state_dict(), meta)

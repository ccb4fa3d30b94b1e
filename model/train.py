"""Fine-tuning a detector on labelled images, with the synchronic or standard loss.

Used by the service's training jobs and by the active-learning benchmark, so
nothing here knows where the images came from: a training set is a list of
``Sample`` (an image file, its boxes in pixels, its class indices).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.models.detection import FasterRCNN

from model.distributed import data_parallel, is_distributed, is_main_process
from model.evaluate import evaluate_map
from model.losses import LossConfig, combine_losses
from model.progress import Progress
from model.samples import DetectionDataset, Sample

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; the defaults suit a labelling loop of tens to hundreds of images.

    A training's length is counted in optimizer steps: ``iterations`` when set
    (benchmarks: every cycle trains alike), else ``epochs`` passes over the
    data but at least ``min_iterations`` [ours]: the first training of a
    project, at ten annotations, would otherwise be 40 steps spent in the
    warm-up, and measured on Label Studio's loop it left the RPN at chance.
    The schedule is defined on that length: a linear warm-up over
    ``warmup_fraction`` of it, then x0.1 at each fraction in ``lr_drops``.
    ``holdout_fraction`` of the samples (at least ``min_holdout``, only when
    at least ``min_samples_for_holdout`` exist) are kept out for mAP.
    ``loss`` is the RoI heads' loss: the model is built with it (``build_model(..., loss=...)``)
    and ``train`` refuses a model built for another.
    """

    epochs: int = 8
    iterations: int | None = None
    min_iterations: int = 200
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 2
    warmup_fraction: float = 0.1
    grad_clip: float = 10.0
    lr_drops: tuple[float, ...] = ()
    flip_prob: float = 0.5
    seed: int | None = None
    holdout_fraction: float = 0.2
    min_holdout: int = 2
    min_samples_for_holdout: int = 10
    loss: LossConfig = LossConfig()

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.min_iterations < 1:
            raise ValueError("epochs, batch_size and min_iterations must be at least 1")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be None or at least 1, got {self.iterations}")
        if not 0.0 <= self.warmup_fraction < 1.0 or not all(0.0 < d < 1.0 for d in self.lr_drops):
            raise ValueError("warmup_fraction must lie in [0, 1) and every lr drop in (0, 1)")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0: off), got {self.grad_clip}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")

    def total_iterations(self, batches_per_epoch: int) -> int:
        """Optimizer steps of one training over data of ``batches_per_epoch`` batches."""
        if self.iterations is not None:
            return self.iterations
        return max(self.min_iterations, self.epochs * batches_per_epoch)

    def lr_factor(self, step: int, total: int) -> float:
        """Linear warm-up from 1/1000 over ``warmup_fraction`` of ``total``, then x0.1 at each drop."""
        warmup = self.warmup_fraction * total
        warm = 1.0
        if step < warmup:
            alpha = step / warmup
            warm = 0.001 * (1 - alpha) + alpha
        return warm * 0.1 ** sum(1 for drop in self.lr_drops if step >= drop * total)


@dataclass
class TrainResult:
    """What a training produced besides the weights.

    ``epoch_losses`` are the means of the logged terms over each pass of the
    data (the last pass may be partial); ``summary`` holds their means over the
    whole training (lambda, beta_cls, beta_loc and every term of the loss),
    ``iterations``, and ``clip_fraction``, the share of steps whose gradient
    norm hit ``grad_clip``: what docs/method.md, section 4 asks each training to keep.
    """

    epoch_losses: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    trained_on: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)


def split_holdout(samples: Sequence[Sample], config: TrainConfig, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, held out): a fixed-seed slice for mAP when there are enough samples."""
    if len(samples) < config.min_samples_for_holdout or config.holdout_fraction == 0:
        return list(samples), []
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    count = max(config.min_holdout, int(len(samples) * config.holdout_fraction))
    held = set(order[:count])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


def _collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    return [item[0] for item in batch], [item[1] for item in batch]


def _optimizer(model: FasterRCNN, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _seed_everything(seed: int | None) -> random.Random:
    if seed is not None:
        torch.manual_seed(seed)
    return random.Random(seed)


def train_step(
    model: torch.nn.Module,
    images: list[Tensor],
    targets: list[dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_config: LossConfig,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float = 0.0,
) -> dict[str, float]:
    """One optimisation step; returns the logged loss terms and ``clipped`` (1.0 when the
    gradient norm hit ``grad_clip``). Autocast when a scaler is given (CUDA).

    ``model`` is a FasterRCNN, or DDP around one. ``grad_clip`` > 0 caps the
    gradient's global norm: the first fine-tuning steps on a handful of
    annotations, where exp(-alpha) of L_aware can be large, cannot throw the
    weights far (detectron2's CLIP_GRADIENTS, for the same reason).
    """
    device = next(model.parameters()).device
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, enabled=scaler is not None):
        total, logged = combine_losses(model(images, targets), loss_config)
    if not math.isfinite(logged["total"]):
        raise FloatingPointError(f"training loss is not finite: {logged}")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
        clipped = _clip(model, grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        clipped = _clip(model, grad_clip)
        optimizer.step()
    return {**logged, "clipped": float(clipped)}


def _clip(model: torch.nn.Module, max_norm: float) -> bool:
    """Cap the gradient's global norm at ``max_norm`` (0: off); True when it was above."""
    if max_norm <= 0:
        return False
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    return bool(norm > max_norm)


def _loader(train_set: Sequence[Sample], config: TrainConfig, rng: random.Random) -> DataLoader:
    dataset = DetectionDataset(train_set, config.flip_prob, rng)
    sampler = DistributedSampler(dataset, shuffle=True, seed=config.seed or 0) if is_distributed() else None
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=_collate,
        generator=torch.Generator().manual_seed(config.seed or 0),
    )


def train(
    model: FasterRCNN,
    samples: Sequence[Sample],
    config: TrainConfig,
    device: torch.device,
    progress: Progress | None = None,
    evaluate: Callable[[FasterRCNN, Sequence[Sample]], dict[str, float]] | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``samples`` (data-parallel under torchrun).

    Args:
        model (FasterRCNN): with ``UncertaintyRoIHeads``; its loss is set from ``config.loss``.
        samples (Sequence[Sample]): the labelled images; images without boxes are negatives.
        progress (Progress): called with (fraction done, message) after every step.
        evaluate: mAP on the held-out slice (default ``evaluate_map``), on rank 0 only.
    Raises:
        ValueError: no samples, or the model's heads were built for another loss
            than ``config.loss`` (build it with ``loss=config.loss``);
            FloatingPointError: the loss diverged.
    """
    if not samples:
        raise ValueError("nothing to train on: no labelled images")
    if model.roi_heads.loss != config.loss:
        raise ValueError(
            f"the model's heads were built for the {model.roi_heads.loss.name} loss, the training asks "
            f"for {config.loss.name} ({config.loss}): build the model with loss=config.loss"
        )
    rng = _seed_everything(config.seed)
    train_set, held_out = split_holdout(samples, config, seed=config.seed or 0)
    loader = _loader(train_set, config, rng)
    model.to(device).train()
    # the standard loss leaves the log-variance layer unused, which DDP must be told
    network = data_parallel(model, device, find_unused_parameters=config.loss.kind == LossConfig.STANDARD)
    optimizer = _optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" else None
    result = TrainResult(trained_on=[s.key for s in train_set], held_out=[s.key for s in held_out])
    total = config.total_iterations(len(loader))
    totals: dict[str, float] = {}
    for step, epoch, (images, targets) in _steps(loader, total):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * config.lr_factor(step, total)
        logged = train_step(network, images, targets, optimizer, config.loss, scaler, config.grad_clip)
        totals = {k: totals.get(k, 0.0) + v for k, v in logged.items()}
        _epoch_mean(result, epoch, logged)
        if progress and is_main_process():
            progress((step + 1) / total, f"step {step + 1}/{total} loss {logged['total']:.3f}")
    result.summary = {
        **{k: v / total for k, v in totals.items() if k != "clipped"},
        "clip_fraction": totals.get("clipped", 0.0) / total,
        "iterations": float(total),
    }
    logger.info("trained %d steps: %s", total, _fmt(result.summary))
    model.eval()
    if held_out and is_main_process():
        result.metrics = (evaluate or evaluate_map)(model, held_out)
    return result


def _steps(loader: DataLoader, total: int) -> Iterator[tuple[int, int, tuple]]:
    """``(step, epoch, batch)`` for ``total`` steps, passing over ``loader`` as often as needed."""
    step, epoch = 0, 0
    while step < total:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            yield step, epoch, batch
            step += 1
            if step == total:
                return
        epoch += 1


def _epoch_mean(result: TrainResult, epoch: int, logged: dict[str, float]) -> None:
    """Fold one step's ``logged`` terms into the running mean of its pass over the data."""
    if len(result.epoch_losses) == epoch:
        result.epoch_losses.append({"steps": 0.0})
    means = result.epoch_losses[epoch]
    n = means["steps"] + 1
    for key, value in logged.items():
        means[key] = means.get(key, 0.0) + (value - means.get(key, 0.0)) / n
    means["steps"] = n


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(values.items()))

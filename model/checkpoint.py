"""Warm starts from a detector saved by this project (``WEIGHTS=<path>``).

A user brings the detector of an earlier project, and the active-learning
benchmark its class-agnostic pretraining, as a version folder written by
``model.versions.VersionStore`` (``weights.pt`` and ``meta.json``). Whatever
its classes, the backbone, FPN, RPN and box head are kept; the class-specific
layers of the box predictor are re-sized to the new project's labels:

- a label the checkpoint knows by name keeps its rows (classifier, box deltas,
  log-variance);
- a new label gets a fresh classifier row (torchvision's init: the classifier
  must learn it) and the mean of the checkpoint's foreground rows for its box
  deltas and log-variance, so its boxes are regressed as the checkpoint's
  objects were from the first step;
- background keeps row 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from model.heads import UncertainBoxPredictor
from model.version_meta import VersionMeta
from model.versions import META_FILE, WEIGHTS_FILE, CheckpointError, check_backbone


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], VersionMeta]:
    """The state dict and meta of a version folder, or of the ``weights.pt`` inside one.

    Raises:
        CheckpointError: the folder, its weights or its meta cannot be read.
    """
    folder = Path(path)
    if folder.name == WEIGHTS_FILE:
        folder = folder.parent
    try:
        meta = VersionMeta.from_json(json.loads((folder / META_FILE).read_text()))
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read the checkpoint at {folder}: {exc}") from exc
    if not isinstance(meta.labels, list) or not meta.labels:
        raise CheckpointError(f"{folder / META_FILE} names no labels")
    return state, meta


def class_rows(labels: Sequence[str], known: Sequence[str]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Rows of the checkpoint (classes 1..K of ``known``) that initialise each new class (1..C).

    Returns:
        tuple: ``(classifier, regression)``; ``classifier`` maps only the
        labels the checkpoint knows, ``regression`` maps every label (the
        unknown ones to all of the checkpoint's foreground rows).
    """
    index = {name: i for i, name in enumerate(known, start=1)}
    everything = list(range(1, len(known) + 1))
    classifier = {cls: [index[name]] for cls, name in enumerate(labels, start=1) if name in index}
    regression = {cls: classifier.get(cls, everything) for cls in range(1, len(labels) + 1)}
    return classifier, regression


def resized_predictor(old: UncertainBoxPredictor, labels: Sequence[str], known: Sequence[str]) -> UncertainBoxPredictor:
    """A box predictor for ``labels`` initialised from ``old``, trained for ``known`` (module docstring)."""
    new = UncertainBoxPredictor(old.cls_score.in_features, len(labels) + 1, old.log_var_bound)
    classifier, regression = class_rows(labels, known)
    copy_class_rows(new.cls_score, old.cls_score, {0: [0], **classifier}, 1)
    copy_class_rows(new.bbox_pred, old.bbox_pred, {0: [0], **regression}, 4)
    copy_class_rows(new.bbox_log_var, old.bbox_log_var, {0: [0], **regression}, 4)
    return new


def copy_class_rows(new: nn.Linear, old: nn.Linear, rows: dict[int, list[int]], width: int) -> None:
    """Set new class ``c``'s ``width`` rows to the mean of the old classes ``rows[c]`` (also COCO's head rows)."""
    with torch.no_grad():
        for target, sources in rows.items():
            span = slice(target * width, (target + 1) * width)
            new.weight[span] = torch.stack([old.weight[s * width : (s + 1) * width] for s in sources]).mean(0)
            new.bias[span] = torch.stack([old.bias[s * width : (s + 1) * width] for s in sources]).mean(0)


def checkpoint_labels(path: str | Path, backbone: str) -> tuple[dict[str, Tensor], list[str]]:
    """The checkpoint's weights and labels, refused when it was made with another backbone.

    Raises:
        CheckpointError: unreadable, or another architecture's weights.
    """
    state, meta = read_checkpoint(path)
    check_backbone(meta, backbone)
    return state, list(meta.labels)

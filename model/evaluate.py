"""Prequential evaluation: a version scored on annotations it has never seen.

Active learning holds no test set back: every label is worth training on. Yet
each version is trained on the annotations that existed when it was made, and
the annotators go on labeling while it serves. The tasks annotated since then
are a fair test of that version (prequential, "predict, then learn"): AP
against the annotators' boxes, and how much of its pre-annotations they kept.

The same AP measures a model on labelled samples: the held-out slice of a
training and the active-learning benchmark's test set (``evaluate_map``).
Below that, nothing knows where the images or boxes came from: detections and
ground truth are tensors, one dict per image, boxes ``x1, y1, x2, y2`` in pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.ops import box_iou

from model.images import load_image
from model.samples import Sample

# Figures a report carries as numbers, in the order pages and gauges show them.
FIGURES = ("map_50", "map", "accepted", "recall")


@dataclass(frozen=True)
class Acceptance:
    """How the annotators treated a detector's boxes above the pre-annotation threshold.

    A predicted box is *accepted* when an annotator's box of the same label
    overlaps it with IoU >= the match threshold; matching is one to one, so a
    duplicate box is not accepted twice.

    Attributes:
        predicted (int): the detector's boxes at or above the score threshold.
        annotated (int): the annotators' boxes.
        matched (int): one-to-one matches between the two.
    """

    predicted: int = 0
    annotated: int = 0
    matched: int = 0

    @property
    def accepted(self) -> float | None:
        """Share of the detector's boxes an annotator kept; 0 when it predicted nothing where
        there was something to find, None when there was nothing either way."""
        if self.predicted:
            return self.matched / self.predicted
        return 0.0 if self.annotated else None

    @property
    def recall(self) -> float | None:
        """Share of the annotators' boxes the detector had predicted; None without any."""
        return self.matched / self.annotated if self.annotated else None

    def __add__(self, other: Acceptance) -> Acceptance:
        return Acceptance(
            self.predicted + other.predicted, self.annotated + other.annotated, self.matched + other.matched
        )


def match_count(pred: dict[str, Tensor], truth: dict[str, Tensor], iou_threshold: float = 0.5) -> int:
    """One-to-one matches of same-label boxes with IoU >= ``iou_threshold``.

    Greedy in descending score (COCO's order): each predicted box takes the
    unmatched annotator's box it overlaps most.

    Args:
        pred (dict[str, Tensor]): ``boxes`` (Tensor[N, 4]), ``labels`` (Tensor[N]), ``scores`` (Tensor[N]).
        truth (dict[str, Tensor]): ``boxes`` (Tensor[M, 4]), ``labels`` (Tensor[M]).

    Returns:
        int: in [0, min(N, M)].
    """
    boxes, labels = pred["boxes"].reshape(-1, 4).float(), pred["labels"].reshape(-1)
    true_boxes, true_labels = truth["boxes"].reshape(-1, 4).float(), truth["labels"].reshape(-1)
    if not len(boxes) or not len(true_boxes):
        return 0
    iou = box_iou(boxes, true_boxes)
    iou[labels[:, None] != true_labels[None, :]] = -1.0
    taken = torch.zeros(len(true_boxes), dtype=torch.bool)
    matched = 0
    for i in torch.argsort(pred["scores"].reshape(-1), descending=True, stable=True).tolist():
        row = iou[i].masked_fill(taken, -1.0)
        best = int(row.argmax())
        if row[best] >= iou_threshold:
            taken[best] = True
            matched += 1
    return matched


def acceptance(
    preds: Sequence[dict[str, Tensor]],
    truths: Sequence[dict[str, Tensor]],
    display_threshold: float,
    iou_threshold: float = 0.5,
) -> Acceptance:
    """Pre-annotation acceptance over images: only boxes scoring >= ``display_threshold``
    were shown to the annotators (SCORE_THRESHOLD), so only they count."""
    total = Acceptance()
    for pred, truth in zip(preds, truths, strict=True):
        keep = pred["scores"].reshape(-1) >= display_threshold
        shown = {
            "boxes": pred["boxes"].reshape(-1, 4)[keep],
            "labels": pred["labels"].reshape(-1)[keep],
            "scores": pred["scores"].reshape(-1)[keep],
        }
        total = total + Acceptance(
            int(keep.sum()), int(truth["labels"].numel()), match_count(shown, truth, iou_threshold)
        )
    return total


def average_precision(
    preds: Sequence[dict[str, Tensor]], truths: Sequence[dict[str, Tensor]], class_metrics: bool = False
) -> dict[str, float | dict[int, float]]:
    """COCO-style AP by torchmetrics: ``map`` (AP 0.5:0.95), ``map_50``, and with
    ``class_metrics`` per class index ``ap`` and ``ap50`` (classes with no
    annotated box are left out: torchmetrics has no AP for them).

    Args:
        preds: per image ``boxes``, ``scores``, ``labels`` (low-threshold detections, as COCO evaluates).
        truths: per image ``boxes`` (Tensor[M, 4]) and ``labels`` (Tensor[M]).
    """
    from torchmetrics.detection import MeanAveragePrecision

    preds = [
        {
            "boxes": p["boxes"].reshape(-1, 4).float(),
            "scores": p["scores"].reshape(-1),
            "labels": p["labels"].reshape(-1),
        }
        for p in preds
    ]
    truths = [{"boxes": t["boxes"].reshape(-1, 4).float(), "labels": t["labels"].reshape(-1)} for t in truths]
    overall = MeanAveragePrecision(iou_type="bbox", class_metrics=class_metrics)
    overall.update(preds, truths)
    values = overall.compute()
    result: dict[str, float | dict[int, float]] = {"map": float(values["map"]), "map_50": float(values["map_50"])}
    if class_metrics:
        at_50 = MeanAveragePrecision(iou_type="bbox", iou_thresholds=[0.5], class_metrics=True)
        at_50.update(preds, truths)
        result["ap"] = _per_class(values)
        result["ap50"] = _per_class(at_50.compute())
    return result


def _per_class(values: dict[str, Tensor]) -> dict[int, float]:
    """torchmetrics' ``map_per_class`` by class index, without its -1 for classes never annotated."""
    classes = values["classes"].reshape(-1).tolist()
    per_class = values["map_per_class"].reshape(-1).tolist()
    return {int(c): float(v) for c, v in zip(classes, per_class) if v >= 0}


@torch.inference_mode()
def predict_samples(model: FasterRCNN, samples: Sequence[Sample], *, batch_size: int = 4) -> list[dict[str, Tensor]]:
    """Raw torchvision outputs (boxes, labels, scores, ...) for each sample's image."""
    device = next(model.parameters()).device
    model.eval()
    outputs: list[dict[str, Tensor]] = []
    for start in range(0, len(samples), batch_size):
        images = [load_image(s.image_path).to(device) for s in samples[start : start + batch_size]]
        outputs.extend({k: v.cpu() for k, v in out.items()} for out in model(images))
    return outputs


def low_threshold_outputs(model: FasterRCNN, samples: Sequence[Sample]) -> list[dict[str, Tensor]]:
    """Detections of each sample's image with the score threshold lowered to 0.001 (as COCO
    evaluation does: AP needs the whole precision-recall curve), then restored."""
    threshold = model.roi_heads.score_thresh
    model.roi_heads.score_thresh = 0.001
    try:
        return predict_samples(model, samples)
    finally:
        model.roi_heads.score_thresh = threshold


def sample_target(sample: Sample) -> dict[str, Tensor]:
    """A sample's boxes (``Tensor[M, 4]``) and labels (``Tensor[M]``) as ground truth."""
    return {"boxes": sample.boxes.reshape(-1, 4).float(), "labels": sample.labels.reshape(-1)}


def evaluate_map(model: FasterRCNN, samples: Sequence[Sample]) -> dict[str, float]:
    """COCO-style mAP (torchmetrics): ``map`` (AP 0.5:0.95) and ``map_50`` on ``samples``."""
    values = average_precision(low_threshold_outputs(model, samples), [sample_target(s) for s in samples])
    return {"map": values["map"], "map_50": values["map_50"], "images": float(len(samples))}


#: Prequential fields under their former names, as the meta of older versions stores them.
_RENAMED: dict[str, str] = {"score_threshold": "display_threshold"}


@dataclass(frozen=True)
class Prequential:
    """A version's figures on the tasks annotated after it was trained, stored in the
    meta of the version trained next (``evaluation``).

    ``status`` says whether there are numbers: ``ok``; ``too_few`` (fewer
    tasks than ``min_tasks``: a figure on two images says nothing, so none is
    given); ``none`` (no version to evaluate, e.g. a project's first training);
    ``failed`` (the evaluation raised; the training went on). ``message`` says
    it in words for the page. ``display_threshold`` is SCORE_THRESHOLD, the
    score from which pre-annotations were shown (older metas: ``score_threshold``).
    """

    model_version: str | None
    status: str
    message: str = ""
    tasks: int = 0
    min_tasks: int = 0
    trained_on_tasks: int = 0
    task_ids: list[int] = field(default_factory=list)
    display_threshold: float = 0.5
    iou_threshold: float = 0.5
    map: float | None = None
    map_50: float | None = None
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    acceptance: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def accepted(self) -> float | None:
        return self.acceptance.get("accepted")

    @property
    def recall(self) -> float | None:
        return self.acceptance.get("recall")

    def figures(self) -> dict[str, float]:
        """The numbers of :data:`FIGURES` that exist (none unless ``status`` is ok)."""
        values = {"map_50": self.map_50, "map": self.map, "accepted": self.accepted, "recall": self.recall}
        return {k: float(v) for k, v in values.items() if v is not None and self.status == "ok"}

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Prequential:
        data = {_RENAMED.get(k, k): v for k, v in data.items()}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def prequential(
    preds: Sequence[dict[str, Tensor]],
    truths: Sequence[dict[str, Tensor]],
    labels: Sequence[str],
    *,
    model_version: str,
    display_threshold: float,
    iou_threshold: float = 0.5,
    **context: object,
) -> Prequential:
    """The figures of ``model_version`` from its detections on the new tasks' images.

    Args:
        preds: its detections per image, down to a low score (AP needs the whole curve).
        truths: the annotators' boxes per image, class indices 1..C.
        labels (Sequence[str]): class names, index i + 1 for ``labels[i]``.
        context: ``tasks``, ``min_tasks``, ``trained_on_tasks``, ``task_ids`` as stored.
    """
    ap = average_precision(preds, truths, class_metrics=True)
    kept = acceptance(preds, truths, display_threshold, iou_threshold)
    per_class = {labels[c - 1]: {"ap": ap["ap"][c], "ap50": ap["ap50"][c]} for c in ap["ap"] if 0 < c <= len(labels)}
    return Prequential(
        model_version=model_version,
        status="ok",
        display_threshold=display_threshold,
        iou_threshold=iou_threshold,
        map=ap["map"],
        map_50=ap["map_50"],
        per_class=per_class,
        acceptance={**asdict(kept), "accepted": kept.accepted, "recall": kept.recall},
        **context,
    )

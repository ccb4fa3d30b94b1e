"""The analysis set of an image and the image aggregation A (docs/method.md section 1, [ours]).

One detection per object: torchvision's NMS runs per class, so a young model returns an object
several times under other classes (24.7 detections per image for 3.4 objects on the digit
benchmark), and unweighted means measured that flood, not the objects.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from model.detections import Detections
from model.hua.config import RANK_DTYPE


def analysis_set(detections: Detections, merge_iou: float) -> Detections:
    """Class-agnostic NMS at ``merge_iou``: one detection per object, highest score first [ours].

    ``nms`` drops IoU strictly above ``merge_iou``; the method's ">= 0.7" differs only on exact ties.
    """
    if len(detections) <= 1:
        return detections
    return detections.select(nms(detections.boxes.float(), detections.scores.float(), merge_iou))


def image_aggregate(values: Tensor, scores: Tensor, mode: str, empty: float) -> Tensor:
    """A(v) weighted by the scores [ours]: ``sum`` sum_i s_i v_i, ``mean`` that over sum_i s_i.

    ``values``, ``scores`` Tensor[D] -> float64 Tensor[]. Empty set: 0 under ``sum``, ``empty`` under ``mean``.
    """
    values = values.to(RANK_DTYPE)
    weights = scores.to(device=values.device, dtype=RANK_DTYPE)
    if values.numel() == 0:
        return torch.tensor(0.0 if mode == "sum" else empty, dtype=RANK_DTYPE, device=values.device)
    total = (weights * values).sum()
    if mode == "sum":
        return total
    mass = weights.sum()
    return torch.where(mass > 0.0, total / mass.clamp_min(torch.finfo(RANK_DTYPE).tiny), empty)

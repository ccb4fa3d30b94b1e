"""The analysis set of an image and the image aggregation A (docs/method.md section 1, [ours]).

Every HUA quantity is an aggregate over per-detection values of the analysis
set: the detections down to the detector's analysis threshold (0.05), with one
detection per object. torchvision's NMS runs per class, so a young model returns
one object several times under other classes at low scores (24.7 detections per
image for 3.4 objects, measured on the digit benchmark); unweighted means over
that flood measured the flood, not the objects.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from model.detections import Detections
from model.hua.config import RANK_DTYPE


def analysis_set(detections: Detections, merge_iou: float) -> Detections:
    """One detection per object: class-agnostic NMS keeps the highest score of each group [ours].

    torchvision's ``nms`` drops IoU strictly above ``merge_iou`` (the method's
    ">= 0.7" differs only on exact ties).

    Args:
        detections (Detections): one image's detections, as the detector returns them.
        merge_iou (float): ``HUAConfig.merge_iou``.

    Returns:
        Detections: the kept detections, highest score first.
    """
    if len(detections) <= 1:
        return detections
    return detections.select(nms(detections.boxes.float(), detections.scores.float(), merge_iou))


def image_aggregate(values: Tensor, scores: Tensor, mode: str, empty: float) -> Tensor:
    """A(v) over one image's analysis set, weighted by the detection scores [ours].

    ``sum``: sum_i s_i v_i, the expected amount of a quantity in the image;
    ``mean``: sum_i s_i v_i / sum_i s_i, its amount per object. An empty set
    gives 0 under ``sum`` (nothing to be wrong about) and ``empty`` under ``mean``.

    Args:
        values (Tensor[D]): per-detection values v_i.
        scores (Tensor[D]): detection scores s_i (>= the analysis threshold).
        mode (str): "sum" or "mean" (``HUAConfig.aggregate``).
        empty (float): the ``mean`` of an empty set.

    Returns:
        Tensor[]: float64 A(v).
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

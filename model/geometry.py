"""Box geometry shared by training, ranking and the benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """(x1, y1, x2, y2) boxes mirrored horizontally in an image ``width`` pixels wide.

    x' = W - x, with x1 and x2 swapped so that x1 <= x2 still holds; its own
    inverse, so it maps a flipped image's boxes back as well.

    Args:
        boxes (Tensor[..., 4]): boxes in pixels.
        width (float): the image width W.

    Returns:
        Tensor[..., 4]: the mirrored boxes, same dtype and device.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)

"""What the detector returns for one image: the common currency of inference,
HUA ranking and the service.

Kept free of any model code so that ranking (``model.hua``) and the HTTP layer
can be written and tested on constructed detections.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Detections:
    """Detections of one image, after score thresholding and NMS.

    Attributes:
        boxes (Tensor[D, 4]): (x1, y1, x2, y2) in pixels of the original image,
            0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height.
        labels (Tensor[D]): int64 class indices in 1..C (0 is background).
        scores (Tensor[D]): the detector's confidence of ``labels``.
        probs (Tensor[D, C+1]): the full softmax of each detection, background
            in column 0. Rows sum to 1.
        sigmas (Tensor[D, 4]): per-edge standard deviation of the box in the
            box-delta space (``exp(alpha / 2)``); zeros when the box head has no
            log-variance output.
        width (int): width of the original image in pixels.
        height (int): height of the original image in pixels.
        features (Tensor[D] | None): the image's pooled backbone feature, when
            asked for (HUA's optional diversity pass).
    """

    boxes: Tensor
    labels: Tensor
    scores: Tensor
    probs: Tensor
    sigmas: Tensor
    width: int
    height: int
    features: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes."""
        return int(self.probs.shape[-1]) - 1

    @classmethod
    def empty(cls, num_classes: int, width: int, height: int) -> Detections:
        """Detections of an image where the detector found nothing at all."""
        c1 = num_classes + 1
        return cls(
            boxes=torch.zeros((0, 4)),
            labels=torch.zeros((0,), dtype=torch.int64),
            scores=torch.zeros((0,)),
            probs=torch.zeros((0, c1)),
            sigmas=torch.zeros((0, 4)),
            width=width,
            height=height,
        )

    def above(self, display_threshold: float) -> Detections:
        """The detections scoring at least ``display_threshold`` (SCORE_THRESHOLD: the boxes annotators are shown).

        HUA's metrics see every detection the detector returns (down to its
        analysis threshold, 0.05); pre-annotations only the confident ones.
        """
        keep = self.scores >= display_threshold
        return self if bool(keep.all()) else self.select(keep)

    def select(self, index: Tensor) -> Detections:
        """The detections picked by ``index`` (a bool mask or int64 indices), in its order."""
        return replace(
            self,
            boxes=self.boxes[index],
            labels=self.labels[index],
            scores=self.scores[index],
            probs=self.probs[index],
            sigmas=self.sigmas[index],
        )

    def to(self, device: torch.device | str) -> Detections:
        """A copy with every tensor on ``device``."""
        return Detections(
            self.boxes.to(device),
            self.labels.to(device),
            self.scores.to(device),
            self.probs.to(device),
            self.sigmas.to(device),
            self.width,
            self.height,
            None if self.features is None else self.features.to(device),
        )

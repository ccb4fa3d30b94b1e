"""Labelled images as the training loop and the evaluation read them.

A ``Sample`` is one image file with its boxes and classes; ``DetectionDataset``
serves samples as torchvision's (image, target) pairs, with the training's
random horizontal flip. Training (``model.train``) and evaluation
(``model.evaluate``) both import this module and not each other.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from model.geometry import hflip_boxes
from model.images import load_image


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        image_path (str): a local image file (EXIF orientation is applied on load).
        boxes (Tensor[N, 4]): x1, y1, x2, y2 in pixels of the displayed image.
        labels (Tensor[N]): int64 classes in 1..C.
        key (str): where it came from (e.g. the annotation id), for the version's meta.
    """

    image_path: str
    boxes: Tensor
    labels: Tensor
    key: str = ""


class DetectionDataset(Dataset):
    """Samples as (image, target) pairs, mirrored horizontally with probability ``flip_prob``."""

    def __init__(self, samples: Sequence[Sample], flip_prob: float, generator: random.Random) -> None:
        self.samples = list(samples)
        self.flip_prob = flip_prob
        self.random = generator

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        sample = self.samples[index]
        image = load_image(sample.image_path)
        boxes = sample.boxes.to(torch.float32).reshape(-1, 4)
        if self.random.random() < self.flip_prob:
            image = image.flip(-1)
            boxes = hflip_boxes(boxes, image.shape[-1])
        return image, {"boxes": boxes, "labels": sample.labels.to(torch.int64).reshape(-1)}

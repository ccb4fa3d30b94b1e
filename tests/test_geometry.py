"""Tests of model/geometry.py: the horizontal box flip shared by training, ranking and the benchmarks."""

from __future__ import annotations

import torch

from model.geometry import hflip_boxes


class TestHflipBoxes:
    def test_mirrors_x_and_keeps_y(self):
        boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
        flipped = hflip_boxes(boxes, 100)
        assert flipped.tolist() == [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]

    def test_twice_is_identity_and_boxes_stay_valid(self):
        boxes = torch.tensor([[1.5, 2.0, 7.25, 9.0], [60.0, 0.0, 64.0, 48.0]])
        flipped = hflip_boxes(boxes, 64)
        assert torch.all(flipped[:, 2] > flipped[:, 0]) and torch.all(flipped[:, 3] > flipped[:, 1])
        assert torch.allclose(hflip_boxes(flipped, 64), boxes)

    def test_matches_the_flipped_image(self):
        """The box of a bright patch moves exactly where the patch goes when the image is mirrored."""
        image = torch.zeros(1, 10, 20)
        image[:, 2:5, 3:8] = 1.0  # x 3..8, y 2..5
        mirrored = image.flip(-1)
        ys, xs = torch.nonzero(mirrored[0], as_tuple=True)
        found = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert hflip_boxes(torch.tensor([[3.0, 2.0, 8.0, 5.0]]), 20).tolist() == [found]

    def test_no_boxes(self):
        assert hflip_boxes(torch.zeros(0, 4), 50).shape == (0, 4)

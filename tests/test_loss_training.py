"""The synchronic loss inside a real detector (docs/method.md, section 4): what it does to the RPN,
and that the service's training recipe learns (bench/bench_retrain.py: with every loss form).

The learning tests fine-tune torchvision's ImageNet MobileNetV2-FPN (the file that
`make test` puts in ./.cache/torch; nothing is downloaded) on synthetic scenes of
many small coloured squares, as a user's first annotated photos look to the model:
its RPN and box head start from random, only the backbone is pretrained.
"""

from __future__ import annotations

import pytest
import torch

from backend.settings import Settings
from bench import bench_retrain
from bench.bench_retrain import scenes
from bench.common import IMAGENET_FILE
from model.detector import DetectorConfig, build_model
from model.images import load_image
from model.losses import LossConfig, combine_losses
from model.samples import Sample
from model.train import TrainConfig, train

CPU = torch.device("cpu")


def imagenet_model(loss: LossConfig = LossConfig()) -> torch.nn.Module:
    if not IMAGENET_FILE.is_file():
        pytest.skip(f"{IMAGENET_FILE} is missing: run `make weights` (or `make test`) first")
    return bench_retrain.imagenet_model(loss=loss)


def rpn_gradients(loss: LossConfig, samples: list[Sample]) -> list[torch.Tensor]:
    """Gradients of the RPN head's parameters after one backward pass of ``loss``, from one start."""
    torch.manual_seed(0)
    model, _ = build_model(
        DetectorConfig(
            backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False, min_size=96, max_size=128
        ),
        ["red", "blue"],
        loss=loss,
    )
    model.train()
    images = [load_image(s.image_path) for s in samples]
    targets = [{"boxes": s.boxes, "labels": s.labels} for s in samples]
    torch.manual_seed(1)  # the RPN's and the RoI head's sampling draw the same proposals for every loss
    total, _ = combine_losses(model(images, targets), loss)
    total.backward()
    return [p.grad.clone() for p in model.rpn.head.parameters()]


def test_balanced_form_trains_the_rpn_exactly_as_the_standard_loss(tmp_path):
    """docs/method.md, section 4: in the balanced form the RPN keeps torchvision's weight 1, outside the
    mix; in the paper's (the default) it trains at (1 + beta_loc)(1 - lambda) of it."""
    samples = scenes(tmp_path, 2, objects=6)
    standard = rpn_gradients(LossConfig(kind="standard"), samples)
    balanced = rpn_gradients(LossConfig.from_name("synchronic-balanced"), samples)
    paper = rpn_gradients(LossConfig.from_name("synchronic"), samples)
    assert any(g.abs().sum() > 0 for g in standard)
    for ours, theirs in zip(balanced, standard):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    ratio = sum(float(g.norm()) for g in paper) / sum(float(g.norm()) for g in standard)
    assert ratio < 0.9, f"the paper form's RPN gradient is {ratio:.2f} of the standard's"


@pytest.mark.slow
def test_forty_scenes_learn_without_the_clip(tmp_path):
    """No gradient clip, the balanced synchronic form at the service's lr (0.01): finite, and the loss falls.

    Measured on these scenes at lr 0.02 without the clip: the standard loss diverges too
    (NaN after 25 steps; the balanced synchronic form after 13), so 0.02 tests the data, not the loss.
    """
    config = TrainConfig(
        iterations=40,
        batch_size=4,
        lr=0.01,
        grad_clip=0.0,
        warmup_fraction=0.1,
        seed=0,
        loss=LossConfig.from_name("synchronic-balanced"),
    )
    model = imagenet_model(config.loss)
    result = train(model, scenes(tmp_path, 40, objects=8), config, CPU)
    totals = [e["total"] for e in result.epoch_losses]
    assert all(torch.isfinite(torch.tensor(totals))), totals
    assert totals[-1] < 0.8 * totals[0], totals
    assert result.summary["clip_fraction"] == 0.0


@pytest.mark.slow
def test_a_first_retraining_on_two_photos_learns(tmp_path):
    """The service's recipe (Settings' defaults) on 2 annotated images of 20 objects: the RPN's
    objectness (at chance, ln 2, at the start) and the classifier fall clearly.

    The service's floor of TRAIN_MIN_ITERATIONS = 200 steps, seeded: at 60 steps the classifier
    ended near 0.7x its start, passing or failing with the unseeded flips (seed 0: 0.716x).
    ``python -m bench.bench_retrain`` runs every loss form (README: "A first retraining").
    """
    if not IMAGENET_FILE.is_file():
        pytest.skip(f"{IMAGENET_FILE} is missing: run `make weights` (or `make test`) first")
    default = Settings().train_config().loss.name
    assert default == "synchronic"  # the paper's form
    result = bench_retrain.retrain(default, scenes(tmp_path, 2, objects=20))
    assert result.summary["iterations"] == 200
    for key in bench_retrain.WATCHED:
        first, last = bench_retrain.first_and_last(result, key)
        assert last < 0.7 * first, (key, first, last, result.summary)

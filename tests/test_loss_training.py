"""The synchronic loss inside a real detector (METHOD.md section 4): what it does to the RPN,
and that the service's training recipe learns with every loss form.

The learning tests fine-tune torchvision's ImageNet MobileNetV2-FPN (the file that
`make test` puts in ./.cache/torch; nothing is downloaded) on synthetic scenes of
many small coloured squares, as a user's first annotated photos look to the model:
its RPN and box head start from random, only the backbone is pretrained.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from backend.settings import Settings
from model.detector import DetectorConfig, build_model
from model.losses import LOSS_NAMES, LossConfig
from model.train import Sample, TrainConfig, load_image, train

REPO = Path(__file__).resolve().parent.parent
TORCH_HOME = REPO / ".cache" / "torch"
IMAGENET_FILE = TORCH_HOME / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
CPU = torch.device("cpu")
COLOURS = ((220, 30, 30), (30, 60, 220))  # class 1 red, class 2 blue


def scenes(folder: Path, count: int, objects: int, size: tuple[int, int] = (160, 128), seed: int = 0) -> list[Sample]:
    """``count`` grey images with ``objects`` non-overlapping squares of 2 classes each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        img = Image.new("RGB", size, (128, 128, 128))
        draw = ImageDraw.Draw(img)
        boxes, labels = [], []
        for x, y in rng.sample([(x, y) for x in range(0, size[0] - 16, 20) for y in range(0, size[1] - 16, 20)], objects):
            side, cls = rng.randint(10, 16), rng.randint(1, 2)
            draw.rectangle([x, y, x + side - 1, y + side - 1], fill=COLOURS[cls - 1])
            boxes.append([x, y, x + side, y + side])
            labels.append(cls)
        path = folder / f"scene-{i}.png"
        img.save(path)
        samples.append(Sample(str(path), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), key=str(i)))
    return samples


def imagenet_model(loss: LossConfig, seed: int = 0) -> torch.nn.Module:
    if not IMAGENET_FILE.is_file():
        pytest.skip(f"{IMAGENET_FILE} is missing: run `make weights` (or `make test`) first")
    config = DetectorConfig(backbone="mobilenet_v2_fpn", weights="imagenet", allow_download=False,
                            min_size=128, max_size=160, loss=loss)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(TORCH_HOME))
        torch.manual_seed(seed)
        model, report = build_model(config, ["red", "blue"])
    assert report.used == "imagenet", report
    return model


def rpn_gradients(loss: LossConfig, samples: list[Sample]) -> list[torch.Tensor]:
    """Gradients of the RPN head's parameters after one backward pass of ``loss``, from one start."""
    from model.losses import combine_losses

    torch.manual_seed(0)
    model, _ = build_model(DetectorConfig(backbone="mobilenet_v3_320_fpn", weights="none", allow_download=False,
                                          min_size=96, max_size=128, loss=loss), ["red", "blue"])
    model.roi_heads.loss = loss
    model.train()
    images = [load_image(s.image_path) for s in samples]
    targets = [{"boxes": s.boxes, "labels": s.labels} for s in samples]
    torch.manual_seed(1)  # the RPN's and the RoI head's sampling draw the same proposals for every loss
    total, _ = combine_losses(model(images, targets), loss)
    total.backward()
    return [p.grad.clone() for p in model.rpn.head.parameters()]


def test_default_form_trains_the_rpn_exactly_as_the_standard_loss(tmp_path):
    """METHOD.md section 4: the RPN keeps torchvision's weight 1, outside the mix."""
    samples = scenes(tmp_path, 2, objects=6)
    standard = rpn_gradients(LossConfig(kind="standard"), samples)
    default = rpn_gradients(LossConfig.from_name("synchronic"), samples)
    paper = rpn_gradients(LossConfig.from_name("synchronic-paper"), samples)
    assert any(g.abs().sum() > 0 for g in standard)
    for ours, theirs in zip(default, standard):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    ratio = sum(float(g.norm()) for g in paper) / sum(float(g.norm()) for g in standard)
    assert ratio < 0.9, f"the paper form's RPN gradient is {ratio:.2f} of the standard's"


@pytest.mark.slow
def test_forty_scenes_learn_at_a_high_rate_without_the_clip(tmp_path):
    """lr 0.02, no gradient clip, the default synchronic form: finite, and the loss falls."""
    model = imagenet_model(LossConfig.from_name("synchronic"))
    config = TrainConfig(iterations=60, batch_size=4, lr=0.02, grad_clip=0.0, warmup_fraction=0.1, seed=0,
                         loss=LossConfig.from_name("synchronic"))
    result = train(model, scenes(tmp_path, 40, objects=8), config, CPU)
    totals = [e["total"] for e in result.epoch_losses]
    assert all(torch.isfinite(torch.tensor(totals))), totals
    assert totals[-1] < 0.8 * totals[0], totals
    assert result.summary["clip_fraction"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_a_first_retraining_on_two_photos_learns(tmp_path, name):
    """The service's own recipe (Settings' defaults: a floor of TRAIN_MIN_ITERATIONS steps) on 2 annotated
    images of 20 objects: the RPN's objectness and the classifier fall clearly from where they start
    (objectness starts at chance, ln 2), with every loss form."""
    settings = Settings(loss=name.split("-")[0], sync_form="paper" if name.endswith("-paper") else "default")
    config = settings.train_config()
    assert config.loss.name == name
    model = imagenet_model(config.loss)
    result = train(model, scenes(tmp_path, 2, objects=20), config, CPU)
    first, last = result.epoch_losses[:10], result.epoch_losses[-10:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    assert result.summary["iterations"] == settings.train_min_iterations
    assert mean(last, "loss_objectness") < 0.6 * mean(first, "loss_objectness"), (name, result.summary)
    assert mean(last, "loss_classifier") < 0.6 * mean(first, "loss_classifier"), (name, result.summary)

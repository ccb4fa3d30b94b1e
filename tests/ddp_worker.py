"""Run by tests/test_ddp.py under torchrun: one data-parallel training on the CPU (gloo).

Each rank writes the checksum of its parameters after training; DDP must keep
them identical. Not collected by pytest (no test_ prefix).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image, ImageDraw

from model.detector import DetectorConfig, build_model
from model.distributed import is_main_process
from model.samples import Sample
from model.train import TrainConfig, train


def _samples(folder: Path, count: int) -> list[Sample]:
    samples = []
    for i in range(count):
        image = Image.new("RGB", (96, 80), (90, 90, 90))
        ImageDraw.Draw(image).rectangle([10 + 4 * i, 12, 50 + 4 * i, 52], fill=(220, 40, 40))
        path = folder / f"{i}.png"
        image.save(path)
        samples.append(Sample(str(path), torch.tensor([[10.0 + 4 * i, 12, 51 + 4 * i, 53]]), torch.tensor([1]), str(i)))
    return samples


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    folder = out / f"images-{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the same initial weights on every rank
    config = DetectorConfig(
        backbone="mobilenet_v3_320_fpn",
        weights="none",
        allow_download=False,
        min_size=96,
        max_size=128,
        sampled_rois=32,
    )
    model, _ = build_model(config, ["square"])
    before = sum(float(p.detach().double().sum()) for p in model.parameters())
    result = train(
        model, _samples(folder, 4), TrainConfig(epochs=2, min_iterations=1, batch_size=1, seed=0), torch.device("cpu")
    )
    after = sum(float(p.detach().double().sum()) for p in model.parameters())
    (out / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "before": before,
                "after": after,
                "main": is_main_process(),
                "epochs": len(result.epoch_losses),
                "world": dist.get_world_size(),
            }
        )
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

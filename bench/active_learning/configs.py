"""Named configurations of the benchmark: ``quick`` (this CPU), ``paper`` (a GPU and VOC), ``tiny`` (tests).

A :class:`BenchConfig` is a data set choice, the simulation settings and the
runs (strategy x loss x seed). The CLI starts from one of these and applies
its overrides with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.active_learning.dataset import DigitScenesConfig
from bench.active_learning.loop import RunSpec, SimulationConfig
from bench.active_learning.strategies import StrategySettings
from model.detector import DetectorConfig
from model.hua import HUAConfig
from model.losses import LossConfig
from model.train import TrainConfig

DATASETS: tuple[str, ...] = ("digits", "voc07", "voc0712", "coco")


@dataclass(frozen=True)
class BenchConfig:
    """A whole benchmark.

    Attributes:
        name (str): the preset's name (file names of the outputs).
        dataset (str): one of :data:`DATASETS`; all but "digits" need ``data_root``.
        digits (DigitScenesConfig): the scenes, when ``dataset`` is "digits".
        simulation (SimulationConfig): cycles, budget, model, training, strategies.
        runs (tuple[tuple[str, str], ...]): (strategy, loss) pairs.
        seeds (tuple[int, ...]): every run is repeated with each seed.
        workers (int): runs in parallel, one process each.
        threads (int): torch threads per worker.
    """

    name: str
    dataset: str
    simulation: SimulationConfig
    runs: tuple[tuple[str, str], ...]
    seeds: tuple[int, ...]
    digits: DigitScenesConfig = field(default_factory=DigitScenesConfig)
    workers: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {DATASETS}")
        if not self.runs or not self.seeds:
            raise ValueError("a benchmark needs at least one run and one seed")
        self.specs()  # validates every strategy and loss name

    def specs(self) -> list[RunSpec]:
        """Every (strategy, loss, seed)."""
        return [RunSpec(strategy, loss, seed) for strategy, loss in self.runs for seed in self.seeds]


def quick() -> BenchConfig:
    """About 45 minutes on an idle 2-core CPU: digit scenes, 20 + 4 x 20 labeled images, 3 seeds.

    Random vs CALD-style vs HUA with the synchronic loss, and HUA with the
    standard loss. Departures from the paper's protocol, for time: a small
    backbone (MobileNetV2-FPN, the only ImageNet weights available offline),
    small images, 6 epochs, and the model fine-tuned from cycle to cycle (as
    the service trains) instead of re-initialised: re-initialised, a model
    that sees 20-100 images for 6 epochs barely leaves AP 0, and a
    selection driven by an untrained model's uncertainty says nothing.
    """
    loss = LossConfig(kind="synchronic")
    return BenchConfig(
        name="quick",
        dataset="digits",
        digits=DigitScenesConfig(image_size=128, pool_images=200, test_images=100, min_digits=2, max_digits=5,
                                 min_scale=28, max_scale=64, seed=0),
        simulation=SimulationConfig(
            initial=20, budget=20, cycles=4,
            detector=DetectorConfig(
                backbone="mobilenet_v2_fpn", weights="imagenet", allow_download=False,
                min_size=256, max_size=256, sampled_rois=32, loss=loss,
            ),
            train=TrainConfig(
                epochs=6, lr=0.005, batch_size=4, warmup_iters=20, lr_drop_epochs=(5,),
                flip_prob=0.5, holdout_fraction=0.0, loss=loss,
            ),
            strategies=StrategySettings(hua=HUAConfig(retrieval_ratio=4.0)),
            rpn_test_proposals=50,
            device="cpu",
            batch_size=8,
            reinit=False,
        ),
        runs=(("random", "synchronic"), ("cald", "synchronic"), ("hua", "synchronic"), ("hua", "standard")),
        seeds=(0, 1, 2),
        workers=2,
        threads=1,
    )


def paper() -> BenchConfig:
    """METHOD.md section 5 on PASCAL VOC (500 initial + 500 per cycle to 3500), for a GPU.

    Differences from the paper, all forced by the code it must share with the
    service: torchvision's ResNet-50-FPN *v2* (the backbone ``model.detector``
    offers) with ImageNet weights, and the uncertainty-aware box head with
    either loss. Images as CALD's VOC setting (min 600, max 1000).
    """
    loss = LossConfig(kind="synchronic")
    return BenchConfig(
        name="paper",
        dataset="voc07",
        simulation=SimulationConfig(
            initial=500, budget=500, cycles=6,
            detector=DetectorConfig(
                backbone="resnet50_fpn_v2", weights="imagenet", allow_download=False,
                min_size=600, max_size=1000, sampled_rois=512, loss=loss,
            ),
            train=TrainConfig(
                epochs=20, lr=0.0025, momentum=0.9, weight_decay=1e-4, batch_size=4, warmup_iters=100,
                lr_drop_epochs=(16, 19), flip_prob=0.5, holdout_fraction=0.0, loss=loss,
            ),
            strategies=StrategySettings(hua=HUAConfig(retrieval_ratio=4.0)),
            rpn_test_proposals=None,
            device="auto",
            batch_size=8,
            reinit=True,
        ),
        runs=(
            ("random", "standard"), ("random", "synchronic"), ("entropy", "synchronic"),
            ("cald", "standard"), ("cald", "synchronic"), ("hua", "standard"), ("hua", "synchronic"),
            ("hua_kcenter", "synchronic"),
        ),
        seeds=(0, 1, 2),
        workers=1,
        threads=4,
    )


def tiny() -> BenchConfig:
    """Seconds, for the tests: a dozen small scenes, one cycle, untrained backbone, every strategy."""
    loss = LossConfig(kind="synchronic")
    return BenchConfig(
        name="tiny",
        dataset="digits",
        digits=DigitScenesConfig(image_size=96, pool_images=12, test_images=4, min_scale=20, max_scale=40, seed=0),
        simulation=SimulationConfig(
            initial=4, budget=3, cycles=1,
            detector=DetectorConfig(
                backbone="mobilenet_v2_fpn", weights="none", allow_download=False,
                min_size=96, max_size=96, sampled_rois=16, score_threshold=0.05, loss=loss,
            ),
            train=TrainConfig(epochs=1, lr=0.002, batch_size=2, warmup_iters=2, holdout_fraction=0.0, loss=loss),
            strategies=StrategySettings(hua=HUAConfig(retrieval_ratio=2.0)),
            rpn_test_proposals=20,
            device="cpu",
            batch_size=4,
        ),
        runs=(("random", "synchronic"), ("entropy", "synchronic"), ("cald", "synchronic"), ("hua", "synchronic"),
              ("hua_kcenter", "synchronic"), ("hua", "standard")),
        seeds=(0,),
    )


PRESETS = {"quick": quick, "paper": paper, "tiny": tiny}

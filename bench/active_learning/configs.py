"""Named configurations of the benchmark: ``warm`` (the default, this CPU), ``paper`` (a GPU and VOC),
``tiny`` (tests).

A :class:`BenchConfig` is a data set choice, an optional warm start, the
simulation settings and the runs (strategy x loss x seed). The CLI starts from
one of these and applies its overrides with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.active_learning.dataset import DigitScenesConfig
from bench.active_learning.loop import RunSpec, SimulationConfig
from bench.active_learning.pretrain import PretrainConfig
from bench.active_learning.strategies import StrategySettings
from model.detector import DetectorConfig
from model.hua import HUAConfig
from model.losses import LossConfig
from model.train import TrainConfig

DATASETS: tuple[str, ...] = ("digits", "voc07", "voc0712", "coco")

#: Training iterations per cycle of ``warm``, fixed by the calibration on cycle 0 of seed 0
#: (bench/results/active_learning_calibration.md) before any strategy was compared.
WARM_ITERATIONS: int = 800


@dataclass(frozen=True)
class BenchConfig:
    """A whole benchmark.

    Attributes:
        name (str): the preset's name (file names of the outputs).
        dataset (str): one of :data:`DATASETS`; all but "digits" need ``data_root``.
        digits (DigitScenesConfig): the scenes, when ``dataset`` is "digits"; each
            seed gets its own (``seed`` replaced by the run's).
        pretrain (PretrainConfig | None): a warm start pretrained on the held-back
            digits, which every cycle's detector is built from (digits only).
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
    pretrain: PretrainConfig | None = None
    workers: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {DATASETS}")
        if not self.runs or not self.seeds:
            raise ValueError("a benchmark needs at least one run and one seed")
        if self.pretrain is not None and self.dataset != "digits":
            raise ValueError("a pretrained warm start needs the digit scenes' held-back digits")
        self.specs()  # validates every strategy and loss name

    def specs(self) -> list[RunSpec]:
        """Every (strategy, loss, seed)."""
        return [RunSpec(strategy, loss, seed) for strategy, loss in self.runs for seed in self.seeds]


def warm() -> BenchConfig:
    """The default: METHOD.md section 6, the regime of the paper's first cycle, on this CPU (about 8 h idle).

    Digit scenes (pool 400, test 200 per seed, each seed its own scenes from one
    split of the digits), a warm start pretrained once on scenes of held-back
    digits labelled as one class, every cycle re-initialised from it and trained
    for a fixed number of iterations (chosen by the calibration written down in
    ``bench/results/active_learning_calibration.md`` before any comparison);
    10 % of the pool labeled at random, then 4 cycles of +10 %. Random, HUA and
    CALD-style selection with the default loss; the loss ablation (standard,
    synchronic, synchronic-paper) with random selection, which picks the same
    images for every loss. MobileNetV2-FPN because its ImageNet weights are the
    ones available offline; 128 px scenes upsampled to 256 px because its stride
    of 32 leaves too few cells at 128 (quick preset's measurement, README).
    """
    return BenchConfig(
        name="warm",
        dataset="digits",
        digits=DigitScenesConfig(image_size=128, pool_images=400, test_images=200, pretrain_images=600,
                                 pretrain_share=0.3, min_digits=2, max_digits=5, min_scale=28, max_scale=64,
                                 class_skew=2.0),
        pretrain=PretrainConfig(),
        simulation=SimulationConfig(
            initial=40, budget=40, cycles=4,
            detector=DetectorConfig(
                backbone="mobilenet_v2_fpn", weights="imagenet", allow_download=False,
                min_size=256, max_size=256, sampled_rois=32, rpn_test_proposals=50,
            ),
            train=TrainConfig(
                iterations=WARM_ITERATIONS, lr=0.005, batch_size=4, warmup_fraction=0.1, lr_drops=(0.8, 0.95),
                flip_prob=0.5, holdout_fraction=0.0,
            ),
            strategies=StrategySettings(hua=HUAConfig(retrieval_ratio=4.0)),
            device="cpu",
            batch_size=8,
        ),
        runs=(("random", "synchronic"), ("hua", "synchronic"), ("cald", "synchronic"),
              ("random", "standard"), ("random", "synchronic-paper")),
        seeds=(0, 1, 2, 3, 4),
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
    return BenchConfig(
        name="paper",
        dataset="voc07",
        simulation=SimulationConfig(
            initial=500, budget=500, cycles=6,
            detector=DetectorConfig(
                backbone="resnet50_fpn_v2", weights="imagenet", allow_download=False,
                min_size=600, max_size=1000, sampled_rois=512,
            ),
            train=TrainConfig(
                epochs=20, min_iterations=1, lr=0.0025, momentum=0.9, weight_decay=1e-4, batch_size=4,
                warmup_fraction=0.01, lr_drops=(16 / 20, 19 / 20), flip_prob=0.5, holdout_fraction=0.0,
            ),
            strategies=StrategySettings(hua=HUAConfig(retrieval_ratio=4.0)),
            device="auto",
            batch_size=8,
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
    """Seconds, for the tests: a dozen small scenes, one cycle, a warm start of two steps from an
    untrained backbone, every strategy and every loss."""
    return BenchConfig(
        name="tiny",
        dataset="digits",
        digits=DigitScenesConfig(image_size=96, pool_images=12, test_images=4, pretrain_images=4,
                                 pretrain_share=0.3, min_scale=20, max_scale=40),
        pretrain=PretrainConfig(train=TrainConfig(iterations=2, lr=0.002, batch_size=2, holdout_fraction=0.0,
                                                  loss=LossConfig.from_name("standard"))),
        simulation=SimulationConfig(
            initial=4, budget=3, cycles=1,
            detector=DetectorConfig(
                backbone="mobilenet_v2_fpn", weights="none", allow_download=False,
                min_size=96, max_size=96, sampled_rois=16, score_threshold=0.05, rpn_test_proposals=20,
            ),
            train=TrainConfig(iterations=4, lr=0.002, batch_size=2, warmup_fraction=0.5, holdout_fraction=0.0),
            strategies=StrategySettings(hua=HUAConfig(retrieval_ratio=2.0)),
            device="cpu",
            batch_size=4,
        ),
        runs=(("random", "synchronic"), ("entropy", "synchronic"), ("cald", "synchronic"), ("hua", "synchronic"),
              ("hua_kcenter", "synchronic"), ("random", "standard"), ("random", "synchronic-paper")),
        seeds=(0,),
    )


PRESETS = {"warm": warm, "paper": paper, "tiny": tiny}

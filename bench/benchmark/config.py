"""The benchmark's config, declared once: the command line, its help, checks and ``--quick``
are generated from :class:`Config` (``experiments.lab``), as for every experiment and probe.

``--quick`` only changes the values of flags not given; an explicit value is always checked
(``--reps 0``, ``--train-examples 0`` and ``--sections ''`` are refused, not replaced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.scaling import MAX_DEVICES, MAX_MODELS  # the device section runs bench.scaling
from experiments import harness, lab
from jnn import config
from jnn.config import ConfigError, option

NAME = "benchmark"
BATCH_SIZE = 32  # the MLP sections' batch (the study's)
SECTIONS = (
    "train_epoch", "evaluation", "ceiling", "vgg", "models_per_program", "devices", "cnn", "study",
)  # fmt: skip
QUICK = {
    "reps": 3, "train_examples": 4_800, "eval_examples": 2_000, "models": (1, 4),
    "devices": (1, 2), "vgg_images": 96, "cnn_steps": 2, "study_epochs": 2, "small": True,
}  # fmt: skip
DESCRIPTION = (
    "Time one training epoch and the evaluation pass of the study's MLP in jnn (scanned epoch "
    "with manual backprop or jax.grad, jitted step loop) against a numpy loop, PyTorch eager and "
    "scikit-learn; the machine's matmul ceiling; VGG16 feature extraction; models per XLA "
    "program and devices scaling; the CNN's train step (manual vs jax.grad vs PyTorch eager); "
    "the main job's preset (python -m experiments.mlp_sweep, a few epochs) beside per-device "
    "models."
)


@dataclass(frozen=True)
class Config:
    """Everything a benchmark run depends on (the ``config`` block of results.json)."""

    reps: int = option(5, "timed repetitions per case")
    warmup: int = option(1, "untimed warm-up rounds")
    train_examples: int = option(48_000, "examples per MLP epoch")
    eval_examples: int = option(10_000, "examples in the evaluation pass")
    data: str = option(
        "synthetic", "synthetic arrays of the dataset's shapes, the real data if already on "
        "disk (fashion), or fashion when available (auto)",
    )  # fmt: skip
    torch_device: str = option("auto", "PyTorch's device: auto (cuda if it has a GPU), cpu, cuda")
    models: tuple[int, ...] = option((1, 2, 4, 8), "models per XLA program")
    sections: tuple[str, ...] = option(SECTIONS, "sections to run")
    vgg_images: int = option(512, "images per VGG16 repetition")
    devices: tuple[int, ...] = option((1, 2, 4), "device counts of the data-parallel section")
    cnn_steps: int = option(5, "CNN train steps per timed sample")
    study_epochs: int = option(
        3, "epochs of the main job's preset in the study section (at least 2: the first compiles)"
    )
    seed: int = option(0, "seed of data, weights and shuffling")
    small: bool = option(
        False, "smoke sizes where a section sizes itself: VGG16 batch 32 (else 64), "
        "bench.scaling's 8,192 examples and 3 timed epochs (else 48,000 and 5)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        config.integer(self.reps, "reps", 1, 1000)
        config.integer(self.warmup, "warmup", 0, 100)
        config.integer(self.train_examples, "train_examples", BATCH_SIZE, 10_000_000)
        config.integer(self.eval_examples, "eval_examples", 1, 10_000_000)
        config.choice(self.data, "data", ("auto", "fashion", "synthetic"))
        config.choice(self.torch_device, "torch_device", ("auto", "cpu", "cuda"))
        self._counts("models", MAX_MODELS)
        self._counts("devices", MAX_DEVICES)
        if not self.sections:
            raise ConfigError(f"`sections` is empty; choose from {', '.join(SECTIONS)}")
        for name in self.sections:
            config.choice(name, "sections", SECTIONS)
        config.distinct(self.sections, "sections")
        config.integer(self.vgg_images, "vgg_images", 1, 100_000)
        config.integer(self.cnn_steps, "cnn_steps", 1, 1000)
        config.integer(self.study_epochs, "study_epochs", 2, 100)
        config.integer(self.seed, "seed", 0, config.MAX_SEED)

    def _counts(self, name: str, maximum: int) -> None:
        values = getattr(self, name)
        if not values:
            raise ConfigError(f"`{name}` needs at least one count")
        for v in values:
            config.integer(v, name, 1, maximum)
        config.distinct(values, name)


def parse_invocation(argv: Sequence[str] | None) -> lab.Invocation:
    """Command line -> the checked config and the run folder (one line per bad value)."""
    return lab.parse(
        Config, argv, name=NAME, package="bench", resume=False, description=DESCRIPTION,
        quick=QUICK, epilog=harness.EXIT_CODES_NO_TRAINING,
    )  # fmt: skip


def parse(argv: Sequence[str] | None = None) -> Config:
    """The checked, frozen :class:`Config` of ``argv`` (the API the sections' tests use)."""
    return parse_invocation(argv).config

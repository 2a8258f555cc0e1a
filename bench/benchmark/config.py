"""The benchmark's command line: a frozen :class:`Config` from :func:`parse`, every flag checked.

``--quick`` only changes the defaults of flags not given; an explicit value is always checked
(``--reps 0``, ``--train-examples 0`` and ``--sections ''`` are refused, not replaced).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from bench import checks
from experiments import harness
from jnn.errors import InputError

NAME = "benchmark"
BATCH_SIZE = 32  # the MLP sections' batch (the study's)
MAX_DEVICES = 64  # as bench.scaling's --devices (forced host devices)
MAX_MODELS = 1024  # models per XLA program, as bench.scaling's --models
SECTIONS = (
    "train_epoch", "evaluation", "ceiling", "vgg", "models_per_program", "devices", "cnn", "study",
)  # fmt: skip
# (quick, full) defaults of the flags whose default depends on --quick
DEFAULTS: dict[str, tuple[Any, Any]] = {
    "reps": (3, 5),
    "train_examples": (4_800, 48_000),
    "eval_examples": (2_000, 10_000),
    "models": ("1,4", "1,2,4,8"),
    "devices": ("1,2", "1,2,4"),
    "vgg_images": (96, 512),
    "cnn_steps": (2, 5),
    "study_epochs": (2, 3),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a benchmark run depends on (the ``config`` block of results.json)."""

    out: str
    overwrite: bool = False
    quick: bool = False
    reps: int = 5
    warmup: int = 1
    train_examples: int = 48_000
    eval_examples: int = 10_000
    data: str = "synthetic"
    torch_device: str = "auto"
    models: tuple[int, ...] = (1, 2, 4, 8)
    sections: tuple[str, ...] = SECTIONS
    vgg_images: int = 512
    devices: tuple[int, ...] = (1, 2, 4)
    cnn_steps: int = 5
    study_epochs: int = 3
    seed: int = 0


def _parser() -> argparse.ArgumentParser:
    p = harness.parser(
        "benchmark",
        package="bench",
        description=(
            "Time one training epoch and the evaluation pass of the study's 784-256-128-64-10 "
            "MLP in jnn (scanned epoch with manual backprop or jax.grad, jitted step loop) "
            "against a numpy loop, PyTorch eager and scikit-learn; the machine's matmul "
            "ceiling; VGG16 feature extraction; models per XLA program and devices scaling; "
            "the CNN's train step (manual vs jax.grad vs PyTorch eager); the main job's preset "
            "(python -m experiments.mlp_sweep, a few epochs) beside per-device models."
        ),
        epilog=harness.EXIT_CODES_NO_TRAINING,
    )
    a = p.add_argument
    a("--quick", action="store_true", help="CI smoke run: small sizes, 3 reps")
    harness.add_output_flags(p, NAME)
    a("--reps", type=int, default=None, help="timed repetitions per case (default 5, --quick 3)")
    a("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    a("--train-examples", type=int, help="examples per MLP epoch (default 48,000; --quick 4,800)")
    a("--eval-examples", type=int, help="examples in the evaluation pass (10,000; --quick 2,000)")
    a(
        "--data",
        choices=("auto", "fashion", "synthetic"),
        default="synthetic",
        help="synthetic arrays of Fashion-MNIST's shapes (default), the real data "
        "if already on disk (fashion), or fashion when available (auto)",
    )
    a(
        "--torch-device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="device for the PyTorch reference (auto: cuda if torch sees a GPU)",
    )
    a("--models", help="models per XLA program, comma separated (default 1,2,4,8; --quick 1,4)")
    a("--sections", default=",".join(SECTIONS), help=f"sections to run (default all: {SECTIONS})")
    a("--vgg-images", type=int, help="images per VGG16 repetition (default 512; --quick 96)")
    a("--devices", help="device counts for the data-parallel section (default 1,2,4; quick 1,2)")
    a("--cnn-steps", type=int, help="CNN train steps per timed sample (default 5; --quick 2)")
    a(
        "--study-epochs",
        type=int,
        help="epochs of the main job's preset in the study section (default 3; --quick 2: the "
        "first epoch compiles, so at least 2 give a rate without compiling)",
    )
    a("--seed", type=int, default=0, help="seed for data, weights and shuffling")
    return p


def _items(text: str, flag: str, example: str) -> list[str]:
    """The comma-separated items of ``text``, stripped; an empty item (``1,,2``, a trailing
    comma) is refused, not dropped: what runs must be what was typed."""
    items = [t.strip() for t in text.split(",")]
    if "" in items and any(items):
        raise InputError(
            f"{flag} {text!r} has an empty item; pass comma-separated values without gaps, "
            f"e.g. {example}"
        )
    return [t for t in items if t]


def _counts(text: str, flag: str, example: str, maximum: int) -> tuple[int, ...]:
    """Comma-separated integers in [1, maximum], each item checked (none dropped)."""
    items = _items(text, flag, example)
    if not items or not all(t.isascii() and t.isdigit() and int(t) >= 1 for t in items):
        raise InputError(f"{flag} needs comma-separated positive integers, e.g. {example}")
    values = tuple(int(t) for t in items)
    if max(values) > maximum:
        raise InputError(f"{flag} values must be at most {maximum:,}, got {max(values):,}")
    return checks.distinct(values, flag)


def _sections(text: str) -> tuple[str, ...]:
    sections = tuple(_items(text, "--sections", "train_epoch,evaluation"))
    if not sections:
        raise InputError(f"--sections is empty; choose from {', '.join(SECTIONS)}")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise InputError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return checks.distinct(sections, "--sections")


def check(args: argparse.Namespace) -> Config:
    """Fill the --quick/full defaults of flags not given; refuse values that cannot work."""
    v = {k: getattr(args, k) for k in DEFAULTS}
    v = {k: val if val is not None else DEFAULTS[k][0 if args.quick else 1] for k, val in v.items()}
    if v["reps"] < 1 or args.warmup < 0:
        raise InputError(f"--reps must be >= 1 and --warmup >= 0, got {v['reps']}, {args.warmup}")
    if v["train_examples"] < BATCH_SIZE or v["eval_examples"] < 1:
        raise InputError(
            f"--train-examples must be >= {BATCH_SIZE} and --eval-examples >= 1, got "
            f"{v['train_examples']}, {v['eval_examples']}"
        )
    return Config(
        out=args.out or harness.default_out(NAME),
        overwrite=args.overwrite,
        quick=args.quick,
        reps=v["reps"],
        warmup=args.warmup,
        train_examples=v["train_examples"],
        eval_examples=v["eval_examples"],
        data=args.data,
        torch_device=args.torch_device,
        models=_counts(v["models"], "--models", "1,4", MAX_MODELS),
        sections=_sections(args.sections),
        vgg_images=checks.positive_int(v["vgg_images"], "--vgg-images"),
        devices=_counts(v["devices"], "--devices", "1,2", MAX_DEVICES),
        cnn_steps=checks.positive_int(v["cnn_steps"], "--cnn-steps", maximum=1000),
        study_epochs=_study_epochs(v["study_epochs"]),
        seed=checks.seed(args.seed),
    )


def _study_epochs(value: int) -> int:
    """At least 2: the study section's rate leaves out the first epoch, which compiles."""
    checks.positive_int(value, "--study-epochs", maximum=100)
    if value < 2:
        raise InputError(
            "--study-epochs must be at least 2: the first epoch compiles, so one gives no rate"
        )
    return value


def parse(argv: Sequence[str] | None = None) -> Config:
    """The checked, frozen :class:`Config` of ``argv``."""
    return check(_parser().parse_args(argv))

"""Measurement apart from the studies: the benchmark (sections of ratios measured side by side),
the probes that explain its numbers, device scaling, and the reference trainers (numpy,
PyTorch, scikit-learn) it times jnn against. Each runs as ``python -m bench.NAME``, imports
``jnn`` and the shared harness of ``experiments`` (run folders, stamps, one-line errors), and no
study imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jnn.data import get_dataset

if TYPE_CHECKING:
    from experiments.harness import Experiment

# The study's images (H, W, C) and classes, from the dataset entry: the measurement commands'
# synthetic data and networks take these shapes (nothing in bench knows 28 x 28 or 10 itself).
IMAGE_SHAPE: tuple[int, int, int] = get_dataset("fashion_mnist").input_shape
CLASSES: int = get_dataset("fashion_mnist").num_classes


def probe(
    name: str,
    config_cls: type,
    doc: str,
    quick: dict[str, Any],
    run: Callable[[Any, Path], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> Experiment:
    """The command of the probe ``python -m bench.<name>``, as a ``harness.Experiment``: flags,
    help, checks and ``--quick`` generated from ``config_cls`` (``experiments.lab``; no
    ``--resume``: a probe measures once), described by the first line of ``doc``, its result
    written as probe.json and ``markdown(result)`` as probe.md. ``harness.cli`` of it is the
    module's ``main``."""
    from experiments import harness, lab

    def parse(argv: Sequence[str] | None) -> lab.Invocation:
        return lab.parse(
            config_cls, argv, name=name, package="bench", resume=False, quick=quick,
            description=doc.split("\n")[0], epilog=harness.EXIT_CODES_NO_TRAINING,
        )  # fmt: skip

    return harness.Experiment(name, parse, run, probe_render(markdown), markdown)


def probe_render(
    markdown: Callable[[dict[str, Any]], str],
) -> Callable[[dict[str, Any], Path], list[Path]]:
    """The ``render`` of a probe (``bench.grid_probe``, ``bench.conv_lowering``, ...): its result
    as probe.json and ``markdown(result)`` as probe.md in the run folder."""

    def render(result: dict[str, Any], out: Path) -> list[Path]:
        from jnn import workdir  # here: importing bench alone (scaling's workers) stays light

        out = Path(out)
        workdir.write_json(out / "probe.json", result)
        workdir.write_text_atomic(out / "probe.md", markdown(result))
        return [out / "probe.json", out / "probe.md"]

    return render

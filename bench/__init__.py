"""Measurement apart from the studies: the benchmark (sections of ratios measured side by side),
the probes that explain its numbers, device scaling, and the reference trainers (numpy,
PyTorch, scikit-learn) it times jnn against. Each runs as ``python -m bench.NAME``, imports
``jnn`` and the shared harness of ``experiments`` (run folders, stamps, one-line errors), and no
study imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jnn.data import get_dataset

# The study's images (H, W, C) and classes, from the dataset entry: the measurement commands'
# synthetic data and networks take these shapes (nothing in bench knows 28 x 28 or 10 itself).
IMAGE_SHAPE: tuple[int, int, int] = get_dataset("fashion_mnist").input_shape
CLASSES: int = get_dataset("fashion_mnist").num_classes


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

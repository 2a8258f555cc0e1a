"""Training curves over seeds as PNG files (matplotlib's Agg canvas; no display needed).

Histories are dicts of arrays: ``train_loss``/``val_loss``/``train_accuracy``/``val_accuracy`` of
shape (epochs,) or (seeds, epochs), NaN where an epoch did not run (a model that diverged or
stopped early). Several seeds are drawn as their mean with a +-1 std band: one seed's curve is
noise around the cell's, and the band says how much. What failed is written on the panel
(:func:`write_on_panel`), not left for the reader to infer from a missing line.

Imports matplotlib (a dependency of jnn); ``import jnn`` does not import this module.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jnn.errors import InputError
from jnn.workdir import write_atomic

__all__ = [
    "JNN",
    "METRICS",
    "SKLEARN",
    "draw_metric",
    "mean_std_curves",
    "save_figure",
    "write_on_panel",
]

JNN = {"label": "jnn", "style": "-", "colors": ("tab:blue", "tab:orange")}
"""jnn's curves: solid, train blue, validation orange."""
SKLEARN = {"label": "sklearn", "style": "--", "colors": ("tab:green", "tab:red")}
"""scikit-learn's (the reference, ``jnn.reference``): dashed, train green, validation red."""
METRICS = {"loss": ("cross-entropy", "loss"), "accuracy": ("accuracy", "accuracy")}
"""The metrics :func:`draw_metric` draws: name -> (y-axis label, short name)."""


def mean_std_curves(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over seeds of ``values``, (epochs,) or (seeds, epochs): two (epochs,) arrays.

    NaN entries (epochs a seed did not run) are left out; an epoch no seed ran is NaN in the
    mean and 0 in the std (without numpy's empty-slice warning). One seed: std 0.
    """
    try:
        a = np.atleast_2d(np.asarray(values, dtype=np.float64))
    except (TypeError, ValueError):
        msg = "mean_std_curves: values must be numbers, (epochs,) or (seeds, epochs)"
        raise InputError(msg) from None
    if a.ndim != 2 or a.shape[1] == 0:
        raise InputError(f"mean_std_curves: expected (epochs,) or (seeds, epochs), got {a.shape}")
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: epochs not run
        mean = np.nanmean(a, axis=0)
        std = np.nanstd(a, axis=0) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return mean, np.nan_to_num(std)


def draw_metric(
    ax: Any,
    history: Mapping[str, Any],
    metric: str,
    save_at: Sequence[int],
    *,
    style: Mapping[str, Any] = JNN,
) -> None:
    """Train and validation ``metric`` ("loss" or "accuracy") vs epoch on the axes ``ax``, mean
    over seeds with a +-1 std band, and a dot at every checkpoint epoch (``save_at``, 1-based)
    that ran. Keys missing from ``history`` (scikit-learn records no training accuracy) or with
    no epochs (a model that diverged in epoch 1) are skipped. ``style``: :data:`JNN` or
    :data:`SKLEARN`, or a dict of the same keys."""
    if metric not in METRICS:
        raise InputError(f"draw_metric: metric must be one of {list(METRICS)}, got {metric!r}")
    for split, color in zip(("train", "val"), style["colors"]):
        key = f"{split}_{metric}"
        if key not in history or np.size(history[key]) == 0:
            continue  # not recorded, or a model that diverged in its first epoch: no curve
        mean, std = mean_std_curves(history[key])
        epochs = np.arange(1, len(mean) + 1)
        marks = [e - 1 for e in save_at if 0 < e <= len(mean) and np.isfinite(mean[e - 1])]
        ax.plot(epochs, mean, style["style"], color=color, marker="o", markevery=marks, ms=5)
        if np.any(std > 0):
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_xlim(0, len(mean) + 1)  # the whole run, also where a model stopped early
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRICS[metric][0])
    ax.grid(True, alpha=0.3)


def write_on_panel(ax: Any, text: str) -> None:
    """A failure or divergence stated on the panel ``ax`` itself (top left, boxed); nothing for
    an empty ``text``."""
    if text:
        box = {"boxstyle": "round", "fc": "white", "ec": "darkred", "alpha": 0.9}
        ax.text(
            0.02, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize="small",
            color="darkred", bbox=box,
        )  # fmt: skip


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Render ``fig`` with Agg and write it to ``path`` as a PNG (110 dpi), atomically: a
    temporary file, then a rename (``jnn.workdir.write_atomic``), so a full disk or a read-only
    folder leaves no half-written PNG (and no temporary file) and is one
    ``jnn.workdir.StorageError`` line. Returns the path."""
    if not isinstance(fig, Figure):
        raise InputError(f"save_figure: expected a matplotlib Figure, got {type(fig).__name__}")
    FigureCanvasAgg(fig)
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))

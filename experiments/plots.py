"""Curves of the MLP study as PNG files (matplotlib's Agg canvas; no display needed).

Histories are dicts of arrays: ``train_loss``/``val_loss``/``train_accuracy``/``val_accuracy`` of
shape (epochs,) or (seeds, epochs), NaN where an epoch did not run (missing keys are skipped:
scikit-learn records no training accuracy). Several seeds are drawn as their mean with a +-1 std
band. Every figure answers both halves of the study's question: loss *and* accuracy, train and
validation; the checkpoint epochs are marked and named in the legend; what failed is written on
the panel, not left for the reader to infer from a missing line.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

JNN = {"label": "jnn", "style": "-", "colors": ("tab:blue", "tab:orange")}
SKLEARN = {"label": "sklearn", "style": "--", "colors": ("tab:green", "tab:red")}
METRICS = {"loss": ("cross-entropy", "loss"), "accuracy": ("accuracy", "accuracy")}


def _mean_std(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over seeds, NaN for epochs no seed ran (without numpy's empty-slice warning)."""
    a = np.atleast_2d(np.asarray(values, dtype=np.float64))
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
    """Train and validation ``metric`` ("loss" or "accuracy") vs epoch on ``ax``, with a dot at
    every checkpoint epoch that ran."""
    for split, color in zip(("train", "val"), style["colors"]):
        key = f"{split}_{metric}"
        if key not in history:
            continue
        mean, std = _mean_std(history[key])
        epochs = np.arange(1, len(mean) + 1)
        marks = [e - 1 for e in save_at if 0 < e <= len(mean) and np.isfinite(mean[e - 1])]
        ax.plot(epochs, mean, style["style"], color=color, marker="o", markevery=marks, ms=5)
        if np.any(std > 0):
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_xlim(0, len(mean) + 1)  # the whole run, also where a model stopped early
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRICS[metric][0])
    ax.grid(True, alpha=0.3)


def legend_handles(save_at: Sequence[int], with_sklearn: bool, seeds: int = 1) -> list[Line2D]:
    """Legend entries drawn exactly as the curves are (solid jnn, dashed sklearn), plus the
    checkpoint dot and, for several seeds, what the band means."""
    handles = []
    for style in (JNN, SKLEARN) if with_sklearn else (JNN,):
        for split, color in zip(("train", "validation"), style["colors"]):
            label = f"{style['label']} {split}"
            handles.append(Line2D([], [], linestyle=style["style"], color=color, label=label))
    epochs = ", ".join(str(e) for e in save_at)
    handles.append(
        Line2D([], [], marker="o", linestyle="none", color="0.3", label=f"checkpoint ({epochs})")
    )
    if seeds > 1:
        handles.append(
            Line2D([], [], lw=6, alpha=0.3, color="0.5", label=f"+-1 std, {seeds} seeds")
        )
    return handles


def write_on_panel(ax: Any, text: str) -> None:
    """A failure or divergence stated on the panel itself (top left, boxed)."""
    if text:
        box = {"boxstyle": "round", "fc": "white", "ec": "darkred", "alpha": 0.9}
        ax.text(
            0.02, 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize="small",
            color="darkred", bbox=box,
        )  # fmt: skip


def _panel_pair(
    axes: Sequence[Any],
    history: Mapping[str, Any],
    save_at: Sequence[int],
    sklearn_history: Mapping[str, Any] | None,
    note: str,
) -> None:
    for ax, metric in zip(axes, METRICS):
        draw_metric(ax, history, metric, save_at)
        if sklearn_history:
            draw_metric(ax, sklearn_history, metric, save_at, style=SKLEARN)
    write_on_panel(axes[0], note)


def _seeds(history: Mapping[str, Any]) -> int:
    first = next(iter(history.values()), [])
    return int(np.atleast_2d(np.asarray(first, dtype=np.float64)).shape[0])


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` with Agg and write it to ``path`` as a PNG, atomically: a temporary file,
    then a rename (``jnn.workdir.write_atomic``), so a full disk or a read-only folder leaves
    no half-written PNG (and no temporary file) and is one ``jnn.workdir.StorageError`` line."""
    from jnn.workdir import write_atomic

    FigureCanvasAgg(fig)
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def plot_activation(
    path: str | Path,
    activation: str,
    history: Mapping[str, Any],
    save_at: Sequence[int],
    *,
    sklearn_history: Mapping[str, Any] | None = None,
    note: str = "",
    settings: str = "",
) -> Path:
    """One PNG, two panels (loss | accuracy): jnn solid, sklearn dashed when given. ``settings``
    (init, lr, batch, split) go into the title; ``note`` (divergence, sklearn's failure) is
    written on the loss panel."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    _panel_pair(axes, history, save_at, sklearn_history, note)
    fig.suptitle(f"{activation}{': ' + settings if settings else ''}")
    handles = legend_handles(save_at, bool(sklearn_history), _seeds(history))
    axes[1].legend(handles=handles, fontsize="small", loc="lower right")
    return save_figure(fig, Path(path))


def plot_overview(
    path: str | Path,
    histories: Mapping[str, Mapping[str, Any]],
    save_at: Sequence[int],
    *,
    sklearn_histories: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Every activation in one PNG: a row each, loss left and accuracy right, one shared legend;
    ``notes`` (per activation) are written on that row's loss panel."""
    n = max(1, len(histories))
    fig = Figure(figsize=(11, 2.9 * n + 0.8), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    sk_all = sklearn_histories or {}
    for row, (activation, history) in zip(axes, histories.items()):
        sk = sk_all.get(activation)
        _panel_pair(row, history, save_at, sk, (notes or {}).get(activation, ""))
        row[0].set_title(f"{activation}: loss", fontsize="medium")
        row[1].set_title(f"{activation}: accuracy", fontsize="medium")
    seeds = max((_seeds(h) for h in histories.values()), default=1)
    handles = legend_handles(save_at, bool(sk_all), seeds)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    if title:
        fig.suptitle(title)
    return save_figure(fig, Path(path))

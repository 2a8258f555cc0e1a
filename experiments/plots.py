"""Loss curves of the MLP study as PNG files (matplotlib's Agg canvas; no display needed).

Histories are dicts of arrays: ``train_loss``/``val_loss`` of shape (epochs,) or (seeds, epochs),
NaN where an epoch did not run. Several seeds are drawn as their mean with a +-1 std band.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _mean_std(values: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.atleast_2d(np.asarray(values, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(a, axis=0) if np.isfinite(a).any() else np.full(a.shape[1], np.nan)
        std = np.nanstd(a, axis=0) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return mean, std


def draw_losses(
    ax: Any,
    history: Mapping[str, Any],
    save_at: Sequence[int],
    *,
    label: str = "jnn",
    style: str = "-",
    colors: tuple[str, str] = ("tab:blue", "tab:orange"),
) -> None:
    """Train and validation loss vs epoch on ``ax``, with a marker at every checkpoint epoch."""
    for (key, name), color in zip((("train_loss", "train"), ("val_loss", "val")), colors):
        if key not in history:
            continue
        mean, std = _mean_std(history[key])
        epochs = np.arange(1, len(mean) + 1)
        marks = [e - 1 for e in save_at if 0 < e <= len(mean) and np.isfinite(mean[e - 1])]
        ax.plot(
            epochs, mean, style, color=color, label=f"{label} {name}", markevery=marks, marker="o"
        )
        if np.any(std > 0):
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.grid(True, alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_activation(
    path: str | Path,
    activation: str,
    history: Mapping[str, Any],
    save_at: Sequence[int],
    *,
    sklearn_history: Mapping[str, Any] | None = None,
    note: str = "",
) -> Path:
    """One PNG: jnn's train/val loss (solid), sklearn's (dashed) when given."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    draw_losses(ax, history, save_at)
    if sklearn_history:
        draw_losses(
            ax,
            sklearn_history,
            save_at,
            label="sklearn",
            style="--",
            colors=("tab:green", "tab:red"),
        )
    ax.set_title(f"{activation}{' - ' + note if note else ''}")
    ax.legend(fontsize="small")
    return _save(fig, Path(path))


def plot_overview(
    path: str | Path,
    histories: Mapping[str, Mapping[str, Any]],
    save_at: Sequence[int],
    *,
    sklearn_histories: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    notes: Mapping[str, str] | None = None,
) -> Path:
    """All activations side by side, one panel each; ``notes`` go into panel titles."""
    n = max(1, len(histories))
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (activation, history) in zip(axes, histories.items()):
        draw_losses(ax, history, save_at)
        sk = (sklearn_histories or {}).get(activation)
        if sk:
            draw_losses(
                ax, sk, save_at, label="sklearn", style="--", colors=("tab:green", "tab:red")
            )
        note = (notes or {}).get(activation)
        ax.set_title(f"{activation}{' - ' + note if note else ''}")
        ax.legend(fontsize="x-small")
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))

"""Curves of the MLP study as PNG files (matplotlib's Agg canvas; no display needed).

Histories are dicts of arrays: ``train_loss``/``val_loss``/``train_accuracy``/``val_accuracy`` of
shape (epochs,) or (seeds, epochs), NaN where an epoch did not run (missing keys are skipped:
scikit-learn records no training accuracy). Several seeds are drawn as their mean with a +-1 std
band. Every figure answers both halves of the study's question: loss *and* accuracy, train and
validation; the checkpoint epochs are marked and named in the legend; what failed is written on
the panel, not left for the reader to infer from a missing line. The generic pieces (a metric's
curves over seeds, the note on a panel, the atomic PNG) are :mod:`jnn.plots`; this module lays
out the study's figures and their legend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jnn.plots import JNN, METRICS, SKLEARN, draw_metric, save_figure, write_on_panel


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

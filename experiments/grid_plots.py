"""Figures of the MLP grid (``experiments.mlp_grid``): a heatmap of mean test accuracy per cell
and validation curves with +-1 std bands over seeds, drawn with :mod:`jnn.plots`.

Input is the grid's results dict (results.json): ``cells`` with per-save-epoch stats and
``models`` with per-model histories (NaN/None from a model's divergence on).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jnn.plots import mean_std_curves, save_figure, write_on_panel

INIT_COLORS = ("tab:gray", "tab:orange", "tab:blue", "tab:green", "tab:purple", "tab:brown")


Panel = tuple[str | None, float]  # (optimizer in a study of several, else None; lr)


def _panel_of(cell: dict[str, Any]) -> Panel:
    """The panel a cell (``mlp_grid.cell_key``) is drawn in: its optimizer (None in a study of
    one) and its lr."""
    return cell.get("optimizer"), cell["lr"]


def panels(results: dict[str, Any]) -> list[Panel]:
    """The (optimizer, lr) pairs of the grid's cells, in their order: one heatmap panel and one
    bands figure each (cells of different optimizers at one lr must not share a panel)."""
    return list(dict.fromkeys(_panel_of(c["cell"]) for c in results["cells"]))


def _title(panel: Panel) -> str:
    opt, lr = panel
    return f"{opt + ', ' if opt else ''}lr = {lr:g}"


def _cell_grid(results: dict[str, Any], panel: Panel, epoch: int) -> tuple[np.ndarray, list]:
    """(activations, inits) mean test accuracy (NaN: every seed diverged) and text per cell."""
    cfg = results["config"]
    acts, inits = cfg["activations"], cfg["inits"]
    mean = np.full((len(acts), len(inits)), np.nan)
    text = [["" for _ in inits] for _ in acts]
    for c in results["cells"]:
        if _panel_of(c["cell"]) != panel:
            continue
        i, j = acts.index(c["cell"]["activation"]), inits.index(c["cell"]["init"])
        s = c["at"][str(epoch)]["test_accuracy"]
        if s["mean"] is not None:
            mean[i, j] = s["mean"]
            text[i][j] = f"{s['mean']:.3f}" + (f"\n±{s['std']:.3f}" if c["seeds"] > 1 else "")
        if c["diverged"]:
            sep = "\n" if text[i][j] else ""
            text[i][j] += f"{sep}{c['diverged']}/{c['seeds']}\ndiverged"
    return mean, text


def plot_heatmap(path: str | Path, results: dict[str, Any], epoch: int) -> Path:
    """Activation (rows) x init (columns), one panel per (optimizer, lr): colour and number =
    mean test accuracy over the seeds that did not diverge (± std); diverged counts in red."""
    cfg, cols = results["config"], panels(results)
    acts, inits = cfg["activations"], cfg["inits"]
    fig = Figure(
        figsize=(1.0 + 3.3 * len(cols) + 0.8, 1.0 + 0.75 * len(acts)), layout="constrained"
    )
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    image = None
    for ax, panel in zip(axes, cols):
        mean, text = _cell_grid(results, panel, epoch)
        image = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_facecolor("0.85")  # cells where every seed diverged
        for i in range(len(acts)):
            for j in range(len(inits)):
                bright = np.isfinite(mean[i, j]) and mean[i, j] > 0.7
                color = "darkred" if "diverged" in text[i][j] else ("black" if bright else "white")
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(inits)), inits)
        ax.set_yticks(range(len(acts)), acts)
        ax.set_title(_title(panel))
        ax.set_xlabel("initializer")
    axes[0].set_ylabel("hidden activation")
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9)
    bar.set_label(f"mean test accuracy, epoch {epoch}")
    fig.suptitle(
        f"Test accuracy after {epoch} epochs: mean ± std over the {cfg['seeds']} seeds that did "
        f"not diverge (chance = 0.1; grey = every seed diverged)\n{_settings(results)}"
    )
    return save_figure(fig, Path(path))


def _settings(results: dict[str, Any]) -> str:
    """One line of what was trained: network, data sizes, optimizer."""
    cfg, n = results["config"], results["sizes"]
    net = "-".join(map(str, cfg["sizes"]))
    return (
        f"MLP {net}, {cfg.get('optimizer', 'sgd')}, batch {cfg['batch_size']}, "
        f"{n['train']:,} training examples "
        f"(split {cfg['split']}), {n['val']:,} val, {n['test']:,} test"
    )


def _histories(results: dict[str, Any], activation: str, init: str, panel: Panel) -> tuple:
    rows = [
        m for m in results["models"]
        if (m["cell"]["activation"], m["cell"]["init"], _panel_of(m["cell"]))
        == (activation, init, panel)
    ]  # fmt: skip
    keys = rows[0]["history"] if rows else {}
    as_float = lambda v: np.array([np.nan if x is None else x for x in v], np.float64)  # noqa: E731
    return {k: np.stack([as_float(m["history"][k]) for m in rows]) for k in keys}, rows


def _draw_band(ax: Any, values: np.ndarray, color: str) -> None:
    mean, std = mean_std_curves(values)
    epochs = np.arange(1, len(mean) + 1)
    ax.plot(epochs, mean, color=color, marker="o" if len(mean) < 15 else None, ms=3)
    ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    ax.set_xlim(0.5, len(mean) + 0.5)


def _chance_note(ax: Any, results: dict[str, Any], act: str, panel: Panel) -> None:
    """Name the inits whose curves lie on top of each other at chance (last epoch < 0.15), so a
    hidden curve is not read as a missing one."""
    low = []
    for init in results["config"]["inits"]:
        acc = mean_std_curves(_histories(results, act, init, panel)[0]["val_accuracy"])[0]
        if np.isfinite(acc[-1]) and acc[-1] < 0.15:
            low.append(init)
    if low:
        ax.text(
            0.98, 0.1, "at chance (curves overlap):\n" + ", ".join(low), transform=ax.transAxes,
            ha="right", va="bottom", fontsize="small", color="0.25",
        )  # fmt: skip


def plot_bands(path: str | Path, results: dict[str, Any], panel: Panel) -> Path:
    """One (optimizer, lr) of :func:`panels`: a column per activation, validation loss (top)
    and accuracy (bottom) vs epoch, one colour per init, mean ± std over the seeds still
    training (diverged ones drop out)."""
    cfg = results["config"]
    acts, inits = cfg["activations"], cfg["inits"]
    fig = Figure(figsize=(3.3 * len(acts), 6.2), layout="constrained")
    axes = fig.subplots(2, len(acts), squeeze=False, sharex=True)
    for ax in axes[1, 1:]:
        ax.sharey(axes[1, 0])  # accuracies comparable across activations; losses differ in range
    for col, act in enumerate(acts):
        notes = []
        for init, color in zip(inits, INIT_COLORS):
            hist, rows = _histories(results, act, init, panel)
            _draw_band(axes[0, col], hist["val_loss"], color)
            _draw_band(axes[1, col], hist["val_accuracy"], color)
            div = [m["diverged_at"] for m in rows if m["diverged_at"]]
            if div:
                notes.append(f"{init}: {len(div)}/{len(rows)} diverged (epoch {min(div)})")
        write_on_panel(axes[0, col], "\n".join(notes))
        _chance_note(axes[1, col], results, act, panel)
        axes[0, col].set_title(act)
        axes[0, col].set_ylabel("validation cross-entropy" if col == 0 else "")
        axes[1, col].set_ylabel("validation accuracy" if col == 0 else "")
        axes[1, col].set_xlabel("epoch")
        for ax in axes[:, col]:
            ax.grid(True, alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [Line2D([], [], color=c, label=f"init {i}") for i, c in zip(inits, INIT_COLORS)]
    handles.append(
        Line2D([], [], lw=6, alpha=0.3, color="0.5", label=f"±1 std, {cfg['seeds']} seeds")
    )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle(
        f"Validation curves per activation (columns) and init (colours), {_title(panel)}: "
        f"mean ± std over seeds still training\n{_settings(results)}"
    )
    return save_figure(fig, Path(path))


def plot_grid(out: str | Path, results: dict[str, Any], epochs: Sequence[int]) -> list[Path]:
    """Every grid figure into ``out``: heatmap-e<epoch>.png per save epoch and a
    bands-[<optimizer>-]lr<lr>.png per :func:`panels` entry."""
    out = Path(out)
    paths = [plot_heatmap(out / f"heatmap-e{e}.png", results, e) for e in epochs]
    for opt, lr in panels(results):
        name = f"bands-{opt + '-' if opt else ''}lr{lr:g}.png"
        paths.append(plot_bands(out / name, results, (opt, lr)))
    return paths

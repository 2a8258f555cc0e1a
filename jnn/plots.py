"""Training curves over seeds as PNG files (matplotlib's Agg canvas; no display needed).

The study's figures come from its run folder: :func:`run_curves` reads ``metrics.jsonl``, which
the engine appends to after every epoch, so a run that is still training can be plotted (its
checkpoint dots appear as their epochs are reached), and a finished run's figures are drawn from
the same file (with scikit-learn's curves, when given, dashed beside them). One PNG per cell
(:func:`plot_cell`) and one overview with a row per cell (:func:`plot_overview`); every figure
shows loss *and* accuracy, train and validation, and names the checkpoint epochs in its legend.

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
from matplotlib.lines import Line2D

from jnn.errors import InputError
from jnn.workdir import write_atomic

__all__ = [
    "JNN",
    "METRICS",
    "SKLEARN",
    "draw_metric",
    "legend_handles",
    "mean_std_curves",
    "plot_cell",
    "plot_overview",
    "read_metrics",
    "run_curves",
    "save_figure",
    "study_curves",
    "write_on_panel",
]

JNN: dict[str, Any] = {"label": "jnn", "style": "-", "colors": ("tab:blue", "tab:orange")}
"""jnn's curves: solid, train blue, validation orange."""
SKLEARN: dict[str, Any] = {"label": "sklearn", "style": "--", "colors": ("tab:green", "tab:red")}
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
    ax.xaxis.get_major_locator().set_params(integer=True)  # no epoch 0.5
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


# ------------------------------------------------------------------------- a study's figures


def legend_handles(save_at: Sequence[int], with_sklearn: bool, seeds: int = 1) -> list[Line2D]:
    """Legend entries drawn exactly as the curves are (solid jnn, dashed scikit-learn), the
    checkpoint dot with its epochs and, for several seeds, what the band means."""
    handles = []
    for style in (JNN, SKLEARN) if with_sklearn else (JNN,):
        for split, color in zip(("train", "validation"), style["colors"]):
            label = f"{style['label']} {split}"
            handles.append(Line2D([], [], linestyle=style["style"], color=color, label=label))
    if save_at:  # no entry for checkpoints no curve reached
        label = f"checkpoint ({', '.join(str(e) for e in save_at)})"
        handles.append(Line2D([], [], marker="o", linestyle="none", color="0.3", label=label))
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
    """Loss on ``axes[0]``, accuracy on ``axes[1]``; scikit-learn's dashed; the note on loss."""
    for ax, metric in zip(axes, METRICS):
        draw_metric(ax, history, metric, save_at)
        if sklearn_history:
            draw_metric(ax, sklearn_history, metric, save_at, style=SKLEARN)
    write_on_panel(axes[0], note)


def _drawn(history: Mapping[str, Any] | None) -> bool:
    """Whether ``history`` has a finite value to draw (a model diverged in epoch 1 has none)."""
    return any(np.isfinite(np.asarray(v, np.float64)).any() for v in (history or {}).values())


def _marked(histories: Sequence[Mapping[str, Any] | None], save_at: Sequence[int]) -> list[int]:
    """The epochs of ``save_at`` where some curve of ``histories`` is finite, so gets its dot:
    what the legend may name (a diverged model's later checkpoints were never written)."""
    rows = [np.atleast_2d(np.asarray(v, np.float64)) for h in histories for v in (h or {}).values()]
    return [e for e in save_at if any(r.shape[1] >= e > 0 and np.isfinite(r[:, e - 1]).any()
                                      for r in rows)]  # fmt: skip


def _seeds(history: Mapping[str, Any]) -> int:
    first: Any = next(iter(history.values()), [])
    return int(np.atleast_2d(np.asarray(first, dtype=np.float64)).shape[0])


def plot_cell(
    path: str | os.PathLike,
    title: str,
    history: Mapping[str, Any],
    save_at: Sequence[int],
    *,
    sklearn_history: Mapping[str, Any] | None = None,
    note: str = "",
) -> Path:
    """One PNG, two panels (loss | accuracy) of one cell: jnn solid (mean +- std over its
    seeds), scikit-learn dashed when given; ``note`` (a divergence, a failure) on the loss
    panel. ``history``: metric -> (epochs,) or (seeds, epochs), NaN where an epoch did not run."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    _panel_pair(axes, history, save_at, sklearn_history, note)
    fig.suptitle(title)
    marked = _marked([history, sklearn_history], save_at)
    handles = legend_handles(marked, _drawn(sklearn_history), _seeds(history))
    axes[1].legend(handles=handles, fontsize="small", loc="lower right")
    return save_figure(fig, path)


def plot_overview(
    path: str | os.PathLike,
    histories: Mapping[str, Mapping[str, Any]],
    save_at: Sequence[int],
    *,
    sklearn_histories: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    notes: Mapping[str, str] | None = None,
) -> Path:
    """Every cell in one PNG: a row each (``histories``: cell label -> history), loss left and
    accuracy right, one shared legend; ``notes`` per cell go on that row's loss panel."""
    fig = Figure(figsize=(11, 2.9 * max(1, len(histories)) + 0.8), layout="constrained")
    axes = fig.subplots(max(1, len(histories)), 2, squeeze=False)
    sk_all = sklearn_histories or {}
    for row, (label, history) in zip(axes, histories.items()):
        _panel_pair(row, history, save_at, sk_all.get(label), (notes or {}).get(label, ""))
        row[0].set_title(f"{label}: loss", fontsize="medium")
        row[1].set_title(f"{label}: accuracy", fontsize="medium")
    seeds = max((_seeds(h) for h in histories.values()), default=1)
    marked = _marked([*histories.values(), *sk_all.values()], save_at)
    handles = legend_handles(marked, any(map(_drawn, sk_all.values())), seeds)
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _cell_note(cell: Mapping[str, Any], sk: Mapping[str, Any]) -> str:
    """What went wrong in a cell, for its loss panel: jnn's diverged seeds, scikit-learn's end."""
    lines = []
    at = sorted(m["diverged_at"] for m in cell["models"] if m["diverged_at"])
    if at:
        when = f"epoch {at[0]}" if len(at) == 1 else f"epochs {at[0]}-{at[-1]}"
        lines.append(f"jnn: {len(at)}/{cell['seeds']} seed(s) diverged ({when}); no checkpoint")
        rest = "; the curves average the seeds still training" if len(at) < cell["seeds"] else ""
        lines.append("after that" + rest)
    if sk.get("status") == "diverged":
        lines.append(f"sklearn diverged at epoch {sk.get('diverged_at')}")
    elif sk.get("status") == "failed":
        lines.append("sklearn failed (see results.json)")
    return "\n".join(lines)


def _settings(c: Mapping[str, Any], cell: Mapping[str, Any] | None = None) -> str:
    """The settings a title states: the cell's init and lr (or the study's), batch, optimizer,
    split, seeds, and whether it ran on a quick subset."""
    inits = cell["init"] if cell else ", ".join(c["inits"])
    lrs = f"{cell['lr']:g}" if cell else ", ".join(f"{x:g}" for x in c["lrs"])
    seeds = cell["seeds"] if cell else c["seeds"]
    optimizer = (cell or {}).get("optimizer") or c.get("optimizer") or ""  # a cell's own
    return (
        f"init {inits}, lr {lrs}, batch {c['batch_size']}, {optimizer}, split {c['split']}, "
        f"{seeds} seed(s)" + (", quick subset" if c.get("subset") else "")
    )


def study_curves(
    result: Mapping[str, Any], out: str | os.PathLike, save_at: Sequence[int]
) -> list[Path]:
    """The study's figures into folder ``out``: ``loss_<cell>.png`` per cell (its seeds as a
    mean +- std band, scikit-learn's model of its activation dashed when ``result["sklearn"]``
    has one and the study has one init and one lr) and ``loss_overview.png``. ``result``: a
    study's result dict (``jnn.summary.result_dict``, or :func:`read_metrics`' for a run still
    training); ``save_at``: the checkpoint epochs to mark. Returns the paths written."""
    from jnn.summary import cells

    c, sk = result["config"], result.get("sklearn") or {}
    one_cell_each = len(c["inits"]) == 1 and len(c["lrs"]) == 1
    histories, sk_hist, notes, paths = {}, {}, {}, []
    for cell in cells(dict(result)):
        key, s = cell["label"], sk.get(cell["activation"]) or {}
        histories[key] = {
            k: np.asarray([m["history"][k] for m in cell["models"]], np.float64)
            for k in cell["models"][0]["history"]
        }
        if "history" in s and one_cell_each:
            sk_hist[key] = s["history"]
        notes[key] = _cell_note(cell, s)
        fname = "loss_" + key.replace(" / ", "_").replace(" ", "") + ".png"
        title = f"{key}: {_settings(c, cell)}"
        paths.append(
            plot_cell(Path(out) / fname, title, histories[key], save_at,
                      sklearn_history=sk_hist.get(key), note=notes[key])
        )  # fmt: skip
    title = f"{result.get('study', 'study')}: loss and accuracy per epoch ({_settings(c)})"
    paths.append(
        plot_overview(Path(out) / "loss_overview.png", histories, save_at,
                      sklearn_histories=sk_hist, notes=notes, title=title)
    )  # fmt: skip
    return paths


def _metrics_rows(path: Path, names: set[str]) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl``, checked; a last line cut short (the engine appending
    while this reads) is left for the next read. One InputError line for anything else."""
    import json

    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(
            f"cannot read {path} ({err.strerror}); is the run folder complete?"
        ) from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = row["model"] in names and int(row["epoch"]) == row["epoch"] >= 1
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:  # no newline yet: an append in progress
                break
            ok = False
        if not ok:
            raise InputError(
                f"{path} line {i + 1} is not one of this run's metric lines; "
                "was the file edited? rerun (or --resume) the study to rewrite it"
            )
        rows.append(row)
    return rows


def read_metrics(workdir: str | os.PathLike) -> dict[str, Any]:
    """A study run's curves as far as they go, from its ``metrics.jsonl`` (a run still
    training included): a result dict in ``jnn.summary.result_dict``'s shape, every model with
    its ``history`` (lists over the epochs logged so far, NaN where it diverged), its
    ``diverged_at`` and no ``evals``, plus ``epochs_logged`` and ``save_epochs``."""
    from jnn import study

    folder = Path(workdir).expanduser()
    run = study.read_run(folder)
    c = study.config_of(run)
    specs = study.models(c)
    names = [s.name for s in specs]
    rows = _metrics_rows(folder / study.METRICS, set(names))
    epochs = max((int(r["epoch"]) for r in rows), default=0)
    index = {name: m for m, name in enumerate(names)}
    hist = {k: np.full((len(names), epochs), np.nan) for k in study.HISTORY_KEYS}
    diverged = [None] * len(names)
    for r in rows:
        m, e = index[r["model"]], int(r["epoch"]) - 1
        for k in study.HISTORY_KEYS:
            hist[k][m, e] = np.nan if r.get(k) is None else float(r[k])
        diverged[m] = r.get("diverged_at") or diverged[m]
    models = [
        {**spec._asdict(), "name": spec.name, "diverged_at": diverged[m], "evals": {},
         "history": {k: v[m].tolist() for k, v in hist.items()}}
        for m, spec in enumerate(specs)
    ]  # fmt: skip
    return {"study": folder.name, "config": run["config"], "models": models,
            "epochs_logged": epochs, "save_epochs": list(c.save_epochs)}  # fmt: skip


def run_curves(
    workdir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    sklearn: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> list[Path]:
    """The figures of the study run in ``workdir`` (:func:`study_curves`), drawn from its
    ``metrics.jsonl`` as far as it goes, into ``out`` (default: the run folder). ``sklearn``:
    scikit-learn's results per activation (``jnn.reference``), drawn dashed; ``name``: the
    study's name for the title (default: the folder's)."""
    result = read_metrics(workdir)
    if not result["epochs_logged"]:
        raise InputError(f"{workdir} has no finished epoch yet; plot it after its first epoch")
    result["sklearn"] = dict(sklearn or {})
    result["study"] = name or result["study"]
    return study_curves(result, Path(workdir if out is None else out), result["save_epochs"])

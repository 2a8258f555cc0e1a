"""A study's result over seeds: mean +- std per cell, divergence notes, the timing line.

A *cell* is one (activation, init, lr) of a study (:mod:`jnn.study`), and its optimizer in a
study of several (a model entry's ``optimizer``; absent in a study of one); its seeds are its
models.
:func:`result_dict` turns a ``jnn.study.StudyResult`` into a JSON-able dict (what a run folder's
``results.json`` holds); :func:`read_result` reads that dict back from a finished run folder; and
:func:`cells` groups it per cell with the mean +- std over seeds of every evaluated metric at
every save epoch. Seeds are the spread that matters here: one seed's accuracy differs from the
next by more than the differences between many cells, so a cell is reported as a mean with its
standard deviation (numpy's population std, ``ddof=0``), never as one seed's number.

A diverged model (loss or weights not finite) is kept in the result with NaN metrics from its
divergence on; the means leave those values out and :func:`divergence_notes` says so per cell.
Plain numpy and JSON: importing this module loads no JAX.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jnn.errors import InputError

if TYPE_CHECKING:
    from jnn.study import StudyResult

__all__ = [
    "METRIC_KEYS",
    "cells",
    "divergence_notes",
    "fmt",
    "mean_std",
    "read_result",
    "result_dict",
    "timing_line",
]

METRIC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss")
"""The metrics :func:`cells` summarizes at each save epoch."""

_MODEL_KEYS = ("activation", "init", "lr", "diverged_at", "evals")


def fmt(value: float | None) -> str:
    """``value`` to 4 decimals, or ``n/a`` for None, NaN or infinity (a refused number)."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def mean_std(values: Iterable[float | None]) -> str:
    """``0.8812 ± 0.0021``: mean and population std over the finite values, 4 decimals.

    One finite value: the value alone (no ±); none (all None, NaN or diverged): ``n/a``.
    """
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if a.size == 0:
        return "n/a"
    return f"{a.mean():.4f}" + (f" ± {a.std():.4f}" if a.size > 1 else "")


def _model_entry(res: StudyResult, m: int) -> dict[str, Any]:
    """Model ``m`` of ``res``: its cell and seed, name, divergence epoch (None: never), history
    (lists of length epochs) and evaluations per save epoch (keys as strings, for JSON)."""
    spec = res.models[m]
    fields = {k: v for k, v in spec._asdict().items() if k != "optimizer" or v is not None}
    return {
        **fields,
        "name": spec.name,
        "diverged_at": int(res.diverged_at[m]) or None,
        "history": {k: v[m].tolist() for k, v in res.history.items()},
        "evals": {str(e): {k: v[m].tolist() for k, v in ev.items()} for e, ev in res.evals.items()},
    }


def result_dict(name: str, config: dict[str, Any], res: StudyResult) -> dict[str, Any]:
    """A ``jnn.study.StudyResult`` as JSON: every model with its history and evaluations.

    ``name`` names the study (``"mlp_sweep"``); ``config`` is the config as a dict, stored as
    given (it must hold ``inits`` and ``lrs``, which :func:`cells` reads for its labels). The
    timing counts the model-epochs this call trained (epochs restored by a resume are not).
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"result_dict: name must be the study's name (a string), got {name!r}")
    if not isinstance(config, dict) or not {"inits", "lrs"} <= config.keys():
        raise InputError("result_dict: config must be a dict with `inits` and `lrs` (the study's)")
    fields = ("config", "models", "history", "diverged_at", "evals", "epoch_seconds", "start")
    if not all(hasattr(res, f) for f in fields):
        raise InputError(f"result_dict: expected a jnn.study.StudyResult, got {type(res).__name__}")
    s = res.start
    trained = len(res.epoch_seconds) * len(res.models)
    secs = float(sum(res.epoch_seconds))
    return {
        "study": name,
        "status": "diverged" if np.any(res.diverged_at) else "ok",
        "config": config,
        "sizes": list(res.config.sizes),
        "models": [_model_entry(res, m) for m in range(len(res.models))],
        "layout": s.layout,
        "layout_seconds": s.layout_seconds,
        "devices_used": s.devices,
        "resumed_from": s.resumed_from,
        "set_sizes": list(s.sizes),
        "timing": {
            "model_epochs": trained,
            "train_s": secs,
            "model_epochs_per_s": trained / secs if secs > 0 else None,
            "epoch_seconds": res.epoch_seconds,
        },
    }


def _check_result(result: Any, where: str) -> None:
    """One line if ``result`` is not a study's result dict (:func:`result_dict`'s shape)."""
    if not isinstance(result, dict) or not isinstance(result.get("models"), list):
        raise InputError(f"{where}: expected a study's result dict (result_dict or results.json)")
    config = result.get("config")
    if not isinstance(config, dict) or not {"inits", "lrs"} <= config.keys():
        raise InputError(f"{where}: the result's config lacks `inits` or `lrs`; not a study's")
    for m in result["models"]:
        missing = [k for k in _MODEL_KEYS if not isinstance(m, dict) or k not in m]
        if missing:
            raise InputError(f"{where}: a model of the result lacks {missing}; not a study's")


def read_result(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The result dict of a finished run folder: its ``results.json``, checked."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise InputError(f"read_result: no {path}; pass the folder of a finished study run")
    try:
        result = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"read_result: cannot read {path} ({err}); rerun the study") from None
    _check_result(result, f"read_result: {path}")
    return result


def _label(act: str, init: str, opt: str | None, lr: float, config: dict[str, Any]) -> str:
    """The cell's name: its activation, then init, optimizer and lr only where the study varies
    them (a model entry names its optimizer only in a study of several)."""
    return (
        act
        + (f" / {init}" if len(config["inits"]) > 1 else "")
        + (f" / {opt}" if opt is not None else "")
        + (f" / lr {lr:g}" if len(config["lrs"]) > 1 else "")
    )


def cells(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (activation, init, optimizer, lr), in the order of the models: ``label``, ``seeds``,
    ``diverged`` (how many seeds), ``models`` (the cell's entries) and ``evals``: per save epoch,
    ``mean_std`` text over seeds of :data:`METRIC_KEYS` (diverged seeds excluded, counted).
    ``optimizer`` is the cell's in a study of several, None in a study of one."""
    _check_result(result, "cells")
    groups: dict[tuple[str, str, str | None, float], list[dict[str, Any]]] = {}
    for m in result["models"]:
        key = (m["activation"], m["init"], m.get("optimizer"), m["lr"])
        groups.setdefault(key, []).append(m)
    out = []
    for (act, init, opt, lr), ms in groups.items():
        epochs = sorted({int(e) for m in ms for e in m["evals"]})
        evals = {
            e: {k: mean_std(m["evals"][str(e)][k] for m in ms) for k in METRIC_KEYS} for e in epochs
        }
        out.append(
            {
                "activation": act,
                "init": init,
                "optimizer": opt,
                "lr": lr,
                "label": _label(act, init, opt, lr, result["config"]),
                "seeds": len(ms),
                "diverged": sum(m["diverged_at"] is not None for m in ms),
                "evals": evals,
                "models": ms,
            }
        )
    return out


def divergence_notes(result: dict[str, Any]) -> list[str]:
    """One line per cell with diverged seeds: which epochs, and that the state was kept."""
    notes = []
    for cell in cells(result):
        at = [m["diverged_at"] for m in cell["models"] if m["diverged_at"]]
        if at:
            notes.append(
                f"{cell['label']}: {len(at)}/{cell['seeds']} seed(s) diverged (loss or weights "
                f"not finite) at epoch(s) {sorted(at)}; each kept its last good state and its "
                "later numbers are refused (n/a); try a lower --lrs or --inits he/glorot"
            )
    return notes


def timing_line(result: dict[str, Any]) -> str:
    """One sentence: model-epochs trained, seconds, rate, devices, layout (and wall time when
    the result's ``timing`` has ``wall_s``; and the matmul arithmetic when the harness's device
    stamp says it was not float32, e.g. TF32 on a GPU)."""
    t = result.get("timing") if isinstance(result, dict) else None
    if not isinstance(t, dict) or not {"model_epochs", "train_s", "model_epochs_per_s"} <= t.keys():
        raise InputError("timing_line: expected a study's result dict with its `timing`")
    rate, resumed = t["model_epochs_per_s"], result.get("resumed_from")
    trained = f"{t['model_epochs']} model-epochs trained in {t['train_s']:.1f} s"
    if not t["model_epochs"] and resumed:  # the training time is in the earlier call's result
        trained = f"no model-epochs left to train (resumed at epoch {resumed})"
    f32 = (result.get("device") or {}).get("float32_matmul", "float32")
    return (
        trained
        + (f" ({rate:.2f} model-epochs/s)" if rate else "")
        + f" on {len(result['devices_used'])} device(s), layout {result['layout']}"
        + (f"; wall {t['wall_s']:.1f} s" if "wall_s" in t else "")
        + (f"; float32 matmuls rounded to {f32} (JAX's default there)" if f32 != "float32" else "")
        + "."
    )

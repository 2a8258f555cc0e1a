"""What the MLP study presets share: the console while ``jnn.study`` runs, the result as JSON,
per-cell summaries (mean +- std over seeds), and the curves.

A *cell* is one (activation, init, lr); its seeds are its models. ``result_dict`` turns a
``jnn.study.StudyResult`` into the JSON-able dict the presets render from (and re-render from a
stored results.json).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from experiments import plots, report

METRIC_KEYS = ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss")


def fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def mean_std(values: Any) -> str:
    """``0.8812 ± 0.0021`` over the finite values (one value: no ±; none: n/a)."""
    a = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if a.size == 0:
        return "n/a"
    return f"{a.mean():.4f}" + (f" ± {a.std():.4f}" if a.size > 1 else "")


class Console:
    """What a person watches: the start line, one bar over epochs (a terminal) or plain lines
    at save epochs (CI, logs), ETA after the first two epochs, divergence warnings as they
    happen, scikit-learn's finished epochs. The library only calls back; this prints."""

    def __init__(self, epochs: int, sklearn_jobs: int, quick: bool) -> None:
        self.epochs, self.sklearn_jobs, self.quick = epochs, int(sklearn_jobs or 0), quick
        self.counter: Any = None  # scikit-learn's shared epoch counter, when it runs
        self.bar: Any = None
        self.said_diverged: set[int] = set()
        self.names: list[str] = []
        self.t0 = time.perf_counter()

    def say(self, text: str, err: bool = False) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr if err else sys.stdout)

    def start(self, s: Any) -> None:
        c = s.config
        self.names = [m.name for m in s.models]
        what = (
            f"{len(s.models)} model(s) ({len(c.activations)} activation(s) x {len(c.inits)} "
            f"init(s) ({', '.join(c.inits)}) x {len(c.lrs)} lr(s) x {c.seeds} seed(s)) x "
            f"{c.epochs} epochs, {c.optimizer}; "
            f"{s.sizes[0]:,} train / {s.sizes[1]:,} val / {s.sizes[2]:,} test ({c.split}); "
            f"{len(s.devices)} device(s), layout {s.layout}"
            + (f" (probe: {_probe(s.layout_seconds)})" if s.layout_seconds else "")
            + ("; scikit-learn alongside" if self.sklearn_jobs else "")
        )
        self.say(
            ("SMOKE RUN (--quick: checks that everything runs): " if self.quick else "") + what
        )
        for skipped in s.skipped:
            self.say(
                f"warning: checkpoint of epoch {skipped.epoch} unusable ({skipped.reason})", True
            )
        if s.resumed_from is not None:
            self.say(f"resumed every model from epoch {s.resumed_from} (its last checkpoint)")
        first = s.resumed_from or 0
        self.bar = report.progress(total=c.epochs, initial=first, desc="epochs", unit="ep")

    def epoch(self, r: Any) -> None:
        self.bar.update(1)
        acc = (
            np.nanmean(r.rows["val_accuracy"])
            if np.isfinite(r.rows["val_accuracy"]).any()
            else np.nan
        )
        self.bar.set_postfix(val_acc=f"{acc:.4f}", sklearn=self._sklearn_text(), refresh=False)
        for m in np.flatnonzero(r.diverged_at):
            if int(m) not in self.said_diverged:
                self.said_diverged.add(int(m))
                self.say(
                    f"warning: {self.names[m]} diverged at epoch {r.diverged_at[m]} "
                    "(loss or weights not finite); kept its last good state, others go on",
                    True,
                )
        if r.nth in (1, 2) and r.epoch < r.epochs:
            left = (r.epochs - r.epoch) * r.seconds
            note = ", compilation included" if r.nth == 1 else ""
            self.say(
                f"eta: about {_duration(left)} for jnn's {r.epochs - r.epoch} epochs left "
                f"(epoch {r.epoch} took {r.seconds:.1f} s{note})" + self._sklearn_eta()
            )
        elif self.bar.disable and (r.epoch % max(1, r.epochs // 10) == 0 or r.epoch == r.epochs):
            self.say(f"epoch {r.epoch}/{r.epochs}: mean val acc {acc:.4f}")

    def _sklearn_eta(self) -> str:
        """scikit-learn's own ETA at its pace so far (it runs alongside, in its own processes)."""
        if self.counter is None:
            return ""
        done, total = sum(self.counter), self.epochs * self.sklearn_jobs
        if done == 0:
            return "; scikit-learn has not finished an epoch yet"
        left = (total - done) * (time.perf_counter() - self.t0) / done
        return f"; scikit-learn {done}/{total} epochs, about {_duration(left)} left at its pace"

    def _sklearn_text(self) -> str:
        if self.counter is None:
            return ""
        return f"{sum(self.counter)}/{self.epochs * self.sklearn_jobs}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _probe(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in sorted(seconds.items()))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def collect_sklearn(futures: dict[str, Any] | None, console: Console) -> dict[str, Any] | None:
    """scikit-learn's results; a failed job is recorded (it must not lose jnn's results)."""
    if futures is None:
        return None
    if any(not f.done() for f in futures.values()):
        console.say(f"jnn done; waiting for scikit-learn (epochs {console._sklearn_text()})")
    out = {}
    for act, fut in futures.items():
        try:
            out[act] = fut.result()
        except Exception as err:  # noqa: BLE001 - recorded in the result, said in results.md
            out[act] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return out


def result_dict(name: str, config: dict[str, Any], res: Any) -> dict[str, Any]:
    """A ``jnn.study.StudyResult`` as JSON: every model with its history and evaluations."""
    models = []
    for m, spec in enumerate(res.models):
        models.append(
            {
                **spec._asdict(),
                "name": spec.name,
                "diverged_at": int(res.diverged_at[m]) or None,
                "history": {k: v[m].tolist() for k, v in res.history.items()},
                "evals": {
                    str(e): {k: v[m].tolist() for k, v in ev.items()} for e, ev in res.evals.items()
                },
            }
        )
    s = res.start
    trained = len(res.epoch_seconds) * len(res.models)
    secs = float(sum(res.epoch_seconds))
    return {
        "study": name,
        "status": "diverged" if np.any(res.diverged_at) else "ok",
        "config": config,
        "sizes": list(res.config.sizes),
        "models": models,
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


def cells(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per (activation, init, lr): label, seeds, diverged count, and per save epoch the
    mean ± std over seeds of :data:`METRIC_KEYS` (diverged seeds excluded, counted)."""
    groups: dict[tuple, list[dict]] = {}
    for m in result["models"]:
        groups.setdefault((m["activation"], m["init"], m["lr"]), []).append(m)
    c = result["config"]
    out = []
    for (act, init, lr), ms in groups.items():
        label = (
            act
            + (f" / {init}" if len(c["inits"]) > 1 else "")
            + (f" / lr {lr:g}" if len(c["lrs"]) > 1 else "")
        )
        epochs = sorted({int(e) for m in ms for e in m["evals"]})
        evals = {
            e: {k: mean_std(m["evals"][str(e)][k] for m in ms) for k in METRIC_KEYS} for e in epochs
        }
        diverged = sum(m["diverged_at"] is not None for m in ms)
        out.append(
            {
                "activation": act,
                "init": init,
                "lr": lr,
                "label": label,
                "seeds": len(ms),
                "diverged": diverged,
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
    t = result["timing"]
    rate = t["model_epochs_per_s"]
    return (
        f"{t['model_epochs']} model-epochs trained in {t['train_s']:.1f} s"
        + (f" ({rate:.2f} model-epochs/s)" if rate else "")
        + f" on {len(result['devices_used'])} device(s), layout {result['layout']}"
        + (f"; wall {t['wall_s']:.1f} s" if "wall_s" in t else "")
        + "."
    )


def plot_curves(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """One PNG per cell (bands over seeds, scikit-learn dashed) and the overview."""
    sk = result.get("sklearn") or {}
    save_at = sorted({int(e) for m in result["models"] for e in m["evals"]})
    c = result["config"]
    histories, sk_hist, notes, paths = {}, {}, {}, []
    for cell in cells(result):
        hist = {
            k: np.asarray([m["history"][k] for m in cell["models"]], np.float64)
            for k in cell["models"][0]["history"]
        }
        key = cell["label"]
        histories[key] = hist
        s = sk.get(cell["activation"]) or {}
        if "history" in s and len(c["inits"]) == 1 and len(c["lrs"]) == 1:
            sk_hist[key] = s["history"]
        notes[key] = _panel_note(cell, s)
        settings = (
            f"init {cell['init']}, lr {cell['lr']:g}, batch {c['batch_size']}, split {c['split']}"
            + (f", {cell['seeds']} seeds" if cell["seeds"] > 1 else "")
            + (" (quick)" if c.get("subset") else "")
        )
        fname = "loss_" + key.replace(" / ", "_").replace(" ", "") + ".png"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            paths.append(
                plots.plot_activation(
                    run_dir / fname,
                    key,
                    hist,
                    save_at,
                    sklearn_history=sk_hist.get(key),
                    note=notes[key],
                    settings=settings,
                )
            )
    paths.append(
        plots.plot_overview(
            run_dir / "loss_overview.png",
            histories,
            save_at,
            sklearn_histories=sk_hist,
            notes=notes,
            title=f"{result['study']}: loss and accuracy per epoch ({_overview_settings(c)})",
        )
    )
    return paths


def _overview_settings(c: dict[str, Any]) -> str:
    return (
        f"init {', '.join(c['inits'])}, lr {', '.join(f'{x:g}' for x in c['lrs'])}, batch "
        f"{c['batch_size']}, {c['optimizer']}, split {c['split']}, {c['seeds']} seed(s)"
        + (", quick subset" if c.get("subset") else "")
    )


def _panel_note(cell: dict[str, Any], sk: dict[str, Any]) -> str:
    lines = []
    at = sorted(m["diverged_at"] for m in cell["models"] if m["diverged_at"])
    if at:
        when = f"epoch {at[0]}" if len(at) == 1 else f"epochs {at[0]}-{at[-1]}"
        lines.append(f"jnn: {len(at)}/{cell['seeds']} seed(s) diverged ({when}); no checkpoint")
        lines.append("after that; the curves average the seeds still training")
    if sk.get("status") == "diverged":
        lines.append(f"sklearn diverged at epoch {sk.get('diverged_at')}")
    elif sk.get("status") == "failed":
        lines.append("sklearn failed (see results.json)")
    return "\n".join(lines)

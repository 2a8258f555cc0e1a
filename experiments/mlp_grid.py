"""The MLP study's whole design space (activation x init x lr, several seeds): a preset of
``jnn.study`` with the grid's defaults and its own report.

    python -m experiments.mlp_grid --activations relu,sigmoid,tanh,linear \\
        --inits zero,random,normal,he,glorot --lrs 0.01,0.05,0.1 --seeds 5 --epochs 100

The same engine as the main job (``jnn.study.run``: every model in one program per device,
per-model divergence, verified checkpoints, ``--resume`` bit-identical, evaluation from the
restored checkpoints); only the defaults differ, and the report: per cell mean +- std and
[min, max] of the test accuracy at the save epochs over the seeds that did not diverge, how many
diverged, and the unit spread (0: every hidden unit a copy of the first, zero init). Outputs in
``--out``: results.json (every model), results.md, heatmap-e<epoch>.png (activation x init, a
panel per lr) and bands-lr<lr>.png (validation curves, mean +- std over seeds).

Long grids survive a kill and grow: ``--epochs 10`` today, ``--resume --epochs 100`` later
(``--save-at`` may add epochs after the checkpoint).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import harness, lab, report, studies
from jnn import summary, workdir
from jnn.config import option
from jnn.study import StudyConfig
from jnn.timing import Stopwatch

QUICK = {"hidden": (32,), "subset": (256, 128, 128), "seeds": 2, "epochs": 2}


@dataclass(frozen=True)
class Config(StudyConfig):
    """The grid: jnn.study's fields with the full design as defaults."""

    activations: tuple[str, ...] = option(
        ("relu", "sigmoid", "tanh", "linear"), "hidden activations"
    )
    inits: tuple[str, ...] = option(("zero", "random", "normal", "he", "glorot"), "weight inits")
    lrs: tuple[float, ...] = option((0.01, 0.05, 0.1), "learning rates")
    seeds: int = option(5, "seeds per (activation, init, lr) cell")
    checkpoint_every: int = option(1, "epochs between rolling checkpoints (0: only the last)")


def parse(argv: Sequence[str] | None) -> lab.Invocation:
    description = (
        "Train every (activation, init, lr) cell of the MLP study with several seeds "
        "(784-256-128-64-10 on Fashion-MNIST, manual backprop, batch 32, the original "
        "48,600/5,400/6,000 split) in one program per device; mean +- std over seeds."
    )
    epilog = "Exit codes: 0 done (diverged models are reported, not errors), 2 bad input."
    return lab.parse(Config, argv, name="mlp_grid", description=description, quick=QUICK,
                     epilog=epilog)  # fmt: skip


def time_one_model(cfg: Config, data: tuple[np.ndarray, ...], epochs: int = 3) -> dict[str, Any]:
    """Seconds per epoch of one model alone (relu, normal, lr 0.1) with ``train.make_epoch_fn``
    on the same data and machine: the first epoch (compiling) is left out of the median."""
    import jax
    import optax

    from jnn import study, train
    from jnn.mlp import mlp

    model, opt = mlp(cfg.sizes, "relu", "normal"), optax.sgd(0.1)
    state = train.init_train_state(study.model_key(cfg.seed, 0), model, opt, cfg.sizes[:1])
    epoch = train.make_epoch_fn(model, opt, cfg.batch_size)
    seconds = []
    for _ in range(epochs):
        with Stopwatch() as sw:
            state, metrics = epoch(state, data[0], data[1])
            jax.block_until_ready(metrics)
        seconds.append(sw.s)
    return {"epoch_seconds": seconds, "epoch_s": float(np.median(seconds[1:]))}


def _timing(cfg: Config, res: Any, alone: dict[str, Any], models: int) -> dict[str, Any]:
    """Throughput of the grid program vs one model alone (same data, same machine, same run)."""
    steady = res.epoch_seconds[1:] or res.epoch_seconds
    grid_epoch = float(np.median(steady)) if steady else None  # None: resumed at the last epoch
    alone_rate = 1.0 / alone["epoch_s"]
    grid_rate = None if grid_epoch is None else models / grid_epoch
    return {
        "grid_epoch_s": grid_epoch,
        "grid_model_epochs_per_s": grid_rate, "alone": alone,
        "alone_model_epochs_per_s": alone_rate,
        "speedup": None if grid_rate is None else grid_rate / alone_rate,
        "note": "medians without the first (compiling) epoch of this invocation; grid epochs "
        "include validation",
    }  # fmt: skip


def _nan_stats(values: Any) -> dict[str, float | None]:
    """mean, std, min, max over the finite values (seeds that did not diverge); None if none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
        "max": float(v.max()), "n": int(v.size),
    }  # fmt: skip


def cell_key(m: dict[str, Any]) -> dict[str, Any]:
    """A model's (or a cell's) cell: activation, init, lr, and its optimizer in a study of
    several (a study of one keeps the key of the results written before mixed optimizers)."""
    opt = {"optimizer": m["optimizer"]} if m.get("optimizer") else {}
    return {"activation": m["activation"], "init": m["init"], **opt, "lr": m["lr"]}


def cell_summaries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cell: diverged count and, per save epoch, test/val accuracy stats over the seeds
    that did not diverge, and the largest unit spread per hidden layer over those seeds."""
    out, saved = [], [str(e) for e in result["config"].get("save_at", ())]
    for cell in summary.cells(result):
        rows, per_epoch = cell["models"], {}
        for e in sorted({*saved, *(e for m in rows for e in m["evals"])}, key=int):
            ev = [m["evals"].get(e) or {} for m in rows]  # none: the run stopped before e
            stats: dict[str, Any] = {
                k: _nan_stats([r.get(k, np.nan) for r in ev])
                for k in ("test_accuracy", "test_loss", "val_accuracy")
            }
            spread = np.array([r["unit_spread"] for r in ev if "unit_spread" in r], np.float64)
            ok = np.isfinite(spread).all(axis=1) if spread.size else np.zeros(0, bool)
            stats["unit_spread_max"] = spread[ok].max(axis=0).tolist() if ok.any() else None
            per_epoch[e] = stats
        diverged = [m["diverged_at"] for m in rows if m["diverged_at"]]
        key = cell_key(cell)
        out.append({"cell": key, "seeds": len(rows), "diverged": len(diverged),
                    "diverged_at": diverged, "at": per_epoch})  # fmt: skip
    return out


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Train (or continue) the grid with ``jnn.study.run``; every model, the per-cell summaries
    and the throughput against one model alone. Diverged models are results of the study
    (counted per cell): the status stays "ok" and the exit code 0."""
    from jnn import study

    cfg: Config = inv.config
    report.request_host_devices(cfg.devices or max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    console = studies.Console(cfg.epochs, 0, inv.quick)
    data = study.load_data(cfg.study())
    try:
        res = study.run(cfg.study(), run_dir, resume=inv.resume, on_start=console.start,
                        on_epoch=console.epoch, data=data)  # fmt: skip
    finally:
        console.close()
    result = summary.result_dict("mlp_grid", asdict(cfg) | {"layout": res.start.layout}, res)
    result["status"] = "ok"  # a diverged model is one of the grid's measurements (per cell)
    for m in result["models"]:
        m["cell"] = cell_key(m)
    result["config"]["sizes"] = result["sizes"]
    result["config"]["save_at"] = list(cfg.save_epochs)
    result["cells"] = cell_summaries(result)
    result["num_models"], result["devices"] = len(result["models"]), len(res.start.devices)
    result["diverged_models"] = sum(1 for m in result["models"] if m["diverged_at"])
    result["sizes"] = dict(zip(("train", "val", "test"), res.start.sizes))
    alone = time_one_model(cfg, (*data.train, *data.val, *data.test))
    result["timing"] = {**_timing(cfg, res, alone, len(result["models"])), **result["timing"]}
    result["timing"]["wall_s"] = time.perf_counter() - t0
    return {**result, **harness.stamp()}


def _acc(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"


def throughput_line(results: dict[str, Any]) -> str:
    """The grid's model-epochs/s against one model alone, and where a resumed run started."""
    t, resumed = results["timing"], results.get("resumed_from")
    where = f" Resumed from the checkpoint of epoch {resumed}." if resumed else ""
    if t["grid_model_epochs_per_s"] is None:
        return f"No epoch trained in this invocation.{where} Wall {t['wall_s']:.0f} s.\n"
    return (
        f"Throughput: the grid ran {t['grid_model_epochs_per_s']:.3f} model-epochs/s "
        f"({t['grid_epoch_s']:.1f} s per grid epoch incl. validation); one model alone with "
        f"`train.make_epoch_fn` {t['alone_model_epochs_per_s']:.3f} model-epochs/s "
        f"({t['alone']['epoch_s']:.2f} s/epoch): {t['speedup']:.2f}x. Wall {t['wall_s']:.0f} s"
        f"{' (this invocation)' if resumed else ''}.{where}\n"
    )


def results_markdown(results: dict[str, Any]) -> str:
    """Per cell: test accuracy mean ± std [min, max] over non-diverged seeds at each save
    epoch, diverged count, and the hidden layers' unit spread (0 = all units identical)."""
    cfg, n = results["config"], results["sizes"]
    several = any("optimizer" in c["cell"] for c in results["cells"])  # cell_key's rule
    last = str(cfg["save_at"][-1])
    lines = [
        f"# MLP grid: activation x init x {'optimizer x ' if several else ''}"
        f"lr, several seeds, one program per device (layout "
        f"{results['layout']})\n",
        f"{results['num_models']} models = {len(results['cells'])} cells x {cfg['seeds']} "
        f"seeds; {cfg['epochs']} epochs; sizes {cfg['sizes']}; {cfg['optimizer']}, batch "
        f"{cfg['batch_size']}; split `{cfg['split']}` ({n['train']:,} train / {n['val']:,} val / "
        f"{n['test']:,} test); model axis over {results['devices']} device(s) of "
        f"{results['device']['cpu']}. Test accuracy: mean ± std [min, max] over the seeds that "
        "did not diverge. Unit spread: per hidden layer, max over units j of |w_j - w_0| "
        "(incoming weights and bias); exactly 0 means every hidden unit is a copy of the first.\n",
        throughput_line(results),
    ]
    if cfg.get("subset") or cfg["seeds"] < 5 or cfg["epochs"] < 100:
        sets = (
            f"the first {n['train']:,} / {n['val']:,} / {n['test']:,} examples of the split's "
            "training, validation and test sets"
            if cfg.get("subset")
            else "the complete sets"
        )
        lines.append(
            f"**Reduced run** (sized for the machine): {cfg['seeds']} seeds, {cfg['epochs']} "
            f"epochs, {sets}; the full design is 5 seeds, 100 epochs, all 48,600 / 5,400 / "
            "6,000 (a checkpointed run grows with `--resume --epochs N`).\n"
        )
    head = ["activation", "init", *(["optimizer"] if several else []), "lr", "diverged"]
    head += [f"test acc @{e}" for e in cfg["save_at"]] + [f"unit spread @{last}"]
    rows = []
    for c in results["cells"]:
        cell = c["cell"]
        spread = c["at"][last]["unit_spread_max"]
        rows.append([
            cell["activation"], cell["init"], *([cell["optimizer"]] if several else []),
            f"{cell['lr']:g}", f"{c['diverged']}/{c['seeds']}",
            *(_acc(c["at"][str(e)]["test_accuracy"]) for e in cfg["save_at"]),
            "n/a" if spread is None else ", ".join(f"{v:.3g}" for v in spread),
        ])  # fmt: skip
    lines.append(report.markdown_table(head, rows))
    return "\n".join(lines)


def render(results: dict[str, Any], out: str | Path) -> list[Path]:
    """results.json, results.md and the PNGs (heatmap per save epoch, bands per lr) in ``out``."""
    from experiments import grid_plots

    out = Path(out)
    workdir.write_json(out / "results.json", results)
    workdir.write_text_atomic(out / "results.md", results_markdown(results))
    plots = grid_plots.plot_grid(out, results, results["config"]["save_at"])
    return [out / "results.json", out / "results.md", *plots]


EXPERIMENT = harness.Experiment("mlp_grid", parse, run, render, results_markdown)
main = harness.cli(EXPERIMENT)

if __name__ == "__main__":
    report.allow_device_requests()
    sys.exit(main())

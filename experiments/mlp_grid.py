"""The MLP study's whole design space (activation x init x lr, several seeds) in one program.

    python -m experiments.mlp_grid --activations relu,sigmoid,tanh,linear \\
        --inits zero,random,normal,he,glorot --lrs 0.01,0.05,0.1 --seeds 5 --epochs 100

Every model (cell x seed) of the grid trains in one vmapped XLA program per device
(``jnn.grid``), the model axis sharded over ``--devices`` (all host CPU devices by default). Per
cell it reports mean +- std and min/max of the test accuracy at the save epochs, and how many
seeds diverged; the unit spread shows whether hidden units stayed copies of each other (zero
init). Outputs in ``--out``: results.json (every model), results.md, heatmap.png (activation x
init, a panel per lr) and bands-lr<lr>.png (validation curves, mean +- std over seeds).
On the harness (``experiments.harness``): ``parse_config`` -> ``run(cfg, run_dir)`` ->
``render(result, run_dir)``; default ``--out runs/mlp_grid``; bad input is one line and exit 2.

Long grids (the full design is hours on a CPU) survive a kill: a verified rolling checkpoint of
every model, its history and its evaluations is written to ``<out>/checkpoints`` every
``--checkpoint-every`` epochs, and ``--resume`` continues from the newest one that verifies,
bit-identical to an uninterrupted run. ``--resume --epochs N`` with a larger N continues a
finished run further (``--save-at`` may add epochs after the checkpoint), so a grid can be grown
in sessions: ``--epochs 10`` today, ``--resume --epochs 100 --save-at 10,50,100`` later.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import harness, report
from experiments.timing import Stopwatch
from jnn.errors import InputError

ACTIVATIONS = ("relu", "sigmoid", "tanh", "linear")
INITS = ("zero", "random", "normal", "he", "glorot")
LRS = (0.01, 0.05, 0.1)
SIZES = (784, 256, 128, 64, 10)
QUICK_SIZES = (784, 32, 10)
QUICK_SUBSET = (256, 128, 128)


@dataclass(frozen=True)
class Config:
    activations: tuple[str, ...] = ACTIVATIONS
    inits: tuple[str, ...] = INITS
    lrs: tuple[float, ...] = LRS
    seeds: int = 5
    epochs: int = 100
    save_at: tuple[int, ...] = (50, 100)
    batch_size: int = 32
    split: str = "original"
    seed: int = 0
    data_dir: str | None = None
    out: str = "runs/mlp_grid"
    overwrite: bool = False
    devices: int | None = None
    sizes: tuple[int, ...] = SIZES
    subset: tuple[int, int, int] | None = None
    quick: bool = False
    train_size: int | None = None  # first N training examples of the split (CPU-sized runs)
    resume: bool = False
    checkpoint_every: int = 1

    def identity(self) -> dict[str, Any]:
        """The settings that define the numbers: --resume refuses a run.json that differs.
        Not among them: --epochs and --save-at (a run may be continued further, with more
        save epochs), --devices (the model axis is split anew), --out, --data-dir."""
        return {k: getattr(self, k) for k in IDENTITY}


IDENTITY = ("activations", "inits", "lrs", "seeds", "batch_size", "split", "seed", "sizes")
IDENTITY += ("subset", "quick", "train_size")


def build_parser() -> argparse.ArgumentParser:
    p = harness.parser(
        "mlp_grid",
        description=(
            "Train every (activation, init, lr) cell of the MLP study with several seeds in one "
            "vmapped program per device (784-256-128-64-10, manual backprop, plain SGD, batch "
            "32, the original 48,600/5,400/6,000 split); mean +- std over seeds per cell."
        ),
        epilog="Exit codes: 0 done (diverged models are reported, not errors), 2 bad input.",
    )
    a = p.add_argument
    a("--activations", default=",".join(ACTIVATIONS), help="hidden activations [%(default)s]")
    a("--inits", default=",".join(INITS), help="initializers [%(default)s]")
    a("--lrs", default=",".join(map(str, LRS)), help="SGD learning rates [%(default)s]")
    a("--seeds", type=int, default=None, help="seeds per cell [5; 2 with --quick]")
    a("--epochs", type=int, default=None, help="epochs [100; 2 with --quick]")
    a("--save-at", default=None, help="epochs to evaluate on test [epochs/2,epochs]")
    a("--batch-size", type=int, default=32, help="[32]")
    a("--split", default="original", help="data protocol: original, pooled70k, official [original]")
    a("--train-size", type=int, default=None, help="use the first N training examples [all]")
    a("--seed", type=int, default=0, help="base seed of the split and the model keys [0]")
    harness.add_data_flag(p)
    harness.add_output_flags(p, "mlp_grid", resume=True)
    a(
        "--checkpoint-every",
        type=int,
        default=1,
        help="epochs between rolling checkpoints "
        "(the newest kept, in <out>/checkpoints; 0: only after the last epoch) [1]",
    )
    a("--devices", type=int, default=None, help="devices for the model axis [all CPU cores]")
    a("--quick", action="store_true", help="a seconds-long grid: 784-32-10, 256 examples")
    return p


def _split_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(t.strip().lower() for t in text.split(",") if t.strip())
    if not items:
        raise InputError(f"--{what} needs at least one comma-separated name")
    return items


def _lrs(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(t) for t in _split_list(text, "lrs"))
    except ValueError:
        raise InputError(f"--lrs must be comma-separated numbers, got {text!r}") from None
    bad = [lr for lr in lrs if not math.isfinite(lr) or lr <= 0]
    if bad:
        raise InputError(f"--lrs must be positive finite numbers, got {bad[0]}")
    return lrs


def parse_config(argv: Sequence[str] | None) -> Config:
    """Command line -> a checked Config; every bad value is a one-line InputError."""
    from jnn.data import canonical_protocol

    args = build_parser().parse_args(argv)
    quick = bool(args.quick)
    epochs = harness.positive_int(
        args.epochs if args.epochs is not None else (2 if quick else 100), "--epochs"
    )
    seeds = harness.positive_int(
        args.seeds if args.seeds is not None else (2 if quick else 5), "--seeds"
    )
    save_at = (
        tuple(sorted({max(1, epochs // 2), epochs}))
        if args.save_at is None
        else tuple(sorted({int(t) for t in _split_list(args.save_at, "save-at") if t.isdigit()}))
    )
    if not save_at or not all(1 <= e <= epochs for e in save_at):
        raise InputError(f"--save-at must be epochs in [1, {epochs}], got {args.save_at!r}")
    harness.positive_int(args.batch_size, "--batch-size")
    for flag, value in (("--devices", args.devices), ("--train-size", args.train_size)):
        if value is not None:
            harness.positive_int(value, flag)
    canonical_protocol(args.split)
    if args.checkpoint_every < 0:
        raise InputError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.resume and args.overwrite:
        raise InputError("--resume and --overwrite contradict each other; pick one")
    harness.seed(args.seed)
    harness.data_dir(args.data_dir)
    cfg = Config(
        activations=_split_list(args.activations, "activations"),
        inits=_split_list(args.inits, "inits"),
        lrs=_lrs(args.lrs),
        seeds=seeds,
        epochs=epochs,
        save_at=save_at,
        batch_size=args.batch_size,
        split=args.split,
        seed=args.seed,
        data_dir=args.data_dir,
        out=args.out or harness.default_out("mlp_grid", "quick" if quick else ""),
        overwrite=args.overwrite,
        devices=args.devices,
        sizes=QUICK_SIZES if quick else SIZES,
        subset=QUICK_SUBSET if quick else None,
        quick=quick,
        train_size=args.train_size,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
    )
    grid_spec(cfg)  # names, lrs, seeds checked by jnn.grid (InputError)
    if cfg.resume:
        harness.stored_run(cfg.out, cfg.identity(), "mlp_grid")
    return cfg


def grid_spec(cfg: Config) -> Any:
    from jnn.grid import GridSpec

    return GridSpec(cfg.activations, cfg.inits, cfg.lrs, cfg.seeds, cfg.sizes, cfg.seed)


def load_data(cfg: Config) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_val, y_val, x_test, y_test): float32 (N, 784) in [0, 1], int32."""
    s = report.load_splits(cfg.split, seed=cfg.seed, data_dir=cfg.data_dir)
    n = cfg.subset or (len(s.y_train), len(s.y_val), len(s.y_test))
    data = (s.x_train, s.y_train, s.x_val, s.y_val, s.x_test, s.y_test)
    data = tuple(a[: n[i // 2]] for i, a in enumerate(data))
    if cfg.train_size is not None:
        if cfg.train_size > len(data[1]):
            raise InputError(f"--train-size {cfg.train_size} exceeds the {len(data[1])} examples")
        data = (data[0][: cfg.train_size], data[1][: cfg.train_size], *data[2:])
    if cfg.batch_size > len(data[1]):
        raise InputError(f"--batch-size {cfg.batch_size} exceeds the {len(data[1])} examples")
    if len(data[3]) == 0:
        raise InputError(f"split {cfg.split!r} has no validation set; use original or pooled70k")
    return data


def time_one_model(cfg: Config, data: tuple[np.ndarray, ...], epochs: int = 3) -> dict[str, Any]:
    """Seconds per epoch of one model alone (relu, normal, lr 0.1) with ``train.make_epoch_fn``
    on the same data and machine: the first epoch (compiling) is left out of the median."""
    import jax
    import optax

    from jnn import grid, train
    from jnn.mlp import mlp

    model, opt = mlp(cfg.sizes, "relu", "normal"), optax.sgd(0.1)
    state = train.init_train_state(grid.model_key(cfg.seed, 0), model, opt, cfg.sizes[:1])
    epoch = train.make_epoch_fn(model, opt, cfg.batch_size)
    seconds = []
    for _ in range(epochs):
        with Stopwatch() as sw:
            state, metrics = epoch(state, data[0], data[1])
            jax.block_until_ready(metrics)
        seconds.append(sw.s)
    return {"epoch_seconds": seconds, "epoch_s": float(np.median(seconds[1:]))}


def _nan_stats(values: np.ndarray) -> dict[str, float | None]:
    """mean, std, min, max over the finite values (seeds that did not diverge); None if none."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
        "max": float(v.max()), "n": int(v.size),
    }  # fmt: skip


def model_records(cfg: Config, res: Any) -> list[dict[str, Any]]:
    """One record per model (cell, seed): history, diverged_at (None: never), save-epoch evals."""
    spec = grid_spec(cfg)
    records = []
    for mi, (cell, s) in enumerate((c, s) for c in spec.cells() for s in range(cfg.seeds)):
        evals = {str(e): {k: v[mi] for k, v in ev.items()} for e, ev in res.evals.items()}
        records.append({
            "cell": cell._asdict(), "seed": s,
            "diverged_at": int(res.diverged_at[mi]) or None,
            "history": {k: v[mi] for k, v in res.history.items()},
            "evals": evals,
        })  # fmt: skip
    return records


def cell_summaries(cfg: Config, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: diverged count and, per save epoch, test/val accuracy stats over the seeds
    that did not diverge, and the largest unit spread per hidden layer over those seeds."""
    out = []
    for cell in grid_spec(cfg).cells():
        rows = [m for m in models if m["cell"] == cell._asdict()]
        per_epoch = {}
        for e in map(str, cfg.save_at):
            ev = [m["evals"][e] for m in rows]
            stats = {
                k: _nan_stats(np.array([r[k] for r in ev], np.float64))
                for k in ("test_accuracy", "test_loss", "val_accuracy")
            }
            spread = np.array([r["unit_spread"] for r in ev], np.float64)
            ok = np.isfinite(spread).all(axis=1)
            stats["unit_spread_max"] = spread[ok].max(axis=0).tolist() if ok.any() else None
            per_epoch[e] = stats
        diverged = [m["diverged_at"] for m in rows if m["diverged_at"]]
        out.append({
            "cell": cell._asdict(), "seeds": len(rows), "diverged": len(diverged),
            "diverged_at": diverged, "at": per_epoch,
        })  # fmt: skip
    return out


def _timing(cfg: Config, res: Any, alone: dict[str, Any], models: int) -> dict[str, Any]:
    """Throughput of the grid program vs one model alone (same data, same machine, same run)."""
    steady = res.epoch_seconds[1:] or res.epoch_seconds
    grid_epoch = float(np.median(steady)) if steady else None  # None: resumed at the last epoch
    alone_rate = 1.0 / alone["epoch_s"]
    grid_rate = None if grid_epoch is None else models / grid_epoch
    return {
        "grid_epoch_seconds": res.epoch_seconds, "grid_epoch_s": grid_epoch,
        "grid_model_epochs_per_s": grid_rate, "alone": alone,
        "alone_model_epochs_per_s": alone_rate,
        "speedup": None if grid_rate is None else grid_rate / alone_rate,
        "note": "medians without the first (compiling) epoch of this invocation; grid epochs "
        "include validation",
    }  # fmt: skip


def _on_epoch(cfg: Config, models: int, t0: float, store: Any) -> Any:
    """``on_epoch`` of ``grid.train_grid``: one progress line per epoch on stderr (long runs go
    to log files) and the rolling checkpoint every ``--checkpoint-every`` epochs and at the end."""
    from jnn import grid

    def on_epoch(progress: Any, metrics: Any) -> None:
        epoch = progress.epoch
        if (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or epoch == cfg.epochs:
            store.save(epoch, grid.progress_tree(progress), rolling=True)
        acc = np.asarray(metrics.val_accuracy)[:models]
        best = float(np.nanmax(acc)) if np.isfinite(acc).any() else float("nan")
        print(
            f"epoch {epoch}/{cfg.epochs}: {time.perf_counter() - t0:.0f} s, {models} models, "
            f"best val accuracy {best:.4f}, {int(np.isnan(acc).sum())} stopped",
            file=sys.stderr, flush=True,
        )  # fmt: skip

    return on_epoch


def resume_point(cfg: Config, store: Any, stored: dict[str, Any] | None) -> Any:
    """With --resume: the newest checkpoint in ``store`` (the run's CheckpointStore, the one that
    then saves, so a step found unusable here may be replaced) that verifies, as a
    ``grid.GridProgress``, checked against --epochs and --save-at; None: start from epoch 0."""
    from jnn import grid

    if not cfg.resume:
        return None
    old_save_at = tuple(stored["config"]["save_at"]) if stored else cfg.save_at
    spec = grid_spec(cfg)
    like = functools.partial(grid.progress_like, spec, eval_epochs=old_save_at)
    found = harness.restore_latest(store, like, "mlp_grid")
    if found is None:
        return None
    epoch, tree = found
    if epoch > cfg.epochs:
        raise InputError(
            f"--resume: the run in {store.directory.parent} has trained {epoch} epochs; pass "
            f"--epochs {epoch} or more, not {cfg.epochs}"
        )
    done, asked = [e for e in old_save_at if e <= epoch], [e for e in cfg.save_at if e <= epoch]
    if done != asked:
        raise InputError(
            f"--resume: the run evaluated epochs {done} of its first {epoch}; --save-at must keep "
            f"those and may add only epochs after {epoch}, got {list(cfg.save_at)}"
        )
    return grid.progress_from_tree(epoch, tree)


def run(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train (or, with --resume, continue) the grid of ``cfg`` (the memory check comes before any
    data is read); returns the results dict: every model, the per-cell summaries and the
    throughput vs one model alone. Diverged models are results of the study (masked in the
    program, counted per cell): the status stays "ok" and the exit code 0."""
    from jnn import grid
    from jnn.checkpoints import CheckpointStore

    spec = grid_spec(cfg)
    n_eval = 6000 if cfg.subset is None else max(cfg.subset[1:])
    grid.check_memory(spec, cfg.batch_size, n_eval)
    report.request_host_devices(cfg.devices or max(1, os.cpu_count() or 1))
    from jnn import parallel

    mesh = parallel.model_mesh(cfg.devices)
    data = load_data(cfg)
    stored = harness.stored_run(cfg.out, cfg.identity(), "mlp_grid") if cfg.resume else None
    store = CheckpointStore(run_dir / "checkpoints")
    start = resume_point(cfg, store, stored)  # refuses before run.json is rewritten
    report.write_json(run_dir / "run.json", {"identity": cfg.identity(), "config": asdict(cfg)})
    t0 = time.perf_counter()
    res = grid.train_grid(
        spec, data[0:2], data[2:4], data[4:6], epochs=cfg.epochs, save_at=cfg.save_at,
        batch_size=cfg.batch_size, mesh=mesh, start=start,
        on_epoch=_on_epoch(cfg, spec.num_models, t0, store),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    models = model_records(cfg, res)
    return {
        "study": "mlp_grid", "status": "ok", "config": asdict(cfg),
        "num_models": spec.num_models, "devices": mesh.size,
        "resumed_from": None if start is None else start.epoch,
        "diverged_models": sum(1 for m in models if m["diverged_at"]),
        "sizes": {"train": len(data[1]), "val": len(data[3]), "test": len(data[5])},
        "timing": {**_timing(cfg, res, time_one_model(cfg, data), spec.num_models), "wall_s": wall},
        **harness.stamp(), "cells": cell_summaries(cfg, models), "models": models,
    }  # fmt: skip


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
    last = str(cfg["save_at"][-1])
    lines = [
        "# MLP grid: activation x init x lr, several seeds, one vmapped program\n",
        f"{results['num_models']} models = {len(results['cells'])} cells x {cfg['seeds']} "
        f"seeds; {cfg['epochs']} epochs; sizes {cfg['sizes']}; plain SGD, batch "
        f"{cfg['batch_size']}; split `{cfg['split']}` ({n['train']:,} train / {n['val']:,} val / "
        f"{n['test']:,} test); model axis over {results['devices']} device(s) of "
        f"{results['device']['cpu']}. Test accuracy: mean ± std [min, max] over the seeds that "
        "did not diverge. Unit spread: per hidden layer, max over units j of |w_j - w_0| "
        "(incoming weights and bias); exactly 0 means every hidden unit is a copy of the first.\n",
        throughput_line(results),
    ]
    if cfg.get("train_size") or cfg["seeds"] < 5 or cfg["epochs"] < 100:
        first = " (the first of the split's training set)" if cfg.get("train_size") else ""
        lines.append(
            f"**Reduced run** (sized for the machine): {cfg['seeds']} seeds, {cfg['epochs']} "
            f"epochs, {n['train']:,} training examples{first}; the full design is 5 seeds, 100 "
            "epochs, all 48,600 (a checkpointed run grows with `--resume --epochs N`). "
            "Validation and test sets are complete.\n"
        )
    head = ["activation", "init", "lr", "diverged"]
    head += [f"test acc @{e}" for e in cfg["save_at"]] + [f"unit spread @{last}"]
    rows = []
    for c in results["cells"]:
        cell = c["cell"]
        spread = c["at"][last]["unit_spread_max"]
        rows.append([
            cell["activation"], cell["init"], f"{cell['lr']:g}", f"{c['diverged']}/{c['seeds']}",
            *(_acc(c["at"][str(e)]["test_accuracy"]) for e in cfg["save_at"]),
            "n/a" if spread is None else ", ".join(f"{v:.3g}" for v in spread),
        ])  # fmt: skip
    lines.append(report.markdown_table(head, rows))
    return "\n".join(lines)


def render(results: dict[str, Any], out: str | Path) -> list[Path]:
    """results.json, results.md and the PNGs (heatmap per save epoch, bands per lr) in ``out``."""
    from experiments import grid_plots

    out = Path(out)
    report.write_json(out / "results.json", results)
    report.write_text_atomic(out / "results.md", results_markdown(results))
    plots = grid_plots.plot_grid(out, results, results["config"]["save_at"])
    return [out / "results.json", out / "results.md", *plots]


EXPERIMENT = harness.Experiment("mlp_grid", parse_config, run, render, results_markdown)
main = harness.cli(EXPERIMENT)

if __name__ == "__main__":
    report.allow_device_requests()
    sys.exit(main())

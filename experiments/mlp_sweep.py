"""The MLP study (the main job): a preset of ``jnn.study`` with scikit-learn alongside.

    python -m experiments.mlp_sweep                   # the original study (4 x 100 epochs)
    python -m experiments.mlp_sweep --seeds 5         # the same with 5 seeds: mean +- std
    python -m experiments.mlp_sweep --quick           # the same outputs from a tiny run
    python -m experiments.mlp_sweep --resume          # continue an interrupted run

The config is :class:`Config` (the study's fields, declared once in ``jnn.study.StudyConfig``,
with this study's defaults, plus scikit-learn's); the command line, its help, checks and
``--quick`` are generated from it (``experiments.lab``). ``run`` hands it to
``jnn.study.run(config, run_dir)`` (training, checkpoints, resume, evaluation from the restored
checkpoints) while scikit-learn's ``MLPClassifier`` (plain SGD, the same split and settings)
trains one model per activation in worker processes; ``render`` writes results.json,
results.md (mean +- std over seeds) and the curves (bands over seeds).

Exit codes: 0 done; 2 bad input (one line on stderr); 3 done, but some model diverged.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments import harness, lab, report, studies
from jnn import reference, summary, workdir
from jnn.config import ConfigError, integer, option
from jnn.study import StudyConfig

# The smoke run: tiny sets and glorot init, so its models visibly learn in 3 epochs (the study's
# 0.01*randn init sits on the 10% plateau for the first ~6 epochs of 48,600 images).
QUICK = {
    "subset": (2000, 500, 500),
    "epochs": 3,
    "save_at": (2, 3),
    "checkpoint_every": 1,
    "inits": ("glorot",),
}
# The original study's test accuracies (its own 80/10/10 split), for the results table.
ORIGINAL_TEST_ACCURACY = {
    ("relu", 100): 0.8865,
    ("relu", 50): 0.8833,
    ("tanh", 100): 0.8822,
    ("tanh", 50): 0.8810,
    ("linear", 100): 0.8172,
    ("linear", 50): 0.8218,
    ("sigmoid", 100): 0.1012,
    ("sigmoid", 50): 0.1085,
}
ORIGINAL_SKLEARN_TEST_ACCURACY = {"sigmoid": 0.878, "tanh": 0.873, "relu": 0.0, "linear": 0.0}


@dataclass(frozen=True)
class Config(StudyConfig):
    """The study (jnn.study's fields, the original's defaults) and scikit-learn alongside."""

    sklearn: bool = option(
        True, "train scikit-learn's MLPClassifier alongside (one per activation)"
    )
    sklearn_workers: int = option(2, "processes running the scikit-learn models")

    def __post_init__(self) -> None:
        super().__post_init__()
        integer(self.sklearn_workers, "sklearn_workers", 1, 64)  # 2.5 or "2": one line
        one_cell = len(self.inits) == 1 and len(self.lrs) == 1 and self.optimizers == ("sgd",)
        if self.sklearn and not one_cell:  # its MLPClassifier is plain SGD at one lr
            raise ConfigError(
                "scikit-learn alongside compares one init and lr of plain sgd; pass one of "
                "each and optimizer sgd, or --no-sklearn"
            )


def default_out(cfg: Config, quick: bool) -> str:
    """``runs/mlp_sweep[-quick]``, as every experiment's (another config: pass --out)."""
    return harness.default_out("mlp_sweep", "quick" if quick else "")


def parse(argv: Sequence[str] | None) -> lab.Invocation:
    return lab.parse(
        Config, argv, name="mlp_sweep", quick=QUICK, default_out=default_out,
        description="Train the course MLP (784-256-128-64-10 on Fashion-MNIST, manual backprop, "
        "plain SGD) with each hidden activation, checkpoint it at chosen epochs, evaluate the "
        "restored checkpoints and compare with scikit-learn's MLPClassifier. With no flags: the "
        "original study (relu, sigmoid, linear, tanh; 100 epochs; lr 0.1; batch 32; checkpoints "
        "at 50 and 100; the original's 48,600/5,400/6,000 split).",
        epilog="Exit codes: 0 done, 2 bad input, 3 done but a model diverged (see results.json).",
    )  # fmt: skip


def sklearn_jobs(cfg: Config, data: Any) -> dict[str, reference.Job]:
    """One scikit-learn job per activation, on the study's own split (seed ``cfg.seed``)."""
    return {
        act: reference.Job(
            activation=act,
            hidden=tuple(cfg.hidden),
            epochs=cfg.epochs,
            save_at=tuple(cfg.save_epochs),
            data=tuple(data),
            lr=cfg.lrs[0],
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            num_classes=cfg.sizes[-1],
        )
        for act in cfg.activations
    }


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """``jnn.study.run`` with scikit-learn alongside; the result dict for ``render``."""
    from jnn import study

    cfg: Config = inv.config
    report.request_host_devices(cfg.devices or max(1, os.cpu_count() or 1))  # before JAX starts
    t0 = time.perf_counter()
    pool = futures = None
    console = studies.Console(cfg.epochs, cfg.sklearn and len(cfg.activations), inv.quick)
    try:
        data = study.load_data(cfg.study())  # once, for jnn and scikit-learn
        if cfg.sklearn:
            console.counter = reference.epoch_counter(len(cfg.activations))
            jobs = sklearn_jobs(cfg, data)
            with report.children_ignore_interrupts():  # Ctrl-C is this process's
                pool, futures = reference.start_pool(
                    jobs, cfg.sklearn_workers, counter=console.counter
                )
        res = study.run(
            cfg.study(),
            run_dir,
            resume=inv.resume,
            on_start=console.start,
            on_epoch=console.epoch,
            data=data,
        )
        jax_s = time.perf_counter() - t0
        sk = studies.collect_sklearn(futures, console)
    finally:
        console.close()
        if pool is not None:
            reference.stop_pool(pool)
    result = summary.result_dict("mlp_sweep", asdict(cfg) | {"layout": res.start.layout}, res)
    result["sklearn"] = sk
    result["timing"]["jax_s"] = jax_s
    result["timing"]["wall_s"] = time.perf_counter() - t0
    return result


TABLE_HEADERS = (
    "activation",
    "epoch",
    "jnn train acc",
    "jnn val acc",
    "jnn test acc",
    "jnn test loss",
    "diverged",
    "sklearn train acc",
    "sklearn test acc",
    "original test acc",
)


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    """Per cell and save epoch: jnn mean +- std over seeds, sklearn, the original's number."""
    quick = result["config"].get("subset") is not None
    sk = result.get("sklearn") or {}
    rows = []
    for cell in summary.cells(result):
        act = cell["activation"]
        for e, stats in cell["evals"].items():
            s = (sk.get(act) or {}).get("checkpoints", {}).get(str(e))
            sk_cells = (
                [summary.fmt(s.get(k)) for k in ("train_accuracy", "test_accuracy")]
                if s
                else ([str((sk.get(act) or {}).get("status", "-"))] * 2)
            )
            orig = None if quick else ORIGINAL_TEST_ACCURACY.get((act, int(e)))
            rows.append(
                [
                    cell["label"],
                    e,
                    *(
                        stats[k]
                        for k in ("train_accuracy", "val_accuracy", "test_accuracy", "test_loss")
                    ),
                    f"{cell['diverged']}/{cell['seeds']}",
                    *sk_cells,
                    f"{orig:.4f}" if orig is not None else "-",
                ]
            )
    return rows


def results_markdown(result: dict[str, Any]) -> str:
    """The table a person reads, and how it was run."""
    c = result["config"]
    seeds = c["seeds"]
    head = (
        f"# MLP study: {'-'.join(map(str, result['sizes']))}, {c['optimizer']}\n\n"
        f"Split `{c['split']}` (seed {c['seed']})"
        + (f", QUICK subset {tuple(c['subset'])}" if c.get("subset") else "")
        + f"; init {', '.join(c['inits'])}; lr {', '.join(f'{x:g}' for x in c['lrs'])}; "
        f"batch {c['batch_size']}; {c['epochs']} epochs; {seeds} seed(s)"
        + (" (mean ± std over seeds)" if seeds > 1 else "")
        + ". jnn accuracies come from the restored checkpoints.\n\n"
    )
    lines = [head, report.markdown_table(TABLE_HEADERS, table_rows(result))]
    lines += [f"\n- {m}" for m in summary.divergence_notes(result)]
    lines.append("\n\n" + summary.timing_line(result) + "\n")
    if result.get("sklearn"):
        lines.append(
            "\nOriginal study's MLPClassifier test accuracies: "
            + ", ".join(f"{k} {v}" for k, v in ORIGINAL_SKLEARN_TEST_ACCURACY.items())
            + " (0.0 is impossible on 10 balanced classes: a bug in that study). scikit-learn "
            "trains one model per activation (seed of the split) with its own init.\n"
        )
    if seeds == 1:
        lines.append(
            "\nOne seed: its digits depend on the CPU (XLA emits different code per CPU; runs "
            "on one machine are bit-identical). Pass --seeds 5 for mean ± std.\n"
        )
    return "".join(lines)


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """results.json, results.md and the curves, from ``result`` alone."""
    from jnn import plots

    save_at = sorted({int(e) for m in result["models"] for e in m["evals"]})
    paths = plots.study_curves(result, Path(run_dir), save_at)
    paths.append(workdir.write_json(Path(run_dir) / "results.json", result))
    paths.append(workdir.write_text_atomic(Path(run_dir) / "results.md", results_markdown(result)))
    return paths


def console(result: dict[str, Any]) -> str:
    return results_markdown(result)


EXPERIMENT = harness.Experiment("mlp_sweep", parse, run, render, console)
main = harness.cli(EXPERIMENT)

if __name__ == "__main__":
    report.allow_device_requests()
    sys.exit(main())

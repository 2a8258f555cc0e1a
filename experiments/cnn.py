"""A small CNN on Fashion-MNIST, trained by manual backprop and by ``jax.grad`` side by side.

    python -m experiments.cnn                      # official split, 54k/6k/10k; into runs/cnn
    python -m experiments.cnn --quick              # a few hundred images, 2 epochs: runs/cnn-quick

(the committed results were made with ``--out results/cnn``). On the harness
(:mod:`experiments.harness`): ``parse`` (generated from :class:`Config` by
:mod:`experiments.lab`) -> ``run`` -> ``render``.

The network (``build_model``)::

    Conv2D(32, 3) ReLU MaxPool2D(2) Conv2D(64, 3) ReLU MaxPool2D(2) Flatten
    Dense(128) ReLU Dropout(0.5) Dense(10)

Adam (lr 1e-3, batch 128; Adam because plain SGD needs a tuned schedule to reach the target in
15 epochs). Two copies start from the same ``TrainState`` (same init, shuffle and dropout keys):
one takes gradients from the layers' hand-written backward, the other from ``jax.grad`` of the
same forward + loss. Their epochs alternate (manual, autodiff, manual, ...) so both see the same
machine load, and each epoch's wall time is recorded; the reported ratio is the median over the
epochs after the first (which includes compilation). Measured apart, interleaved over fixed
10-step samples (results/cnn/epoch_ratio.md), manual backprop takes 0.62x the time of ``jax.grad``
per step on XLA:CPU: JAX differentiates MaxPool2D with select-and-scatter, which XLA:CPU runs as
a scatter (~25x slower than jnn's argmax-and-pad backward for the first pool layer).

``--epoch-loop`` is ``jnn.train.make_epoch_fn``'s ``loop`` (the library's one epoch loop, two
ways to run it): "steps" (default) runs each epoch as a Python loop over one jitted train step;
"scan" runs the whole epoch in one ``lax.scan``. Both run the same step body
(``jnn.train.train_step``): same permutation, same dropout key per step.
On XLA:CPU (jaxlib 0.10.2) the scanned epoch is ~10x slower per step than the jitted step, for
manual backprop and ``jax.grad`` alike, and ``fori_loop`` or ``unroll=2`` change nothing
(``python -m bench.cnn_scan_probe``, numbers in results/cnn/scan_probe.md). The cause is
one convolution: the kernel gradient, which both jnn's backward and JAX's transpose rule write as
a conv with batch and channels exchanged (dimension numbers CHWN/IHWO/HWNC). Outside a loop
XLA:CPU rewrites it into a canonical NHWC/HWIO conv plus transposes and runs it through its fast
(YNNPACK) convolution; inside a while loop body it does not, and the conv runs in the naive
emitter, ~20-30x slower (5.8 s vs 0.19 s per call for the 14x14x32 -> 64 layer at batch 128).
No XLA flag in this jaxlib changes it. jnn's Conv2D backward now writes the transposes
explicitly (bit-identical to the old form: ``tests/test_cnn.py``), which makes manual backprop
as fast in a scan as in the step loop (0.84x); ``jax.grad``'s own transpose rule cannot be
changed from here, so the step loop stays the default: both twins must run the same loop for
the timing (``--epoch-loop scan`` is fast for the manual twin alone). ``--swapped-dw`` of the
probe puts the old form back to reproduce the slowdown.

Outputs in ``--out``: results.json, results.md, curves.png (loss and accuracy, train/val, manual
and autodiff). Exit codes: 0 done; 2 bad input (one line on stderr); 3 a network diverged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import harness, lab, report
from jnn import config, timing, workdir
from jnn.config import option

QUICK_SUBSET = (384, 128, 128)  # train / val / test examples of --quick
METHODS = ("manual", "autodiff")
EPOCH_LOOPS = ("steps", "scan")  # jnn.train.EPOCH_LOOPS, the CNN's default first
EVAL_CHUNK = 1000  # examples per evaluation step: ~100 MB of conv activations, not ~1 GB


QUICK = {"subset": QUICK_SUBSET, "epochs": 2, "autodiff_epochs": 2}


@dataclass(frozen=True)
class Config:
    """The CNN twins' settings, declared once (the CLI is generated from them)."""

    epochs: int = option(15, "epochs of the manual-backprop network")
    autodiff_epochs: int | None = option(None, "epochs of the jax.grad twin, <= epochs [epochs]")
    batch_size: int = option(128, "minibatch size")
    lr: float = option(1e-3, "Adam learning rate")
    seed: int = option(0, "seed of the init, shuffle and dropout keys")
    epoch_loop: str = option(
        "steps", "steps (a jitted step in a Python loop) or scan (each epoch in one lax.scan)"
    )
    subset: tuple[int, ...] | None = option(
        None, "use the first N train,val,test examples of the official split (three numbers)"
    )
    data_dir: str | None = option(
        None, "folder with the four Fashion-MNIST .gz files [$JNN_DATA_DIR, else download once]"
    )

    def __post_init__(self) -> None:
        config.integer(self.epochs, "epochs", 1, 10_000)
        if self.autodiff_epochs is not None:
            config.integer(self.autodiff_epochs, "autodiff_epochs", 1, self.epochs)
        config.integer(self.batch_size, "batch_size", 1)
        config.positive(self.lr, "lr")
        config.integer(self.seed, "seed", 0, config.MAX_SEED)
        config.choice(self.epoch_loop, "epoch_loop", EPOCH_LOOPS)
        config.folder(self.data_dir, "data_dir")
        if self.subset is not None:
            if len(self.subset) != 3:
                raise config.ConfigError(f"`subset` takes three numbers, got {self.subset}")
            for n in self.subset:
                config.integer(n, "subset", 1)
            if self.batch_size > self.subset[0]:
                raise config.ConfigError(
                    f"`batch_size` {self.batch_size} exceeds the {self.subset[0]:,} training "
                    "examples"
                )

    @property
    def twin_epochs(self) -> int:
        return self.epochs if self.autodiff_epochs is None else self.autodiff_epochs


def parse(argv: Sequence[str] | None) -> lab.Invocation:
    return lab.parse(
        Config, argv, name="cnn", quick=QUICK,
        description="Train a small CNN on Fashion-MNIST (official split) by manual backprop and "
        "by jax.grad side by side; report test accuracy and the epoch-time ratio.",
        epilog="Exit codes: 0 done, 2 bad input, 3 a network diverged (see results.json).",
        resume=False,  # the twins' epochs alternate in one process: a run starts afresh
    )  # fmt: skip


def build_model() -> Any:
    """The CNN above (``jnn.models``' "cnn" entry) for Fashion-MNIST's images and classes."""
    from jnn import data, models

    entry = data.get_dataset("fashion_mnist")
    return models.build("cnn", input_shape=entry.input_shape, classes=entry.num_classes)


def load_data(cfg: Config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Official split as NHWC float32 (N, 28, 28, 1) in [0, 1]; --quick keeps the first few."""
    s = report.load_splits("official", data_dir=cfg.data_dir, flatten=False)
    parts = {
        "train": (s.x_train, s.y_train),
        "val": (s.x_val, s.y_val),
        "test": (s.x_test, s.y_test),
    }
    sizes = dict(zip(parts, cfg.subset)) if cfg.subset else {}
    config.check_subset(cfg.subset or (), [len(y) for _, y in parts.values()], "official")
    return {
        k: (x[: sizes.get(k, len(x)), ..., None], y[: sizes.get(k, len(y))])
        for k, (x, y) in parts.items()
    }


def timed(epoch_fn: Any, times: list[float]) -> Any:
    """``epoch_fn`` that appends its wall time (until the metrics are ready) to ``times``."""
    import jax

    def fn(state: Any, x: Any, y: Any) -> tuple[Any, Any]:
        with timing.Stopwatch() as sw:
            state, metrics = jax.block_until_ready(epoch_fn(state, x, y))
        times.append(sw.s)
        return state, metrics

    return fn


def train_twins(cfg: Config, data: dict[str, Any]) -> dict[str, Any]:
    """Both networks from one TrainState, epochs alternating; per method: history, epoch times,
    test loss/accuracy, diverged_at."""
    import jax
    import jax.numpy as jnp
    import optax

    from jnn import train

    model, optimizer = build_model(), optax.adam(cfg.lr)
    (x, y), val, (xt, yt) = (tuple(map(jnp.asarray, data[k])) for k in ("train", "val", "test"))
    eval_fn = train.make_eval_fn(model, chunk=EVAL_CHUNK)  # bounds the conv activations
    out: dict[str, Any] = {}
    for m in METHODS:
        state = train.init_train_state(jax.random.key(cfg.seed), model, optimizer, (28, 28, 1))
        epochs = cfg.epochs if m == "manual" else cfg.twin_epochs
        out[m] = {"state": state, "epochs": epochs, "times": [], "diverged_at": None,
                  "history": train.empty_history(epochs)}  # fmt: skip
        fn = train.make_epoch_fn(model, optimizer, cfg.batch_size, m, loop=cfg.epoch_loop)
        out[m]["fn"] = timed(fn, out[m]["times"])
    for epoch in range(1, cfg.epochs + 1):
        for m, r in out.items():
            if epoch > r["epochs"] or r["diverged_at"]:
                continue
            res = train.fit(r["state"], r["fn"], (x, y), val, eval_fn=eval_fn, epochs=epoch,
                            history=r["history"])  # fmt: skip
            r["state"], r["diverged_at"] = res.state, res.diverged_at
            h = r["history"]
            print(f"epoch {epoch:2d} {m:8s} {r['times'][-1]:7.1f} s  train loss "
                  f"{h['train_loss'][epoch - 1]:.4f}  val acc {h['val_accuracy'][epoch - 1]:.4f}",
                  flush=True)  # fmt: skip
    for r in out.values():
        st = r.pop("state")
        r.pop("fn")
        test = None if st is None else eval_fn(st.params, st.model_state, xt, yt)
        r["test_loss"], r["test_accuracy"] = (None, None) if test is None else map(float, test)
        r["history"] = {k: v.tolist() for k, v in r["history"].items()}
    return out


def run(inv: lab.Invocation, run_dir: Path | None = None) -> dict[str, Any]:
    """Load the data, train both networks, return the results (nothing written)."""
    import jax

    from jnn.core import count_params

    cfg: Config = inv.config
    t0 = time.perf_counter()
    data = load_data(cfg)
    if cfg.batch_size > len(data["train"][1]):
        raise config.ConfigError(
            f"`batch_size` {cfg.batch_size} exceeds the {len(data['train'][1]):,} training examples"
        )
    model = build_model()
    params = model.init(jax.random.key(cfg.seed), (28, 28, 1))[1]
    nets = train_twins(cfg, data)
    man, auto = nets["manual"], nets["autodiff"]
    return {
        "study": "cnn",
        "status": "diverged" if man["diverged_at"] or auto["diverged_at"] else "ok",
        "config": asdict(cfg),
        "model": model.name,
        "params": count_params(params),
        "optimizer": f"adam(lr={cfg.lr:g}), batch {cfg.batch_size}",
        "sizes": {k: len(v[1]) for k, v in data.items()},
        "networks": nets,
        "epoch_time_ratio_manual_over_autodiff": timing.median_ratio(man["times"], auto["times"]),
        "wall_s": time.perf_counter() - t0,
        **harness.stamp(),
    }


def results_markdown(result: dict[str, Any]) -> str:
    """results.md: the table of accuracies and median epoch times, and how they were measured."""
    cfg, nets, dev, sizes = result["config"], result["networks"], result["device"], result["sizes"]
    rows = []
    for m, r in nets.items():
        t = r["times"]
        val = r["history"]["val_accuracy"][len(t) - 1] if t else None
        med = statistics.median(t[1:]) if len(t) > 1 else None  # epoch 1 compiles: never a median
        rows.append([m, len(t), r["test_accuracy"], r["test_loss"], val, t[0] if t else None, med])
    ratio = result["epoch_time_ratio_manual_over_autodiff"]
    headers = ["gradients", "epochs", "test acc", "test loss", "val acc (last)",
               "epoch 1 s (compile)", "median epoch s (2..)"]  # fmt: skip
    return (
        f"# CNN on Fashion-MNIST: manual backprop vs jax.grad{' (subset)' * bool(cfg['subset'])}"
        "\n\n"
        f"`{result['model']}`, {result['params']:,} params; {result['optimizer']}; official split "
        f"({sizes['train']}/{sizes['val']}/{sizes['test']}); seed {cfg['seed']}; "
        f"epoch loop `{cfg['epoch_loop']}`.\n\n"
        + report.markdown_table(headers, rows)
        + "\nManual / autodiff epoch time, median over the epochs both ran (first excluded): "
        + (f"**{ratio:.3f}x**" if ratio is not None else "n/a (each needs 2 epochs or more)")
        + f". Measured side by side in one process, epochs alternating, on {dev['cpu']} "
        f"({dev['cpu_count']} cores, backend {dev['backend']}); the machine was shared with other "
        f"jobs, so absolute times are noisy. Wall time {result['wall_s']:.0f} s.\n"
    )


def plot_curves(path: Path, result: dict[str, Any]) -> Path:
    """Loss and accuracy per epoch: train/val, manual (solid) and autodiff (dashed)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    styles = {
        "manual": ("-", ("tab:blue", "tab:orange")),
        "autodiff": ("--", ("tab:green", "tab:red")),
    }
    for m, r in result["networks"].items():
        style, colors = styles[m]
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for split, color in zip(("train", "val"), colors):
                v = np.asarray(r["history"][f"{split}_{metric}"], dtype=float)
                ax.plot(
                    np.arange(1, len(v) + 1),
                    v,
                    style,
                    color=color,
                    marker="o",
                    ms=3,
                    label=f"{m} {split}",
                )  # a 1-epoch twin is a point
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    quick = " (subset)" if result["config"]["subset"] else ""
    fig.suptitle(f"CNN on Fashion-MNIST{quick}: manual backprop vs jax.grad, same init and keys")
    from jnn.plots import save_figure

    return save_figure(fig, path)


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """Write results.json, results.md and curves.png into ``run_dir``."""
    workdir.write_json(run_dir / "results.json", result)
    workdir.write_text_atomic(run_dir / "results.md", results_markdown(result))
    return [
        run_dir / "results.json",
        run_dir / "results.md",
        plot_curves(run_dir / "curves.png", result),
    ]


EXPERIMENT = harness.Experiment("cnn", parse, run, render, results_markdown)
main = harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(main())

"""Why k vmapped models run no faster than one on XLA:CPU: the grid's epoch, four ways.

    python -m bench.grid_probe --models 24 --examples 4800 --reps 2     (--quick: 3 models, seconds)

The same M grid models (``jnn.study``: SelectActivation, per-model lr and init) train one epoch of
batch-32 SGD on synthetic data, as

- ``alone``: one model with ``train.make_epoch_fn`` (the reference rate, per model);
- ``vmap``: ``jax.vmap(train.epoch_step)`` over the M models, each gathering its own batch (what
  ``jnn.study`` runs, without its validation): every dot is a batched dot;
- ``vmap-shared-order``: the batch indices computed once outside the vmap, so the first layer
  (83% of the FLOPs) sees one unbatched x and JAX folds the models into one wide matmul
  (784 x 256M); the deeper layers stay batched dots;
- ``map-k``: ``lax.map`` over the models, k at a time (``batch_size=k``): models in sequence
  inside one program, so each model's params stay in cache.

Interleaved repetitions, medians (:mod:`jnn.timing`); the rate is model-epochs/s scaled
to the study's 48,600-example epoch, and each variant's params after the epoch are compared with
``vmap``'s per model (the same arithmetic up to float32 summation order: see ``param_diffs``).
One host device: this is about what one XLA program does with M models, not about sharding.
Writes probe.json and probe.md into ``--out`` (default ``runs/grid_probe``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench
from experiments import harness, lab, report
from jnn import config, timing
from jnn.config import option

STUDY_EXAMPLES = 48_600
MAP_CHUNKS = (1, 4)
QUICK = {"models": 3, "examples": 96, "reps": 1}


@dataclass(frozen=True)
class Config:
    """What the probe times, declared once (the command line is generated from it by
    ``experiments.lab``)."""

    models: int = option(24, "grid models in the program")
    examples: int = option(4800, "synthetic training examples per epoch (batch 32)")
    reps: int = option(2, "timed repetitions after 1 warm-up")
    seed: int = option(0, "data and model seed")

    def __post_init__(self) -> None:
        config.integer(self.models, "models", 1, 600)
        config.integer(self.examples, "examples", 32, STUDY_EXAMPLES)
        config.integer(self.reps, "reps", 1, 100)
        config.integer(self.seed, "seed", 0, config.MAX_SEED)


def grid_states(models: int, seed: int) -> Any:
    """M stacked grid models spread evenly over the study's 60 cells (every activation, init and
    lr; seeds added when M > 60), as the real grid mixes them."""
    import jax

    from jnn import study

    acts, lrs = ("relu", "sigmoid", "tanh", "linear"), (0.01, 0.05, 0.1)
    inits = ("zero", "random", "normal", "he", "glorot")
    cells = len(acts) * len(inits) * len(lrs)
    c = study.StudyConfig(
        activations=acts, inits=inits, lrs=lrs, seeds=-(-models // cells), seed=seed
    )
    st = study.init_state(c)
    pick = np.linspace(0, study.num_models(c) - 1, models).round().astype(int)
    return c, jax.tree.map(lambda a: a[pick], st.train)


def epoch_fns(spec: Any) -> dict[str, Callable[..., Any]]:
    """The jitted ``epoch(states, x, y) -> states`` of every variant (module docstring)."""
    import jax
    import jax.numpy as jnp

    from jnn import core, optim, study, train

    model = study.network(spec)
    kw = dict(value_and_grad=core.value_and_grad(model), optimizer=optim.make(spec.optimizer))
    one = functools.partial(train.epoch_step, batch_size=32, **kw)
    step = jax.vmap(functools.partial(train.train_step, **kw), in_axes=(0, *[None] * 5))

    def shared_order(st: Any, x: Any, y: Any) -> Any:
        keys = train._epoch_keys(jax.tree.map(lambda a: a[0], st))
        batches = train._epoch_batches(keys.perm_key, x.shape[0], 32, None)
        carry = (st.params, st.opt_state, st.model_state)
        steps = jnp.arange(batches.shape[0], dtype=jnp.uint32)
        body = lambda c, inp: step(c, *inp, x, y, keys.epoch_key)  # noqa: E731
        return jax.lax.scan(body, carry, (steps, batches))[0][0]

    fns = {
        "vmap": jax.jit(lambda st, x, y: jax.vmap(one, (0, None, None))(st, x, y)[0].params),
        "vmap-shared-order": jax.jit(shared_order),
    }
    for k in MAP_CHUNKS:
        fns[f"map-{k}"] = jax.jit(
            lambda st, x, y, k=k: jax.lax.map(lambda s: one(s, x, y)[0].params, st, batch_size=k)
        )
    return fns


def alone_case(seed: int, x: Any, y: Any) -> Callable[[int], None]:
    """One study model (ReLU, He, SGD 0.1) with ``train.make_epoch_fn``, its donated state
    carried from call to call."""
    import optax

    from bench.benchmark.common import epoch_case
    from jnn import study, train
    from jnn.mlp import mlp

    sizes = study.StudyConfig().sizes  # the study's widths; the ends from the dataset entry
    model, opt = mlp(sizes, "relu", "he"), optax.sgd(0.1)
    state = train.init_train_state(study.model_key(seed, 0), model, opt, sizes[:1])
    return epoch_case(train.make_epoch_fn(model, opt, 32), state, x, y)


def param_diffs(params: Any, reference: Any, models: int) -> dict[str, float]:
    """Median and max over the models of the leaf-wise relative param difference
    (``parallel.tree_max_diff``) after the epoch. Float32 summation order differs between the
    variants; a ReLU unit whose pre-activation sits at the kink can flip with it, and that
    model's trajectory then departs (measured: ~1e-3 absolute after 30 steps for 1 of 24 models),
    so the median says whether the arithmetic agrees and the max how far chaos took one model."""
    import jax

    from jnn import parallel

    d = [
        parallel.tree_max_diff(*(jax.tree.map(lambda a, m=m: a[m], t) for t in (params, reference)))
        for m in range(models)
    ]
    rel = np.array([x["max_rel"] for x in d])
    return {"median_rel": float(np.median(rel)), "max_rel": float(rel.max())}


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Time every variant interleaved; rates per model, ratios to ``alone``, param agreement."""
    import jax

    cfg = inv.config

    rng = np.random.default_rng(cfg.seed)
    spec, states = grid_states(cfg.models, cfg.seed)
    features, classes = spec.sizes[0], spec.sizes[-1]  # from the dataset entry
    x = jax.device_put(rng.random((cfg.examples, features), dtype=np.float32))
    y = jax.device_put(rng.integers(0, classes, cfg.examples).astype(np.int32))
    fns = epoch_fns(spec)
    params = {name: jax.block_until_ready(f(states, x, y)) for name, f in fns.items()}
    cases = {name: timing.repeated(lambda f=f: jax.block_until_ready(f(states, x, y)))
             for name, f in fns.items()}  # fmt: skip
    cases["alone"] = alone_case(cfg.seed, x, y)
    times = timing.time_interleaved(cases, cfg.reps, 1)
    scale = cfg.examples / STUDY_EXAMPLES
    rows = {}
    for name, t in times.items():
        models = 1 if name == "alone" else cfg.models
        rows[name] = t | {"models": models, "model_epochs_per_s": models * scale / t["median_s"]}
    for name, r in rows.items():
        r["vs_alone"] = r["model_epochs_per_s"] / rows["alone"]["model_epochs_per_s"]
        if name in params:
            r["param_diff_vs_vmap"] = param_diffs(params[name], params["vmap"], cfg.models)
    return {"study": "grid_probe", "status": "ok", "config": asdict(cfg), "rows": rows,
            **harness.stamp()}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    """The variants as one table: seconds per epoch, model-epochs/s, ratio to one model alone."""
    cfg, rows = result["config"], result["rows"]
    head = ["variant", "models", "s / epoch", "model-epochs/s (48,600-example)", "vs alone",
            "param diff vs vmap: median / max over models"]  # fmt: skip
    body = [
        [name, r["models"], f"{r['median_s']:.3f}", f"{r['model_epochs_per_s']:.3f}",
         f"{r['vs_alone']:.2f}x",
         "{median_rel:.1e} / {max_rel:.1e}".format(**r["param_diff_vs_vmap"])
         if "param_diff_vs_vmap" in r else ""]
        for name, r in rows.items()
    ]  # fmt: skip
    return "\n".join([
        "# The grid's epoch, four ways (one host device)\n",
        f"{cfg['models']} grid models, {cfg['examples']:,} synthetic examples per epoch, batch "
        f"32; median of {cfg['reps']} interleaved repetitions after 1 warm-up; "
        f"{result['device']['cpu']}, jax {result['versions'].get('jax')}.\n",
        report.markdown_table(head, body),
    ])  # fmt: skip


EXPERIMENT = bench.probe("grid_probe", Config, __doc__, QUICK, run, markdown)
parse, main = EXPERIMENT.parse, harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(main())

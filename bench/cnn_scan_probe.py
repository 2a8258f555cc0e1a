"""Why the scanned CNN epoch is slow on XLA:CPU: one train step, four ways of looping it.

    python -m bench.cnn_scan_probe --steps 4 --reps 3          # the loop forms
    python -m bench.cnn_scan_probe --ops --steps 4 --reps 3    # the three convs alone

Loop forms (the same step as ``jnn.train.epoch_step``: gather the batch, value-and-grad, Adam):

- ``steps``: the step jitted once and called ``--steps`` times from Python;
- ``scan``: ``lax.scan`` over the steps in one program (what ``jnn.train.make_epoch_fn`` does);
- ``scan-unroll2``: the same scan with ``unroll=2``;
- ``fori``: ``lax.fori_loop`` with the batch indices looked up per step;

each with manual backprop and ``jax.grad``. ``--ops`` times the CNN's three convolution kinds
(forward, input gradient, kernel gradient, as ``jnn.layers.conv`` writes them) once jitted and
inside a ``fori_loop``, to find which one XLA:CPU slows down inside a loop. XLA options are taken
from ``XLA_FLAGS`` (run the probe once per setting). Interleaved repetitions, medians
(:mod:`jnn.timing`); every time is seconds per train step (or per conv). Writes
probe.json and probe.md into ``--out`` (default ``runs/cnn_scan_probe``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import bench
from experiments import harness, lab, report
from jnn import config, timing
from jnn.config import option

LOOPS = ("steps", "scan", "scan-unroll2", "fori")
GRADIENTS = ("manual", "autodiff")
QUICK = {"steps": 1, "reps": 1, "loops": ("steps", "scan")}


@dataclass(frozen=True)
class Config:
    """What the probe times, declared once (the command line is generated from it by
    ``experiments.lab``)."""

    steps: int = option(4, "train steps per timed loop")
    batch_size: int = option(128, "examples per train step")
    reps: int = option(3, "timed repetitions (after one warm-up)")
    ops: bool = option(False, "time the three convs alone instead")
    pool: bool = option(False, "time MaxPool2D's backward: jnn's vs jax.vjp's")
    swapped_dw: bool = option(
        False, "patch (this process only) Conv2D backward back to the swapped-dimension kernel "
        "gradient (the layer's form before the probe, and jax.grad's): reproduces the slowdown",
    )  # fmt: skip
    loops: tuple[str, ...] = option(LOOPS, "the loops to time: " + ", ".join(LOOPS))

    def __post_init__(self) -> None:
        config.integer(self.steps, "steps", 1, 1000)
        config.integer(self.batch_size, "batch_size", 1, 4096)
        config.integer(self.reps, "reps", 1, 100)
        for loop in self.loops:
            config.choice(loop, "loops", LOOPS)
        config.distinct(self.loops, "loops")


def swapped_conv_backward(params: Any, x: Any, dy: Any, strides: Any, pads: Any) -> Any:
    """``jnn.layers.conv.conv_backward`` as it was before the scan probe: the kernel gradient as
    one conv with dimension numbers (CHWN, IHWO, HWNC), which is also how JAX's own transpose
    rule writes it. Same numbers bit for bit as the layer's explicit-transpose form (tested), but
    XLA:CPU rewrites it into a canonical (NHWC, HWIO, NHWC) conv only outside loops, and inside a
    while loop (scan, fori_loop) runs it with its naive loop emitter (~30x slower per call)."""
    from jax import lax

    from jnn.layers import conv

    w = params["w"]
    fixed = getattr(conv.conv_backward, "library", conv.conv_backward)
    dparams, dx = fixed(params, x, dy, strides, pads)  # dx, db as they are (its dw is unused)
    geo = [
        conv.axis_geometry_from_pads(n, k, s, p)
        for n, k, s, p in zip(x.shape[1:3], w.shape[:2], strides, pads)
    ]
    dw = lax.conv_general_dilated(
        x,
        dy,
        (1, 1),
        [(lo, hi - r) for lo, hi, r in geo],
        rhs_dilation=strides,
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
    )
    return {"w": dw, "b": dparams["b"]}, dx


def use_swapped_dw() -> None:
    """Swap jnn's Conv2D backward for :func:`swapped_conv_backward` in this process, to
    reproduce the slow scanned epoch."""
    from jnn.layers import conv

    if not hasattr(conv.conv_backward, "library"):
        swapped_conv_backward.library = conv.conv_backward  # type: ignore[attr-defined]
        conv.conv_backward = swapped_conv_backward


def _setup(cfg: Config) -> tuple[Any, Any, Any, Any]:
    """The CNN of experiments.cnn, Adam, synthetic (steps * batch) images and labels."""
    import jax
    import jax.numpy as jnp
    import optax

    from jnn import models, train

    # XLA's convolution path is what this probe measures (the gemm lowering has no scan cliff)
    model, opt = models.build("cnn", lowering="conv"), optax.adam(1e-3)
    rng = np.random.default_rng(0)
    n = cfg.steps * cfg.batch_size
    x = jnp.asarray(rng.random((n, *bench.IMAGE_SHAPE), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, bench.CLASSES, n).astype(np.int32))
    state = train.init_train_state(jax.random.key(0), model, opt, bench.IMAGE_SHAPE)
    return model, opt, state, (x, y)


def _step_fn(model: Any, opt: Any, gradients: str) -> Callable:
    """``step(carry, i, idx, x, y, key) -> (carry, loss)``: jnn.train.epoch_step's body."""
    import jax
    import optax

    from jnn import train

    vg = train.as_value_and_grad(model, gradients)

    def step(carry, i, idx, x, y, key):
        params, opt_state, model_state = carry
        (loss, _, model_state), grads = vg(
            params, model_state, x[idx], y[idx], key=jax.random.fold_in(key, i), train=True
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, model_state), loss

    return step


def _loop_fn(loop: str, step: Callable, steps: int, batch: int) -> Callable[..., Any]:
    """``run(carry, x, y, key) -> (carry, losses)`` over ``steps`` batches, looped as ``loop``."""
    import jax
    import jax.numpy as jnp

    idx = jnp.arange(steps * batch).reshape(steps, batch)
    ii = jnp.arange(steps, dtype=jnp.uint32)
    if loop == "steps":
        one = jax.jit(step)

        def run(carry, x, y, key):
            losses = []
            for i in range(steps):
                carry, loss = one(carry, ii[i], idx[i], x, y, key)
                losses.append(loss)
            return carry, losses

        return run
    if loop == "fori":

        @jax.jit
        def fori(carry, x, y, key):
            def body(i, c):
                carry, loss = step(c[0], i.astype(jnp.uint32), idx[i], x, y, key)
                return carry, c[1] + loss

            return jax.lax.fori_loop(0, steps, body, (carry, jnp.float32(0)))

        return fori
    unroll = 2 if loop == "scan-unroll2" else 1

    @jax.jit
    def scanned(carry, x, y, key):
        return jax.lax.scan(
            lambda c, a: step(c, a[0], a[1], x, y, key), carry, (ii, idx), unroll=unroll
        )

    return scanned


def time_loops(cfg: Config) -> dict[str, Any]:
    """Seconds per train step, per (loop, gradients), interleaved; ratios against ``steps``."""
    import jax

    if cfg.swapped_dw:
        use_swapped_dw()
    model, opt, state, (x, y) = _setup(cfg)
    carry = (state.params, state.opt_state, state.model_state)
    cases = {}
    for g in GRADIENTS:
        step = _step_fn(model, opt, g)
        for loop in cfg.loops:
            fn = _loop_fn(loop, step, cfg.steps, cfg.batch_size)
            cases[f"{loop}/{g}"] = timing.repeated(
                lambda fn=fn: jax.block_until_ready(fn(carry, x, y, state.dropout_key))
            )
    res = timing.time_interleaved(cases, reps=cfg.reps, warmup=1)
    per_step = {k: {kk: v / cfg.steps if kk.endswith("_s") and kk != "samples_s" else v
                     for kk, v in r.items()} for k, r in res.items()}  # fmt: skip
    for r in per_step.values():
        r["samples_s"] = [s / cfg.steps for s in r["samples_s"]]
    for key, r in per_step.items():
        loop, g = key.split("/")
        base, auto = per_step.get(f"steps/{g}"), per_step[f"{loop}/autodiff"]
        r["over_steps"] = r["median_s"] / base["median_s"] if base else None
        r["manual_over_autodiff"] = r["median_s"] / auto["median_s"] if g == "manual" else None
    return per_step


def _convs() -> dict[str, Callable]:
    """The CNN's second conv layer (32 -> 64 channels on 14x14, 3x3 SAME), its three passes as
    ``jnn.layers.conv`` writes them, and two rewrites of the kernel gradient: with explicit
    transposes into the canonical NHWC/HWIO form, and as im2col patches times dy (one dot)."""
    import jax.numpy as jnp
    from jax import lax

    dn, pads = ("NHWC", "HWIO", "NHWC"), ((1, 1), (1, 1))

    def kernel_grad_transposed(x, w, dy):
        # x^T (C, H, W, B) as "NHWC" images, dy^T (H', W', B, F) as an "HWIO" kernel.
        out = lax.conv_general_dilated(
            x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), pads, dimension_numbers=dn
        )  # (C, kh, kw, F)
        return out.transpose(1, 2, 0, 3)

    def kernel_grad_im2col(x, w, dy):
        kh, kw, c, f = w.shape
        patches = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), pads, dimension_numbers=dn)
        # patches (B, H', W', C * kh * kw), feature index c * kh * kw + i * kw + j
        dw = jnp.einsum("bhwk,bhwf->kf", patches, dy).reshape(c, kh, kw, f)
        return dw.transpose(1, 2, 0, 3)

    return {
        "forward": lambda x, w, dy: lax.conv_general_dilated(
            x, w, (1, 1), pads, dimension_numbers=dn
        ),
        "input-grad": lambda x, w, dy: lax.conv_general_dilated(
            dy, w[::-1, ::-1].transpose(0, 1, 3, 2), (1, 1), pads, dimension_numbers=dn
        ),
        "kernel-grad": lambda x, w, dy: lax.conv_general_dilated(
            x, dy, (1, 1), pads, dimension_numbers=("CHWN", "IHWO", "HWNC")
        ),
        "kernel-grad-transposed": kernel_grad_transposed,
        "kernel-grad-im2col": kernel_grad_im2col,
    }


def time_ops(cfg: Config) -> dict[str, Any]:
    """Each conv jitted alone (called ``steps`` times) vs ``steps`` times in a fori_loop."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    b = cfg.batch_size
    x = jnp.asarray(rng.standard_normal((b, 14, 14, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 64)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((b, 14, 14, 64)), jnp.float32)
    cases = {}
    for name, conv in _convs().items():
        one = jax.jit(conv)

        def looped(x, w, dy, conv=conv):
            def body(i, acc, conv=conv):  # every input depends on the carry: nothing is hoisted
                z = acc.ravel()[0] * 0
                return acc + conv(x + z, w + z, dy + z)

            return jax.lax.fori_loop(0, cfg.steps, body, jnp.zeros_like(conv(x, w, dy)))

        lp = jax.jit(looped)
        cases[f"{name}/jit"] = lambda calls, one=one: [
            jax.block_until_ready([one(x, w, dy) for _ in range(cfg.steps)]) for _ in range(calls)
        ]
        cases[f"{name}/fori"] = timing.repeated(lambda lp=lp: jax.block_until_ready(lp(x, w, dy)))
    ref = jax.jit(_convs()["kernel-grad"])(x, w, dy)
    diffs = {
        name: float(jnp.max(jnp.abs(jax.jit(conv)(x, w, dy) - ref)) / jnp.max(jnp.abs(ref)))
        for name, conv in _convs().items()
        if name.startswith("kernel-grad-")
    }
    res = timing.time_interleaved(cases, reps=cfg.reps, warmup=1)
    out = {k: {"median_s": r["median_s"] / cfg.steps, "min_s": r["min_s"] / cfg.steps}
           for k, r in res.items()}  # fmt: skip
    for name in _convs():
        out[f"{name}/fori"]["over_jit"] = (
            out[f"{name}/fori"]["median_s"] / out[f"{name}/jit"]["median_s"]
        )
    for name, d in diffs.items():
        out[f"{name}/jit"]["rel_diff_vs_kernel_grad"] = d
    return out


def time_pool(cfg: Config) -> dict[str, Any]:
    """The CNN's first MaxPool2D(2) backward (input batch x 28x28x32): jnn's hand-written one vs
    ``jax.vjp`` of its forward (what ``jax.grad`` runs), forward included in both, jitted."""
    import jax
    import jax.numpy as jnp

    from jnn.layers import MaxPool2D

    x = jnp.asarray(
        np.random.default_rng(0).standard_normal((cfg.batch_size, *bench.IMAGE_SHAPE[:2], 32))
    )
    x = x.astype(jnp.float32)
    layer = MaxPool2D(2)
    params, st = layer.init(jax.random.key(0), x.shape[1:])[1:]
    dy = jnp.ones_like(layer.forward(params, st, x)[0])
    manual = jax.jit(lambda x, dy: layer.backward(params, layer.forward(params, st, x)[1], dy)[1])
    vjp = jax.jit(lambda x, dy: jax.vjp(lambda x: layer.forward(params, st, x)[0], x)[1](dy)[0])
    same = bool(jnp.array_equal(manual(x, dy), vjp(x, dy)))
    cases = {
        "maxpool-backward/manual": timing.repeated(lambda: manual(x, dy).block_until_ready()),
        "maxpool-backward/jax.vjp": timing.repeated(lambda: vjp(x, dy).block_until_ready()),
    }
    res = timing.time_interleaved(cases, reps=cfg.reps, warmup=2, min_sample_s=0.3)
    ratio = res["maxpool-backward/manual"]["median_s"] / res["maxpool-backward/jax.vjp"]["median_s"]
    res["maxpool-backward/manual"]["manual_over_autodiff"] = ratio
    res["maxpool-backward/manual"]["bit_identical"] = same
    return res


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """The timed cases of the chosen mode (loops, ``ops`` or ``pool``) and the XLA flags."""
    cfg = inv.config
    return {
        "study": "cnn_scan_probe",
        "status": "ok",
        "config": asdict(cfg),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cases": time_pool(cfg) if cfg.pool else time_ops(cfg) if cfg.ops else time_loops(cfg),
    }


def console(result: dict[str, Any]) -> str:
    cfg = result["config"]
    kind = "per call" if cfg["ops"] or cfg.get("pool") else "per train step"
    rows = [[k, r["median_s"], r["min_s"], r.get("over_steps", r.get("over_jit")),
             r.get("manual_over_autodiff")] for k, r in result["cases"].items()]  # fmt: skip
    return (
        f"XLA_FLAGS={result['xla_flags']!r}; kernel gradient: "
        + ("swapped-dimension conv (old form)" if cfg.get("swapped_dw") else "explicit transposes")
        + f"; batch {cfg['batch_size']}, "
        f"{cfg['steps']} steps, "
        f"median of {cfg['reps']}; {result['device']['cpu']} ({result['device']['cpu_count']} "
        f"cores)\n\n"
        + report.markdown_table(
            ["case", f"median s {kind}", "min s", "vs jit / steps", "manual / autodiff"], rows
        )
    )


EXPERIMENT = bench.probe("cnn_scan_probe", Config, __doc__, QUICK, run, console)
parse, main = EXPERIMENT.parse, harness.cli(EXPERIMENT)

if __name__ == "__main__":
    raise SystemExit(main())

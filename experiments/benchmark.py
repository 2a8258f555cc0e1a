"""Benchmark: jnn's jitted training against the numpy loop, PyTorch eager and scikit-learn.

    python -m experiments.benchmark            # full run (a few minutes on 2 CPU cores)
    python -m experiments.benchmark --quick    # CI smoke run: fewer examples, 3 repetitions

Writes ``benchmark.json`` (every number), ``benchmark.md`` (the tables a person reads, with
ratios against jnn and the targets met or missed) and ``benchmark.png`` into ``--out``.

Method: all implementations of a section run in one process, interleaved (A B C A B C ...),
after a warm-up round; the median of the repetitions is reported, XLA compile time separately.
Every timed call blocks until its result exists (``jax.block_until_ready``,
``torch.cuda.synchronize``). FLOPs are counted exactly from the layer sizes (see
:func:`train_flops_per_example`); elementwise work (bias, ReLU, softmax, SGD update) is not
counted, so GFLOP/s is matmul work per second.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import baselines
from experiments.report import (
    BOOKKEEPING,
    RunDirError,
    cli_main,
    device_info,
    markdown_table,
    prepare_run_dir,
    versions,
    write_json,
    write_text_atomic,
)
from experiments.timing import compile_timed, repeated, summarize, time_interleaved
from jnn import core
from jnn.errors import InputError
from jnn.mlp import STUDY_SIZES, dense_params, mlp
from jnn.train import epoch_step, init_train_state, make_epoch_fn

SIZES: tuple[int, ...] = tuple(STUDY_SIZES)
BATCH_SIZE = 32
LEARNING_RATE = 0.1
ACTIVATION = "relu"
INIT = "normal"
MODEL = mlp(SIZES, ACTIVATION, INIT)  # the study's MLP, the one network every jnn case runs
CEILING_N = 2048
OUTPUT_FILES = ("benchmark.json", "benchmark.md", "benchmark.png")
SECTIONS = ("train_epoch", "evaluation", "ceiling", "vgg", "models_per_program", "devices")
REFERENCE = "jnn_scan_manual"
MIN_SAMPLE_S = 0.05  # short calls (matmul, forward pass) are repeated to about this per sample
QUICK_NOTE = "QUICK run (smoke test, not for quoting)."

FLOP_FORMULA = (
    "MACs = sum_i n_i * n_(i+1) over consecutive layer sizes n_0..n_L; "
    "forward = 2 * MACs per example; backward = 4 * MACs - 2 * n_0 * n_1 per example "
    "(weight gradients 2 * MACs, input gradients 2 * MACs, minus the first layer's input "
    "gradient that nobody needs); training step = forward + backward = 6 * MACs - 2 * n_0 * n_1. "
    "Bias adds, activations, softmax and the SGD update are not counted."
)

LABELS = {
    "jnn_scan_manual": "jnn, scanned epoch, manual backprop",
    "jnn_scan_autodiff": "jnn, scanned epoch, jax.grad",
    "jnn_step_loop": "jnn, jitted step in a Python loop",
    "jnn_forward": "jnn, jitted forward",
    "numpy_loop": "numpy float32 (training: Python loop over batches)",
    "torch_eager": "PyTorch eager",
    "sklearn_mlp": "scikit-learn MLPClassifier (plain SGD)",
    "xla_matmul": "XLA matmul",
    "numpy_matmul": "numpy matmul (OpenBLAS)",
    "torch_matmul": "PyTorch matmul",
}
SHORT_LABELS = {
    "jnn_scan_manual": "jnn scan, manual",
    "jnn_scan_autodiff": "jnn scan, jax.grad",
    "jnn_step_loop": "jnn step loop",
    "jnn_forward": "jnn",
    "jnn": "jnn",
    "numpy_loop": "numpy",
    "torch_eager": "PyTorch eager",
    "sklearn_mlp": "scikit-learn",
}


# --------------------------------------------------------------------------------------------
# FLOPs


def macs_per_example(sizes: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of one example."""
    return sum(int(a) * int(b) for a, b in zip(sizes[:-1], sizes[1:]))


def forward_flops_per_example(sizes: Sequence[int]) -> int:
    """2 * MACs: the matmul FLOPs of one example's forward pass."""
    return 2 * macs_per_example(sizes)


def backward_flops_per_example(sizes: Sequence[int]) -> int:
    """4 * MACs minus the first layer's input gradient (2 * n_0 * n_1), which is not needed."""
    return 4 * macs_per_example(sizes) - 2 * int(sizes[0]) * int(sizes[1])


def train_flops_per_example(sizes: Sequence[int]) -> int:
    """Forward + backward matmul FLOPs of one example: 6 * MACs - 2 * n_0 * n_1."""
    return forward_flops_per_example(sizes) + backward_flops_per_example(sizes)


# --------------------------------------------------------------------------------------------
# Data and environment


def get_data(kind: str, n_train: int, n_eval: int, seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Training and evaluation arrays (float32 (N, 784), int32 (N,)) and where they came from.

    ``fashion``: the real Fashion-MNIST "seed" split (files must already be on disk; nothing is
    downloaded). ``synthetic``: uniform [0, 1) pixels and random labels of the same shapes (the
    cost of a dense ReLU network does not depend on the values). ``auto``: fashion if the files
    are present, else synthetic.
    """
    if kind in ("auto", "fashion"):
        try:
            from jnn.data import load_splits

            s = load_splits("seed", download=False)
        except Exception as err:  # missing module or files: fall back (auto) or fail (fashion)
            if kind == "fashion":
                raise InputError(f"--data fashion: cannot load Fashion-MNIST ({err})") from err
        else:
            x_eval = np.concatenate([s.x_val, s.x_test])[:n_eval]
            y_eval = np.concatenate([s.y_val, s.y_test])[:n_eval]
            data = {
                "x_train": s.x_train[:n_train],
                "y_train": s.y_train[:n_train].astype(np.int32),
                "x_eval": x_eval,
                "y_eval": y_eval.astype(np.int32),
            }
            return data, "fashion-mnist (seed split: first train rows, then val + test rows)"
    rng = np.random.default_rng(seed)
    data = {
        "x_train": rng.random((n_train, SIZES[0]), dtype=np.float32),
        "y_train": rng.integers(0, SIZES[-1], n_train).astype(np.int32),
        "x_eval": rng.random((n_eval, SIZES[0]), dtype=np.float32),
        "y_eval": rng.integers(0, SIZES[-1], n_eval).astype(np.int32),
    }
    return data, "synthetic (uniform pixels, random labels; same shapes as Fashion-MNIST)"


def environment(torch_device: str | None) -> dict[str, Any]:
    """Versions, devices, thread settings, BLAS libraries and the env vars that steer them."""
    env: dict[str, Any] = {"versions": versions(), "device": device_info()}
    env["jax"] = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
    }
    try:
        from threadpoolctl import threadpool_info

        env["blas"] = [
            {
                k: info.get(k)
                for k in ("user_api", "internal_api", "architecture", "num_threads", "version")
            }
            for info in threadpool_info()
        ]
    except Exception as err:  # threadpoolctl ships with scikit-learn; report if it is missing
        env["blas"] = f"unavailable: {err}"
    env["openblas_coretype"] = os.environ.get("OPENBLAS_CORETYPE", "(unset: detected by OpenBLAS)")
    ok, why = baselines.torch_status()
    if ok:
        import torch

        env["torch"] = {
            "version": torch.__version__,
            "device": torch_device,
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "cuda_available": torch.cuda.is_available(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
        if torch_device == "cuda":
            env["torch"]["cuda_device"] = torch.cuda.get_device_name()
    else:
        env["torch"] = {"unavailable": why}
    return env


# --------------------------------------------------------------------------------------------
# Builders for the jnn cases


def fresh_params(seed: int) -> Any:
    """The study's MLP's params (``MODEL.init`` from ``key(seed)``, its default initializer)."""
    return MODEL.init(jax.random.key(seed), (SIZES[0],))[1]


def fresh_state(seed: int, optimizer: optax.GradientTransformation) -> Any:
    """A ``train.TrainState`` of the study's MLP from ``key(seed)``."""
    return init_train_state(jax.random.key(seed), MODEL, optimizer, (SIZES[0],))


def make_step_fn(optimizer: optax.GradientTransformation, gradients: str = "manual") -> Any:
    """A jitted single SGD step ``(params, opt_state, x, y, batches, i) -> (params, opt, loss)``.

    It gathers batch ``i`` of the (num_batches, batch) index array inside the program, so each
    Python-loop iteration is exactly one dispatch. params and opt_state are donated.
    """
    value_and_grad = core.value_and_grad(MODEL, gradients)
    model_state = MODEL.init(jax.random.key(0), (SIZES[0],))[2]  # the MLP's: empty tuples

    def step(params, opt_state, x, y, batches, i):
        idx = batches[i]
        (loss, _, _), grads = value_and_grad(params, model_state, x[idx], y[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def make_permutation_fn(n: int, batch_size: int) -> Any:
    """A jitted ``key -> (next key, (num_batches, batch_size) shuffled indices)``."""
    num_batches = n // batch_size

    def permute(key):
        key, sub = jax.random.split(key)
        perm = jax.random.permutation(sub, n)[: num_batches * batch_size]
        return key, perm.reshape(num_batches, batch_size)

    return jax.jit(permute)


def make_vmapped_epoch_fn(optimizer: optax.GradientTransformation, gradients: str = "manual"):
    """``jax.vmap`` of :func:`jnn.train.epoch_step` over stacked states; data shared; jitted."""
    fn = partial(
        epoch_step,
        value_and_grad=core.value_and_grad(MODEL, gradients),
        optimizer=optimizer,
        batch_size=BATCH_SIZE,
    )
    return jax.jit(jax.vmap(fn, in_axes=(0, None, None)), donate_argnums=0)


def stacked_states(seed: int, num_models: int, optimizer: optax.GradientTransformation) -> Any:
    """``num_models`` TrainStates from different keys, stacked along a leading axis."""

    def one(key):
        return init_train_state(key, MODEL, optimizer, (SIZES[0],))

    return jax.vmap(one)(jax.random.split(jax.random.key(seed), num_models))


class Holder:
    """A mutable box for donated state that a timing closure replaces each call."""

    def __init__(self, value: Any):
        self.value = value


# --------------------------------------------------------------------------------------------
# Sections


def _rate_fields(
    summary: dict[str, Any], work_items: float, flops: float, ceiling: float | None, unit: str
) -> dict[str, Any]:
    median = summary["median_s"]
    out = dict(summary)
    out[unit] = work_items / median
    out["gflops"] = flops / median / 1e9
    if ceiling:
        out["fraction_of_xla_ceiling"] = out["gflops"] / ceiling
    return out


def section_ceiling(args: argparse.Namespace, torch_device: str | None) -> dict[str, Any]:
    """The machine's own ceiling: one large float32 matmul through XLA, numpy and torch."""
    n = CEILING_N
    rng = np.random.default_rng(args.seed)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    a, b = jax.device_put(a_np), jax.device_put(b_np)
    matmul, compile_s = compile_timed(jax.jit(jnp.matmul), a, b)

    def xla_mm(calls: int) -> None:
        out = [matmul(a, b) for _ in range(calls)]  # dispatch is asynchronous
        jax.block_until_ready(out)

    cases: dict[str, Callable[[int], Any]] = {
        "xla_matmul": xla_mm,
        "numpy_matmul": repeated(lambda: a_np @ b_np),
    }
    skipped: dict[str, str] = {}
    if torch_device is not None:
        import torch

        ta = torch.from_numpy(a_np).to(torch_device)
        tb = torch.from_numpy(b_np).to(torch_device)

        def torch_mm(calls: int) -> None:
            for _ in range(calls):
                ta @ tb
            if torch_device == "cuda":
                torch.cuda.synchronize()

        cases["torch_matmul"] = torch_mm
    else:
        skipped["torch_matmul"] = args.torch_reason
    times = time_interleaved(cases, args.reps, args.warmup, MIN_SAMPLE_S)
    flops = 2 * n**3
    results = {name: _rate_fields(s, 1, flops, None, "matmuls_per_s") for name, s in times.items()}
    results["xla_matmul"]["compile_s"] = compile_s
    return {
        "status": "ok",
        "shape": [n, n, n],
        "flops_per_matmul": flops,
        "results": results,
        "skipped": skipped,
        "xla_ceiling_gflops": results["xla_matmul"]["gflops"],
        "note": ceiling_note(args.blas_note),
    }


def ceiling_note(blas_note: str) -> str:
    """Which library each ceiling figure comes from, and the float32 precision caveat."""
    note = f"numpy: {blas_note}. XLA: its own CPU dot emitters (Eigen/YNNPACK) or cuBLAS."
    if jax.default_backend() == "gpu":
        note += (
            " On GPU, JAX's default float32 matmul precision may use TF32 tensor cores (jnn's "
            "MLP runs under the same default); torch uses its float32_matmul_precision setting."
        )
    return note


def section_train_epoch(
    args: argparse.Namespace, data: dict[str, np.ndarray], ceiling: float | None
) -> dict[str, Any]:
    """One epoch of the study's MLP per implementation, interleaved."""
    optimizer = optax.sgd(LEARNING_RATE)
    x_np, y_np = data["x_train"], data["y_train"]
    n = x_np.shape[0]
    n_used = n // BATCH_SIZE * BATCH_SIZE
    x, y = jax.device_put(x_np), jax.device_put(y_np)
    params0 = fresh_params(args.seed)
    weights0 = baselines.weights_from_jnn(dense_params(params0))
    cases: dict[str, Callable[[int], Any]] = {}
    compile_s: dict[str, float] = {}
    skipped: dict[str, str] = {}

    for name, gradients in (("jnn_scan_manual", "manual"), ("jnn_scan_autodiff", "autodiff")):
        epoch_fn = make_epoch_fn(MODEL, optimizer, BATCH_SIZE, gradients)
        state = fresh_state(args.seed, optimizer)
        compiled, compile_s[name] = compile_timed(epoch_fn, state, x, y)
        box = Holder(state)

        def run_scan(box=box, compiled=compiled):
            box.value, metrics = compiled(box.value, x, y)
            jax.block_until_ready((box.value, metrics))

        cases[name] = repeated(run_scan)

    # jitted step per batch, driven by a Python loop
    step_fn = make_step_fn(optimizer)
    permute = make_permutation_fn(n, BATCH_SIZE)
    params = fresh_params(args.seed)
    opt_state = optimizer.init(params)
    key, batches = permute(jax.random.key(args.seed))
    start = time.perf_counter()
    step_c = step_fn.lower(params, opt_state, x, y, batches, 0).compile()
    permute_c = permute.lower(key).compile()
    compile_s["jnn_step_loop"] = time.perf_counter() - start
    loop_box = Holder((params, opt_state, key))

    def run_loop():
        params, opt_state, key = loop_box.value
        key, batches = permute_c(key)
        loss = None
        for i in range(batches.shape[0]):
            params, opt_state, loss = step_c(params, opt_state, x, y, batches, i)
        jax.block_until_ready((params, loss))
        loop_box.value = (params, opt_state, key)

    cases["jnn_step_loop"] = repeated(run_loop)

    numpy_model = baselines.NumpyMLP(weights0, LEARNING_RATE, BATCH_SIZE, args.seed)
    cases["numpy_loop"] = repeated(lambda: numpy_model.train_epoch(x_np, y_np))

    if args.torch_device is not None:
        torch_model = baselines.TorchMLP(
            weights0, LEARNING_RATE, BATCH_SIZE, args.torch_device, args.seed
        )
        xt, yt = torch_model.to_device(x_np, y_np)
        cases["torch_eager"] = repeated(lambda: torch_model.train_epoch(xt, yt))
    else:
        skipped["torch_eager"] = args.torch_reason

    sk = baselines.SklearnMLP(SIZES[1:-1], LEARNING_RATE, BATCH_SIZE, args.seed, SIZES[-1])
    cases["sklearn_mlp"] = repeated(lambda: sk.train_epoch(x_np, y_np))

    times = time_interleaved(cases, args.reps, args.warmup)
    per_example = train_flops_per_example(SIZES)
    results: dict[str, dict[str, Any]] = {}
    for name, summary in times.items():
        examples = n if name == "sklearn_mlp" else n_used  # sklearn keeps the partial batch
        results[name] = _rate_fields(
            summary, examples, per_example * examples, ceiling, "examples_per_s"
        )
        if name in compile_s:
            results[name]["compile_s"] = compile_s[name]
    ref = results[REFERENCE]["median_s"]
    for r in results.values():
        r["time_vs_jnn"] = r["median_s"] / ref
    return {
        "status": "ok",
        "examples": n,
        "examples_per_epoch_used": n_used,
        "steps_per_epoch": n_used // BATCH_SIZE,
        "flops_per_epoch": per_example * n_used,
        "results": results,
        "skipped": skipped,
        "sklearn_settings": sk.settings(),
    }


def section_evaluation(
    args: argparse.Namespace, data: dict[str, np.ndarray], ceiling: float | None
) -> dict[str, Any]:
    """Forward pass only over the evaluation examples, one call each."""
    x_np = data["x_eval"]
    n = x_np.shape[0]
    x = jax.device_put(x_np)
    params = fresh_params(args.seed)
    weights = baselines.weights_from_jnn(dense_params(params))
    model_state = MODEL.init(jax.random.key(0), (SIZES[0],))[2]
    forward = jax.jit(partial(core.apply, MODEL))
    forward_c, compile_s = compile_timed(forward, params, model_state, x)

    def jnn_forward(calls: int) -> None:
        jax.block_until_ready([forward_c(params, model_state, x) for _ in range(calls)])

    cases: dict[str, Callable[[int], Any]] = {"jnn_forward": jnn_forward}
    skipped: dict[str, str] = {}
    numpy_model = baselines.NumpyMLP(weights)
    cases["numpy_loop"] = repeated(lambda: numpy_model.predict(x_np))
    if args.torch_device is not None:
        torch_model = baselines.TorchMLP(weights, device=args.torch_device)
        xt, _ = torch_model.to_device(x_np)
        cases["torch_eager"] = repeated(lambda: torch_model.predict(xt))
    else:
        skipped["torch_eager"] = args.torch_reason
    sk = baselines.SklearnMLP(SIZES[1:-1], LEARNING_RATE, BATCH_SIZE, args.seed, SIZES[-1])
    sk.train_epoch(data["x_train"][: BATCH_SIZE * 4], data["y_train"][: BATCH_SIZE * 4])
    cases["sklearn_mlp"] = repeated(lambda: sk.predict(x_np))
    times = time_interleaved(cases, args.reps, args.warmup, MIN_SAMPLE_S)
    flops = forward_flops_per_example(SIZES) * n
    results = {
        name: _rate_fields(s, n, flops, ceiling, "examples_per_s") for name, s in times.items()
    }
    results["jnn_forward"]["compile_s"] = compile_s
    ref = results["jnn_forward"]["median_s"]
    for r in results.values():
        r["time_vs_jnn"] = r["median_s"] / ref
    return {"status": "ok", "examples": n, "results": results, "skipped": skipped}


def section_models_per_program(
    args: argparse.Namespace, data: dict[str, np.ndarray], ceiling: float | None
) -> dict[str, Any]:
    """Model-epochs per second with k models vmapped into one XLA program (data shared)."""
    optimizer = optax.sgd(LEARNING_RATE)
    x, y = jax.device_put(data["x_train"]), jax.device_put(data["y_train"])
    n = data["x_train"].shape[0]
    n_used = n // BATCH_SIZE * BATCH_SIZE
    cases: dict[str, Callable[[int], Any]] = {}
    compile_s: dict[str, float] = {}
    models: dict[str, int] = {}

    plain = make_epoch_fn(MODEL, optimizer, BATCH_SIZE)
    state = fresh_state(args.seed, optimizer)
    compiled, compile_s["1_plain"] = compile_timed(plain, state, x, y)
    plain_box = Holder(state)

    def run_plain():
        plain_box.value, metrics = compiled(plain_box.value, x, y)
        jax.block_until_ready((plain_box.value, metrics))

    cases["1_plain"] = repeated(run_plain)
    models["1_plain"] = 1
    vmapped = make_vmapped_epoch_fn(optimizer)
    for k in args.models:
        name = f"{k}_vmap"
        states = stacked_states(args.seed, k, optimizer)
        compiled_k, compile_s[name] = compile_timed(vmapped, states, x, y)
        box = Holder(states)

        def run_k(box=box, compiled_k=compiled_k):
            box.value, metrics = compiled_k(box.value, x, y)
            jax.block_until_ready((box.value, metrics))

        cases[name] = repeated(run_k)
        models[name] = k
    times = time_interleaved(cases, args.reps, args.warmup)
    per_epoch = train_flops_per_example(SIZES) * n_used
    results = {}
    for name, s in times.items():
        k = models[name]
        r = _rate_fields(s, k, per_epoch * k, ceiling, "model_epochs_per_s")
        r["models"] = k
        r["compile_s"] = compile_s[name]
        results[name] = r
    base = max(
        results["1_plain"]["model_epochs_per_s"],
        results.get("1_vmap", {}).get("model_epochs_per_s", 0.0),
    )
    for r in results.values():
        r["speedup_vs_1"] = r["model_epochs_per_s"] / base
    return {
        "status": "ok",
        "examples": n,
        "baseline": "the faster of 1 model plain (train.make_epoch_fn) and 1 model vmapped",
        "results": results,
    }


def section_vgg(args: argparse.Namespace) -> dict[str, Any]:
    """VGG16 frozen feature extraction images/s at 32x32, jnn vs PyTorch eager, same weights.

    Uses the VGG experiment's own pipeline (``experiments.vgg_transfer``): ``make_extractor`` /
    ``extract_features`` for jnn (compiled once; each repetition times every batch after an
    untimed first one) and ``feature_throughput(backend="torch")`` for the torch reference built
    from the same (random) params. Repetitions alternate jnn, torch, jnn, torch, ...
    """
    try:
        from experiments import vgg_transfer
        from jnn import vgg
    except Exception as err:
        return {"status": "skipped", "reason": f"experiments.vgg_transfer not importable: {err}"}
    needed = ("make_extractor", "extract_features", "feature_throughput")
    missing = [name for name in needed if not hasattr(vgg_transfer, name)]
    if missing:
        return {"status": "skipped", "reason": f"experiments.vgg_transfer lacks {missing}"}
    size, fmt = 32, "keras"
    batch = 32 if args.quick else 64
    n_images = args.vgg_images or (96 if args.quick else 512)
    if n_images <= batch:
        raise InputError(f"--vgg-images must exceed the batch size {batch} (one untimed batch)")
    params = vgg.init_params(jax.random.key(args.seed), image_size=size)
    images = np.random.default_rng(args.seed).integers(0, 256, (n_images, 28, 28), np.uint8)
    extract = vgg_transfer.make_extractor(params, fmt, size)
    start = time.perf_counter()
    jax.block_until_ready(extract(images[:batch]))
    compile_s = time.perf_counter() - start
    samples: dict[str, list[float]] = {"jnn": []}
    skipped: dict[str, str] = {}
    torch_label = None
    if args.torch_device is None:
        skipped["torch_eager"] = args.torch_reason
    else:
        samples["torch_eager"] = []
    for rep in range(args.warmup + args.reps):
        _, timing = vgg_transfer.extract_features(extract, images, batch, desc="vgg")
        if rep >= args.warmup:
            samples["jnn"].append(timing["images_timed"] / timing["images_per_s"])
        if "torch_eager" in samples:
            t = vgg_transfer.feature_throughput(
                params, size, n_images, batch, backend="torch", fmt=fmt
            )
            torch_label = t.get("backend")
            if rep >= args.warmup:
                samples["torch_eager"].append(t["seconds"])
    timed = n_images - batch
    results = {}
    for name, s in samples.items():
        r = summarize(s)
        r["images_per_s"] = timed / r["median_s"]
        results[name] = r
    results["jnn"]["compile_s"] = compile_s
    for r in results.values():
        r["time_vs_jnn"] = r["median_s"] / results["jnn"]["median_s"]
    return {
        "status": "ok",
        "image_size": size,
        "images_timed": timed,
        "batch_size": batch,
        "weights": "random (vgg.init_params); both implementations get the same arrays",
        "pipeline": "uint8 28x28 gray -> bilinear resize -> RGB -> caffe preprocessing -> "
        "conv blocks 1-5 (features (B, 1, 1, 512))",
        "torch_backend": torch_label or "",
        "torch_note": "feature_throughput runs torch on the CPU whatever --torch-device says",
        "results": results,
        "skipped": skipped,
    }


def section_devices(args: argparse.Namespace) -> dict[str, Any]:
    """Data-parallel throughput on forced host devices, from experiments.scaling."""
    try:
        from experiments import scaling
    except Exception as err:
        return {"status": "skipped", "reason": f"experiments.scaling not importable: {err}"}
    measured = scaling.measure_scaling(devices=args.devices, quick=args.quick)
    errors = {d: r["error"] for d, r in measured.get("runs", {}).items() if "error" in r}
    out: dict[str, Any] = {"status": "ok", "devices": list(args.devices), "measured": measured}
    if errors:
        out["errors"] = errors
    try:
        out["markdown"] = scaling.markdown(measured)
    except Exception as err:  # rendering is theirs; the numbers are still in "measured"
        out["markdown"] = f"(experiments.scaling.markdown failed: {err})"
    return out


# --------------------------------------------------------------------------------------------
# Targets, report, chart


def targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The four performance targets, each with the measured ratio and met / missed / n/a."""

    def get(section: str, case: str, field: str) -> float | None:
        sec = sections.get(section, {})
        return (
            sec.get("results", {}).get(case, {}).get(field) if sec.get("status") == "ok" else None
        )

    def entry(name: str, goal: str, value: float | None, threshold: float, note: str = ""):
        met = None if value is None else bool(value >= threshold)
        return {"name": name, "goal": goal, "measured": value, "met": met, "note": note}

    out = []
    torch_t = get("train_epoch", "torch_eager", "time_vs_jnn")
    out.append(entry("jnn vs PyTorch eager", "jnn scanned epoch >= 2x faster", torch_t, 2.0))
    numpy_t = get("train_epoch", "numpy_loop", "time_vs_jnn")
    out.append(entry("jnn vs numpy loop", "jnn scanned epoch >= 1.5x faster", numpy_t, 1.5))
    manual = get("train_epoch", "jnn_scan_manual", "median_s")
    auto = get("train_epoch", "jnn_scan_autodiff", "median_s")
    ratio = None if manual is None or auto is None else manual / auto
    # "within 1.05x": manual time / jax.grad time <= 1.05, stored as auto/manual >= 1/1.05
    e = entry(
        "manual backprop vs jax.grad",
        "manual epoch time <= 1.05 x jax.grad epoch time",
        ratio,
        0.0,
    )
    e["met"] = None if ratio is None else bool(ratio <= 1.05)
    out.append(e)
    mp = sections.get("models_per_program", {})
    four = get("models_per_program", "4_vmap", "speedup_vs_1")
    out.append(
        entry(
            "models per program",
            "model-epochs/s at 4 vmapped models >= 1.6 x one model",
            four,
            1.6,
            "" if mp.get("status") == "ok" else "section not run",
        )
    )
    best_name, best = None, None
    for section in ("train_epoch", "models_per_program"):
        for name, r in sections.get(section, {}).get("results", {}).items():
            frac = r.get("fraction_of_xla_ceiling")
            if frac is not None and (best is None or frac > best):
                best_name, best = f"{section}/{name}", frac
    out.append(
        entry(
            "share of the matmul ceiling",
            "best training configuration >= 60% of the XLA 2048^3 matmul GFLOP/s",
            best,
            0.6,
            f"best: {best_name}" if best_name else "",
        )
    )
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits + 1}g}"
    return str(v)


def render_markdown(result: dict[str, Any]) -> str:
    """benchmark.md: the tables a person reads."""
    cfg, env, secs = result["config"], result["environment"], result["sections"]
    lines = [
        "# jnn benchmark",
        "",
        f"Device: JAX `{env['jax']['backend']}` ({', '.join(env['device']['devices'])}), "
        f"CPU {env['device']['cpu']} x {env['device']['cpu_count']} cores; "
        f"torch: {env['torch'].get('device', env['torch'].get('unavailable'))}. "
        f"Data: {cfg['data']}. {QUICK_NOTE if cfg['quick'] else ''}",
        "",
        f"Median of {cfg['reps']} interleaved repetitions after {cfg['warmup']} warm-up round(s); "
        "compile time separate. Ratios are time / jnn time (higher = jnn faster). "
        f"Timings from one run on a shared machine are noisy. Total run {result['total_s']:.0f} s.",
        "",
    ]
    te = secs.get("train_epoch", {})
    if te.get("status") == "ok":
        lines += [
            f"## 1. One training epoch ({te['examples_per_epoch_used']:,} examples, batch "
            f"{cfg['batch_size']}, SGD lr {cfg['learning_rate']}, {'-'.join(map(str, SIZES))})",
            "",
        ]
        rows = [
            [
                LABELS[name],
                _fmt(r["median_s"]),
                _fmt(r["examples_per_s"]),
                _fmt(r["gflops"]),
                _fmt(100 * r["fraction_of_xla_ceiling"]) + "%"
                if "fraction_of_xla_ceiling" in r
                else "n/a",
                _fmt(r["time_vs_jnn"]) + "x",
                _fmt(r.get("compile_s")),
            ]
            for name, r in te["results"].items()
        ]
        headers = [
            "implementation",
            "epoch s",
            "examples/s",
            "GFLOP/s",
            "% XLA ceiling",
            "time vs jnn",
            "compile s",
        ]
        lines += [markdown_table(headers, rows)]
        lines += [f"- skipped {k}: {v}" for k, v in te.get("skipped", {}).items()]
        lines += [f"- scikit-learn settings: `{te['sklearn_settings']}`", ""]
    ev = secs.get("evaluation", {})
    if ev.get("status") == "ok":
        lines += [f"## 2. Evaluation throughput (forward only, {ev['examples']:,} examples)", ""]
        rows = [
            [
                LABELS[name],
                _fmt(r["median_s"]),
                _fmt(r["examples_per_s"]),
                _fmt(r["gflops"]),
                _fmt(r["time_vs_jnn"]) + "x",
            ]
            for name, r in ev["results"].items()
        ]
        headers = ["implementation", "s", "examples/s", "GFLOP/s", "time vs jnn"]
        lines += [markdown_table(headers, rows)]
        lines += [f"- skipped {k}: {v}" for k, v in ev.get("skipped", {}).items()] + [""]
    ce = secs.get("ceiling", {})
    if ce.get("status") == "ok":
        lines += [f"## 3. Machine ceiling: float32 matmul {CEILING_N}^3", ""]
        rows = [
            [LABELS[name], _fmt(r["median_s"]), _fmt(r["gflops"])]
            for name, r in ce["results"].items()
        ]
        lines += [markdown_table(["implementation", "s", "GFLOP/s"], rows)]
        lines += [
            f"- {ce['note']}",
            f"- FLOP count: {FLOP_FORMULA}",
            f"- For {'-'.join(map(str, SIZES))}: forward "
            f"{forward_flops_per_example(SIZES):,} FLOP/example, training "
            f"{train_flops_per_example(SIZES):,} FLOP/example.",
            "",
        ]
    vg = secs.get("vgg", {})
    lines += ["## 4. VGG16 frozen feature extraction (32x32, random weights shared)", ""]
    if vg.get("status") == "ok":
        rows = [
            [
                name,
                _fmt(r["median_s"]),
                _fmt(r["images_per_s"]),
                _fmt(r["time_vs_jnn"]) + "x",
                _fmt(r.get("compile_s")),
            ]
            for name, r in vg["results"].items()
        ]
        headers = ["implementation", "s", "images/s", "time vs jnn", "compile s"]
        lines += [markdown_table(headers, rows)]
        lines += [
            f"- {vg['images_timed']} images timed, batch {vg['batch_size']}; {vg['pipeline']}",
            f"- torch: {vg['torch_backend']} ({vg['torch_note']})",
        ]
        lines += [f"- skipped {k}: {v}" for k, v in vg.get("skipped", {}).items()] + [""]
    else:
        lines += [f"Skipped: {vg.get('reason', 'not run')}", ""]
    mp = secs.get("models_per_program", {})
    if mp.get("status") == "ok":
        lines += ["## 5a. Models per XLA program (jax.vmap of train.epoch_step, data shared)", ""]
        rows = [
            [
                r["models"],
                name.split("_", 1)[1],
                _fmt(r["median_s"]),
                _fmt(r["model_epochs_per_s"]),
                _fmt(r["speedup_vs_1"]) + "x",
                _fmt(r["gflops"]),
                _fmt(100 * r["fraction_of_xla_ceiling"]) + "%"
                if "fraction_of_xla_ceiling" in r
                else "n/a",
                _fmt(r["compile_s"]),
            ]
            for name, r in mp["results"].items()
        ]
        headers = [
            "models",
            "program",
            "s",
            "model-epochs/s",
            "vs 1 model",
            "GFLOP/s",
            "% XLA ceiling",
            "compile s",
        ]
        lines += [markdown_table(headers, rows), f"- baseline: {mp['baseline']}", ""]
    dv = secs.get("devices", {})
    lines += ["## 5b. Data parallel over devices (experiments.scaling)", ""]
    if dv.get("status") == "ok":
        lines += [dv["markdown"], ""]
        lines += [f"- error on {d} devices: {e[-300:]}" for d, e in dv.get("errors", {}).items()]
    else:
        lines += [f"Skipped: {dv.get('reason', 'not run')}", ""]
    fractions = [
        r.get("fraction_of_xla_ceiling", 0.0)
        for name in ("train_epoch", "models_per_program")
        for r in secs.get(name, {}).get("results", {}).values()
    ]
    if fractions and max(fractions) > 1.0:
        lines += [
            "**Warning:** a configuration measured above 100% of the matmul ceiling, so the "
            "ceiling (or that configuration) was timed while the machine was busy. Rerun on a "
            "quiet machine before quoting these numbers.",
            "",
        ]
    lines += ["## Targets", ""]
    rows = [
        [
            t["name"],
            t["goal"],
            _fmt(t["measured"]),
            {True: "met", False: "MISSED", None: "not measured"}[t["met"]],
            t["note"],
        ]
        for t in result["targets"]
    ]
    lines += [markdown_table(["target", "goal", "measured", "result", "note"], rows)]
    lines += [
        "## Environment",
        "",
        f"- versions: {', '.join(f'{k} {v}' for k, v in env['versions'].items())}",
        f"- JAX devices: {env['jax']['devices']}; default matmul precision "
        f"{env['jax']['default_matmul_precision']}; XLA_FLAGS `{env['jax']['xla_flags']}`",
        f"- torch: {env['torch']}",
        f"- BLAS (threadpoolctl): {env['blas']}; OPENBLAS_CORETYPE {env['openblas_coretype']}",
        f"- threading env vars: {env['device']['env'] or '(none set)'}",
        "",
    ]
    return "\n".join(lines)


def render_chart(result: dict[str, Any], path: Path) -> Path:
    """benchmark.png: epoch and evaluation throughput per implementation, and vmap scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    secs = result["sections"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = (
        (axes[0, 0], "train_epoch", "examples_per_s", "Training: examples/s (one epoch)"),
        (axes[0, 1], "evaluation", "examples_per_s", "Evaluation: examples/s (forward)"),
        (axes[1, 1], "vgg", "images_per_s", "VGG16 features at 32x32: images/s"),
    )
    for ax, key, field, title in panels:
        res = secs.get(key, {}).get("results", {})
        if not res:
            ax.text(
                0.5,
                0.5,
                secs.get(key, {}).get("reason", "not run")[:80],
                ha="center",
                va="center",
                wrap=True,
                transform=ax.transAxes,
            )
            ax.set_axis_off()
            continue
        names = list(res)
        labels = [SHORT_LABELS.get(n, n) for n in names]
        values = [res[n][field] for n in names]
        bars = ax.barh(labels, values, color="tab:blue")
        ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], padding=2)
        ax.set_xlim(min(values) / 2, max(values) * 4)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title)
        ax.invert_yaxis()
    ax = axes[1, 0]
    res = secs.get("models_per_program", {}).get("results", {})
    names = [n for n in res if n.endswith("_vmap")]
    if names:
        ks = [str(res[n]["models"]) for n in names]
        bars = ax.bar(ks, [res[n]["model_epochs_per_s"] for n in names], color="tab:green")
        ax.bar_label(bars, [f"{res[n]['speedup_vs_1']:.2f}x" for n in names], padding=2)
        if "1_plain" in res:
            ax.axhline(
                res["1_plain"]["model_epochs_per_s"], color="k", ls="--", label="1 model, no vmap"
            )
            ax.legend()
        ax.set_xlabel("models per XLA program (vmap)")
        ax.set_title("Model-epochs per second")
    else:
        ax.set_axis_off()
    fig.suptitle(f"jnn benchmark ({result['environment']['jax']['backend']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmark",
        description=(
            "Time one training epoch and the evaluation pass of the study's 784-256-128-64-10 "
            "MLP in jnn (scanned epoch with manual backprop or jax.grad, jitted step loop) "
            "against a numpy loop, PyTorch eager and scikit-learn; the machine's matmul "
            "ceiling; VGG16 feature extraction; models per XLA program and devices scaling."
        ),
        epilog=(
            "The output folder is regenerable: rerunning overwrites benchmark.json, "
            "benchmark.md and benchmark.png there (a folder holding other files is refused)."
        ),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run for CI: 4,800 training / 2,000 evaluation examples, 3 reps",
    )
    p.add_argument(
        "--out",
        default="runs/benchmark",
        help="output folder (default: %(default)s; previous benchmark files there are overwritten)",
    )
    p.add_argument(
        "--reps", type=int, default=None, help="timed repetitions per case (default 5, --quick 3)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    p.add_argument(
        "--train-examples",
        type=int,
        default=None,
        help="examples per training epoch (default 48,000; --quick 4,800)",
    )
    p.add_argument(
        "--eval-examples",
        type=int,
        default=None,
        help="examples in the evaluation pass (default 10,000; --quick 2,000)",
    )
    p.add_argument(
        "--data",
        choices=("auto", "fashion", "synthetic"),
        default="synthetic",
        help="synthetic arrays of Fashion-MNIST's shapes (default), the real data "
        "if already on disk (fashion), or fashion when available (auto)",
    )
    p.add_argument(
        "--torch-device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="device for the PyTorch reference (auto: cuda if torch sees a GPU)",
    )
    p.add_argument(
        "--models",
        default=None,
        help="models per XLA program to try, comma separated (default 1,2,4,8; --quick 1,4)",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"sections to run, comma separated (default: all of {','.join(SECTIONS)})",
    )
    p.add_argument(
        "--vgg-images",
        type=int,
        default=None,
        help="images per VGG16 feature-extraction repetition (default 512; --quick 96)",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="device counts for the data-parallel section (experiments.scaling), comma "
        "separated (default 1,2,4; --quick 1,2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for data, weights and shuffling")
    args = p.parse_args(argv)
    return check_args(args)


def _default(value: Any, quick: bool, quick_default: Any, full_default: Any) -> Any:
    """A flag's value, or its default when it was not given; an explicit 0 stays 0 (refused)."""
    return value if value is not None else (quick_default if quick else full_default)


def _counts(text: str, flag: str, example: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise InputError(f"{flag} needs comma-separated positive integers, e.g. {example}")
    return values


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the --quick/full defaults of flags not given and refuse values that cannot work
    (--reps 0, --train-examples 0, --sections '' used to be replaced by defaults silently)."""
    args.reps = _default(args.reps, args.quick, 3, 5)
    if args.reps < 1 or args.warmup < 0:
        raise InputError(f"--reps must be >= 1 and --warmup >= 0, got {args.reps}, {args.warmup}")
    args.train_examples = _default(args.train_examples, args.quick, 4_800, 48_000)
    args.eval_examples = _default(args.eval_examples, args.quick, 2_000, 10_000)
    if args.train_examples < BATCH_SIZE or args.eval_examples < 1:
        raise InputError(
            f"--train-examples must be >= {BATCH_SIZE} and --eval-examples >= 1, got "
            f"{args.train_examples}, {args.eval_examples}"
        )
    args.models = _counts(_default(args.models, args.quick, "1,4", "1,2,4,8"), "--models", "1,4")
    args.devices = _counts(_default(args.devices, args.quick, "1,2", "1,2,4"), "--devices", "1,2")
    args.sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    if not args.sections:
        raise InputError(f"--sections is empty; choose from {', '.join(SECTIONS)}")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        raise InputError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return args


def prepare_out(out: str) -> Path:
    """The output folder: new, empty, or holding only earlier benchmark output (overwritten)."""
    path = Path(out).expanduser().resolve()
    if path.is_dir() and any(path.iterdir()):
        others = [p.name for p in path.iterdir() if p.name not in {*OUTPUT_FILES, *BOOKKEEPING}]
        if others:
            raise RunDirError(
                f"output folder {path} holds files that are not benchmark output "
                f"({', '.join(sorted(others)[:5])}); pass another --out"
            )
        return prepare_run_dir(path, resume=True)
    return prepare_run_dir(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen sections and return the full result dict (nothing written)."""
    start = time.perf_counter()
    ok, why = baselines.torch_status()
    args.torch_reason = why if not ok else ""
    args.torch_device = baselines.resolve_torch_device(args.torch_device) if ok else None
    env = environment(args.torch_device)
    pools = env["blas"] if isinstance(env["blas"], list) else []
    blas = next((p for p in pools if p.get("user_api") == "blas"), {})
    args.blas_note = (
        f"{blas.get('internal_api', 'BLAS')} {blas.get('version', '')} "
        f"(core type {blas.get('architecture', '?')}, {blas.get('num_threads', '?')} threads; "
        f"OPENBLAS_CORETYPE={env['openblas_coretype']})"
    )
    data, source = get_data(args.data, args.train_examples, args.eval_examples, args.seed)
    sections: dict[str, Any] = {}
    ceiling = None
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("ceiling", lambda: section_ceiling(args, args.torch_device)),
        ("train_epoch", lambda: section_train_epoch(args, data, ceiling)),
        ("evaluation", lambda: section_evaluation(args, data, ceiling)),
        ("models_per_program", lambda: section_models_per_program(args, data, ceiling)),
        ("vgg", lambda: section_vgg(args)),
        ("devices", lambda: section_devices(args)),
    ]
    for name, fn in steps:
        if name not in args.sections:
            sections[name] = {"status": "skipped", "reason": "not selected with --sections"}
            continue
        t0 = time.perf_counter()
        print(f"[benchmark] {name} ...", flush=True)
        sections[name] = fn()
        sections[name]["section_s"] = time.perf_counter() - t0
        if name == "ceiling":
            ceiling = sections[name]["xla_ceiling_gflops"]
    return {
        "benchmark": "jnn",
        "config": {
            "quick": args.quick,
            "sizes": list(SIZES),
            "activation": ACTIVATION,
            "init": INIT,
            "batch_size": BATCH_SIZE,
            "learning_rate": LEARNING_RATE,
            "optimizer": "plain SGD (optax.sgd / torch.optim.SGD / sklearn sgd, momentum 0)",
            "train_examples": args.train_examples,
            "eval_examples": args.eval_examples,
            "reps": args.reps,
            "warmup": args.warmup,
            "data": source,
            "torch_device": args.torch_device,
            "models_per_program": list(args.models),
            "scaling_devices": list(args.devices),
            "sections": list(args.sections),
            "seed": args.seed,
        },
        "flops": {
            "formula": FLOP_FORMULA,
            "forward_per_example": forward_flops_per_example(SIZES),
            "backward_per_example": backward_flops_per_example(SIZES),
            "train_per_example": train_flops_per_example(SIZES),
        },
        "environment": env,
        "sections": sections,
        "targets": targets(sections),
        "total_s": time.perf_counter() - start,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # On a GPU, JAX would otherwise grab 75% of its memory up front, leaving too little for the
    # PyTorch reference and for experiments.scaling's worker processes. No effect on a CPU.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    out = prepare_out(args.out)
    result = run(args)
    write_json(out / "benchmark.json", result)
    write_text_atomic(out / "benchmark.md", render_markdown(result))
    render_chart(result, out / "benchmark.png")
    print(render_markdown(result))
    print(f"[benchmark] wrote {out}/benchmark.json, benchmark.md, benchmark.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(main)())

"""Throughput of jnn.parallel on 1, 2, 4, ... devices: data parallel and independent models.

    python -m bench.scaling                      # devices 1,2,4, full-size epochs
    python -m bench.scaling --devices 1,2 --quick    # small epochs, into runs/scaling-quick
    python -m bench.scaling --platform cpu       # forced host devices even on a GPU box

Each device count runs in its own subprocess, because the number of CPU host devices is fixed
when JAX initialises (``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Measured there,
for the study's ReLU MLP (its widths from ``StudyConfig``) on synthetic data of the dataset's
shape (48,000 examples, or 8,192 with ``--small``, which ``--quick`` sets):

* data parallel, one model, global batch 32 and 256 split over the ``data`` axis: examples/s;
* independent models (4, or one per device if more devices), vmapped and sharded one group per
  device: model-epochs/s;
* with 1 device also the plain single-device ``train.make_epoch_fn`` as the baseline.

Every number is the median of several epochs after one warm-up epoch (which includes compiling).

Forced host devices are not extra hardware: N of them share this machine's cores (2 here), so on
a small CPU data parallel does not speed up and may slow down (smaller per-device matmuls plus an
all-reduce per step). What the CPU run shows is that the same code runs and how large the
partitioning overhead is; speed-ups need real devices (GPUs/TPUs, or a many-core host).

``measure_scaling(devices=(1, 2, 4), small=False) -> dict`` is the API the benchmark's
``devices`` section calls; the command (its flags generated from :class:`Config` by
``experiments.lab``) prints the Markdown table and writes results.json and results.md into
``--out`` (default ``runs/scaling``; ``--config results.json`` reruns a run's config).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments import harness, lab
from jnn import config
from jnn.config import ConfigError, option
from jnn.study import StudyConfig

REPO = Path(__file__).resolve().parents[1]
SIZES: tuple[int, ...] = StudyConfig().sizes  # the study's widths (ends: the dataset entry)
FULL_EXAMPLES, QUICK_EXAMPLES = 48_000, 8_192
FULL_REPS, QUICK_REPS = 5, 3
BATCH_SIZES = (32, 256)
MODELS_BATCH = 32
FORCED_NOTE = (
    "CPU devices are forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N): "
    "they share the host's cores, so they test correctness and partitioning overhead, not "
    "hardware scaling."
)


# --------------------------------------------------------------------------------------------
# Worker: runs inside a subprocess whose device count is already fixed
# --------------------------------------------------------------------------------------------


def _time_epochs(epoch: Any, state: Any, x: Any, y: Any, reps: int) -> dict[str, float]:
    """first_epoch_s (incl. compile), then the median and min of ``reps`` further epochs."""
    import jax

    from jnn.timing import Stopwatch, repeated, time_interleaved

    box = [state]

    def one() -> None:
        box[0], metrics = epoch(box[0], x, y)
        jax.block_until_ready((box[0], metrics))

    with Stopwatch() as first:
        one()
    t = time_interleaved({"epoch": repeated(one)}, reps, warmup=0)["epoch"]
    return {"first_epoch_s": first.s, "epoch_s": t["median_s"], "min_epoch_s": t["min_s"]}


def _setup(small: bool) -> dict[str, Any]:
    """The worker's shared pieces: data on the host, optimizer, key, model, reps."""
    import jax
    import numpy as np
    import optax

    from jnn.mlp import mlp

    fixed = fixed_settings(small)
    n = fixed["num_examples"]
    rng = np.random.default_rng(0)
    return {
        "n": n,
        "reps": fixed["timed_epochs"],
        "x": rng.normal(size=(n, SIZES[0])).astype(np.float32),
        "y": rng.integers(0, SIZES[-1], n).astype(np.int32),
        "optimizer": optax.sgd(0.1),
        "key": jax.random.key(0),
        "model": mlp(SIZES, "relu"),
        "shape": SIZES[:1],
    }


def _data_parallel(s: dict[str, Any], num_devices: int) -> dict[str, Any]:
    """One model, global batch 32 and 256 split over the ``data`` axis: examples/s."""
    from jnn import parallel as par
    from jnn import train

    mesh = par.data_mesh(num_devices)
    x, y = par.replicate((s["x"], s["y"]), mesh)
    out = {}
    for batch_size in BATCH_SIZES:
        epoch = par.make_sharded_epoch_fn(s["model"], s["optimizer"], batch_size, mesh)
        state = train.init_train_state(s["key"], s["model"], s["optimizer"], s["shape"])
        t = _time_epochs(epoch, par.replicate(state, mesh), x, y, s["reps"])
        examples = (s["n"] // batch_size) * batch_size
        out[str(batch_size)] = {**t, "examples_per_s": examples / t["epoch_s"]}
    return out


def _per_device_models(s: dict[str, Any], num_devices: int, models: int | None) -> dict:
    """Independent models (4, or one per device if more), one vmapped group per device."""
    import jax

    from jnn import parallel as par

    m = models or max(4, num_devices)
    if m % num_devices:
        m = num_devices * -(-m // num_devices)  # round up to a multiple of the device count
    mesh = par.model_mesh(num_devices)
    x, y = par.replicate((s["x"], s["y"]), mesh)
    epoch = par.make_per_device_models_fn(s["model"], s["optimizer"], MODELS_BATCH, mesh)
    keys = jax.random.split(s["key"], m)
    states = par.init_stacked_states(keys, s["model"], s["optimizer"], s["shape"])
    t = _time_epochs(epoch, par.shard_models(states, mesh), x, y, s["reps"])
    return {"models": m, "batch_size": MODELS_BATCH, **t, "model_epochs_per_s": m / t["epoch_s"]}


def _single_device_baseline(s: dict[str, Any], device: Any) -> dict[str, Any]:
    """The plain single-device ``train.make_epoch_fn`` at batch 32 and 256: examples/s."""
    import jax

    from jnn import train

    x, y = jax.device_put((s["x"], s["y"]), device)
    out = {}
    for batch_size in BATCH_SIZES:
        epoch = train.make_epoch_fn(s["model"], s["optimizer"], batch_size)
        state = train.init_train_state(s["key"], s["model"], s["optimizer"], s["shape"])
        t = _time_epochs(epoch, jax.device_put(state, device), x, y, s["reps"])
        examples = (s["n"] // batch_size) * batch_size
        out[str(batch_size)] = {**t, "examples_per_s": examples / t["epoch_s"]}
    return out


def _worker(num_devices: int, small: bool, models: int | None) -> dict[str, Any]:
    import jax

    devices = jax.devices()
    out: dict[str, Any] = {
        "devices": num_devices,
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "available": len(devices),
    }
    if num_devices > len(devices):
        out["skipped"] = f"only {len(devices)} {devices[0].platform} device(s) here"
        return out
    s = _setup(small)
    out["data_parallel"] = _data_parallel(s, num_devices)
    out["per_device_models"] = _per_device_models(s, num_devices, models)
    if num_devices == 1:
        out["single_device_baseline"] = _single_device_baseline(s, devices[0])
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def _worker_env(num_devices: int, platform: str | None) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform" not in f]
    flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    if platform:
        env["JAX_PLATFORMS"] = platform
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_one(
    num_devices: int,
    small: bool = False,
    platform: str | None = None,
    models: int | None = None,
    timeout: float = 900,
) -> dict[str, Any]:
    """Measure one device count in a fresh interpreter; returns the worker's dict (or
    ``{"devices": N, "error": ...}`` when the worker failed or ran past ``timeout`` seconds).
    The arguments are checked as :class:`Config` checks them."""
    Config((num_devices,), small, platform, models)
    job = json.dumps({"devices": num_devices, "small": small, "models": models})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.scaling", WORKER_FLAG, job],
            cwd=REPO,
            env=_worker_env(num_devices, platform),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"devices": num_devices, "error": f"no result within {timeout:g} s (timed out)"}
    if proc.returncode != 0:
        return {"devices": num_devices, "error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fixed_settings(small: bool, platform: str | None = None) -> dict[str, Any]:
    """What every worker of a run measures with (the ``setup`` block of a result): the study's
    widths, the examples per epoch and the timed epochs (fewer with ``small``)."""
    return {
        "sizes": list(SIZES),
        "activation": "relu",
        "optimizer": "sgd(0.1)",
        "num_examples": QUICK_EXAMPLES if small else FULL_EXAMPLES,
        "timed_epochs": QUICK_REPS if small else FULL_REPS,
        "statistic": "median epoch time after one warm-up epoch",
        "host_cpu_count": os.cpu_count(),
        "platform_requested": platform or os.environ.get("JAX_PLATFORMS") or "default",
    }


def measure_scaling(
    devices: Sequence[int] = (1, 2, 4),
    small: bool = False,
    platform: str | None = None,
    models: int | None = None,
) -> dict[str, Any]:
    """Throughput per device count (each in its own subprocess), JSON-able.

    Returns {"config": the :class:`Config`, "setup": the fixed settings (sizes, examples,
    timed epochs), "note": ..., "runs": {"1": {...}, "2": {...}}, "summary": [rows]}; each run
    has data_parallel[batch]["examples_per_s"], per_device_models["model_epochs_per_s"] and,
    for 1 device, single_device_baseline; a device count the platform lacks is "skipped".
    ``platform`` sets JAX_PLATFORMS for the workers ("cpu" forces host devices on a GPU box).
    Bad arguments raise :class:`jnn.config.ConfigError` (one line), as the command line does.
    """
    cfg = Config(tuple(devices), small, platform, models)
    runs = {str(d): run_one(d, small, platform, models) for d in cfg.devices}
    platforms = {r.get("platform") for r in runs.values() if "platform" in r}
    return {
        "config": dataclasses.asdict(cfg),
        "setup": fixed_settings(small, platform),
        "note": FORCED_NOTE if "cpu" in platforms else "",
        "runs": runs,
        "summary": summary_rows(runs),
    }


def summary_rows(runs: dict[str, Any]) -> list[list[Any]]:
    """[devices, platform, dp b32 ex/s, dp b256 ex/s, models, model-epochs/s, vs 1 device]."""
    rows = []
    base = runs.get("1", {})

    def ratio(run: dict, path: tuple[str, ...]) -> float | None:
        a, b = run, base
        for p in path:
            a, b = (a or {}).get(p), (b or {}).get(p)
        return round(a / b, 2) if a and b else None

    for d, run in runs.items():
        if "data_parallel" not in run:
            rows.append(
                [int(d), run.get("platform"), None, None, None, None, run.get("skipped") or "error"]
            )
            continue
        dp = run["data_parallel"]
        pm = run["per_device_models"]
        rel = [
            ratio(run, ("data_parallel", "32", "examples_per_s")),
            ratio(run, ("data_parallel", "256", "examples_per_s")),
            ratio(run, ("per_device_models", "model_epochs_per_s")),
        ]
        rows.append(
            [
                int(d),
                run["platform"],
                round(dp["32"]["examples_per_s"]),
                round(dp["256"]["examples_per_s"]),
                pm["models"],
                round(pm["model_epochs_per_s"], 3),
                f"x{rel[0]} / x{rel[1]} / x{rel[2]}",
            ]
        )
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The summary as a Markdown table plus the baseline and the forced-device note."""
    from experiments.report import markdown_table

    headers = [
        "devices",
        "platform",
        "data-parallel b32 ex/s",
        "data-parallel b256 ex/s",
        "models",
        "model-epochs/s",
        "vs 1 device (b32 / b256 / models)",
    ]
    text = markdown_table(headers, result["summary"])
    base = result["runs"].get("1", {}).get("single_device_baseline")
    if base:
        text += (
            "\nplain train.make_epoch_fn on 1 device: "
            + ", ".join(f"b{b} {round(v['examples_per_s'])} ex/s" for b, v in base.items())
            + "\n"
        )
    if result["note"]:
        text += f"\n{result['note']}\n"
    return text


PLATFORMS = ("cpu", "cuda", "gpu", "rocm", "tpu")  # what JAX_PLATFORMS may name
MAX_DEVICES, MAX_MODELS = 64, 1024
QUICK = {"small": True}


@dataclass(frozen=True)
class Config:
    """What a scaling run measures, declared once (its command line is generated from it by
    ``experiments.lab``; :func:`measure_scaling` checks its arguments through it too)."""

    devices: tuple[int, ...] = option((1, 2, 4), "device counts, each timed in its own process")
    small: bool = option(
        False, f"{QUICK_EXAMPLES:,} examples and {QUICK_REPS} timed epochs (else "
        f"{FULL_EXAMPLES:,} and {FULL_REPS})",
    )  # fmt: skip
    platform: str | None = option(
        None, f"JAX_PLATFORMS for the workers: {', '.join(PLATFORMS)}, or several comma-separated "
        "[the environment's]",
    )  # fmt: skip
    models: int | None = option(None, "independent models [4, or one per device if more]")

    def __post_init__(self) -> None:
        for d in self.devices:
            config.integer(d, "devices", 1, MAX_DEVICES)
        config.distinct(self.devices, "devices")
        if not self.devices:
            raise ConfigError("`devices` is empty; give at least one device count")
        if self.models is not None:
            config.integer(self.models, "models", 1, MAX_MODELS)
        if self.platform is not None:
            _check_platform(self.platform)


def _check_platform(value: str) -> None:
    """JAX platform names, comma-separated without gaps: an unknown name made every worker fail
    while the run reported status ok."""
    names = value.split(",")
    unknown = [n for n in names if n not in PLATFORMS]
    if unknown:
        what = "an empty item is" if "" in unknown else f"{unknown[0]!r} is"
        raise ConfigError(
            f"`platform` {value!r}: {what} not a JAX platform; pass one of "
            f"{', '.join(PLATFORMS)} (or several, comma-separated)"
        )


def parse(argv: Sequence[str] | None) -> lab.Invocation:
    """Command line -> the checked config (one line naming the flag per bad value)."""
    return lab.parse(
        Config, argv, name="scaling", package="bench", resume=False, quick=QUICK,
        description=__doc__.split("\n")[0],
        epilog="Exit codes: 0 done, 1 every device count failed (reasons in results.json), "
        "2 bad input (one line on stderr).",
    )  # fmt: skip


def run(inv: lab.Invocation, run_dir: Path) -> dict[str, Any]:
    """Every device count in its own subprocess (see the module docstring)."""
    del run_dir
    cfg = inv.config
    result = measure_scaling(cfg.devices, cfg.small, cfg.platform, cfg.models)
    failed = [d for d, r in result["runs"].items() if "error" in r]
    status = "failed" if failed and len(failed) == len(result["runs"]) else "ok"
    return {"study": "scaling", "status": status, "failed_device_counts": failed, **result}


def render(result: dict[str, Any], run_dir: Path) -> list[Path]:
    """results.json and results.md (the summary table) in ``run_dir``."""
    from jnn.workdir import write_json, write_text_atomic

    md = "# jnn.parallel scaling\n\n" + markdown(result)
    return [
        write_json(run_dir / "results.json", result),
        write_text_atomic(run_dir / "results.md", md),
    ]


EXPERIMENT = harness.Experiment("scaling", parse, run, render, markdown)
main = harness.cli(EXPERIMENT)
WORKER_FLAG = "--worker"  # the driver's private call: a JSON job, not a user's command line


def _worker_main(job: str) -> int:
    """One device count (``{"devices": N, "small": bool, "models": M}``), its dict as a JSON
    line on stdout."""
    spec = json.loads(job)
    print(json.dumps(_worker(spec["devices"], spec["small"], spec["models"])))
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(_worker_main(args[1]) if args[:1] == [WORKER_FLAG] else main(args))

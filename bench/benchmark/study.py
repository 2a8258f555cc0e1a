"""Section ``study``: the main job's preset, timed as a user runs it, beside per-device models.

The preset runs in a subprocess, exactly as the README's command but short and without the
scikit-learn reference: ``python -m experiments.mlp_sweep --no-sklearn --epochs E --out TMP``
(E = ``--study-epochs``: 3, or 2 with ``--quick``). The subprocess picks its own host-device
count and layout as the CLI does, and trains on the real Fashion-MNIST (on disk, or downloaded
by the CLI). Its rate is read from its own results.json (``timing``, ``jnn.summary``): the
engine times each epoch's program call, i.e. one training epoch of every model plus the
per-epoch validation pass, not the metrics line, checkpoints or the final evaluation; the first
epoch of a run also compiles, so the steady rate counts epochs 2..E (the engine's own figure,
first epoch included, is kept beside it).

The per-device-models figure is bench.scaling's (the same MLP, batch 32, models vmapped in a
group per device on the same device count): taken from this run's ``devices`` section when it
measured the preset's device count and model count, else measured here with
``scaling.run_one``. The two epochs differ in size (the preset 48,600 training rows; scaling
48,000 synthetic, 8,192 with ``--quick``), so both are compared as model-examples/s
(model-epochs/s x the examples an epoch trains on; full batches only, as both engines drop the
remainder). The machine's load over the whole section is recorded (``cnn.machine_load``, the
subprocesses' CPU counted as this section's own); on a busy machine the ratio is "not judged".
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.benchmark.cnn import machine_load
from bench.benchmark.common import Context
from bench.benchmark.config import Config
from jnn.errors import InputError

REPO = Path(__file__).resolve().parents[2]
PRESET = "experiments.mlp_sweep"
PRESET_TIMEOUT_S = 3600  # 3 epochs take minutes; an hour means something is stuck
PRESET_OK = (0, 3)  # 3: done, but a model diverged (results.json is written all the same)
INCLUDED = (
    "the engine's epoch time: one training epoch of every model plus the per-epoch validation "
    "pass; not the metrics line, checkpoints, final evaluation, data loading or start-up"
)


def preset_command(epochs: int, out: Path) -> list[str]:
    """The main job's command line as a user types it, short and without scikit-learn."""
    return [sys.executable, "-m", PRESET, "--no-sklearn", "--epochs", str(epochs), "--out",
            str(out)]  # fmt: skip


def run_preset(epochs: int, out: Path, timeout: float = PRESET_TIMEOUT_S) -> dict[str, Any]:
    """Run the preset into ``out`` in a fresh interpreter (its device count is fixed when JAX
    starts, so it cannot share this process). Returns ``returncode``, ``wall_s`` (start-up,
    data loading, compile, training, evaluation and rendering) and the ``stderr`` tail."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            preset_command(epochs, out), cwd=REPO, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"returncode": None, "wall_s": timeout, "stderr": f"killed after {timeout:.0f} s"}
    return {
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "stderr": proc.stderr.strip()[-2000:],
    }


def _positive(value: Any) -> bool:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return ok and math.isfinite(value) and value > 0


def _check_preset(result: Any, path: Path) -> None:
    """One InputError line naming what a preset results.json lacks."""
    where = f"the preset's results.json ({path})"
    if not isinstance(result, dict):
        raise InputError(f"{where} is not a JSON object; rerun the study section")
    timing, config = result.get("timing"), result.get("config")
    if not isinstance(timing, dict) or not isinstance(config, dict):
        raise InputError(f"{where} lacks `timing` or `config`; is it jnn.summary's result?")
    seconds = timing.get("epoch_seconds")
    if not isinstance(seconds, list) or not seconds or not all(map(_positive, seconds)):
        raise InputError(f"{where}: `timing.epoch_seconds` must be positive seconds per epoch")
    models, sizes = result.get("models"), result.get("set_sizes")
    if not isinstance(models, list) or not models:
        raise InputError(f"{where}: `models` must list the trained models")
    if not isinstance(sizes, list) or not sizes or not _positive(sizes[0]):
        raise InputError(f"{where}: `set_sizes` must start with the training rows")
    if not _positive(config.get("batch_size")) or not result.get("devices_used"):
        raise InputError(f"{where}: needs `config.batch_size` and `devices_used`")


def read_preset(path: str | os.PathLike) -> dict[str, Any]:
    """The preset's rates from its results.json at ``path``: model-epochs/s steady (epochs
    2..E; None with one epoch) and the engine's own (every epoch, so the first one's compile
    included), and model-examples/s of the steady rate (else the engine's). One InputError
    line when the file is missing, not JSON, or lacks a field."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"the preset wrote no results.json at {path}; see its stderr") from None
    except (OSError, ValueError) as err:
        raise InputError(f"the preset's results.json ({path}) is unreadable: {err}") from None
    _check_preset(result, path)
    seconds, models = result["timing"]["epoch_seconds"], len(result["models"])
    batch = int(result["config"]["batch_size"])
    examples = int(result["set_sizes"][0]) // batch * batch
    steady = models * (len(seconds) - 1) / sum(seconds[1:]) if len(seconds) > 1 else None
    engine = models * len(seconds) / sum(seconds)
    return {
        "models": models,
        "epochs": len(seconds),
        "devices": len(result["devices_used"]),
        "layout": result.get("layout"),
        "layout_seconds": result.get("layout_seconds") or {},
        "examples_per_epoch": examples,
        "first_epoch_s": seconds[0],
        "model_epochs_per_s_steady": steady,
        "model_epochs_per_s_engine": engine,
        "model_epochs_per_s": steady if steady is not None else engine,
        "model_examples_per_s": (steady if steady is not None else engine) * examples,
        "steady": steady is not None,
        "included": INCLUDED,
    }


def per_device_from(measured: Any, devices: int) -> dict[str, Any] | None:
    """bench.scaling's per-device-models entry for ``devices`` devices from a
    ``measure_scaling``-shaped dict, with its model-examples/s; None when it holds none."""
    if not isinstance(measured, dict):
        return None
    run = (measured.get("runs") or {}).get(str(devices)) or {}
    pdm = run.get("per_device_models") or {}
    rows = (measured.get("setup") or {}).get("num_examples")
    if not _positive(pdm.get("model_epochs_per_s")) or not _positive(rows):
        return None
    batch = int(pdm.get("batch_size", 32))
    examples = int(rows) // batch * batch
    return {
        "models": pdm.get("models"),
        "devices": devices,
        "batch_size": batch,
        "examples_per_epoch": examples,
        "first_epoch_s": pdm.get("first_epoch_s"),
        "epoch_s": pdm.get("epoch_s"),
        "model_epochs_per_s": pdm["model_epochs_per_s"],
        "model_examples_per_s": pdm["model_epochs_per_s"] * examples,
    }


def scaling_models(devices: int, models: int) -> int:
    """The model count bench.scaling trains for ``models`` on ``devices`` (a multiple of the
    device count, as the preset's engine pads its model axis)."""
    return devices * -(-models // devices)


def per_device_models(cfg: Config, ctx: Context, devices: int, models: int) -> tuple[Any, str]:
    """(the per-device-models figure for the preset's devices and models, where it came from):
    this run's ``devices`` section when it measured that case, else ``scaling.run_one`` now
    (one subprocess); (None, why) when neither gives one."""
    want = scaling_models(devices, models)
    found = per_device_from(ctx.scaling, devices)
    if found is not None and found["models"] == want:
        return found, "this run's devices section (bench.scaling)"
    from bench import scaling

    run = scaling.run_one(devices, small=cfg.small, models=models)
    measured = {"setup": scaling.fixed_settings(cfg.small), "runs": {str(devices): run}}
    found = per_device_from(measured, devices)
    if found is None:
        why = run.get("error") or run.get("skipped") or "no per_device_models in its output"
        return None, f"bench.scaling on {devices} device(s) gave no figure: {why[-300:]}"
    return found, "measured by this section (bench.scaling.run_one)"


def _failed(reason: str, **extra: Any) -> dict[str, Any]:
    return {"status": "failed", "reason": reason, **extra}


def _timed(cfg: Config, ctx: Context) -> dict[str, Any]:
    """The preset in a temporary folder, its results.json read, the per-device figure beside."""
    with tempfile.TemporaryDirectory(prefix="jnn-bench-study-") as tmp:
        out = Path(tmp) / "run"
        command = " ".join(preset_command(cfg.study_epochs, out)[1:]).replace(str(out), "TMP")
        proc = run_preset(cfg.study_epochs, out)
        if proc["returncode"] not in PRESET_OK:
            why = proc["stderr"][-300:] or "no stderr"
            return _failed(f"the preset exited {proc['returncode']}: {why}", preset_run=proc)
        try:
            preset = read_preset(out / "results.json")
        except InputError as err:
            return _failed(str(err), preset_run=proc)
    pdm, source = per_device_models(cfg, ctx, preset["devices"], preset["models"])
    proc.pop("stderr")
    base = {"command": f"python {command}", "preset_run": proc, "preset": preset}
    if pdm is None:
        return _failed(source, **base)
    return {
        "status": "ok",
        **base,
        "per_device_models": pdm,
        "per_device_source": source,
        "ratio": preset["model_examples_per_s"] / pdm["model_examples_per_s"],
        "results": {
            name: {k: r[k] for k in ("model_epochs_per_s", "model_examples_per_s")}
            for name, r in (("preset", preset), ("per_device_models", pdm))
        },
    }


def measure(cfg: Config, ctx: Context) -> dict[str, Any]:
    """The preset and the per-device-models figure (see the module docstring), their ratio in
    model-examples/s, and the machine's load over both (``load``: judged when quiet)."""
    with machine_load() as load:
        sec = _timed(cfg, ctx)
        sec["load"] = load  # filled when the block ends
    return sec

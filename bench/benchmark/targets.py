"""The project's speed targets (issues #13 and #20), each with the measured value and met / missed
/ n/a. The PyTorch targets of the CNN and VGG sections, and the CNN's share of the ceiling (the
ceiling and the step both shift when another process takes a core, unevenly), carry ``judged:
False`` (rendered "not judged") when the section was timed on a busy machine
(``benchmark.cnn.machine_load``), and every PyTorch target carries ``judged: False`` when jnn and
PyTorch ran on different hardware (jnn on a GPU, PyTorch on the CPU, say): a ratio across
devices says nothing about either implementation."""

from __future__ import annotations

from typing import Any

TORCH_X, NUMPY_X, VMAP4_X, CEILING_SHARE, VGG_X = 2.5, 1.5, 1.6, 0.75, 1.2
MLP_MANUAL_MAX, CNN_MANUAL_MAX = 1.05, 1.10
# issue #20: convolutions at the matmul ceiling on CPU
CNN_TORCH_X, CNN_CEILING_SHARE, VGG_TORCH_X_20 = 1.5, 0.40, 1.0


def _get(sections: dict[str, Any], section: str, case: str, field: str) -> float | None:
    sec = sections.get(section, {})
    if sec.get("status") != "ok":
        return None
    return sec.get("results", {}).get(case, {}).get(field)


def _entry(name: str, goal: str, value: float | None, threshold: float, at_most=False, note=""):
    met = None if value is None else bool(value <= threshold if at_most else value >= threshold)
    return {"name": name, "goal": goal, "measured": value, "met": met, "note": note}


def _device_shares(sections: dict[str, Any]) -> dict[str, float]:
    """Ceiling shares of the ``devices`` section's batch-32 rows (bench.scaling: the
    model axis, and data parallelism, over 1, 2, 4 devices of this host), from its measured
    rates and the benchmark's FLOP count; batch-256 rows are another training and not counted."""
    from bench.benchmark.common import train_flops_per_example

    dev, ceiling = sections.get("devices", {}), sections.get("ceiling", {})
    gflops = ceiling.get("xla_ceiling_gflops") if ceiling.get("status") == "ok" else None
    measured = dev.get("measured", {})
    setup = measured.get("setup", {})
    if dev.get("status") != "ok" or not gflops or not setup.get("sizes"):
        return {}
    per_example = train_flops_per_example(setup["sizes"])
    shares = {}
    for d, run in measured.get("runs", {}).items():
        models = run.get("per_device_models", {})
        batch = models.get("batch_size", 32)
        n = setup.get("num_examples", 0) // batch * batch
        if "model_epochs_per_s" in models:
            rate = models["model_epochs_per_s"] * n * per_example
            shares[f"devices/per_device_models@{d}"] = rate / 1e9 / gflops
        b32 = run.get("data_parallel", {}).get("32", {})
        if "examples_per_s" in b32:
            shares[f"devices/data_parallel_b32@{d}"] = (
                b32["examples_per_s"] * per_example / 1e9 / gflops
            )
    return shares


def _best_share(sections: dict[str, Any]) -> tuple[float | None, str]:
    """The highest ceiling share of any batch-32 training configuration the benchmark timed:
    one scanned epoch, k vmapped models, or models / data split over the host's devices."""
    shares = _device_shares(sections)
    for section in ("train_epoch", "models_per_program"):
        for name, r in sections.get(section, {}).get("results", {}).items():
            if r.get("fraction_of_xla_ceiling") is not None:
                shares[f"{section}/{name}"] = r["fraction_of_xla_ceiling"]
    if not shares:
        return None, ""
    best_name = max(shares, key=shares.__getitem__)
    return shares[best_name], f"best: {best_name}"


def _mlp_manual(sections: dict[str, Any]) -> float | None:
    manual = _get(sections, "train_epoch", "jnn_scan_manual", "median_s")
    auto = _get(sections, "train_epoch", "jnn_scan_autodiff", "median_s")
    return None if manual is None or auto is None else manual / auto


def hardware(torch_device: str | None) -> dict[str, str | None]:
    """Where each side ran: JAX's default backend ("cpu", "gpu", ...) and PyTorch's device
    ("cpu", "cuda"; None when torch is unavailable)."""
    import jax

    return {"jnn": jax.default_backend(), "torch": torch_device}


def _same_hardware(where: dict[str, str | None] | None) -> bool:
    """jnn and PyTorch ran on the same kind of device (a GPU is "gpu" to JAX, "cuda" to torch)."""
    if not where or where.get("torch") is None:
        return True
    kind = {"cuda": "gpu"}.get(where["torch"] or "", where["torch"])
    return where.get("jnn") == kind


def _withhold(entry: dict[str, Any], judged: bool, why: str) -> dict[str, Any]:
    """``entry`` (when it was measured) with its ``judged`` verdict and the reason in its note."""
    if entry["measured"] is not None:
        entry["judged"] = judged
        entry["note"] = (entry["note"] + "; " if entry["note"] else "") + why
    return entry


def _cross_device(entry: dict[str, Any], where: dict[str, str | None] | None) -> dict:
    """``entry`` not judged when jnn and PyTorch ran on different hardware, saying where each
    ran (a PyTorch target's ratio is then not a comparison of the two implementations)."""
    if _same_hardware(where):
        return entry
    assert where is not None
    why = f"jnn on {where['jnn']}, PyTorch on {where['torch']}: different hardware"
    return _withhold(entry, False, why)


def _torch_judged(entry: dict[str, Any], sections: dict[str, Any], section: str) -> dict:
    """``entry`` with ``judged`` and the load in its note when ``section`` recorded its load
    (for the targets that a busy machine skews: PyTorch's threads, the ceiling share)."""
    load = sections.get(section, {}).get("load")
    return _withhold(entry, bool(load.get("judged")), load.get("why", "")) if load else entry


def conv_targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #20's targets: the CNN manual step against PyTorch eager and as a share of the
    matmul ceiling, and VGG16 features against PyTorch eager."""
    cnn = sections.get("cnn", {})
    torch_x = cnn.get("ratios", {}).get("torch_over_jnn") if cnn.get("status") == "ok" else None
    return [
        _torch_judged(_entry("CNN manual step vs PyTorch eager",
                             f"PyTorch step time >= {CNN_TORCH_X} x jnn manual step time",
                             torch_x, CNN_TORCH_X), sections, "cnn"),
        _torch_judged(_entry("CNN manual step share of the matmul ceiling",
                             f"jnn manual step >= {CNN_CEILING_SHARE:.0%} of the XLA 2048^3 "
                             "matmul GFLOP/s (FLOPs from jnn.conv_cost)",
                             _get(sections, "cnn", "jnn_manual", "fraction_of_xla_ceiling"),
                             CNN_CEILING_SHARE), sections, "cnn"),
        _torch_judged(_entry("VGG16 features vs PyTorch eager (issue 20)",
                             f"jnn images/s >= {VGG_TORCH_X_20}x PyTorch eager",
                             _get(sections, "vgg", "torch_eager", "time_vs_jnn"), VGG_TORCH_X_20),
                      sections, "vgg"),
    ]  # fmt: skip


# the targets that compare jnn with PyTorch: judged only when both ran on the same hardware
TORCH_TARGETS = (
    "jnn vs PyTorch eager", "VGG16 features vs PyTorch eager",
    "VGG16 features vs PyTorch eager (issue 20)", "CNN manual step vs PyTorch eager",
)  # fmt: skip


CEILING_TARGETS = ("share of the matmul ceiling", "CNN manual step share of the matmul ceiling")


def over_ceiling(sections: dict[str, Any]) -> bool:
    """Some case ran above 100% of the measured matmul ceiling: that measurement is then no
    ceiling of this machine (or was timed busy), and no share of it can be judged."""
    return any(
        (r.get("fraction_of_xla_ceiling") or 0.0) > 1.0
        for name in ("train_epoch", "models_per_program", "cnn", "vgg")
        for r in sections.get(name, {}).get("results", {}).values()
    )


def targets(
    sections: dict[str, Any], where: dict[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """Every target; ``measured`` is a ratio (or share), ``met`` None when not measured.
    ``where`` (:func:`hardware`): the PyTorch targets are not judged across devices."""
    best, best_note = _best_share(sections)
    cnn = sections.get("cnn", {})
    cnn_ok = cnn.get("status") == "ok"
    cnn_ratio = cnn.get("ratios", {}).get("manual_over_autodiff") if cnn_ok else None
    entries = [
        _entry("jnn vs PyTorch eager", f"jnn scanned epoch >= {TORCH_X}x faster",
               _get(sections, "train_epoch", "torch_eager", "time_vs_jnn"), TORCH_X),
        _entry("jnn vs numpy loop", f"jnn scanned epoch >= {NUMPY_X}x faster",
               _get(sections, "train_epoch", "numpy_loop", "time_vs_jnn"), NUMPY_X),
        _entry("MLP manual backprop vs jax.grad",
               f"manual epoch time <= {MLP_MANUAL_MAX} x jax.grad epoch time",
               _mlp_manual(sections), MLP_MANUAL_MAX, at_most=True),
        _entry("CNN manual backprop vs jax.grad",
               f"manual train-step time <= {CNN_MANUAL_MAX} x jax.grad step time",
               cnn_ratio, CNN_MANUAL_MAX, at_most=True),
        _entry("models per program", f"model-epochs/s at 4 vmapped models >= {VMAP4_X} x one",
               _get(sections, "models_per_program", "4_vmap", "speedup_vs_1"), VMAP4_X),
        _entry("share of the matmul ceiling",
               f"best training configuration >= {CEILING_SHARE:.0%} of the XLA 2048^3 matmul "
               "GFLOP/s", best, CEILING_SHARE, note=best_note),
        _torch_judged(_entry("VGG16 features vs PyTorch eager",
                             f"jnn images/s >= {VGG_X}x PyTorch eager",
                             _get(sections, "vgg", "torch_eager", "time_vs_jnn"), VGG_X),
                      sections, "vgg"),
        *conv_targets(sections),
    ]  # fmt: skip
    if over_ceiling(sections):
        why = "a case ran above 100% of the measured ceiling: no share is comparable"
        entries = [_withhold(e, False, why) if e["name"] in CEILING_TARGETS else e for e in entries]
    return [_cross_device(e, where) if e["name"] in TORCH_TARGETS else e for e in entries]

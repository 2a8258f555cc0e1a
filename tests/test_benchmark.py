"""The benchmark's plumbing: FLOP formula, reference trainers, flag checks, targets, and one tiny
end-to-end run over every section whose JSON must hold only positive, finite measurements.
No timing thresholds here."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import baselines, benchmark
from jnn import core
from jnn.errors import InputError
from jnn.mlp import dense_params, mlp

SIZES = [784, 256, 128, 64, 10]
TINY = [
    "--quick",
    "--train-examples", "64",
    "--eval-examples", "32",
    "--reps", "1",
    "--warmup", "0",
    "--models", "2",
    "--vgg-images", "64",
    "--cnn-steps", "1",
    "--devices", "1,2",
]  # fmt: skip


def test_flop_formula_counts_each_matmul():
    # 784-256-128-64-10: MACs 242,304; the first layer's input gradient (784*256) is not needed.
    assert benchmark.macs_per_example(SIZES) == 242_304
    assert benchmark.forward_flops_per_example(SIZES) == 484_608
    assert benchmark.backward_flops_per_example(SIZES) == 4 * 242_304 - 2 * 784 * 256
    assert benchmark.train_flops_per_example(SIZES) == 1_052_416
    # one layer: forward x@w (2*a*b), backward only the weight gradient x^T dy (2*a*b)
    assert benchmark.train_flops_per_example([5, 3]) == 4 * 15


def _batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def test_numpy_reference_matches_jnn_manual_backprop():
    model = mlp(SIZES, "relu", "he")
    _, params, state = model.init(jax.random.key(0), (784,))
    x, y = _batch()
    step = jax.jit(core.value_and_grad(model))  # one compile, not one per eager op
    (loss, logits, _), grads = step(params, state, jnp.asarray(x), jnp.asarray(y))
    grads = dense_params(grads)
    ref = baselines.NumpyMLP(baselines.weights_from_jnn(dense_params(params)))
    np.testing.assert_allclose(ref.predict(x), np.asarray(logits), rtol=1e-4, atol=1e-5)
    ref_loss, ref_grads = ref.loss_and_grads(x, y)
    assert ref_loss == pytest.approx(float(loss), rel=1e-5)
    for g, (gw, gb) in zip(grads, ref_grads):
        assert gw.dtype == np.float32
        np.testing.assert_allclose(gw, np.asarray(g["w"]), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gb, np.asarray(g["b"]), rtol=1e-4, atol=1e-6)


def test_numpy_epoch_learns_and_stays_float32():
    x, y = _batch(320, seed=1)
    y = (x[:, :392].sum(1) > x[:, 392:].sum(1)).astype(np.int32)  # a learnable rule
    model = baselines.NumpyMLP(baselines.random_weights(SIZES, 0), lr=0.05)
    first = model.train_epoch(x, y)
    for _ in range(3):
        last = model.train_epoch(x, y)
    assert last < first
    assert all(w.dtype == np.float32 and b.dtype == np.float32 for w, b in model.weights)


def test_torch_reference_matches_jnn_forward():
    ok, why = baselines.torch_status()
    if not ok:
        pytest.skip(why)
    net = mlp(SIZES, "relu", "he")
    _, params, state = net.init(jax.random.key(1), (784,))
    x, y = _batch()
    model = baselines.TorchMLP(baselines.weights_from_jnn(dense_params(params)), device="cpu")
    xt, yt = model.to_device(x, y)
    logits = jax.jit(core.apply, static_argnums=0)(net, params, state, jnp.asarray(x))
    np.testing.assert_allclose(model.predict(xt).numpy(), np.asarray(logits), rtol=1e-4, atol=1e-5)
    assert math.isfinite(model.train_epoch(xt, yt))


def test_flags_fill_quick_defaults_and_refuse_what_cannot_work():
    cfg = benchmark.parse(["--quick"])
    assert (cfg.reps, cfg.train_examples, cfg.models, cfg.cnn_steps) == (3, 4_800, (1, 4), 2)
    assert (cfg.study_epochs, benchmark.parse([]).study_epochs) == (2, 3)
    assert cfg.small and not benchmark.parse([]).small and cfg.sections == benchmark.SECTIONS
    assert benchmark.parse_invocation(["--quick"]).out == "runs/benchmark-quick"  # as lab names it
    full = benchmark.parse(["--sections", "cnn, vgg", "--reps", "2"])
    assert (full.reps, full.train_examples, full.sections) == (2, 48_000, ("cnn", "vgg"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        full.reps = 3  # type: ignore[misc]
    for argv, message in (
        (["--reps", "0"], "--reps must be an integer in [1, 1,000], got 0"),
        (["--warmup", "-1"], "--warmup must be an integer in [0, 100]"),
        (["--train-examples", "0"], "--train-examples must be an integer in [32,"),
        (["--eval-examples", "0"], "--eval-examples must be an integer in [1,"),
        (["--sections", ""], "--sections takes a comma-separated list without gaps"),
        (["--sections", "train_epoch,gpu"], "--sections must be one of train_epoch,"),
        (["--models", "1,0"], "--models must be an integer in [1, 1,024], got 0"),
        (["--devices", "x"], "--devices takes"),
        (["--models", "1,1"], "--models lists 1 more than once"),
        (["--sections", "cnn,cnn"], "--sections lists cnn more than once"),
        (["--cnn-steps", "0"], "--cnn-steps must be an integer in [1, 1,000]"),
        (["--vgg-images", "0"], "--vgg-images must be an integer in [1, 100,000]"),
        (["--study-epochs", "1"], "--study-epochs must be an integer in [2, 100], got 1"),
        (["--seed", str(2**40)], "--seed must be an integer in [0,"),
        (["--data", "mnist"], "--data must be one of auto, fashion, synthetic"),
        (["--torch-device", "tpu"], "--torch-device must be one of auto, cpu, cuda"),
    ):
        with pytest.raises(InputError, match=re.escape(message)):
            benchmark.parse(argv)


def test_a_results_config_reruns_it(tmp_path):
    """results.json's ``config`` block is the Config itself (what the run fixed or resolved is
    in ``setup``), so ``--config results.json`` gives the same config back; flags override it."""
    cfg = benchmark.parse(["--quick", "--sections", "cnn,vgg", "--seed", "7"])
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": dataclasses.asdict(cfg), "setup": {"batch_size": 32}}))
    assert benchmark.parse(["--config", str(path)]) == cfg
    assert benchmark.parse(["--config", str(path), "--reps", "2"]).reps == 2


def test_bad_arguments_fail_in_one_line(capsys):
    rc = benchmark.main(["--models", "0", "--out", "/tmp/unused-jnn-bench"])
    assert rc == 2
    assert "error: --models" in capsys.readouterr().err


def _sections_with(**ratios):
    def sec(**results):
        return {"status": "ok", "results": {k: dict(v) for k, v in results.items()}}

    return {
        "train_epoch": sec(
            jnn_scan_manual={"median_s": 1.0, "fraction_of_xla_ceiling": 0.5},
            jnn_scan_autodiff={"median_s": ratios["mlp_auto"]},
            torch_eager={"time_vs_jnn": ratios["torch"]},
            numpy_loop={"time_vs_jnn": ratios["numpy"]},
        ),
        "models_per_program": sec(
            **{"4_vmap": {"speedup_vs_1": 1.7, "fraction_of_xla_ceiling": 0.8}}
        ),
        "vgg": sec(torch_eager={"time_vs_jnn": 1.1}),
        "cnn": {
            "status": "ok",
            "ratios": {"manual_over_autodiff": ratios["cnn"], "torch_over_jnn": 1.6},
            "results": {"jnn_manual": {"fraction_of_xla_ceiling": 0.3}},
        },
        "ceiling": {"status": "skipped", "reason": "test"},
    }


def test_targets_follow_the_issue_thresholds():
    got = {t["name"]: t for t in benchmark.targets(
        _sections_with(mlp_auto=0.9, torch=2.4, numpy=1.6, cnn=1.09))}  # fmt: skip
    assert got["jnn vs PyTorch eager"]["met"] is False  # 2.5x needed
    assert got["jnn vs numpy loop"]["met"] is True
    assert got["MLP manual backprop vs jax.grad"]["measured"] == pytest.approx(1 / 0.9)
    assert got["MLP manual backprop vs jax.grad"]["met"] is False  # 1.11 > 1.05
    assert got["CNN manual backprop vs jax.grad"]["met"] is True  # 1.09 <= 1.10
    assert got["models per program"]["met"] is True
    share = got["share of the matmul ceiling"]
    assert share["measured"] == 0.8 and share["met"] is True and "4_vmap" in share["note"]
    assert got["VGG16 features vs PyTorch eager"]["met"] is False  # 1.2x needed
    assert got["CNN manual step vs PyTorch eager"]["met"] is True  # 1.6 >= 1.5
    assert got["CNN manual step share of the matmul ceiling"]["met"] is False  # 0.3 < 0.4
    assert got["VGG16 features vs PyTorch eager (issue 20)"]["met"] is True  # 1.1 >= 1.0
    assert not any("judged" in t for t in got.values())  # no load recorded: nothing withheld
    none = benchmark.targets({})
    assert len(none) == 10 and all(t["met"] is None and t["measured"] is None for t in none)


def test_pytorch_targets_are_not_judged_on_a_busy_machine():
    """A CNN or VGG section timed while other processes kept the CPU busy withholds its PyTorch
    verdicts and the CNN's ceiling share ("not judged" in results.md); the jax.grad ratio, two
    jnn steps interleaved, is still judged."""
    from bench.benchmark.render import targets_md

    sections = _sections_with(mlp_auto=0.9, torch=2.4, numpy=1.6, cnn=1.09)
    busy = {"judged": False, "why": "other processes used 1.10 cores (quiet: <= 0.25)"}
    sections["cnn"]["load"] = sections["vgg"]["load"] = busy
    got = {t["name"]: t for t in benchmark.targets(sections)}
    for name in ("CNN manual step vs PyTorch eager", "VGG16 features vs PyTorch eager",
                 "VGG16 features vs PyTorch eager (issue 20)",
                 "CNN manual step share of the matmul ceiling"):  # fmt: skip
        assert got[name]["judged"] is False and "1.10 cores" in got[name]["note"]
    assert "judged" not in got["CNN manual backprop vs jax.grad"]
    text = "\n".join(targets_md({"targets": list(got.values())}))
    assert text.count("not judged") == 4
    quiet = {"judged": True, "why": "other processes used 0.05 cores (quiet: <= 0.25)"}
    sections["cnn"]["load"] = quiet
    cnn_torch = {t["name"]: t for t in benchmark.targets(sections)}[
        "CNN manual step vs PyTorch eager"
    ]
    assert cnn_torch["judged"] is True and cnn_torch["met"] is True


def test_ceiling_shares_are_not_judged_above_the_ceiling():
    """A case above 100% of the measured ceiling (an AMD EPYC VM: VGG16's convolutions ran
    faster than its 2048^3 XLA matmul) means the ceiling is not this machine's: the share
    targets say so instead of met/missed, and results.md warns."""
    from bench.benchmark.render import warnings_md

    sections = _sections_with(mlp_auto=0.9, torch=2.4, numpy=1.6, cnn=1.09)
    assert not warnings_md({"sections": sections})
    sections["vgg"]["results"]["jnn"] = {"fraction_of_xla_ceiling": 1.06}
    got = {t["name"]: t for t in benchmark.targets(sections)}
    for name in ("share of the matmul ceiling", "CNN manual step share of the matmul ceiling"):
        assert got[name]["judged"] is False and "above 100%" in got[name]["note"], name
    assert "judged" not in got["models per program"]
    assert "above 100% of the matmul ceiling" in "\n".join(warnings_md({"sections": sections}))


def test_pytorch_targets_are_not_judged_across_devices():
    """jnn on a GPU against PyTorch on the CPU (or the reverse) is no comparison of the two
    implementations: every PyTorch target says so instead of met/missed; same-kind devices
    (JAX's "gpu" is torch's "cuda") and a missing torch judge as before."""
    sections = _sections_with(mlp_auto=0.9, torch=2.4, numpy=1.6, cnn=1.09)
    torch_targets = ("jnn vs PyTorch eager", "VGG16 features vs PyTorch eager",
                     "VGG16 features vs PyTorch eager (issue 20)",
                     "CNN manual step vs PyTorch eager")  # fmt: skip
    for jnn_on, torch_on in (("gpu", "cpu"), ("cpu", "cuda")):
        got = {
            t["name"]: t for t in benchmark.targets(sections, {"jnn": jnn_on, "torch": torch_on})
        }
        for name in torch_targets:
            assert got[name]["judged"] is False, name
            assert f"jnn on {jnn_on}, PyTorch on {torch_on}" in got[name]["note"]
        assert "judged" not in got["jnn vs numpy loop"]  # numpy is the CPU reference by design
    for where in ({"jnn": "gpu", "torch": "cuda"}, {"jnn": "cpu", "torch": "cpu"},
                  {"jnn": "gpu", "torch": None}):  # fmt: skip
        got = {t["name"]: t for t in benchmark.targets(sections, where)}
        assert not any("judged" in got[name] for name in torch_targets), where


def test_float32_matmul_is_classified_and_torch_matched():
    """What JAX's float32 matmul computes follows its precision setting on a GPU (TF32 unless
    "highest"/"float32") and is float32 on the CPU whatever the setting; on the CPU PyTorch's
    settings are left alone, and a name the mapping does not know is refused."""
    from jnn.workdir import device_info, float32_matmul

    assert float32_matmul("gpu", None) == "tf32"
    assert float32_matmul("gpu", "default") == "tf32"
    assert float32_matmul("gpu", "highest") == "float32"
    assert float32_matmul("gpu", "bfloat16") == "bfloat16"
    assert float32_matmul("cpu", "bfloat16") == "float32"
    assert float32_matmul("tpu", None) == "bfloat16"  # one bfloat16 pass: a TPU's default
    assert float32_matmul("tpu", "high") == "bfloat16_3x"
    assert device_info()["float32_matmul"] == float32_matmul() == "float32"  # this CPU
    torch = pytest.importorskip("torch")
    before = torch.get_float32_matmul_precision()  # the CPU: nothing to match
    got = baselines.match_torch_precision("cpu", "tf32")
    assert got["float32_matmul_precision"] == before == torch.get_float32_matmul_precision()
    assert got["matched_to_jax"] == "tf32"
    with pytest.raises(InputError, match="one of float32, tf32, bfloat16, bfloat16_3x, got 'tf64'"):
        baselines.match_torch_precision("cpu", "tf64")


def test_machine_load_counts_other_processes_cpu():
    """machine_load's other_cores is the CPU other processes took: this process busy alone
    (spinning) must not count as someone else's load."""
    import time

    from bench.benchmark.cnn import QUIET_OTHER_CORES, machine_load

    with machine_load() as load:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert set(load) >= {"load_start", "load_end", "judged", "why"}
    if "other_cores" in load:  # Linux: /proc/stat
        assert load["other_cores"] >= 0 and str(QUIET_OTHER_CORES) in load["why"]


def test_ceiling_share_counts_the_model_axis_over_devices():
    """The devices section's batch-32 rows enter the best share (the target names the model
    axis on both cores); its batch-256 rows, another training, do not."""
    sizes = [784, 256, 128, 64, 10]
    gflop_per_epoch = benchmark.train_flops_per_example(sizes) * 48_000 / 1e9
    run2 = {
        "per_device_models": {"batch_size": 32, "model_epochs_per_s": 70 / gflop_per_epoch},
        "data_parallel": {"32": {"examples_per_s": 1.0}, "256": {"examples_per_s": 1e9}},
    }
    sections = {
        "ceiling": {"status": "ok", "xla_ceiling_gflops": 100.0},
        "devices": {"status": "ok", "measured": {
            "setup": {"sizes": sizes, "num_examples": 48_000}, "runs": {"2": run2}}},
        "models_per_program": {"results": {"1_vmap": {"fraction_of_xla_ceiling": 0.5}}},
    }  # fmt: skip
    share = {t["name"]: t for t in benchmark.targets(sections)}["share of the matmul ceiling"]
    assert share["measured"] == pytest.approx(0.70) and share["met"] is False
    assert share["note"] == "best: devices/per_device_models@2"


def test_cnn_torch_twin_has_the_same_parameter_count():
    torch = pytest.importorskip("torch")
    from bench.benchmark import cnn
    from jnn import models

    model = models.build("cnn")
    params = jax.eval_shape(lambda key: model.init(key, (28, 28, 1))[1], jax.random.key(0))
    jnn_count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    net = cnn.torch_net("cpu")
    assert sum(p.numel() for p in net.parameters()) == jnn_count
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _numbers(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


OWN_SECTIONS = ("ceiling", "train_epoch", "evaluation", "models_per_program", "cnn")
# configuration, op counts, and the load (other processes' CPU may be exactly 0)
NOT_MEASUREMENTS = ("/sklearn_settings/", "/hlo_ops/", "/load/")


def _fake_scaling(devices=(1, 2, 4), small=False, **kwargs):
    runs = {str(d): {"devices": d, "platform": "cpu"} for d in devices}
    return {"config": {"small": small}, "note": "", "runs": runs, "summary": []}


def _preset_json(**changes):
    """A results.json of the main job's preset as jnn.summary.result_dict writes it: 4 models
    on 2 devices, 3 epochs (the first with its compile), 48,600 training rows, batch 32."""
    result = {
        "study": "mlp_sweep",
        "status": "ok",
        "config": {"batch_size": 32, "inits": ["normal"], "lrs": [0.1]},
        "models": [{"name": a} for a in ("relu", "sigmoid", "linear", "tanh")],
        "layout": "map",
        "layout_seconds": {"map": 0.5, "vmap": 0.6},
        "devices_used": ["cpu:0", "cpu:1"],
        "set_sizes": [48_600, 5_400, 6_000],
        "timing": {"model_epochs": 12, "train_s": 5.0, "model_epochs_per_s": 2.4,
                   "epoch_seconds": [3.0, 1.0, 1.0]},
    }  # fmt: skip
    return result | changes


def _fake_preset(text=None, returncode=0):
    """A stand-in for study.run_preset: writes ``text`` (default: _preset_json) as the run's
    results.json, and returns like the real one."""

    def run(epochs, out, timeout=None):
        out.mkdir(parents=True)
        body = json.dumps(_preset_json()) if text is None else text
        (out / "results.json").write_text(body)
        return {"returncode": returncode, "wall_s": 7.0, "stderr": "fake stderr line"}

    return run


def _fake_run_one(num_devices, small=False, platform=None, models=None, timeout=900):
    m = num_devices * -(-(models or 4) // num_devices)
    pdm = {"models": m, "batch_size": 32, "first_epoch_s": 2.0, "epoch_s": 1.0,
           "model_epochs_per_s": float(m)}  # fmt: skip
    return {"devices": num_devices, "platform": "cpu", "per_device_models": pdm}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One tiny run of every section (bench.scaling's subprocesses faked: see below)."""
    from bench import scaling
    from bench.benchmark import study

    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scaling, "measure_scaling", _fake_scaling)
        mp.setattr(scaling, "run_one", _fake_run_one)
        mp.setattr(study, "run_preset", _fake_preset())
        mp.setattr(scaling, "markdown", lambda result: "| fake scaling |\n")
        assert benchmark.main([*TINY, "--out", str(out), "--overwrite"]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_chart(quick_run):
    out, result = quick_run
    text = (out / "results.md").read_text()
    assert text.startswith("# jnn benchmark") and "## 6. CNN train step" in text
    assert "| fake scaling |" in text
    assert "## 7. The main job's preset beside per-device models" in text
    assert result["sections"]["study"]["per_device_source"].startswith("measured by this section")
    assert (out / "benchmark.png").stat().st_size > 1000
    assert set(result["sections"]) == set(benchmark.SECTIONS)
    assert result["flops"]["train_per_example"] == 1_052_416
    assert result["versions"] == result["environment"]["versions"]  # harness.stamp()
    env = result["environment"]
    assert env["jax"]["backend"] == jax.default_backend()
    assert "torch" in env and "blas" in env and "env" in env["device"]
    assert len(result["targets"]) == 10
    assert result["sections"]["devices"]["measured"]["config"] == {"small": True}


@pytest.mark.slow
def test_quick_run_measurements_are_positive_and_finite(quick_run):
    _, result = quick_run
    secs = result["sections"]
    for name in OWN_SECTIONS:
        assert secs[name]["status"] == "ok", secs[name]
    expected = {
        "train_epoch": {"jnn_scan_manual", "jnn_scan_autodiff", "jnn_step_loop", "numpy_loop",
                        "sklearn_mlp"},
        "evaluation": {"jnn_forward", "numpy_loop", "sklearn_mlp"},
        "ceiling": {"xla_matmul", "numpy_matmul"},
        "models_per_program": {"1_plain", "2_vmap"},
        "cnn": {"jnn_manual", "jnn_autodiff"},
    }  # fmt: skip
    torch_ok = baselines.torch_status()[0]
    for name, cases in expected.items():
        got = set(secs[name]["results"])
        assert cases <= got, (name, got)
        if torch_ok and name in ("train_epoch", "evaluation", "cnn"):
            assert "torch_eager" in got
        for case in secs[name]["results"].values():
            assert case["median_s"] > 0
    checked = 0
    for name in OWN_SECTIONS:  # every number in these sections is a size, count or measurement
        for path, value in _numbers(secs[name]):
            if any(part in path for part in NOT_MEASUREMENTS):
                continue
            assert math.isfinite(value) and value > 0, f"{name}{path} = {value}"
            checked += 1
    assert checked > 50
    for t in result["targets"]:
        assert t["met"] in (True, False, None)
        if t["measured"] is not None:
            assert math.isfinite(t["measured"]) and t["measured"] > 0


@pytest.mark.slow
def test_cnn_section_compares_the_same_step_both_ways(quick_run):
    _, result = quick_run
    sec = result["sections"]["cnn"]
    assert sec["batch_size"] == 128 and sec["steps_per_sample"] == 1
    r = sec["results"]
    assert sec["ratios"]["manual_over_autodiff"] == pytest.approx(
        r["jnn_manual"]["median_s"] / r["jnn_autodiff"]["median_s"]
    )
    counts = sec["hlo_ops"]
    # jax.grad: two 3x3 convs' forwards, the 2nd's dx and both dw as convolutions; manual backprop
    # (lowering "auto" on CPU) makes the kernel gradients GEMMs, so one dot more per conv layer
    assert counts["jnn_autodiff"]["convolution"] >= 4 and counts["jnn_autodiff"]["dot"] >= 2
    plans = {(p["forward"], p["input_grad"], p["kernel_grad"]) for p in sec["layers"]}
    assert len(sec["layers"]) == 2 and all(p["patch_bytes"] > 0 for p in sec["layers"])
    if jax.default_backend() == "cpu":
        assert plans == {("conv", "conv", "gemm")}
        assert counts["jnn_manual"]["convolution"] >= 3 and counts["jnn_manual"]["dot"] >= 4
    r = sec["results"]["jnn_manual"]
    assert r["gflops"] == pytest.approx(sec["flops"]["train_step"] / r["median_s"] / 1e9)
    # valid taps of a 3x3 SAME conv on an n x n map: (3n - 2)^2 per (in, out) channel pair
    conv_macs = (3 * 28 - 2) ** 2 * 1 * 32 + (3 * 14 - 2) ** 2 * 32 * 64  # 215,168 + 3,276,800
    assert sec["flops"]["forward"] == 2 * 128 * (conv_macs + 3136 * 128 + 128 * 10)
    assert "load_start" in sec["load"] and isinstance(sec["load"]["judged"], bool)


@pytest.mark.slow
def test_vgg_section_ran_or_says_why(quick_run):
    _, result = quick_run
    sec = result["sections"]["vgg"]
    if sec["status"] != "ok":  # experiments.vgg_transfer is another module; skips must say why
        assert sec["reason"]
        return
    assert sec["results"]["jnn"]["images_per_s"] > 0
    if baselines.torch_status()[0]:
        assert sec["results"]["torch_eager"]["images_per_s"] > 0
    assert sec["flops_per_image"] == 494_618_112  # VGG16 at 32x32, jnn.conv_cost's valid taps
    assert [r["layer"] for r in sec["layers"]][0] == "block1_conv1" and len(sec["layers"]) == 13
    r = sec["results"]["jnn"]
    assert r["gflops"] == pytest.approx(494_618_112 * r["images_per_s"] / 1e9)
    assert isinstance(sec["load"]["judged"], bool)


def test_missing_torch_is_skipped_with_a_reason(monkeypatch):
    from bench.benchmark import ceiling, evaluation

    monkeypatch.setattr(baselines, "torch_status", lambda: (False, "torch not installed (test)"))
    cfg = benchmark.parse([*TINY, "--sections", "ceiling,evaluation"])
    ctx, env, _ = benchmark.context(cfg)
    assert ctx.torch_device is None and env["torch"] == {
        "unavailable": "torch not installed (test)"
    }
    for measure, case in ((evaluation.measure, "torch_eager"), (ceiling.measure, "torch_matmul")):
        sec = measure(cfg, ctx)
        assert case not in sec["results"]
        assert sec["skipped"][case] == "torch not installed (test)"
    by_name = {t["name"]: t for t in benchmark.targets({})}
    assert by_name["jnn vs PyTorch eager"]["met"] is None


def test_rerun_needs_overwrite_and_never_replaces_a_foreign_folder(tmp_path, monkeypatch, capsys):
    fake = {"status": "ok", "results": {}, "examples": 1, "skipped": {}}
    monkeypatch.setitem(benchmark.MEASURES, "evaluation", lambda cfg, ctx: dict(fake))
    args = [*TINY, "--sections", "evaluation"]
    out = tmp_path / "out"
    assert benchmark.main([*args, "--out", str(out)]) == 0
    assert benchmark.main([*args, "--out", str(out)]) == 2  # holds a run: --overwrite needed
    assert "already holds another run" in capsys.readouterr().err
    assert benchmark.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["sections"]["evaluation"] == {
        **fake, "section_s": pytest.approx(0, abs=1)}  # fmt: skip
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep")
    assert benchmark.main([*args, "--out", str(tmp_path / "mine"), "--overwrite"]) == 2
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep"


def test_devices_section_reports_experiments_scaling(monkeypatch):
    from bench import scaling
    from bench.benchmark import devices

    calls = []

    def fake_measure(devices=(1, 2, 4), small=False, **kwargs):
        calls.append((tuple(devices), small))
        return _fake_scaling(devices, small)

    monkeypatch.setattr(scaling, "measure_scaling", fake_measure)
    monkeypatch.setattr(scaling, "markdown", lambda result: "| fake |\n")
    sec = devices.measure(benchmark.parse(["--quick", "--devices", "1,2,4"]))
    assert calls == [((1, 2, 4), True)]
    assert sec["status"] == "ok" and sec["markdown"] == "| fake |\n"
    assert sec["measured"]["runs"]["4"]["devices"] == 4


def test_the_benchmark_reads_what_measure_scaling_writes(monkeypatch):
    """The seam between bench.scaling and the benchmark: the real measure_scaling (workers
    faked) gives the study section its per-device figure and the targets their ceiling shares
    (both read the fixed settings from "setup"; a renamed key made them vanish silently)."""
    import importlib

    from bench import scaling
    from bench.benchmark import study

    targets = importlib.import_module("bench.benchmark.targets")  # the package exports targets()

    def run_one(num_devices, small=False, platform=None, models=None, timeout=900):
        out = _fake_run_one(num_devices, small, platform, models, timeout)
        rates = {"32": {"examples_per_s": 1e4}, "256": {"examples_per_s": 2e4}}
        return out | {"data_parallel": rates}

    monkeypatch.setattr(scaling, "run_one", run_one)
    measured = scaling.measure_scaling(devices=(1, 2), small=True)
    assert measured["config"] == {"devices": (1, 2), "small": True, "platform": None,
                                  "models": None}  # fmt: skip
    found = study.per_device_from(measured, 2)
    assert found is not None and found["models"] == 4
    sections = {"ceiling": {"status": "ok", "xla_ceiling_gflops": 100.0},
                "devices": {"status": "ok", "measured": measured}}  # fmt: skip
    shares = targets._device_shares(sections)
    assert set(shares) == {f"devices/{k}@{d}" for k in ("per_device_models", "data_parallel_b32")
                           for d in ("1", "2")}  # fmt: skip


def test_scaling_checks_its_arguments_and_reports_a_timeout():
    """bench.scaling's API refuses what its command line refuses (one line), and a worker that
    runs past its time limit is an error entry, not a traceback out of the benchmark."""
    from bench import scaling
    from jnn.config import ConfigError

    for call in (lambda: scaling.run_one(0), lambda: scaling.measure_scaling(devices=[])):
        with pytest.raises(ConfigError):
            call()
    assert scaling.run_one(1, small=True, timeout=0.01) == {
        "devices": 1, "error": "no result within 0.01 s (timed out)"}  # fmt: skip


def test_study_section_reads_the_presets_rate_and_refuses_a_bad_results_json(tmp_path):
    """Steady model-epochs/s over epochs 2..E (the first compiles), the engine's own over all,
    and model-examples/s over the full batches; a missing or garbled file is one line."""
    from bench.benchmark import study

    path = tmp_path / "results.json"
    path.write_text(json.dumps(_preset_json()))
    got = study.read_preset(path)
    assert (got["models"], got["epochs"], got["devices"], got["layout"]) == (4, 3, 2, "map")
    assert got["model_epochs_per_s_steady"] == pytest.approx(4.0)  # 4 models x 2 epochs / 2 s
    assert got["model_epochs_per_s_engine"] == pytest.approx(2.4)  # 12 model-epochs / 5 s
    assert got["examples_per_epoch"] == 48_576  # 1,518 full batches of 32
    assert got["model_examples_per_s"] == pytest.approx(4.0 * 48_576)
    path.write_text(json.dumps(_preset_json(timing={"epoch_seconds": [3.0]})))
    one = study.read_preset(path)  # one epoch: the engine's figure, compile included, says so
    assert not one["steady"] and one["model_epochs_per_s"] == pytest.approx(4 / 3.0)
    bad = {
        "{ not json": "is unreadable",
        "[1, 2]": "is not a JSON object",
        json.dumps(_preset_json(timing=None)): "lacks `timing` or `config`",
        json.dumps(_preset_json(timing={"epoch_seconds": []})): "`timing.epoch_seconds`",
        json.dumps(_preset_json(timing={"epoch_seconds": [1.0, -1.0]})): "`timing.epoch_seconds`",
        json.dumps(_preset_json(models=[])): "`models` must list",
        json.dumps(_preset_json(set_sizes=["48600"])): "`set_sizes` must start",
        json.dumps(_preset_json(devices_used=[])): "`devices_used`",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(InputError, match=re.escape(message)) as err:
            study.read_preset(path)
        assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="wrote no results.json"):
        study.read_preset(tmp_path / "missing.json")


def _study_ctx(scaling=None):
    from bench.benchmark.common import Context

    return Context({}, None, "", "", scaling=scaling)


def test_study_section_puts_the_preset_beside_this_runs_per_device_models(monkeypatch):
    """With the devices section's figure for the preset's 2 devices and 4 models, the section
    reuses it (no scaling subprocess), divides in model-examples/s and renders both rows."""
    from bench import scaling
    from bench.benchmark import study
    from bench.benchmark.render import sections_md
    from bench.benchmark.render import study as study_md

    monkeypatch.setattr(study, "run_preset", _fake_preset())
    monkeypatch.setattr(scaling, "run_one", lambda *a, **k: pytest.fail("figure not reused"))
    measured = {"setup": {"num_examples": 48_000}, "runs": {"2": _fake_run_one(2, models=4)}}
    cfg = benchmark.parse(["--quick", "--sections", "study"])
    sec = study.measure(cfg, _study_ctx(measured))
    assert sec["status"] == "ok" and sec["per_device_source"].startswith("this run's devices")
    # preset 4.0 model-epochs/s x 48,576 rows; scaling 4.0 x 48,000
    assert sec["ratio"] == pytest.approx(48_576 / 48_000)
    assert sec["command"] == "python -m experiments.mlp_sweep --no-sklearn --epochs 2 --out TMP"
    assert {"load_start", "judged", "why"} <= set(sec["load"])
    sec["load"] = {"load_start": 0.1, "load_end": 0.2, "judged": True, "why": "quiet"}
    text = "\n".join(sections_md({"sections": {"study": sec}, "config": {}}))
    assert "## 7. The main job's preset beside per-device models" in text
    assert "preset / per-device models: 1.012x" in text and "ratio judged" in text
    assert "| map (probe: map 0.5 s, vmap 0.6 s) |" in text
    assert "| 48,576 | 4 | 194,304 |" in text and "| 48,000 | 4 | 192,000 |" in text
    sec["load"] = {"load_start": 3.5, "judged": False, "why": "other processes used 1.50 cores"}
    busy = "\n".join(study_md(sec, {}))
    assert "ratio NOT JUDGED (machine busy)" in busy


def test_study_section_measures_the_figure_itself_or_says_why_it_failed(monkeypatch):
    """Without a matching devices figure it runs scaling.run_one for the preset's devices and
    models; a preset that failed, or left a garbled results.json, is a failed section whose
    heading gives the reason."""
    from bench import scaling
    from bench.benchmark import study
    from bench.benchmark.render import sections_md

    calls = []

    def run_one(num_devices, small=False, models=None, **kwargs):
        calls.append((num_devices, small, models))
        return _fake_run_one(num_devices, small, models=models)

    monkeypatch.setattr(scaling, "run_one", run_one)
    monkeypatch.setattr(study, "run_preset", _fake_preset())
    cfg = benchmark.parse(["--quick", "--sections", "study"])
    sec = study.measure(cfg, _study_ctx({"runs": {"1": _fake_run_one(1)}}))
    assert calls == [(2, True, 4)] and sec["status"] == "ok"
    assert sec["per_device_models"]["examples_per_epoch"] == scaling.QUICK_EXAMPLES
    for fake, reason in (
        (_fake_preset(returncode=2), "the preset exited 2: fake stderr line"),
        (_fake_preset(text="{ garbled"), "is unreadable"),
    ):
        monkeypatch.setattr(study, "run_preset", fake)
        sec = study.measure(cfg, _study_ctx())
        assert sec["status"] == "failed" and reason in sec["reason"]
        text = "\n".join(sections_md({"sections": {"study": sec}, "config": {}}))
        assert "## 7. The main job's preset" in text and f"Skipped: {sec['reason']}" in text

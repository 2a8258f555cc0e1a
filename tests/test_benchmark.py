"""The benchmark's plumbing: FLOP formula, reference trainers, and a tiny end-to-end run whose
JSON must hold only positive, finite measurements. No timing thresholds here."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import baselines, benchmark
from jnn import core
from jnn.mlp import dense_params, mlp

SIZES = [784, 256, 128, 64, 10]
TINY = [
    "--quick",
    "--train-examples", "320",
    "--eval-examples", "200",
    "--reps", "2",
    "--models", "1,2",
    "--vgg-images", "64",
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
    step = core.value_and_grad(model)
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
    np.testing.assert_allclose(
        model.predict(xt).numpy(), np.asarray(core.apply(net, params, state, jnp.asarray(x))),
        rtol=1e-4, atol=1e-5,
    )  # fmt: skip
    assert math.isfinite(model.train_epoch(xt, yt))


def test_sklearn_reference_is_plain_sgd_and_runs_one_epoch():
    model = baselines.SklearnMLP([256, 128, 64], lr=0.1, batch_size=32)
    s = model.settings()
    assert s["solver"] == "sgd" and s["momentum"] == 0 and s["nesterovs_momentum"] is False
    assert s["alpha"] == 0 and s["batch_size"] == 32 and s["learning_rate_init"] == 0.1
    x, y = _batch(96)
    assert math.isfinite(model.train_epoch(x, y))
    assert model.clf.n_iter_ == 1  # exactly one epoch per call
    assert model.predict(x).shape == (96, 10)


def _numbers(tree, path=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


OWN_SECTIONS = ("ceiling", "train_epoch", "evaluation", "models_per_program")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    sections = ",".join(s for s in benchmark.SECTIONS if s != "devices")  # see test below
    assert benchmark.main([*TINY, "--sections", sections, "--out", str(out)]) == 0
    return out, json.loads((out / "benchmark.json").read_text())


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_chart(quick_run):
    out, result = quick_run
    assert (out / "benchmark.md").read_text().startswith("# jnn benchmark")
    assert (out / "benchmark.png").stat().st_size > 1000
    assert set(result["sections"]) == set(benchmark.SECTIONS)
    assert result["flops"]["train_per_example"] == 1_052_416
    env = result["environment"]
    assert env["jax"]["backend"] == jax.default_backend()
    assert "torch" in env and "blas" in env and "env" in env["device"]
    assert len(result["targets"]) == 5


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
        "models_per_program": {"1_plain", "1_vmap", "2_vmap"},
    }  # fmt: skip
    torch_ok = baselines.torch_status()[0]
    for name, cases in expected.items():
        got = set(secs[name]["results"])
        assert cases <= got, (name, got)
        if torch_ok and name in ("train_epoch", "evaluation"):
            assert "torch_eager" in got
        for case in secs[name]["results"].values():
            assert case["median_s"] > 0
    checked = 0
    for name in OWN_SECTIONS:  # every number in these sections is a size, count or measurement
        for path, value in _numbers(secs[name]):
            if "/sklearn_settings/" in path:  # configuration, not a measurement
                continue
            assert math.isfinite(value) and value > 0, f"{name}{path} = {value}"
            checked += 1
    assert checked > 50
    for name in ("vgg", "devices"):  # built on other modules: rates must still be sane
        if secs[name]["status"] != "ok":
            assert secs[name]["reason"]  # a skip always says why
            continue
        for path, value in _numbers(secs[name]):
            if path.endswith(("per_s", "median_s")):
                assert math.isfinite(value) and value > 0, f"{name}{path} = {value}"
    for t in result["targets"]:
        assert t["met"] in (True, False, None)
        if t["measured"] is not None:
            assert math.isfinite(t["measured"]) and t["measured"] > 0


@pytest.mark.slow
def test_missing_torch_is_skipped_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(baselines, "torch_status", lambda: (False, "torch not installed (test)"))
    args = [*TINY, "--sections", "ceiling,evaluation", "--out", str(tmp_path)]
    assert benchmark.main(args) == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    for name, case in (("evaluation", "torch_eager"), ("ceiling", "torch_matmul")):
        sec = result["sections"][name]
        assert case not in sec["results"]
        assert sec["skipped"][case] == "torch not installed (test)"
    assert result["sections"]["train_epoch"]["status"] == "skipped"
    assert result["environment"]["torch"] == {"unavailable": "torch not installed (test)"}
    by_name = {t["name"]: t for t in result["targets"]}
    assert by_name["jnn vs PyTorch eager"]["met"] is None


@pytest.mark.slow
def test_rerun_overwrites_own_output_but_refuses_foreign_folder(tmp_path):
    args = [*TINY, "--sections", "evaluation"]
    assert benchmark.main([*args, "--out", str(tmp_path)]) == 0
    assert benchmark.main([*args, "--out", str(tmp_path)]) == 0  # rerunnable
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(benchmark.RunDirError):
        benchmark.main([*args, "--out", str(tmp_path)])
    assert (tmp_path / "results.json").exists()


def test_bad_arguments_fail_in_one_line(capsys):
    rc = benchmark.cli_main(benchmark.main)(["--models", "0", "--out", "/tmp/unused-jnn-bench"])
    assert rc == 2
    assert "error: --models" in capsys.readouterr().err


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


def test_devices_section_reports_experiments_scaling(monkeypatch):
    scaling = pytest.importorskip("experiments.scaling")
    calls = []

    def fake_measure(devices=(1, 2, 4), quick=False, **kwargs):
        calls.append((tuple(devices), quick))
        runs = {str(d): {"devices": d, "platform": "cpu"} for d in devices}
        return {"config": {}, "note": "", "runs": runs, "summary": []}

    monkeypatch.setattr(scaling, "measure_scaling", fake_measure)
    monkeypatch.setattr(scaling, "markdown", lambda result: "| fake |\n")
    args = benchmark.parse_args(["--quick", "--devices", "1,2,4"])
    sec = benchmark.section_devices(args)
    assert calls == [((1, 2, 4), True)]
    assert sec["status"] == "ok" and sec["markdown"] == "| fake |\n"
    assert sec["measured"]["runs"]["4"]["devices"] == 4

"""jnn.study: M models in one program equal the same models trained alone; divergence masked per
model; resume bit-identical; the run folder (run.json, metrics.jsonl, checkpoints) written and
read back by the library; configs checked in one line.

Tolerance (CPU, float32): with ``layout="vmap"`` the batched matmuls may sum in another order
than one model alone: per-epoch losses differ by ~1 float32 ulp (measured 2.4e-7 absolute at
2.3) and params by ~5e-7 relative. The tests allow 2e-6 relative / 1e-5 absolute, for both
layouts (``"map"`` runs each model's own program and measured equal to the last digit here,
but that is a property of the CPU's code, not a promise). Masking, sharding and resuming are
compared bit for bit: they must not change any arithmetic.

Run as a script (``python tests/test_study.py``) it prints, as one JSON line, a study's numbers
with the model axis on 1 and on 2 forced host devices (used by the 2-device test below).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

from jnn import config as cfg_mod  # noqa: E402
from jnn import optim, parallel, runs, study, train  # noqa: E402
from jnn.checkpoints import CheckpointError  # noqa: E402
from jnn.errors import InputError  # noqa: E402
from jnn.mlp import mlp  # noqa: E402

EPOCHS = 2
SMALL = dict(hidden=(32, 16), epochs=EPOCHS, save_at=(EPOCHS,), checkpoint_every=1)
MIXED = dict(
    activations=("relu", "sigmoid", "tanh", "linear"),
    inits=("zero", "normal", "glorot"),
    lrs=(0.05, 0.2),
    layout="vmap",
)


def dataset(n: int = 256) -> study.Data:
    """Learnable synthetic data: x (n, 784) in [0, 1), y (n,) from a random linear teacher."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 784), dtype=np.float32)
    y = np.argmax(x @ rng.normal(size=(784, 10)).astype(np.float32), axis=1).astype(np.int32)
    return study.Data((x, y), (x[:96], y[:96]), (x[96:200], y[96:200]))


def config(**kw) -> study.StudyConfig:
    return study.StudyConfig(**{**SMALL, **kw})


def run(c: study.StudyConfig, workdir: Path, **kw) -> study.StudyResult:
    return study.run(c, workdir, data=dataset(), **kw)


def run_alone(c: study.StudyConfig, spec: study.ModelSpec) -> tuple:
    """The same model by the library's single-model path: (train losses, val losses, val
    accuracies, final params)."""
    d = dataset()
    model, opt = mlp(c.sizes, spec.activation, spec.init), optax.sgd(spec.lr)
    state = train.init_train_state(study.model_key(c.seed, spec.seed), model, opt, c.sizes[:1])
    epoch, evaluate = train.make_epoch_fn(model, opt, 32), train.make_eval_fn(model)
    rows = []
    for _ in range(c.epochs):
        state, m = epoch(state, *d.train)
        rows.append((float(m.loss), *map(float, evaluate(state.params, state.model_state, *d.val))))
    return (*np.array(rows).T, state.params)


def final_params(workdir: Path, c: study.StudyConfig) -> dict:
    store = study.open_store(c, workdir, create=False)
    return store.restore(c.epochs, study.checkpoint_like(c, c.epochs))["state"]


# The engine's vmapped program and one model alone compute the same sums in another order
# (XLA:CPU's batched dots): their final weights differ by float32 rounding grown over the
# training steps. Measured: 0 on an Intel Xeon, 3.6e-6 relative on an AMD EPYC; under a GPU's
# TF32 matmuls 6.8e-4, and a model trained on another model's data or rate differs by > 1e-2.
VMAP_REL = 1e-5


def assert_same_model(res: study.StudyResult, m: int, workdir: Path, rel: float = VMAP_REL) -> None:
    losses, val_losses, val_acc, params = run_alone(res.config, res.models[m])
    np.testing.assert_allclose(res.history["train_loss"][m], losses, rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(res.history["val_loss"][m], val_losses, rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(res.history["val_accuracy"][m], val_acc, atol=1.5 / 96)
    mine = jax.tree.map(lambda a: a[m], final_params(workdir, res.config).train.params)
    assert parallel.tree_max_diff(mine, params)["max_rel"] <= rel


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[study.StudyResult, Path]:
    workdir = tmp_path_factory.mktemp("mixed")
    return run(config(**MIXED), workdir), workdir


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["vmap", "map"])
def test_one_model_equals_the_model_alone(tmp_path, layout):
    c = config(activations=("tanh",), inits=("he",), lrs=(0.1,), seed=3, layout=layout)
    # "map" runs each model's own program: within 1e-6 relative (measured: 0 on an Intel Xeon)
    assert_same_model(run(c, tmp_path), 0, tmp_path, rel=1e-6 if layout == "map" else VMAP_REL)


@pytest.mark.slow
def test_mixed_study_equals_its_models_alone(mixed):
    res, workdir = mixed
    assert len(res.models) == 24 and res.start.layout == "vmap"
    for m, spec in enumerate(res.models):
        if spec.init != "zero" and not res.diverged_at[m] and m % 5 == 0:
            assert_same_model(res, m, workdir)


def test_zero_init_units_stay_identical(mixed):
    res, _ = mixed
    spread = res.evals[EPOCHS]["unit_spread"]
    zero = np.array([s.init == "zero" for s in res.models])
    alive = res.diverged_at == 0
    assert np.all(spread[zero & alive] < 1e-9)
    assert np.all(spread[~zero & alive] > 1e-3) and np.isnan(spread[~alive]).all()


@pytest.mark.slow
def test_divergent_model_is_masked_and_others_bit_identical(tmp_path):
    base = dict(activations=("relu", "linear"), seeds=2, layout="map")
    bad = run(config(lrs=(0.05, 1e30), **base), tmp_path / "bad")
    good = run(config(lrs=(0.05, 0.3), **base), tmp_path / "good")
    hot = np.array([s.lr == 1e30 for s in bad.models])
    assert bad.diverged_at[hot].tolist() == [1, 1, 1, 1] and not bad.diverged_at[~hot].any()
    for name, h in bad.history.items():
        assert np.isnan(h[hot]).all(), name
        np.testing.assert_array_equal(h[~hot], good.history[name][~hot])
    for name, v in bad.evals[EPOCHS].items():
        assert np.isnan(v[hot]).all(), name
        np.testing.assert_array_equal(v[~hot], good.evals[EPOCHS][name][~hot])
    kept = final_params(tmp_path / "bad", bad.config).train.params  # last good, never NaN
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(kept))
    net = runs.load(tmp_path / "bad", activation="relu", lr=1e30, seed=0, epoch=EPOCHS)
    assert net.epoch == 0  # its last good state is the initial one


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path):
    """One epoch, then resume to three (a run grows): history, evals, divergence and the final
    checkpoint are bit-identical to three epochs straight; metrics.jsonl is one line per model
    per epoch, also after a resume."""
    base = dict(activations=("relu", "linear"), inits=("normal", "glorot"), lrs=(0.2,), seeds=2)
    base["layout"] = "map"  # "auto" may time the layouts differently for the straight run
    run(config(epochs=1, save_at=(1,), **base), tmp_path / "r")
    resumed = run(config(epochs=3, save_at=(1, 3), **base), tmp_path / "r", resume=True)
    straight = run(config(epochs=3, save_at=(1, 3), **base), tmp_path / "s")
    assert resumed.start.resumed_from == 1 and len(resumed.epoch_seconds) == 2
    np.testing.assert_array_equal(resumed.diverged_at, straight.diverged_at)
    for name in study.HISTORY_KEYS:
        np.testing.assert_array_equal(resumed.history[name], straight.history[name])
    for e in (1, 3):
        for name, v in straight.evals[e].items():
            np.testing.assert_array_equal(resumed.evals[e][name], v)
    a, b = (final_params(tmp_path / d, straight.config) for d in ("r", "s"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lines = (tmp_path / "r" / study.METRICS).read_text().splitlines()
    assert len(lines) == 3 * 8
    names = [s.name for s in resumed.models]
    for line in map(json.loads, lines):  # NaN (diverged) is null
        want = float(resumed.history["val_accuracy"][names.index(line["model"]), line["epoch"] - 1])
        assert line["val_accuracy"] == (None if np.isnan(want) else pytest.approx(want))
    assert json.loads(lines[-1])["epoch"] == 3
    # the file a resume rewrites is the file the straight run appended, divergence epochs too
    assert (tmp_path / "r" / study.METRICS).read_text() == (
        tmp_path / "s" / study.METRICS
    ).read_text()


@pytest.mark.slow
def test_resume_refuses_another_study_or_a_gap(tmp_path):
    c = config(activations=("relu",), seeds=2)
    run(c, tmp_path)
    with pytest.raises(study.ConfigError, match="seeds"):
        run(config(activations=("relu",), seeds=3), tmp_path, resume=True)
    with pytest.raises(study.RunError, match="holds a study run already"):
        run(c, tmp_path)
    with pytest.raises(study.ConfigError, match="past `epochs` 1|past epochs 1"):
        run(config(activations=("relu",), seeds=2, epochs=1, save_at=(1,)), tmp_path, resume=True)
    gap = config(activations=("relu",), seeds=2, save_at=(1, 2))
    run(gap, tmp_path / "gap")
    import shutil

    shutil.rmtree(tmp_path / "gap" / study.CHECKPOINTS / "1")  # a save epoch it is past
    with pytest.raises(study.RunError, match="save epoch 1 is missing"):
        run(config(activations=("relu",), seeds=2, epochs=3, save_at=(1, 2, 3)), tmp_path / "gap",
            resume=True)  # fmt: skip


@pytest.mark.slow
def test_auto_layout_is_timed_once_per_machine_and_shape(tmp_path, monkeypatch):
    """The probe's verdict is cached, so a second fresh run picks the same layout (and so the
    same float rounding) without timing again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    c = config(activations=("relu", "tanh"), seeds=2, devices=1, epochs=1, save_at=(1,))
    first = run(c, tmp_path / "a")
    assert set(first.start.layout_seconds) == {"vmap", "map"}
    second = run(c, tmp_path / "b")
    assert second.start.layout_seconds == {} and second.start.layout == first.start.layout
    for name in study.HISTORY_KEYS:
        np.testing.assert_array_equal(first.history[name], second.history[name])
    assert study.read_run(tmp_path / "b")["config"]["layout"] == first.start.layout


def test_run_folder_loads_back_and_predicts_the_reported_accuracy(mixed):
    res, workdir = mixed
    stored = study.read_run(workdir)
    assert stored["format"] == study.FORMAT and stored["layout"] == "vmap"
    assert stored["models"] == [s.name for s in res.models]
    assert set(stored["stamps"]) >= {"git_commit", "git_dirty", "jnn_version", "command", "started"}
    assert study.config_of(stored) == res.config
    m = 7
    net = runs.load(workdir, res.models[m].name, epoch=EPOCHS)
    xt, yt = dataset().test
    assert net.spec == res.models[m] and net.epoch == EPOCHS
    assert (net.predict(xt) == yt).mean() == pytest.approx(res.evals[EPOCHS]["test_accuracy"][m])
    latest = runs.load(workdir, activation="sigmoid", init="normal", lr=0.2, seed=0)
    assert latest.epoch == EPOCHS


@pytest.mark.slow
def test_export_ships_the_first_seeds_bit_for_bit(tmp_path):
    """export: the first seeds of every cell at chosen save epochs, in a run folder of its
    own that loads like any run and predicts exactly what the source run's model predicts."""
    c = config(activations=("relu", "tanh"), seeds=3, save_at=(1, 2), layout="map")
    res = run(c, tmp_path / "src")
    out = study.export(tmp_path / "src", tmp_path / "small", seeds=1, epochs=(2,))
    stored = study.read_run(out)
    assert stored["models"] == ["relu/normal/lr0.1/s0", "tanh/normal/lr0.1/s0"]
    assert stored["exported_from"]["seeds"] == 1
    xt = dataset().test[0]
    for name in stored["models"]:
        small, full = runs.load(out, name, epoch=2), runs.load(tmp_path / "src", name, epoch=2)
        np.testing.assert_array_equal(small.logits(xt), full.logits(xt))
        m = [s.name for s in res.models].index(name)
        acc = (small.predict(xt) == dataset().test[1]).mean()
        assert acc == pytest.approx(res.evals[2]["test_accuracy"][m])
    with pytest.raises(InputError, match="no checkpoint of epoch 1"):
        runs.load(out, stored["models"][0], epoch=1)
    with pytest.raises(study.ConfigError, match="seeds"):
        study.export(tmp_path / "src", tmp_path / "other", seeds=4, epochs=(2,))
    with pytest.raises(study.RunError, match="holds a run already"):
        study.export(tmp_path / "src", out, seeds=1, epochs=(2,))
    for epochs, match in (
        ((), "non-empty list"),
        ((0,), r"in \[1, 2\]"),
        ((2, 2), "more than once"),
    ):
        with pytest.raises(study.ConfigError, match=match):
            study.export(tmp_path / "src", tmp_path / "bad", seeds=1, epochs=epochs)
    shutil.rmtree(tmp_path / "src" / study.CHECKPOINTS / "1")  # a save epoch gone from disk
    with pytest.raises(CheckpointError, match="epoch 1"):
        study.export(tmp_path / "src", tmp_path / "bad", seeds=1, epochs=(1,))
    assert not (tmp_path / "bad").exists()  # a refused export leaves no folder


@pytest.mark.parametrize("not_a_run", [{}, [], {"config": 5}])
def test_config_of_refuses_what_is_not_a_run_json(not_a_run):
    with pytest.raises(study.RunError, match="takes a run.json"):
        study.config_of(not_a_run)


def engine_numbers(workdir: Path, res: study.StudyResult, m: int) -> tuple:
    """Model ``m``'s train and val loss (epochs,) and its final params, restored from disk."""
    params = jax.tree.map(lambda a: a[m], final_params(workdir, res.config).train.params)
    return res.history["train_loss"][m], res.history["val_loss"][m], params


@pytest.mark.parametrize("layout", ["map", pytest.param("vmap", marks=pytest.mark.slow)])
def test_mixed_optimizers_equal_each_optimizer_alone(tmp_path, layout):
    """sgd and adam at two lrs in one program (``jnn.optim.union``): each model equals the
    engine's run of its optimizer and lr alone within 1e-6 relative (issue 18), and its own lr
    applies (the two lrs of one optimizer train different models). ``vmap`` gets 2e-6, as in
    test_one_model_equals_the_model_alone: measured 1.3e-6 for Adam at lr 0.002, the same
    numbers as an Adam-only study of both lrs in vmap (vmap's rounding, not the union's);
    ``map`` measured 6e-8 (and 0 for three of the four models)."""
    c = config(activations=("relu",), optimizer="sgd,adam", lrs=(0.01, 0.002), layout=layout)
    res = run(c, tmp_path / "mixed")
    names = [s.name for s in res.models]
    assert names == ["relu/normal/sgd/lr0.01/s0", "relu/normal/sgd/lr0.002/s0",
                     "relu/normal/adam/lr0.01/s0", "relu/normal/adam/lr0.002/s0"]  # fmt: skip
    for m, spec in enumerate(res.models):
        alone_c = config(activations=("relu",), optimizer=spec.optimizer, lrs=(spec.lr,))
        alone = run(alone_c, tmp_path / f"alone{m}")
        assert [s.name for s in alone.models] == [f"relu/normal/lr{spec.lr:g}/s0"]
        mine, ref = (
            engine_numbers(tmp_path / "mixed", res, m),
            engine_numbers(tmp_path / f"alone{m}", alone, 0),
        )
        np.testing.assert_allclose(mine[0], ref[0], rtol=1e-6)
        np.testing.assert_allclose(mine[1], ref[1], rtol=1e-6)
        rel = parallel.tree_max_diff(mine[2], ref[2])["max_rel"]
        assert rel <= (1e-6 if layout == "map" else 2e-6), (spec.name, rel)
    losses = res.history["train_loss"]
    assert np.all(np.abs(losses[0] - losses[1]) > 1e-4) and np.all(losses[2] != losses[3])


@pytest.mark.slow
def test_mixed_optimizers_resume_load_by_name_and_summarize_per_optimizer(tmp_path):
    """A mixed study resumes bit for bit (each model's member and every member's state are in
    the checkpoint) and refuses another optimizer list; its models load by their optimizer
    (name parts or field); summary cells are per optimizer, labelled with it."""
    from jnn import summary

    base = dict(activations=("relu",), optimizer="adam,sgd", layout="map")
    run(config(epochs=1, save_at=(1,), **base), tmp_path / "r")
    c = config(epochs=2, save_at=(1, 2), **base)
    res = run(c, tmp_path / "r", resume=True)
    straight = run(c, tmp_path / "s")
    assert res.start.resumed_from == 1
    np.testing.assert_array_equal(res.history["val_loss"], straight.history["val_loss"])
    a, b = (final_params(tmp_path / d, c) for d in ("r", "s"))
    assert isinstance(a.train.opt_state, optim.UnionState)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    with pytest.raises(study.ConfigError, match="optimizer: run has 'adam,sgd', now 'sgd,adam'"):
        run(config(epochs=2, save_at=(1, 2), **{**base, "optimizer": "sgd,adam"}), tmp_path / "r",
            resume=True)  # fmt: skip
    assert study.read_run(tmp_path / "r")["identity"] == c.identity()
    net = runs.load(tmp_path / "r", "relu/normal/sgd", epoch=2)
    assert net.spec == study.ModelSpec("relu", "normal", 0.1, 0, "sgd")
    assert runs.load(tmp_path / "r", optimizer="adam").spec.name == "relu/normal/adam/lr0.1/s0"
    acc = (net.predict(dataset().test[0]) == dataset().test[1]).mean()
    assert acc == pytest.approx(res.evals[2]["test_accuracy"][1])
    result = summary.result_dict("demo", dataclasses.asdict(c), res)
    assert [(x["optimizer"], x["label"]) for x in summary.cells(result)] == [
        ("adam", "relu / adam"),
        ("sgd", "relu / sgd"),
    ]


def test_one_optimizer_keeps_the_names_and_run_json_of_before(tmp_path):
    """A study of one optimizer: names without it, run.json's `optimizer` a plain name (as
    every run.json before mixed studies), result entries without an `optimizer` key."""
    from jnn import summary

    c = config(activations=("relu",), optimizer="momentum", epochs=1, save_at=(1,))
    res = run(c, tmp_path)
    assert [s.name for s in res.models] == ["relu/normal/lr0.1/s0"]
    assert study.read_run(tmp_path)["config"]["optimizer"] == "momentum"
    assert "optimizer" not in summary.result_dict("demo", dataclasses.asdict(c), res)["models"][0]
    st = final_params(tmp_path, c).train  # the optimizer state of optim.make alone
    alone = optim.make("momentum").init(jax.tree.map(lambda a: a[0], st.params))
    assert jax.tree.structure(st.opt_state) == jax.tree.structure(alone)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="nope/normal/lr1/s0"), "no model of this run"),
        (dict(activation="relu"), "6 models of this run"),
        (dict(model="relu"), "6 models of this run"),  # leading parts: still ambiguous here
        (dict(model="rel"), "no model of this run"),  # parts, not characters
        (dict(model=3), "a model name is a string"),
        (dict(activation="relu", init="zero", lr=0.05, seed=0, epoch="2"), "int or 'latest'"),
        (dict(activation="relu", init="zero", lr=0.05, seed=0, epoch=7), "no checkpoint of epoch"),
        (
            dict(colour="red"),
            "chosen by activation, init, lr, seed, optimizer, not colour; or by name",
        ),
    ],
)
def test_load_refuses_what_it_cannot_give(mixed, kwargs, match):
    with pytest.raises(InputError, match=match):
        runs.load(mixed[1], **kwargs)


def test_predict_refuses_nan_rows_and_other_widths(mixed):
    net = runs.load(mixed[1], mixed[0].models[0].name)
    x = dataset().test[0][:4].copy()
    with pytest.raises(InputError, match="(N, 784)"):
        net.predict(x[:, :100])
    x[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        net.predict(x)


def test_foreign_folders_are_refused(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        runs.load(tmp_path / "missing", "x")
    (tmp_path / "run.json").write_text('{"identity": {}, "config": {}}')
    with pytest.raises(InputError, match="not a jnn.study/1 run"):
        runs.load(tmp_path, "x")


def sharded_numbers() -> dict:
    """A study's numbers on 1 and 2 devices (M = 3 is odd: one padding copy on 2 devices)."""
    import tempfile

    out = {}
    for devices in (1, 2):
        c = config(activations=("relu", "linear", "sigmoid"), devices=devices, layout="vmap")
        with tempfile.TemporaryDirectory() as tmp:
            r = run(c, Path(tmp))
        out[devices] = {
            "history": {k: v.tolist() for k, v in r.history.items()},
            "test": r.evals[EPOCHS]["test_loss"].tolist(),
            "devices": r.start.devices,
        }
    return out


@pytest.mark.slow
def test_model_axis_on_two_devices_equals_one():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["2"]["devices"]) == 2 and len(out["1"]["devices"]) == 1
    assert out["1"]["history"] == out["2"]["history"]
    assert out["1"]["test"] == out["2"]["test"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activations=("relu", "swish")), "activations: unknown activation"),
        (dict(activations=("softmax",)), "output's"),
        (dict(inits=("zeros",)), "inits: unknown initializer"),
        (dict(lrs=(0.1, float("nan"))), "lrs must be positive finite"),
        (dict(lrs=(0.1, 0.1)), "each learning rate once"),
        (dict(lrs=(1e-320,)), r"^lrs 1e-320 is 0.0 in float32"),  # would train at lr 0
        (dict(lrs=(0.1, 1e39)), r"^lrs 1e\+39 is inf in float32"),
        (dict(init_scale=1e-300), r"^init_scale 1e-300 is 0.0 in float32"),
        (dict(seeds=0), "seeds must be an integer"),
        (dict(epochs=10**12), "epochs must be an integer in"),
        (dict(epochs="12"), "epochs must be an integer"),
        (dict(save_at=(0,)), "save_at must be"),
        (dict(save_at=(3,)), "save_at must be"),
        (dict(activations=()), "at least one name"),
        (dict(optimizer="lbfgs"), "unknown optimizer"),
        (dict(optimizer="sgd,lbfgs"), "^optimizer: unknown optimizer 'lbfgs'"),
        (dict(optimizer="sgd,adam,sgd"), "^optimizer lists sgd more than once"),
        (dict(optimizer="sgd,"), "^optimizer takes names separated by commas"),
        (dict(optimizer=("sgd", "adam")), "^optimizer takes names separated by commas"),
        (dict(layout="pmap"), "layout must be one of"),
        (dict(inits=("he",), init_scale=0.1), "applies to normal and random"),
        (dict(subset=(1, 2)), "three numbers"),
        (dict(dataset="cifar"), "dataset"),
        (dict(split="nope"), "split"),
        (dict(seeds=1024, epochs=100_000, lrs=(0.1, 0.2, 0.3)), "GiB"),
    ],
)
def test_bad_configs_are_one_line_config_errors(kwargs, match):
    with pytest.raises(study.ConfigError, match=match) as err:
        config(**kwargs)
    assert "\n" not in str(err.value)


def test_a_rate_that_overflows_float32_is_refused_without_a_warning():
    """The float32 check printed numpy's 'overflow encountered in cast' above the one line."""
    import warnings

    for make in (lambda: config(lrs=(1e39,)), lambda: cfg_mod.positive(1e39, "lr")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(study.ConfigError, match="is inf in float32"):
                make()


def test_config_error_renders_fields_as_the_callers_names():
    with pytest.raises(study.ConfigError) as err:
        config(save_at=(5,))
    assert err.value.render(lambda f: "--" + f.replace("_", "-")).startswith("--save-at must be")


def test_data_of_another_shape_or_dtype_is_refused(tmp_path):
    d = dataset()
    bad = study.Data((d.train[0][:, :100], d.train[1]), d.val, d.test)
    with pytest.raises(InputError, match=r"\(N, 784\)"):
        study.run(config(activations=("relu",)), tmp_path, data=bad)
    ints = study.Data(((d.train[0] * 255).astype(np.uint8), d.train[1]), d.val, d.test)
    with pytest.raises(InputError, match="float32"):
        study.run(config(activations=("relu",)), tmp_path, data=ints)
    short = study.Data((d.train[0], d.train[1][:-1]), d.val, d.test)
    with pytest.raises(InputError, match="one label per example"):
        study.run(config(activations=("relu",)), tmp_path, data=short)


def test_a_run_interrupted_before_its_run_json_resumes_from_scratch(tmp_path):
    """Adversarial pass: Ctrl-C in the first seconds left checkpoints/ (an empty store) and no
    run.json, and the --resume the interrupt line advised was refused as 'not a study run'."""
    c = config(activations=("relu",))
    with study.open_store(c, tmp_path):
        pass
    assert (tmp_path / study.CHECKPOINTS).is_dir() and study.check_resume(c, tmp_path) is None
    (tmp_path / study.CHECKPOINTS / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a study run to resume"):
        study.check_resume(c, tmp_path)


def test_a_new_run_refuses_a_folder_holding_other_files(tmp_path):
    """Second adversarial pass: study.run (the library, not the CLIs, which check the folder
    first) wrote checkpoints/, metrics.jsonl and run.json beside a user's files, overwriting
    any of those names. A new run takes only a new or empty folder (jnn's marker and lock
    aside); the refusal comes before any data is loaded or anything written."""
    mine = tmp_path / "thesis.tex"
    mine.write_text("mine")
    with pytest.raises(study.RunError, match="holds files of its own") as err:
        study.run(config(activations=("relu",)), tmp_path)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_a_subset_larger_than_the_split_is_refused(fashion_dir):
    """Adversarial pass: --subset 100000,500,500 trained on the 48,600 training images of split
    original while results.md said subset (100000, 500, 500)."""
    for subset, what in (
        ((100_000, 5, 5), "100,000 training.*has 48,600"),
        ((5, 5, 6_001), "6,001 test.*has 6,000"),
    ):
        with pytest.raises(study.ConfigError, match=what) as err:
            study.load_data(config(subset=subset, data_dir=str(fashion_dir)))
        assert "\n" not in str(err.value)


if __name__ == "__main__":
    print(json.dumps(sharded_numbers()))


def test_metrics_rewritten_on_resume_equal_the_lines_appended(tmp_path):
    """A model that diverged at epoch 2: its epoch-1 line says null (nothing was known yet),
    whether the line was appended as the run went or rewritten from a later checkpoint."""
    history = {k: np.arange(6, dtype=np.float32).reshape(2, 3) for k in study.HISTORY_KEYS}
    seen = [np.array([0, 0]), np.array([2, 0]), np.array([2, 0])]  # diverged_at after each epoch
    live = study.MetricsLog(tmp_path / "live.jsonl", ["a", "b"])
    for epoch, diverged in enumerate(seen, 1):
        live.append(epoch, history, diverged)
    resumed = study.MetricsLog(tmp_path / "resumed.jsonl", ["a", "b"])
    resumed.rewrite(history, seen[-1], upto=3)
    assert resumed.path.read_text() == live.path.read_text()
    rows = [json.loads(line) for line in live.path.read_text().splitlines()]
    assert [r["diverged_at"] for r in rows if r["model"] == "a"] == [None, 2, 2]


def test_auto_layout_rule_off_cpu_and_one_model_per_device():
    """The rule without a probe: off CPU (a GPU or TPU mesh) every model is vmapped, the layout
    that fills the device; on CPU one model per device runs as map (the same program either
    way). Neither case times anything (make, state and data are never touched)."""
    from types import SimpleNamespace

    def mesh(platform: str, size: int) -> SimpleNamespace:
        devices = np.array([SimpleNamespace(platform=platform)] * size)
        return SimpleNamespace(devices=devices, size=size)

    many = config(activations=("relu", "tanh"), seeds=4, layout="auto")
    for platform in ("gpu", "tpu"):
        assert study.choose_layout(many, mesh(platform, 1), None, None, None) == ("vmap", {})
    one_each = config(activations=("relu", "tanh"), seeds=1, layout="auto")
    assert study.choose_layout(one_each, mesh("cpu", 2), None, None, None) == ("map", {})
    assert study.choose_layout(config(layout="vmap"), mesh("cpu", 1), None, None, None)[0] == "vmap"

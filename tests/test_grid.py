"""jnn.grid: a grid of models in one program equals its models trained alone.

Measured tolerance (CPU, float32): a grid model's per-epoch losses differ from the model trained
alone with ``train.make_epoch_fn(mlp(...))`` by at most ~2.4e-7 absolute (one float32 ulp at 2.3)
and its params by ~4.5e-7 relative: the vmapped batched matmuls sum in another order. The tests
allow 2e-6 relative / 1e-5 absolute. Masking and device sharding are bit-for-bit.

Run as a script (``python tests/test_grid.py``) it prints, as one JSON line, the grid's numbers
with the model axis on 1 and on 2 forced host devices (used by the 2-device test below).
"""

from __future__ import annotations

import json
import os
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

from jnn import grid, parallel, train  # noqa: E402
from jnn.errors import InputError  # noqa: E402
from jnn.mlp import mlp  # noqa: E402

SIZES = (784, 32, 16, 10)
EPOCHS = 2
MIXED = dict(
    activations=("relu", "sigmoid", "tanh", "linear"),
    inits=("zero", "normal", "glorot"),
    lrs=(0.05, 0.2),
    seeds=1,
    sizes=SIZES,
)


def dataset(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic data: x (n, 784) in [0, 1), y (n,) from a random linear teacher."""
    rng = np.random.default_rng(0)
    x = rng.random((n, 784), dtype=np.float32)
    y = np.argmax(x @ rng.normal(size=(784, 10)).astype(np.float32), axis=1).astype(np.int32)
    return x, y


def run_grid(spec: grid.GridSpec, devices: int = 1) -> grid.GridResult:
    x, y = dataset()
    return grid.train_grid(
        spec, (x, y), (x[:96], y[:96]), (x[96:200], y[96:200]), epochs=EPOCHS,
        save_at=(EPOCHS,), mesh=parallel.model_mesh(devices),
    )  # fmt: skip


def run_alone(spec: grid.GridSpec, cell: grid.Cell, s: int) -> tuple[np.ndarray, ...]:
    """The same model trained by the library's single-model path: (train losses, val losses,
    val accuracies, final params)."""
    x, y = dataset()
    model = mlp(spec.sizes, cell.activation, cell.init)
    opt = optax.sgd(cell.lr)
    state = train.init_train_state(grid.model_key(spec.seed, s), model, opt, spec.sizes[:1])
    epoch, evaluate = train.make_epoch_fn(model, opt, 32), train.make_eval_fn(model)
    rows = []
    for _ in range(EPOCHS):
        state, m = epoch(state, x, y)
        rows.append(
            (float(m.loss), *map(float, evaluate(state.params, state.model_state, x[:96], y[:96])))
        )
    return (*np.array(rows).T, state.params)


@pytest.fixture(scope="module")
def mixed() -> tuple[grid.GridSpec, grid.GridResult]:
    spec = grid.GridSpec(**MIXED)
    return spec, run_grid(spec)


def _assert_same_model(result: grid.GridResult, mi: int, spec, cell, s) -> None:
    losses, val_losses, val_acc, params = run_alone(spec, cell, s)
    np.testing.assert_allclose(result.history["train_loss"][mi], losses, rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(result.history["val_loss"][mi], val_losses, rtol=2e-6, atol=1e-5)
    np.testing.assert_allclose(result.history["val_accuracy"][mi], val_acc, atol=1.5 / 96)
    mine = jax.tree.map(lambda a: a[mi], result.state.train.params)
    assert parallel.tree_max_diff(mine, params)["max_rel"] < 2e-6


def test_single_model_grid_equals_model_alone():
    spec = grid.GridSpec(("tanh",), ("he",), (0.1,), seeds=1, sizes=SIZES, seed=3)
    result = run_grid(spec)
    _assert_same_model(result, 0, spec, spec.cells()[0], 0)
    assert result.diverged_at.tolist() == [0]


def test_mixed_grid_equals_its_models_alone(mixed):
    spec, result = mixed
    cells = spec.cells()
    # one model per activation, covering every init and lr (each alone is its own compile)
    checked = [1, 2 * 3 * 2 - 1, 2 * 3 * 2 + 2, 3 * 3 * 2 + 3]
    for mi in checked:
        _assert_same_model(result, mi, spec, cells[mi], 0)
    # on this synthetic data linear + glorot at lr 0.2 (the last model) blows up in epoch 1:
    # a real divergence inside a mixed grid, which must not touch the models checked above
    assert result.diverged_at.tolist() == [0] * (spec.num_models - 1) + [1]
    assert cells[-1] == grid.Cell("linear", "glorot", 0.2)


def test_zero_init_units_stay_identical(mixed):
    spec, result = mixed
    spread = result.evals[EPOCHS]["unit_spread"]  # (M, hidden layers)
    zero = np.array([c.init == "zero" for c in spec.cells()])
    assert spread.shape == (spec.num_models, len(SIZES) - 2)
    # every hidden unit got the same updates: relu exactly 0 (relu'(0) = 0 stops them), the
    # others to float32 rounding of the tiled matmuls (measured <= 1.8e-12 here: symmetry held)
    assert np.all(spread[zero] < 1e-9)
    relu_zero = np.array([c.init == "zero" and c.activation == "relu" for c in spec.cells()])
    assert np.all(spread[relu_zero] == 0.0)
    alive = result.diverged_at == 0
    assert np.all(spread[~zero & alive] > 1e-3) and np.isnan(spread[~alive]).all()


def test_divergent_model_is_masked_and_others_bit_identical():
    # (tanh with lr 1e30 stays finite on this data: bounded units; relu and linear blow up)
    base = dict(activations=("relu", "linear"), inits=("normal",), seeds=2, sizes=SIZES)
    bad = run_grid(grid.GridSpec(lrs=(0.05, 1e30), **base))
    good = run_grid(grid.GridSpec(lrs=(0.05, 0.3), **base))
    hot = np.array([c.lr == 1e30 for c in grid.GridSpec(lrs=(0.05, 1e30), **base).cells()])
    hot = np.repeat(hot, 2)
    assert bad.diverged_at[hot].tolist() == [1, 1, 1, 1]
    assert not bad.diverged_at[~hot].any()
    for name, h in bad.history.items():
        assert np.isnan(h[hot]).all(), name
        np.testing.assert_array_equal(h[~hot], good.history[name][~hot])
    for name, v in bad.evals[EPOCHS].items():
        assert np.isnan(v[hot]).all(), name
        np.testing.assert_array_equal(v[~hot], good.evals[EPOCHS][name][~hot])
    # a diverged model keeps its last good (here: initial) params, never NaN
    params = bad.state.train.params
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_resumed_grid_equals_uninterrupted_bit_for_bit(tmp_path):
    """Checkpoint after epoch 1 of a 1-epoch run, restore through the verified store, continue
    to 3 epochs with another save epoch: history, evals, divergence and params are bit-identical
    to 3 epochs straight (the keys live in the state)."""
    from jnn.checkpoints import CheckpointStore

    spec = grid.GridSpec(("relu", "linear"), ("normal", "glorot"), (0.2,), seeds=2, sizes=SIZES)
    x, y = dataset()
    data = ((x, y), (x[:96], y[:96]), (x[96:200], y[96:200]))
    store = CheckpointStore(tmp_path / "ckpt")
    saved = []

    def save(progress: grid.GridProgress, metrics: grid.GridMetrics) -> None:
        store.save(progress.epoch, grid.progress_tree(progress), rolling=True)
        saved.append(progress.epoch)

    grid.train_grid(spec, *data, epochs=1, save_at=(1,), on_epoch=save)
    epoch, tree = store.restore_latest(lambda e: grid.progress_like(spec, e, (1,)))
    start = grid.progress_from_tree(epoch, tree)
    assert saved == [1] and start.epoch == 1 and start.num_models == 8
    resumed = grid.train_grid(spec, *data, epochs=3, save_at=(1, 3), start=start)
    straight = grid.train_grid(spec, *data, epochs=3, save_at=(1, 3))
    assert len(resumed.epoch_seconds) == 2
    assert straight.diverged_at.any() and not straight.diverged_at.all()  # both kinds covered
    np.testing.assert_array_equal(resumed.diverged_at, straight.diverged_at)
    for name in grid.HISTORY_KEYS:
        np.testing.assert_array_equal(resumed.history[name], straight.history[name])
    for e in (1, 3):
        for name, v in straight.evals[e].items():
            np.testing.assert_array_equal(resumed.evals[e][name], v)
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_refuses_another_grid_or_a_shorter_run():
    spec = grid.GridSpec(("relu",), ("normal",), (0.1,), seeds=2, sizes=SIZES)
    x, y = dataset()
    data = ((x, y), (x[:96], y[:96]), (x[96:200], y[96:200]))
    progress = []
    grid.train_grid(spec, *data, epochs=2, save_at=(2,), on_epoch=lambda p, m: progress.append(p))
    start = grid.progress_from_tree(2, grid.progress_tree(progress[-1]))
    other = grid.GridSpec(("relu",), ("normal",), (0.1,), seeds=3, sizes=SIZES)
    with pytest.raises(InputError, match="holds 2 models, the grid has 3"):
        grid.train_grid(other, *data, epochs=3, save_at=(3,), start=start)
    with pytest.raises(InputError, match="cannot resume at epoch 2 of a 1-epoch run"):
        grid.train_grid(spec, *data, epochs=1, save_at=(1,), start=start)


def sharded_numbers() -> dict:
    """The grid's numbers on 1 and 2 devices (M = 3 is odd: one padding copy on 2 devices)."""
    spec = grid.GridSpec(("relu", "linear", "sigmoid"), ("normal",), (0.1,), seeds=1, sizes=SIZES)
    out = {}
    for devices in (1, 2):
        r = run_grid(spec, devices)
        leaves = jax.tree.leaves(r.state.train.params)
        shardings = {str(tuple(leaf.sharding.spec)) for leaf in leaves}
        out[devices] = {
            "history": {k: v.tolist() for k, v in r.history.items()},
            "test": r.evals[EPOCHS]["test_loss"].tolist(),
            "padded": int(r.state.diverged_at.shape[0]),
            "shardings": sorted(shardings),
        }
    return out


def test_model_axis_on_two_devices_equals_one():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["2"]["padded"] == 4 and out["1"]["padded"] == 3
    assert out["2"]["shardings"] == ["('model',)"]
    assert out["1"]["history"] == out["2"]["history"]
    assert out["1"]["test"] == out["2"]["test"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activations=("relu", "swish")), "unknown activation"),
        (dict(inits=("zeros",)), "unknown initializer"),
        (dict(lrs=(0.1, float("nan"))), "positive finite"),
        (dict(lrs=(-0.1,)), "positive finite"),
        (dict(lrs=(0.1, 0.1)), "once each"),
        (dict(seeds=0), "seeds must be"),
        (dict(activations=()), "at least one activation"),
    ],
)
def test_bad_specs_are_one_line_input_errors(kwargs, match):
    args = dict(activations=("relu",), inits=("normal",), lrs=(0.1,), seeds=1) | kwargs
    with pytest.raises(InputError, match=match):
        grid.GridSpec(**args)


def test_too_many_models_for_memory_is_refused():
    spec = grid.GridSpec(("relu",), ("normal",), (0.1,), seeds=100_000)
    with pytest.raises(InputError, match="GiB"):
        grid.check_memory(spec, 32, 6000)


if __name__ == "__main__":
    print(json.dumps(sharded_numbers()))

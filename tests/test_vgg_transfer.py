"""The VGG16 transfer experiment on the library: the head (and block5) are jnn models whose
hand-written backward equals jax.grad, block5 as jnn layers equals the Flax block, the head trains
in the library loop (manual and autodiff runs agree), a diverged run exits 3 with its last good
epoch saved, and ``jnn.runs.load_vgg_head`` reproduces a run's reported test accuracy."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import harness, vgg_transfer
from jnn import core, runs, train, vgg
from jnn.checkpoints import CheckpointError
from tests.gradcheck import assert_tree_close

TINY = ["--weights", "random", "--train-size", "40", "--test-size", "20", "--epochs", "2",
        "--batch-size", "20", "--feature-batch", "20"]  # fmt: skip


def normal(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale, jnp.float32)


def block5_flax_params(seed=0):
    rng = np.random.default_rng(seed)
    std = np.float32(np.sqrt(2 / (9 * 512)))
    return {
        name: {
            "kernel": rng.standard_normal((3, 3, 512, 512), np.float32) * std,
            "bias": rng.standard_normal(512, np.float32) * np.float32(0.1),
        }
        for name in vgg.layers_of_blocks(5, 5)
    }


# ------------------------------------------------------------------------- the jnn model


@pytest.mark.parametrize("hw", [(2, 2), (5, 5)], ids=["im2col", "conv"])
def test_jnn_block5_forward_equals_flax_block5(hw):
    """Same weights, same layout (NHWC, HWIO, zero SAME padding, 2x2 pool) on both map paths."""
    params = block5_flax_params()
    x = jax.nn.relu(normal((2, *hw, 512), seed=1))
    flax = vgg.features(params, x, first_block=5)
    block = core.serial(*vgg.block_layers(5))
    ours = core.apply(block, vgg.block_params(params, 5), ((),) * vgg.BLOCK5_LAYERS, x)
    assert ours.shape == flax.shape == (2, hw[0] // 2, hw[1] // 2, 512)
    np.testing.assert_allclose(ours, flax, rtol=1e-4, atol=1e-4 * float(jnp.abs(flax).max()))


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 4)], ids=["centre", "im2col", "conv"])
def test_conv3x3_layer_backward_equals_vjp(hw):
    layer = vgg.Conv3x3Layer(5)
    _, params, _ = layer.init(jax.random.key(0), (*hw, 3))
    params = {"w": params["w"], "b": normal((5,), seed=2)}
    x, dy = normal((2, *hw, 3), seed=3), normal((2, *hw, 5), seed=4)
    y, cache, _ = layer.forward(params, (), x)
    grads = layer.backward(params, cache, dy)
    y_ref, vjp = jax.vjp(lambda p, x: jax.lax.conv_general_dilated(
        x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["b"],
        params, x)  # fmt: skip
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert_tree_close(grads, vjp(dy), jnp.float32, f"Conv3x3Layer {hw}")


def test_manual_grads_equal_jax_grad(finetune=True):
    """The experiment's own model (test_models checks a narrower head): block5, Standardize and
    the 512-256-10 head with both Dropouts on the same keys (the frozen-base model is its tail)."""
    model = vgg.transfer_model(finetune)
    shape = (2, 2, 512) if finetune else (1, 1, 512)
    _, params, state = jax.jit(model.init, static_argnums=1)(jax.random.key(0), shape)
    i = vgg.standardize_index(finetune)
    stats = {"mean": normal(state[i]["mean"].shape, 5), "std": 1 + jnp.abs(normal((512,), 6))}
    state = (*state[:i], stats, *state[i + 1 :])
    x, y, key = jax.nn.relu(normal((4, *shape), 7)), jnp.arange(4), jax.random.key(3)
    manual = jax.jit(core.value_and_grad(model, "manual"))(params, state, x, y, key=key)
    auto = jax.jit(core.value_and_grad(model, "autodiff"))(params, state, x, y, key=key)
    np.testing.assert_allclose(manual[0][0], auto[0][0], rtol=1e-6)
    assert_tree_close(manual[1], auto[1], jnp.float32, "transfer model grads")


def test_finetuning_trains_block5_at_its_own_learning_rate():
    """multi_transform: block5 moves by at most ~finetune_lr per Adam step, the head by ~lr."""
    x = np.asarray(jax.nn.relu(normal((32, 2, 2, 512), 8)))
    y = np.arange(32, dtype=np.int32) % 10
    block5 = vgg.block_params(block5_flax_params(), 5)
    common = dict(block5=block5, epochs=1, batch_size=16, lr=1e-3, finetune_lr=1e-6, seed=0)
    m = vgg_transfer.train_head((x, y), (x, y), **common)
    assert m.diverged_at is None and m.epoch == 1 and len(m.history) == 1
    moved = [float(np.abs(m.params[i]["w"] - block5[i]["w"]).max()) for i in (0, 2, 4)]
    assert 0 < max(moved) <= 2 * 2 * 1e-6  # 2 steps of Adam at 1e-6
    model, shape = vgg.transfer_model(True), x.shape[1:]
    init = jax.jit(lambda k: train.init_train_state(k, model, optax.sgd(1), shape))
    head = init(jax.random.key(0)).params[-1]["w"]  # the last Dense before training (same seed)
    assert float(np.abs(m.params[-1]["w"] - head).max()) > 1e-4  # Adam at 1e-3 moved it


# --------------------------------------------------------------------- the experiment (CLI)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, fashion_dir):
    """Two tiny random-weights runs, manual and autodiff gradients (stdout kept)."""
    root = tmp_path_factory.mktemp("vgg")
    out = {}
    for gradients in ("manual", "autodiff"):
        argv = [*TINY, "--gradients", gradients, "--data-dir", str(fashion_dir)]
        assert vgg_transfer.main([*argv, "--out", str(root / gradients)]) == 0
        out[gradients] = root / gradients
    return out


def load(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_manual_and_autodiff_runs_agree(tiny_runs):
    m, a = load(tiny_runs["manual"]), load(tiny_runs["autodiff"])
    assert m["status"] == a["status"] == "ok" and m["head"]["gradients"] == "manual"
    assert m["accuracy"] == pytest.approx(a["accuracy"], abs=1e-6)
    for hm, ha in zip(m["history"], a["history"], strict=True):
        assert hm["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hm["test_acc"] == pytest.approx(ha["test_acc"], abs=1e-6)


def test_run_outputs_are_labelled_random(tiny_runs, fashion_dir):
    out = tiny_runs["manual"]
    r = load(out)
    label = vgg_transfer.RANDOM_LABEL
    assert not r["pretrained"] and label in r["weights"]["label"] and label.upper() in r["title"]
    assert label.upper() in (out / "results.md").read_text().splitlines()[0]
    assert (out / "confusion_matrix.png").stat().st_size > 10_000
    assert r["data"] == {**r["data"], "train": 40, "test": 20}
    assert sum(r["per_class_count"]) == 20 and len(r["per_class_accuracy"]) == 10
    assert r["feature_extraction"]["images_per_s"] > 0 and r["head"]["epoch_seconds_median"] > 0
    assert r["config"]["out"] == str(out) and "versions" in r and "device" in r
    argv = [*TINY, "--data-dir", str(fashion_dir), "--out", str(out)]
    assert vgg_transfer.main(argv) == harness.EXIT_BAD_INPUT  # holds another run


def test_way_back_reproduces_the_reported_accuracy(tiny_runs, tmp_path):
    out = tiny_runs["manual"]
    head = runs.load_vgg_head(out)
    feats, labels = vgg_transfer.features_of_run(out)
    assert head.epoch == 2 and head.config["gradients"] == "manual"
    assert float(np.mean(head.predict(feats) == labels)) == load(out)["accuracy"]
    assert head.logits(feats).shape == (20, 10)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = max(
        (p for p in (copy / "head").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        runs.load_vgg_head(copy)


def test_divergence_exits_3_with_the_last_good_epoch(tmp_path, fashion_dir, capsys):
    argv = [*TINY, "--lr", "1e30", "--data-dir", str(fashion_dir), "--out", str(tmp_path / "o")]
    assert vgg_transfer.main(argv) == harness.EXIT_DIVERGED
    r = load(tmp_path / "o")
    assert r["status"] == "diverged" and r["diverged_at"] == 1 and r["head"]["epoch"] == 0
    assert np.isfinite(r["accuracy"]) and "diverged at epoch 1" in capsys.readouterr().out
    head = runs.load_vgg_head(tmp_path / "o")  # the last good (here: initial) state was saved
    assert head.epoch == 0 and all(np.isfinite(p).all() for p in jax.tree.leaves(head.params))

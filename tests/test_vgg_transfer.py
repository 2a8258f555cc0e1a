"""The VGG16 transfer experiment on the library: the head (and block5) are jnn models whose
hand-written backward equals jax.grad, block5 as jnn layers equals the Flax block, the head trains
in the library loop (manual and autodiff runs agree), a diverged run exits 3 with its last good
epoch saved, and ``jnn.runs.load_vgg_head`` reproduces a run's reported test accuracy."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import harness, vgg_transfer
from jnn import core, features, runs, vgg
from jnn.checkpoints import CheckpointError
from jnn.errors import InputError
from jnn.layers import Dense, Dropout, Flatten, MaxPool2D, ReLU
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


def narrow_transfer_model(width=8, hidden=(16, 12)):
    """``vgg.transfer_model(True)`` at small widths, from the same layers (the full-width frozen
    head is compared manual vs autodiff end to end below; test_models checks a narrower head)."""
    block = [layer for _ in range(3) for layer in (vgg.Conv3x3Layer(width), ReLU)]
    head = [layer for h in hidden for layer in (Dense(h, init="he"), ReLU, Dropout(0.5))]
    return core.serial(*block, MaxPool2D(2), Flatten, vgg.Standardize(), *head, Dense(10))


def test_manual_grads_equal_jax_grad():
    """block5 (im2col path), Standardize, the head's Dropouts on the same keys."""
    model, shape, i = narrow_transfer_model(), (2, 2, 3), 8
    _, like, state = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
    rng = np.random.default_rng(0)  # numpy draws: jitting the init's threefry takes ~10 s
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), a.dtype), like)
    stats = {"mean": normal((8,), 5), "std": 1 + jnp.abs(normal((8,), 6))}
    state = (*((),) * i, stats, *((),) * (len(state) - i - 1))
    x, y, key = normal((4, *shape), 7), jnp.arange(4), jax.random.key(3)
    manual = jax.jit(core.value_and_grad(model, "manual"))(params, state, x, y, key=key)
    auto = jax.jit(core.value_and_grad(model, "autodiff"))(params, state, x, y, key=key)
    np.testing.assert_allclose(manual[0][0], auto[0][0], rtol=1e-6)
    assert_tree_close(manual[1], auto[1], jnp.float32, "transfer model grads")


def test_finetuning_moves_block5_at_its_own_learning_rate():
    """multi_transform: one Adam step moves block5 by finetune_lr and the head by lr, the rates
    taken from the optimizer state (one compiled epoch serves every rate)."""
    model = vgg.transfer_model(True)
    _, params, _ = jax.eval_shape(lambda k: model.init(k, (2, 2, 512)), jax.random.key(0))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    grads = jax.tree.map(jnp.ones_like, params)
    placeholder = features.make_optimizer(True)  # what the compiled epoch holds
    state = features.make_optimizer(True, lr=1e-3, finetune_lr=1e-6).init(params)
    updates, _ = jax.jit(placeholder.update)(grads, state, params)
    step = [float(jnp.abs(updates[i]["w"]).max()) for i in (0, 2, 4, 9, 15)]
    np.testing.assert_allclose(step, [1e-6] * 3 + [1e-3] * 2, rtol=1e-3)  # Adam's first step


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
    assert r["out"] == str(out) and "versions" in r and "device" in r and not r["quick"]
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


@pytest.mark.parametrize(
    "bad, says",
    [
        (lambda s: np.ones((3, int(np.prod(s))), np.float32), r"must have shape \(N, 1, 1, 512\)"),
        (lambda s: np.ones((3, s[0] + 1, s[1] + 1, 512), np.float32), r"got \(3, 2, 2, 512\)"),
        (lambda s: np.ones((3, *s[:2], 256), np.float32), r"got \(3, 1, 1, 256\)"),
        (lambda s: np.ones((3, *s), np.int32), "float VGG16 features, got dtype int32"),
        (lambda s: np.full((3, *s), np.nan, np.float32), "NaN or inf"),
        (lambda s: np.where(np.arange(3)[:, None, None, None] == 1, np.inf, np.ones((3, *s))),
         "NaN or inf"),
    ],
    ids=["flat", "size", "channels", "int", "nan", "inf-row"],
)  # fmt: skip
def test_loaded_head_refuses_features_it_cannot_take(tiny_runs, bad, says):
    """LoadedHead.logits took any array: another shape failed inside JAX or was reshaped into
    the wrong features, ints were cast silently, NaN rows predicted class 0. Now one line each,
    as LoadedModel.logits; features of the run's own shape still give logits."""
    head = runs.load_vgg_head(tiny_runs["manual"])
    shape = tuple(load(tiny_runs["manual"])["head"]["input_shape"])  # what the run cached
    assert head.logits(np.ones((3, *shape), np.float32)).shape == (3, 10)
    with pytest.raises(InputError, match=says) as err:
        head.logits(bad(shape))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("finetune_top, size, side", [(True, 32, 2), (True, 72, 4), (False, 64, 2)])
def test_loaded_head_expects_the_features_of_its_config(finetune_top, size, side):
    """The expected (h, w, 512) follows from the run's config: block4's output (SIZE // 16) with
    finetune_top, else block5's (SIZE // 32); a model made for it accepts it, not its neighbour."""
    model = vgg.transfer_model(finetune_top)
    _, params, state = model.init(jax.random.PRNGKey(0), (side, side, 512))
    head = runs.LoadedHead(model, params, state, {"finetune_top": finetune_top, "size": size}, 0)
    assert head.logits(np.ones((2, side, side, 512), np.float32)).shape == (2, 10)
    with pytest.raises(InputError, match=f"must have shape \\(N, {side}, {side}, 512\\)"):
        head.logits(np.ones((2, side + 1, side + 1, 512), np.float32))


def test_a_head_without_a_config_refuses_features_its_params_do_not_fit():
    """experiments.vgg_transfer predicts through a LoadedHead without a config: the check is
    then whether the model makes the head's params for the features' shape."""
    model = vgg.transfer_model(False)
    _, params, state = model.init(jax.random.PRNGKey(0), (1, 1, 512))
    head = runs.LoadedHead(model, params, state, {}, 0)
    assert head.predict(np.ones((2, 1, 1, 512), np.float32)).shape == (2,)
    with pytest.raises(InputError, match=r"shape \(2, 2, 512\) do not fit this head's params"):
        head.predict(np.ones((2, 2, 2, 512), np.float32))
    with pytest.raises(InputError, match=r"must have shape \(N, h, w, 512\)"):
        head.predict(np.ones((2, 512), np.float32))


def test_divergence_exits_3_with_the_last_good_epoch(tmp_path, fashion_dir, capsys):
    argv = [*TINY, "--lr", "1e30", "--data-dir", str(fashion_dir), "--out", str(tmp_path / "o")]
    assert vgg_transfer.main(argv) == harness.EXIT_DIVERGED
    r = load(tmp_path / "o")
    assert r["status"] == "diverged" and r["diverged_at"] == 1 and r["head"]["epoch"] == 0
    assert np.isfinite(r["accuracy"]) and "diverged at epoch 1" in capsys.readouterr().out
    head = runs.load_vgg_head(tmp_path / "o")  # the last good (here: initial) state was saved
    assert head.epoch == 0 and all(np.isfinite(p).all() for p in jax.tree.leaves(head.params))


# ------------------------------------------------------------------- the generated command line


def printed_config(argv, capsys):
    with pytest.raises(SystemExit) as done:
        vgg_transfer.main([*argv, "--print-config"])
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_every_earlier_flag_keeps_its_meaning(capsys, tmp_path):
    """The flags of the earlier argparse CLI parse to the same settings (``--bench-torch`` moved
    to ``python -m bench.vgg_reference``); ``--standardize`` spells out the default."""
    cfg = printed_config(
        ["--weights", "random", "--size", "64", "--epochs", "3", "--batch-size", "32",
         "--lr", "0.01", "--gradients", "autodiff", "--finetune-top", "--finetune-lr", "1e-4",
         "--no-standardize", "--feature-batch", "64", "--train-size", "100", "--test-size", "50",
         "--seed", "7", "--devices", "2", "--cache-dir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert cfg == {
        "weights": "random", "size": 64, "epochs": 3, "batch_size": 32, "lr": 0.01,
        "gradients": "autodiff", "finetune_top": True, "finetune_lr": 1e-4,
        "standardize": False, "feature_batch": 64, "train_size": 100, "test_size": 50,
        "seed": 7, "devices": 2, "data_dir": None, "cache_dir": str(tmp_path),
    }  # fmt: skip
    quick = printed_config(["--quick", "--standardize"], capsys)
    assert (quick["train_size"], quick["test_size"], quick["epochs"]) == (2000, 500, 2)
    assert quick["standardize"] is True and quick["weights"] == "keras"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--standardize", "--no-standardize"], "--standardize is the default"),
        (["--size", "16"], "--size must be an integer in [32,"),
        (["--devices", "3"], "--batch-size 128 must divide by --devices"),
        (["--weights", "nope.h5"], "--weights nope.h5: no such file"),
        (["--bench-torch"], "--bench-torch moved: python -m bench.vgg_reference"),
        (["--finetune-lr", "1e-3"], "trains only with --finetune-top: add --finetune-top"),
    ],
)
def test_bad_flags_are_one_line_before_any_folder(argv, message, capsys, tmp_path):
    assert vgg_transfer.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "o").exists(), err


def test_a_size_larger_than_the_split_is_refused(fashion_dir, capsys, tmp_path):
    """Adversarial pass: --train-size 10000000 silently took all 63,000 training images (minutes
    of feature extraction) while the config recorded 10,000,000."""
    for flag in ("--train-size", "--test-size"):
        argv = ["--quick", "--weights", "random", flag, "10000000", "--data-dir", str(fashion_dir)]
        assert vgg_transfer.main([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.splitlines()[-1]
        which = "training" if flag == "--train-size" else "test"
        assert err.startswith(
            f"error: {flag} asks for 10,000,000 images, but split original-vgg's {which} set has "
        ), err
        assert not (tmp_path / "o").exists()


def test_a_runs_config_reruns_it(tiny_runs, capsys):
    stored = load(tiny_runs["manual"])["config"]
    assert printed_config(["--config", str(tiny_runs["manual"] / "results.json")], capsys) == stored


def test_stratified_subsets_refuse_a_bad_size():
    from jnn.data import take_stratified
    from jnn.errors import InputError

    idx, labels = np.arange(20), np.arange(20) % 4
    assert list(take_stratified(idx, labels, 4)) == [0, 1, 2, 3]
    assert take_stratified(idx, labels, None) is idx and take_stratified(idx, labels, 99) is idx
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="positive number of examples"):
            take_stratified(idx, labels, bad)


def test_it_has_no_resume_flag_since_a_run_cannot_be_continued(capsys, tmp_path):
    """A --resume it could not honour would start afresh silently: argparse refuses it."""
    with pytest.raises(SystemExit) as exit_:
        vgg_transfer.main(["--resume", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --resume" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()

"""experiments.cnn: --quick end to end on the real files (outputs written, the manual and the
jax.grad twins agree epoch by epoch), and bad flags as one-line errors."""

import json

import numpy as np
import pytest

from experiments import cnn


def test_quick_run_end_to_end(fashion_dir, tmp_path, capsys):
    out = tmp_path / "cnn"
    assert cnn.main(["--quick", "--data-dir", str(fashion_dir), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "curves.png"}
    res = json.loads((out / "results.json").read_text())
    assert res["sizes"] == dict(zip(("train", "val", "test"), cnn.QUICK_SUBSET))
    man, auto = res["networks"]["manual"], res["networks"]["autodiff"]
    assert len(man["times"]) == len(auto["times"]) == 2
    for key in ("train_loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(man["history"][key], auto["history"][key], rtol=1e-4)
    assert abs(man["test_accuracy"] - auto["test_accuracy"]) <= 1 / 128 + 1e-9
    assert res["epoch_time_ratio_manual_over_autodiff"] > 0
    assert "Manual / autodiff epoch time" in (out / "results.md").read_text()
    assert cnn.main(["--quick", "--data-dir", str(fashion_dir), "--out", str(out)]) == 2
    assert "already holds another run" in capsys.readouterr().err


def test_a_diverging_run_exits_3_and_says_so(fashion_dir, tmp_path, capsys):
    """An absurd Adam step (every param moves by ~lr) makes both twins' loss non-finite in the
    first epoch: fit stops each one there, results.json says "diverged" with the epoch and no
    test numbers (no state of a diverged net is kept), the report is still written, exit 3."""
    out = tmp_path / "cnn"
    argv = ["--subset", "64,32,32", "--epochs", "2", "--batch-size", "32", "--lr", "1e30"]
    assert cnn.main([*argv, "--data-dir", str(fashion_dir), "--out", str(out)]) == 3
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "diverged"
    for name, net in res["networks"].items():
        assert net["diverged_at"] == 1, name
        assert net["test_accuracy"] is None and net["test_loss"] is None, name
        first = net["history"]["train_loss"][0]  # NaN or inf, written as null or as is
        assert first is None or not np.isfinite(first), name
        assert len(net["times"]) == 1, name  # epoch 2 never ran
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "curves.png"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs must be an integer in [1, 10,000]"),
        (["--epochs", "3", "--autodiff-epochs", "4"], "--autodiff-epochs must be an integer"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--quick", "--batch-size", "1000"], "exceeds the 384 training examples"),
        (["--lr", "nan"], "--lr must be a positive finite number"),
        (["--lr", "1e-320"], "--lr 1e-320 is 0.0 in float32"),  # would train at lr 0
        (["--lr", "1e39"], "--lr 1e+39 is inf in float32"),  # and no numpy overflow warning
        (["--seed", "-1"], "--seed must be an integer in [0, "),
        (["--epoch-loop", "while"], "--epoch-loop must be one of"),
        (["--data-dir", "/nonexistent/jnn"], "is not a folder"),
        (["--subset", "1,2"], "--subset takes three numbers"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, message, capsys, tmp_path):
    assert cnn.main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_a_subset_larger_than_the_split_is_refused(fashion_dir, capsys, tmp_path):
    """Adversarial pass: --subset 100000,128,128 trained on the 54,000 official training images
    while the config recorded 100,000."""
    argv = ["--subset", "54001,1,1", "--data-dir", str(fashion_dir), "--out", str(tmp_path / "x")]
    assert cnn.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        "error: --subset asks for 54,001 training examples, but split official has 54,000; "
        "give at most that many"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("strides, padding, n", [((2, 2), "SAME", 9), ((2, 1), "VALID", 8)])
def test_explicit_transpose_kernel_gradient_is_bit_identical(strides, padding, n):
    """The "conv" lowering's kernel gradient (explicit transposes, so XLA:CPU's convolution stays
    canonical inside loops) gives exactly the bits of the swapped-dimension conv it replaced."""
    import jax
    import jax.numpy as jnp

    from bench.cnn_scan_probe import swapped_conv_backward
    from jnn.layers import Conv2D
    from jnn.layers.conv import axis_geometry

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, n, n + 1, 2)), jnp.float32)
    layer = Conv2D(4, 3, strides=strides, padding=padding, lowering="conv")
    params = {"w": jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32), "b": jnp.zeros(4)}
    geo = [axis_geometry(m, 3, s, padding) for m, s in zip(x.shape[1:3], strides)]
    pads = tuple(g[1:3] for g in geo)

    @jax.jit
    def both(params, x, dy):
        return layer.backward(params, x, dy), swapped_conv_backward(params, x, dy, strides, pads)

    dy = jnp.asarray(rng.standard_normal((3, geo[0][0], geo[1][0], 4)), jnp.float32)
    (want, want_dx), (got, got_dx) = both(params, x, dy)
    for a, b in ((got["w"], want["w"]), (got["b"], want["b"]), (got_dx, want_dx)):
        np.testing.assert_array_equal(a, b)


def test_it_has_no_resume_flag_since_a_run_cannot_be_continued(capsys, tmp_path):
    """A --resume it could not honour would start afresh silently: argparse refuses it."""
    with pytest.raises(SystemExit) as exit_:
        cnn.main(["--resume", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: --resume" in err
    assert err.count("\n") == 1 and not (tmp_path / "x").exists()

"""Whole models: manual backprop through serial (``value_and_grad(model, "manual")``) equals
``jax.grad`` of the same forward + softmax cross-entropy (``"autodiff"``), with Dropout drawing
the same masks from the same key and BatchNorm in training mode (its running state updated
identically by both)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.core import serial, value_and_grad
from jnn.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from tests.gradcheck import assert_tree_close, tol

DTYPES = [jnp.float32, jnp.float64]


def small_cnn():
    """The experiment's CNN (experiments/cnn.py) at reduced width."""
    return serial(
        Conv2D(4, 3),
        ReLU,
        MaxPool2D(2),
        Conv2D(6, 3),
        ReLU,
        MaxPool2D(2),
        Flatten,
        Dense(16),
        ReLU,
        Dropout(0.5),
        Dense(10),
    )


def bn_cnn():
    """A CNN with BatchNorm after a strided VALID conv and after a dense layer."""
    return serial(
        Conv2D(4, 3, strides=2, padding="VALID"),
        BatchNorm(),
        ReLU,
        MaxPool2D(2, 1),
        Flatten,
        Dense(12),
        BatchNorm(momentum=0.9),
        ReLU,
        Dropout(0.25),
        Dense(10),
    )


def vgg_head():
    """The VGG16 transfer head on (B, 512) features."""
    return serial(Dense(256), ReLU, Dropout(0.5), Dense(10))


def bn_head():
    """BatchNorm on (B, 12) features, between ReLU and Dropout (no bias right before it, so no
    gradient that is exactly zero in exact arithmetic)."""
    return serial(Dense(12), ReLU, BatchNorm(momentum=0.9), Dropout(0.25), Dense(10))


MODELS = {
    "cnn": (small_cnn, (9, 9, 1)),
    "bn_cnn": (bn_cnn, (11, 11, 2)),
    "vgg_head": (vgg_head, (512,)),
}
EVAL_ONLY = {"bn_head": (bn_head, (20,))}  # the fast tier's eval-mode model (bn_cnn is slow)


def check_model(name: str, dtype, train: bool = True):
    build, shape = {**MODELS, **EVAL_ONLY}[name]
    model = build()
    with jax.enable_x64(dtype == jnp.float64):
        _, params, state = model.init(jax.random.key(0), shape)
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((8, *shape)), dtype)
        y = jnp.arange(8) % 10
        key = jax.random.key(5)
        manual = jax.jit(value_and_grad(model, "manual"), static_argnames="train")
        auto = jax.jit(value_and_grad(model, "autodiff"), static_argnames="train")
        (loss, logits, new_state), grads = manual(params, state, x, y, key=key, train=train)
        (loss_r, logits_r, new_state_r), grads_r = auto(params, state, x, y, key=key, train=train)
        np.testing.assert_allclose(loss, loss_r, rtol=1e-6 if dtype == jnp.float32 else 1e-12)
        np.testing.assert_array_equal(logits, logits_r)
        jax.tree.map(np.testing.assert_array_equal, new_state, new_state_r)
        if train:  # in eval mode BatchNorm's mean is a constant: those biases do get gradient
            grads, grads_r = zero_pre_bn_biases(name, grads, grads_r, dtype)
        assert_tree_close(grads, grads_r, dtype, f"{name} grads")
        return grads, new_state


def zero_pre_bn_biases(name, grads, grads_r, dtype):
    """The bias of a layer followed by BatchNorm has gradient exactly 0 in exact arithmetic (the
    batch mean removes it); both sides hold rounding noise there, so a relative error means
    nothing. Check both are noise-sized (below tol * the first kernel's grad norm), then zero them.
    """
    if name != "bn_cnn":
        return grads, grads_r
    scale = tol(dtype) * float(jnp.linalg.norm(grads_r[0]["w"]))
    for tree in (grads, grads_r):
        for i in (0, 5):
            assert float(jnp.linalg.norm(tree[i]["b"])) < scale, (i, tree[i]["b"])
    fix = lambda g: tuple(  # noqa: E731
        {**g[i], "b": jnp.zeros_like(g[i]["b"])} if i in (0, 5) else g[i] for i in range(len(g))
    )
    return fix(grads), fix(grads_r)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_manual_grads_equal_jax_grad(name, dtype):
    check_model(name, dtype)


@pytest.mark.parametrize("name, bn", [("bn_cnn", 1), ("bn_head", 2)])
def test_eval_mode_grads_equal_jax_grad(name, bn):
    """train=False: no dropout, BatchNorm (layer ``bn``) on its running averages, state untouched.
    bn_head is the fast tier's case; bn_cnn adds BatchNorm over (B, H, W) and runs in the full."""
    _, state = check_model(name, jnp.float32, train=False)
    assert float(state[bn]["var"][0]) == 1.0 and float(state[bn]["mean"][0]) == 0.0


def test_dropout_masks_differ_between_layers_and_keys():
    """serial gives each Dropout its own key: a different key changes the gradients."""
    model = vgg_head()
    _, params, state = model.init(jax.random.key(0), (512,))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 512)), jnp.float32)
    fn = jax.jit(value_and_grad(model, "manual"))
    g1 = fn(params, state, x, jnp.arange(4), key=jax.random.key(1))[1]
    g2 = fn(params, state, x, jnp.arange(4), key=jax.random.key(2))[1]
    assert not np.array_equal(g1[0]["w"], g2[0]["w"])

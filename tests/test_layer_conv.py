"""Conv2D: the hand-written input gradient and kernel gradient equal jax.vjp of the forward, for
odd sizes, strides > 1, SAME and VALID (including trailing rows no window covers), float32 and
float64, in every lowering: "conv" (transposed convolution, correlation of x with dy), "gemm"
(im2col, P^T dy, col2im; also chunked over the batch with a padded last chunk) and "auto"; and
the lowerings agree with each other to float rounding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.core import serial
from jnn.errors import InputError
from jnn.layers import Conv2D, MaxPool2D, ReLU
from jnn.layers import conv as conv_module
from jnn.layers.conv import axis_geometry, batch_chunk, conv_plan, conv_plans
from tests.gradcheck import assert_tree_close
from tests.layer_checks import jit_vjp_check, random_params

DTYPES = [jnp.float32, jnp.float64]


def check(h, w, c, f, k, s, padding, dtype, seed=0, lowering="auto", batch=2):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(np.random.default_rng(seed).standard_normal((batch, h, w, c)), dtype)
        layer = Conv2D(f, k, s, padding, lowering=lowering)
        y, dparams, dx = jit_vjp_check(layer, x, seed=seed)
        assert dx.shape == x.shape and dparams["w"].shape == (*k, c, f)
        return y


@pytest.mark.parametrize("lowering", ["conv", "gemm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "h, w, k, s, padding",
    [
        (6, 6, (3, 3), (1, 1), "SAME"),
        (7, 7, (3, 3), (2, 2), "SAME"),  # odd size, stride 2
        (7, 8, (3, 2), (2, 3), "VALID"),  # last row/col of x not covered
        (9, 5, (4, 4), (3, 1), "SAME"),  # even kernel: padding split unevenly
    ],
)
def test_backward_equals_vjp(h, w, k, s, padding, dtype, lowering):
    check(h, w, 3, 4, k, s, padding, dtype, lowering=lowering)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    h=st.integers(3, 9),
    w=st.integers(3, 9),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    padding=st.sampled_from(["SAME", "VALID"]),
    dtype=st.sampled_from(DTYPES),
    lowering=st.sampled_from(["auto", "conv", "gemm"]),
)
def test_backward_equals_vjp_hypothesis(h, w, k, s, padding, dtype, lowering):
    check(h, w, 2, 3, (k, k), (s, s), padding, dtype, seed=h * 10 + w, lowering=lowering)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_chunked_gemm_with_padded_last_chunk_equals_vjp(monkeypatch, dtype):
    """A patch budget of two examples splits a batch of 5 into 3 chunks (the last padded with a
    zero example): forward, dx and dw still equal jax.vjp of the forward."""
    k, s, oh, ow, c = (3, 2), (2, 1), 4, 7, 3
    monkeypatch.setattr(
        conv_module, "PATCH_BUDGET_BYTES", 2 * oh * ow * 6 * c * np.dtype(dtype).itemsize
    )
    plan = conv_plan("gemm", (5, 7, 7, c), (*k, c, 4), (oh, ow), dtype)
    assert (plan.chunk, plan.chunks) == (2, 3)
    check(7, 7, c, 4, k, s, "SAME", dtype, lowering="gemm", batch=5)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("k, s, padding", [((3, 3), (1, 1), "SAME"), ((3, 2), (2, 3), "VALID")])
def test_lowerings_agree(monkeypatch, k, s, padding, dtype):
    """y, dparams and dx of "conv", "gemm" (whole batch and chunked) and "auto" agree to float
    rounding (the gradient-check tolerance) on the same params, input and cotangent."""
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(7)
        x = jnp.asarray(rng.standard_normal((3, 9, 8, 5)), dtype)
        layers = {
            name: Conv2D(6, k, s, padding, lowering=name) for name in ("conv", "gemm", "auto")
        }
        params, _ = random_params(layers["conv"], x.shape[1:], dtype, seed=1)

        def run(layer):
            y, cache, _ = layer.forward(params, (), x)
            return y, layer.backward(params, cache, jnp.cos(y))

        got = {name: jax.jit(run, static_argnums=0)(layer) for name, layer in layers.items()}
        monkeypatch.setattr(conv_module, "PATCH_BUDGET_BYTES", 1)  # one example per chunk
        got["gemm_chunked"] = jax.jit(run, static_argnums=0)(layers["gemm"])
        for name, value in got.items():
            assert_tree_close(value, got["conv"], dtype, f"{name} vs conv")


def test_auto_rule_and_plans():
    """auto on CPU: forward and dx GEMMs (dw a conv) on maps of at most SMALL_MAP positions,
    every pass a conv up to LARGE_MAP, above it only dw a GEMM; off CPU every pass a conv.
    conv_plans names each layer's choice and its chunking, and the patch bytes stay within the
    budget."""
    assert conv_module.auto_passes((14, 14), "cpu") == ("conv", "conv", "gemm")
    assert conv_module.auto_passes((9, 8), "cpu") == ("conv", "conv", "gemm")
    assert conv_module.auto_passes((8, 8), "cpu") == ("conv", "conv", "conv")
    assert conv_module.auto_passes((5, 4), "cpu") == ("conv", "conv", "conv")
    assert conv_module.auto_passes((4, 4), "cpu") == ("gemm", "gemm", "conv")
    assert conv_module.auto_passes((2, 2), "gpu") == ("conv", "conv", "conv")
    assert batch_chunk(128, 225_792, 4 * 2**20) == 16  # 18 fit: 8 chunks, evened out to 16
    assert batch_chunk(5, 10, 20) == 2 and batch_chunk(3, 100, 1) == 1
    model = serial(Conv2D(8, 3), ReLU, MaxPool2D(2), Conv2D(4, 3, lowering="conv"))
    assert "lowering=auto" in model.name and "lowering=conv" in model.name
    plans = conv_plans(model, (12, 12, 3), batch=64)
    assert [p["layer"] for p in plans] == [Conv2D(8, 3).name, Conv2D(4, 3, lowering="conv").name]
    first, second = plans
    assert (first["input_shape"], first["output_shape"]) == ((12, 12, 3), (12, 12, 8))
    passes = conv_module.auto_passes((12, 12), jax.default_backend())  # CPU: conv, conv, gemm
    assert (first["forward"], first["input_grad"], first["kernel_grad"]) == passes
    if "gemm" in passes:
        patch_bytes = first["chunk"] * 12 * 12 * 27 * 4
        assert first["patch_bytes"] == patch_bytes <= conv_module.PATCH_BUDGET_BYTES
    assert (second["forward"], second["kernel_grad"], second["patch_bytes"]) == ("conv", "conv", 0)


@pytest.mark.parametrize(
    "n, k, s, padding, expected",
    [
        (7, 3, 2, "SAME", (4, 1, 1, 0)),
        (8, 3, 2, "SAME", (4, 0, 1, 0)),
        (8, 3, 2, "VALID", (3, 0, 0, 1)),  # the 8th row is reached by no window
        (10, 4, 3, "VALID", (3, 0, 0, 0)),
    ],
)
def test_axis_geometry(n, k, s, padding, expected):
    assert axis_geometry(n, k, s, padding) == expected


def test_shapes_init_and_errors():
    layer = Conv2D(8, 3, strides=2)
    shape, params, state = layer.init(jax.random.key(0), (28, 28, 1))
    assert shape == (14, 14, 8) and state == ()
    assert params["w"].shape == (3, 3, 1, 8) and not np.asarray(params["b"]).any()
    std = float(jnp.std(Conv2D(64, 3).init(jax.random.key(0), (8, 8, 32))[1]["w"]))
    assert abs(std / np.sqrt(2 / (9 * 32)) - 1) < 0.05  # He: fan_in includes the 3x3 field
    with pytest.raises(ValueError, match="SAME"):
        Conv2D(8, 3, padding="full")
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        layer.init(jax.random.key(0), (784,))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        Conv2D(2, 5, padding="VALID").init(jax.random.key(0), (4, 4, 1))
    with pytest.raises(ValueError, match="positive"):
        Conv2D(0, 3)
    with pytest.raises(ValueError, match="lowering"):
        Conv2D(8, 3, lowering="fft")


def test_gemm_lowering_has_no_convolution():
    """ "gemm" really is patches + dots: no convolution primitive in forward or backward (the
    patches come from strided slices, not from conv_general_dilated_patches)."""
    layer = Conv2D(4, 3, strides=2, lowering="gemm")
    params, _ = random_params(layer, (7, 7, 3), np.float32)

    def step(x):
        y, cache, _ = layer.forward(params, (), x)
        return layer.backward(params, cache, y)

    jaxpr = str(jax.make_jaxpr(step)(jnp.ones((2, 7, 7, 3))))
    assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr


@pytest.mark.parametrize("s, padding", [(1, "SAME"), (2, "SAME"), (2, "VALID")])
def test_recorded_costs_equal_flax_conv_costs(s, padding):
    """jnn.conv_cost prices a traced Conv2D exactly as it prices the same Flax nn.Conv (MACs
    with and without the padding taps, params, bias adds)."""
    import flax.linen as nn

    from jnn.conv_cost import conv_layer_costs, recorded_conv_costs

    (ours,) = recorded_conv_costs(conv_plans(Conv2D(5, (3, 2), s, padding), (9, 8, 3), batch=2))
    flax_conv = nn.Conv(5, (3, 2), strides=s, padding=padding)
    x = jnp.zeros((2, 9, 8, 3))
    _, (theirs,) = conv_layer_costs(flax_conv, flax_conv.init(jax.random.key(0), x), x)
    assert dataclasses.replace(ours, name="") == dataclasses.replace(theirs, name="")


# ---------------------------------------------------------------- inputs the kernel cannot take


@pytest.mark.parametrize(
    "shape, dtype, says",
    [
        (
            (2, 6, 6, 3),
            jnp.float32,
            r"expects input \(batch, H, W, 1\) float32, got shape \(2, 6, 6, 3\)",
        ),
        (
            (2, 6, 6),
            jnp.float32,
            r"expects input \(batch, H, W, 1\) float32, got shape \(2, 6, 6\)",
        ),
        ((2, 6, 6, 1), jnp.uint8, "got dtype uint8; convert the images to float32"),
        ((2, 6, 6, 1), jnp.int32, "got dtype int32; convert the images to float32"),
    ],
    ids=["channels", "rank", "uint8", "int32"],
)
def test_forward_refuses_an_input_the_kernel_cannot_take(shape, dtype, says):
    """A wrong channel count or an integer image failed inside lax.conv_general_dilated with a
    JAX message; the layer's static check names the layer, the expected and the got input, the
    same way plain, under jit and under vmap (shapes and dtypes are static there)."""
    layer = Conv2D(4, 3)
    _, params, state = layer.init(jax.random.PRNGKey(0), (6, 6, 1))
    x = jnp.zeros(shape, dtype)
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
    calls = {
        "plain": lambda: layer.forward(params, state, x),
        "jit": lambda: jax.jit(lambda p, v: layer.forward(p, state, v)[0])(params, x),
        "vmap": lambda: jax.vmap(lambda p: layer.forward(p, state, x)[0])(stacked),
    }
    for how, call in calls.items():
        with pytest.raises(InputError, match=r"^Conv2D\(4, \(3, 3\).*" + says) as err:
            call()
        assert "\n" not in str(err.value), how


def test_forward_checks_change_no_number():
    """The checks only read static shapes: a float input of the right channels gives the
    lowering's output as before (same bits as calling the lowering directly)."""
    layer = Conv2D(4, 3, lowering="conv")
    _, params, state = layer.init(jax.random.PRNGKey(0), (6, 6, 2))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 6, 2))
    y, _, _ = layer.forward(params, state, x)
    direct, _ = conv_module.conv_forward(params, x, (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(direct))

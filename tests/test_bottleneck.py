"""jnn.bottleneck: the Q2 networks built from jnn's Conv2D have the parameter and MAC counts
tests/test_theory.py pins for the Flax networks, and compute the same function given the same
weights (Flax's nn.Conv kernel is HWIO like Conv2D's); network_costs and bottleneck_costs, the
measurement the theory command reports, are checked directly, bad inputs included."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn.bottleneck import (
    INPUT_SHAPE,
    NETWORKS,
    as_model,
    bottleneck_conv_layers,
    bottleneck_costs,
    conv_costs,
    direct_conv_layers,
    network_costs,
    numpy_params,
)
from jnn.conv_cost import BottleneckConv, DirectConv, numpy_init, xla_flops
from jnn.errors import InputError
from jnn.layers import Conv2D


def test_counts_match_the_pinned_flax_numbers():
    c1, c2 = conv_costs(direct_conv_layers()), conv_costs(bottleneck_conv_layers())
    assert [c["params"] for c in c1] == [153_632]
    assert [c["params"] for c in c2] == [3_088, 12_832]
    assert [c["macs"] for c in c1] == [120_422_400]
    assert [c["macs"] for c in c2] == [2_408_448, 10_035_200]
    assert [c["output_shape"] for c in c2] == [(28, 28, 16), (28, 28, 32)]
    ratio = sum(c["macs"] for c in c1) / sum(c["macs"] for c in c2)
    assert ratio == pytest.approx(9.677, abs=1e-3)


def test_counts_follow_the_layers():
    (c,) = conv_costs(direct_conv_layers(24, 3), (10, 10, 8))
    assert c["params"] == 3 * 3 * 8 * 24 + 24 and c["macs"] == 10 * 10 * 24 * 3 * 3 * 8


@pytest.mark.parametrize(
    "flax_model, layers, names",
    [
        (DirectConv(), direct_conv_layers(), ["conv5x5"]),
        (BottleneckConv(), bottleneck_conv_layers(), ["conv1x1", "conv5x5"]),
    ],
    ids=["direct", "bottleneck"],
)
def test_same_function_as_the_flax_network(flax_model, layers, names):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, *INPUT_SHAPE)), jnp.float32)
    variables = numpy_init(flax_model, x)
    params = tuple(
        {"w": variables["params"][n]["kernel"], "b": variables["params"][n]["bias"]} for n in names
    )
    model = as_model(layers)
    y = model.forward(params, ((),) * len(layers), x)[0]
    np.testing.assert_allclose(y, flax_model.apply(variables, x), rtol=1e-4, atol=1e-4)


ON_CPU = jax.default_device(jax.devices("cpu")[0])  # XLA's cost model below is the CPU one


@pytest.mark.parametrize(
    "layers, valid, flops",
    [
        (direct_conv_layers(), [134 * 134 * 192 * 32], 220_668_416),
        (bottleneck_conv_layers(), [2_408_448, 134 * 134 * 16 * 32], 23_241_472),
    ],
    ids=["direct", "bottleneck"],
)
def test_padding_free_macs_and_xla_flops(layers, valid, flops):
    """Padding-free MACs read off the layers (a 5-tap window over 28 positions, 2 zeros each
    side: 134 taps per dim); XLA's CPU count is 2 per such MAC plus one add per bias."""
    costs = conv_costs(layers)
    assert [c["valid_macs"] for c in costs] == valid
    assert [c["bias_adds"] for c in costs] == [math.prod(c["output_shape"]) for c in costs]
    model, params = as_model(layers), numpy_params(layers)
    assert [{k: v.shape for k, v in p.items()} for p in params] == [
        {"w": c["kernel_shape"], "b": (c["kernel_shape"][-1],)} for c in costs
    ]
    x = np.zeros((1, *INPUT_SHAPE), np.float32)
    with ON_CPU:
        got = xla_flops(lambda p, x: model.forward(p, ((),) * len(layers), x)[0], params, x)
    assert got == 2 * sum(valid) + sum(c["bias_adds"] for c in costs) == flops


@pytest.mark.parametrize("strides, padding", [(2, "SAME"), (1, "VALID"), ((2, 3), "SAME")])
def test_padding_free_macs_follow_strides_and_padding(strides, padding):
    layers = [Conv2D(8, (3, 5), strides=strides, padding=padding)]
    (c,) = conv_costs(layers, (13, 11, 16))
    x = np.zeros((1, 13, 11, 16), np.float32)
    with ON_CPU:
        got = xla_flops(
            lambda p, x: layers[0].forward(p[0], (), x)[0], numpy_params(layers, x.shape[1:]), x
        )
    assert got == 2 * c["valid_macs"] + c["bias_adds"]
    assert (c["valid_macs"] == c["macs"]) == (padding == "VALID")


def test_network_costs_of_a_small_network():
    """Counts per example whatever the batch; the returned forward is the compiled model."""
    layers = [Conv2D(4, 3, padding="SAME"), Conv2D(2, 1, padding="VALID")]
    xb = jnp.asarray(np.random.default_rng(1).standard_normal((3, 6, 5, 2)), jnp.float32)
    with ON_CPU:
        net, forward = network_costs(layers, xb, seed=1)
    assert net["output_shape"] == (6, 5, 2) and net["batch_output_shape"] == (3, 6, 5, 2)
    assert net["params"] == (3 * 3 * 2 * 4 + 4) + (4 * 2 + 2)
    assert net["macs"] == 6 * 5 * 4 * 3 * 3 * 2 + 6 * 5 * 2 * 4
    assert [c["name"] for c in net["layers"]] == ["conv3x3", "conv1x1"]
    assert net["xla_flops_is_2valid_macs_plus_bias"]
    assert net["xla_flops"] == 2 * net["valid_macs"] + net["bias_adds"]
    params = numpy_params(layers, (6, 5, 2), seed=1)
    expected = as_model(layers).forward(params, ((), ()), xb)[0]
    np.testing.assert_allclose(forward(xb), expected, rtol=1e-5, atol=1e-5)


def test_bottleneck_costs_answer_the_question():
    with ON_CPU:
        got = bottleneck_costs(seed=0, batch=1, repeats=1)
    n1, n2 = (got["networks"][name] for name in NETWORKS)
    assert (n1["params"], n2["params"]) == (153_632, 15_920)
    assert (n1["macs"], n2["macs"]) == (120_422_400, 12_443_648)
    assert (n1["xla_flops"], n2["xla_flops"]) == (220_668_416, 23_241_472)
    assert n1["output_shape"] == n2["output_shape"] == (28, 28, 32)
    assert n1["forward_median_s"] > 0 and n2["forward_median_s"] > 0
    r = got["ratio_network1_over_network2"]
    assert r["macs"] == pytest.approx(120_422_400 / 12_443_648)
    assert r["forward_median_s"] == n1["forward_median_s"] / n2["forward_median_s"]
    assert (got["batch"], got["repeats"], got["input_shape"]) == (1, 1, INPUT_SHAPE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch": 0}, "batch must be an integer >= 1"),
        ({"repeats": 2.0}, "repeats must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"batch": True}, "batch must be an integer"),
    ],
)
def test_bottleneck_costs_refuse_bad_inputs(kwargs, message):
    with pytest.raises(InputError, match=message):
        bottleneck_costs(**kwargs)


def test_network_costs_refuse_an_unbatched_input():
    with pytest.raises(InputError, match=r"xb must be a batch \(B, H, W, C\)"):
        network_costs(direct_conv_layers(), jnp.zeros(INPUT_SHAPE))

"""jnn.models: networks by name, built from the dataset's shapes; the entries are the networks
the studies trained before the registry (same layers, same init from the same key)."""

import jax
import numpy as np
import pytest

from jnn import models
from jnn.core import serial
from jnn.errors import InputError
from jnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from jnn.mlp import mlp


def _same_init(a, b, shape) -> None:
    key = jax.random.PRNGKey(3)
    out_a, pa, sa = a.init(key, shape)
    out_b, pb, sb = b.init(key, shape)
    assert out_a == out_b
    for x, y in zip(jax.tree.leaves((pa, sa)), jax.tree.leaves((pb, sb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_cnn_entry_is_the_experiments_network():
    before = serial(
        Conv2D(32, 3), ReLU, MaxPool2D(2), Conv2D(64, 3), ReLU, MaxPool2D(2),
        Flatten, Dense(128, init="he"), ReLU, Dropout(0.5), Dense(10, init="glorot"),
    )  # fmt: skip
    _same_init(models.build("cnn", input_shape=(28, 28, 1), classes=10), before, (28, 28, 1))


def test_mlp_entry_takes_its_width_from_the_input_shape():
    built = models.build("mlp", input_shape=(28, 28, 1), classes=10, activation="tanh")
    _same_init(built, mlp((784, 256, 128, 64, 10), "tanh", "normal"), (784,))
    small = models.build("mlp", input_shape=(8, 8, 1), classes=3, hidden=(5,))
    assert small.init(jax.random.PRNGKey(0), (64,))[0] == (3,)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("resnet", {}, "unknown model 'resnet': choose from mlp, cnn, vgg_head"),
        ("cnn", {"input_shape": (784,)}, r"\(H, W, C\) images"),
        ("mlp", {"input_shape": (784,), "classes": 10, "colour": 1}, "model 'mlp': .*colour"),
    ],
)
def test_bad_names_and_arguments_are_one_line(name, kwargs, match):
    with pytest.raises(InputError, match=match):
        models.build(name, **kwargs)

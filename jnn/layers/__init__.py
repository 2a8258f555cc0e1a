"""Layers of the protocol in :mod:`jnn.core`, one module each, every backward written by hand.

The activations (``ReLU``, ``Sigmoid``, ``Tanh``, ``Linear``, ``Softmax``) live in
:mod:`jnn.activations` next to their forward/backward pairs and are re-exported here.
"""

from jnn.activations import Linear, ReLU, Sigmoid, Softmax, Tanh, activation_layer
from jnn.layers.dense import Dense, DenseParams, dense_backward, dense_forward, dense_init

__all__ = [
    "Dense",
    "DenseParams",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "activation_layer",
    "dense_backward",
    "dense_forward",
    "dense_init",
]

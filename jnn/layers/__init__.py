"""Layers of the protocol in :mod:`jnn.core`, one module each, every backward written by hand.

The activations (``ReLU``, ``Sigmoid``, ``Tanh``, ``Linear``, ``Softmax``) live in
:mod:`jnn.activations` next to their forward/backward pairs and are re-exported here.

Layers without hyper-parameters are values (``ReLU``, ``Flatten``); layers with them are
factories called to make the value (``Dense(10)``, ``Conv2D(32, 3)``, ``MaxPool2D(2)``,
``Dropout(0.5)``, ``BatchNorm()``)::

    serial(Conv2D(32, 3), ReLU, MaxPool2D(2), Flatten, Dense(128), ReLU, Dropout(0.5), Dense(10))
"""

from jnn.activations import Linear, ReLU, Sigmoid, Softmax, Tanh, activation_layer
from jnn.layers.batchnorm import BatchNorm, batchnorm_backward
from jnn.layers.conv import Conv2D, conv_backward, conv_forward
from jnn.layers.dense import Dense, DenseParams, dense_backward, dense_forward, dense_init
from jnn.layers.dropout import Dropout
from jnn.layers.flatten import Flatten
from jnn.layers.pool import MaxPool2D, maxpool_backward, maxpool_forward
from jnn.layers.select import SelectActivation

__all__ = [
    "BatchNorm",
    "Conv2D",
    "Dense",
    "DenseParams",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2D",
    "ReLU",
    "SelectActivation",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "activation_layer",
    "batchnorm_backward",
    "conv_backward",
    "conv_forward",
    "dense_backward",
    "dense_forward",
    "dense_init",
    "maxpool_backward",
    "maxpool_forward",
]

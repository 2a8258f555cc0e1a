"""jnn: manual backprop in JAX, checked against jax.grad.

Data flows one way: primitives (activations, initializers, losses) -> layers -> mlp -> train.
"""

__version__ = "0.1.0"

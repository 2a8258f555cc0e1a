"""``jit_vjp_check`` (a layer's backward against ``jax.vjp`` in one ``jax.jit``) and
``random_params``, re-exported from :mod:`jnn.testing`, their public home."""

from jnn.testing import assert_tree_close, jit_vjp_check, random_params, tol

__all__ = ["assert_tree_close", "jit_vjp_check", "random_params", "tol"]

"""The gradient check every test uses, re-exported from :mod:`jnn.testing` (its home since it
became public: users check their own layers with the same functions and tolerances).

    rel_err(a, b) = ||a - b||_2 / ||b||_2      per leaf, float64; absolute where b is exactly 0
    at most 1e-5 in float32 and 1e-10 in float64
"""

from jnn.testing import (
    TOL,
    assert_tree_close,
    layer_vjp_check,
    model_grad_check,
    rel_err,
    tol,
    tree_rel_errs,
)

__all__ = [
    "TOL",
    "assert_tree_close",
    "layer_vjp_check",
    "model_grad_check",
    "rel_err",
    "tol",
    "tree_rel_errs",
]

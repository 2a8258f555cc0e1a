"""jnn.losses: both cross-entropy backwards equal jax.vjp; the fused one is (p - y) / B, stable;
inputs that would give silently wrong maths (labels out of range, broadcasting shapes, soft targets
that are not distributions) are refused with one-line InputErrors, shapes also under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn.errors import InputError
from jnn.losses import (
    check_labels,
    check_targets,
    cross_entropy,
    cross_entropy_backward,
    cross_entropy_rows,
    entropy,
    kl_divergence,
    log_softmax,
    one_hot,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
    targets_for,
)
from tests.gradcheck import assert_tree_close

DTYPES = [jnp.float32, jnp.float64]
SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
SHAPES = st.sampled_from([(1, 2), (1, 10), (4, 3), (32, 10)])


def batch(seed, shape, dtype, scale=1.0, soft=False):
    """(logits, targets) from numpy: one-hot rows, or random distributions when ``soft``."""
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal(shape)
    if soft:
        targets = rng.dirichlet(np.ones(shape[1]), size=shape[0])
    else:
        targets = np.eye(shape[1])[rng.integers(0, shape[1], shape[0])]
    return jnp.asarray(logits, dtype), jnp.asarray(targets, dtype)


@jax.jit
def fused_manual_and_vjp(logits, targets, g):
    loss, cache = softmax_cross_entropy(logits, targets)
    _, vjp = jax.vjp(lambda z: softmax_cross_entropy(z, targets)[0], logits)
    return softmax_cross_entropy_backward(cache, g), vjp(g)[0], loss


@jax.jit
def probs_manual_and_vjp(probs, targets, g):
    _, vjp = jax.vjp(lambda p: cross_entropy(p, targets), probs)
    return g * cross_entropy_backward(probs, targets), vjp(g)[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@SETTINGS
@given(
    shape=SHAPES,
    scale=st.sampled_from([1e-2, 1.0, 10.0, 100.0]),
    soft=st.booleans(),
    g=st.sampled_from([1.0, -0.5, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_fused_backward_matches_vjp(shape, scale, soft, g, seed, dtype):
    """(p - y) / B, times the loss cotangent g, is the VJP of the fused loss wrt the logits."""
    with jax.enable_x64(dtype == jnp.float64):
        logits, targets = batch(seed, shape, dtype, scale, soft)
        manual, reference, _ = fused_manual_and_vjp(logits, targets, jnp.asarray(g, dtype))
        assert_tree_close(manual, reference, dtype, "fused CE dlogits")


def test_fused_backward_is_p_minus_y_over_b():
    logits, targets = batch(0, (8, 5), jnp.float32)
    _, cache = softmax_cross_entropy(logits, targets)
    expected = (jax.nn.softmax(logits) - targets) / 8
    np.testing.assert_allclose(softmax_cross_entropy_backward(cache), expected, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@SETTINGS
@given(
    shape=SHAPES,
    scale=st.sampled_from([1e-2, 1.0, 5.0]),
    soft=st.booleans(),
    g=st.sampled_from([1.0, -0.5, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_probs_backward_matches_vjp(shape, scale, soft, g, seed, dtype):
    """-t / (B p): the VJP of cross-entropy on probabilities (away from the clip at p < tiny)."""
    with jax.enable_x64(dtype == jnp.float64):
        logits, targets = batch(seed, shape, dtype, scale, soft)
        probs = jax.nn.softmax(logits)
        manual, reference = probs_manual_and_vjp(probs, targets, jnp.asarray(g, dtype))
        assert_tree_close(manual, reference, dtype, "CE dprobs")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fused_equals_cross_entropy_of_softmax(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        logits, targets = batch(1, (16, 10), dtype, 3.0, soft=True)
        fused, (probs, cached_targets) = softmax_cross_entropy(logits, targets)
        two_step = cross_entropy(jax.nn.softmax(logits), targets)
        np.testing.assert_allclose(fused, two_step, rtol=10 * jnp.finfo(dtype).eps)
        np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=10 * jnp.finfo(dtype).eps)
        np.testing.assert_array_equal(cached_targets, targets)


@pytest.mark.filterwarnings("error")  # e.g. an overflow RuntimeWarning fails the test
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_fused_is_finite_and_exact_at_logits_1e4(dtype):
    with jax.enable_x64(dtype == jnp.float64), jax.debug_nans(True), jax.debug_infs(True):
        logits = jnp.asarray([[1e4, -1e4], [-1e4, 1e4], [1e4, 1e4]], dtype)
        targets = one_hot(jnp.array([1, 1, 0]), 2, dtype)
        loss, cache = softmax_cross_entropy(logits, targets)
        dlogits = softmax_cross_entropy_backward(cache)
        autodiff = jax.grad(lambda z: softmax_cross_entropy(z, targets)[0])(logits)
    # Row losses 2e4, 0 and log 2; the gradient rows are (p - y) / 3.
    np.testing.assert_allclose(loss, (2e4 + np.log(2)) / 3, rtol=4 * jnp.finfo(dtype).eps)
    expected = np.array([[1, -1], [0, 0], [-0.5, 0.5]]) / 3
    np.testing.assert_allclose(dlogits, expected, rtol=4 * jnp.finfo(dtype).eps)
    np.testing.assert_allclose(autodiff, expected, rtol=4 * jnp.finfo(dtype).eps)


@pytest.mark.filterwarnings("error")  # e.g. an overflow RuntimeWarning fails the test
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_cross_entropy_on_probs_with_zeros_is_finite(dtype):
    with jax.enable_x64(dtype == jnp.float64), jax.debug_nans(True), jax.debug_infs(True):
        probs = jnp.asarray([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype)
        targets = jnp.asarray([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype)
        loss = cross_entropy(probs, targets)
        manual = cross_entropy_backward(probs, targets)
        autodiff = jax.grad(cross_entropy)(probs, targets)
    tiny = jnp.finfo(dtype).tiny
    # -log(tiny) is the most a clipped probability can cost: ~87 (f32), ~708 (f64).
    np.testing.assert_allclose(loss, (-np.log(tiny) + np.log(2)) / 2, rtol=1e-6)
    # The clipped entry gets the clipped function's gradient, 0, in both; the rest is -t / (B p).
    np.testing.assert_array_equal(manual, [[0, 0, 0], [0, -1, 0]])
    np.testing.assert_array_equal(autodiff, manual)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(shape=SHAPES, scale=st.sampled_from([1e-2, 1.0, 30.0]), seed=st.integers(0, 2**16))
def test_log_softmax_entropy_kl_identities(shape, scale, seed):
    with jax.enable_x64(True):
        logits, _ = batch(seed, shape, jnp.float64, scale)
        _, p = batch(seed + 1, shape, jnp.float64, soft=True)
        np.testing.assert_allclose(log_softmax(logits), jax.nn.log_softmax(logits), atol=1e-12)
        q = jax.nn.softmax(logits)
        # Cross-entropy = entropy + KL, row by row; KL(p || p) = 0 and KL >= 0.
        np.testing.assert_allclose(
            cross_entropy_rows(p, q), entropy(p) + kl_divergence(p, q), rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(kl_divergence(p, p), 0.0, atol=1e-12)
        assert (kl_divergence(p, q) >= -1e-12).all()


def test_entropy_of_uniform_and_one_hot():
    np.testing.assert_allclose(entropy(jnp.full((2, 8), 1 / 8)), np.log(8), rtol=1e-6)
    np.testing.assert_array_equal(entropy(one_hot(jnp.array([0, 3]), 4)), 0.0)  # 0 log 0 = 0


def test_one_hot():
    y = one_hot(jnp.array([2, 0]), 3)
    np.testing.assert_array_equal(y, [[0, 0, 1], [1, 0, 0]])
    assert y.dtype == jnp.float32


# --------------------------------------------------------------------------- input checks


def assert_one_line(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    """A one-line InputError (a ValueError) that mentions every needle."""
    assert isinstance(excinfo.value, InputError) and isinstance(excinfo.value, ValueError)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def ce_and_manual_grad(logits, targets):
    """Loss, the fused manual backward and jax.grad, computed without any jnn check."""
    log_probs = jax.nn.log_softmax(logits)

    def f(z):
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(z), axis=-1))

    manual = (jnp.exp(log_probs) - targets) / logits.shape[0]
    return f(logits), manual, jax.grad(f)(logits)


def rel_error(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def logits_labels(batch=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    z = jnp.asarray(rng.standard_normal((batch, classes)), jnp.float32)
    return z, rng.integers(0, classes, batch).astype(np.int32)


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_out_of_range_labels_are_refused(bad):
    """jax.nn.one_hot zeroes such a row: a lower loss and a manual gradient ~20% off jax.grad."""
    z, y = logits_labels()
    y[[5, 9, 20]] = bad
    silent = jax.nn.one_hot(y, 10)
    assert float(jnp.sum(silent)) == 29.0  # three all-zero rows
    loss, manual, autodiff = ce_and_manual_grad(z, silent)
    assert loss < ce_and_manual_grad(z, one_hot(y % 10, 10))[0]
    assert rel_error(manual, autodiff) > 0.1
    for call in (lambda: one_hot(y, 10), lambda: targets_for(y, z), lambda: check_labels(y, 10)):
        with pytest.raises(InputError) as e:
            call()
        assert_one_line(e, "[0, 10)", f"found {bad}", "3 of 32 labels", "at index 5", "remap")
    with pytest.raises(InputError) as e:  # jax arrays outside jit are concrete too
        one_hot(jnp.asarray(y), 10)
    assert_one_line(e, f"found {bad}")


def test_check_labels_catches_what_jit_cannot():
    """Under jit the values are tracers: one_hot cannot read them, check_labels on the data can."""
    z, y = logits_labels(64)
    y[40] = 10

    @jax.jit
    def loss(z, y):
        return softmax_cross_entropy(z, targets_for(y, z))[0]

    assert np.isfinite(loss(z, y))  # not checkable inside: documented, hence check_labels
    for data in (y, jnp.asarray(y), list(y)):
        with pytest.raises(InputError) as e:
            check_labels(data, 10)
        assert_one_line(e, "found 10", "1 of 64 labels", "at index 40")
    with pytest.raises(InputError) as e:
        check_labels(y, 10, what="training labels")
    assert_one_line(e, "training labels must lie in [0, 10)")
    check_labels(np.arange(60_000) % 10, 10)  # a whole dataset: fine, returns None
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(lambda y: check_labels(y, 10))(jnp.asarray(y))


@pytest.mark.parametrize(
    "labels,needles",
    [
        (np.zeros((32, 1), np.int32), ["1-D (B,)", "(32, 1)", "reshape(-1)"]),
        (np.zeros((1,), np.int32), ["1 labels for 32 rows", "broadcast"]),
        (np.zeros((31,), np.int32), ["31 labels for 32 rows"]),
        (np.zeros((32, 10), np.int32), ["1-D (B,)", "(32, 10)"]),
        (np.zeros((32,), np.bool_), ["integer class indices", "bool"]),
        (np.zeros((32,), np.float32), ["logits' shape (32, 10)", "got (32,)", "broadcast"]),
        (np.full((32, 1), 1.0, np.float32), ["logits' shape (32, 10)", "(32, 1)"]),
    ],
    ids=["B-by-1", "length-1", "short", "int-rows", "bool", "float-1d", "float-B-by-1"],
)
def test_label_shapes_that_would_broadcast_are_refused(labels, needles):
    """(B, 1) or (1,) labels broadcast silently in the old code; refused, eagerly and under jit."""
    z, y = logits_labels()
    with jax.enable_x64(False):
        if labels.shape == (32, 1) and labels.dtype == np.int32:  # the old silent answer
            old = jnp.mean(-jnp.sum(labels.astype(np.float32) * jax.nn.log_softmax(z), -1))
            assert np.isfinite(old)

        def loss(z, y):
            return softmax_cross_entropy(z, targets_for(y, z))[0]

        for fn in (loss, jax.jit(loss)):
            with pytest.raises(InputError) as e:
                fn(z, labels)
            assert_one_line(e, *needles)


def test_shape_errors_raise_under_jit():
    z, y = logits_labels()
    t = one_hot(y, 10)
    cases = [
        (lambda z, t: softmax_cross_entropy(z, t[:, :1]), ["(32, 10)", "(32, 1)"]),
        (lambda z, t: softmax_cross_entropy(z, t[:1]), ["(32, 10)", "(1, 10)"]),
        (lambda z, t: softmax_cross_entropy(z[None], t), ["logits", "(1, 32, 10)"]),
        (lambda z, t: softmax_cross_entropy(z[0], t[0]), ["logits", "(10,)"]),
        (lambda z, t: softmax_cross_entropy(z, t.astype(jnp.int32)), ["float", "int32"]),
        (lambda z, t: softmax_cross_entropy(z.astype(jnp.int32), t), ["float", "int32"]),
        (lambda z, t: softmax_cross_entropy(z[:0], t[:0]), ["at least one row", "(0, 10)"]),
        (lambda z, t: cross_entropy(jax.nn.softmax(z), t[:, :1]), ["(32, 10)", "(32, 1)"]),
        (lambda z, t: cross_entropy_backward(jax.nn.softmax(z), t[:1]), ["(1, 10)"]),
        (lambda z, t: one_hot(t.astype(jnp.int32), 10), ["1-D", "(32, 10)"]),
        (lambda z, t: targets_for(t[:, 0].astype(jnp.int32)[:, None], z), ["reshape(-1)"]),
        (
            lambda z, t: softmax_cross_entropy_backward(softmax_cross_entropy(z, t)[1], t[:, 0]),
            ["dloss must be a scalar", "(32,)"],
        ),
        (lambda z, t: softmax_cross_entropy_backward((z, t, t)), ["(probs, targets)"]),
    ]
    for fn, needles in cases:
        for f in (fn, jax.jit(fn)):
            with pytest.raises(InputError) as e:
                f(z, t)
            assert_one_line(e, *needles)


def test_checks_hold_under_vmap_and_grad():
    """vmap over models (data unmapped) keeps (B, C) shapes; grad wrt logits still reads targets."""
    z, y = logits_labels(8)
    stacked = jnp.stack([z, 2 * z])
    losses_ = jax.vmap(lambda zz: softmax_cross_entropy(zz, targets_for(y, zz))[0])(stacked)
    assert losses_.shape == (2,)
    bad = y.copy()
    bad[3] = 12
    with pytest.raises(InputError, match="found 12"):  # y is concrete inside grad / vmap
        jax.grad(lambda zz: softmax_cross_entropy(zz, targets_for(bad, zz))[0])(z)
    with pytest.raises(InputError, match="found 12"):
        jax.vmap(lambda zz: softmax_cross_entropy(zz, targets_for(bad, zz))[0])(stacked)


def soft_rows(batch=32, classes=10, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(classes), size=batch).astype(dtype)


@pytest.mark.parametrize("mass", [2.5, 0.5, 1.01])
def test_soft_targets_that_are_not_distributions_are_refused(mass):
    """(p - t) / B is jax.grad only for rows summing to 1: up to ~150% off otherwise."""
    z, _ = logits_labels()
    t = soft_rows() * np.float32(mass)
    _, manual, autodiff = ce_and_manual_grad(z, jnp.asarray(t))
    assert rel_error(manual, autodiff) > (0.005 if mass == 1.01 else 0.3)
    # the exact gradient of the loss for any rows: (p * sum(t) - t) / B
    general = (jax.nn.softmax(z) * t.sum(-1, keepdims=True) - t) / 32
    np.testing.assert_allclose(general, autodiff, rtol=1e-5, atol=1e-7)
    for call in (
        lambda: softmax_cross_entropy(z, t),
        lambda: targets_for(t, z),
        lambda: check_targets(t),
        lambda: softmax_cross_entropy(z, jnp.asarray(t)),
    ):
        with pytest.raises(InputError) as e:
            call()
        assert_one_line(e, "rows must sum to 1", "row 0 sums to", "32 of 32 rows", "normalise")


@pytest.mark.parametrize(
    "edit,needles",
    [
        (lambda t: t.__setitem__((3, 2), -0.25), ["non-negative", "row 3", "-0.25", "1 of 32"]),
        (lambda t: t.__setitem__((7, 0), np.nan), ["finite", "row 7", "nan"]),
        (lambda t: t.__setitem__((4, 1), np.inf), ["finite", "row 4", "inf"]),
        (lambda t: t.__setitem__(9, 0.0), ["sum to 1", "row 9 sums to 0 ", "1 of 32"]),
    ],
    ids=["negative", "nan", "inf", "zero-row"],
)
def test_bad_target_values_are_refused(edit, needles):
    z, _ = logits_labels()
    t = soft_rows()
    edit(t)
    for call in (lambda: softmax_cross_entropy(z, t), lambda: check_targets(t)):
        with pytest.raises(InputError) as e:
            call()
        assert_one_line(e, *needles)


def test_check_targets_up_front_for_jitted_loops():
    z, _ = logits_labels()
    t = soft_rows() * np.float32(2.5)
    jitted = jax.jit(lambda z, t: softmax_cross_entropy(z, t)[0])
    assert np.isfinite(jitted(z, t))  # tracers: not checkable inside, hence check_targets
    with pytest.raises(InputError, match="sum to 1"):
        check_targets(t)
    with pytest.raises(InputError, match=r"\(N, C\)"):
        check_targets(t[0])
    with pytest.raises(TypeError, match="outside jax.jit"):
        jax.jit(check_targets)(t)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64])
def test_target_tolerance_follows_the_dtype(dtype):
    """Rows rounded to the dtype pass; rows off by much more than its eps fail."""
    with jax.enable_x64(dtype == jnp.float64):
        z, y = logits_labels()
        z = z.astype(dtype)
        eps = float(jnp.finfo(dtype).eps)
        ok = [soft_rows(dtype=np.float64), 0.9 * np.eye(10)[y] + 0.01]  # dirichlet, smoothed
        for rows in ok:
            t = jnp.asarray(rows, dtype)
            softmax_cross_entropy(z, t)  # no error
            check_targets(t)
            np.testing.assert_array_equal(targets_for(t, z), t)
        off = soft_rows(dtype=np.float64)
        off[0] *= 1 + 400 * eps  # far beyond rounding: 400 eps vs 16 sqrt(10) eps ~ 51 eps
        with pytest.raises(InputError, match="sum to 1"):
            softmax_cross_entropy(z, jnp.asarray(off, dtype))


def unchecked_softmax_cross_entropy(logits, targets):
    """The implementation before the checks were added, verbatim."""
    log_probs = log_softmax(logits)
    loss = -jnp.mean(jnp.sum(targets * log_probs, axis=-1))
    return loss, (jnp.exp(log_probs), targets)


def test_valid_inputs_keep_the_numerics_bit_for_bit():
    """The checks only read values: one-hot rows, casts, the loss and (p - y) / B are what they
    were (compared in the same mode, eager or jit, since XLA may fuse differently)."""
    z, y = logits_labels(64)
    np.testing.assert_array_equal(one_hot(y, 10), jax.nn.one_hot(y, 10))
    np.testing.assert_array_equal(targets_for(y, z), jax.nn.one_hot(y, 10, dtype=z.dtype))
    t = soft_rows(64, dtype=np.float64)
    np.testing.assert_array_equal(targets_for(t, z), jnp.asarray(t).astype(z.dtype))

    def new(z, y):
        loss, cache = softmax_cross_entropy(z, targets_for(y, z))
        return loss, softmax_cross_entropy_backward(cache, 2.0)

    def old(z, y):
        loss, (probs, targets) = unchecked_softmax_cross_entropy(z, jax.nn.one_hot(y, 10))
        return loss, 2.0 * (probs - targets) / 64

    for wrap in (lambda f: f, jax.jit):
        for a, b in zip(wrap(new)(z, y), wrap(old)(z, y)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True, None])
def test_bad_num_classes(num_classes):
    with pytest.raises(InputError) as e:
        one_hot(np.array([0, 1]), num_classes)
    assert_one_line(e, "num_classes")
    with pytest.raises(InputError):
        check_labels(np.array([0, 1]), num_classes)

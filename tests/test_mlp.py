"""jnn.mlp: manual backprop through the whole MLP (``mlp.mlp(...)``, a ``jnn.core.serial`` model,
through ``jnn.core.value_and_grad``) equals jax.grad, for every hidden activation, every
initializer and several architectures, in float32 and float64, jitted and not.

Tolerances (tests/gradcheck.py): per-leaf relative error <= 1e-5 in float32, <= 1e-10 in float64;
a leaf whose reference is exactly zero (zero init) must match to that tolerance in absolute terms.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jnn import core
from jnn.activations import ACTIVATIONS
from jnn.initializers import INITIALIZERS
from jnn.mlp import dense_params, init_mlp, mlp
from jnn.study import StudyConfig
from tests.gradcheck import assert_tree_close, rel_err

ACTS = sorted(ACTIVATIONS)
INITS = sorted(INITIALIZERS)
STUDY_SIZES = StudyConfig().sizes  # (784, 256, 128, 64, 10)
# Nets with hidden layers, so the activation is in them: the grid crosses both with every one.
ARCHS = {"study": STUDY_SIZES, "odd": (3, 7, 1, 5)}
SINGLE = (4, 3)  # one dense layer: no activation in the net, so one grid case per dtype
DTYPES = ("float32", "float64")


def make_batch(seed, batch, n_in, n_classes, dtype, scale=1.0, soft=False):
    """x ~ scale * N(0, 1) (B, n_in) and int labels (B,) or random probability rows (B, C)."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(scale * rng.standard_normal((batch, n_in)), dtype)
    if soft:
        return x, jnp.asarray(rng.dirichlet(np.ones(n_classes), size=batch), dtype)
    return x, jnp.asarray(rng.integers(0, n_classes, batch), jnp.int32)


@functools.cache
def network(sizes, activation):
    """One model value per (sizes, activation), so the jitted functions below compile once per
    shape (the init is irrelevant here: params come from :func:`init_all`)."""
    return mlp(sizes, activation)


def manual_value_and_grad(sizes, activation):
    """The code under test: the model's hand-written backward (``core.value_and_grad``)."""
    return core.value_and_grad(network(tuple(sizes), activation))


# The reference, jax.grad of the same forward and loss, always compiled: the code under test is
# the manual backprop, which the chex variants below run both under jax.jit and eagerly.
@functools.cache
def reference_value_and_grad(sizes, activation):
    return jax.jit(core.value_and_grad(network(sizes, activation), "autodiff"))


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_all(key, sizes, dtype):
    """{init name: (params, state)} of ``mlp(sizes, ..., init, dtype)`` for every initializer,
    in one compile (eager init would compile the random draws once per layer shape, dtype and
    initializer)."""
    shape = (sizes[0],)
    return {init: mlp(sizes, "linear", init, dtype).init(key, shape)[1:] for init in INITS}


def check_against_autodiff(manual, sizes, activation, init, dtype, seed=0, batch=8, **data):
    """Build a net and a batch in ``dtype``; require ``manual`` (a variant of the model's
    ``core.value_and_grad``) == jax.grad to tol(dtype), for the grads, the loss and the logits."""
    with jax.enable_x64(dtype == "float64"):
        params, state = init_all(jax.random.PRNGKey(seed), tuple(sizes), jnp.dtype(dtype))[init]
        x, y = make_batch(seed, batch, sizes[0], sizes[-1], dtype, **data)
        (value, logits, _), grads = manual(params, state, x, y)
        reference = reference_value_and_grad(tuple(sizes), activation)
        (ref_value, ref_logits, _), ref_grads = reference(params, state, x, y)
        what = f"{activation}/{init}/{list(sizes)}/{dtype}"
        assert_tree_close(grads, ref_grads, dtype, what)
        assert_tree_close([value, logits], [ref_value, ref_logits], dtype, what + " loss, logits")
        assert np.isfinite(float(value))


class ManualEqualsAutodiff(chex.TestCase):
    """The project's signature: the full grid, with and without jax.jit (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(activation=ACTS, arch=sorted(ARCHS), dtype=DTYPES)
    def test_grid(self, activation, arch, dtype):
        """Every init inside one test: they share one compile (the shapes do not change), which
        pytest-xdist would otherwise repeat on each worker."""
        self._check_every_init(ARCHS[arch], activation, dtype)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(dtype=DTYPES)
    def test_grid_single_dense_layer(self, dtype):
        """No hidden layer: the net is Dense alone whatever the activation name (each name would
        rerun the same computation), so one name stands for all."""
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)  # a PRNGKey, traced, never drawn from
        params = jax.eval_shape(lambda k: network(SINGLE, "sigmoid").init(k, (4,))[1], key)
        assert len(params) == 1  # Dense's, and no activation layer
        self._check_every_init(SINGLE, "sigmoid", dtype)

    def _check_every_init(self, sizes, activation, dtype):
        """Failures are collected over the initializers, not hidden behind the first."""
        manual = self.variant(manual_value_and_grad(sizes, activation))
        failures = []
        for init in INITS:
            try:
                check_against_autodiff(manual, sizes, activation, init, dtype)
            except AssertionError as err:
                failures.append(f"init={init}: {err}")
        assert not failures, "\n".join(failures)

    @chex.variants(with_jit=True, without_jit=True)
    @settings(max_examples=6, deadline=None, derandomize=True)
    @given(
        # Few distinct widths and batch sizes, so eager mode's per-shape compiles are shared.
        sizes=st.lists(st.sampled_from([1, 3, 8]), min_size=2, max_size=5),
        batch=st.sampled_from([1, 5]),
        scale=st.sampled_from([1e-2, 1.0, 10.0]),
        soft=st.booleans(),
        activation=st.sampled_from(ACTS),
        init=st.sampled_from(INITS),
        dtype=st.sampled_from(DTYPES),
        seed=st.integers(0, 2**16),
    )
    def test_random_shapes_and_values(
        self, sizes, batch, scale, soft, activation, init, dtype, seed
    ):
        manual = self.variant(manual_value_and_grad(sizes, activation))
        check_against_autodiff(
            manual, sizes, activation, init, dtype, seed, batch, scale=scale, soft=soft
        )


def test_chex_variants_ran_under_pytest(request):
    """Guard: the class above expands into jit and no-jit copies that pytest really collects."""
    names = [item.name for item in request.session.items]
    if not any("ManualEqualsAutodiff" in item.nodeid for item in request.session.items):
        pytest.skip("the grid class was deselected")
    assert any("with_jit" in n for n in names) and any("without_jit" in n for n in names)


def _serial(dense):
    """[{"w", "b"}, ...] -> the serial MLP's params: the dense entries with () between them."""
    out = []
    for i, layer in enumerate(dense):
        out += [(), layer] if i else [layer]
    return tuple(out)


def _state(params):
    return ((),) * len(params)


def _loss(sizes, activation, params, x, y):
    """The MLP's mean softmax cross-entropy (the value, whichever gradient method)."""
    step = core.value_and_grad(network(sizes, activation), "autodiff")
    return step(params, _state(params), x, y)[0][0]


@functools.cache
def _jitted_manual(sizes, activation):
    """The manual step compiled once per net (the tests below need its numbers, not eager mode,
    which the grid covers)."""
    return jax.jit(manual_value_and_grad(sizes, activation))


def _grads(sizes, activation, params, x, y):
    """(loss, grads) by the MLP's manual backprop."""
    (loss, _, _), grads = _jitted_manual(sizes, activation)(params, _state(params), x, y)
    return loss, grads


@functools.partial(jax.jit, static_argnums=(0, 1))
def _central_differences(sizes, activation, params, directions, x, y, h):
    """For each direction v (a params-shaped tree with a leading axis of D): the central
    difference (L(t + h v) - L(t - h v)) / 2h and <manual grad L, v>, both (D,). One compile per
    net: eager mode would compile every small op of the loss and the tree sums anew."""
    _, grads = manual_value_and_grad(sizes, activation)(params, _state(params), x, y)

    def one(v):
        def along(t):  # the loss at params + t v
            return _loss(sizes, activation, jax.tree.map(lambda p, d: p + t * d, params, v), x, y)

        dot = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
        return (along(h) - along(-h)) / (2 * h), dot

    return jax.lax.map(one, directions)


def test_value_is_the_loss_of_the_inference_logits():
    model = mlp((6, 5, 4), "tanh", "glorot")
    _, params, state = model.init(jax.random.PRNGKey(3), (6,))
    x, y = make_batch(3, 4, 6, 4, "float32")
    (value, logits, new_state), _ = core.value_and_grad(model)(params, state, x, y)
    np.testing.assert_array_equal(logits, core.apply(model, params, state, x))
    expected = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert new_state == state


@pytest.mark.parametrize("activation", ACTS)
def test_central_differences_agree_in_float64(activation):
    """An independent third opinion: (L(t + h v) - L(t - h v)) / 2h vs <grad L, v>."""
    with jax.enable_x64(True):
        sizes = (5, 8, 6, 3)
        params = init_all(jax.random.PRNGKey(7), sizes, jnp.dtype("float64"))["glorot"][0]
        params = jax.tree.map(lambda p: p + 0.1, params)  # nonzero biases, too
        x, y = make_batch(7, 6, sizes[0], sizes[-1], "float64")
        rng = np.random.default_rng(0)
        directions = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal((3, *p.shape))), params)
        fd, dot = _central_differences(sizes, activation, params, directions, x, y, 1e-5)
        for a, b in zip(np.asarray(fd), np.asarray(dot)):
            assert rel_err(a, b) < 1e-6, (activation, float(a), float(b))


def _constant_params(sizes, value, dtype=jnp.float32):
    return _serial(
        [
            {"w": jnp.full((a, b), value, dtype), "b": jnp.zeros((b,), dtype)}
            for a, b in zip(sizes[:-1], sizes[1:])
        ]
    )


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("start", ["zero init", "constant 0.1"])
def test_equal_weights_never_break_symmetry(activation, start):
    """The symmetry lesson: when every unit of a layer starts equal (zero init is the classic
    case), every unit gets the same gradient, so gradient descent keeps them equal forever."""
    sizes = (6, 5, 4, 3)
    if start == "zero init":
        params = _serial(init_mlp(jax.random.PRNGKey(0), sizes, "zero"))
    else:
        params = _constant_params(sizes, 0.1)
    x, y = make_batch(0, 8, sizes[0], sizes[-1], "float32")
    for _ in range(3):
        _, grads = _grads(sizes, activation, params, x, y)
        dense = dense_params(grads)
        for i, g in enumerate(dense[:-1]):  # hidden layers: unit j owns column j of w and b[j]
            np.testing.assert_allclose(g["w"], g["w"][:, :1] * np.ones((1, sizes[i + 1])), 1e-6)
            np.testing.assert_allclose(g["b"], np.full_like(g["b"], g["b"][0]), 1e-6)
        for g in dense[1:]:  # ... and row j of the next layer's w
            np.testing.assert_allclose(g["w"], g["w"][:1] * np.ones_like(g["w"]), 1e-6)
        params = jax.tree.map(lambda p, d: p - 0.5 * d, params, grads)
    hidden = np.asarray(jax.nn.relu(x @ params[0]["w"]))  # still one distinct unit
    np.testing.assert_allclose(hidden, hidden[:, :1] * np.ones_like(hidden), 1e-6)


def test_zero_init_leaves_only_the_output_layer_learning():
    """With zero weights every hidden gradient is exactly zero; only the last layer moves."""
    sizes = (6, 5, 4, 3)
    params = _serial(init_mlp(jax.random.PRNGKey(0), sizes, "zero"))
    x, y = make_batch(0, 8, 6, 3, "float32")
    _, grads = _grads(sizes, "relu", params, x, y)
    dense = dense_params(grads)
    for g in dense[:-1]:
        np.testing.assert_array_equal(g["w"], 0.0)
        np.testing.assert_array_equal(g["b"], 0.0)
    assert np.abs(dense[-1]["b"]).sum() > 0


@pytest.mark.parametrize(
    "shape", [(8, 5), (16,), (2, 4, 4), (2, 1, 16)], ids=["features", "1-D", "image", "3-D"]
)
def test_rejects_wrong_input_shape_clearly(shape):
    model = mlp((16, 3), "relu")
    _, params, state = model.init(jax.random.PRNGKey(0), (16,))
    with pytest.raises(ValueError, match=r"shape \(batch, 16\)") as excinfo:
        core.apply(model, params, state, jnp.zeros(shape))
    assert str(shape) in str(excinfo.value) and "flatten" in str(excinfo.value)


def test_rejects_wrong_input_shape_under_jit():
    model = mlp((16, 3), "relu")
    _, params, state = model.init(jax.random.PRNGKey(0), (16,))
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        jax.jit(functools.partial(core.apply, model))(params, state, jnp.zeros((2, 15)))


def test_mlp_needs_two_sizes_and_known_names():
    with pytest.raises(ValueError, match="at least"):
        init_mlp(jax.random.PRNGKey(0), [10], "normal")
    with pytest.raises(ValueError, match="input and output sizes"):
        mlp([10], "relu")
    with pytest.raises(ValueError, match="unknown initializer"):
        mlp((3, 2), "relu", "uniform")
    with pytest.raises(ValueError, match="unknown activation"):
        mlp((3, 2), "gelu")


def test_mlp_shapes_and_zero_biases():
    model = mlp(STUDY_SIZES, "relu", "he")
    out_shape, params, state = model.init(jax.random.PRNGKey(0), (784,))
    dense = dense_params(params)
    assert out_shape == (10,) and state == ((),) * 7
    assert [p["w"].shape for p in dense] == list(zip(STUDY_SIZES[:-1], STUDY_SIZES[1:]))
    for p in dense:
        np.testing.assert_array_equal(p["b"], 0.0)
    assert core.apply(model, params, state, jnp.zeros((2, 784))).shape == (2, 10)

"""Training any ``jnn.core`` model: a whole epoch as one XLA program, and the epoch loop.

Train any ``serial`` model (an MLP, a CNN, a head on frozen features) in five lines::

    model = serial(Flatten, Dense(128), ReLU, Dropout(0.5), Dense(10))  # jnn.core, jnn.layers
    state = init_train_state(jax.random.key(0), model, optax.sgd(0.1), input_shape=(28, 28, 1))
    epoch = make_epoch_fn(model, optax.sgd(0.1), batch_size=32)  # jitted, state donated
    result = fit(state, epoch, (x, y), (xv, yv), eval_fn=make_eval_fn(model), epochs=10)
    result.state.params, result.history["val_accuracy"], result.diverged_at

x is (N, *input_shape) (e.g. (N, 784) or (N, 28, 28, 1)), y (N,) int labels. The model object
is the only description of the network: the epoch function and the evaluation function are both
built from it, so training and evaluation cannot disagree about the network.

Several independent models (seeds, initialisations) train in one program:
``init_train_states(keys, model, ...)`` stacks them along a leading axis M and
``make_epoch_fn(..., stacked=True)`` / ``make_eval_fn(..., stacked=True)`` vmap over that axis
(the data are shared, not copied). ``make_eval_fn(..., chunk=n)`` evaluates n examples at a
time inside its program (``evaluate_chunked``), so a large test set never holds all its
activations at once. ``fit`` runs the epochs, records the per-epoch history, stops a model whose
loss or params became non-finite, and calls back after every epoch (the sweep saves its
checkpoints there).

Inside the epoch: a fresh permutation from the state's shuffle key, then ``lax.scan`` over
batches; each step gathers its batch from the device-resident arrays, runs the model with
``train=True`` and a per-step key for its randomness (Dropout), computes the gradients (manual
backprop by default, ``jax.grad`` on request, or any function of the
``jnn.core.value_and_grad`` signature), applies an optax update and threads the layer state
(BatchNorm statistics) to the next step. No Python loop runs per step (``loop="steps"`` runs
the same step body as one jitted call per batch instead, for XLA:CPU cases that are slower in a
loop). The last
``N % batch_size`` examples of each permutation are dropped (a different remainder every epoch),
so every step has the same shape. At the end the epoch checks inside the program that every
param is finite (``EpochMetrics.params_finite``).

PRNG streams (fixed, so results are reproducible and the study's numbers never move): a model key
``k`` gives ``init_key, shuffle_key = split(k)``; params from ``model.init(init_key, shape)``;
each epoch ``key, perm_key = split(state.key)``. Layer randomness has its own stream,
``dropout_key = fold_in(k, 1)``, split once per epoch, ``fold_in(epoch_key, step)`` per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jnn import core
from jnn.errors import InputError
from jnn.losses import check_labels, one_hot, softmax_cross_entropy

ValueAndGrad = Callable[..., core.LossStep]  # the signature of jnn.core.value_and_grad(model)
EvalFn = Callable[[core.Params, core.State, Array, Array], tuple[Array, Array]]


class TrainState(NamedTuple):
    """Everything needed to continue training bit-identically (leaves (M, ...) when stacked)."""

    params: core.Params
    opt_state: optax.OptState
    model_state: core.State  # the layers' state from model.init (BatchNorm statistics; () if none)
    key: Array  # PRNG key for the next epoch's permutation
    dropout_key: Array  # PRNG key for the next epoch's layer randomness (Dropout masks)
    epoch: Array  # int32 scalar: epochs completed


class EpochMetrics(NamedTuple):
    loss: Array  # mean training loss over the epoch's batches
    accuracy: Array  # fraction of the epoch's examples classified right (before each update)
    params_finite: Array  # bool: every param is finite after the epoch


EpochFn = Callable[[TrainState, Array, Array], tuple[TrainState, EpochMetrics]]


def init_train_state(
    key: Array,
    model: core.Layer,
    optimizer: optax.GradientTransformation,
    input_shape: core.Shape,
) -> TrainState:
    """One model from one key: ``init_key, shuffle_key = split(key)``; params and layer state
    from ``model.init(init_key, input_shape)`` (per-example shape, e.g. ``(784,)``); the dropout
    stream ``fold_in(key, 1)``; the optimizer state from ``optimizer.init(params)``."""
    init_key, shuffle_key = jax.random.split(key)
    _, params, model_state = model.init(init_key, tuple(input_shape))
    return TrainState(
        params,
        optimizer.init(params),
        model_state,
        shuffle_key,
        jax.random.fold_in(key, 1),
        jnp.zeros((), jnp.int32),
    )


def init_train_states(
    keys: Array,
    model: core.Layer,
    optimizer: optax.GradientTransformation,
    input_shape: core.Shape,
) -> TrainState:
    """M models stacked along a leading axis: keys (M, ...) -> TrainState with leaves (M, ...).

    Model i equals ``init_train_state(keys[i], ...)`` (to float rounding: the params are drawn in
    one compiled, vmapped program, which is what the study has always used).
    """
    init_keys, shuffle_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    shape = tuple(input_shape)
    params, model_state = jax.jit(jax.vmap(lambda k: model.init(k, shape)[1:]))(init_keys)
    dropout_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    return TrainState(
        params,
        jax.vmap(optimizer.init)(params),
        model_state,
        shuffle_keys,
        dropout_keys,
        jnp.zeros((len(keys),), jnp.int32),
    )


def validate_hyperparameters(batch_size: int, num_examples: int | None = None) -> None:
    """Raise a clear InputError for a batch size that cannot work."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    if num_examples is not None and batch_size > num_examples:
        raise InputError(f"batch size {batch_size} exceeds the {num_examples} training examples")


def as_value_and_grad(model: core.Layer | ValueAndGrad, gradients: str = "manual") -> ValueAndGrad:
    """A ``jnn.core.Layer`` -> ``jnn.core.value_and_grad(model, gradients)``; a function of that
    signature (``fn(params, state, x, y, *, key, train) -> ((loss, logits, state), grads)``)
    is returned as it is (then ``gradients`` must stay "manual": it picks nothing)."""
    if isinstance(model, core.Layer):
        if gradients not in core.GRADIENT_METHODS:
            raise InputError(
                f"gradients must be one of {list(core.GRADIENT_METHODS)}, got {gradients!r}"
            )
        return core.value_and_grad(model, gradients)
    if not callable(model):
        raise TypeError(f"expected a jnn.core.Layer or a value-and-grad function, got {model!r}")
    if gradients != "manual":
        raise InputError(f"gradients={gradients!r} needs a Layer; a value-and-grad fn is given")
    return model


def _all_finite(tree: Any) -> Array:
    """bool scalar: every float leaf of ``tree`` is finite (one reduction per leaf)."""
    flags = [
        jnp.all(jnp.isfinite(leaf))
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _epoch_batches(key: Array, n: int, batch_size: int, sharding: NamedSharding | None) -> Array:
    """(num_batches, batch_size) example indices of one epoch, from a permutation of ``n``."""
    num_batches = n // batch_size
    batches = jax.random.permutation(key, n)[: num_batches * batch_size]
    batches = batches.reshape(num_batches, batch_size)
    if sharding is not None:
        # (num_batches, B) indices with B split over the data axis: each device gathers its rows.
        batches = jax.lax.with_sharding_constraint(
            batches, NamedSharding(sharding.mesh, P(None, *sharding.spec))
        )
    return batches


def train_step(
    carry: tuple[core.Params, Any, core.State],
    i: Array,
    idx: Array,
    x: Array,
    y: Array,
    epoch_key: Array,
    *,
    value_and_grad: ValueAndGrad,
    optimizer: optax.GradientTransformation,
    constrain: Callable[[Array], Array] = lambda rows: rows,
) -> tuple[tuple[core.Params, Any, core.State], tuple[Array, Array]]:
    """Step ``i`` of an epoch: gather the batch ``idx`` (B,) from x, y, forward with
    ``train=True`` and the step key ``fold_in(epoch_key, i)``, gradients, optax update.
    ``carry`` is (params, opt_state, model_state); returns it updated and (loss, #correct).
    The one step body of both epoch loops (``lax.scan`` and the Python step loop)."""
    params, opt_state, model_state = carry
    xb, yb = constrain(x[idx]), constrain(y[idx])
    (loss, logits, model_state), grads = value_and_grad(
        params, model_state, xb, yb, key=jax.random.fold_in(epoch_key, i), train=True
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    correct = jnp.sum(jnp.argmax(logits, axis=-1) == yb)
    return (params, opt_state, model_state), (loss, correct)


class _EpochKeys(NamedTuple):
    key: Array  # the next epoch's shuffle key
    perm_key: Array  # this epoch's permutation
    dropout_key: Array  # the next epoch's layer-randomness key
    epoch_key: Array  # this epoch's layer randomness: fold_in(epoch_key, step) per step


def _epoch_keys(state: TrainState) -> _EpochKeys:
    """One epoch's keys from the state (the streams of the module docstring), split once."""
    key, perm_key = jax.random.split(state.key)
    dropout_key, epoch_key = jax.random.split(state.dropout_key)
    return _EpochKeys(key, perm_key, dropout_key, epoch_key)


def _epoch_end(
    state: TrainState, keys: _EpochKeys, carry: tuple, losses: Array, correct: Array, batch: int
) -> tuple[TrainState, EpochMetrics]:
    """The next TrainState (keys advanced) and the epoch's metrics."""
    params, opt_state, model_state = carry
    metrics = EpochMetrics(
        jnp.mean(losses), jnp.sum(correct) / (losses.shape[0] * batch), _all_finite(params)
    )
    new = TrainState(params, opt_state, model_state, keys.key, keys.dropout_key, state.epoch + 1)
    return new, metrics


def epoch_step(
    state: TrainState,
    x: Array,
    y: Array,
    *,
    value_and_grad: ValueAndGrad,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    batch_sharding: NamedSharding | None = None,
) -> tuple[TrainState, EpochMetrics]:
    """One epoch, un-jitted (jit it, vmap it over states, or shard it). x: (N, ...), y: (N,) int.

    ``batch_sharding`` (data parallelism, see ``jnn.parallel``) constrains every step's batch rows
    to that sharding, so each device gathers and computes its own share and XLA inserts the
    gradient all-reduce; ``None`` leaves placement to XLA. The arithmetic is the same either way.
    """
    keys = _epoch_keys(state)
    batches = _epoch_batches(keys.perm_key, x.shape[0], batch_size, batch_sharding)

    def constrain(rows: Array) -> Array:
        if batch_sharding is None:
            return rows
        return jax.lax.with_sharding_constraint(rows, batch_sharding)

    step = functools.partial(
        train_step, value_and_grad=value_and_grad, optimizer=optimizer, constrain=constrain
    )
    carry = (state.params, state.opt_state, state.model_state)
    steps = jnp.arange(batches.shape[0], dtype=jnp.uint32)
    carry, (losses, correct) = jax.lax.scan(
        lambda c, inputs: step(c, *inputs, x, y, keys.epoch_key), carry, (steps, batches)
    )
    return _epoch_end(state, keys, carry, losses, correct, batch_size)


def _step_loop_epoch_fn(
    value_and_grad: ValueAndGrad, optimizer: optax.GradientTransformation, batch_size: int
) -> EpochFn:
    """``epoch(state, x, y)`` as a Python loop over one jitted :func:`train_step`: the same
    permutation, step keys and update as :func:`epoch_step`, one XLA call per step. For models
    whose step XLA:CPU runs slower inside a while loop than alone (``jax.grad`` of a conv:
    results/cnn/scan_probe.md); the numbers agree with the scanned epoch to float rounding."""
    step = jax.jit(
        functools.partial(train_step, value_and_grad=value_and_grad, optimizer=optimizer)
    )

    @functools.partial(jax.jit, static_argnums=1)
    def start(state: TrainState, n: int) -> tuple[_EpochKeys, Array]:
        keys = _epoch_keys(state)
        return keys, _epoch_batches(keys.perm_key, n, batch_size, None)

    end = jax.jit(_epoch_end, static_argnums=5)  # one program, not op-by-op dispatch

    def epoch(state: TrainState, x: Array, y: Array) -> tuple[TrainState, EpochMetrics]:
        keys, batches = start(state, x.shape[0])
        carry, losses, correct = (state.params, state.opt_state, state.model_state), [], []
        for i in range(batches.shape[0]):
            carry, (loss, c) = step(carry, np.uint32(i), batches[i], x, y, keys.epoch_key)
            losses.append(loss)
            correct.append(c)
        return end(state, keys, carry, jnp.stack(losses), jnp.stack(correct), batch_size)

    return epoch


# --------------------------------------------------------------------------------------------
# Checks of every call of an epoch or evaluation function: shapes only (no device sync), in
# Python before the jitted program, so a direct caller of make_epoch_fn/make_eval_fn is refused
# as fit's caller is.
# --------------------------------------------------------------------------------------------


def _shapes(tree: Any, drop: int) -> dict[str, tuple[int, ...]]:
    """{leaf path: shape without its first ``drop`` axes} (paths as ``[0]['w']``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf))[drop:] for path, leaf in flat}


def _mismatch(have: dict, want: dict) -> str | None:
    """The first difference between two {path: shape} maps, in words, or None."""
    for name, shape in want.items():
        if name not in have:
            return f"{name} is missing"
        if have[name] != shape:
            return f"{name} has shape {have[name]}, the model makes {shape}"
    extra = sorted(set(have) - set(want))
    return f"{extra[0]} is not in the model" if extra else None


def _model_checker(model: core.Layer, stacked: bool) -> Callable[[Any, Any, Any], None]:
    """``check(params, model_state, x)``: refuse params or layer state whose structure or shapes
    differ from what ``model.init`` makes for x's per-example shape (a network of another width
    ran silently: Dense computes with whatever weights it is given). ``jax.eval_shape`` of the
    init, once per input shape; leading model axis M dropped when ``stacked``."""
    wanted: dict[tuple[int, ...], tuple[dict, dict]] = {}

    def check(params: Any, model_state: Any, x: Any) -> None:
        shape = tuple(np.shape(x))[1:]
        if shape not in wanted:
            try:
                _, p, st = jax.eval_shape(lambda k: model.init(k, shape), jax.random.PRNGKey(0))
            except InputError as err:  # the model's own refusal (JAX appends lines to it)
                first = str(err).splitlines()[0]
                message = f"x of shape {np.shape(x)} does not fit the model: {first}"
                raise InputError(message) from None
            wanted[shape] = (_shapes(p, 0), _shapes(st, 0))
        drop = 1 if stacked else 0
        trees = (("params", params), ("layer state", model_state))
        for (what, tree), want in zip(trees, wanted[shape]):
            have = _shapes(tree, drop)
            problem = _mismatch(have, want)
            if problem and set(have) == set(want):  # same network, other shapes: x's fault?
                _refuse_misfit_x(model, params, model_state, x, stacked)
            if problem:
                raise InputError(
                    f"the {what} do not match the model {model.name} for inputs of shape "
                    f"{shape}: {problem}; pass the state init_train_state(s) made for this model"
                )

    return check


def _refuse_misfit_x(
    model: core.Layer, params: Any, model_state: Any, x: Any, stacked: bool
) -> None:
    """On the error path of the params check, for params of the model's structure but other
    shapes: when x does not fit them (an image of 3 channels for a net made for 1), raise the
    layer's own refusal (its name, the expected and the got shape), which says what is wrong
    better than "the params do not match". Traced with ``jax.eval_shape``: nothing computed."""

    def one(tree: Any) -> Any:
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), tree)

    p, st = (one(params), one(model_state)) if stacked else (params, model_state)
    batch = jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))
    try:
        jax.eval_shape(functools.partial(core.apply, model), p, st, batch)
    except InputError as err:
        first = str(err).splitlines()[0]
        raise InputError(f"x of shape {np.shape(x)} does not fit the params: {first}") from None
    except Exception:  # noqa: BLE001 - params of another network: the caller's message says so
        return


def _check_x(x: Any, what: str) -> None:
    """x must hold float features: integer pixels (uint8 0..255) would train on unscaled values
    (an MLP) or fail inside a convolution (lax refuses mixed dtypes). Dtype only, no data read."""
    dtype = getattr(x, "dtype", None)
    dtype = np.asarray(x).dtype if dtype is None else np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise InputError(
            f"{what} x must hold floats (the model computes in float), got dtype {dtype}; "
            "convert it first (uint8 pixels: jnn.data.to_float, or divide by 255)"
        )


def _check_examples(x: Any, y: Any, batch_size: int | None) -> None:
    """x (N, ...) and y (N,) of one length; N >= ``batch_size`` (training: an epoch of no step
    has NaN metrics) or N >= 1 (``None``: evaluation, the mean of nothing is NaN). Shapes only."""
    what = "evaluation" if batch_size is None else "training"
    if np.ndim(x) < 1 or np.ndim(y) != 1 or np.shape(y)[0] != np.shape(x)[0]:
        raise InputError(
            f"{what} x and y must have one label per example: x has shape {np.shape(x)}, "
            f"y has shape {np.shape(y)}"
        )
    _check_x(x, what)
    n = np.shape(x)[0]
    if batch_size is None and n == 0:
        raise InputError("evaluation x has no examples: nothing to measure; pass at least one")
    if batch_size is not None and n < batch_size:
        raise InputError(
            f"training x has {n} examples, fewer than one batch of {batch_size}: the epoch "
            "would run no step; pass more examples or a smaller batch size"
        )


def _checked_epoch(epoch: Any, model: Any, batch_size: int, stacked: bool) -> EpochFn:
    """``epoch`` behind the per-call checks: x and y of one length, at least one batch, and
    (for a Layer) params and layer state of this model. ``.lower`` (AOT) is checked too."""
    check_model = _model_checker(model, stacked) if isinstance(model, core.Layer) else None

    def check(state: TrainState, x: Any, y: Any) -> None:
        _check_examples(x, y, batch_size)
        if check_model is not None:
            check_model(state.params, state.model_state, x)

    def checked(state: TrainState, x: Array, y: Array) -> tuple[TrainState, EpochMetrics]:
        check(state, x, y)
        return epoch(state, x, y)

    def lower(state: TrainState, x: Array, y: Array) -> Any:
        check(state, x, y)
        return epoch.lower(state, x, y)

    if hasattr(epoch, "lower"):  # the benchmark compiles ahead of time
        checked.lower = lower  # type: ignore[attr-defined]
    return checked


EPOCH_LOOPS = ("scan", "steps")


def make_epoch_fn(
    model: core.Layer | ValueAndGrad,
    optimizer: optax.GradientTransformation,
    batch_size: int,
    gradients: str = "manual",
    *,
    stacked: bool = False,
    loop: str = "scan",
) -> EpochFn:
    """A jitted ``epoch(state, x, y) -> (state, metrics)``; the incoming state is donated.

    ``model``: a ``jnn.core.Layer`` (its gradients by ``gradients``: "manual" backprop or
    "autodiff") or a value-and-grad function of the ``jnn.core.value_and_grad`` signature.
    x (N, *input_shape), y (N,) int labels. ``stacked=True``: ``state`` holds M models along a
    leading axis (``init_train_states``); the epoch is vmapped over them with x, y shared, and the
    metrics have shape (M,). ``loop``: "scan" (the whole epoch one XLA program, the default) or
    "steps" (one jitted step per batch from Python, same keys and arithmetic; single models only).

    Every call first refuses (one :class:`InputError`, before the program runs; shapes only, so
    no device sync): y not of x's length (the batch gather clamps indices: it trained silently),
    fewer than ``batch_size`` examples (no step: NaN metrics), x of a non-float dtype, and, for
    a Layer, params or layer state of another network (another width trained silently) or x
    the params cannot take (a layer's own refusal, e.g. a Conv2D given another channel count).
    Labels and finiteness are :func:`fit`'s checks (:func:`check_data`): they read the data.
    """
    validate_hyperparameters(batch_size)
    if loop not in EPOCH_LOOPS:
        raise InputError(f"loop must be one of {list(EPOCH_LOOPS)}, got {loop!r}")
    value_and_grad = as_value_and_grad(model, gradients)
    if loop == "steps":
        if stacked:
            raise InputError('loop="steps" trains one model; stacked models need loop="scan"')
        return _checked_epoch(
            _step_loop_epoch_fn(value_and_grad, optimizer, batch_size), model, batch_size, False
        )
    epoch = functools.partial(
        epoch_step, value_and_grad=value_and_grad, optimizer=optimizer, batch_size=batch_size
    )
    one_or_all = jax.vmap(epoch, in_axes=(0, None, None)) if stacked else epoch
    return _checked_epoch(jax.jit(one_or_all, donate_argnums=0), model, batch_size, stacked)


def evaluate(
    model: core.Layer, params: core.Params, model_state: core.State, x: Array, y: Array
) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of ``model`` on (x (N, ...), y (N,) int) in one pass, with
    ``train=False`` (no dropout, BatchNorm on its running statistics). Un-jitted."""
    logits = core.apply(model, params, model_state, x)
    loss, _ = softmax_cross_entropy(logits, one_hot(y, logits.shape[-1], logits.dtype))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
    return loss, accuracy


def evaluate_chunked(
    model: core.Layer,
    params: core.Params,
    model_state: core.State,
    x: Array,
    y: Array,
    chunk: int,
) -> tuple[Array, Array]:
    """Mean cross-entropy and accuracy of ``model`` on x (N, ...), y (N,), ``chunk`` rows at a
    time (``lax.map`` inside the one program): the activations held at once are (chunk, ...),
    not (N, ...), whatever N is (a conv net's test set, block5 of VGG16, M stacked models under
    ``vmap``). The rows are padded to a multiple of ``chunk`` (``chunk`` above N is taken as N)
    and the padding weighted 0; the loss is the sum of per-example ``logsumexp(z) - z_y`` over
    N, divided by N: :func:`evaluate`'s mean of the same terms, up to float32 summation order.
    Traceable (jit, vmap, shard_map); un-jitted."""
    n = x.shape[0]
    chunk = max(1, min(int(chunk), n))
    pad = -n % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    xs = xs.reshape(-1, chunk, *x.shape[1:])
    ys = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(-1, chunk)
    ws = (jnp.arange(n + pad) < n).astype(jnp.float32).reshape(-1, chunk)

    def one(args: tuple[Array, Array, Array]) -> tuple[Array, Array]:
        xb, yb, wb = args
        z = core.apply(model, params, model_state, xb)
        nll = jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, yb[:, None], axis=-1)[:, 0]
        return jnp.sum(nll * wb), jnp.sum((jnp.argmax(z, axis=-1) == yb) * wb)

    losses, correct = jax.lax.map(one, (xs, ys, ws))
    return jnp.sum(losses) / n, jnp.sum(correct) / n


def check_chunk(chunk: Any) -> int | None:
    """``chunk`` (examples per evaluation step) if it is None or an int >= 1, else a one-line
    InputError."""
    if chunk is None:
        return None
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise InputError(
            f"chunk must be a positive number of examples per evaluation step (or None for "
            f"all at once), got {chunk!r}"
        )
    return int(chunk)


def make_eval_fn(model: core.Layer, *, stacked: bool = False, chunk: int | None = None) -> EvalFn:
    """A jitted ``eval_fn(params, model_state, x, y) -> (loss, accuracy)`` (see :func:`evaluate`).

    ``stacked=True``: params and model_state hold M models along a leading axis; x, y are shared
    and loss, accuracy have shape (M,). ``chunk``: evaluate ``chunk`` examples at a time inside
    the program (:func:`evaluate_chunked`), so activation memory is bounded by the chunk, not by
    the size of x (None: all of x in one pass). The function carries ``.model``, ``.stacked``
    and ``.chunk`` (``fit`` reads the number of classes from the model to check the labels).
    Each call refuses, as the epoch function does, x and y of different lengths, no examples
    (the mean of nothing is NaN), x of a non-float dtype and params or layer state of another
    network.
    """
    chunk = check_chunk(chunk)
    if chunk is None:
        one = functools.partial(evaluate, model)
    else:
        one = functools.partial(evaluate_chunked, model, chunk=chunk)
    fn = jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)) if stacked else one)
    check_model = _model_checker(model, stacked)

    def eval_fn(params: core.Params, model_state: core.State, x: Array, y: Array):
        _check_examples(x, y, None)
        check_model(params, model_state, x)
        return fn(params, model_state, x, y)

    eval_fn.model, eval_fn.stacked, eval_fn.chunk = model, stacked, chunk  # type: ignore[attr-defined]
    return eval_fn


# --------------------------------------------------------------------------------------------
# Input checks, once per fit, outside the jitted programs
# --------------------------------------------------------------------------------------------


def _num_classes(eval_fn: EvalFn, state: TrainState, x: Any) -> int | None:
    """The model's number of outputs (C of its (B, C) logits), when ``eval_fn`` names its model."""
    model = getattr(eval_fn, "model", None)
    if model is None:
        return None
    params, model_state = state.params, state.model_state
    if getattr(eval_fn, "stacked", False):
        params, model_state = jax.tree.map(lambda a: a[0], (params, model_state))
    batch = jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x))  # abstract: any N is free
    try:
        out = jax.eval_shape(functools.partial(core.apply, model), params, model_state, batch)
    except InputError as err:  # a layer's refusal of x (JAX may append lines to it)
        first = str(err).splitlines()[0]
        raise InputError(f"x of shape {np.shape(x)} does not fit the model: {first}") from None
    return int(out.shape[-1])


def _is_finite(x: Any) -> bool:
    """All of ``x`` finite: on its device for a jax array (no host copy), else with numpy."""
    if isinstance(x, jax.Array):
        return bool(jnp.all(jnp.isfinite(x))) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    x = np.asarray(x)
    return bool(np.isfinite(x).all()) if np.issubdtype(x.dtype, np.inexact) else True


def check_data(x: Any, y: Any, num_classes: int | None, what: str = "training") -> None:
    """Refuse data that would train silently wrong: x and y of different lengths (the gather
    clamps out-of-range indices), labels that are not ints in ``[0, num_classes)`` (one_hot makes
    them zero rows), non-finite x. One-line :class:`InputError`; arrays spread over several
    processes are left to the caller."""
    if any(isinstance(a, jax.Array) and not a.is_fully_addressable for a in (x, y)):
        return
    n_x = np.shape(x)[0] if np.ndim(x) else None
    if n_x is None or np.ndim(y) < 1 or np.shape(y)[0] != n_x:
        raise InputError(
            f"{what} x and y must have one label per example: x has shape {np.shape(x)}, "
            f"y has shape {np.shape(y)}"
        )
    _check_x(x, what)
    if num_classes is None:
        num_classes = int(np.iinfo(np.int32).max)  # without a model: ints >= 0 only
    check_labels(y, num_classes, what=f"{what} labels")
    if not _is_finite(x):
        raise InputError(f"{what} x holds NaN or inf values; clean or drop those examples first")


# --------------------------------------------------------------------------------------------
# The epoch loop: history, divergence, callbacks
# --------------------------------------------------------------------------------------------

HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")

History = dict[str, np.ndarray]  # each (epochs,) or (M, epochs) float32, NaN where not run yet


def empty_history(epochs: int, num_models: int | None = None) -> History:
    """NaN-filled history arrays: (epochs,) for one model, (M, epochs) for M stacked models."""
    shape = (epochs,) if num_models is None else (num_models, epochs)
    return {k: np.full(shape, np.nan, np.float32) for k in HISTORY_KEYS}


class FitResult(NamedTuple):
    state: TrainState | None  # None when training diverged (the bad state is not kept)
    history: History
    diverged_at: int | None  # 1-based epoch whose loss or params were not finite, else None


def fit(
    state: TrainState,
    epoch_fn: EpochFn,
    train_data: tuple[Array, Array],
    val_data: tuple[Array, Array],
    *,
    eval_fn: EvalFn,
    epochs: int,
    history: History | None = None,
    on_epoch: Callable[[int, TrainState, History], None] | None = None,
) -> FitResult:
    """Train from ``state.epoch`` up to ``epochs`` epochs, one jitted epoch per call.

    ``eval_fn(params, model_state, x, y) -> (loss, accuracy)``: from :func:`make_eval_fn` (with
    ``stacked=True`` for stacked states). The data are checked once up front
    (:func:`check_data`). After every epoch the mean training loss/accuracy (during the epoch)
    and the validation loss/accuracy (after it) go into ``history`` (arrays indexed by epoch - 1;
    single or stacked models, as built by :func:`empty_history`), then
    ``on_epoch(epoch, state, history)`` runs (epoch 1-based). A non-finite training or
    validation loss, or a non-finite param, of any model stops training at that epoch: the result
    has ``state=None`` and ``diverged_at=epoch`` and ``on_epoch`` is not called for it, so no
    checkpoint of a diverged model is ever written.
    """
    x, y = train_data
    xv, yv = val_data
    _check_x(x, "training")
    _check_x(xv, "validation")
    num_classes = _num_classes(eval_fn, state, x)
    check_data(x, y, num_classes, "training")
    check_data(xv, yv, num_classes, "validation")
    stacked = np.ndim(state.epoch) == 1
    start = int(np.max(np.asarray(state.epoch)))
    if history is None:
        history = empty_history(epochs, len(state.epoch) if stacked else None)
    for epoch in range(start + 1, epochs + 1):
        state, metrics = epoch_fn(state, x, y)
        val_loss, val_acc = eval_fn(state.params, state.model_state, xv, yv)
        row = jax.device_get((metrics.loss, metrics.accuracy, val_loss, val_acc))
        for name, value in zip(HISTORY_KEYS, row):
            history[name][..., epoch - 1] = value
        finite = np.all(np.isfinite(row[0])) and np.all(np.isfinite(row[2]))
        if not (finite and np.all(jax.device_get(metrics.params_finite))):
            return FitResult(None, history, epoch)
        if on_epoch is not None:
            on_epoch(epoch, state, history)
    return FitResult(state, history, None)

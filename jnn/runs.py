"""The way back from a run folder: load a checkpoint of the MLP study into a model, predict.

    from jnn import data, runs
    net = runs.load_sweep_checkpoint("checkpoints/mlp_sweep-original-normal", "relu", 100)
    s = data.load_splits(net.config["split"], seed=net.config["seed"])
    accuracy = (net.predict(s.x_test) == s.y_test).mean()      # the run's reported test accuracy

A run folder of ``python -m experiments.mlp_sweep`` holds ``run.json`` (the settings) and one
checkpoint folder per activation and epoch, ``<run>/<activation>/<epoch>/``, with the stacked
train state of every seed. The model is rebuilt from the settings (``jnn.mlp.mlp``), the state is
restored through :class:`jnn.checkpoints.CheckpointStore` (every file and array checksum-verified,
so a damaged checkpoint is refused, never predicted from).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from jnn import core, mlp, train
from jnn.checkpoints import CheckpointStore
from jnn.errors import InputError

_SCALE_NAME = {"normal": "stddev", "random": "limit"}


class LoadedModel(NamedTuple):
    """A restored network: ``model`` (a jnn.core Layer) with one seed's params and layer state."""

    model: core.Layer
    params: core.Params
    model_state: core.State
    config: dict[str, Any]  # the run's settings, from run.json
    epoch: int

    def logits(self, x: Any) -> Array:
        """x (N, 784) float32 in [0, 1] (as ``jnn.data.load_splits`` gives) -> logits (N, 10)."""
        return _apply(self.model, self.params, self.model_state, jnp.asarray(x))

    def predict(self, x: Any) -> np.ndarray:
        """x (N, 784) -> predicted class labels (N,) int."""
        return np.asarray(jnp.argmax(self.logits(x), axis=-1))


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())["config"]
    except FileNotFoundError:
        raise InputError(
            f"{run_dir} holds no run.json: it is not an mlp_sweep run folder"
        ) from None
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{run_dir / 'run.json'} is unreadable ({err})") from None


def sweep_model(config: dict[str, Any], activation: str) -> core.Layer:
    """The network a sweep with ``config`` trained for ``activation``."""
    init, scale = config["init"], config.get("init_scale")
    kwargs = {_SCALE_NAME[init]: scale} if scale is not None else {}
    return mlp.mlp(tuple(config["sizes"]), activation, init, **kwargs)


def load_sweep_checkpoint(
    run_dir: str | os.PathLike, activation: str, epoch: int, *, seed: int = 0
) -> LoadedModel:
    """Model ``seed`` (0-based among the run's ``--seeds``) of ``activation`` at ``epoch``."""
    run_dir = Path(run_dir).expanduser().resolve()
    config = _read_config(run_dir)
    if activation not in config["activations"]:
        raise InputError(
            f"{run_dir} trained {', '.join(config['activations'])}, not {activation!r}"
        )
    if not 0 <= seed < config["seeds"]:
        raise InputError(f"seed must be in [0, {config['seeds']}) for this run, got {seed}")
    model = sweep_model(config, activation)
    like = _template(model, config)
    with CheckpointStore(run_dir / activation, create=False) as store:
        if epoch not in store.saved_epochs():
            raise InputError(
                f"{run_dir / activation} has no checkpoint of epoch {epoch} "
                f"(saved: {store.saved_epochs() or 'none'})"
            )
        state = store.restore(epoch, like)["state"]
    params, model_state = jax.tree.map(lambda a: a[seed], (state.params, state.model_state))
    return LoadedModel(model, params, model_state, config, int(epoch))


def _template(model: core.Layer, config: dict[str, Any]) -> dict[str, Any]:
    """Shapes and dtypes of what the sweep saved: the seeds' stacked TrainState and history."""
    seeds, sizes = config["seeds"], tuple(config["sizes"])
    keys = jax.ShapeDtypeStruct((seeds, 2), jnp.uint32)
    optimizer = optax.sgd(config["lr"])
    state = jax.eval_shape(lambda k: train.init_train_states(k, model, optimizer, sizes[:1]), keys)
    return {"state": state, "history": train.empty_history(config["epochs"], seeds)}


@jax.jit(static_argnums=0)
def _apply(model: core.Layer, params: core.Params, state: core.State, x: Array) -> Array:
    return core.apply(model, params, state, x)

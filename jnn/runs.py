"""The way back from a run folder: load a checkpoint of the MLP study into a model, predict.

    from jnn import data, runs
    net = runs.load_sweep_checkpoint("runs/mlp_sweep-original-normal", "relu", 100)
    s = data.load_splits(net.config["split"], seed=net.config["seed"])
    accuracy = (net.predict(s.x_test) == s.y_test).mean()      # the run's reported test accuracy

A run folder of ``python -m experiments.mlp_sweep`` holds ``run.json`` (the settings) and one
checkpoint folder per activation and epoch, ``<run>/<activation>/<epoch>/``, with the stacked
train state of every seed. The model is rebuilt from the settings (``jnn.mlp.mlp``), the state is
restored through :class:`jnn.checkpoints.CheckpointStore` (every file and array checksum-verified,
so a damaged checkpoint is refused, never predicted from).

A run folder of ``python -m experiments.vgg_transfer`` holds ``results.json`` and the trained
transfer model in ``head/<epoch>/`` (the last good epoch: the last one, or the one before the run
diverged); :func:`load_vgg_head` restores it the same verified way::

    head = runs.load_vgg_head("runs/vgg_transfer")
    head.predict(features)          # (N, h, w, 512) frozen VGG16 features -> labels (N,)
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

from jnn import core, mlp, train, vgg
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


# ------------------------------------------------------------------------ vgg_transfer runs

VGG_HEAD_DIR = "head"  # <run>/head/<epoch>/: {"params", "model_state"} of the transfer model


class LoadedHead(NamedTuple):
    """The trained VGG16 transfer model of a run: ``model`` (``jnn.vgg.transfer_model``), its
    params and layer state (the fixed standardisation), the run's config and the epoch."""

    model: core.Layer
    params: core.Params
    model_state: core.State
    config: dict[str, Any]  # the run's settings (results.json "config")
    epoch: int

    def logits(self, features: Any, chunk: int = 1024) -> np.ndarray:
        """Frozen VGG16 features (N, h, w, 512), as the run cached them (block5's output, or
        block4's with ``finetune_top``) -> logits (N, 10), in fixed-size padded chunks."""
        features = np.asarray(features, np.float32)
        n = len(features)
        pad = (-n) % chunk if n > chunk else 0
        x = np.concatenate([features, np.zeros((pad, *features.shape[1:]), np.float32)])
        size = min(chunk, len(x)) or 1
        parts = [
            np.asarray(_apply(self.model, self.params, self.model_state, x[s : s + size]))
            for s in range(0, len(x), size)
        ]
        return np.concatenate(parts)[:n] if parts else np.zeros((0, 10), np.float32)

    def predict(self, features: Any) -> np.ndarray:
        """Features (N, h, w, 512) -> predicted class labels (N,) int."""
        return np.argmax(self.logits(features), axis=-1)


def vgg_head_template(finetune_top: bool, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Shapes and dtypes of what a vgg_transfer run saves: {"params", "model_state"}."""
    model = vgg.transfer_model(finetune_top)
    init = jax.eval_shape(lambda k: model.init(k, tuple(input_shape)), jax.random.key(0))
    return {"params": init[1], "model_state": init[2]}


def load_vgg_head(run_dir: str | os.PathLike) -> LoadedHead:
    """The transfer model a ``python -m experiments.vgg_transfer`` run saved in ``run_dir``,
    verified by checksum (a damaged checkpoint raises, it is never predicted from)."""
    run_dir = Path(run_dir).expanduser().resolve()
    try:
        result = json.loads((run_dir / "results.json").read_text())
        config, head = result["config"], result["head"]
        finetune, shape, epoch = config["finetune_top"], head["input_shape"], head["epoch"]
    except FileNotFoundError:
        raise InputError(
            f"{run_dir} holds no results.json: not a vgg_transfer run folder"
        ) from None
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(
            f"{run_dir / 'results.json'} is not a vgg_transfer result ({err})"
        ) from None
    model = vgg.transfer_model(finetune)
    with CheckpointStore(run_dir / VGG_HEAD_DIR, create=False) as store:
        tree = store.restore(epoch, vgg_head_template(finetune, tuple(shape)))
    return LoadedHead(model, tree["params"], tree["model_state"], config, int(epoch))

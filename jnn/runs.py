"""The way back from a run folder: load any trained model, at a save epoch or ``latest``.

    from jnn import runs, study
    net = runs.load("runs/mlp_sweep", activation="relu", seed=0, epoch=100)
    d = study.load_data(net.config)                     # the run's own split and subset
    accuracy = (net.predict(d.test[0]) == d.test[1]).mean()   # the run's reported test accuracy

A study run folder (``jnn.study``) holds ``run.json`` (the config) and verified checkpoints of
every model. :func:`load` rebuilds the network through the builder training used
(``jnn.study.network``), restores the checkpoint through :class:`jnn.checkpoints.CheckpointStore`
(every file and array checksum-verified, the step's identity and epoch checked, so a damaged or
swapped checkpoint is refused, never predicted from) and picks one model by name or by its
fields (activation, init, lr, seed).

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
from jax import Array

from jnn import core, study, vgg
from jnn.checkpoints import CheckpointStore
from jnn.errors import InputError


class LoadedModel(NamedTuple):
    """One restored model of a study run: the network, its params and layer state, the run's
    config, which model (``spec``) and the epoch its state is from (for a model that diverged,
    the last good epoch before it)."""

    model: core.Layer
    params: core.Params
    model_state: core.State
    config: study.StudyConfig
    spec: study.ModelSpec
    epoch: int

    def logits(self, x: Any) -> Array:
        """x (N, features) float32 in [0, 1] (as ``study.load_data`` gives) -> logits (N, C).
        Refuses (one InputError line) another width, a non-float dtype, or NaN/inf rows."""
        features = self.config.sizes[0]
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != features:
            raise InputError(f"x must have shape (N, {features}), got {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"x must be float images in [0, 1], got dtype {x.dtype}")
        if not np.isfinite(x).all():
            raise InputError("x holds NaN or inf values; a prediction for them would mean nothing")
        return _apply(self.model, self.params, self.model_state, jnp.asarray(x, jnp.float32))

    def predict(self, x: Any) -> np.ndarray:
        """x (N, features) -> predicted class labels (N,) int."""
        return np.asarray(jnp.argmax(self.logits(x), axis=-1))


def select_model(c: study.StudyConfig, name: str | None, fields: dict[str, Any]) -> int:
    """The index of the one model named ``name`` or matching every given field.

    ``name`` is a model's full name (``"relu/normal/lr0.1/s0"``) or its leading parts
    (``"relu"``, ``"relu/normal"``): enough to pick one model of the run, else refused."""
    specs = study.models(c)
    if name is not None and (not isinstance(name, str) or not name.strip("/")):
        raise InputError(f"a model name is a string such as 'relu/normal/lr0.1/s0', got {name!r}")
    unknown = set(fields) - set(study.ModelSpec._fields)
    if unknown:
        raise InputError(
            f"models are chosen by {', '.join(study.ModelSpec._fields)}, not "
            f"{', '.join(sorted(unknown))}; or by name: model='relu/normal/lr0.1/s0'"
        )
    hits = [
        m
        for m, s in enumerate(specs)
        if (name is None or _name_matches(s.name, name))
        and all(getattr(s, k) == (float(v) if k == "lr" else v) for k, v in fields.items())
    ]
    if len(hits) != 1:
        names = ", ".join(s.name for s in specs[:8]) + (" ..." if len(specs) > 8 else "")
        what = "no model" if not hits else f"{len(hits)} models"
        raise InputError(f"{what} of this run match {name or fields}; the run has: {names}")
    return hits[0]


def _name_matches(full: str, name: str) -> bool:
    """``name``'s parts are the leading parts of ``full`` (``relu`` or ``relu/normal`` match
    ``relu/normal/lr0.1/s0``; ``rel`` does not)."""
    parts = name.strip("/").split("/")
    return full.split("/")[: len(parts)] == parts


def _epoch(store: CheckpointStore, c: study.StudyConfig, epoch: int | str) -> int:
    have = sorted(set(store.saved_epochs() + store.rolling_epochs()))
    if epoch == "latest":
        if not have:
            raise InputError(f"{store.directory} holds no finished checkpoint yet")
        return have[-1]
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise InputError(f"epoch must be an int or 'latest', got {epoch!r}")
    if epoch not in have:
        raise InputError(f"{store.directory} has no checkpoint of epoch {epoch} (saved: {have})")
    return int(epoch)


def load(
    run_dir: str | os.PathLike, model: str | None = None, epoch: int | str = "latest", **fields: Any
) -> LoadedModel:
    """Model ``model`` (a name such as ``"relu/normal/lr0.1/s0"``) or the one matching
    ``fields`` (``activation="relu", seed=0``...) of the study run in ``run_dir``, at ``epoch``
    (a save epoch, the rolling one, or ``"latest"``)."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder; pass a study run folder")
    c = study.config_of(study.read_run(run_dir))
    m = select_model(c, model, fields)
    with study.open_store(c, run_dir, create=False) as store:
        e = _epoch(store, c, epoch)
        st = store.restore(e, study.checkpoint_like(c, e))["state"]
    one = jax.tree.map(lambda a: a[m], st)
    dead = int(one.diverged_at)
    good = dead - 1 if dead else e
    return LoadedModel(
        study.network(c), one.train.params, one.train.model_state, c, study.models(c)[m], good
    )


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
        block4's with ``finetune_top``) -> logits (N, 10), in fixed-size padded chunks.
        Refuses (one InputError line), as :meth:`LoadedModel.logits` does, features of another
        shape than the run's (from its config; without one, than its params fit), a non-float
        dtype, or NaN/inf rows."""
        expected = _head_input_shape(self.config)
        features = _checked_features(features, expected)
        if expected is None and not _fits_head(self, features.shape[1:]):
            raise InputError(
                f"features of per-example shape {features.shape[1:]} do not fit this head's "
                "params; pass the features its run cached"
            )
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


def _head_input_shape(config: dict[str, Any]) -> tuple[int, int, int] | None:
    """(h, w, 512): the per-example shape of the features a vgg_transfer run trained on, from
    its config: the last cached VGG16 block (4 with ``finetune_top``, else 5) halves the SIZE x
    SIZE images once per block, flooring (2x2 max-pools, VALID). None when the config does not
    say (a head made outside :func:`load_vgg_head`)."""
    if not isinstance(config, dict) or not {"finetune_top", "size"} <= set(config):
        return None
    last_block = 4 if config["finetune_top"] else 5
    side = int(config["size"]) // 2**last_block
    return side, side, vgg.BLOCKS[last_block - 1][2]


def _fits_head(head: LoadedHead, shape: tuple[int, ...]) -> bool:
    """Whether ``head.model`` makes params and layer state of exactly the head's shapes for
    per-example inputs ``shape`` (traced with ``jax.eval_shape``: nothing computed)."""
    try:
        init = jax.eval_shape(lambda k: head.model.init(k, tuple(shape)), jax.random.key(0))
    except InputError:
        return False

    def shapes(tree: Any) -> list[tuple[str, tuple[int, ...]]]:  # (leaf path, shape)
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        return [(jax.tree_util.keystr(path), np.shape(leaf)) for path, leaf in flat]

    trees = ((init[1], head.params), (init[2], head.model_state))
    return all(shapes(a) == shapes(b) for a, b in trees)


def _checked_features(features: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    """``features`` as a float32 (N, *shape) array (``shape`` None: any (N, h, w, C)), or a
    one-line InputError: another shape (Flatten would reshape it into garbage or fail inside
    JAX), integer values (not the cached float features), NaN/inf rows (their logits would be
    NaN, their argmax class 0)."""
    x = np.asarray(features)
    want = "h, w, 512" if shape is None else ", ".join(map(str, shape))
    if x.ndim != 4 or (shape is not None and x.shape[1:] != tuple(shape)):
        raise InputError(
            f"features must have shape (N, {want}) as the run cached them, got {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(
            f"features must be float VGG16 features, got dtype {x.dtype}; pass them as the run "
            "cached them"
        )
    if not np.isfinite(x).all():
        raise InputError(
            "features hold NaN or inf values; a prediction for them would mean nothing"
        )
    return x.astype(np.float32, copy=False)


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

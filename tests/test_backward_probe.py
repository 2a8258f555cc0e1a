"""bench.backward_probe: a layer whose backward is swapped for jax.vjp gives the gradients of
its hand-written backward, the probe runs end to end (on three of its variants, at a small
batch: the full probe compiles 13 steps). Its bad flags are rows of test_cli_errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import backward_probe
from jnn import core
from jnn.errors import InputError
from jnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU


def test_a_layer_by_vjp_gives_the_hand_written_gradients():
    layers = (Conv2D(3, 3), ReLU, MaxPool2D(2), Flatten, Dense(5), Dropout(0.5), Dense(4))
    manual = core.serial(*layers)
    _, params, state = manual.init(jax.random.key(0), (6, 6, 2))
    x = jax.random.normal(jax.random.key(1), (3, 6, 6, 2))
    y = jnp.array([0, 3, 1])
    key = jax.random.key(2)
    (_, _, _), want = core.value_and_grad(manual)(params, state, x, y, key=key)
    for i in range(len(layers)):
        swapped = [
            backward_probe.vjp_backward(lay) if j == i else lay for j, lay in enumerate(layers)
        ]
        model = core.serial(*swapped)
        assert f"{layers[i].name} by vjp" in model.name
        (_, _, _), got = core.value_and_grad(model)(params, state, x, y, key=key)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


def test_vjp_backward_takes_a_layer():
    with pytest.raises(InputError, match="vjp_backward takes a jnn Layer, got int"):
        backward_probe.vjp_backward(5)


def test_probe_end_to_end_on_three_variants(tmp_path, monkeypatch):
    every = backward_probe.variants()
    assert list(every)[:2] == ["manual", "autodiff"] and len(every) == 2 + 11  # the CNN's layers
    kept = {
        k: every[k] for k in ("manual", "autodiff", "2: MaxPool2D((2, 2), strides=(2, 2), VALID)")
    }
    monkeypatch.setattr(backward_probe, "variants", lambda: kept)
    monkeypatch.setattr(backward_probe, "BATCH", 8)
    out = tmp_path / "probe"
    assert backward_probe.main(["--quick", "--out", str(out)]) == 0
    result = json.loads((out / "probe.json").read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == list(kept) and rows["manual"]["over_manual"] == 1.0
    for r in rows.values():
        assert r["step_s"] > 0 and r["grad_rel_diff"] < 1e-5, r  # the same gradients
    text = (out / "probe.md").read_text()
    assert "| 2: MaxPool2D((2, 2), strides=(2, 2), VALID) |" in text and "batch 8" in text

"""``jnn.summary`` (mean +- std per cell over seeds) and ``jnn.plots``' curves over seeds, on
small hand-made results whose statistics are known; the input checks refuse in one line."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from jnn import summary
from jnn.errors import InputError
from jnn.study import ModelSpec


def _model(act: str, lr: float, seed: int, test_acc: float, diverged_at: int | None = None):
    ev = {k: test_acc for k in summary.METRIC_KEYS}
    return {
        "activation": act,
        "init": "he",
        "lr": lr,
        "seed": seed,
        "diverged_at": diverged_at,
        "evals": {"2": ev},
    }


def _result(models, lrs=(0.1,)):
    return {"config": {"inits": ["he"], "lrs": list(lrs)}, "models": models}


def test_mean_std_and_fmt_on_known_values():
    assert summary.mean_std([0.8, 0.9]) == "0.8500 ± 0.0500"  # population std
    assert summary.mean_std([0.8, float("nan"), None]) == "0.8000"  # one finite value: no ±
    assert summary.mean_std([float("nan")]) == "n/a"
    assert (summary.fmt(0.12345), summary.fmt(None), summary.fmt(math.inf)) == (
        "0.1235",
        "n/a",
        "n/a",
    )


def test_cells_group_seeds_and_leave_diverged_ones_out():
    models = [
        _model("relu", 0.1, 0, 0.8),
        _model("relu", 0.1, 1, 0.9),
        _model("tanh", 0.1, 0, 0.7),
        _model("tanh", 0.1, 1, float("nan"), diverged_at=2),
    ]
    relu, tanh = summary.cells(_result(models))
    assert (relu["label"], relu["seeds"], relu["diverged"]) == ("relu", 2, 0)
    assert relu["evals"][2]["test_accuracy"] == "0.8500 ± 0.0500"
    assert (tanh["diverged"], tanh["evals"][2]["test_accuracy"]) == (1, "0.7000")
    (note,) = summary.divergence_notes(_result(models))
    assert note.startswith("tanh: 1/2 seed(s) diverged") and "epoch(s) [2]" in note


def test_cell_labels_name_the_lr_only_when_the_study_varies_it():
    models = [_model("relu", 0.1, 0, 0.8), _model("relu", 0.05, 0, 0.6)]
    labels = [c["label"] for c in summary.cells(_result(models, lrs=(0.1, 0.05)))]
    assert labels == ["relu / lr 0.1", "relu / lr 0.05"]


def test_result_dict_of_a_study_result_round_trips_through_cells():
    specs = [ModelSpec("relu", "he", 0.1, s) for s in range(2)]
    res = SimpleNamespace(
        config=SimpleNamespace(sizes=(4, 3, 2)),
        models=specs,
        history={"val_accuracy": np.array([[0.5, 0.6], [0.7, 0.8]])},
        diverged_at=np.array([0, 0]),
        evals={2: {k: np.array([0.6, 0.8]) for k in summary.METRIC_KEYS}},
        epoch_seconds=[1.0, 3.0],
        start=SimpleNamespace(
            layout="vmap", layout_seconds={}, devices=["cpu:0"], resumed_from=None, sizes=(8, 4, 4)
        ),
    )
    out = summary.result_dict("demo", {"inits": ["he"], "lrs": [0.1]}, res)
    assert json.loads(json.dumps(out)) == out  # JSON as it stands
    assert out["status"] == "ok" and out["models"][1]["history"]["val_accuracy"] == [0.7, 0.8]
    assert out["timing"]["model_epochs"] == 4 and out["timing"]["model_epochs_per_s"] == 1.0
    (cell,) = summary.cells(out)
    assert cell["evals"][2]["val_accuracy"] == "0.7000 ± 0.1000"
    assert summary.timing_line(out).startswith("4 model-epochs trained in 4.0 s (1.00 model-")
    assert "rounded" not in summary.timing_line({**out, "device": {"float32_matmul": "float32"}})
    on_gpu = summary.timing_line({**out, "device": {"float32_matmul": "tf32"}})
    assert on_gpu.endswith("layout vmap; float32 matmuls rounded to tf32 (JAX's default there).")
    res.epoch_seconds, res.start.resumed_from = [], 2  # resumed at its last epoch: no rate
    done = summary.timing_line(summary.result_dict("demo", {"inits": ["he"], "lrs": [0.1]}, res))
    assert done.startswith("no model-epochs left to train (resumed at epoch 2) on 1 device(s)")


def test_read_result_of_a_run_folder(tmp_path):
    with pytest.raises(InputError, match="no .*results.json") as err:
        summary.read_result(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        summary.read_result(tmp_path)
    result = _result([_model("relu", 0.1, 0, 0.8)])
    (tmp_path / "results.json").write_text(json.dumps(result))
    assert summary.read_result(tmp_path) == result


@pytest.mark.parametrize(
    ("result", "words"),
    [
        ([], "expected a study's result dict"),
        ({"models": [], "config": {"inits": ["he"]}}, "lacks `inits` or `lrs`"),
        (_result([{"activation": "relu"}]), "lacks \\['init', 'lr'"),
    ],
)
def test_cells_refuse_what_is_not_a_study_result_in_one_line(result, words):
    with pytest.raises(InputError, match=words) as err:
        summary.cells(result)
    assert "\n" not in str(err.value)


def test_result_dict_refuses_what_is_not_a_study_result():
    with pytest.raises(InputError, match="expected a jnn.study.StudyResult"):
        summary.result_dict("demo", {"inits": [], "lrs": []}, {"models": []})


def test_mean_std_curves_over_seeds():
    from jnn import plots

    mean, std = plots.mean_std_curves([[1.0, 2.0, np.nan], [3.0, np.nan, np.nan]])
    np.testing.assert_array_equal(mean, [2.0, 2.0, np.nan])  # an epoch no seed ran: NaN
    np.testing.assert_array_equal(std, [1.0, 0.0, 0.0])
    mean, std = plots.mean_std_curves([0.5, 0.25])  # one seed: std 0
    np.testing.assert_array_equal(std, [0.0, 0.0])
    with pytest.raises(InputError, match="expected \\(epochs,\\) or \\(seeds, epochs\\)"):
        plots.mean_std_curves(np.zeros((2, 2, 2)))
    with pytest.raises(InputError, match="metric must be one of"):
        plots.draw_metric(None, {}, "speed", [])


def test_a_model_that_diverged_in_its_first_epoch_draws_no_curve_and_does_not_fail(tmp_path):
    """The default study's scikit-learn Linear (lr 0.1) diverges in epoch 1: its history has no
    epochs. Drawing it must leave the panel to the others (the main job failed at its plots)."""
    from matplotlib.figure import Figure

    from jnn import plots

    ax_loss, ax_acc = Figure().subplots(1, 2)
    empty = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    jnn_run = {"train_loss": [[1.0, 0.5]], "val_loss": [[1.1, 0.6]], "train_accuracy": [[0.5, 0.7]],
               "val_accuracy": [[0.4, 0.6]]}  # fmt: skip
    plots._panel_pair((ax_loss, ax_acc), jnn_run, [1, 2], empty, "sklearn diverged")
    assert len(ax_loss.lines) == 2 and len(ax_acc.lines) == 2  # jnn's train + val only

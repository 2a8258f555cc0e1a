"""A study's figures come from its run folder's metrics.jsonl (``jnn.plots.run_curves``): a
run still training can be plotted, and what is drawn equals the result's own histories."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from jnn import plots, study, summary
from jnn.errors import InputError

CONFIG = dict(
    activations=("relu", "linear"), hidden=(16,), epochs=3, save_at=(2, 3), seeds=2,
    checkpoint_every=1, lrs=(0.1,),
)  # fmt: skip


def _data(n: int = 192) -> study.Data:
    """Learnable synthetic data of the dataset's width (from the config, not a constant)."""
    features = study.StudyConfig(**CONFIG).sizes[0]
    rng = np.random.default_rng(0)
    x = rng.random((n, features), dtype=np.float32)
    y = np.argmax(x @ rng.normal(size=(features, 10)).astype(np.float32), axis=1)
    return study.Data((x, y.astype(np.int32)), (x[:64], y[:64]), (x[64:128], y[64:128]))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("run")
    c = study.StudyConfig(**CONFIG)
    res = study.run(c, workdir, data=_data())
    return workdir, summary.result_dict("toy", dataclasses.asdict(c), res)


def test_metrics_give_the_results_histories(finished):
    workdir, result = finished
    read = plots.read_metrics(workdir)
    assert read["epochs_logged"] == 3 and read["save_epochs"] == [2, 3]
    for mine, theirs in zip(read["models"], result["models"], strict=True):
        assert mine["name"] == theirs["name"] and mine["diverged_at"] == theirs["diverged_at"]
        for k, v in theirs["history"].items():
            np.testing.assert_array_equal(mine["history"][k], v)


def test_a_run_still_training_is_plotted_as_far_as_it_goes(finished, tmp_path):
    workdir, _ = finished
    live = tmp_path / "live"
    live.mkdir()
    (live / "run.json").write_text((workdir / "run.json").read_text())
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    per_epoch = len(lines) // 3
    cut = "".join(lines[:per_epoch]) + lines[per_epoch][:20]  # epoch 1, then an append under way
    (live / "metrics.jsonl").write_text(cut)
    read = plots.read_metrics(live)
    assert read["epochs_logged"] == 1
    paths = plots.run_curves(live, tmp_path / "png", sklearn={"relu": {"status": "failed"}})
    names = sorted(p.name for p in paths)
    assert names == ["loss_linear.png", "loss_overview.png", "loss_relu.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_an_edited_line_or_a_run_without_epochs_is_refused(finished, tmp_path):
    workdir, _ = finished
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text((workdir / "run.json").read_text())
    row = {"epoch": 1, "model": "gelu/normal/lr0.1/s0", "train_loss": 1.0}
    (bad / "metrics.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match="line 1 is not one of this run's metric lines"):
        plots.read_metrics(bad)
    (bad / "metrics.jsonl").write_text("")
    with pytest.raises(InputError, match="no finished epoch yet"):
        plots.run_curves(bad)
    (bad / "metrics.jsonl").unlink()
    with pytest.raises(InputError, match="cannot read"):
        plots.read_metrics(bad)
    with pytest.raises(InputError, match="not a jnn study run folder"):
        plots.read_metrics(tmp_path / "nowhere")


def test_a_cell_whose_seeds_all_diverged_says_so_without_averaging(finished):
    _, result = finished
    cell = next(c for c in summary.cells(result) if c["activation"] == "linear")
    diverged = {**cell, "models": [{**m, "diverged_at": 2} for m in cell["models"]]}
    note = plots._cell_note(diverged, {"status": "diverged", "diverged_at": 1})
    assert "2/2 seed(s) diverged (epoch" in note and "average" not in note
    assert "sklearn diverged at epoch 1" in note
    one = {**cell, "models": [{**cell["models"][0], "diverged_at": 2}, cell["models"][1]]}
    assert "the curves average the seeds still training" in plots._cell_note(one, {})


def test_legend_names_only_what_the_figure_draws(tmp_path, monkeypatch):
    """A cell whose seeds all diverged by epoch 4, beside a scikit-learn model that diverged in
    epoch 1 (no curve): its legend names neither scikit-learn nor the checkpoints at 5 and 10
    that were never written, only the one at 2 its curves reach."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    curve = np.full((2, 10), np.nan)
    curve[:, :3] = 0.5
    history = {"train_loss": curve, "val_loss": curve}
    sk = {"train_loss": [], "val_loss": []}
    plots.plot_cell(tmp_path / "a.png", "t", history, (2, 5, 10), sklearn_history=sk)
    plots.plot_overview(tmp_path / "b.png", {"c": history}, (2, 5, 10), sklearn_histories={"c": sk})
    for fig in figures:
        legend = fig.axes[1].get_legend() or fig.legends[0]
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels == ["jnn train", "jnn validation", "checkpoint (2)", "+-1 std, 2 seeds"]

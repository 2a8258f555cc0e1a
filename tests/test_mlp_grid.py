"""experiments.mlp_grid end to end (a preset of jnn.study with the grid's defaults): a tiny
--quick grid on the real data, a killed grid grown with --resume bit for bit, and bad input as
one line with exit code 2 (before any data is read or any folder is made)."""

from __future__ import annotations

import json

import pytest

from experiments import mlp_grid

TINY = ["--quick", "--activations", "relu,linear", "--inits", "zero,he", "--lrs", "0.1"]
TINY += ["--layout", "vmap"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, fashion_dir):
    out = tmp_path_factory.mktemp("grid") / "run"
    rc = mlp_grid.main([*TINY, "--out", str(out), "--data-dir", str(fashion_dir), "--devices", "1"])
    assert rc == 0
    return out


@pytest.mark.slow
def test_quick_grid_writes_every_output(quick_run):
    names = {p.name for p in quick_run.iterdir()}
    assert {"results.json", "results.md", "heatmap-e1.png", "heatmap-e2.png"} <= names
    assert "bands-lr0.1.png" in names
    results = json.loads((quick_run / "results.json").read_text())
    assert results["num_models"] == 2 * 2 * 1 * 2 == len(results["models"])
    assert len(results["cells"]) == 4
    for m in results["models"]:
        spread = m["evals"]["2"]["unit_spread"]
        assert (max(spread) == 0.0) == (m["cell"]["init"] == "zero"), m["cell"]
        assert len(m["history"]["val_accuracy"]) == 2
    assert results["timing"]["grid_model_epochs_per_s"] > 0
    md = (quick_run / "results.md").read_text()
    assert "| relu | zero | 0.1 | 0/2 |" in md


@pytest.mark.slow
def test_a_grid_of_two_optimizers_keeps_their_cells_apart(tmp_path, fashion_dir):
    """SGD and Adam at one lr are two cells: their own rows (with an optimizer column), their
    own heatmap panels and bands figures, never one band over both."""
    out = tmp_path / "mixed"
    argv = ["--quick", "--activations", "relu", "--inits", "he", "--lrs", "0.01", "--seeds", "1"]
    argv += ["--optimizer", "sgd,adam", "--out", str(out), "--data-dir", str(fashion_dir)]
    assert mlp_grid.main([*argv, "--devices", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [c["cell"]["optimizer"] for c in results["cells"]] == ["sgd", "adam"]
    assert {m["cell"]["optimizer"] for m in results["models"]} == {"sgd", "adam"}
    md = (out / "results.md").read_text()
    assert "| activation | init | optimizer | lr |" in md and "| relu | he | adam | 0.01 |" in md
    assert {"bands-sgd-lr0.01.png", "bands-adam-lr0.01.png"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_diverged_models_are_results_and_the_grid_exits_0(tmp_path, fashion_dir):
    """The grid measures divergence per cell, so a diverged model is reported (counted, its
    numbers refused), not an error: status ok, exit 0, as its --help promises."""
    out = tmp_path / "hot"
    argv = ["--quick", "--activations", "linear", "--inits", "he", "--lrs", "1000", "--seeds", "1"]
    assert mlp_grid.main([*argv, "--out", str(out), "--data-dir", str(fashion_dir)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok" and results["diverged_models"] == 1
    assert "| linear | he | 1000 | 1/1 | n/a |" in (out / "results.md").read_text()


def _models(out):
    return json.loads((out / "results.json").read_text())["models"]


@pytest.mark.slow
def test_killed_grid_resumes_and_grows_bit_for_bit(quick_run, tmp_path, fashion_dir, capsys):
    """A 1-epoch run continued with --resume to 2 epochs (adding save epoch 2) gives the 2-epoch
    run's numbers exactly; a refused resume names the problem in one line and leaves the run."""
    out = tmp_path / "grown"
    base = [*TINY, "--out", str(out), "--data-dir", str(fashion_dir), "--devices", "1"]
    assert mlp_grid.main([*base, "--epochs", "1", "--save-at", "1"]) == 0
    assert (out / "checkpoints" / "1").is_dir()
    refusals = [
        (
            ["--epochs", "2", "--seeds", "3"],
            "--seeds: run has 2, now 3); a resume may change only --epochs, --save-at",
        ),
        (["--epochs", "2", "--lrs", "0.05"], "--lrs: run has [0.1], now [0.05]"),
    ]
    for extra, message in refusals:
        capsys.readouterr()
        assert mlp_grid.main([*base, "--resume", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert mlp_grid.main([*base, "--resume", "--epochs", "2", "--save-at", "1,2"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_from"] == 1 and results["config"]["epochs"] == 2
    assert _models(out) == _models(quick_run)  # histories, divergence, evals at 1 and 2
    capsys.readouterr()
    assert mlp_grid.main([*base, "--resume", "--epochs", "1", "--save-at", "1"]) == 2
    assert "is at epoch 2, past --epochs 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--activations", "relu,swish"], "unknown activation 'swish'"),
        (["--inits", "zeros"], "unknown initializer 'zeros'"),
        (["--lrs", "0.1,nan"], "--lrs must be positive finite numbers"),
        (["--lrs", "-0.1"], "--lrs must be positive finite numbers"),
        (["--lrs", "fast"], "--lrs takes a number, got 'fast'"),
        (["--seeds", "0"], "--seeds must be an integer in [1, 1,024]"),
        (["--epochs", "0"], "--epochs must be an integer in [1, 100,000]"),
        (["--epochs", "1000000000000"], "--epochs must be an integer in [1, 100,000]"),
        (["--epochs", "2", "--save-at", "5"], "--save-at must be an integer in [1, 2]"),
        (["--save-at", "1,x"], "--save-at takes an integer, got 'x'"),
        (["--split", "bogus"], "unknown split protocol 'bogus'"),
        (["--subset=-3,1,1"], "--subset must be an integer"),
        (["--subset"], "error: argument --subset: expected one argument (see"),
        (["--quick", "--seeds", "1000", "--epochs", "100000"], "GiB"),
        (["--seed", str(2**32)], "--seed must be an integer in [0, 4,294,967,295]"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer"),
        (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
    ],
)
def test_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    try:
        rc = mlp_grid.main([*extra, "--out", str(out)])
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()

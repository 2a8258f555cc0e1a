"""experiments.harness: the contract every experiment runs under (parse -> run -> render, one
run-folder policy, stamps, exit codes, one-line bad input), checked on a toy experiment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from experiments import harness, report
from jnn import workdir
from jnn.errors import InputError


@dataclass(frozen=True)
class ToyConfig:
    out: str
    status: str = "ok"
    overwrite: bool = False
    fail_in_run: bool = False


def _parse(argv):
    argv = list(argv or [])
    if "--bad" in argv:
        raise InputError("--bad is not a flag of the toy")
    status = "diverged" if "--diverge" in argv else "failed" if "--all-failed" in argv else "ok"
    return ToyConfig(out=argv[0], status=status, fail_in_run="--fail" in argv)


def _run(cfg, run_dir: Path):
    assert run_dir.is_dir() and (run_dir / workdir.RUN_MARKER).is_file()  # taken before run
    if cfg.fail_in_run:
        raise InputError("the toy's data are missing")
    return {"status": cfg.status, "value": 1.5}


def _render(result, run_dir: Path):
    return [workdir.write_json(run_dir / "results.json", result)]


TOY = harness.Experiment("toy", _parse, _run, _render, lambda r: f"value {r['value']}")
toy_main = harness.cli(TOY)


def test_run_renders_stamps_and_says_where(tmp_path, capsys):
    out = tmp_path / "run"
    assert toy_main([str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["value"] == 1.5 and "jax" in result["versions"]
    assert result["device"]["backend"] == "cpu" and result["wall_s"] >= 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "value 1.5"
    assert lines[-1].startswith("done in ") and str(out) in lines[-1]


def test_divergence_is_exit_3_and_said(tmp_path, capsys):
    assert toy_main([str(tmp_path / "run"), "--diverge"]) == harness.EXIT_DIVERGED == 3
    assert "(status: diverged)" in capsys.readouterr().out


def test_a_run_that_measured_nothing_is_exit_1_and_said(tmp_path, capsys):
    """(bench.scaling with every device count failed reported "ok" and exit 0.)"""
    assert toy_main([str(tmp_path / "run"), "--all-failed"]) == harness.EXIT_FAILED == 1
    assert "(status: failed)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--bad"], ["--fail"]])
def test_bad_input_is_one_line_and_leaves_no_stub(argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert toy_main([str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists()  # the folder the failed run made is gone again


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert toy_main([str(out)]) == 0
    assert toy_main([str(out)]) == 2
    assert "already holds another run" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["value"] == 1.5  # kept


def test_default_out_is_under_the_one_root():
    assert harness.default_out("mlp_grid", "quick") == str(Path("runs") / "mlp_grid-quick")
    assert harness.default_out("cnn", "") == str(Path("runs") / "cnn")


@pytest.mark.parametrize("name", ["cnn", "vgg_transfer"])
def test_ctrl_c_of_a_command_without_resume_names_no_resume(name, tmp_path):
    """Adversarial pass: Ctrl-C during python -m experiments.cnn printed "continue with ...
    --resume --out ...", a flag cnn (and vgg_transfer) does not have."""
    import importlib

    module = importlib.import_module(f"experiments.{name}")
    argv = ["--quick", "--out", str(tmp_path / "o")]
    line = harness.interrupted_line(module.EXPERIMENT, argv, module.parse(argv), tmp_path / "o")
    assert line == report.INTERRUPTED

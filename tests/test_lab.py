"""experiments.lab: a command line generated from a config declaration.

Every flag of every lab-generated experiment is thrown generated text (hypothesis): the command
either accepts it (with --print-config: exit 0 and the parsed value in the printed config) or
refuses it in one line starting with ``error:``, exit 2, no traceback, and no folder made.
Nothing is silently dropped or rounded: a list keeps every item, a number stays a number.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bench.benchmark
from bench import backward_probe, cnn_scan_probe, conv_lowering, grid_probe, scaling, vgg_reference
from experiments import cnn, lab, mlp_grid, mlp_sweep, theory, vgg_transfer
from jnn.config import ConfigError

EXPERIMENTS = {  # every command whose flags lab generates: the studies and the measurements
    "mlp_sweep": mlp_sweep,
    "mlp_grid": mlp_grid,
    "cnn": cnn,
    "theory": theory,
    "vgg_transfer": vgg_transfer,
    "benchmark": bench.benchmark,
    "scaling": scaling,
    "backward_probe": backward_probe,
    "cnn_scan_probe": cnn_scan_probe,
    "conv_lowering": conv_lowering,
    "grid_probe": grid_probe,
    "vgg_reference": vgg_reference,
}


def run_cli(module, argv, capsys) -> tuple[int, str, str]:
    try:
        rc = module.main(argv)
    except SystemExit as done:  # --print-config, --help and argparse's usage errors
        rc = done.code
    out = capsys.readouterr()
    return rc, out.out, out.err.strip()


def flags(module) -> list[tuple[str, typing.Any]]:
    cls = module.Config
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.default is not True]


def option_strings(module) -> set[str]:
    """Every option string (``--epochs``, ``--no-sklearn``, ``--out``, ``-h`` ...) of the parser
    ``module.parse`` builds: lab.build_parser is spied on while --print-config runs."""
    made = []

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    real = lab.build_parser
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lab, "build_parser", spy)
        with pytest.raises(SystemExit):
            module.parse(["--print-config"])
    return {opt for action in made[0]._actions for opt in action.option_strings}


OPTIONS = {name: option_strings(mod) for name, mod in EXPERIMENTS.items()}


def foreign_flags(message: str, options: set[str]) -> set[str]:
    """The ``--words`` of ``message`` that are not options of the command (issue 19: a message
    advised --resume to a command without it)."""
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", message)) - options


def test_the_flag_check_finds_a_flag_the_command_lacks():
    """The check below can fail: cnn has no --resume, and --save-at is mlp_sweep's, not cnn's."""
    message = "error: --out holds a run; pass --resume or --save-at 3, not --epochs=2"
    assert foreign_flags(message, OPTIONS["cnn"]) == {"--resume", "--save-at"}
    assert foreign_flags(message, OPTIONS["mlp_sweep"]) == set()


CASES = [(name, field) for name, mod in EXPERIMENTS.items() for field, _ in flags(mod)]
TEXT = st.one_of(
    st.text(alphabet="0123456789,.-e+naifxz ", max_size=12),
    st.sampled_from(["", ",", "1,,2", "1,x", "nan", "inf", "-1", "0", "1e3", "2**32", "none"]),
)


@pytest.mark.parametrize("experiment, field", CASES, ids=[f"{e}-{f}" for e, f in CASES])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=TEXT)
def test_every_flag_accepts_exactly_or_refuses_in_one_line(
    experiment, field, text, tmp_path, capsys
):
    if "--" in text:  # argparse itself treats "--" as the end of options, whatever the flag
        return
    module = EXPERIMENTS[experiment]
    out = tmp_path / "out"
    argv = [lab.flag(field) + "=" + text, "--print-config", "--out", str(out)]
    rc, printed, err = run_cli(module, argv, capsys)
    assert not out.exists()
    if rc == 0:
        value = json.loads(printed)[field]
        kind = lab._kind(typing.get_type_hints(module.Config)[field])
        expect = lab.convert(text, kind, field)
        assert value == (list(expect) if isinstance(expect, tuple) else expect)
    else:
        assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
        assert "Traceback" not in err
        assert not foreign_flags(err, OPTIONS[experiment]), err  # only flags it has


def test_convert_is_strict():
    many_ints = lab._kind(tuple[int, ...])
    assert lab.convert("1,2,30", many_ints, "save_at") == (1, 2, 30)
    for bad in ("1,,2", "1,x", "", "1.5", ","):
        with pytest.raises(ValueError, match="--save-at"):
            lab.convert(bad, many_ints, "save_at")
    optional = lab._kind(float | None)
    assert lab.convert("none", optional, "init_scale") is None
    assert lab.convert("0.5", optional, "init_scale") == 0.5


def test_flags_given_override_config_file_over_quick(tmp_path, capsys):
    stored = {"config": {"epochs": 7, "seeds": 3, "activations": ["relu"]}}
    (tmp_path / "run.json").write_text(json.dumps(stored))
    argv = ["--quick", "--config", str(tmp_path / "run.json"), "--seeds", "2", "--print-config"]
    rc, printed, _ = run_cli(mlp_sweep, argv, capsys)
    shown = json.loads(printed)
    assert rc == 0 and shown["epochs"] == 7 and shown["seeds"] == 2
    assert shown["activations"] == ["relu"] and shown["subset"] == [2000, 500, 500]


def test_a_config_file_with_unknown_fields_is_refused(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"epochs": 7, "colour": "red"}}))
    rc, _, err = run_cli(mlp_sweep, ["--config", str(tmp_path / "run.json")], capsys)
    assert rc == 2 and "fields this experiment does not have: ['colour']" in err


@pytest.mark.parametrize(
    "stored, says",
    [
        ({"sklearn": "false"}, "--no-sklearn holds 'false', not true or false"),  # ran sklearn
        ({"sklearn_workers": "2"}, "--sklearn-workers holds '2', not an integer"),  # traceback
        ({"sklearn_workers": 2.5}, "--sklearn-workers holds 2.5, not an integer"),  # accepted
        ({"inits": [["glorot"]]}, "--inits holds [['glorot']], not a list of text"),  # traceback
        ({"lrs": [[0.1]]}, "--lrs holds [[0.1]], not a list of numbers"),  # traceback
        ({"lrs": 0.1}, "--lrs holds 0.1, not a list of numbers"),
        ({"subset": [True, 1, 1]}, "--subset holds [True, 1, 1], not a list of integers"),
        ({"epochs": None}, "--epochs holds None, not an integer"),
    ],
)
def test_a_config_file_with_values_of_another_type_is_refused(stored, says, tmp_path, capsys):
    """Adversarial pass: a run.json edited to hold values of another type crashed with a
    traceback (a list in a list), ran with a string "false" as true, or took 2.5 workers."""
    (tmp_path / "run.json").write_text(json.dumps({"config": stored}))
    rc, _, err = run_cli(mlp_sweep, ["--config", str(tmp_path / "run.json")], capsys)
    assert rc == 2 and err == f"error: --config {tmp_path / 'run.json'}: {says}"


def test_sklearn_workers_must_be_an_integer():
    """Config(sklearn_workers=2.5) passed the range check, as the --config file above did."""
    for bad in (2.5, "2", True):
        with pytest.raises(ConfigError, match="sklearn_workers must be an integer in"):
            mlp_sweep.Config(sklearn=False, sklearn_workers=bad)


def test_config_errors_render_as_flags():
    err = ConfigError("`save_at` 5 is beyond `epochs` 3")
    assert str(err) == "save_at 5 is beyond epochs 3"
    assert err.render(lab.flag) == "--save-at 5 is beyond --epochs 3"


def test_help_shows_defaults_and_quick_values(capsys):
    rc, printed, _ = run_cli(mlp_sweep, ["--help"], capsys)
    text = " ".join(printed.split())
    assert rc == 0
    assert "--epochs EPOCHS epochs per model [100; 3 with --quick]" in text
    assert "--no-sklearn turn off: train scikit-learn" in text
    assert "output folder [runs/mlp_sweep; runs/mlp_sweep-quick with --quick]" in text


def test_shared_checks_refuse_what_they_cannot_check():
    """jnn.config's list and size checks name the field for a value of the wrong kind too,
    instead of a TypeError from inside them."""
    from jnn import config

    for bad in (5, "ab", None):
        with pytest.raises(ConfigError, match="^x must be a list or tuple of items"):
            config.distinct(bad, "x")
    with pytest.raises(ConfigError, match="^x lists 1 more than once; give each once$"):
        config.distinct((1, 2, 1), "x")
    config.distinct((), "x")
    with pytest.raises(ConfigError, match="^n must be an integer >= 1, got '5'"):
        config.at_most("5", 3, "n", "images", "here")
    with pytest.raises(ConfigError, match="^n asks for 4 images, but here has 3; give at most"):
        config.at_most(4, 3, "n", "images", "here")
    config.at_most(None, 3, "n", "images", "here")

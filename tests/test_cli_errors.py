"""Bad input ends in one line on stderr and a non-zero exit, never a traceback.

Each case is one row of CASES: an id, a function building argv (and any files it needs) in a
temporary folder, and a piece of the message. Add rows for new experiments: ``main`` is the
experiment's ``report.cli_main``-wrapped entry point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from bench import benchmark
from experiments import mlp_sweep, theory, vgg_transfer
from jnn import workdir

REPO = Path(__file__).resolve().parents[1]


class Case(NamedTuple):
    id: str
    argv: Callable[[Path, Path], list[str]]  # (tmp_path, fashion_dir) -> argv
    message: str  # a piece of the one-line error
    main: Callable = mlp_sweep.main
    module: str = "experiments.mlp_sweep"


def sweep(*args: str) -> Callable[[Path, Path], list[str]]:
    """argv for a quick sweep into tmp_path/out with the real data, plus ``args``."""
    return lambda tmp, data: [
        "--quick", "--no-sklearn", "--devices", "1", "--out", str(tmp / "out"),
        "--data-dir", str(data), *args,
    ]  # fmt: skip


def data_copy(tmp: Path, data: Path, broken: str | None = None, how: str = "truncate") -> Path:
    """A data folder linking the real files, with ``broken`` truncated or overwritten."""
    folder = tmp / "data"
    folder.mkdir()
    for f in data.glob("*.gz"):
        if f.name != broken:
            os.symlink(f, folder / f.name)
    if broken:
        raw = (data / broken).read_bytes()
        bad = raw[: len(raw) // 2] if how == "truncate" else bytes(len(raw))
        (folder / broken).write_bytes(bad)
    return folder


def with_data(folder_fn: Callable[[Path, Path], Path], *args: str):
    def build(tmp: Path, data: Path) -> list[str]:
        return [*sweep(*args)(tmp, data)[:-2], "--data-dir", str(folder_fn(tmp, data))]

    return build


def another_run(tmp: Path, data: Path) -> list[str]:
    (tmp / "out" / "relu" / "2").mkdir(parents=True)
    (tmp / "out" / "results.json").write_text("{}")
    return sweep()(tmp, data)


def resume_changed(setting: str, value: str) -> Callable[[Path, Path], list[str]]:
    """--resume a run whose run.json (as jnn.study writes it) has the default config."""

    def build(tmp: Path, data: Path) -> list[str]:
        from jnn import study

        cfg = mlp_sweep.parse(sweep()(tmp, data)).config.study()
        (tmp / "out").mkdir()
        stored = {"format": study.FORMAT, "config": {}, "identity": cfg.identity()}
        (tmp / "out" / "run.json").write_text(json.dumps(stored))
        return [*sweep()(tmp, data), setting, value, "--resume"]

    return build


def resume_foreign(tmp: Path, data: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("not a run")
    return [*sweep()(tmp, data), "--resume"]


def users_folder(*args: str) -> Callable[[Path, Path], list[str]]:
    """--out a folder of the user's (no jnn marker) holding thesis.txt."""

    def build(tmp: Path, data: Path) -> list[str]:
        (tmp / "out").mkdir()
        (tmp / "out" / "thesis.txt").write_text("three years of work")
        return [*sweep()(tmp, data), *args]

    return build


def out_under_file(tmp: Path, data: Path) -> list[str]:
    (tmp / "afile").write_text("x")
    return [*sweep()(tmp, data)[:-4], "--out", str(tmp / "afile" / "run"), "--data-dir", str(data)]


def vgg(*args: str) -> Callable[[Path, Path], list[str]]:
    """argv for a quick random-weights VGG16 transfer run into tmp_path/out, plus ``args``."""
    return lambda tmp, data: [
        "--quick", "--weights", "random", "--out", str(tmp / "out"), "--data-dir", str(data),
        *args,
    ]  # fmt: skip


def vgg_case(id: str, args: tuple[str, ...], message: str) -> Case:
    return Case(id, vgg(*args), message, vgg_transfer.cli, "experiments.vgg_transfer")


def theory_case(id: str, args: tuple[str, ...], message: str) -> Case:
    argv = lambda tmp, data: ["--out", str(tmp / "out"), *args]  # noqa: E731
    return Case(id, argv, message, theory.cli, "experiments.theory")


def bench_case(id: str, args: tuple[str, ...], message: str) -> Case:
    argv = lambda tmp, data: ["--quick", "--out", str(tmp / "out"), *args]  # noqa: E731
    return Case(id, argv, message, benchmark.main, "bench.benchmark")


def probe_case(module: str, id: str, args: tuple[str, ...], message: str) -> Case:
    """A bad flag of the measurement command ``bench.<module>``, into tmp_path/out."""
    import importlib

    main = importlib.import_module(f"bench.{module}").main
    argv = lambda tmp, data: ["--out", str(tmp / "out"), *args]  # noqa: E731
    return Case(id, argv, message, main, f"bench.{module}")


CASES = [
    Case("missing-data-dir", lambda t, d: [*sweep()(t, d)[:-2], "--data-dir", str(t / "nope")],
         "is not a folder"),
    Case("empty-data-dir", with_data(lambda t, d: (t / "empty").mkdir() or t / "empty"),
         "could not download"),
    Case("truncated-gz", with_data(lambda t, d: data_copy(t, d, "train-labels-idx1-ubyte.gz")),
         "truncated"),
    Case("corrupt-gz", with_data(
        lambda t, d: data_copy(t, d, "t10k-labels-idx1-ubyte.gz", how="zeros")), "SHA-256"),
    Case("unknown-activation", sweep("--activations", "relu,swish"), "unknown activation"),
    Case("duplicate-activation", sweep("--activations", "relu,relu"), "lists relu more than once"),
    Case("unknown-init", sweep("--inits", "xavier"), "unknown initializer"),
    Case("zero-epochs", sweep("--epochs", "0"), "--epochs must be an integer in [1, 100,000]"),
    Case("negative-epochs", sweep("--epochs", "-3"), "--epochs must be an integer in [1,"),
    Case("zero-lr", sweep("--lrs", "0"), "--lrs must be positive finite numbers"),
    Case("negative-lr", sweep("--lrs", "-0.1"), "--lrs must be positive finite numbers"),
    Case("nan-lr", sweep("--lrs", "nan"), "--lrs must be positive finite numbers"),
    Case("zero-batch", sweep("--batch-size", "0"), "--batch-size must be an integer >= 1"),
    Case("batch-over-data", sweep("--batch-size", "5000"), "exceeds the 2,000 training examples"),
    Case("zero-seeds", sweep("--seeds", "0"), "--seeds must be an integer in [1,"),
    Case("negative-seed", sweep("--seed", "-1"), "--seed must be an integer in [0, "),
    Case("save-at-beyond", sweep("--epochs", "3", "--save-at", "2,5"),
         "--save-at must be an integer in [1, 3]"),
    Case("save-at-zero", sweep("--save-at", "0,2"), "--save-at must be an integer in [1, 3]"),
    Case("save-at-garbage", sweep("--save-at", "two"), "--save-at takes an integer, got 'two'"),
    Case("save-at-gap", sweep("--save-at", "1,,2"), "without gaps"),
    Case("init-scale-for-he", sweep("--inits", "he", "--init-scale", "0.1"),
         "applies to normal and random, not to ['he']"),
    Case("init-scale-negative", sweep("--init-scale", "-1"),
         "--init-scale must be a positive finite"),
    Case("zero-devices", sweep("--devices", "0"), "--devices must be an integer >= 1"),
    Case("too-many-devices", sweep("--devices", "64"), "asked for 64 devices"),
    Case("negative-checkpoint-every", sweep("--checkpoint-every", "-1"),
         "--checkpoint-every must be an integer >= 0"),
    Case("unknown-optimizer", sweep("--optimizer", "lbfgs"), "--optimizer: unknown optimizer"),
    Case("unknown-layout", sweep("--layout", "pmap"), "--layout must be one of"),
    Case("resume-and-overwrite", sweep("--resume", "--overwrite"), "contradict"),
    Case("out-holds-another-run", another_run, "already holds another run"),
    Case("resume-other-lr", resume_changed("--lrs", "0.05"), "--lrs: run has [0.1], now [0.05]"),
    Case("resume-other-init", resume_changed("--inits", "he"), "--inits: run has ['glorot']"),
    Case("resume-not-a-run", resume_foreign, "holds no run.json"),
    Case("huge-seed", sweep("--seed", str(2**63)), "--seed must be an integer in [0, "),
    Case("huge-epochs", sweep("--epochs", str(10**12)),
         "--epochs must be an integer in [1, 100,000]"),
    Case("resume-run-json-wrong-structure", lambda t, d: (t / "out").mkdir() or
         (t / "out" / "run.json").write_text("[1, 2]") and [*sweep()(t, d), "--resume"],
         "is unreadable"),
    Case("overwrite-users-folder", users_folder("--overwrite"), "never deletes files"),
    Case("overwrite-users-folder-with-a-lock", lambda t, d: (users_folder("--overwrite")(t, d),
         (t / "out" / workdir.LOCK_FILE).touch())[0], "never deletes files"),
    Case("out-under-a-file", out_under_file, "which is a file"),
    vgg_case("vgg-nan-lr", ("--lr", "nan"), "--lr must be a positive finite number"),
    vgg_case("vgg-inf-lr", ("--lr", "inf"), "--lr must be a positive finite number"),
    vgg_case("vgg-negative-lr", ("--lr", "-1"), "--lr must be a positive finite number"),
    vgg_case("vgg-nan-finetune-lr", ("--finetune-lr", "nan"), "--finetune-lr must be a positive"),
    vgg_case("vgg-negative-train-size", ("--train-size", "-5"), "--train-size must be an integer"),
    vgg_case("vgg-zero-train-size", ("--train-size", "0"), "--train-size must be an integer >= 1"),
    vgg_case("vgg-zero-test-size", ("--test-size", "0"), "--test-size must be an integer >= 1"),
    vgg_case("vgg-huge-feature-batch", ("--feature-batch", "100000"), "integer in [1, 4,096]"),
    vgg_case("vgg-huge-seed", ("--seed", str(2**63)), "--seed must be an integer in"),
    vgg_case("vgg-bad-gradients", ("--gradients", "numeric"), "--gradients must be one of"),
    vgg_case("vgg-batch-over-train", ("--train-size", "50", "--batch-size", "64"),
             "--batch-size 64 exceeds the 50 training images"),
    Case("vgg-cache-dir-is-a-file", lambda t, d: (t / "afile").write_text("x") and
         vgg("--cache-dir", str(t / "afile"))(t, d), "--cache-dir", vgg_transfer.cli,
         "experiments.vgg_transfer"),
    theory_case("theory-huge-classes", ("--classes", str(10**8)),
                "--classes must be an integer in [2, 100,000]"),
    theory_case("theory-huge-product", ("--rows", "10000", "--classes", "10000"), "lower one"),
    theory_case("theory-huge-seed", ("--seed", str(2**63)), "--seed must be an integer in"),
    theory_case("theory-zero-rows", ("--rows", "0"), "--rows must be an integer in [1,"),
    bench_case("bench-zero-reps", ("--reps", "0"), "--reps must be an integer in [1, 1,000]"),
    bench_case("bench-zero-train", ("--train-examples", "0"), "--train-examples must be an"),
    bench_case("bench-empty-sections", ("--sections", ""), "--sections takes a comma-separated"),
    bench_case("bench-bad-models", ("--models", "1,x"), "--models takes an integer, got 'x'"),
    probe_case("scaling", "scaling-zero-devices", ("--devices", "0"),
               "--devices must be an integer in [1, 64], got 0"),
    probe_case("scaling", "scaling-negative-models", ("--models", "-1"),
               "--models must be an integer in [1, 1,024], got -1"),
    probe_case("scaling", "scaling-repeated-devices", ("--devices", "1,1"),
               "--devices lists 1 more than once"),
    probe_case("grid_probe", "grid-zero-models", ("--models", "0"),
               "--models must be an integer in [1, 600]"),
    probe_case("grid_probe", "grid-huge-models", ("--models", "601"),
               "--models must be an integer in [1, 600]"),
    probe_case("grid_probe", "grid-few-examples", ("--examples", "16"),
               "--examples must be an integer in [32, 48,600]"),
    probe_case("grid_probe", "grid-zero-reps", ("--reps", "0"),
               "--reps must be an integer in [1, 100]"),
    probe_case("grid_probe", "grid-negative-seed", ("--seed", "-1"),
               "--seed must be an integer in [0, 4,294,967,295]"),
    probe_case("grid_probe", "grid-fractional-models", ("--models", "2.5"), "--models"),
    probe_case("cnn_scan_probe", "scan-unknown-loop", ("--loops", "while"),
               "--loops must be one of steps, scan, scan-unroll2, fori"),
    probe_case("cnn_scan_probe", "scan-repeated-loop", ("--loops", "scan,scan"),
               "--loops lists scan more than once; give each once"),
    probe_case("cnn_scan_probe", "scan-zero-steps", ("--steps", "0"),
               "--steps must be an integer in [1, 1,000]"),
    probe_case("cnn_scan_probe", "scan-text-batch", ("--batch-size", "x"),
               "--batch-size takes an integer"),
    probe_case("cnn_scan_probe", "scan-huge-reps", ("--reps", "101"),
               "--reps must be an integer in [1, 100]"),
    probe_case("conv_lowering", "lowering-unknown-network", ("--networks", "resnet"),
               "--networks must be one of"),
    probe_case("conv_lowering", "lowering-repeated-network", ("--networks", "cnn,cnn"),
               "--networks lists cnn more than once; give each once"),
    probe_case("conv_lowering", "lowering-blank-networks", ("--networks", ""),
               "--networks takes a comma-separated list without gaps"),
    probe_case("conv_lowering", "lowering-zero-reps", ("--reps", "0"),
               "--reps must be an integer in [1, 100]"),
    probe_case("conv_lowering", "lowering-negative-seed", ("--seed", "-1"),
               "--seed must be an integer in [0,"),
    probe_case("backward_probe", "backward-zero-reps", ("--reps", "0"),
               "--reps must be an integer in [1, 100]"),
    probe_case("backward_probe", "backward-text-seed", ("--seed", "x"), "--seed"),
    probe_case("backward_probe", "backward-fractional-reps", ("--reps", "1.5"), "--reps"),
    probe_case("vgg_reference", "vggref-small-size", ("--size", "16"),
               "--size must be an integer in [32, 1,024], got 16"),
    probe_case("vgg_reference", "vggref-zero-images", ("--images", "0"),
               "--images must be an integer in [1, 100,000]"),
    probe_case("vgg_reference", "vggref-images-one-batch", ("--images", "64"),
               "--images (64) must exceed --batch-size (64)"),
    probe_case("vgg_reference", "vggref-tpu", ("--torch-device", "tpu"),
               "--torch-device must be one of cpu, cuda, auto"),
    probe_case("vgg_reference", "vggref-blank-weights", ("--weights", " "),
               "--weights must name keras, torch, a file or random: "),
    probe_case("vgg_reference", "vggref-missing-weights", ("--weights", "nope.h5"),
               "weights nope.h5: no such file"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case: Case, tmp_path, fashion_dir, capsys):
    argv = case.argv(tmp_path, fashion_dir)
    existed = (tmp_path / "out").exists()
    rc = case.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert existed or not (tmp_path / "out").exists(), "a refused run left a folder behind"
    assert err.startswith("error: ") and "\n" not in err, err
    assert case.message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "command", ["experiments.theory", "bench.benchmark", "bench.conv_lowering"]
)
def test_a_blank_out_is_refused_not_replaced_by_the_default(command, capsys):
    """Adversarial pass: ``--out ''`` silently wrote into the default folder. argparse's usage
    errors exit through SystemExit(2) with the one line (as for an unknown flag)."""
    import importlib

    module = importlib.import_module(command)
    main = getattr(module, "main", None) or module.cli
    with pytest.raises(SystemExit) as exit_:
        main(["--out", " "])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err, err
    assert err.startswith("error: argument --out: is empty; give a folder"), err


def test_non_finite_data_is_refused(tmp_path, fashion_dir, capsys, monkeypatch):
    import jnn.data

    real = jnn.data.load_splits

    def poisoned(*args, **kwargs):
        s = real(*args, **kwargs)
        x = s.x_train.copy()
        x[3, 5] = np.nan
        return s._replace(x_train=x)

    monkeypatch.setattr(jnn.data, "load_splits", poisoned)
    assert mlp_sweep.main(sweep()(tmp_path, fashion_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert "NaN or inf" in err and "\n" not in err


def test_unknown_flag_exits_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        mlp_sweep.main(["--epochz", "3"])
    assert exc.value.code == 2


SUBPROCESS = [
    "missing-data-dir",
    "unknown-activation",
    "truncated-gz",
    "out-holds-another-run",
    "overwrite-users-folder-with-a-lock",
]


@pytest.mark.parametrize("case_id", SUBPROCESS)
def test_cli_process_exit_code_and_one_line(case_id, tmp_path, fashion_dir):
    case = next(c for c in CASES if c.id == case_id)
    proc = subprocess.run(
        [sys.executable, "-m", case.module, *case.argv(tmp_path, fashion_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert case.message in err


def test_refused_folder_is_left_untouched(tmp_path, fashion_dir):
    argv = another_run(tmp_path, fashion_dir)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert mlp_sweep.main(argv) == 2
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    shutil.rmtree(tmp_path / "out")


def test_overwrite_never_deletes_the_users_files(tmp_path, fashion_dir):
    """--help says --overwrite replaces a folder holding another run: a folder with the user's
    thesis.txt in it was emptied. Now only folders jnn marked as its own are replaced."""
    argv = users_folder("--overwrite")(tmp_path, fashion_dir)
    assert mlp_sweep.main(argv) == 2
    assert (tmp_path / "out" / "thesis.txt").read_text() == "three years of work"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thesis.txt"]


def test_overwrite_replaces_a_jnn_run(tmp_path):
    out = workdir.prepare_run_dir(tmp_path / "out")
    (out / "results.json").write_text("{}")
    workdir.release_run_dirs()
    assert workdir.prepare_run_dir(out, overwrite=True) == out
    assert not (out / "results.json").exists() and (out / workdir.RUN_MARKER).is_file()
    workdir.release_run_dirs()


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    """Two runs on one --out corrupted each other: a lock held by the first refuses the second."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jnn import workdir; "
         f"workdir.prepare_run_dir({str(out)!r}); print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir.RunDirError, match="in use by another running jnn process"):
            workdir.prepare_run_dir(out, resume=True)
    finally:
        holder.kill()
        holder.wait()
    assert workdir.prepare_run_dir(out, resume=True) == out.resolve()  # free once it ended
    workdir.release_run_dirs()


def test_a_refused_run_leaves_no_stub(tmp_path, fashion_dir, capsys):
    """A run refused after its folder was made (here: the data folder is empty) removes the
    folder again when it holds nothing but jnn's own bookkeeping."""
    (tmp_path / "empty").mkdir()
    argv = [*sweep()(tmp_path, fashion_dir)[:-2], "--data-dir", str(tmp_path / "empty")]
    workdir.prepare_run_dir(tmp_path / "out")  # as the sweep does before reading the data
    workdir._CREATED.add((tmp_path / "out").resolve())
    assert mlp_sweep.main(argv) == 2
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_refused(tmp_path, capsys):
    from tests.test_vgg import random_params, write_keras_h5

    params = random_params()
    first = next(iter(params))
    params[first]["kernel"] = np.full_like(params[first]["kernel"], np.nan)
    h5 = write_keras_h5(tmp_path / "my_vgg16_notop.h5", params)  # not the published name
    argv = ["--quick", "--weights", str(h5), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert vgg_transfer.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "NaN/inf" in err and "\n" not in err, err


# ------------------------------------------------------------------ strict flags (issue 19)

STRICT_CASES = [
    probe_case("scaling", "scaling-unknown-platform", ("--devices", "1", "--platform", "foo"),
               "--platform 'foo': 'foo' is not a JAX platform"),
    probe_case("scaling", "scaling-platform-gap", ("--devices", "1", "--platform", "cpu,"),
               "an empty item is not a JAX platform"),
    bench_case("bench-devices-gap", ("--devices", "1,,2"), "list without gaps, got '1,,2'"),
    bench_case("bench-models-trailing-comma", ("--models", "1,4,"), "without gaps, got '1,4,'"),
    bench_case("bench-sections-gap", ("--sections", "ceiling,,vgg"), "list without gaps, got"),
    bench_case("bench-huge-devices", ("--devices", "1,100000"), "--devices must be an integer"),
]  # fmt: skip


@pytest.mark.parametrize("case", STRICT_CASES, ids=[c.id for c in STRICT_CASES])
def test_list_flags_and_platforms_are_parsed_strictly(case: Case, tmp_path, fashion_dir, capsys):
    """`scaling --platform foo` reported status ok with every device count failed, and the
    benchmark ran `--devices 1,,2` as 1,2: bad values are refused (exit 2, one line, no folder)."""
    rc = case.main(case.argv(tmp_path, fashion_dir))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    assert case.message in err, err
    assert not (tmp_path / "out").exists()


def test_a_read_only_cache_dir_names_only_vgg_transfers_flags(tmp_path, capsys, monkeypatch):
    """vgg_transfer has no --resume, yet a read-only --cache-dir was told to "rerun with
    --resume" (the checkpoint library's advice to the sweep)."""
    import errno
    import re

    from jnn import checkpoints, vgg, vgg_weights

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "cache"))

    weights = tmp_path / "my_vgg16_notop.h5"  # a local file, converted then cached
    weights.write_bytes(b"stand-in: the conversion is faked below")
    monkeypatch.setattr(vgg_weights, "load_weight_file", lambda *a, **k: vgg.he_params(1))
    monkeypatch.setattr(checkpoints, "_write_staging", read_only)
    argv = ["--quick", "--weights", str(weights), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert vgg_transfer.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot cache the converted VGG16 weights") and "\n" not in err
    assert "Read-only file system" in err and "--cache-dir" in err, err
    assert "--resume" not in err and "replace=True" not in err, err
    assert set(re.findall(r"--[a-z-]+", err)) == {"--cache-dir"}, err

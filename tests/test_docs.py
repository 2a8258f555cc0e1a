"""The docs site builds with ``mkdocs build --strict`` (every nav page present, every link and
cross-reference resolved, every docstring of the API reference parsed without a warning), and the
code of its pages runs as printed ("Write and check your own layer", the layer protocol, the
multi-host script). This is how CI checks the site."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def python_blocks(page: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown page, in order."""
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    missing = [
        m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
        if importlib.util.find_spec(m) is None
    ]  # fmt: skip
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    site = tmp_path / "site"
    pages = ("backprop", "own-layer", "tutorial", "mlp-study", "reliability", "api/testing")
    for page in (*pages, "proofs/conv"):
        assert (site / page / "index.html").stat().st_size > 1000, page


def run_page(page: str, min_blocks: int) -> dict:
    """Execute a docs page's python blocks in order, in one namespace, as a reader would."""
    namespace: dict = {}
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= min_blocks, f"docs/{page} lost code blocks"
    for block in blocks:
        exec(compile(block, f"docs/{page}", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.mark.slow
def test_own_layer_page_runs_as_printed(capsys):
    """docs/own-layer.md: write two layers, check them with jnn.testing (a broken backward is
    caught), check a model of them against jax.grad and train it."""
    run_page("own-layer.md", min_blocks=4)
    out = capsys.readouterr().out
    assert "Softplus and Affine agree with jax.vjp" in out
    assert "caught: Affine dx" in out
    accuracy = float(re.search(r"train accuracy ([0-9.]+)", out).group(1))
    assert accuracy == 1.0, out


@pytest.mark.slow
def test_tutorial_runs_as_printed(capsys, monkeypatch, tmp_path, fashion_dir):
    """docs/tutorial.md, from the repository root as its text says: a PReLU layer proven against
    jax.vjp, a network of it trained on Fashion-MNIST, saved and loaded back with identical
    predictions, a foreign identity refused, and the shipped study model's test accuracy
    reproduced. Each step asserts in the page; here, that every step ran and said so."""
    import tempfile

    monkeypatch.chdir(REPO)  # the page opens checkpoints/ and results/ by relative path
    monkeypatch.setenv("JNN_DATA_DIR", str(fashion_dir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its checkpoint folder
    run_page("tutorial.md", min_blocks=6)
    out = capsys.readouterr().out
    assert "PReLU agrees with jax.vjp in float32 and float64" in out
    assert float(re.search(r"validation accuracy after 10 epochs: ([0-9.]+)", out).group(1)) > 0.7
    assert "the loaded model predicts the same 1000 labels" in out
    assert "refused: ForeignCheckpointError" in out
    assert "relu/normal/lr0.1/s0 at epoch 100: test accuracy" in out
    saved = list(tmp_path.glob("*/prelu-mlp/10/checksums.json"))
    assert len(saved) == 1, "the page saved its model through the checkpoint store"


TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+(?:::\w+)?)")


def defined_tests(path: Path) -> set[str]:
    """The test functions ``path`` defines: ``name`` at module level, ``Class::name`` in a
    class (parsed, so a ``def test_...`` inside a string does not count)."""
    import ast

    names: set[str] = set()
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, functions):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {f"{node.name}::{n.name}" for n in node.body if isinstance(n, functions)}
    return {name for name in names if name.split("::")[-1].startswith("test_")}


def test_every_test_the_reliability_page_names_exists():
    """docs/reliability.md maps each promise to ``tests/FILE.py::TEST`` references: each file
    must exist and define that test, so renaming or deleting a test breaks this check instead
    of leaving a promise that quotes nothing."""
    refs = TEST_REF.findall((DOCS / "reliability.md").read_text())
    assert len(refs) >= 50, f"only {len(refs)} test references found on the page"
    missing = []
    for file, name in sorted(set(refs)):
        path = REPO / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
        elif name not in defined_tests(path):
            missing.append(f"{file}::{name} (no such test)")
    assert not missing, "docs/reliability.md names tests that do not exist: " + ", ".join(missing)


def test_the_reference_check_catches_a_renamed_test(tmp_path):
    """The parser above finds module-level and class tests, and not a def inside a string."""
    source = tmp_path / "test_x.py"
    source.write_text(
        'OLD = """\ndef test_in_a_string():\n    pass\n"""\n\n\n'
        "def test_real():\n    pass\n\n\n"
        "class TestGroup:\n    def test_method(self):\n        pass\n"
    )
    assert defined_tests(source) == {"test_real", "TestGroup::test_method"}
    text = "`tests/test_x.py::test_real`, `tests/a/test_y.py::TestGroup::test_method`"
    assert TEST_REF.findall(text) == [
        ("tests/test_x.py", "test_real"),
        ("tests/a/test_y.py", "TestGroup::test_method"),
    ]


def test_readme_links_into_the_docs_exist():
    """Every docs/ page the README links to is a page of the site."""
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "the README links into the docs"
    missing = [link for link in links if not (REPO / link).exists()]
    assert not missing, missing
    nav = (REPO / "mkdocs.yml").read_text()
    unlisted = [link for link in links if link.removeprefix("docs/") not in nav]
    assert not unlisted, unlisted


@pytest.mark.slow
def test_layer_protocol_example_runs_and_agrees_with_jax_grad(capsys):
    """docs/layers.md: a CNN's manual grads against jax.grad, then one training epoch."""
    namespace: dict = {}
    block = python_blocks(DOCS / "layers.md")[0]
    exec(compile(block, "docs/layers.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    worst = float(re.search(r"worst rel err ([0-9.e+-]+)", printed).group(1))
    assert worst < 1e-5, printed
    assert bool(namespace["metrics"].params_finite)


@pytest.mark.slow
def test_multi_host_script_runs_as_printed(capsys):
    """docs/scaling.md's train.py, single-host here (initialize_distributed is a no-op)."""
    exec(compile(python_blocks(DOCS / "scaling.md")[0], "docs/scaling.md", "exec"), {})  # noqa: S102
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3
    assert float(lines[-1].rsplit(" ", 1)[1]) > 0.7  # val accuracy after 3 epochs


@pytest.mark.slow
def test_new_experiment_page_runs_as_printed(tmp_path, fashion_dir, capsys, monkeypatch):
    """docs/new-experiment.md: its module, saved as a file, stays under 150 lines, runs with
    --quick on the real data (every optimizer x lr cell trained and reported) and refuses a bad
    flag value in one line with exit 2."""
    (code,) = python_blocks(DOCS / "new-experiment.md")
    assert len(code.splitlines()) <= 150
    path = tmp_path / "optimizers.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("optimizers", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "optimizers", module)  # as `import optimizers` would
    spec.loader.exec_module(module)
    out = tmp_path / "run"
    argv = ["--quick", "--lrs", "0.01,0.1", "--out", str(out), "--data-dir", str(fashion_dir)]
    assert module.main([*argv, "--devices", "1"]) in (0, 3)  # 3: a model diverged, reported
    result = json.loads((out / "results.json").read_text())
    cells = {(m["optimizer"], m["lr"]) for m in result["models"]}
    assert cells == {(o, lr) for o in ("sgd", "momentum", "adam") for lr in (0.01, 0.1)}
    md = (out / "results.md").read_text()
    assert "| momentum | 0.1 |" in md and "| adam | 0.01 |" in md
    assert (out / "loss_overview.png").is_file()
    capsys.readouterr()
    assert module.main(["--optimizer", "sgd,rmsprop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--optimizer" in err, err

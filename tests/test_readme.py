"""The README's commands and code run as printed: CI's .ci/run finds the test command in it, and
the way back from a checkpoint (jnn.runs.load) is executed on a small study run of the same
shape as the main job's, with epoch 100 and the model name as printed. (The longer examples
moved to the docs; tests/test_docs.py runs those.)"""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TEST_COMMAND = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && '
    "python -m pytest -n 2 --dist loadfile"
)


def _python_block(section: str, text: str | None = None) -> str:
    """The first ```python block of the README section titled ``section``."""
    text = README.read_text() if text is None else text
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 5)
    return re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], re.S)[0]


def test_the_two_commands_open_the_readme_and_ci_finds_the_test_command():
    lines = README.read_text().splitlines()
    assert lines[0] == "```" and lines[3] == "```"
    assert lines[1].endswith("pip install -e . && python -m experiments.mlp_sweep")
    assert lines[2] == TEST_COMMAND
    grep = re.search(r"grep -m1 -E '([^']+)' README.md", (REPO / ".ci" / "run").read_text())
    assert grep, ".ci/run reads the test command from the README"
    found = subprocess.run(
        ["grep", "-m1", "-E", grep.group(1), str(README)], capture_output=True, text=True
    )
    assert found.stdout.strip() == TEST_COMMAND


def test_readme_stays_a_five_minute_page():
    assert len(README.read_text().splitlines()) <= 150


@pytest.mark.slow
def test_the_way_back_runs_as_printed(tmp_path, fashion_dir, capsys, monkeypatch):
    """The snippet loads model "relu/normal/lr0.1/s0" at epoch 100 from runs/mlp_sweep and
    scores the run's own test set: here from a small run (tiny subset and width, 100 epochs of
    two batches) in runs/mlp_sweep under a temporary folder; it prints what the run reported."""
    from jnn import study

    snippet = _python_block("The MLP study")
    assert 'runs.load("runs/mlp_sweep", "relu/normal/lr0.1/s0", epoch=100)' in snippet
    mlp_study = (REPO / "docs" / "mlp-study.md").read_text()
    assert snippet in mlp_study, "docs/mlp-study.md shows the same snippet"

    c = study.StudyConfig(
        subset=(64, 32, 200),
        hidden=(16,),
        activations=("relu",),
        epochs=100,
        save_at=(50, 100),
        checkpoint_every=0,
        layout="map",
        devices=1,
        data_dir=str(fashion_dir),
    )
    result = study.run(c, tmp_path / "runs" / "mlp_sweep")
    assert [m.name for m in result.models] == ["relu/normal/lr0.1/s0"]
    reported = float(result.evals[100]["test_accuracy"][0])

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(snippet, "README.md", "exec"), {})  # noqa: S102
    printed = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == pytest.approx(reported, abs=1e-7)

"""bench/gpu_check.sh refuses to start without its output folder or data, and never writes into
an output folder that already holds runs (it removes its own runs/ after packing them)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_check.sh"


def run(*args: str, data_dir: str | None = "x") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JNN_DATA_DIR"}
    if data_dir is not None:
        env["JNN_DATA_DIR"] = data_dir
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True)


def test_needs_an_output_folder_and_the_data():
    r = run()
    assert r.returncode != 0 and "usage: bash bench/gpu_check.sh OUT_DIR" in r.stderr
    r = run("out", data_dir=None)
    assert r.returncode != 0 and "set JNN_DATA_DIR" in r.stderr


def test_refuses_an_output_folder_that_already_has_runs(tmp_path):
    mine = tmp_path / "runs" / "thesis.txt"
    mine.parent.mkdir()
    mine.write_text("not jnn's")
    r = run(str(tmp_path))
    assert r.returncode == 2 and "already exists" in r.stderr
    assert mine.read_text() == "not jnn's" and not (tmp_path / "gpu_check.log").exists()

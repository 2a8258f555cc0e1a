"""bench.cnn_scan_probe end to end in its --quick preset (the CNN step jitted and scanned, both
gradient methods) and its bad input as one line with exit code 2, no folder left."""

from __future__ import annotations

import json

import pytest

from bench import cnn_scan_probe


@pytest.mark.slow
def test_quick_probe_times_each_loop_for_both_gradient_methods(tmp_path):
    out = tmp_path / "probe"
    assert cnn_scan_probe.main(["--quick", "--out", str(out)]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["config"]["loops"] == ["steps", "scan"]
    cases = result["cases"]
    for loop in ("steps", "scan"):
        for gradients in cnn_scan_probe.GRADIENTS:
            assert cases[f"{loop}/{gradients}"]["median_s"] > 0, cases
    assert "| scan/manual |" in (out / "probe.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--loops", "while"], "--loops must be one of steps, scan, scan-unroll2, fori"),
        (["--loops", "scan,scan"], "--loops lists scan more than once; give each once"),
        (["--steps", "0"], "--steps must be an integer in [1, 1,000]"),
        (["--batch-size", "x"], "--batch-size takes an integer"),
        (["--reps", "101"], "--reps must be an integer in [1, 100]"),
    ],
)
def test_bad_input_is_one_line_exit_2(extra, message, tmp_path, capsys):
    out = tmp_path / "probe"
    assert cnn_scan_probe.main([*extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()

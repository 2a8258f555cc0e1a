"""bench.cnn_scan_probe end to end in its --quick preset (the CNN step jitted and scanned, both
gradient methods). Its bad flags are rows of test_cli_errors."""

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

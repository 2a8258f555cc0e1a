"""bench.grid_probe end to end on a tiny grid: every variant timed, every variant's params
equal to the vmapped grid's (same arithmetic). Its bad flags are rows of test_cli_errors."""

from __future__ import annotations

import json

import pytest

from bench import grid_probe


@pytest.mark.slow
def test_tiny_probe_times_every_variant_and_they_agree(tmp_path):
    out = tmp_path / "probe"
    args = ["--quick", "--out", str(out)]  # 3 models, 96 examples, 1 repetition
    assert grid_probe.main(args) == 0
    result = json.loads((out / "probe.json").read_text())
    rows = result["rows"]
    assert set(rows) == {"alone", "vmap", "vmap-shared-order", "map-1", "map-4"}
    assert rows["alone"]["models"] == 1 and rows["vmap"]["models"] == 3
    for name, r in rows.items():
        assert r["median_s"] > 0 and r["model_epochs_per_s"] > 0, name
        if name != "alone":  # 3 SGD steps: only float32 summation order may differ
            assert r["param_diff_vs_vmap"]["max_rel"] < 1e-4, (name, r)
    assert "| vmap-shared-order | 3 |" in (out / "probe.md").read_text()

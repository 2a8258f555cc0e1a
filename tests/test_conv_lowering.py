"""bench.conv_lowering end to end on the CNN: both lowerings of every pass timed, their results
equal to float rounding, auto's pick the rule's. Its bad flags are rows of test_cli_errors."""

from __future__ import annotations

import json

import jax

from bench import conv_lowering
from jnn.layers.conv import auto_passes


def test_cnn_probe_times_both_lowerings_of_every_pass(tmp_path):
    out = tmp_path / "probe"
    assert conv_lowering.main(["--quick", "--out", str(out)]) == 0  # the CNN, one repetition
    result = json.loads((out / "probe.json").read_text())
    rows = result["rows"]
    inputs = sorted({tuple(r["input_shape"]) for r in rows})
    assert inputs == [(14, 14, 32), (28, 28, 1)]  # the CNN's two convolutions
    assert [r["pass"] for r in rows] == list(conv_lowering.PASSES) * 2
    for r in rows:
        assert r["conv_s"] > 0 and r["gemm_s"] > 0, r
        assert r["faster"] == ("conv" if r["conv_s"] <= r["gemm_s"] else "gemm")
        assert r["rel_diff"] < 1e-5, r  # the same sums in another order (float32)
        rule = auto_passes((r["output_shape"][0], r["output_shape"][1]), jax.default_backend())
        assert r["auto"] == dict(zip(conv_lowering.PASSES, rule))[r["pass"]]
    summary = result["summary"]
    assert summary["passes"] == 6 and summary["auto_time_over_best"] >= 1.0
    assert "| cnn 14x14x32 -> 64 (batch 128) | kernel_grad |" in (out / "probe.md").read_text()


def test_vgg_shapes_are_the_distinct_convolutions_of_vgg16():
    shapes = conv_lowering.conv_shapes("vgg")
    assert len(shapes) == 9  # 13 convolutions, 9 distinct (input, kernel) pairs
    assert shapes[0]["input_shape"] == (32, 32, 3) and shapes[-1]["input_shape"] == (2, 2, 512)
    assert {s["batch"] for s in shapes} == {64}

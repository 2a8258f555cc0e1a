"""bench.vgg_reference: the PyTorch VGG16 feature stack holding jnn's weights computes jnn's
features (so the timing compares the same work) and the comparison reports both backends. The
command's bad flags are rows of test_cli_errors."""

import json

import numpy as np
import pytest

from bench import vgg_reference
from jnn import features, vgg

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def params():
    return vgg.he_params(1)


@pytest.mark.parametrize("fmt", ["keras", "torch"])
def test_torch_reference_computes_jnn_features(params, fmt):
    images = vgg_reference.random_images(3, seed=2)
    run, label = vgg_reference.torch_runner(params, 32, fmt)
    ref = run(images).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ours = np.asarray(features.make_extractor(params, fmt, 32)(images))
    assert "torch" in label and "eager on cpu" in label
    assert ref.shape == ours.shape == (3, 1, 1, 512)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_compare_throughput_times_both_backends(params):
    bench = vgg_reference.compare_throughput(params, 32, "keras", n_images=12, batch_size=4, reps=1)
    assert (bench["size"], bench["images"], bench["batch_size"]) == (32, 12, 4)
    for backend in vgg_reference.BACKENDS:
        assert bench[backend]["images_per_s"] > 0 and bench[backend]["reps"] == 1


def test_command_writes_the_comparison(capsys, tmp_path):
    out = tmp_path / "o"
    assert vgg_reference.main(["--quick", "--out", str(out)]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["weights"].startswith("random") and result["config"]["images"] == 96
    assert result["jnn"]["images_per_s"] > 0 and "eager on cpu" in result["torch"]["backend"]
    assert "jnn / PyTorch:" in (out / "probe.md").read_text()

"""bench.vgg_reference: the PyTorch VGG16 feature stack holding jnn's weights computes jnn's
features (so the timing compares the same work), the comparison reports both backends, and the
command's bad flags are one line."""

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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "16"], "--size must be at least 32"),
        (["--images", "0"], "--images must be a positive integer"),
        (["--weights", "nope.h5"], "weights nope.h5: no such file"),
    ],
)
def test_bad_flags_are_one_line(argv, message, capsys):
    assert vgg_reference.cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err

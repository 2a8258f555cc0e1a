"""VGG16: model shapes and input checks, weight conversion from both published file layouts
checked against independent references (PyTorch for torchvision .pth, Keras 3 for the Keras h5),
checks that those comparisons catch a wrong transpose or a missing BGR flip, clear errors for
bad files, the orbax cache / download path, and a smoke run of the transfer experiment.

Weight files hold random weights in the exact published layouts (h5 groups/attrs/dataset names
as Keras writes them; a torchvision ``features.N`` state dict saved with ``torch.save``). They
are written once per session (~59 MB each).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jnn import vgg, vgg_weights
from jnn.vgg_weights import WeightFileError, WeightsUnavailableError

SIZES = (32, 64)
N_IMAGES = 2


# ------------------------------------------------------------------------ weight-file builders


def random_params(seed: int = 0) -> dict:
    """He-normal kernels and small random biases, so features neither vanish nor explode."""
    rng = np.random.default_rng(seed)
    params = {}
    for layer, shapes in vgg.expected_shapes().items():
        k = shapes["kernel"]
        std = np.sqrt(2.0 / (k[0] * k[1] * k[2]))
        params[layer] = {
            "kernel": (rng.standard_normal(k) * std).astype(np.float32),
            "bias": (rng.standard_normal(shapes["bias"]) * 0.1).astype(np.float32),
        }
    return params


def keras_layer_names(skip: tuple[str, ...] = ()) -> list[str]:
    """Layer order in the published notop file: input, then convs and a pool per block."""
    names = ["input_1"]
    for b, n, _ in vgg.BLOCKS:
        names += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    return [n for n in names if n not in skip]


def write_keras_h5(path: Path, params: dict, skip: tuple[str, ...] = (), shapes=None) -> Path:
    """Write ``params`` as Keras 2 ``save_weights`` does (the published notop layout).

    ``shapes`` (layer -> kernel shape) writes that kernel with the given shape, storage
    unallocated (HDF5 allocates contiguous data lazily), to build a wrong-shape file cheaply.
    """
    shapes = shapes or {}
    with h5py.File(path, "w") as f:
        names = keras_layer_names(skip)
        f.attrs["layer_names"] = [n.encode("utf8") for n in names]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in names:
            g = f.create_group(layer)
            if layer not in params:
                g.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            wn = [f"{layer}_W_1:0", f"{layer}_b_1:0"]
            g.attrs["weight_names"] = [w.encode("utf8") for w in wn]
            if layer in shapes:
                g.create_dataset(wn[0], shape=shapes[layer], dtype="float32")
            else:
                g.create_dataset(wn[0], data=params[layer]["kernel"])
            g.create_dataset(wn[1], data=params[layer]["bias"])
    return path


def torch_features_module(torch):
    """torchvision's ``vgg16().features`` indexing, built from torch.nn alone."""
    nn = torch.nn
    layers, cin = [], 3
    for _, n, width in vgg.BLOCKS:
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)

        def forward(self, x):
            return self.features(x)

    return Features()


def torch_state_dict(torch, params: dict) -> OrderedDict:
    """torchvision-layout state dict (OIHW weights) from HWIO params, written independently of
    the converter under test."""
    sd = OrderedDict()
    for layer, idx in vgg_weights.TORCH_FEATURE_INDEX.items():
        k = params[layer]["kernel"]  # (kh, kw, in, out)
        sd[f"features.{idx}.weight"] = torch.from_numpy(np.einsum("hwio->oihw", k).copy())
        sd[f"features.{idx}.bias"] = torch.from_numpy(params[layer]["bias"].copy())
    return sd


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vgg_weights")


@pytest.fixture(scope="session")
def params() -> dict:
    return random_params()


@pytest.fixture(scope="session")
def keras_h5(weights_dir, params) -> Path:
    return write_keras_h5(weights_dir / "random_vgg16_notop.h5", params)


@pytest.fixture(scope="session")
def torch_pth(weights_dir, params) -> Path:
    torch = pytest.importorskip("torch")
    path = weights_dir / "random_vgg16.pth"
    torch.save(torch_state_dict(torch, params), path)
    return path


@pytest.fixture(scope="session")
def images() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(1)
    return {s: rng.integers(0, 256, (N_IMAGES, s, s, 3), dtype=np.uint8) for s in SIZES}


_features = jax.jit(vgg.features)


def rel_err(a, b) -> float:
    """max |a - b| relative to the reference's feature scale (max |b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


TOL = 1e-4


# ------------------------------------------------------------------------------------ model


def test_param_names_and_shapes_match_published_layout():
    shapes = jax.eval_shape(vgg.VGG16().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    p = shapes["params"]
    got = {k: {n: a.shape for n, a in v.items()} for k, v in p.items()}
    assert got == vgg.expected_shapes()
    assert list(p)[:3] == ["block1_conv1", "block1_conv2", "block2_conv1"]
    assert vgg.param_count(p) == 14_714_688  # Keras VGG16(include_top=False).count_params()


@pytest.mark.parametrize("hw,out", [((32, 32), (1, 1)), ((48, 64), (1, 2)), ((50, 70), (1, 2))])
def test_feature_shapes(params, hw, out):
    x = jnp.zeros((1, *hw, 3))
    assert vgg.features(params, x).shape == (1, *out, 512)


def test_block_slices_compose(params, images):
    x = vgg.preprocess(images[64], "keras")
    b4 = vgg.features(params, x, last_block=4)
    assert b4.shape == (N_IMAGES, 4, 4, 512)
    np.testing.assert_allclose(
        vgg.features(params, b4, first_block=5), _features(params, x), rtol=1e-5, atol=1e-3
    )


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (3, 5), (5, 5)])  # im2col x3 (H*W <= 16), lax
def test_conv3x3_small_map_path_matches_lax_conv(hw):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, *hw, 8)).astype(np.float32)
    k = rng.standard_normal((3, 3, 8, 16)).astype(np.float32)
    ref = jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(jax.jit(vgg.conv3x3_same)(x, k), ref, rtol=1e-5, atol=1e-5)


def test_conv_plans_name_each_vgg_layer_and_its_lowering(params):
    """The Flax VGG16's convs go through jnn's Conv2D lowering and say so: at 32x32 on CPU blocks
    1-3 (maps >= 8x8) run the forward as a conv, blocks 4-5 (4x4, 2x2) as im2col + GEMM."""
    from jnn.layers.conv import record_plans

    with record_plans() as log:
        jax.eval_shape(vgg.features, params, jnp.zeros((2, 32, 32, 3)))
    assert [p["layer"] for p in log] == list(vgg.CONV_LAYERS)
    forward = {p["layer"]: p["forward"] for p in log}
    if jax.default_backend() == "cpu":
        assert forward["block3_conv3"] == "conv" and forward["block4_conv1"] == "gemm"
    assert log[-1]["input_shape"] == (2, 2, 512) and log[-1]["patch_bytes"] > 0


@pytest.mark.parametrize(
    "shape,msg",
    [
        ((1, 31, 64, 3), "at least 32x32"),
        ((1, 32, 32, 1), r"\(N, H, W, 3\)"),
        ((32, 32, 3), "NHWC"),
    ],
)
def test_bad_input_shapes_raise_clear_errors(params, shape, msg):
    with pytest.raises(ValueError, match=msg):
        vgg.features(params, jnp.zeros(shape))


def test_top_needs_224_inputs():
    with pytest.raises(ValueError, match="7x7x512"):
        jax.eval_shape(  # the check runs at trace time: no need to compute the whole net
            vgg.VGG16(include_top=True).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))
        )


def test_preprocess_constants_and_input_types(images):
    x = images[32]
    k = np.asarray(vgg.preprocess(x, "keras"))
    np.testing.assert_allclose(k[..., 0], x[..., 2] - 103.939, atol=1e-4)  # B first
    np.testing.assert_allclose(k[..., 2], x[..., 0] - 123.68, atol=1e-4)
    t = np.asarray(vgg.preprocess(x.astype(np.float32), "torch"))
    np.testing.assert_allclose(t[..., 1], (x[..., 1] / 255 - 0.456) / 0.224, atol=1e-5)
    with pytest.raises(ValueError, match="unknown preprocessing"):
        vgg.preprocess(x, "caffe")


def test_gray_to_rgb_resized():
    g = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    out = vgg.gray_to_rgb_resized(g, 64)
    assert out.shape == (2, 64, 64, 3) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    with pytest.raises(ValueError, match="at least 32"):
        vgg.gray_to_rgb_resized(g, 28)


# ------------------------------------------------ conversion vs independent reference models


@pytest.fixture(scope="session")
def torch_reference(torch_pth):
    """PyTorch features on the same .pth, loaded strictly into torch.nn modules."""
    torch = pytest.importorskip("torch")
    model = torch_features_module(torch)
    model.load_state_dict(torch.load(torch_pth, weights_only=True), strict=True)
    model.eval()

    def run(images_uint8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(vgg.TORCH_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(vgg.TORCH_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            return model((x - mean) / std).permute(0, 2, 3, 1).numpy()

    return run


@pytest.mark.parametrize("size", SIZES)
def test_torch_pth_matches_pytorch(torch_pth, torch_reference, images, size):
    params = vgg_weights.load_torch_pth(torch_pth)
    ours = _features(params, vgg.preprocess(images[size], "torch"))
    ref = torch_reference(images[size])
    assert ours.shape == ref.shape == (N_IMAGES, size // 32, size // 32, 512)
    assert rel_err(ours, ref) < TOL


def test_wrong_transpose_would_be_caught(torch_pth, torch_reference, images, monkeypatch):
    monkeypatch.setattr(vgg_weights, "TORCH_KERNEL_PERM", (3, 2, 1, 0))  # swaps kernel H and W
    params = vgg_weights.load_torch_pth(torch_pth)
    ours = _features(params, vgg.preprocess(images[32], "torch"))
    assert rel_err(ours, torch_reference(images[32])) > 0.05


@pytest.fixture(scope="session")
def keras_reference(keras_h5):
    """Keras 3 (JAX backend) VGG16 reading the h5 with its own legacy-h5 loader."""
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        pytest.skip("Keras reference runs on the JAX backend")
    os.environ["KERAS_BACKEND"] = "jax"
    keras = pytest.importorskip("keras")
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    model.load_weights(str(keras_h5))
    preprocess = keras.applications.vgg16.preprocess_input

    def run(images_uint8: np.ndarray) -> np.ndarray:
        x = images_uint8.astype(np.float32)
        return np.asarray(model(preprocess(x.copy()), training=False))

    run.model = model
    return run


@pytest.mark.parametrize("size", SIZES)
def test_keras_h5_matches_keras(keras_h5, keras_reference, images, size):
    params = vgg_weights.load_keras_h5(keras_h5)
    ours = _features(params, vgg.preprocess(images[size], "keras"))
    ref = keras_reference(images[size])
    assert ours.shape == ref.shape == (N_IMAGES, size // 32, size // 32, 512)
    assert rel_err(ours, ref) < TOL


def test_keras_really_loaded_the_file(keras_reference, params):
    k = keras_reference.model.get_layer("block3_conv2").get_weights()[0]
    np.testing.assert_array_equal(k, params["block3_conv2"]["kernel"])


def test_missing_bgr_flip_would_be_caught(keras_h5, keras_reference, images):
    params = vgg_weights.load_keras_h5(keras_h5)
    no_flip = images[32].astype(np.float32) - vgg.CAFFE_BGR_MEAN  # RGB kept, mean still BGR
    assert rel_err(_features(params, no_flip), keras_reference(images[32])) > 0.05


def test_both_formats_give_the_same_params(keras_h5, torch_pth):
    a = vgg_weights.load_keras_h5(keras_h5)
    b = vgg_weights.load_torch_pth(torch_pth)
    for layer in vgg.CONV_LAYERS:
        np.testing.assert_array_equal(a[layer]["kernel"], b[layer]["kernel"])


def test_classifier_nchw_flatten_is_permuted_to_nhwc():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    fmap = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)  # NHWC
    weight = rng.standard_normal((5, 4 * 3 * 3)).astype(np.float32)  # torch Linear (out, C*H*W)
    ref = torch.nn.functional.linear(
        torch.from_numpy(fmap).permute(0, 3, 1, 2).flatten(1), torch.from_numpy(weight)
    ).numpy()
    kernel = vgg_weights.nchw_linear_to_nhwc_kernel(weight, (4, 3, 3))
    np.testing.assert_allclose(fmap.reshape(2, -1) @ kernel, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_real_torchvision_vgg16_with_classifier(tmp_path):
    """Where torchvision is installed (not in CI): its own vgg16, top included, end to end."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    torch.save(model.state_dict(), tmp_path / "vgg16.pth")
    params = vgg_weights.load_torch_pth(tmp_path / "vgg16.pth")
    assert set(params) == set(vgg.expected_shapes(include_top=True))
    x = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    mean = torch.tensor(vgg.TORCH_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(vgg.TORCH_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std)
    with jax.default_matmul_precision("highest"):  # no TF32 where this runs on a GPU
        logits = vgg.VGG16(include_top=True).apply({"params": params}, vgg.preprocess(x, "torch"))
    assert rel_err(logits, ref.numpy()) < TOL


# -------------------------------------------------------------------------- bad-file errors


def test_keras_missing_layer(tmp_path, params):
    path = write_keras_h5(tmp_path / "w.h5", {}, skip=("block3_conv2",))
    with pytest.raises(WeightFileError, match="layer block3_conv2 missing"):
        vgg_weights.load_keras_h5(path)


def test_keras_wrong_shape_names_layer_and_shapes(tmp_path):
    fake = {k: {"bias": np.zeros(s["bias"], np.float32)} for k, s in vgg.expected_shapes().items()}
    shapes = {k: s["kernel"] for k, s in vgg.expected_shapes().items()}
    shapes["block3_conv2"] = (3, 3, 128, 256)
    path = write_keras_h5(tmp_path / "w.h5", fake, shapes=shapes)
    assert path.stat().st_size < 1_000_000  # kernels never written: the check reads no data
    with pytest.raises(WeightFileError) as err:
        vgg_weights.load_keras_h5(path)
    assert str(err.value) == (
        "w.h5: block3_conv2 kernel has shape (3,3,128,256), expected (3,3,256,256)"
    )


@pytest.mark.parametrize("dtype", ["S8", h5py.string_dtype()], ids=["bytes", "vlen-str"])
def test_keras_string_bias_is_one_line(tmp_path, dtype):
    """Issue 19: a weight file whose bias holds strings (right shape) was a numpy traceback
    ("could not convert string to float"); it is one WeightFileError line naming the layer."""
    fake = {k: {"bias": np.zeros(s["bias"], np.float32)} for k, s in vgg.expected_shapes().items()}
    shapes = {k: s["kernel"] for k, s in vgg.expected_shapes().items()}  # kernels never written
    fake["block2_conv1"]["bias"] = np.array(["0.1"] * 128, dtype=object).astype(dtype)
    path = write_keras_h5(tmp_path / "w.h5", fake, shapes=shapes)
    with pytest.raises(WeightFileError) as err:
        vgg_weights.load_keras_h5(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith("w.h5: block2_conv1 bias holds ")
    assert "not numbers" in message


def test_not_an_h5_file(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightFileError, match="not a readable HDF5"):
        vgg_weights.load_keras_h5(tmp_path / "w.h5")


def _shape_only_state_dict():
    sd = {}
    for layer, idx in vgg_weights.TORCH_FEATURE_INDEX.items():
        k = vgg.expected_shapes()[layer]["kernel"]
        sd[f"features.{idx}.weight"] = np.broadcast_to(np.float32(0), (k[3], k[2], 3, 3))
        sd[f"features.{idx}.bias"] = np.zeros(k[3], np.float32)
    return sd


def test_torch_wrong_shape_and_missing_key():
    sd = _shape_only_state_dict()
    sd["features.12.weight"] = np.broadcast_to(np.float32(0), (256, 128, 3, 3))
    del sd["features.28.bias"]
    with pytest.raises(WeightFileError) as err:
        vgg_weights.convert_torch_state_dict(sd)
    assert str(err.value) == (
        "features.12.weight (block3_conv2 kernel) has shape (256,128,3,3), expected (256,256,3,3); "
        "features.28.bias (block5_conv3 bias) is missing"
    )


def test_torch_missing_classifier_when_top_asked():
    with pytest.raises(WeightFileError, match=r"classifier.0.weight \(fc1 kernel\) is missing"):
        vgg_weights.convert_torch_state_dict(_shape_only_state_dict(), include_top=True)


# -------------------------------------------------------------------- cache and download


def test_fetch_converts_once_then_uses_orbax_cache(keras_h5, tmp_path, monkeypatch):
    first = vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    assert not first.from_cache and not first.verified and first.fmt == "keras"

    def no_conversion(*a, **k):
        raise AssertionError("should have come from the cache")

    monkeypatch.setattr(vgg_weights, "load_weight_file", no_conversion)
    second = vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    assert second.from_cache
    for layer in vgg.CONV_LAYERS:
        np.testing.assert_array_equal(second.params[layer]["kernel"], first.params[layer]["kernel"])


def test_offline_without_cache_says_how_to_supply_the_file(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="weights_file=") as err:
        vgg_weights.fetch_pretrained("keras", tmp_path, allow_download=False)
    assert "vgg16_weights_tf" in str(err.value) and "--" not in str(err.value)  # names no flag


def _serve_official(monkeypatch, path: Path, digest: str) -> None:
    official = vgg_weights.OFFICIAL["keras"]
    fake = official._replace(url=path.absolute().as_uri(), hash_value=digest)
    monkeypatch.setitem(vgg_weights.OFFICIAL, "keras", fake)


def test_download_hash_check_convert_and_cache(keras_h5, tmp_path, monkeypatch):
    _serve_official(monkeypatch, keras_h5, vgg_weights.file_digest(keras_h5, "md5"))
    got = vgg_weights.fetch_pretrained("keras", tmp_path, allow_download=True)
    assert (tmp_path / vgg_weights.OFFICIAL["keras"].filename).stat().st_size == (
        keras_h5.stat().st_size
    )
    assert got.verified and not got.from_cache
    assert vgg_weights.fetch_pretrained("keras", tmp_path, allow_download=False).from_cache


def test_download_with_bad_hash_leaves_nothing(keras_h5, tmp_path, monkeypatch):
    _serve_official(monkeypatch, keras_h5, "0" * 32)
    with pytest.raises(WeightFileError, match="fails its hash check"):
        vgg_weights.fetch_pretrained("keras", tmp_path, allow_download=True)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_is_a_clear_error(tmp_path, monkeypatch):
    _serve_official(monkeypatch, tmp_path / "does-not-exist.h5", "0" * 32)
    with pytest.raises(WeightsUnavailableError, match="could not download.*weights_file="):
        vgg_weights.fetch_pretrained("keras", tmp_path / "cache", allow_download=True)


def test_official_name_with_wrong_content_fails_hash(keras_h5, tmp_path):
    bad = tmp_path / vgg_weights.OFFICIAL["keras"].filename
    bad.write_bytes(keras_h5.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match="fails its hash check"):
        vgg_weights.verify_file(bad, "keras")


# ------------------------------------------------------------------------ the experiment


# The experiment's runs (labels, outputs, manual vs autodiff, divergence, the way back):
# tests/test_vgg_transfer.py.


def test_transfer_experiment_offline_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from experiments import vgg_transfer

    monkeypatch.setenv("JNN_OFFLINE", "1")
    argv = ["--weights", "keras", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    assert vgg_transfer.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--weights /path/to/" in err
    assert vgg_transfer.cli(["--weights", str(tmp_path / "nope.h5"), "--out", str(tmp_path)]) == 2


def test_split_is_the_original_vgg_studys_and_subsets_stay_stratified(fashion):
    """vgg_transfer trains on the original VGG16 study's split: 48,000 / 12,000 of the 60,000
    official training images (indices into train+test), stratified; --test-size subsets keep
    the classes balanced."""
    from jnn.data import split_indices, take_stratified

    labels = np.concatenate([fashion.train_labels, fashion.test_labels])
    train, val, test = split_indices(fashion, "original-vgg", seed=0, stratify=True)
    assert (len(train), len(val), len(test)) == (48_000, 0, 12_000)
    assert max(train.max(), test.max()) < 60_000 and not set(train) & set(test)
    assert np.all(np.bincount(labels[test]) == 1_200)
    assert np.all(np.bincount(labels[take_stratified(test, labels, 50)]) == 5)


# ------------------------------------------------------------ the cache verifies its contents


def _only_cache(cache: Path) -> Path:
    (ckpt,) = [p for p in (cache / "converted").iterdir() if p.is_dir()]
    return ckpt


def _flip_4k_in_largest_file(folder: Path) -> None:
    """Invert 4 KiB in the middle of the folder's largest file (an OCDBT data file)."""
    path = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(b ^ 0xFF for b in data[mid : mid + 4096])
    path.write_bytes(bytes(data))


def test_corrupt_cache_is_refused_in_one_line(keras_h5, tmp_path):
    """Orbax restored 4 KiB of flipped bytes silently (the head then scored 0.10)."""
    from jnn.checkpoints import CheckpointError

    vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    ckpt = _only_cache(tmp_path / "cache")
    _flip_4k_in_largest_file(ckpt)
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is unusable.*checksum") as info:
        vgg_weights.restore_params(ckpt)
    assert "\n" not in str(info.value)


def test_corrupt_or_partial_cache_is_rebuilt_from_the_weight_file(keras_h5, tmp_path):
    from jnn.checkpoints import CheckpointWarning

    first = vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    ckpt = _only_cache(tmp_path / "cache")
    _flip_4k_in_largest_file(ckpt)
    with pytest.warns(CheckpointWarning, match="checksum.*rebuilding the converted VGG16"):
        again = vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    assert not again.from_cache
    (ckpt / "checksums.json").unlink()  # as an interrupted older save left it
    with pytest.warns(CheckpointWarning, match="partial.*rebuilding"):
        vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    third = vgg_weights.fetch_pretrained("keras", tmp_path / "cache", weights_file=keras_h5)
    assert third.from_cache
    for layer in vgg.CONV_LAYERS:
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(third.params[layer][name], first.params[layer][name])

"""Shared fixtures: the real Fashion-MNIST files (never downloaded by the tests)."""

import functools
import http.server
import os
import pathlib
import threading

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _jax_compilation_cache() -> None:
    """Compiled programs persist between runs of the suite (JAX's persistent compilation cache,
    in the ignored .pytest_cache/jax): the suite's time is mostly XLA compiles, one per
    function, shape and dtype, and a rerun after an edit recompiles only what the edit changed.
    The key is the program and the backend, so a hit is the same executable. Set through the
    environment so the subprocesses the tests start share it; ``JNN_TEST_JAX_CACHE=0`` turns it
    off (a cold cache is what a fresh clone and CI see)."""
    switch = os.environ.get("JNN_TEST_JAX_CACHE", "1").strip().lower()
    if switch not in {"0", "1", "off", "on", "false", "true", "no", "yes"}:
        raise pytest.UsageError(f"JNN_TEST_JAX_CACHE must be 0 or 1, got {switch!r}")
    if switch in {"0", "off", "false", "no"}:
        return
    settings = {
        "JAX_COMPILATION_CACHE_DIR": str(REPO / ".pytest_cache" / "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }
    for name, value in settings.items():
        os.environ.setdefault(name, value)


_jax_compilation_cache()


def _float32_matmuls() -> None:
    """The suite checks float32 maths at float32 tolerances, so its matmuls and convolutions
    compute in float32 on every backend: on a GPU, JAX's default rounds their operands to TF32
    (an H200 run: the study engine's vmapped program and one model alone ended 6.8e-4 apart in
    the weights, against 2e-6 allowed). Set through the environment before JAX is imported, so
    the subprocesses the tests start compute alike; an explicit JAX_DEFAULT_MATMUL_PRECISION
    wins. No effect on the CPU, which has no TF32."""
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")


_float32_matmuls()

# The `slow` tests of modules that do not mark them themselves (docs/contributing.md, "Test
# tiers"): modules other work owns, and single parametrizations. Node id -> why it is slow
# (seconds: one busy 2-core machine, 2026-12). A file::function id marks every parametrization, a
# file::function[param] id that one. Applied below before `-m` selects; a listed test that is
# gone from its module stops the run, so the list cannot go stale.
SLOW: dict[str, str] = {
    "tests/test_cnn.py::test_quick_run_end_to_end": "trains the CNN study end to end (13 s)",
    "tests/test_vgg_transfer.py::test_manual_and_autodiff_runs_agree": "two tiny VGG runs (14 s)",
    "tests/test_vgg_transfer.py::test_run_outputs_are_labelled_random": "the tiny VGG runs",
    "tests/test_vgg_transfer.py::test_way_back_reproduces_the_reported_accuracy": "the tiny runs",
    "tests/test_vgg_transfer.py::test_a_runs_config_reruns_it": "the tiny VGG runs, and a rerun",
    "tests/test_vgg_transfer.py::test_divergence_exits_3_with_the_last_good_epoch": "a whole run",
    "tests/test_mlp_sweep.py::test_quick_run_writes_every_output": "the quick sweep (36 s)",
    "tests/test_mlp_sweep.py::test_reported_accuracy_is_the_restored_checkpoints": "quick sweep",
    "tests/test_mlp_sweep.py::test_interrupted_run_resumes_bit_identically": "two sweeps (20 s)",
    "tests/test_mlp_sweep.py::test_resume_with_another_config_names_the_flag": "the quick sweep",
    "tests/test_mlp_sweep.py::test_divergence_is_recorded_and_others_go_on": "a sweep (12 s)",
    "tests/test_mlp_sweep.py::test_config_file_reruns_a_run_exactly": "the quick sweep, rerun",
    "tests/test_mlp_sweep.py::test_sweep_downloads_its_data_on_first_use": "a sweep (15 s)",
    "tests/test_core.py::test_study_mlp_manual_grads_equal_jax_grad": "the study MLP (8-10 s)",
    "tests/test_vgg_parallel.py::test_head_data_parallel_matches_one_device": "4 devices (10 s)",
    "tests/test_vgg.py::test_keras_h5_matches_keras": "imports Keras, builds its VGG16 (12-14 s)",
    "tests/test_vgg.py::test_keras_really_loaded_the_file": "the Keras VGG16 (see above)",
    "tests/test_vgg.py::test_missing_bgr_flip_would_be_caught": "the Keras VGG16 (see above)",
    "tests/test_models.py::test_manual_grads_equal_jax_grad[cnn-f64]": "the CNN in float64 (10 s)",
    "tests/test_models.py::test_manual_grads_equal_jax_grad[cnn-f32]": "the CNN (6 s)",
    "tests/test_models.py::test_manual_grads_equal_jax_grad[bn_cnn-f64]": "BN CNN, float64 (7 s)",
    "tests/test_models.py::test_manual_grads_equal_jax_grad[bn_cnn-f32]": "the BN CNN (6 s)",
    "tests/test_models.py::test_eval_mode_grads_equal_jax_grad[bn_cnn-1]": "the BN CNN (6-14 s)",
    "tests/test_chunked_eval.py::test_stacked_chunked_equals_one_pass_and_the_study_engine": "9 s",
    "tests/test_chunked_eval.py::test_a_conv_net_chunked_equals_one_pass": "7 s",
    "tests/test_mlp.py::ManualEqualsAutodiff::test_random_shapes_and_values__with_jit": "9 s",
    "tests/test_mlp.py::ManualEqualsAutodiff::test_random_shapes_and_values__without_jit": "5 s",
    "tests/test_cli_errors.py::test_cli_process_exit_code_and_one_line": "a process each (4 s)",
}


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    """Mark the tests ``SLOW`` lists `slow`; refuse a listed test that no longer exists."""
    modules = {
        item.nodeid.split("::")[0]: item.module for item in items if getattr(item, "module", None)
    }
    ids = {item.nodeid for item in items}
    for node_id in SLOW:
        path, *names = node_id.split("[")[0].split("::")
        gone = path in modules and _lookup(modules[path], names) is None
        base = node_id.split("[")[0]
        whole = not any("::" in arg for arg in config.args)  # no single test picked by id
        if "[" in node_id and whole and any(i.startswith(f"{base}[") for i in ids):
            gone = gone or node_id not in ids  # the function is there, that parametrization not
        if gone:
            raise pytest.UsageError(f"tests/conftest.py SLOW lists {node_id}, which is gone")
    for item in items:
        if item.nodeid in SLOW or item.nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)


def _lookup(module, names):
    """``module.a.b`` for names ``[a, b]`` (a test function, or a class then its method)."""
    obj = module
    for name in names:
        obj = getattr(obj, name, None)
    return obj


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """Tests never reach the real mirrors: a download goes to a closed port on 127.0.0.1 (refused
    at once, like offline) unless a test serves files itself (the ``mirror`` fixture)."""
    import dataclasses

    from jnn import data

    monkeypatch.setattr(data, "MIRRORS", ("http://127.0.0.1:9/",))
    for name, entry in list(data.DATASETS.items()):
        closed = dataclasses.replace(entry, mirrors=("http://127.0.0.1:9/",))
        monkeypatch.setitem(data.DATASETS, name, closed)


@pytest.fixture(scope="session")
def fashion_dir() -> pathlib.Path:
    """Folder with the four official .gz files: $JNN_DATA_DIR, else <repo>/../shared/data/..."""
    from jnn.data import FILES

    env = os.environ.get("JNN_DATA_DIR")
    folder = pathlib.Path(env) if env else REPO.parent / "shared" / "data" / "fashion-mnist"
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        pytest.skip(f"Fashion-MNIST files {missing} not in {folder}; set JNN_DATA_DIR")
    return folder


@pytest.fixture(scope="session")
def fashion(fashion_dir):
    """The real dataset as a jnn.data.FashionMNIST (uint8 images, int32 labels), loaded once."""
    from jnn.data import load_fashion_mnist

    return load_fashion_mnist(fashion_dir, download=False)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def mirror(tmp_path, fashion_dir):
    """A local HTTP server on 127.0.0.1: /good/ serves the real files, /bad/ corrupted ones."""
    from jnn.data import FILES, TEST_LABELS

    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    (root / "empty").mkdir()
    for name in FILES:
        (root / "good" / name).symlink_to(fashion_dir / name)
    labels = (fashion_dir / TEST_LABELS).read_bytes()
    flipped = labels[:100] + bytes([labels[100] ^ 0xFF]) + labels[101:]
    (root / "bad" / TEST_LABELS).write_bytes(flipped)
    (root / "bad" / "short" / TEST_LABELS).parent.mkdir()
    (root / "bad" / "short" / TEST_LABELS).write_bytes(labels[:-1])
    (root / "bad" / "long" / TEST_LABELS).parent.mkdir()
    (root / "bad" / "long" / TEST_LABELS).write_bytes(labels + b"\x00")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()

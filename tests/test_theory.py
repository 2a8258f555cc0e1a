"""Issue 6: the theory answers. jnn.theory's CE/KL checks (and the identities behind them, with
jnn.losses); Flax conv costing (jnn.conv_cost); the experiments.theory command that renders both."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from experiments import theory
from jnn import losses, workdir
from jnn import theory as jtheory
from jnn.bottleneck import NETWORKS
from jnn.conv_cost import conv_layer_costs, count_params, numpy_init, xla_flops
from jnn.errors import InputError

DTYPES = ("float32", "float64")
TOL = {"float32": 1e-6, "float64": 1e-12}

# ----------------------------------------------------------------------------- Q1: CE vs KL


def _rows(x: np.ndarray) -> np.ndarray:
    return x / x.sum(axis=-1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(
    p=hnp.arrays(np.float64, (4, 6), elements=st.floats(0.0, 1.0)),
    q=hnp.arrays(np.float64, (4, 6), elements=st.floats(1e-3, 1.0)),
)
def test_ce_is_entropy_plus_kl_for_any_distributions(p: np.ndarray, q: np.ndarray) -> None:
    """H(P,Q) = H(P) + KL(P||Q) row by row, P with arbitrary zeros, Q > 0 (float32 here)."""
    p[:, 0] += 1e-3  # no all-zero row
    p, q = jnp.asarray(_rows(p), jnp.float32), jnp.asarray(_rows(q), jnp.float32)
    ce = losses.cross_entropy_rows(p, q)
    both = losses.entropy(p) + losses.kl_divergence(p, q)
    np.testing.assert_allclose(ce, both, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(losses.kl_divergence(p, q)) >= -1e-6)  # Gibbs' inequality


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_on_random_distributions(dtype: str) -> None:
    @jax.jit
    def compute(p, q):
        ce = losses.cross_entropy_rows(p, q)
        return ce, losses.entropy(p) + losses.kl_divergence(p, q), losses.cross_entropy(q, p)

    x = jtheory.q1_inputs(seed=1, rows=128, classes=10)
    p, q = x["p"].astype(dtype), x["q"].astype(dtype)
    with jax.enable_x64(dtype == "float64"):
        ce, both, batch_mean = jax.device_get(compute(p, q))
    assert ce.dtype == dtype
    assert p.dtype == dtype and np.any(p == 0) and np.all(q > 0)
    np.testing.assert_allclose(ce, both, rtol=TOL[dtype], atol=TOL[dtype])
    # jnn's batch-mean loss is the mean of the per-row cross-entropies
    np.testing.assert_allclose(batch_mean, np.mean(ce), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_hot_cross_entropy_is_exactly_kl(dtype: str) -> None:
    @jax.jit
    def compute(labels, logits):
        p = losses.one_hot(labels, 10, dtype=logits.dtype)
        q = jax.nn.softmax(logits)
        fused, _ = losses.softmax_cross_entropy(logits, p)  # via log-softmax, not log(softmax)
        return losses.entropy(p), losses.cross_entropy_rows(p, q), losses.kl_divergence(p, q), fused

    with jax.enable_x64(dtype == "float64"):
        x = jtheory.q1_inputs(seed=2, rows=64, classes=10)
        h, ce, kl, fused = jax.device_get(compute(x["labels"], x["logits"].astype(dtype)))
    assert kl.dtype == dtype
    assert np.all(h == 0.0)  # H(one-hot) = 0 exactly
    np.testing.assert_array_equal(ce, kl)  # bit-exact
    np.testing.assert_allclose(fused, np.mean(kl), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_smoothed_labels_constant_gap_and_equal_gradients(dtype: str) -> None:
    eps, classes = 0.1, 10

    @jax.jit
    def compute(labels, z0):
        onehot = losses.one_hot(labels, classes, dtype=z0.dtype)
        smooth = (1 - eps) * onehot + eps / classes

        def ce(z):
            return losses.softmax_cross_entropy(z, smooth)[0]

        def kl(z):
            return jnp.mean(losses.kl_divergence(smooth, jax.nn.softmax(z)))

        zs = (z0, 0.1 * z0, z0 + 1.0, -z0)
        ces, kls = jnp.stack([ce(z) for z in zs]), jnp.stack([kl(z) for z in zs])
        return jnp.mean(losses.entropy(smooth)), ces, kls, jax.grad(ce)(z0), jax.grad(kl)(z0)

    with jax.enable_x64(dtype == "float64"):
        x = jtheory.q1_inputs(seed=3, rows=32, classes=classes)
        h, ces, kls, g_ce, g_kl = jax.device_get(compute(x["labels"], x["logits"].astype(dtype)))
    assert float(h) > 0.4  # a real, non-zero gap
    # the gap is H(P) whatever the logits
    np.testing.assert_allclose(ces, kls + h, rtol=TOL[dtype], atol=TOL[dtype])
    assert g_ce.dtype == dtype
    scale = np.max(np.abs(g_ce))
    np.testing.assert_allclose(g_ce, g_kl, rtol=0, atol=TOL[dtype] * scale)


def test_assumptions_zero_terms_and_support() -> None:
    """0 log 0 = 0 and 0 log q = 0; Q = 0 where P > 0 makes CE and KL infinite."""
    p = jnp.array([[0.5, 0.5, 0.0]])
    q_ok = jnp.array([[0.25, 0.75, 0.0]])  # q = 0 only where p = 0: fine
    assert np.isfinite(losses.kl_divergence(p, q_ok)).all()
    np.testing.assert_allclose(
        losses.cross_entropy_rows(p, q_ok), losses.entropy(p) + losses.kl_divergence(p, q_ok)
    )
    q_bad = jnp.array([[1.0, 0.0, 0.0]])  # q = 0 where p > 0: both infinite
    assert np.isinf(losses.kl_divergence(p, q_bad)).all()
    assert np.isinf(losses.cross_entropy_rows(p, q_bad)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_kl_checks_report_within_tolerance(dtype: str) -> None:
    """What the CLI prints: every deviation within the stated tolerance, exact ones exactly 0."""
    assert jtheory.TOLERANCE == TOL
    got = jtheory.ce_kl_checks(0, dtype)
    for key in ("onehot_entropy", "onehot_ce_minus_kl", "random_batch_mean"):
        assert got[key] == 0.0, key
    assert set(jtheory.CHECKS) <= set(got)
    assert set(jtheory.DEVIATIONS) == set(jtheory.CHECKS) - {"smoothed_mean_entropy"}
    for key in jtheory.DEVIATIONS:
        assert 0.0 <= got[key] <= TOL[dtype], (key, got[key])
    h = got["smoothed_mean_entropy"]  # -(0.91 log 0.91 + 9 * 0.01 log 0.01)
    expected = -(0.91 * np.log(0.91) + 9 * 0.01 * np.log(0.01))
    assert h == pytest.approx(expected, rel={"float32": 1e-5, "float64": 1e-12}[dtype])
    np.testing.assert_allclose(got["smoothed_gaps"], h, atol=10 * TOL[dtype])


def test_q1_inputs_shapes_zeros_and_seed() -> None:
    x = jtheory.q1_inputs(seed=5, rows=7, classes=3)
    assert {k: v.shape for k, v in x.items()} == dict.fromkeys(
        ("p", "q", "logits", "shift"), (7, 3)
    ) | {"labels": (7,)}
    np.testing.assert_allclose(x["p"].sum(-1), 1.0)
    np.testing.assert_allclose(x["q"].sum(-1), 1.0)
    assert np.all(x["p"][:, 0] > 0) and np.all(x["q"] > 0) and x["labels"].max() < 3
    np.testing.assert_array_equal(jtheory.q1_inputs(5, 7, 3)["p"], x["p"])  # seeded
    assert not np.array_equal(jtheory.q1_inputs(6, 7, 3)["p"], x["p"])


def test_smoothing_sets_the_gap() -> None:
    """The CE - KL gap is H(smoothed one-hot), which grows with eps (float64, so exact to 1e-12)."""
    got = {eps: jtheory.ce_kl_checks(1, "float64", 16, 4, eps) for eps in (0.05, 0.3)}
    for eps, checks in got.items():
        high, low = 1 - eps + eps / 4, eps / 4
        expected = -(high * np.log(high) + 3 * low * np.log(low))
        assert checks["smoothed_mean_entropy"] == pytest.approx(expected, rel=1e-12)
    assert got[0.3]["smoothed_mean_entropy"] > got[0.05]["smoothed_mean_entropy"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "float16"}, "dtype must be one of float32, float64"),
        ({"eps": 1.0}, r"eps \(label smoothing\) must be a float in \(0, 1\)"),
        ({"eps": 0}, "eps"),
        ({"rows": 0}, "rows must be an integer >= 1"),
        ({"classes": 1}, "classes must be an integer >= 2"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"rows": 2.5}, "rows must be an integer"),
        ({"classes": True}, "classes must be an integer"),
    ],
)
def test_ce_kl_checks_refuse_bad_inputs(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        jtheory.ce_kl_checks(**kwargs)


def test_q1_inputs_refuse_bad_sizes() -> None:
    with pytest.raises(InputError, match="classes must be an integer >= 2"):
        jtheory.q1_inputs(0, 4, 1)


# --------------------------------------------------------------------- Q2: bottleneck cost

# The Q2 networks themselves and their measurement (counts, padding-free MACs, XLA's FLOPs, the
# same function as Flax's nn.Conv, bottleneck_costs) are tested in tests/test_bottleneck.py; here
# the general Flax conv costing of jnn.conv_cost.

# XLA's cost model is backend-specific; the exact relation below is the CPU one, so the tests that
# depend on it compile for the CPU even where an accelerator is the default device.
ON_CPU = jax.default_device(jax.devices("cpu")[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strides": 2},
        {"kernel_dilation": 2},
        {"feature_group_count": 4},
        {"padding": "VALID"},
        {"padding": ((1, 0), (2, 3))},
        {"padding": 3, "strides": (2, 3), "use_bias": False},
    ],
    ids=["stride", "dilation", "groups", "valid", "explicit", "int-pad-nobias"],
)
def test_padding_free_mac_count_matches_xla_for_general_convs(kwargs: dict) -> None:
    conv = nn.Conv(8, (3, 5), **{"padding": "SAME", **kwargs})
    x = jnp.ones((1, 13, 11, 16))
    variables = numpy_init(conv, x)
    y, (cost,) = conv_layer_costs(conv, variables, x)
    assert cost.output_shape == y.shape[1:]
    assert cost.params == count_params(variables["params"])
    with ON_CPU:
        flops = xla_flops(lambda v, x: conv.apply(v, x), jax.device_get(variables), np.asarray(x))
    assert flops == 2 * cost.valid_macs + cost.bias_adds
    if kwargs.get("padding") == "VALID":
        assert cost.valid_macs == cost.macs


def test_unmodelled_padding_gives_no_valid_count() -> None:
    conv = nn.Conv(4, (3, 3), padding="CIRCULAR")
    x = jnp.ones((1, 8, 8, 2))
    _, (cost,) = conv_layer_costs(conv, numpy_init(conv, x), x)
    assert cost.valid_macs is None and cost.macs == 8 * 8 * 4 * 3 * 3 * 2


def test_xla_flops_accepts_list_or_dict(monkeypatch) -> None:
    """Older JAX returns a list of per-computation dicts from cost_analysis()."""
    monkeypatch.setattr(
        jax.stages.Compiled, "cost_analysis", lambda self: [{"flops": 3.0}, {"flops": 4.0}]
    )
    assert xla_flops(jnp.sin, jnp.ones(3)) == 7.0
    monkeypatch.setattr(jax.stages.Compiled, "cost_analysis", lambda self: {"flops": 5.0})
    assert xla_flops(jnp.sin, jnp.ones(3)) == 5.0


# ----------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_writes_theory_md_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "theory"
    with ON_CPU:
        assert theory.cli(["--out", str(out), "--batch", "1", "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    md = (out / "theory.md").read_text()
    for text in (printed, md):
        for number in ("153,632", "15,920", "120,422,400", "12,443,648", "28x28x32", "9.68x"):
            assert number in text, number
    assert "H(P,Q) = H(P) + KL(P||Q)" in md and "0 log 0 = 0" in md
    data = json.loads((out / "theory.json").read_text())
    n1, n2 = (data["q2"]["networks"][k] for k in NETWORKS)
    assert (n1["params"], n2["params"]) == (153_632, 15_920)
    assert (n1["macs"], n2["macs"]) == (120_422_400, 12_443_648)
    assert n1["output_shape"] == n2["output_shape"] == [28, 28, 32]
    assert n1["batch_output_shape"] == [1, 28, 28, 32]
    assert n1["xla_flops_is_2valid_macs_plus_bias"] and n2["xla_flops_is_2valid_macs_plus_bias"]
    assert data["q2"]["ratio_network1_over_network2"]["forward_median_s"] > 0
    assert data["q1"]["float32"]["onehot_ce_minus_kl"] == 0.0


def test_out_folder_reuse_and_refusal(tmp_path) -> None:
    out = tmp_path / "theory"
    assert not theory.regenerable(str(out), overwrite=False)  # new
    out.mkdir()
    for name in theory.OUTPUT_FILES:
        (out / name).write_text("old")
    assert theory.regenerable(str(out), overwrite=False)  # only our files: regenerated in place
    (out / "results.json").write_text("{}")  # someone else's run
    with pytest.raises(workdir.RunDirError, match="--overwrite"):
        theory.regenerable(str(out), overwrite=False)
    assert theory.cli(["--out", str(out)]) == 2  # one-line error, no traceback
    assert not theory.regenerable(str(out), overwrite=True)
    inv = theory.parse(["--out", str(out), "--overwrite"])
    assert (inv.overwrite, inv.resume, inv.out) == (True, False, str(out))
    assert theory.parse([]).out == "runs/theory"


def test_cli_rejects_bad_arguments(tmp_path) -> None:
    assert theory.cli(["--out", str(tmp_path / "x"), "--smoothing", "1.5"]) == 2
    assert theory.cli(["--out", str(tmp_path / "x"), "--batch", "0"]) == 2


def test_markdown_claims_the_exact_xla_relation_only_when_it_holds() -> None:
    net = {"xla_flops": 10.0, "xla_flops_over_2macs": 0.5, "valid_macs": 4, "bias_adds": 2}
    held = theory._xla_sentence(*(dict(net, xla_flops_is_2valid_macs_plus_bias=True),) * 2, "cpu")
    assert "FLOPs = 2 * MACs_without_padding + bias adds, exactly" in held
    off = theory._xla_sentence(*(dict(net, xla_flops_is_2valid_macs_plus_bias=False),) * 2, "gpu")
    assert "*not*" in off and "FLOPs = 2" not in off

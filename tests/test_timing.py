"""``jnn.timing``: the summary of samples, the interleaving order, the calibration and the input
checks. No test compares a measured time to a threshold: the cases record what they were asked to
run, and the statistics are checked on given samples."""

from __future__ import annotations

import pytest

from jnn import timing
from jnn.errors import InputError


def test_summarize_known_samples():
    s = timing.summarize([0.3, 0.1, 0.4, 0.2, 5.0])
    assert s["median_s"] == pytest.approx(0.3)  # the slow outlier does not move it
    assert (s["min_s"], s["max_s"], s["reps"]) == (0.1, 5.0, 5)
    assert s["samples_s"] == [0.3, 0.1, 0.4, 0.2, 5.0]
    assert timing.summarize([2.0, 1.0])["median_s"] == pytest.approx(1.5)


@pytest.mark.parametrize(
    ("samples", "words"),
    [([], "no samples"), ([1.0, float("nan")], "finite"), (["fast"], "numbers of seconds")],
)
def test_summarize_refuses_bad_samples_in_one_line(samples, words):
    with pytest.raises(InputError, match=words) as err:
        timing.summarize(samples)
    assert "\n" not in str(err.value)


def test_cases_run_interleaved_warmup_first():
    log: list[tuple[str, int]] = []

    def case(name):
        return lambda calls: log.append((name, calls))

    out = timing.time_interleaved({"a": case("a"), "b": case("b")}, reps=3, warmup=2)
    # two untimed rounds, then three timed rounds, each round a then b (never a, a, a, b, b, b)
    assert log == [("a", 1), ("b", 1)] * 5
    assert set(out) == {"a", "b"}
    for r in out.values():
        assert r["reps"] == 3 and len(r["samples_s"]) == 3 and r["calls_per_sample"] == 1
        assert r["min_s"] <= r["median_s"] <= r["max_s"]


def test_calibration_runs_several_calls_per_sample():
    calls_seen: list[int] = []
    out = timing.time_interleaved({"tiny": calls_seen.append}, reps=2, warmup=0, min_sample_s=1.0)
    n = out["tiny"]["calls_per_sample"]
    # a no-op takes far less than 1 s, so the calibration asks for the cap of 1000 calls
    assert n == 1000 and calls_seen == [1, n, n]


def test_repeated_runs_the_function_calls_times():
    count = []
    timing.repeated(lambda: count.append(1))(4)
    assert len(count) == 4


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"cases": {}}, "no cases"),
        ({"cases": {"a": 3}}, "not callable"),
        ({"reps": 0}, "reps must be an integer >= 1"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
        ({"min_sample_s": -0.5}, "min_sample_s"),
    ],
)
def test_time_interleaved_refuses_bad_input_in_one_line(kwargs, words):
    args = {"cases": {"a": lambda calls: None}, "reps": 1, "warmup": 0} | kwargs
    with pytest.raises(InputError, match=words) as err:
        timing.time_interleaved(**args)
    assert "\n" not in str(err.value)


def test_median_ratio_skips_the_compiling_sample():
    assert timing.median_ratio([10.0, 2.0, 4.0], [10.0, 1.0, 1.0]) == pytest.approx(3.0)
    assert timing.median_ratio([10.0, 2.0, 4.0], [10.0, 1.0], skip_first=False) == pytest.approx(
        6.0 / 5.5
    )
    assert timing.median_ratio([], [1.0]) is None


def test_the_ratio_is_refused_when_only_compiling_samples_are_left():
    """Epoch 1 is mostly compilation: with one sample of either there is no honest ratio (a CNN
    10 + 1 epoch run once reported 2.137x from the two compiling epochs)."""
    assert timing.median_ratio([280.0, 45.0, 46.0], [131.0]) is None
    assert timing.median_ratio([280.0], [131.0, 90.0]) is None
    assert timing.median_ratio([280.0, 45.0, 47.0], [131.0, 90.0, 94.0]) == pytest.approx(46 / 92)
    assert timing.median_ratio([280.0], [131.0], skip_first=False) == pytest.approx(280 / 131)


def test_compile_timed_refuses_a_plain_function():
    with pytest.raises(InputError, match="jax.jit"):
        timing.compile_timed(lambda x: x, 1.0)


def test_stopwatch_is_the_time_between_enter_and_exit(monkeypatch):
    monkeypatch.setattr(timing.time, "perf_counter", iter([1.0, 3.5]).__next__)
    with timing.Stopwatch() as sw:
        pass
    assert sw.s == 2.5

"""Timing on shared, noisy machines: interleaved repetitions, medians, compile time.

A machine shared with other work drifts in speed over seconds (other processes, frequency
scaling, thermal limits), so comparing case A timed now with case B timed a minute later
measures the drift as much as the cases. Every comparison is therefore a ratio of cases measured
side by side: :func:`time_interleaved` runs one round of every case in turn, ``reps`` times, and
reports the median (robust to the odd slow round) plus min, max and the raw samples per case.

Used by the benchmark sections (``bench/``), the CNN's manual/autodiff epoch ratio, the grid's
one-model reference and the VGG16 feature throughput. Plain Python: importing it loads no JAX.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jnn.errors import InputError

__all__ = [
    "Stopwatch",
    "compile_timed",
    "median_ratio",
    "repeated",
    "summarize",
    "time_interleaved",
]


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max, count and the raw samples of ``samples`` (seconds, one per repetition).

    Returns ``{"median_s", "min_s", "max_s", "reps", "samples_s"}``. The median, not the mean,
    is the figure to compare: one round slowed by another process moves the mean, not the median.
    """
    try:
        values = [float(v) for v in samples]
    except (TypeError, ValueError):
        raise InputError(
            f"summarize: samples must be numbers of seconds, got {samples!r}"
        ) from None
    if not values:
        raise InputError("summarize: no samples; time at least one repetition (reps >= 1)")
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"summarize: samples must be finite seconds, got {values!r}")
    return {
        "median_s": statistics.median(values),
        "min_s": min(values),
        "max_s": max(values),
        "reps": len(values),
        "samples_s": values,
    }


def repeated(fn: Callable[[], Any]) -> Callable[[int], None]:
    """Turn a blocking one-shot case ``fn()`` into ``case(calls)`` that runs it ``calls`` times,
    the form :func:`time_interleaved` takes."""
    if not callable(fn):
        raise InputError(f"repeated: expected a function of no arguments, got {type(fn).__name__}")

    def run(calls: int) -> None:
        for _ in range(calls):
            fn()

    return run


def _check_interleaved(
    cases: Mapping[str, Callable[[int], Any]], reps: int, warmup: int, min_sample_s: float
) -> None:
    if not cases:
        raise InputError("time_interleaved: no cases; pass {name: case(calls)} with at least one")
    bad = [name for name, fn in cases.items() if not callable(fn)]
    if bad:
        raise InputError(f"time_interleaved: cases {bad} are not callable; pass case(calls)")
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise InputError(f"time_interleaved: reps must be an integer >= 1, got {reps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"time_interleaved: warmup must be an integer >= 0, got {warmup!r}")
    if not (isinstance(min_sample_s, (int, float)) and 0 <= min_sample_s < math.inf):
        raise InputError(f"time_interleaved: min_sample_s must be >= 0 s, got {min_sample_s!r}")


def _calibrate(cases: Mapping[str, Callable[[int], Any]], min_sample_s: float) -> dict[str, int]:
    """Calls per sample so that one timed sample of each case lasts about ``min_sample_s``
    (1 to 1000; 1 when ``min_sample_s`` is 0)."""
    calls = dict.fromkeys(cases, 1)
    if min_sample_s > 0:
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(1)
            once = max(time.perf_counter() - start, 1e-7)
            calls[name] = int(min(1000, max(1, math.ceil(min_sample_s / once))))
    return calls


def time_interleaved(
    cases: Mapping[str, Callable[[int], Any]], reps: int, warmup: int, min_sample_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Run ``warmup`` untimed rounds, then ``reps`` timed rounds of every case in turn.

    ``case(calls)`` runs its work ``calls`` times and blocks until all of it is done (for JAX,
    ``block_until_ready``). With ``min_sample_s`` > 0 each case is first calibrated so that one
    timed sample lasts about that long (short GPU kernels would otherwise time the launch);
    samples are divided by the calls. The garbage collector runs before each round, not inside
    one. Returns :func:`summarize` per case, in seconds per call, plus ``calls_per_sample``.
    """
    _check_interleaved(cases, reps, warmup, min_sample_s)
    for _ in range(warmup):
        for fn in cases.values():
            fn(1)
    calls = _calibrate(cases, min_sample_s)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        gc.collect()
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(calls[name])
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: summarize(s) | {"calls_per_sample": calls[name]} for name, s in samples.items()}


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
    """AOT-compile ``jitted`` (a ``jax.jit`` function) for ``args``: (compiled function,
    lower + compile seconds). Timing the compiled function afterwards never includes tracing."""
    if not hasattr(jitted, "lower"):
        raise InputError(
            f"compile_timed: expected a jax.jit function (with .lower), got {type(jitted).__name__}"
        )
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def median_ratio(
    a_s: Sequence[float], b_s: Sequence[float], *, skip_first: bool = True
) -> float | None:
    """Median of ``a_s`` over median of ``b_s`` on the samples both have (the first ``n`` of
    each, ``n`` the shorter length); the first (compiling) sample is dropped when ``skip_first``.
    None when nothing is left to compare: either is empty, or ``skip_first`` and either has one
    sample only (a ratio of compiling samples is mostly compile time, never a step time)."""
    first = 1 if skip_first else 0
    n = min(len(a_s), len(b_s))
    if n <= first:
        return None
    return statistics.median(a_s[first:n]) / statistics.median(b_s[first:n])


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.s``: wall seconds of the block (perf_counter).

    The block must block on its own work (``block_until_ready`` for JAX): JAX dispatches
    asynchronously, so an unblocked block times the dispatch only."""

    def __init__(self) -> None:
        self.s = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        self.s = 0.0
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.s = time.perf_counter() - self._t0

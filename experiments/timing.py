"""The one timing helper of the experiments: interleaved repetitions, medians, compile time.

Machines here are shared and noisy, so every comparison is a ratio of cases measured side by
side: :func:`time_interleaved` runs one round of every case in turn, ``reps`` times, and reports
the median (plus min, max and the raw samples) per case. Used by the benchmark sections, the CNN's
manual/autodiff epoch ratio, the grid's one-model reference and the VGG16 feature throughput.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw samples (seconds)."""
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "reps": len(samples),
        "samples_s": list(samples),
    }


def repeated(fn: Callable[[], Any]) -> Callable[[int], None]:
    """Turn a blocking one-shot case into ``case(calls)`` that runs it ``calls`` times."""

    def run(calls: int) -> None:
        for _ in range(calls):
            fn()

    return run


def time_interleaved(
    cases: dict[str, Callable[[int], Any]], reps: int, warmup: int, min_sample_s: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Run ``warmup`` untimed rounds, then ``reps`` timed rounds of every case in turn.

    ``case(calls)`` runs its work ``calls`` times and blocks until all of it is done. With
    ``min_sample_s`` > 0 each case is first calibrated so that one timed sample lasts about that
    long (short GPU kernels would otherwise time the launch); samples are divided by the calls.
    Returns :func:`summarize` per case, in seconds per call, plus ``calls_per_sample``.
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn(1)
    calls = dict.fromkeys(cases, 1)
    if min_sample_s > 0:
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(1)
            once = max(time.perf_counter() - start, 1e-7)
            calls[name] = int(min(1000, max(1, math.ceil(min_sample_s / once))))
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        gc.collect()
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(calls[name])
            samples[name].append((time.perf_counter() - start) / calls[name])
    return {name: summarize(s) | {"calls_per_sample": calls[name]} for name, s in samples.items()}


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
    """AOT-compile ``jitted`` for ``args``: (compiled function, lower + compile seconds)."""
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def median_ratio(
    a_s: Sequence[float], b_s: Sequence[float], *, skip_first: bool = True
) -> float | None:
    """Median of ``a_s`` over median of ``b_s`` on the samples both have; the first (compiling)
    sample is dropped when ``skip_first`` and there are later ones. None when either is empty."""
    n = min(len(a_s), len(b_s))
    if n == 0:
        return None
    first = 1 if skip_first and n > 1 else 0
    return statistics.median(a_s[first:n]) / statistics.median(b_s[first:n])


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.s``: wall seconds of the block (perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.s = 0.0
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.s = time.perf_counter() - self._t0

"""Wall-clock timing of a call that may return JAX arrays (waited for) or anything else, shared
by the benchmarks so that each times its calls the same way."""

from __future__ import annotations

import statistics
import time

import jax


def timed(fn) -> float:
    """Seconds for one call of fn, until its JAX results are ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median_seconds(fn, runs: int, warmup: int = 1) -> float:
    """The median of `runs` timed calls after `warmup` untimed ones (compiles, first touches)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    return statistics.median(timed(fn) for _ in range(runs))

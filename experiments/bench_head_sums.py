"""The MLM head's bias gradient two ways: XLA's reduce over [B, K, V] and a ones-vector matmul.

    python experiments/bench_head_sums.py

models/head.py's `add_output_bias` sums the cotangent as a matmul because XLA:CPU's reduce is
an order of magnitude slower at vocabulary widths (docs/performance.md). This prints both, in
milliseconds (the best of 5 timings of 10 calls each), at the peer table's head shapes and at
hidden-width sums for contrast; on a GPU or TPU it shows what the choice costs there.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

SHAPES = {  # [B, K, V] of each peer row's head (K: its derived prediction slots), then a hidden width
    "BERT tiny head": (32, 19, 30522),
    "BERT-base head": (8, 19, 30522),
    "ModernBERT tiny head": (32, 38, 8192),
    "ModernBERT base head (seq 128)": (8, 38, 32768),
    "hidden 768 (a dense bias)": (8, 128, 768),
}


def best_ms(fn, x) -> float:
    jax.block_until_ready(fn(x))
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            out = fn(x)
        jax.block_until_ready(out)
        runs.append((time.perf_counter() - start) / 10)
    return min(runs) * 1e3


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    reduce = jax.jit(lambda x: jnp.sum(x, axis=(0, 1)))
    highest = jax.lax.Precision.HIGHEST
    matmul = jax.jit(lambda x: jnp.einsum("bk,bkv->v", jnp.ones(x.shape[:2]), x, precision=highest))
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print(f"{'shape':34s} {'[B, K, V]':>18s} {'reduce ms':>10s} {'matmul ms':>10s}")
    for name, shape in SHAPES.items():
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape, np.float32))
        print(f"{name:34s} {str(shape):>18s} {best_ms(reduce, x):10.2f} {best_ms(matmul, x):10.2f}")


if __name__ == "__main__":
    main()

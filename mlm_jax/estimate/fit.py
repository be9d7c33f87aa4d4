"""Whether a config's train step fits the chips of a TPU slice, and the largest batch that
does: what `python -m mlm_jax.main --print_config --tpu_topology=v5e:4x4` adds.

The answer is XLA's: the step is compiled for the slice on this machine (libtpu, no TPU), and
either its per-chip peak is compared with the chip's HBM or the compiler's refusal is read.
"""

from __future__ import annotations

from mlm_jax.estimate import tpu_step
from mlm_jax.estimate.memory import DoesNotFit, GiB, Memory, fit_line
from mlm_jax.estimate.tpu import Slice, tpu_slice


def fit_lines(config, topology: str, *, search: bool = True) -> list[str]:
    """The report's lines; ValueError (or ConfigError) for a bad topology or config."""
    from mlm_jax.training.synthetic import make_trainer

    tpu = tpu_slice(topology)
    run = make_trainer(config, list(tpu.devices)).run  # a config error stops here, uncompiled
    lines = [
        f"{tpu.name} ({tpu.num_chips} x {tpu.device_kind}, {tpu.chip.hbm_bytes / GiB:g} GiB "
        f"HBM each), train.batch_size {run.train.batch_size}, mesh {run.mesh.sizes}: "
        "compiled here by libtpu, nothing ran",
        _fit(config, tpu),
    ]
    if search:
        dp, micro = run.mesh.data_parallel_size, run.train.microbatches
        best = tpu_step.largest_batch(config, tpu, tpu.chip.hbm_bytes, dp, micro)
        lines.append(
            f"largest train.batch_size that fits: {best} "
            f"({best // dp} rows per data shard, in steps of {micro})"
        )
    return lines


def _fit(config, tpu: Slice) -> str:
    try:
        _, compiled = tpu_step.compile_train_step(config, tpu)
    except DoesNotFit as e:
        return fit_line(e.used, e.capacity) + " (XLA's refusal; it stops at the first overflow)"
    return fit_line(Memory.of(compiled).peak, tpu.chip.hbm_bytes)

"""A config's train step on a TPU slice: compiled, its memory per chip, a roofline of its
time, and the largest batch that fits (each probe one compile)."""

from __future__ import annotations

import dataclasses

from mlm_jax.estimate import roofline
from mlm_jax.estimate.memory import DoesNotFit, Memory, does_not_fit
from mlm_jax.estimate.tpu import Slice
from mlm_jax.estimate.tpu_roofline import tpu_kernel_seconds

MAX_ROWS = 2**16  # per data shard: the search for the largest batch stops doubling here


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    """What the compiled train step says about a run on the slice (per chip where noted)."""

    memory: Memory  # per chip
    by_kind: dict  # kernel kind -> seconds per step (roofline)
    kernels: list  # (seconds, count, kind, name), longest first
    model_flops: float  # per step, whole slice (mlm_jax.models.flops)
    peak_flops: float  # per chip, bf16 datasheet
    tokens: int  # per step, whole slice
    num_chips: int
    setup: str  # the batch and mesh compiled, in words

    @property
    def step_s(self) -> float:
        return sum(self.by_kind.values())

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.step_s * self.num_chips * self.peak_flops)


def compile_train_step(config, tpu: Slice):
    """(trainer, compiled train step) for the slice; DoesNotFit when XLA finds the step too
    large for a chip's HBM."""
    from mlm_jax.training import synthetic

    try:
        trainer, compiled, _ = synthetic.compile_train_step(config, list(tpu.devices))
    except Exception as e:  # noqa: BLE001 - XLA's errors are one class; only OOM is ours
        refusal = does_not_fit(e)
        if refusal is None:
            raise
        raise refusal from e
    return trainer, compiled


def estimate_train_step(config, tpu: Slice, hlo_out: str = "") -> StepEstimate:
    """Compile config's train step for the slice and estimate it; DoesNotFit if too large.
    hlo_out: a file to keep the optimized HLO in (the compile is the slow part)."""
    from mlm_jax.models.flops import datasheet_peak, flops_per_token

    trainer, compiled = compile_train_step(config, tpu)
    peak = datasheet_peak(tpu.device_kind, "bfloat16")
    rates = roofline.Rates(matmul_flops=peak, hbm_bytes=tpu.chip.hbm_bandwidth)
    kernel_seconds = tpu_kernel_seconds(rates, tpu.chip.ici_bandwidth, tpu.num_chips)
    hlo = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(hlo)
    by_kind, kernels = roofline.estimate(hlo, kernel_seconds)
    run = trainer.run
    tokens = run.train.batch_size * run.data.seq_len
    per_token = flops_per_token(run.model, run.data.seq_len, run.masking.max_predictions)
    return StepEstimate(
        memory=Memory.of(compiled),
        by_kind=by_kind,
        kernels=kernels,
        model_flops=per_token["total"] * tokens,
        peak_flops=peak,
        tokens=tokens,
        num_chips=tpu.num_chips,
        setup=f"train.batch_size {run.train.batch_size} x {run.data.seq_len} tokens, "
        f"mesh {run.mesh.sizes}, microbatches {run.train.microbatches}",
    )


def with_batch(config, batch_size: int):
    config = config.copy_and_resolve_references()
    config.train.batch_size = batch_size
    return config


def peak_or_none(config, tpu: Slice) -> int | None:
    """Per-chip peak bytes of config's train step, or None where XLA refuses it (too large)."""
    try:
        _, compiled = compile_train_step(config, tpu)
    except DoesNotFit:
        return None
    return Memory.of(compiled).peak


def largest_batch(config, tpu: Slice, capacity: int, data_parallel: int, step: int) -> int:
    """The largest train.batch_size (data_parallel x a multiple of `step` rows per data shard:
    whole microbatches) whose step fits `capacity` bytes per chip; 0 if none does.

    XLA's peak is close to affine in the batch (the state is fixed, activations grow with the
    rows): compiles at 1 and 2 steps of rows give the line, and the search starts where it
    crosses `capacity`, so a good line costs two more compiles (the crossing fits, one more
    step does not); where the line was off, doubling and bisection take over.
    """

    def peak(rows: int) -> int | None:
        return peak_or_none(with_batch(config, rows * data_parallel), tpu)

    def fits(rows: int) -> bool:
        found = peak(rows)
        return found is not None and found <= capacity

    first, second = peak(step), peak(2 * step)
    if first is None or first > capacity:
        return 0
    if second is None or second > capacity:
        return step * data_parallel
    per_row = max((second - first) / step, 1.0)
    guess = int((capacity - first) / per_row) // step * step + step
    return _search(fits, 2 * step, min(max(guess, 2 * step), MAX_ROWS), step) * data_parallel


def _search(fits, low: int, guess: int, step: int) -> int:
    """The largest multiple of `step` rows that fits, knowing `low` does: `guess` and one step
    beyond it first, then doubling up to MAX_ROWS or bisecting down."""
    high = None
    for probe in (guess, guess + step):
        if probe > low and high is None:
            low, high = (probe, None) if fits(probe) else (low, probe)
    while high is None and low < MAX_ROWS:
        low, high = (low * 2, None) if fits(low * 2) else (low, low * 2)
    while high is not None and high - low > step:
        mid = (low + high) // 2 // step * step
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low

"""Memory, FLOPs and step time of a config on a Cloud TPU slice, from a machine without one.

    pip install -r requirements-test.txt   # once: libtpu, XLA's TPU compiler (no TPU needed)
    python experiments/tpu_estimate.py --config=configs/bert.py:large --topology=v5e:4x4 \\
        [--config.mesh.fsdp=4 ...] [--find_max_batch]

The real train step (masking, forward, backward, AdamW, donated state; the config's mesh and
batch) is compiled for the slice's chips by libtpu (mlm_jax.estimate.tpu), as a run on the
slice would compile it. Printed: XLA's per-chip memory (arguments, temporaries, peak) against
the chip's HBM; model FLOPs per step (mlm_jax.models.flops); a roofline of the step time and
MFU over the compiled HLO at the chip's datasheet bf16 peak, HBM and ICI bandwidths
(mlm_jax.estimate.chips: v4, v5e, v5p, v6e, with their sources). The time is UNCALIBRATED:
no TPU step has been measured against it (the H100 roofline it shares read 4-8 % fast there).
--find_max_batch also searches the largest train.batch_size that fits (one compile a probe).
Topologies: v5e:2x2 (4 chips), v5e:2x4 (v5e-8), v5e:4x4 (v5e-16), v4:2x2x1 (v4-8), ...
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the TPU; run nothing anywhere

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mlm_jax import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined on demand so importing this module (tests) defines no flags."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (configs/<exp>.py[:arg]).", lock_config=True
    )
    flags.DEFINE_string("topology", None, "The TPU slice: v5e:2x2, v5e:4x4, v4:2x2x1, ...")
    flags.DEFINE_bool("find_max_batch", False, "Also find the largest batch that fits.")
    flags.DEFINE_integer("top", 8, "Kernels to list, longest total time first.")
    flags.DEFINE_string("hlo_out", "", "Also write the compiled step's optimized HLO here.")
    flags.mark_flags_as_required(["config", "topology"])


def describe(estimate, tpu) -> list[str]:
    """The printed lines of a StepEstimate."""
    from mlm_jax.estimate.memory import GiB, fit_line

    e, chip = estimate, tpu.chip
    lines = [
        f"{tpu.name}: {tpu.num_chips} x {tpu.device_kind} ({chip.hbm_bytes / GiB:g} GiB HBM, "
        f"{chip.hbm_bandwidth / 1e9:g} GB/s, {e.peak_flops / 1e12:g} TFLOP/s bf16; "
        f"{chip.source})",
        f"compiled: {e.setup}",
        f"XLA memory per chip: {e.memory.describe()}",
        fit_line(e.memory.peak, chip.hbm_bytes),
        f"model FLOPs per step: {e.model_flops / 1e12:.2f} TFLOP "
        f"({e.model_flops / e.num_chips / 1e12:.3f} per chip)",
        f"estimated step {e.step_s * 1e3:.1f} ms, {e.tokens / e.step_s:,.0f} tokens/s, "
        f"MFU {100 * e.mfu:.1f} % (a roofline, UNCALIBRATED until measured on a TPU)",
    ]
    for kind, seconds in sorted(e.by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {kind:<18}{seconds * 1e3:8.2f} ms")
    for seconds, times, kind, name in e.kernels[: FLAGS.top]:
        lines.append(f"    {seconds * 1e3:7.2f} ms  {times:>3} x  {kind:<18} {name}")
    return lines


def main(argv) -> None:
    del argv
    cli.quiet_library_noise()
    from mlm_jax.config.errors import ConfigError
    from mlm_jax.estimate import tpu_step
    from mlm_jax.estimate.memory import DoesNotFit, GiB, fit_line
    from mlm_jax.estimate.tpu import tpu_slice

    config = FLAGS.config
    with cli.one_line_errors((ValueError, ConfigError)):
        tpu = tpu_slice(FLAGS.topology)
        try:
            estimate = tpu_step.estimate_train_step(config, tpu, hlo_out=FLAGS.hlo_out)
            print("\n".join(describe(estimate, tpu)))
        except DoesNotFit as e:
            print(f"{tpu.name}: XLA refused the step: {e}")
            print(fit_line(e.used, e.capacity) + " (XLA's figures; it stops at the first overflow)")
        if FLAGS.find_max_batch:
            print_largest_batch(config, tpu, GiB)


def print_largest_batch(config, tpu, gib: int) -> None:
    from mlm_jax.estimate import tpu_step
    from mlm_jax.training.synthetic import make_trainer

    run = make_trainer(config, list(tpu.devices)).run
    dp, micro = run.mesh.data_parallel_size, run.train.microbatches
    best = tpu_step.largest_batch(config, tpu, tpu.chip.hbm_bytes, dp, micro)
    print(
        f"largest train.batch_size that fits {tpu.chip.hbm_bytes / gib:g} GiB per chip: {best}"
        f" ({best // dp} rows per data shard; searched in steps of {dp * micro})"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser(__doc__, __name__))

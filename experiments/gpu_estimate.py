"""Step time and memory of a config on an NVIDIA H100, estimated on a machine without one.

    # once: a virtual environment whose jaxlib carries the CUDA plugin (XLA's GPU compiler)
    python -m venv /tmp/cuda-venv
    /tmp/cuda-venv/bin/pip install -r requirements.txt -e . "jax[cuda12]==0.10.2"
    # then, on any machine (no GPU, no driver needed)
    /tmp/cuda-venv/bin/python experiments/gpu_estimate.py --config=configs/bert.py:large \\
        --config.model.attention=cudnn --config.model.attention_dropout_rate=0
    # or only the estimate, from an XLA dump of a real GPU run (experiments/gpu_benchmarks.sh)
    python experiments/gpu_estimate.py --hlo=OUT/train_step_after_optimizations.txt

How: JAX's topology API hands XLA a description of an H100 instead of a device (deviceless
ahead-of-time compilation), and the train step is compiled for it exactly as benchmark.py
compiles it (mlm_jax.training.synthetic.compile_train_step; model FLOPs from mlm_jax.models.flops). The
optimized HLO is then what an H100 would run (fusions, cuBLAS calls and their epilogues, cuDNN
attention, remat, buffers) except for autotuning, which needs a device: every matmul goes to
cuBLAS here, while a real run may move a few into Triton kernels.

The estimate is a roofline per kernel, summed over the step (while loops count their trip
count): a matmul at GEMM_FLOPS (TF32_FLOPS with float32 operands); cuDNN attention at the rates
its kernels reached in the H100 profile (README, Speed); any other fusion at the slower of its
bytes moved / HBM_BYTES and its element-wise arithmetic / ELEMENT_OPS (transcendentals
weighted), plus a launch gap each. On that profile's step (24 x 1024, batch 256 x 128) the
estimate gave 207.8 ms for 214.7 ms of measured kernels, and the large fusions within 7 % each;
on the BERT-base row 84.2 ms for a 90.5 ms step. Read it as a ranking of variants and a lower
bound, not a measurement.
"""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the H100; run nothing anywhere
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver to check against

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mlm_jax import cli  # noqa: E402
from mlm_jax.estimate import roofline  # noqa: E402
from mlm_jax.estimate.hlo import dims, dot_flops, nbytes  # noqa: E402
from mlm_jax.estimate.roofline import Rates  # noqa: E402
from mlm_jax.models.flops import flops_per_token  # noqa: E402

FLAGS = flags.FLAGS

GEMM_FLOPS = 770e12  # bf16 cuBLAS matmuls in the H100 profile
TF32_FLOPS = 385e12  # float32 operands run as TF32 at half that (the profile's two: 252, 428)
ATTENTION_FLOPS = {"forward": 115e12, "backward": 80e12}  # cuDNN flash attention there, L=128
HBM_BYTES = 3.0e12  # per second, what large element-wise kernels reach (3.35e12 on paper)
ELEMENT_OPS = 25e12  # element-wise operations per second inside fusions
LAUNCH_S = 2e-6  # gap per kernel inside XLA's CUDA graphs
H100 = Rates(
    matmul_flops=GEMM_FLOPS,
    hbm_bytes=HBM_BYTES,
    element_ops=ELEMENT_OPS,
    f32_matmul_cost=GEMM_FLOPS / TF32_FLOPS,
    launch_s=LAUNCH_S,
)

# An H100 SXM as XLA's GPU compiler needs to know it (GpuTargetConfigProto, text format).
H100_TARGET = """
gpu_device_info {
  name: "NVIDIA H100 80GB HBM3"
  cuda_compute_capability { major: 9 minor: 0 }
  core_count: 132  fpus_per_core: 128  clock_rate_ghz: 1.98
  memory_bandwidth: 3352320000000  l2_cache_size: 52428800  device_memory_size: 84942979072
  threads_per_block_limit: 1024  threads_per_warp: 32  threads_per_core_limit: 2048
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
  shared_memory_per_block: 49152  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535  block_dim_limit_z: 65535
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def define_flags() -> None:
    """The command line; defined on demand so importing this module (tests) defines no flags."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (configs/<exp>.py[:arg]).", lock_config=True
    )
    flags.DEFINE_string("hlo", "", "Estimate this optimized HLO text instead of compiling.")
    flags.DEFINE_string("hlo_out", "", "Also write the compiled step's optimized HLO here.")
    flags.DEFINE_integer("top", 12, "Kernels to list, longest total time first.")
    flags.DEFINE_float(
        "peak_tflops", 758.0, "Matmul peak for the MFU line (the H100's measured one, README)."
    )


def kernel_seconds(computations, inst, scope):
    """(kind, seconds) of one instruction of an executed computation, or (None, 0)."""
    op, attrs = inst["op"], inst["attrs"]
    operand_types = roofline.types_of_operands(inst, scope)
    if op == "fusion":
        return roofline.fusion_kernel(computations, inst, scope, H100)
    if op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', attrs).group(1)
        if "cublas" in target:
            config = json.loads(attrs.split("backend_config=", 1)[1])["gemm_backend_config"]
            contracting = [int(d) for d in config["dot_dimension_numbers"]["lhs_contracting_dimensions"]]  # fmt: skip
            flops = dot_flops(inst, scope, contracting)
            # (a third operand is an epilogue's bias or addend, not a matrix of the product)
            rate = TF32_FLOPS if any(t.startswith("f32") for t in operand_types[:2]) else GEMM_FLOPS
            return "matmuls", flops / rate + LAUNCH_S
        if "fmha" in target:  # q is [B, L, N, D] (JAX passes BTNH); FLOPs of QK^T and PV
            b, length, n, d = dims(operand_types[0])
            flops = 4.0 * b * n * length * length * d
            if "Backward" in target:
                return "cuDNN attention", 2.5 * flops / ATTENTION_FLOPS["backward"]
            return "cuDNN attention", flops / ATTENTION_FLOPS["forward"]
        return "other fusions", (sum(map(nbytes, operand_types)) + nbytes(inst["type"])) / HBM_BYTES
    if op in ("copy", "copy-start"):
        return "copies", 2 * nbytes(inst["type"]) / HBM_BYTES + LAUNCH_S
    return None, 0.0


def estimate(hlo_text: str):
    """{kind: seconds} and [(seconds, count, kind, name)] over one execution of the module."""
    return roofline.estimate(hlo_text, kernel_seconds)


def compile_for_h100(config):
    """(optimized HLO, memory line, model FLOPs per token) of config's step on one H100."""
    from jax.experimental import topologies

    from mlm_jax.training.synthetic import compile_train_step

    topology = topologies.get_topology_desc(
        "h100", platform="cuda", target_config=H100_TARGET, topology="1x1x1"
    )
    # Triton gemm fusions are chosen by timing them on a device; without one, cuBLAS.
    trainer, compiled, _ = compile_train_step(
        config, list(topology.devices), {"xla_gpu_enable_triton_gemm": False}
    )
    m = compiled.memory_analysis()
    memory = (
        f"XLA memory: arguments {m.argument_size_in_bytes / 2**30:.2f} GiB (donated "
        f"{m.alias_size_in_bytes / 2**30:.2f}), temporaries {m.temp_size_in_bytes / 2**30:.2f} GiB"
    )
    seq_len = int(config.data.seq_len)
    flops = flops_per_token(trainer.run.model, seq_len, trainer.run.masking.max_predictions)
    return compiled.as_text(), memory, flops["total"]


def main(argv):
    del argv
    config = FLAGS.config
    if FLAGS.hlo:
        hlo_text, memory, model_flops = open(FLAGS.hlo).read(), "", 0.0
    elif config is None:
        raise app.UsageError("give --config (to compile) or --hlo (to estimate a dump)")
    else:
        hlo_text, memory, model_flops = compile_for_h100(config)
        if FLAGS.hlo_out:
            with open(FLAGS.hlo_out, "w") as f:
                f.write(hlo_text)
    by_kind, kernels = estimate(hlo_text)
    step_s = sum(by_kind.values())
    print(f"estimated H100 step {step_s * 1e3:.1f} ms (a roofline: see the module docstring)")
    if memory:
        print(memory)
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<16}{seconds * 1e3:8.1f} ms")
    for seconds, times, kind, name in kernels[: FLAGS.top]:
        print(f"    {seconds * 1e3:7.2f} ms  {times:>3} x  {kind:<16} {name}")
    if model_flops:
        tokens = int(config.train.batch_size) * int(config.data.seq_len)
        mfu = model_flops * tokens / step_s / (FLAGS.peak_tflops * 1e12)
        print(
            f"predicted {tokens / step_s:,.0f} tokens/s, MFU {100 * mfu:.1f} % of {FLAGS.peak_tflops:g} TFLOP/s"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser(__doc__, __name__))

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

import collections
import json
import math
import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for the H100; run nothing anywhere
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")  # no driver to check against

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mlm_jax import cli  # noqa: E402
from mlm_jax.models.flops import flops_per_token  # noqa: E402

FLAGS = flags.FLAGS

GEMM_FLOPS = 770e12  # bf16 cuBLAS matmuls in the H100 profile
TF32_FLOPS = 385e12  # float32 operands run as TF32 at half that (the profile's two: 252, 428)
ATTENTION_FLOPS = {"forward": 115e12, "backward": 80e12}  # cuDNN flash attention there, L=128
HBM_BYTES = 3.0e12  # per second, what large element-wise kernels reach (3.35e12 on paper)
ELEMENT_OPS = 25e12  # element-wise operations per second inside fusions
LAUNCH_S = 2e-6  # gap per kernel inside XLA's CUDA graphs
# Element-wise ops costing more than one operation (rough instruction counts on sm_90).
OP_WEIGHT = {"divide": 4, "sqrt": 4, "rsqrt": 4, "exponential": 6, "log": 8, "tanh": 10,
             "erf": 15, "power": 10, "logistic": 10, "remainder": 8}  # fmt: skip
# Ops that move or reinterpret data but compute nothing.
DATA_OPS = {"parameter", "constant", "broadcast", "bitcast", "reshape", "tuple",
            "get-tuple-element", "slice", "dynamic-slice", "dynamic-update-slice", "transpose",
            "copy", "iota", "concatenate", "pad", "reverse", "bitcast-convert", "convert"}  # fmt: skip
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
               "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip

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


_SHAPE = re.compile(r"(pred|bf16|[suf]\d+)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{$")
_ASSIGN = re.compile(r"^\s*(ROOT )?%(\S+) = ")


def _arrays(type_text: str):
    return [(dt, math.prod(int(d) for d in dims.split(",") if d)) for dt, dims in _SHAPE.findall(type_text)]  # fmt: skip


def nbytes(type_text: str) -> int:
    return sum(DTYPE_BYTES.get(dt, 4) * n for dt, n in _arrays(type_text))


def _group_end(text: str, start: int) -> int:
    """Index just past the bracketed group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] in "([{"
        depth -= text[i] in ")]}"
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced HLO text: {text[start : start + 80]!r}")


def parse_hlo(text: str):
    """{computation: {instruction: {type, op, operands, attrs, root, index}}}, entry name."""
    computations, entry, current = {}, None, None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), {})
            entry = header.group(2) if header.group(1) else entry
            continue
        if line == "}":
            current = None
        assign = _ASSIGN.match(line)
        if current is None or not assign:
            continue
        rest = line[assign.end() :]
        type_end = _group_end(rest, 0) if rest.startswith("(") else rest.index(" ")
        type_text, rest = rest[:type_end], rest[type_end + 1 :]
        op = rest[: rest.index("(")]
        args_end = _group_end(rest, len(op))
        args = rest[len(op) + 1 : args_end - 1]
        current[assign.group(2)] = {
            "type": type_text,
            "op": op,
            "operands": re.findall(r"%([\w.\-]+)", args),
            "attrs": rest[args_end:],
            "root": bool(assign.group(1)),
            "index": int(args) if op == "parameter" else None,
        }
    return computations, entry


def _called(attrs: str, key: str) -> str | None:
    found = re.search(rf"\b{key}=%([\w.\-]+)", attrs)
    return found.group(1) if found else None


def _fusion_work(computations, name: str, operand_types: list[str]):
    """(bytes read and written, matmul FLOPs, weighted element ops) of one fused computation.

    The FLOPs are bf16-rate equivalents: a dot with a float32 operand (TF32) counts double.
    """
    body = computations[name]
    users = collections.defaultdict(list)
    for inst in body.values():
        for operand in inst["operands"]:
            users[operand].append(inst)
    moved = 0
    for param_name, param in body.items():
        if param["op"] != "parameter" or param["index"] >= len(operand_types):
            continue
        uses = users[param_name]

        def only(op, uses=uses, param_name=param_name):  # every use indexes into this param
            return uses and all(u["op"] == op and u["operands"][0] == param_name for u in uses)

        if only("dynamic-slice"):
            moved += sum(nbytes(u["type"]) for u in uses)  # reads one slice of a stack
        elif not only("dynamic-update-slice"):  # (a buffer updated in place is not read)
            moved += nbytes(operand_types[param["index"]])
    root = next(inst for inst in body.values() if inst["root"])
    outputs = [body[o] for o in root["operands"]] if root["op"] == "tuple" else [root]
    for out in outputs:
        written = body[out["operands"][1]] if out["op"] == "dynamic-update-slice" else out
        moved += nbytes(written["type"])
    flops = ops = 0.0
    for inst in body.values():
        if inst["op"] == "dot":
            tf32 = any(body[o]["type"].startswith("f32") for o in inst["operands"][:2])
            flops += _dot_flops(inst, body) * (GEMM_FLOPS / TF32_FLOPS if tf32 else 1.0)
        elif inst["op"] == "fusion":
            types = [body[o]["type"] for o in inst["operands"]]
            flops += _fusion_work(computations, _called(inst["attrs"], "calls"), types)[1]
        elif inst["op"] == "reduce":
            ops += sum(n for _, n in _arrays(body[inst["operands"][0]]["type"]))
        elif inst["op"] not in DATA_OPS:
            ops += OP_WEIGHT.get(inst["op"], 1) * sum(n for _, n in _arrays(inst["type"]))
    return moved, flops, ops


def _dot_flops(inst, scope, contracting=None) -> float:
    lhs_dims = [int(d) for d in _SHAPE.search(scope[inst["operands"][0]]["type"]).group(2).split(",") if d]  # fmt: skip
    if contracting is None:
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst["attrs"]).group(1)
        contracting = [int(d) for d in contracting.split(",") if d]
    out_elements = _arrays(inst["type"])[0][1]
    return 2.0 * out_elements * math.prod(lhs_dims[d] for d in contracting)


def kernel_seconds(computations, inst, scope):
    """(kind, seconds) of one instruction of an executed computation, or (None, 0)."""
    op, attrs = inst["op"], inst["attrs"]
    operand_types = [scope[o]["type"] for o in inst["operands"] if o in scope]
    if op == "fusion":
        moved, flops, ops = _fusion_work(computations, _called(attrs, "calls"), operand_types)
        kind = "matmuls" if flops else "other fusions"
        return kind, max(moved / HBM_BYTES, flops / GEMM_FLOPS, ops / ELEMENT_OPS) + LAUNCH_S
    if op == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', attrs).group(1)
        if "cublas" in target:
            config = json.loads(attrs.split("backend_config=", 1)[1])["gemm_backend_config"]
            contracting = [int(d) for d in config["dot_dimension_numbers"]["lhs_contracting_dimensions"]]  # fmt: skip
            flops = _dot_flops(inst, scope, contracting)
            # (a third operand is an epilogue's bias or addend, not a matrix of the product)
            rate = TF32_FLOPS if any(t.startswith("f32") for t in operand_types[:2]) else GEMM_FLOPS
            return "matmuls", flops / rate + LAUNCH_S
        if "fmha" in target:  # q is [B, L, N, D] (JAX passes BTNH); FLOPs of QK^T and PV
            b, length, n, d = [int(x) for x in _SHAPE.search(operand_types[0]).group(2).split(",")]
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
    computations, entry = parse_hlo(hlo_text)
    by_kind, kernels = collections.defaultdict(float), []

    def walk(name, times):
        scope = computations[name]
        for inst_name, inst in scope.items():
            if inst["op"] == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst["attrs"])
                walk(_called(inst["attrs"], "body"), times * (int(trips.group(1)) if trips else 1))
            elif inst["op"] in ("call", "conditional"):
                branch = _called(inst["attrs"], "to_apply") or re.search(
                    r"branch_computations=\{%([\w.\-]+)", inst["attrs"]
                ).group(1)
                walk(branch, times)
            else:
                kind, seconds = kernel_seconds(computations, inst, scope)
                if kind:
                    by_kind[kind] += seconds * times
                    kernels.append((seconds * times, times, kind, inst_name))

    walk(entry, 1)
    return dict(by_kind), sorted(kernels, reverse=True)


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

"""Where a profiled train step's device time goes, from a Perfetto trace.

    python experiments/benchmark.py --config=configs/bert.py:large \\
        --config.model.attention=cudnn --config.model.attention_dropout_rate=0 \\
        --profile_dir=/tmp/prof
    python experiments/profile_summary.py /tmp/prof   # or the .json.gz itself

Reads the newest perfetto_trace.json.gz under the folder, keeps the kernels of the accelerator
processes (/device:...), and prints milliseconds per step by kind of kernel and for the
costliest kernels. Kinds are matched on NVIDIA kernel names (cuBLAS/nvjet GEMMs, XLA's Triton
gemm fusions, cuDNN attention, memcpy, threefry's xor fusions); anything else is an XLA fusion,
mostly elementwise and reduction work bound by memory bandwidth.

On the CPU a trace has no device: the ops are the events of XLA's compute threads
(tf_XLA...), their times summed over the threads (CPU time, which can exceed the wall time),
matmuls being YNNPACK fusions and dots. Where the folder also holds the step's optimized HLO
(train_step.hlo.txt, which experiments/benchmark.py writes beside the trace), a second table
gives each op's time to the model's module that made it (its op_name: encoder/layer_*/mlp_in,
embeddings, the loss and optimizer outside the model), forward and backward apart.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

KINDS = (  # (kind, pattern on the kernel name), first match wins
    (
        "matmul",
        re.compile(
            r"^(nvjet|gemm_fusion|sm\d+_xmma|cutlass|ampere_|sm90_|ynn_fusion|dot)|gemm", re.I
        ),
    ),
    ("attention (cuDNN)", re.compile(r"cudnn|sdpa|flash", re.I)),
    ("copies", re.compile(r"^memcpy|^copy|memset|transpose|_copy|_pad_fusion", re.I)),
    ("random bits (threefry)", re.compile(r"xor", re.I)),
)
OTHER = "other XLA fusions"
HLO = "train_step.hlo.txt"  # the step's optimized HLO, written by benchmark.py --profile_dir


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return OTHER


def find_trace(path: str) -> str:
    if os.path.isfile(path):
        return path
    found = glob.glob(os.path.join(path, "**", "perfetto_trace.json.gz"), recursive=True)
    if not found:
        raise SystemExit(f"{path}: no perfetto_trace.json.gz under it (benchmark --profile_dir)")
    return max(found, key=os.path.getmtime)


def device_kernels(trace_path: str) -> list[dict]:
    with gzip.open(trace_path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    devices = {
        e["pid"]
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "process_name"
        and e["args"]["name"].startswith("/device:")
    }
    kernels = [e for e in events if e.get("ph") == "X" and e["pid"] in devices]
    return kernels or cpu_ops(events)  # a CPU run may still name an empty /device: process


# Events on XLA's CPU threads that are the runtime around the ops, not ops.
_CPU_RUNTIME = re.compile(r"^(ThunkExecutor|ThreadpoolListener|SlinkyThreadPool|end: |\$)")


def cpu_ops(events: list[dict]) -> list[dict]:
    """The XLA ops of a CPU-only trace: events of the host's tf_XLA* threads."""
    xla_threads = {
        (e["pid"], e["tid"])
        for e in events
        if e.get("ph") == "M"
        and e.get("name") == "thread_name"
        and e["args"]["name"].startswith("tf_XLA")
    }
    ops = [
        e
        for e in events
        if e.get("ph") == "X"
        and (e["pid"], e["tid"]) in xla_threads
        and not _CPU_RUNTIME.match(e["name"])
    ]
    if not ops:
        raise SystemExit("no /device: process and no XLA CPU thread in the trace")
    return ops


def summarize(kernels: list[dict], steps: int, top: int) -> str:
    per_name, calls = collections.Counter(), collections.Counter()
    for e in kernels:
        per_name[e["name"]] += e["dur"]
        calls[e["name"]] += 1
    per_kind = collections.Counter()
    for name, t in per_name.items():
        per_kind[kind_of(name)] += t
    busy = sum(per_kind.values())
    span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    ms = 1e3 * steps  # trace times are microseconds
    lines = [
        f"{steps} step(s) traced: {busy / ms:.1f} ms of kernels per step, "
        f"{span / ms:.1f} ms from first to last ({100 * busy / span:.0f} % busy)",
        "",
        f"{'kind':<26}{'ms/step':>9}{'share':>8}",
    ]
    for kind, t in per_kind.most_common():
        lines.append(f"{kind:<26}{t / ms:>9.2f}{100 * t / busy:>7.1f}%")
    lines += ["", f"{'ms/step':>8}{'calls/step':>11}  kernel"]
    for name, t in per_name.most_common(top):
        lines.append(f"{t / ms:>8.2f}{calls[name] / steps:>11.0f}  {name[:90]}")
    return "\n".join(lines)


_OP = re.compile(r'^\s*(?:ROOT )?%?([\w.-]+) = .*?metadata=\{op_name="([^"]*)"')
_WRAPPER = re.compile(
    r"^(jit|jvp|transpose|vmap|checkpoint|remat|cond|while|body|branch|closed_call)\b|\("
)


def sources(hlo_text: str) -> dict[str, str]:
    """Op name -> 'forward|backward <module path>' from the optimized HLO's op_name metadata
    (encoder/layer_3/mlp_in -> encoder/layer_*/mlp_in; outside the model: 'step')."""
    out = {}
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if not m:
            continue
        op_name = m.group(2)
        parts = []  # module names only, once each (jvp and vmap repeat the path inside)
        for part in op_name.split("/")[:-1]:
            part = re.sub(r"layer_\d+", "layer_*", part)
            if part and not _WRAPPER.search(part) and "->" not in part and part not in parts:
                parts.append(part)
        path = "/".join(parts) or "step"
        out[m.group(1)] = ("backward " if "transpose(" in op_name else "forward ") + path
    return out


def by_source(kernels: list[dict], steps: int, source_of: dict[str, str], top: int) -> str:
    per_source = collections.Counter()
    for e in kernels:
        per_source[source_of.get(e["name"], "(no metadata)")] += e["dur"]
    total, ms = sum(per_source.values()), 1e3 * steps
    lines = ["", f"{'ms/step':>8}{'share':>8}  made by (op_name, layers merged)"]
    for source, t in per_source.most_common(top):
        lines.append(f"{t / ms:>8.2f}{100 * t / total:>7.1f}%  {source}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="--profile_dir folder, or a perfetto_trace.json.gz")
    parser.add_argument("--steps", type=int, default=2, help="steps in the trace (benchmark: 2)")
    parser.add_argument("--top", type=int, default=20, help="costliest kernels to list")
    args = parser.parse_args()
    trace = find_trace(args.path)
    kernels = device_kernels(trace)
    print(summarize(kernels, args.steps, args.top))
    hlo = os.path.join(os.path.dirname(trace) if os.path.isfile(args.path) else args.path, HLO)
    if os.path.exists(hlo):
        with open(hlo) as f:
            print(by_source(kernels, args.steps, sources(f.read()), args.top))


if __name__ == "__main__":
    main()

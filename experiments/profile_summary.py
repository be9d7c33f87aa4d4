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
    ("matmul", re.compile(r"^(nvjet|gemm_fusion|sm\d+_xmma|cutlass|ampere_|sm90_)|gemm", re.I)),
    ("attention (cuDNN)", re.compile(r"cudnn|sdpa|flash", re.I)),
    ("copies", re.compile(r"^memcpy|^copy|memset", re.I)),
    ("random bits (threefry)", re.compile(r"xor", re.I)),
)
OTHER = "other XLA fusions"


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
    if not devices:
        raise SystemExit(f"{trace_path}: no /device: process (a CPU-only trace has none)")
    return [e for e in events if e.get("ph") == "X" and e["pid"] in devices]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="--profile_dir folder, or a perfetto_trace.json.gz")
    parser.add_argument("--steps", type=int, default=2, help="steps in the trace (benchmark: 2)")
    parser.add_argument("--top", type=int, default=20, help="costliest kernels to list")
    args = parser.parse_args()
    print(summarize(device_kernels(find_trace(args.path)), args.steps, args.top))


if __name__ == "__main__":
    main()

"""A roofline per kernel of an optimized HLO module, summed over one execution of it.

Each kernel (a fusion, a library call, a copy, a collective) takes the slower of its bytes
moved at the memory bandwidth and its arithmetic at the matching peak; while loops count their
trip count. Which instructions are kernels and what each costs beyond a fusion is the
platform's part (`kernel_seconds`: experiments/gpu_estimate.py, estimate/tpu_roofline.py).
A lower bound and a ranking of variants, not a measurement.
"""

from __future__ import annotations

import collections
import dataclasses
import re

from mlm_jax.estimate.hlo import arrays, called, conv_flops, dot_flops, nbytes, parse_hlo

# Element-wise ops costing more than one operation (rough instruction counts on sm_90).
OP_WEIGHT = {"divide": 4, "sqrt": 4, "rsqrt": 4, "exponential": 6, "log": 8, "tanh": 10,
             "erf": 15, "power": 10, "logistic": 10, "remainder": 8}  # fmt: skip
# Ops that move or reinterpret data but compute nothing.
DATA_OPS = {"parameter", "constant", "broadcast", "bitcast", "reshape", "tuple",
            "get-tuple-element", "slice", "dynamic-slice", "dynamic-update-slice", "transpose",
            "copy", "iota", "concatenate", "pad", "reverse", "bitcast-convert", "convert"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Rates:
    """What one chip sustains: the roofline's ceilings."""

    matmul_flops: float  # per second, bf16 matmuls
    hbm_bytes: float  # per second
    element_ops: float = float("inf")  # per second inside fusions (inf: not a ceiling)
    f32_matmul_cost: float = 1.0  # a matmul with a float32 operand counts this many times
    launch_s: float = 0.0  # fixed cost per kernel


@dataclasses.dataclass(frozen=True)
class Work:
    """What one kernel does."""

    moved: float = 0.0  # bytes read and written in memory
    flops: float = 0.0  # matmul FLOPs, bf16-rate equivalents
    ops: float = 0.0  # weighted element-wise operations

    def seconds(self, rates: Rates) -> float:
        return (
            max(
                self.moved / rates.hbm_bytes,
                self.flops / rates.matmul_flops,
                self.ops / rates.element_ops,
            )
            + rates.launch_s
        )


def _users(body) -> dict:
    users = collections.defaultdict(list)
    for inst in body.values():
        for operand in inst["operands"]:
            users[operand].append(inst)
    return users


def _bytes_read(computations, body, param_name: str, whole: int) -> int:
    """Bytes a fused computation reads of one parameter (`whole` bytes in all): one slice
    of a stack it only dynamic-slices, nothing of a buffer it only updates in place, and, for
    a parameter it only hands to nested fusions (TPU's), what those read of it."""
    uses = _users(body)[param_name]
    if not uses:
        return whole
    if all(u["op"] == "dynamic-slice" and u["operands"][0] == param_name for u in uses):
        return sum(nbytes(u["type"]) for u in uses)
    if all(u["op"] == "dynamic-update-slice" and u["operands"][0] == param_name for u in uses):
        return 0
    if all(u["op"] == "fusion" for u in uses):
        read = 0
        for u in uses:
            inner = computations[called(u["attrs"], "calls")]
            for index, operand in enumerate(u["operands"]):
                if operand == param_name:
                    name = next(n for n, i in inner.items() if i["index"] == index and i["op"] == "parameter")  # fmt: skip
                    read += _bytes_read(computations, inner, name, whole)
        return min(read, whole)
    return whole


def _bytes_moved(computations, body, operand_types: list[str]) -> int:
    """Bytes a fused computation reads (its parameters) and writes (its root's arrays)."""
    moved = 0
    for param_name, param in body.items():
        if param["op"] == "parameter" and param["index"] < len(operand_types):
            whole = nbytes(operand_types[param["index"]])
            moved += _bytes_read(computations, body, param_name, whole)
    root = next(inst for inst in body.values() if inst["root"])
    outputs = [body[o] for o in root["operands"]] if root["op"] == "tuple" else [root]
    for out in outputs:
        written = body[out["operands"][1]] if out["op"] == "dynamic-update-slice" else out
        moved += nbytes(written["type"])
    return moved


def matmul_flops(inst, scope, rates: Rates) -> float:
    """FLOPs of a dot or convolution, in bf16-rate equivalents (float32 operands cost more)."""
    flops = dot_flops(inst, scope) if inst["op"] == "dot" else conv_flops(inst, scope)
    f32 = any(scope[o]["type"].startswith("f32") for o in inst["operands"][:2])
    return flops * (rates.f32_matmul_cost if f32 else 1.0)


def fusion_work(computations, name: str, operand_types: list[str], rates: Rates) -> Work:
    """The Work of one fused computation given its operands' types."""
    body = computations[name]
    flops = ops = 0.0
    for inst in body.values():
        if inst["op"] in ("dot", "convolution"):
            flops += matmul_flops(inst, body, rates)
        elif inst["op"] == "fusion":
            types = [body[o]["type"] for o in inst["operands"]]
            flops += fusion_work(computations, called(inst["attrs"], "calls"), types, rates).flops
        elif inst["op"] == "reduce":
            ops += sum(n for _, n in arrays(body[inst["operands"][0]]["type"]))
        elif inst["op"] not in DATA_OPS:
            ops += OP_WEIGHT.get(inst["op"], 1) * sum(n for _, n in arrays(inst["type"]))
    return Work(_bytes_moved(computations, body, operand_types), flops, ops)


def types_of_operands(inst, scope) -> list[str]:
    return [scope[o]["type"] for o in inst["operands"] if o in scope]


def fusion_kernel(computations, inst, scope, rates: Rates) -> tuple[str, float]:
    """(kind, seconds) of a fusion instruction: "matmuls" if it multiplies matrices."""
    work = fusion_work(computations, called(inst["attrs"], "calls"), types_of_operands(inst, scope), rates)  # fmt: skip
    return "matmuls" if work.flops else "other fusions", work.seconds(rates)


def trip_count(computations, attrs: str) -> int:
    """Iterations of a while loop: XLA's known_trip_count (GPU), else a condition `i < N`
    on a counter from 0, as JAX's scans and fori_loops compile (TPU); 1 if neither."""
    trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
    if trips:
        return int(trips.group(1))
    condition = computations[called(attrs, "condition")]
    root = next(inst for inst in condition.values() if inst["root"])
    if root["op"] != "compare" or "direction=LT" not in root["attrs"]:
        return 1
    bound = condition.get(root["operands"][1], {})
    literal = bound.get("literal") or ""
    return int(literal) if literal.isdigit() else 1


def estimate(hlo_text: str, kernel_seconds):
    """{kind: seconds} and [(seconds, count, kind, name)] over one execution of the module.

    kernel_seconds(computations, inst, scope) -> (kind, seconds) or (None, 0) for an
    instruction that launches no kernel of its own.
    """
    computations, entry = parse_hlo(hlo_text)
    by_kind, kernels = collections.defaultdict(float), []

    def walk(name, times):
        scope = computations[name]
        for inst_name, inst in scope.items():
            if inst["op"] == "while":
                trips = trip_count(computations, inst["attrs"])
                walk(called(inst["attrs"], "body"), times * trips)
            elif inst["op"] in ("call", "conditional"):
                branch = called(inst["attrs"], "to_apply") or re.search(
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

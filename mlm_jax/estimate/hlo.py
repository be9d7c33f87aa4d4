"""Optimized HLO text, parsed into computations of instructions, and the arithmetic of its
matmuls (dots, and the convolutions TPU's compiler turns dots into).

Only what a roofline needs is kept per instruction: its type, op, operand names, the
attributes after its operands, whether it is its computation's root, and a parameter's index.
"""

from __future__ import annotations

import functools
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
               "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}  # fmt: skip

_SHAPE = re.compile(r"(pred|bf16|[suf]\d+)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{$")
_ASSIGN = re.compile(r"^\s*(ROOT )?%(\S+) = ")


def arrays(type_text: str) -> list[tuple[str, int]]:
    """(dtype, elements) of every array in an HLO type (a tuple type has several)."""
    return [(dt, math.prod(int(d) for d in dims.split(",") if d)) for dt, dims in _SHAPE.findall(type_text)]  # fmt: skip


def dims(type_text: str) -> list[int]:
    """The dimensions of the first array in an HLO type."""
    return [int(d) for d in _SHAPE.search(type_text).group(2).split(",") if d]


def nbytes(type_text: str) -> int:
    return sum(DTYPE_BYTES.get(dt, 4) * n for dt, n in arrays(type_text))


def _group_end(text: str, start: int) -> int:
    """Index just past the bracketed group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += text[i] in "([{"
        depth -= text[i] in ")]}"
        if depth == 0:
            return i + 1
    raise ValueError(f"unbalanced HLO text: {text[start : start + 80]!r}")


def _instruction(line: str, assign) -> dict:
    rest = line[assign.end() :]
    type_end = _group_end(rest, 0) if rest.startswith("(") else rest.index(" ")
    type_text, rest = rest[:type_end], rest[type_end + 1 :]
    op = rest[: rest.index("(")]
    args_end = _group_end(rest, len(op))
    args = rest[len(op) + 1 : args_end - 1]
    return {
        "type": type_text,
        "op": op,
        "operands": re.findall(r"%([\w.\-]+)", args),
        "attrs": rest[args_end:],
        "root": bool(assign.group(1)),
        "index": int(args) if op == "parameter" else None,
        "literal": args if op == "constant" else None,
    }


def parse_hlo(text: str):
    """{computation: {instruction: {type, op, operands, attrs, root, index, literal}}}, and
    the entry computation's name."""
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
        if current is not None and assign:
            current[assign.group(2)] = _instruction(line, assign)
    return computations, entry


def called(attrs: str, key: str) -> str | None:
    """The computation an attribute names (calls=, body=, to_apply=), or None."""
    found = re.search(rf"\b{key}=%([\w.\-]+)", attrs)
    return found.group(1) if found else None


def dot_flops(inst, scope, contracting=None) -> float:
    """2 x output elements x contracted size of a dot (or a GEMM given its contracting dims)."""
    lhs_dims = dims(scope[inst["operands"][0]]["type"])
    if contracting is None:
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst["attrs"]).group(1)
        contracting = [int(d) for d in contracting.split(",") if d]
    out_elements = arrays(inst["type"])[0][1]
    return 2.0 * out_elements * math.prod(lhs_dims[d] for d in contracting)


@functools.cache
def _window_taps(size, out, window, stride, pad_lo, lhs_dilate, rhs_dilate) -> int:
    """(output position, window tap) pairs of one spatial dimension that read a real input
    element, not padding or a hole of a dilated input."""
    extent = (size - 1) * lhs_dilate + 1
    taps = 0
    for o in range(out):
        for k in range(window):
            p = o * stride + k * rhs_dilate - pad_lo
            taps += 0 <= p < extent and p % lhs_dilate == 0
    return taps


def _window(attrs: str, key: str, count: int, default: int) -> list[int]:
    found = re.search(rf"\b{key}=([\dx_]+)", attrs)
    if not found:
        return [default] * count
    return (
        [int(v) for v in found.group(1).split("x")]
        if key != "pad"
        else [int(v.split("_")[0]) for v in found.group(1).split("x")]
    )


def conv_flops(inst, scope) -> float:
    """2 x multiply-adds of a convolution, counting only taps on real input elements (as
    XLA's cost analysis does): exact for the dots TPU's compiler writes as convolutions,
    whose batch dimensions become windows padded so that one tap per output is real."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", inst["attrs"]).groups()
    lhs, rhs = (dims(scope[o]["type"]) for o in inst["operands"][:2])
    out = dims(inst["type"])
    spatial = [c for c in labels[0] if c.isdigit()]
    n = len(spatial)
    window = _window(inst["attrs"], "size", n, 1)
    stride = _window(inst["attrs"], "stride", n, 1)
    pad_lo = _window(inst["attrs"], "pad", n, 0)
    lhs_dilate = _window(inst["attrs"], "lhs_dilate", n, 1)
    rhs_dilate = _window(inst["attrs"], "rhs_dilate", n, 1)
    taps = 1
    for i, d in enumerate(spatial):
        size, out_size = lhs[labels[0].index(d)], out[labels[2].index(d)]
        taps *= _window_taps(
            size, out_size, window[i], stride[i], pad_lo[i], lhs_dilate[i], rhs_dilate[i]
        )
    batch, features = out[labels[2].index("b")], out[labels[2].index("f")]
    return 2.0 * batch * features * rhs[labels[1].index("i")] * taps

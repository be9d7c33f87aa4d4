"""The roofline of estimate/roofline.py for a TPU step: which instructions are kernels.

A fusion costs the slower of its HBM bytes and its matmul FLOPs (TPU's compiler writes dots
as convolutions inside fusions) at the chip's datasheet rates; a collective costs its ring
traffic over the chip's ICI links; a copy reads and writes its bytes. The compiler's
asynchronous prefetches between HBM and on-chip memory (copy-start/done, slice-start/done)
overlap with compute and cost nothing here. Element-wise arithmetic has no ceiling: no
datasheet gives the vector unit's rate. Uncalibrated until a TPU step is measured.
"""

from __future__ import annotations

import math
import re

from mlm_jax.estimate.hlo import DTYPE_BYTES, arrays, nbytes
from mlm_jax.estimate.roofline import DATA_OPS, Rates, fusion_kernel, types_of_operands

# Ring collectives: bytes each chip sends per byte of the named buffer, for a group of n.
_COLLECTIVES = {
    "all-reduce": lambda n: 2 * (n - 1) / n,  # reduce-scatter + all-gather of the result
    "all-gather": lambda n: (n - 1) / n,  # of the gathered result
    "reduce-scatter": lambda n: (n - 1) / n,  # of the input
    "all-to-all": lambda n: (n - 1) / n,
    "collective-permute": lambda n: 1.0,
}
_FREE = DATA_OPS | {"copy-start", "copy-done", "slice-start", "slice-done", "partition-id",
                    "replica-id", "after-all", "opt-barrier"}  # fmt: skip
_FREE_CALLS = ("AllocateBuffer", "AssumeGatherIndicesInBound")


def group_size(attrs: str, default: int) -> int:
    """Devices per replica group of a collective, in any of the forms XLA prints."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if mesh:
        sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2)))
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)
    if iota:
        return int(iota.group(2))
    listed = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    return len(listed.group(1).split(",")) if listed else default


def _collective_seconds(inst, operand_types, ici_bytes: float, num_chips: int) -> float:
    op = inst["op"].removesuffix("-start")
    n = group_size(inst["attrs"], num_chips)
    if n <= 1:
        return 0.0
    if op == "reduce-scatter":
        buffer = sum(map(nbytes, operand_types))
    elif inst["op"] == "all-gather-start":  # its type pairs the operand with the result
        buffer = max(DTYPE_BYTES.get(dt, 4) * count for dt, count in arrays(inst["type"]))
    else:
        buffer = nbytes(inst["type"])
    return _COLLECTIVES[op](n) * buffer / ici_bytes


def tpu_kernel_seconds(rates: Rates, ici_bytes: float, num_chips: int):
    """kernel_seconds for roofline.estimate on one chip of a slice."""

    def kernel_seconds(computations, inst, scope):
        op, attrs, types = inst["op"], inst["attrs"], types_of_operands(inst, scope)
        if op == "fusion":
            return fusion_kernel(computations, inst, scope, rates)
        if op.removesuffix("-start") in _COLLECTIVES:
            return "collectives (ICI)", _collective_seconds(inst, types, ici_bytes, num_chips)
        if op == "copy":
            return "copies", 2 * nbytes(inst["type"]) / rates.hbm_bytes
        if op in _FREE or op.endswith("-done") or any(c in attrs for c in _FREE_CALLS):
            return None, 0.0
        moved = sum(map(nbytes, types)) + nbytes(inst["type"])
        return "other ops", moved / rates.hbm_bytes

    return kernel_seconds

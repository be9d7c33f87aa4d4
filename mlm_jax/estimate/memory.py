"""Per-chip memory of a compiled step (XLA's memory analysis), and whether it fits a chip.

When it does not fit, TPU's compiler refuses the program (RESOURCE_EXHAUSTED, with what it
needed and the HBM it had); `DoesNotFit` carries those two figures, so the refusal reads as
an answer. (What it needed is then a lower bound: the compiler stops at the first overflow.)
"""

from __future__ import annotations

import dataclasses
import re

GiB = 2**30
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The two ways libtpu words it: "Used 20.1G of 15.75G hbm" (buffers that would be live at
# once) and "... HLO temporaries (112.37G) exceeds available HBM (15.75G)".
_REFUSALS = (
    re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
    re.compile(r"\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"),
)


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes one chip holds while the step runs, by XLA's buffer assignment."""

    arguments: int  # parameters, optimizer state and the batch (this chip's shards)
    outputs: int  # the new state and the metrics
    aliased: int  # outputs written over donated arguments (counted once)
    temporaries: int  # activations, gradients, workspace
    code: int  # the program itself

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code

    @classmethod
    def of(cls, compiled) -> Memory:
        m = compiled.memory_analysis()
        return cls(
            arguments=m.argument_size_in_bytes,
            outputs=m.output_size_in_bytes,
            aliased=m.alias_size_in_bytes,
            temporaries=m.temp_size_in_bytes,
            code=m.generated_code_size_in_bytes,
        )

    def describe(self) -> str:
        return (
            f"arguments {self.arguments / GiB:.2f} GiB (donated {self.aliased / GiB:.2f}), "
            f"temporaries {self.temporaries / GiB:.2f} GiB, peak {self.peak / GiB:.2f} GiB"
        )


class DoesNotFit(Exception):
    """XLA refused the step: it needs more than the chip's HBM."""

    def __init__(self, used: int, capacity: int, message: str):
        super().__init__(message)
        self.used, self.capacity = used, capacity


def does_not_fit(error: Exception) -> DoesNotFit | None:
    """The DoesNotFit an XLA compile error means, or None for any other error."""
    text = str(error)
    found = next(filter(None, (r.search(text) for r in _REFUSALS)), None)
    if "RESOURCE_EXHAUSTED" not in text or not found:
        return None
    used = float(found.group(1)) * _UNITS[found.group(2)]
    capacity = float(found.group(3)) * _UNITS[found.group(4)]
    return DoesNotFit(int(used), int(capacity), text.splitlines()[0])


def fit_line(peak: int, capacity: int) -> str:
    """`fits: ...` or `does not fit: ...`, by how much, against the chip's HBM."""
    if peak <= capacity:
        return (
            f"fits: {peak / GiB:.2f} of {capacity / GiB:.2f} GiB HBM per chip "
            f"({(capacity - peak) / GiB:.2f} GiB left)"
        )
    return (
        f"does not fit: {peak / GiB:.2f} GiB per chip, {(peak - capacity) / GiB:.2f} GiB over "
        f"the chip's {capacity / GiB:.2f} GiB HBM"
    )

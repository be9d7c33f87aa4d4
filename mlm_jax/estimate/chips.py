"""Cloud TPU chips by their datasheets, and slice names such as `v5e:4x4`.

Figures are Google's per-chip datasheet values (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
/v6e, read 2026-12): HBM capacity and bandwidth, and the inter-chip interconnect (ICI)
bandwidth each chip sends at (half the bidirectional figure). The bf16 peaks come from
mlm_jax.models.flops.DATASHEET_BF16, the one table of peaks (benchmark MFU uses it too).
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation as the estimate needs it."""

    name: str  # the generation as topology names spell it: v4, v5e, v5p, v6e
    hbm_bytes: int  # capacity per chip
    hbm_bandwidth: float  # bytes per second per chip
    ici_bandwidth: float  # bytes per second a chip sends over its links (one direction)
    chips_per_host: int  # of a full host (Cloud TPU VM)
    source: str  # where the figures come from
    megacore: bool = False  # two TensorCores a chip, run as one device (as a TPU VM runs them)


GiB = 2**30
CHIPS = {
    # v4: 32 GiB, 1200 GBps; ICI per chip not on the page: 6 links x 50 GB/s per direction (the
    # v4 paper, Jouppi et al. 2023): 300 GB/s. The page's 24 TB/s pod bisection agrees: a
    # 16x16x16 torus cut in half crosses 2 x 16 x 16 = 512 links, 47 GB/s each.
    "v4": Chip("v4", 32 * GiB, 1200e9, 300e9, 4, "cloud.google.com/tpu/docs/v4", megacore=True),
    # v5e: 16 GB, 819 GBps, ICI 1600 Gbps (400 GBps bidirectional).
    "v5e": Chip("v5e", 16 * GiB, 819e9, 200e9, 8, "cloud.google.com/tpu/docs/v5e"),
    # v5p: 95 GB, 2765 GBps, ICI 4800 Gbps.
    "v5p": Chip("v5p", 95 * GiB, 2765e9, 600e9, 4, "cloud.google.com/tpu/docs/v5p", megacore=True),
    # v6e (Trillium): 32 GB, 1638 GBps, ICI 800 GBps bidirectional.
    "v6e": Chip("v6e", 32 * GiB, 1638e9, 400e9, 8, "cloud.google.com/tpu/docs/v6e"),
}

_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[Chip, int]:
    """`v5e:4x4` -> (the v5e Chip, 16 chips); ValueError naming what is expected."""
    found = _TOPOLOGY.match(name)
    if not found:
        raise ValueError(
            f"{name!r}: expected GENERATION:SHAPE with GENERATION one of "
            f"{', '.join(CHIPS)} and SHAPE such as 2x2, 4x4 or 2x2x1 (v4, v5p)"
        )
    chips = math.prod(int(d) for d in found.group(2).split("x"))
    return CHIPS[found.group(1)], chips


def hosts_of(chip: Chip, num_chips: int) -> int:
    """Hosts (TPU VMs) of a slice: each feeds its own rows, which the mesh checks need."""
    return max(1, num_chips // chip.chips_per_host)

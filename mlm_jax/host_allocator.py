"""On a host without accelerators, glibc's malloc keeps the memory it frees, so XLA:CPU reuses
its large per-step buffers instead of faulting fresh pages in for them every step.

glibc serves an allocation above its mmap threshold (32 MB at most) with a fresh mapping and
unmaps it on free, and each of XLA's compute threads gets a malloc arena of its own whose heaps
are mapped the same way. XLA:CPU allocates a step's large temporaries anew each step, so every
step faulted them in again: ~115k page faults a step at the BERT tiny peer shape, a third of
its system time. One arena, no mmap and no trimming keep freed buffers in the heap for the next
step, as tcmalloc does (docs/performance.md has the measurements). The costs: the process keeps
its peak heap (max RSS 7-26 % higher at the tiny peer shapes), and XLA's compiler threads share
the one arena (the ModernBERT tiny step compiled in 5.5-6.9 s against 4.3-4.7 s), which is why
the test suite, many compiles and few steps, opts out. Large models gain nothing: BERT-large's
float32 CPU step faulted as often either way, and ran 8-9 % slower kept in one session, 4-5 %
faster in another.

Applied when mlm_jax is imported, before JAX starts its CPU threads (a thread takes its arena at
its first malloc, so later is too late). Not applied where an accelerator's device files exist
(/dev/nvidia*, /dev/accel*, /dev/vfio/*: the step's buffers are on the device there) unless
JAX_PLATFORMS=cpu, not without glibc, and not with MLM_JAX_MALLOC=system.
"""

from __future__ import annotations

import ctypes
import glob
import os

# mallopt's parameters (glibc's malloc.h) and the values set.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
OPT_OUT = "MLM_JAX_MALLOC"  # =system: leave glibc's malloc as it is
ACCELERATOR_FILES = ("/dev/nvidia[0-9]*", "/dev/accel*", "/dev/vfio/[0-9]*")


def _computes_on_cpu() -> bool:
    """No accelerator JAX would use: none attached, or JAX_PLATFORMS names only the CPU."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return True
    return not any(glob.glob(pattern) for pattern in ACCELERATOR_FILES)


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep what it frees, where that applies; True if it did."""
    if os.environ.get(OPT_OUT, "").strip().lower() == "system" or not _computes_on_cpu():
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl and macOS differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)

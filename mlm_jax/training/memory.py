"""Parameter and optimizer memory per device, known before anything is allocated.

A model too large for its devices used to die in an allocation failure (SIGABRT) or an OOM
traceback, after minutes of data preparation and compilation. Here the run's own train state
is traced abstractly (jax.eval_shape of the Trainer's initialisation, placed with the run's
shardings, so fsdp and tensor parallelism count), its bytes per device summed, and compared
with what a device has: one line when even parameters and Adam's moments cannot fit. The
activations come on top, so a config that passes may still run out at its first step; one that
fails here never could run.
"""

from __future__ import annotations

import dataclasses
import math
import os

from mlm_jax.config.errors import ConfigError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Estimate:
    params: int  # bytes of the parameters on the fullest device
    optimizer: int  # bytes of the optimizer state (Adam's moments, counters) on that device
    available: int  # bytes one device has
    devices: str  # what they are, for messages

    @property
    def needed(self) -> int:
        return self.params + self.optimizer

    def describe(self) -> str:
        return (
            f"memory per device: parameters {self.params / GiB:.2f} GiB + optimizer state "
            f"{self.optimizer / GiB:.2f} GiB = {self.needed / GiB:.2f} GiB, of the "
            f"{self.available / GiB:.1f} GiB a device has ({self.devices}; activations not counted)"
        )


def estimate(run, vocab_size: int) -> Estimate:
    """The estimate for `run` with a vocabulary of `vocab_size` (the tokenizer's, or the most
    the config asks for when the tokenizer is not known yet)."""
    import jax

    from mlm_jax.training.trainer import Trainer

    if not run.model.vocab_size:
        run = dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=vocab_size))
    state = Trainer(run).abstract_state
    params, optimizer = (_bytes_on_one_device(t) for t in (state.params, state.opt_state))
    return Estimate(params, optimizer, *_device_memory(jax.local_devices()[0]))


def _bytes_on_one_device(tree) -> int:
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def _device_memory(device) -> tuple[int, str]:
    """(bytes one device has, what the devices are): an accelerator's own limit, or for CPU
    devices the machine's memory shared among this process's CPU devices."""
    import jax

    count = jax.local_device_count()
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{count} x {device.device_kind} on this host"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // count, f"this machine's memory over {count} CPU device(s)"


def vocab_upper_bound(run) -> tuple[int, str]:
    """(the vocabulary size to estimate with, the key it comes from) before the tokenizer is
    loaded: model.vocab_size, else a store's or data.tokenizer's size (cheap to read), else
    data.vocab_size, the most a trained vocabulary can hold."""
    from mlm_jax.data import rows, sources
    from mlm_jax.data.tokenizer import load_tokenizer

    if run.model.vocab_size:
        return run.model.vocab_size, "model.vocab_size"
    if sources.holds_rows(run.data.dataset):
        manifest = rows.read_manifest(rows.store_dir(run.data.dataset))
        return int(manifest["tokenizer"].get("vocab_size", 0)) or 1, "data.dataset's tokenizer"
    if run.data.tokenizer:
        return load_tokenizer(run.data.tokenizer).vocab_size, "data.tokenizer"
    return run.data.vocab_size, "data.vocab_size"


def check_fits(run, vocab_size: int, vocab_key: str) -> Estimate:
    """One ConfigError line if parameters and optimizer state alone exceed a device."""
    found = estimate(run, vocab_size)
    if found.needed > found.available:
        m = run.model
        raise ConfigError(
            f"the model (model.num_layers={m.num_layers}, model.hidden_size={m.hidden_size}, "
            f"{vocab_key}={vocab_size}) needs {found.needed / GiB:.1f} GiB per device for its "
            f"parameters ({found.params / GiB:.1f} GiB) and optimizer state alone, more than "
            f"the {found.available / GiB:.1f} GiB a device has ({found.devices}); shrink it, "
            "or shard it over more devices (config.mesh.fsdp)"
        )
    return found

"""The real train and eval steps compiled for a Cloud TPU slice on a machine without one.

libtpu (pip install libtpu; the version jax[tpu] pins) holds XLA's TPU compiler. JAX's
topology API describes a slice's chips to it (`get_topology_desc`), the steps are lowered from
abstract shapes sharded over a mesh of those chips, and XLA compiles them exactly as on the
slice: its sharding passes, its fusions, its memory assignment. Nothing runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax

from mlm_jax import cli
from mlm_jax.estimate.chips import Chip, parse_topology

LIBTPU = "libtpu==0.0.42.1"  # XLA's TPU compiler: the version jax[tpu]==0.10.2 pins

# libtpu's process lock guards a TPU a process drives; compiling drives none, and any other
# JAX process on the machine that found libtpu holds the lock. The two TPU_ values only stand
# in for what a TPU VM's metadata server would say, which libtpu asks for (and warns without).
_LIBTPU_ENV = {
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
    "TPU_WORKER_HOSTNAMES": "localhost",
}


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice as XLA's compiler sees it."""

    name: str  # as given: v5e:4x4
    chip: Chip
    devices: tuple  # jax TPU devices of the topology (compile targets, not runnable)

    @property
    def num_chips(self) -> int:
        return len(self.devices)

    @property
    def device_kind(self) -> str:
        return self.devices[0].device_kind


def tpu_slice(name: str) -> Slice:
    """The slice `name` (`v5e:2x2`) described to libtpu; ValueError for a name it cannot be."""
    chip, num_chips = parse_topology(name)
    if not libtpu_installed():
        install = f"{cli.TEST_REQUIREMENTS} (or pip install {LIBTPU})"
        raise ValueError(cli.missing_package("libtpu", install, f"--topology={name}"))
    for key, value in _LIBTPU_ENV.items():
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    # v4 and v5p: without "megacore", libtpu describes each of a chip's 2 TensorCores as a
    # device; JAX on a v4 or v5p VM sees one device a chip.
    kwargs = {"chip_config_name": "megacore"} if chip.megacore else {}
    topology = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
    devices = tuple(topology.devices)
    if len(devices) != num_chips:
        raise ValueError(f"{name}: libtpu describes {len(devices)} devices, {num_chips} chips")
    return Slice(name, chip, devices)


def compile_eval_step(trainer, name: str = "eval", compiler_options=None):
    """The eval step ("eval": the common masking; "eval_own": the run's) compiled for the
    trainer's devices, on an eval batch of the config's size."""
    from mlm_jax import masking
    from mlm_jax.training.synthetic import abstract_batch

    spec = trainer.run.eval_masking if name == "eval" else trainer.run.masking
    batch = abstract_batch(trainer, trainer.run.train.eval_batch_size)
    key = jax.eval_shape(lambda: jax.random.key(0))
    ratio = jax.eval_shape(lambda: masking.scheduled_ratio(0, spec))
    with trainer.activate():
        params = trainer.abstract_state.params
        lowered = trainer.jitted(name).lower(params, batch, trainer.tables, key, ratio)
        return lowered.compile(compiler_options=compiler_options)

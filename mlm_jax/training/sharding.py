"""The device mesh from the config, and shardings derived from logical axis names.

The model names only logical axes (batch, embed, heads, ...); `config.mesh.logical_axis_rules`
maps them to the mesh axes `data`, `fsdp` and `tensor`. A data-only mesh is plain data
parallelism (what pmap gave); an `fsdp` axis shards parameters and optimizer state (ZeRO-3);
a `tensor` axis splits heads and MLP columns (Megatron). Changing the mesh is a config edit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
    """Resolves -1 in config.mesh to the devices left over and checks the product."""
    sizes = [int(mesh_config[a]) for a in MESH_AXES]
    shown = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"config.mesh ({shown}): at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh ({shown}): sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"config.mesh ({shown}) does not divide the {num_devices} visible devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh ({shown}) needs {math.prod(sizes)} devices but {num_devices} are visible"
        )
    return tuple(sizes)


Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """config.mesh resolved for a device count: axis sizes and the logical axis rules."""

    shape: tuple[int, int, int]  # sizes of MESH_AXES
    rules: Rules  # logical axis name -> mesh axes

    @classmethod
    def from_config(cls, mesh_config, num_devices: int) -> MeshSpec:
        return cls(mesh_shape(mesh_config, num_devices), logical_rules(mesh_config))

    @property
    def sizes(self) -> dict[str, int]:
        return dict(zip(MESH_AXES, self.shape))

    @property
    def data_parallel_size(self) -> int:
        """How many ways a global batch is split: the global batch must divide by it."""
        return math.prod(self.sizes[a] for a in batch_axes(self.rules))


def make_mesh(spec: MeshSpec, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    if math.prod(spec.shape) != len(devices):
        raise ValueError(
            f"mesh {spec.sizes} needs {math.prod(spec.shape)} devices, got {len(devices)}"
        )
    # Auto axes: shardings are chosen by the compiler from the in/out shardings and the
    # model's logical constraints, as in the pjit model.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(spec.shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_rules(mesh_config) -> Rules:
    """config.mesh.logical_axis_rules as the tuple of pairs Flax expects."""
    rules = []
    for name, axes in mesh_config.logical_axis_rules:
        if isinstance(axes, list):
            axes = tuple(axes)
        rules.append((name, axes))
    return tuple(rules)


def batch_axes(rules) -> tuple[str, ...]:
    """Mesh axes the logical `batch` axis is split over."""
    for name, axes in rules:
        if name == "batch":
            if axes is None:
                return ()
            return (axes,) if isinstance(axes, str) else tuple(axes)
    return ()


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
    """Leading (batch) dimension split over the data axes, the rest replicated."""
    return NamedSharding(mesh, P(batch_axes(rules) or None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def logical_shardings(boxed_tree, mesh: Mesh, rules):
    """NamedShardings for a tree whose leaves carry logical names (nn.Partitioned boxes)."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def host_to_global(host_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Per-host numpy slices -> one global jax.Array per key, split on the batch axis.

    Every host passes its own consecutive slice; the global batch is their concatenation in
    process order.
    """
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in host_batch.items()
    }

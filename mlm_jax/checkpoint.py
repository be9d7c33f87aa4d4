"""Orbax checkpoints of a run: train state, per-host data iterator state and the config.

Layout: `workdir/checkpoints/<step>/` holds `state/` (the TrainState pytree, restored
already sharded), `data/` (one JSON file per host: where its input iterator stands) and
`config/` (the resolved config). Orbax writes each step into a temporary folder and renames it
when complete, so a process killed mid-write leaves no numbered folder behind and the next start
takes the last complete one.
"""

from __future__ import annotations

import json
import logging
import os

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


class IteratorState:
    """A saved position of a data iterator, in the shape grain's checkpoint handler wants.

    The trainer fetches the next batch before the current step ends, so the position to save
    is captured when a batch is drawn, not read from the live iterator at save time.
    """

    def __init__(self, state: dict | None = None):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)

    def start_prefetch(self) -> None:  # called by grain's handler after a restore
        pass


def checkpoint_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINT_DIR


def make_manager(workdir: str, config, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(config.checkpoint.keep) if config is not None else None,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir),
        options=options,
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": grain.checkpoint.CheckpointHandler(),
            "config": ocp.JsonCheckpointHandler(),
        },
    )


def unfinished_writes(workdir: str) -> list[str]:
    """Names of checkpoint folders a killed process left half-written."""
    d = checkpoint_dir(workdir)
    if not d.exists():
        return []
    return sorted(p.name for p in d.iterdir() if "tmp" in p.name)


def latest_step(workdir: str) -> int | None:
    """The newest complete checkpoint's step, without opening a manager."""
    d = checkpoint_dir(workdir)
    if not d.exists():
        return None
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None


def save(manager, step: int, state, data_state: dict, config) -> None:
    """Starts an asynchronous save of one step; returns once the arrays are copied."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(IteratorState(data_state)),
            config=ocp.args.JsonSave(config.to_dict()),
        ),
        force=True,
    )


def restore(manager, step: int, abstract_state) -> tuple:
    """(state, data_state) of `step`, the state placed with the shardings of `abstract_state`."""
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(IteratorState()),
        ),
    )
    return restored["state"], restored["data"].state


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The resolved config a workdir's run was started with (None for a fresh workdir)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_trained(workdir: str, step: int | None = None):
    """(params, config) of a run's latest (or given) checkpoint, as host arrays.

    For tools that use a trained model (export, fill-mask, fine-tuning); the optimizer state
    is not read.
    """
    step = latest_step(workdir) if step is None else step
    if step is None:
        raise ValueError(f"no checkpoint under {checkpoint_dir(workdir)}")
    path = checkpoint_dir(workdir) / str(step)
    with open(path / "config" / "metadata") as f:
        config = ml_collections.ConfigDict(json.load(f))
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path / "state")
    tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), dict(tree)["params"]
    )
    restored = checkpointer.restore(
        path / "state",
        args=ocp.args.PyTreeRestore(
            item={"params": target},
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(), {"params": target}),
            partial_restore=True,
        )
        if _supports_partial_restore()
        else None,
    )
    log.info("loaded step %d of %s", step, workdir)
    return restored["params"], config


def _supports_partial_restore() -> bool:
    import inspect

    return "partial_restore" in inspect.signature(ocp.args.PyTreeRestore).parameters

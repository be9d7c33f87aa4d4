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
import socket

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mlm_jax import files

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's in-progress step folders end so


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


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, unwritable directory, ...)."""


def checkpoint_dir(workdir: str) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINT_DIR


def make_manager(workdir: str, *, keep: int | None = None, read_only: bool = False):
    """An orbax manager of workdir/checkpoints keeping the newest `keep` steps (None: all)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
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
    """Names of checkpoint folders a killed process left half-written.

    Orbax writes step N into `N.orbax-checkpoint-tmp...` and renames it when complete (on file
    systems without atomic rename, a complete step holds commit_success.txt instead). Call this
    before make_manager: the manager deletes such folders when it opens the directory.
    """
    d = checkpoint_dir(workdir)
    if not d.exists():
        return []
    found = []
    for p in d.iterdir():
        if TMP_SUFFIX in p.name:
            found.append(p.name)
        elif p.name.isdigit() and (p / "state").exists() and not _committed(p):
            found.append(p.name)
    return sorted(found)


def _committed(step_dir: epath.Path) -> bool:
    # Renamed folders are complete by construction; commit_success.txt marks the others.
    return (step_dir / "_CHECKPOINT_METADATA").exists() or (
        step_dir / "commit_success.txt"
    ).exists()


def check_writable(workdir: str) -> None:
    """One ValueError line, before anything compiles, if the run could not save its work."""
    # Every host probes the shared workdir at once: the name must be this process's alone.
    name = f".write_probe_{socket.gethostname()}_{os.getpid()}"
    for directory in (workdir, os.fspath(checkpoint_dir(workdir))):
        probe = files.join(directory, name)
        try:
            files.makedirs(directory)
            files.write_text(probe, "ok")
            files.remove(probe)
        except Exception as e:  # OSError locally; the storage client's own errors in a bucket
            reason = getattr(e, "strerror", None) or " ".join(str(e).split())[:200]
            raise ValueError(f"workdir {workdir!r}: cannot write to {directory} ({reason})") from e


def latest_step(workdir: str) -> int | None:
    """The newest complete checkpoint's step, without opening a manager."""
    d = checkpoint_dir(workdir)
    if not d.exists():
        return None
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit() and _committed(p)]
    return max(steps) if steps else None


def save(manager, step: int, state, data_state: dict, config) -> None:
    """Starts an asynchronous save of one step; returns once the arrays are copied.

    Waits for the previous save first (orbax does), so an error of that one surfaces here too.
    """
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(IteratorState(data_state)),
                config=ocp.args.JsonSave(config.to_dict()),
            ),
            force=True,
        )
    except Exception as e:
        raise _write_error(manager, step, e) from e


def wait_until_finished(manager) -> None:
    """Blocks until every started save is on disk; a failed one becomes CheckpointWriteError."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        raise _write_error(manager, None, e) from e


def _write_error(manager, step, error: Exception) -> CheckpointWriteError:
    what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
    detail = " ".join(str(error).split())[:300] or type(error).__name__
    kept = manager.latest_step()
    return CheckpointWriteError(
        f"could not write {what} to {manager.directory} ({type(error).__name__}: {detail}); "
        f"the last complete checkpoint is step {kept}"
    )


def restore(manager, step: int, abstract_state) -> tuple:
    """(state, data_state) of `step`, the state placed with the shardings of `abstract_state`.

    grain saves one iterator file per host, `process_<i>-of-<n>.json`. Every host saves the
    same position (the index of the next *global* batch), so a run restored on another host
    count reads host 0's file.
    """
    data_dir = epath.Path(manager.directory) / str(step) / "data"
    own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if own.exists():
        args["data"] = grain.checkpoint.CheckpointRestore(IteratorState())
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    if own.exists():
        return restored["state"], restored["data"].state
    saved = sorted(data_dir.glob("process_0-of-*.json"))
    if not saved:
        raise FileNotFoundError(f"{data_dir}: no data iterator state (process_0-of-N.json)")
    log.info("data iterator position from %s (written by a run on another host count)", saved[0])
    return restored["state"], json.loads(saved[0].read_text())


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The resolved config a workdir's run was started with (None for a fresh workdir)."""
    path = files.join(workdir, "config.json")
    if not files.exists(path):
        return None
    return ml_collections.ConfigDict(json.loads(files.read_text(path)))


def load_trained(workdir: str, step: int | None = None):
    """(params, config) of a run's latest (or given) checkpoint: params as host numpy arrays.

    For tools that use a trained model (export, fill-mask, fine-tuning) on any machine: the
    arrays are read into numpy whatever mesh or device count wrote them, and the optimizer
    state is not read.
    """
    step = latest_step(workdir) if step is None else int(step)
    path = checkpoint_dir(workdir) / str(step)
    if step is None or not (path / "state").exists():
        raise FileNotFoundError(f"no complete checkpoint under {checkpoint_dir(workdir)}")
    config_file = path / "config" / "metadata"
    if config_file.exists():
        config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    else:
        config = saved_config(workdir)
        if config is None:
            raise FileNotFoundError(f"{path}: no config/ item and no {workdir}/config.json")
    # The item's handler, not a Checkpointer: a Checkpointer looks for step metadata inside the
    # item's folder and warns that it is missing (it lives one level up).
    handler = ocp.PyTreeCheckpointHandler()
    try:
        params_meta = dict(handler.metadata(path / "state"))["params"]
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params_meta)
        placeholders = jax.tree.map(lambda _: np.zeros((), np.float32), params_meta)
        restored = handler.restore(
            path / "state",
            args=ocp.args.PyTreeRestore(
                item={"params": placeholders},
                restore_args={"params": as_numpy},
                partial_restore=True,
            ),
        )
    finally:
        handler.close()
    log.info("loaded the parameters of step %d of %s", step, workdir)
    return restored["params"], config

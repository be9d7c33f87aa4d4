"""Orbax checkpoints of a run: train state, per-host data iterator state and the config.

Layout: `workdir/checkpoints/<step>/` holds `state/` (the TrainState pytree, restored
already sharded), `data/` (one JSON file per host: where its input iterator stands), `config/`
(the resolved config) and `fingerprint/` (integer checksums of every array of the state).
Orbax writes each step into a temporary folder and renames it when complete, so a process
killed mid-write leaves no numbered folder behind and the next start takes the last complete
one. Restoring recomputes the fingerprint: a checkpoint whose bytes were damaged after it was
written, or that cannot be read, is set aside (renamed, never deleted) with one warning and the
run resumes from the newest intact one; it never trains from damaged bytes.
"""

from __future__ import annotations

import contextlib
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
            "fingerprint": ocp.JsonCheckpointHandler(),
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
    # Folders the probe had to make go again (a probe is not a run's first write).
    name = f".write_probe_{socket.gethostname()}_{os.getpid()}"
    made = []
    for directory in (workdir, os.fspath(checkpoint_dir(workdir))):
        probe = files.join(directory, name)
        try:
            if not files.is_remote(directory) and not os.path.isdir(directory):
                made.append(directory)
            files.makedirs(directory)
            files.write_text(probe, "ok")
            files.remove(probe)
        except Exception as e:  # OSError locally; the storage client's own errors in a bucket
            reason = getattr(e, "strerror", None) or " ".join(str(e).split())[:200]
            raise ValueError(f"workdir {workdir!r}: cannot write to {directory} ({reason})") from e
    for directory in reversed(made):
        with contextlib.suppress(OSError):  # (another host may have written into it already)
            os.rmdir(directory)


def latest_step(workdir: str) -> int | None:
    """The newest complete checkpoint's step, without opening a manager."""
    d = checkpoint_dir(workdir)
    if not d.exists():
        return None
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit() and _committed(p)]
    return max(steps) if steps else None


def save(manager, step: int, state, data_state: dict, config, replicated) -> None:
    """Starts an asynchronous save of one step; returns once the arrays are copied.

    Waits for the previous save first (orbax does), so an error of that one surfaces here too;
    `pending_step` tells the loop which step a later error belongs to. replicated: a sharding
    replicated over the run's mesh, for the fingerprint.
    """
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(IteratorState(data_state)),
                config=ocp.args.JsonSave(config.to_dict()),
                fingerprint=ocp.args.JsonSave(fingerprint(state, replicated)),
            ),
            force=True,
        )
    except Exception as e:
        raise _write_error(manager, step, e) from e


def check_saved(manager, step: int) -> None:
    """Raises CheckpointWriteError naming `step` if its (asynchronous) save has failed."""
    try:
        manager.check_for_errors()
    except Exception as e:
        raise _write_error(manager, step, e) from e


# ----------------------------------------------------------------------------- fingerprints


def _leaf_checksums(x):
    """[sum, position-weighted sum] of x's bits as uint32, wrapping: integer sums give the same
    value however the array is sharded and summed, unlike float sums."""
    import jax.numpy as jnp

    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
        bits = x.astype(jnp.uint32)
    index = jax.lax.iota(jnp.uint32, bits.size).reshape(bits.shape)
    weights = index * jnp.uint32(2654435761) + jnp.uint32(1)  # Knuth's multiplicative hash
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)])


_FINGERPRINT_FNS: dict = {}


def fingerprint(state, replicated) -> dict[str, list[int]]:
    """Per-leaf checksums of `state`, computed on device: path -> [sum, weighted sum]."""
    fn = _FINGERPRINT_FNS.get(replicated)
    if fn is None:
        fn = _FINGERPRINT_FNS[replicated] = jax.jit(
            lambda tree: jax.tree.map(_leaf_checksums, tree), out_shardings=replicated
        )
    sums = fn(state)
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]:
        local = np.asarray(value.addressable_shards[0].data)  # replicated: any shard is all of it
        out[jax.tree_util.keystr(path)] = [int(v) for v in local]
    return out


class DamagedCheckpoint(ValueError):
    """A checkpoint whose arrays differ from the fingerprint saved with them."""


def restore_newest_intact(manager, abstract_state, replicated):
    """(step, state, data_state) of the newest checkpoint that reads and matches its
    fingerprint, or None if there is none. Each newer one that does not is set aside."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, data_state = restore(manager, step, abstract_state, replicated)
            return step, state, data_state
        except Exception as e:  # unreadable, truncated, or damaged: never train from it
            kept = _set_aside(manager, step)
            detail = " ".join(str(e).split())[:200] or type(e).__name__
            log.warning(
                "the checkpoint of step %d is damaged or incomplete (%s: %s); set aside as %s, "
                "resuming from an earlier one",
                step,
                type(e).__name__,
                detail,
                kept,
            )
    return None


def _set_aside(manager, step: int) -> str:
    """Renames checkpoints/<step> to checkpoints/<step>.damaged (another suffix if taken)."""
    source = epath.Path(manager.directory) / str(step)
    target = source.with_name(f"{step}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = source.with_name(f"{step}.damaged{n}")
    if jax.process_index() == 0:
        source.rename(target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"mlm_jax: set aside checkpoint {step}")
    manager.reload()
    return os.fspath(target)


def wait_until_finished(manager, step: int | None = None) -> None:
    """Blocks until every started save is on disk; a failed one becomes CheckpointWriteError
    (naming `step`, the last one started)."""
    try:
        manager.wait_until_finished()
    except Exception as e:
        raise _write_error(manager, step, e) from e


def _write_error(manager, step, error: Exception) -> CheckpointWriteError:
    what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
    detail = " ".join(str(error).split())[:300] or type(error).__name__
    kept = manager.latest_step()
    return CheckpointWriteError(
        f"could not write {what} to {manager.directory} ({type(error).__name__}: {detail}); "
        f"the last complete checkpoint is step {kept}"
    )


def restore(manager, step: int, abstract_state, replicated) -> tuple:
    """(state, data_state) of `step`, the state placed with the shardings of `abstract_state`,
    checked against the fingerprint saved with it (DamagedCheckpoint if they differ).

    grain saves one iterator file per host, `process_<i>-of-<n>.json`. Every host saves the
    same position (the index of the next *global* batch), so a run restored on another host
    count reads host 0's file.
    """
    step_dir = epath.Path(manager.directory) / str(step)
    data_dir = step_dir / "data"
    own = data_dir / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if own.exists():
        args["data"] = grain.checkpoint.CheckpointRestore(IteratorState())
    has_fingerprint = (step_dir / "fingerprint").exists()
    if has_fingerprint:
        args["fingerprint"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    state = restored["state"]
    if has_fingerprint:
        saved, now = restored["fingerprint"], fingerprint(state, replicated)
        differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if differ:
            raise DamagedCheckpoint(f"arrays differ from their fingerprint: {differ[:3]}")
    if own.exists():
        return state, restored["data"].state
    saved_positions = sorted(data_dir.glob("process_0-of-*.json"))
    if not saved_positions:
        raise FileNotFoundError(f"{data_dir}: no data iterator state (process_0-of-N.json)")
    log.info("data position from %s (written by a run on another host count)", saved_positions[0])
    return state, json.loads(saved_positions[0].read_text())


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The resolved config a workdir's run was started with (None for a fresh workdir): the
    newest checkpoint's own copy, else config.json."""
    directory = checkpoint_dir(workdir)
    names = [p.name for p in directory.iterdir()] if directory.exists() else []
    for step in sorted((int(n) for n in names if n.isdigit()), reverse=True):
        path = directory / str(step) / "config" / "metadata"
        try:
            return ml_collections.ConfigDict(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # unreadable: an older checkpoint or config.json says it
    path = files.join(workdir, "config.json")
    if not files.exists(path):
        return None
    try:
        return ml_collections.ConfigDict(json.loads(files.read_text(path)))
    except ValueError as e:
        raise ValueError(f"{path}: not the JSON config this project writes ({e})") from None


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
    except (OSError, ValueError, RuntimeError) as e:  # tensorstore: truncated, missing, ...
        detail = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{path}: the checkpoint does not read ({detail})") from None
    finally:
        handler.close()
    _check_params_fingerprint(path, restored["params"])
    log.info("loaded the parameters of step %d of %s", step, workdir)
    return restored["params"], config


def _check_params_fingerprint(step_dir: epath.Path, params) -> None:
    """The parameters read for a tool (export, fill_mask, init_from) are the ones saved: their
    checksums against the fingerprint saved with them (checkpoints older than it: unchecked)."""
    saved_file = step_dir / "fingerprint" / "metadata"
    if not saved_file.exists():
        return
    saved = json.loads(saved_file.read_text())
    sums = jax.jit(lambda tree: jax.tree.map(_leaf_checksums, tree))(params)
    for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]:
        name = jax.tree_util.keystr(path)
        key = next((k for k in (f".params{name}", f"['params']{name}") if k in saved), None)
        if key is not None and saved[key] != [int(v) for v in np.asarray(value)]:
            raise ValueError(
                f"{step_dir}: damaged checkpoint (the parameter {name} differs "
                "from the fingerprint saved with it); resuming the run sets it aside and goes "
                "back to an earlier one"
            )

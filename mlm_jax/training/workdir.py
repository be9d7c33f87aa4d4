"""A run owns its workdir: nobody else's files in it, and one run in it at a time.

- Ownership: a workdir is this project's when it holds the lock file below (or, written before
  it existed, checkpoints/). A non-empty workdir that is not is refused, so a run never writes
  over a user's own config.json or metrics.jsonl.
- The lock: WORKDIR/.mlm_jax.lock, held for the run's life (mlm_jax/locks.py: a flock on a
  local disk, a lapsing lease in a bucket); a second run meets one line naming the holder.

Only process 0 takes the lock: the other hosts of a run are the same run.
"""

from __future__ import annotations

from mlm_jax import files
from mlm_jax.locks import LEASE_S, LOCK_FILE, WorkdirLock, live_holder  # noqa: F401 - re-exported

# A workdir holding one of these is this project's (tokenizer/ and checkpoints/: runs that
# predate the lock file). A sweep writes the other names into a run's folder before the run.
OWNED_BY = (LOCK_FILE, "checkpoints", "tokenizer")
BEFORE_A_RUN = frozenset({"sweep.log", "sweep_done.json", "sweep_failed.json"})


def check_owned(workdir: str) -> None:
    """One ValueError line if `workdir` holds files this project did not write."""
    if not files.isdir(workdir):
        if files.exists(workdir):
            raise ValueError(f"workdir {workdir!r}: a file, not a directory")
        return
    names = files.listdir(workdir)
    if any(name in names for name in OWNED_BY):
        return
    foreign = sorted(n for n in names if n not in BEFORE_A_RUN and not n.startswith(".write_probe"))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"workdir {workdir!r} holds files this project did not write ({shown}); use an empty "
            "or new workdir, so that none of them is overwritten"
        )

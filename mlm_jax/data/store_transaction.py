"""A prepare as a transaction: one prepare per store, built aside, published whole or not at all.

- The lock: `<out>/.prepare.lock`, the run's workdir lock (mlm_jax/locks.py: a flock on a
  local disk, a lapsing lease in a bucket), so a second prepare into the same folder stops at
  once with one line naming the first.
- The build: on a local disk into a hidden folder inside `<out>`, whose tokenizer and shards
  are renamed into `<out>` only once every shard is written, and the manifest (what makes a
  store a store) last. In a bucket, where nothing renames, objects are written in place, the
  manifest last.
- Leftovers: whatever an interrupted prepare wrote (tokenizer/, shards, hidden folders) is
  removed by the next one, under the lock, before it writes anything, so a store never mixes
  two attempts (one tokenizer, another's manifest). A failed or interrupted prepare removes
  its own at once; a folder it made is removed whole.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator

from etils import epath

from mlm_jax import files
from mlm_jax.data import rows
from mlm_jax.locks import WorkdirLock

LOCK_FILE = ".prepare.lock"
_SHARD = re.compile(r"(train|heldout)-\d{5}-of-\d{5}\.array_record")


def _written_by_prepare(name: str) -> bool:
    return (
        name in (LOCK_FILE, rows.TOKENIZER_DIR, rows.MANIFEST)
        or name.startswith(".tmp-")
        or bool(_SHARD.fullmatch(name))
    )


class _PrepareLock(WorkdirLock):
    """The workdir lock on `<out>/.prepare.lock`, whose busy message names a prepare."""

    def __init__(self, out: str):
        super().__init__(out)
        self.out, self.path = out, files.join(out, LOCK_FILE)

    def _busy(self, holder: dict) -> str:
        started = time.strftime("%H:%M:%S", time.localtime(holder.get("started", 0)))
        return (
            f"--out={self.out}: another prepare is writing this store (host "
            f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {started}); "
            "wait for it to finish, or choose another folder"
        )


def _check_out(out: str) -> None:
    if files.exists(out) and not files.isdir(out):
        raise ValueError(f"--out={out}: a file, not a folder")
    if files.exists(files.join(out, rows.MANIFEST)):
        raise ValueError(f"--out={out}: already holds a prepared store; choose another folder")
    theirs = [n for n in files.listdir(out) if not _written_by_prepare(n)]
    if theirs:
        shown = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
        raise ValueError(
            f"--out={out} holds files prepare did not write ({shown}); use an empty or new "
            "folder, so that none of them is overwritten"
        )


def _remove_leftovers(out: str) -> None:
    """Removes what a prepare writes, but the lock, from `out`."""
    for name in files.listdir(out):
        if name == LOCK_FILE or not _written_by_prepare(name):
            continue
        path = files.join(out, name)
        if files.is_remote(path):
            target = epath.Path(path)
            target.rmtree() if target.is_dir() else target.unlink(missing_ok=True)
        elif os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


@contextlib.contextmanager
def transaction(out: str) -> Iterator[str]:
    """Holds the store's lock and yields the folder to build it in (the manifest too); on
    leaving the block the store is published (local: renamed into `out`, manifest last). On
    an error or an interrupt nothing stays but what `out` held before."""
    made = not files.exists(out)
    files.makedirs(out)
    published = False
    try:
        with _PrepareLock(out):
            _check_out(out)
            _remove_leftovers(out)  # an interrupted prepare's: this one starts clean
            staging = out if files.is_remote(out) else os.path.join(out, f".tmp-{uuid.uuid4().hex}")
            files.makedirs(staging)
            try:
                yield staging
                raise_if_stopped()  # a SIGTERM whose exception Python swallowed publishes nothing
                if staging != out:
                    _publish_local(staging, out)
                published = True
            finally:
                if not published:
                    _remove_leftovers(out)
    finally:
        if not published and made and not files.is_remote(out):
            shutil.rmtree(out, ignore_errors=True)


def _publish_local(staging: str, out: str) -> None:
    names = sorted(os.listdir(staging))
    if rows.MANIFEST not in names:
        raise RuntimeError(f"{staging}: the pipeline ended without writing {rows.MANIFEST}")
    for name in [n for n in names if n != rows.MANIFEST] + [rows.MANIFEST]:
        os.replace(os.path.join(staging, name), os.path.join(out, name))
    os.rmdir(staging)


_stopped_by: list[str] = []  # the signal that interrupts_raise received, if any


def raise_if_stopped() -> None:
    """Raises the interrupt again if its first raise was lost: a signal handler's exception
    that lands in a garbage-collection callback or a __del__ is printed and ignored."""
    if _stopped_by:
        raise KeyboardInterrupt(_stopped_by[0])


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the block, as Ctrl-C does, so that a stopped prepare
    cleans up (the transaction's) instead of dying with its files half written. Both are
    remembered: the transaction raises a swallowed one again before it publishes."""

    def handle(signum, frame):
        _stopped_by.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(_stopped_by[0])

    _stopped_by.clear()
    try:
        previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

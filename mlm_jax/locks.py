"""One process at a time in a directory: a run's workdir, a prepare's output store.

- On a local disk: an exclusive flock on DIR/<lock file>, held for the holder's life and
  released by the OS when the process dies (kill -9 included); a second comer meets one line
  naming the holder.
- In a bucket (gs://) there is no flock: the file is a lease the holder renews every
  LEASE_RENEW_S and that lapses LEASE_S after its last renewal, so a crashed holder blocks the
  directory for minutes, not for ever.

Layer 0 (next to files.py) so that data/ (prepare's store) and training/ (the run) share it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from mlm_jax import files

LOCK_FILE = ".mlm_jax.lock"
LEASE_S = 300.0  # a bucket lease lapses this long after its holder's last renewal
LEASE_RENEW_S = 60.0  # how often a bucket lease's holder renews it


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"a run on {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {started}"


def live_holder(workdir: str) -> str | None:
    """Who holds `workdir`'s lock now ("a run on HOST, pid P, started T"), None if nobody: a
    probe that takes nothing and writes nothing (a sweep asks before starting a run there)."""
    path = files.join(workdir, LOCK_FILE)
    if not files.exists(path):
        return None
    if files.is_remote(path):
        try:
            holder = json.loads(files.read_text(path))
        except ValueError:
            return None
        return _describe(holder) if holder.get("expires", 0) > time.time() else None
    import fcntl

    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return _describe(json.loads(handle.read() or "{}"))
            except ValueError:
                return _describe({})
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class WorkdirLock:
    """Held for a run's life (a context manager); `enabled=False` (hosts other than 0) holds
    nothing."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = files.join(workdir, LOCK_FILE)
        self.enabled = enabled
        self._handle = None
        self._stop = threading.Event()
        self._renewer = None

    def __enter__(self) -> WorkdirLock:
        if self.enabled:
            self._acquire_remote() if files.is_remote(self.path) else self._acquire_local()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join(timeout=5)
            files.write_text(self.path, json.dumps({**self._mine, "expires": 0}))

    def _acquire_local(self) -> None:
        import fcntl

        files.makedirs(os.path.dirname(self.path))
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except ValueError:
                holder = {}
            handle.close()
            raise ValueError(self._busy(holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder()))
        handle.flush()
        self._handle = handle

    def _acquire_remote(self) -> None:
        if files.exists(self.path):
            try:
                holder = json.loads(files.read_text(self.path))
            except ValueError:
                holder = {}
            if holder.get("expires", 0) > time.time():
                raise ValueError(
                    self._busy(holder) + f" (its lease lapses {LEASE_S:.0f} s after it stops)"
                )
        self._mine = _holder()
        self._renew()
        self._renewer = threading.Thread(target=self._keep_renewing, daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        files.write_text(self.path, json.dumps({**self._mine, "expires": time.time() + LEASE_S}))

    def _keep_renewing(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                self._renew()
            except Exception:  # noqa: BLE001 - a failed renewal is retried; the run goes on
                continue

    def _busy(self, holder: dict) -> str:
        return (
            f"workdir {os.path.dirname(self.path)!r} is in use by {_describe(holder)}; wait for "
            "it to finish, or use another workdir"
        )

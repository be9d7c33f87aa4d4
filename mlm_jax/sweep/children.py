"""A sweep driver owns the runs it starts: a signal to it stops them (each saves) before it exits.

The runs of `--parallel` are started in sessions of their own, so Ctrl-C in the terminal
reaches the driver alone; the driver then sends each running run SIGTERM (on which a run saves
a checkpoint at its current step and exits 0, README "Faults"), starts no other, waits for
them, and exits 128 + the signal's number. A rerun of the same command continues every run.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import signal
import subprocess
from collections.abc import Iterator

log = pylogging.getLogger("mlm_jax.sweep")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """Which signal asked the driver to stop (None: none yet), set by the handlers `owning`
    installs; the driver's loop reads it between polls of its runs."""

    def __init__(self):
        self.signal: int | None = None
        self._forwarded = False

    def _handle(self, signum, frame):
        if self.signal is None:
            log.warning(
                "%s: stopping the sweep; each running run saves a checkpoint and exits (rerun "
                "the same command to continue)",
                signal.Signals(signum).name,
            )
        self.signal = signum

    def forward(self, processes) -> None:
        """SIGTERM to every run still running, once."""
        if self.signal is None or self._forwarded:
            return
        self._forwarded = True
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def exit_if_stopped(self) -> None:
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            log.warning("sweep stopped by %s; its runs saved and stopped", name)
            raise SystemExit(128 + self.signal)


@contextlib.contextmanager
def owning() -> Iterator[Stop]:
    """SIGTERM and SIGINT set the returned Stop for the block (the previous handlers after)."""
    stop = Stop()
    try:
        previous = {s: signal.signal(s, stop._handle) for s in _SIGNALS}
    except ValueError:  # not the main thread: the caller owns signals
        yield stop
        return
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def start(command: list[str], env: dict, logfile) -> subprocess.Popen:
    """A run in a session of its own: the terminal's Ctrl-C reaches the driver, not the run."""
    return subprocess.Popen(
        command, env=env, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
    )

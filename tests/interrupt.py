"""Stopping an in-process run part-way, as a crash would, for the tests of resuming."""

import time

from mlm_jax.training import checkpoint
from mlm_jax.training.trainer import Trainer


class Stop(Exception):
    pass


def stop_at_step(monkeypatch, step: int):
    """Makes the train step raise Stop instead of running step `step` (1-based); returns a
    function that lets later runs go through."""
    build = Trainer._build

    def build_then_stop(self):
        build(self)
        step_fn, calls = self.train_step, [0]

        def train_step(state, batch):
            calls[0] += 1
            if calls[0] >= step:
                raise Stop
            return step_fn(state, batch)

        self.train_step = train_step

    monkeypatch.setattr(Trainer, "_build", build_then_stop)
    return lambda: monkeypatch.setattr(Trainer, "_build", build)


def wait_for_checkpoint(workdir: str, step: int) -> int | None:
    """The newest complete checkpoint, once `step`'s is there or 30 s have passed: the stopped
    run's last save may still be finishing in the background."""
    for _ in range(300):
        if checkpoint.latest_step(workdir) == step:
            break
        time.sleep(0.1)
    return checkpoint.latest_step(workdir)

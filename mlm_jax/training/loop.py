"""The training loop: steps from the restored step to train.num_steps, and on the run's cadence
logs a train event, evaluates and checkpoints; a stop request (SIGTERM, Ctrl-C) ends it at a
saved step.

The host never waits for a step it does not need: device metrics are pulled only when a
train event or a checkpoint needs them, and the next batch is drawn while a step runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import numpy as np

from mlm_jax.training import checkpoint as ckpt
from mlm_jax.training import metrics as metrics_lib
from mlm_jax.training import sharding
from mlm_jax.training.spec import RunSpec
from mlm_jax.training.trainer import Trainer, TrainState

log = logging.getLogger(__name__)

LOG_WINDOW = "log_window"  # key in the saved data state: the open train-log window
# Averaged over a log window; masked_fraction = selected / eligible tokens of each step.
TRAIN_KEYS = ("loss", "accuracy", "grad_norm", "mask_ratio", "masked_fraction")


class NonFiniteError(FloatingPointError):
    """A NaN/Inf loss or gradient with train.nan_policy=stop."""


@dataclasses.dataclass
class TrainLoop:
    """One run's loop; `run` steps it. The fields below `stop` are its running tallies."""

    config: Any  # the resolved ConfigDict, saved into each checkpoint
    trainer: Trainer
    eval_batches: list  # global held-out batches, placed once
    manager: Any  # the orbax CheckpointManager
    writer: metrics_lib.MetricsWriter
    stop: Any  # run.StopSignal: should_stop(step) after each step
    result: dict = dataclasses.field(default_factory=dict)  # the latest of every scalar
    window: list = dataclasses.field(default_factory=list)  # pulled steps not yet in an event
    pending: list = dataclasses.field(default_factory=list)  # device metrics not yet pulled
    steps_timed: int = 0  # steps this process ran since the last train event (tokens/s)
    skipped: int = 0  # updates skipped (train.nan_policy=skip) by the last pull
    window_start: float = 0.0

    def run(self, state: TrainState, train_iter, start_step: int, log_window: list):
        """Steps from `start_step`; returns (final metrics, the step a stop request saved or
        None). log_window: the per-step train metrics a checkpoint saved for steps after the
        last train event, so a resumed run's events average the same steps as an uninterrupted
        run's."""
        spec = self.trainer.run.train
        num_steps, log_every = spec.num_steps, max(spec.log_every, 1)
        self.window, self.skipped = list(log_window), int(jax.device_get(state.skipped))
        self.window_start = time.perf_counter()
        self.progress = metrics_lib.Progress(num_steps, start_step)
        if start_step == 0 and spec.eval_every > 0:
            self._evaluate(state, 0)
        data_states = {}  # step the batch is for -> iterator position after drawing it

        def next_batch(for_step):
            host = next(train_iter)
            data_states[for_step] = train_iter.get_state()
            return self.trainer.global_batch(host)

        step, saving = start_step, None  # saving: the step whose checkpoint is being written
        batch = next_batch(step) if step < num_steps else None
        with self.trainer.activate():
            while step < num_steps:
                state, step_metrics = self.trainer.train_step(state, batch)
                if saving is not None:  # a failed save stops the run now, naming its step
                    ckpt.check_saved(self.manager, saving)
                    saving = saving if self.manager.is_saving_in_progress() else None
                step += 1
                self.steps_timed += 1
                self.pending.append(step_metrics)
                if step < num_steps:
                    batch = next_batch(step)  # host work overlaps the step running on device
                last = step == num_steps
                preempted = self.stop.should_stop(step)
                log_now = step % log_every == 0 or last
                every = spec.checkpoint_every
                save = (every > 0 and step % every == 0) or last or preempted
                if log_now or save:
                    self._pull(state, step)
                if log_now:
                    self._log(step)
                if spec.eval_every > 0 and (step % spec.eval_every == 0 or last):
                    self._evaluate(state, step)
                if save:
                    self._save(state, step, data_states[step - 1])
                    saving = step
                    data_states = {s: v for s, v in data_states.items() if s >= step}
                if preempted:
                    return self.result, step
        return self.result, None

    def _pull(self, state: TrainState, step: int) -> None:
        """The pending steps' metrics to the host; a non-finite step stops the run here, so
        no checkpoint ever holds a state past it."""
        pulled = jax.device_get(self.pending)
        self.window += [{k: float(m[k]) for k in (*TRAIN_KEYS, "predictions")} for m in pulled]
        self.pending = []
        check_finite(self.trainer.run, state)
        skipped = int(jax.device_get(state.skipped))
        if skipped > self.skipped:
            log.warning(
                "skipped %d update(s) with a non-finite loss or gradient by step %d "
                "(%d in total; train.nan_policy=skip)",
                skipped - self.skipped,
                step,
                skipped,
            )
        self.skipped = skipped

    def _log(self, step: int) -> None:
        """A train event: the window's means, the learning rate, tokens/s."""
        elapsed = time.perf_counter() - self.window_start
        self.window_start = time.perf_counter()
        scalars = window_means(self.window, step)
        scalars["train/learning_rate"] = float(self.trainer.lr_schedule(step - 1))
        tokens = self.steps_timed * self.trainer.run.tokens_per_step
        scalars["train/tokens_per_s"] = tokens / max(elapsed, 1e-9)
        scalars["train/skipped_updates"] = float(self.skipped)
        self.window, self.steps_timed = [], 0
        self.writer.write(step, scalars)
        self.result.update(scalars)
        line = self.progress.line(step, scalars.get("train/loss"), scalars["train/tokens_per_s"])
        metrics_lib.log_line(line)

    def _evaluate(self, state: TrainState, step: int) -> None:
        scalars = self.trainer.evaluate(state.params, self.eval_batches, step)
        self.writer.write(step, scalars)
        shown = [f"{k} {v:.4f}" for k, v in scalars.items() if k.split("/")[0] == "eval"]
        shown = [x for x in shown if not x.startswith("eval/predictions")]
        metrics_lib.log_line(f"eval at step {step}: " + (", ".join(shown) or "no predictions"))
        self.result.update(scalars)

    def _save(self, state: TrainState, step: int, data_state: dict) -> None:
        """A checkpoint of `step` in the background, with the open log window."""
        replicated = sharding.replicated(self.trainer.mesh)
        data_state = {**data_state, LOG_WINDOW: self.window}
        ckpt.save(self.manager, step, state, data_state, self.config, replicated)
        self.writer.flush()  # a bucket workdir gets the events this checkpoint covers


def window_means(window: list[dict], step: int) -> dict[str, float]:
    """Each train metric averaged over the window's steps. The loss and accuracy of a step
    with no prediction are not numbers, so they are left out of the mean, and a window of
    such steps logs none (with a warning) rather than a perfect 0.0."""
    scored = [m for m in window if m["predictions"] > 0]
    if len(scored) < len(window):
        log.warning(
            "%d of the %d steps up to step %d selected no position to predict",
            len(window) - len(scored),
            len(window),
            step,
        )
    means = {}
    for k in TRAIN_KEYS:
        rows = scored if k in ("loss", "accuracy") else window
        values = [m[k] for m in rows if k in m]  # (a window saved by an older version lacks some)
        if values:
            means[f"train/{k}"] = float(np.mean(values))
    return means


def check_finite(run: RunSpec, state: TrainState) -> None:
    """With nan_policy=stop, a non-finite step ends the run before anything is saved."""
    if run.train.nan_policy != "stop":
        return
    bad = int(jax.device_get(state.first_bad_step))
    if bad >= 0:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad}; the update was not applied and no "
            "checkpoint was written after it (set config.train.nan_policy=skip to skip such "
            "updates instead)"
        )

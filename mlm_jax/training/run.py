"""The run: set up (or resume) a workdir, then step, log, evaluate and checkpoint until done.

Faults end in a resumable state and lose nothing:
- a killed process restarts from the last complete checkpoint; batches, masking and dropout
  are functions of (seed, step) and the checkpointed data position, so the resumed steps are
  the same steps, and metrics.jsonl is cut back to the restored step so no event repeats;
- SIGTERM (preemption) saves the current step and exits with code 0 (`Preempted`); on several
  hosts JAX's preemption sync point picks one step at which every host stops; Ctrl-C (SIGINT)
  does the same on one process and exits 130, and a second Ctrl-C aborts without saving;
- a half-written checkpoint is ignored (orbax renames a step's folder only when complete);
- a NaN/Inf loss or gradient stops the run naming the step (train.nan_policy=stop) before any
  checkpoint holds it, or skips that update and counts it (train.nan_policy=skip);
- an unwritable workdir fails before compiling; a failed save names the path and exits, the
  earlier checkpoints untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from typing import Any, NoReturn

import jax

from mlm_jax import files, masking
from mlm_jax.config.errors import ConfigError, as_config_errors
from mlm_jax.training import checkpoint as ckpt
from mlm_jax.training import inputs as inputs_lib
from mlm_jax.training import memory, metrics_wandb, pretrained, sharding
from mlm_jax.training import metrics as metrics_lib
from mlm_jax.training import workdir as workdir_lib
from mlm_jax.training.checks import check_eval_batches
from mlm_jax.training.loop import LOG_WINDOW, NonFiniteError, TrainLoop  # noqa: F401 - main.py's
from mlm_jax.training.resolve import resolve
from mlm_jax.training.resume import check_resume_compatible, recorded_k, resolved_config
from mlm_jax.training.spec import RunSpec
from mlm_jax.training.trainer import Trainer, TrainState, compile_steps

log = logging.getLogger(__name__)


# How a stopped run exits: 0 for SIGTERM (a preempted VM is no failure), 130 (128 + SIGINT, as
# shells report it) for Ctrl-C, so a script around the command can tell the user stopped it.
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}
_SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class Preempted(SystemExit):
    """A clean exit on SIGTERM (code 0) or Ctrl-C (130): after the checkpoint of `step` is on
    disk, or, before the first step (step None), at once, since nothing new exists to save."""

    def __init__(self, step: int | None, code: int = 0):
        super().__init__(code)
        self.step = step


class StopSignal:
    """SIGTERM and Ctrl-C (SIGINT) as a flag the loop reads between steps.

    One process: before the first step (checks, data, compilation) the handler ends the run at
    once (Preempted(None): nothing new to save; it sets the flag too, so that a raise swallowed
    by a gc callback still stops the loop at its first step); once steps run it sets the flag
    and the loop saves the current step. A Ctrl-C after that ends the process at once, unsaved
    (the user chose not to wait): os._exit, since an exception raised in a signal handler can
    land in a garbage-collection callback, which swallows it. Several processes: JAX's preemption
    service (started by jax.distributed.initialize) catches SIGTERM on any host and
    `reached_preemption_sync_point(step)` becomes true at the same step on all of them, so they
    save the same checkpoint and none waits in a collective for a host that left.
    """

    def __init__(self):
        self.requested_by: int | None = None  # the signal that asked the run to stop
        self._stepping = False
        self._previous = {}
        self._sync = jax.process_count() > 1 and _preemption_service_running()

    @property
    def requested(self) -> bool:
        return self.requested_by is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.requested_by, 0)

    def __enter__(self):
        if self._sync:
            return self
        try:
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        name = _SIGNAL_NAMES[signum]
        if signum == signal.SIGINT and self.requested:
            _abort("stopped by a second Ctrl-C, without saving; the same command resumes from "
                   "the last complete checkpoint")  # fmt: skip
        if self.requested:
            return  # already saving, then exiting
        if not self._stepping:
            log.warning("%s before the first step: nothing new to save; exiting", name)
            # The flag as well: should a gc callback swallow the raise, the loop still stops at
            # its first step.
            self.requested_by = signum
            raise Preempted(None, EXIT_CODES[signum])
        log.warning(
            "%s received: saving a checkpoint at the current step, then exiting%s",
            name,
            " (Ctrl-C again: exit at once, without saving)" if signum == signal.SIGINT else "",
        )
        self.requested_by = signum

    def steps_started(self) -> None:
        """From now on SIGTERM asks the loop to save the current step first."""
        self._stepping = True

    def should_stop(self, step: int) -> bool:
        """Called once per step by every host, with the same step numbers."""
        if self._sync:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            if previous is not None:  # (None: a handler not set from Python, left alone)
                signal.signal(signum, previous)


def _abort(message: str) -> NoReturn:
    """Ends the process now (no cleanup; the OS releases a local workdir lock)."""
    log.warning(message)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(EXIT_CODES[signal.SIGINT])


def _preemption_service_running() -> bool:
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None


@dataclasses.dataclass
class Checked:
    """A run that passed every check, with what the checks built (nothing in the workdir)."""

    run: RunSpec
    config: Any  # the resolved ConfigDict: config.json and every checkpoint record it
    tokenizer: Any
    train_iter: Any
    host_eval_batches: list
    resume_step: int | None  # the newest complete checkpoint, None for a new run
    inputs: dict = dataclasses.field(default_factory=dict)  # training/inputs.py's fingerprints
    masking_tables: dict = dataclasses.field(default_factory=dict)  # masking.prepare_host's


def check(config, workdir: str) -> Checked:
    """Every check a run makes before it writes or compiles anything: the config, the
    workdir's owner and its resume compatibility, the tokenizer, the data (a held-out split to
    evaluate on, predictions in it). One ConfigError each; nothing is written to the workdir."""
    from mlm_jax.data import loader  # the input pipeline (grain, TFDS) only where data is read

    with as_config_errors():
        run = resolve(config)
        metrics_wandb.check_available(config.log.wandb_project)
        workdir_lib.check_owned(workdir)
        resume_step = ckpt.latest_step(workdir)
        saved = check_resume_compatible(config, workdir)
        run = run.with_max_predictions(recorded_k(run, config, saved))
        memory.check_fits(run, *memory.vocab_upper_bound(run))  # before a tokenizer is trained
        tokenizer = loader.run_tokenizer(run.data, workdir, resuming=resume_step is not None)
        run = run.with_vocab(tokenizer)
        config = resolved_config(config, run)
        if run.init_from and resume_step is None:
            pretrained.check_init_from(run.init_from, run.model, tokenizer)
        inputs = inputs_lib.fingerprints(run, tokenizer)
        if resume_step is not None:
            inputs_lib.check_resume(workdir, inputs)
        prepared = masking.prepare_host(run.masking, tokenizer, run.data)
        units = prepared.marks  # unit starts the packer marks (PMI's n-grams), or None
        train_iter = loader.make_train_iterator(
            run.data, tokenizer, batch_size=run.train.batch_size, seed=run.seed, units=units
        )
        host_eval_batches = loader.make_eval_batches(
            run.data,
            tokenizer,
            batch_size=run.train.eval_batch_size,
            num_batches=run.train.eval_batches,
            seed=run.seed,
            units=units,
        )
        check_eval_batches(run, host_eval_batches)
    return Checked(
        run, config, tokenizer, train_iter, host_eval_batches, resume_step, inputs,
        dict(prepared.tables),
    )  # fmt: skip


def plan(checked: Checked, workdir: str) -> str:
    """What a run on `workdir` would do, in one line."""
    step, num_steps = checked.resume_step, checked.run.train.num_steps
    if step is None:
        return f"would start a new run in {workdir} and train {num_steps} steps"
    if step >= num_steps:
        return f"{workdir} is at step {step} = train.num_steps: nothing left to do"
    return f"would resume {workdir} from its checkpoint of step {step} and train to {num_steps}"


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains (or resumes) the run described by `config` in `workdir`; returns final metrics.

    Every check comes first (`check`) and nothing is written into the workdir until all have
    passed. Then the run takes the workdir's lock, copies its tokenizer in, compiles
    (interruptible) and steps.
    """
    from mlm_jax.data import loader

    with StopSignal() as stop:  # from here on, SIGTERM is a request, not a kill
        checked = check(config, workdir)
        with as_config_errors():
            ckpt.check_writable(workdir)  # the first write: a probe file, removed at once
        is_writer = jax.process_index() == 0
        lock = workdir_lib.WorkdirLock(workdir, enabled=is_writer)
        with as_config_errors():
            lock.__enter__()  # another run holding the workdir: one line, as a bad input
        try:
            checked.tokenizer = loader.keep_in_workdir(checked.tokenizer, workdir)
            if is_writer:
                inputs_lib.record(workdir, checked.inputs, checked.tokenizer)
            return _train(checked, workdir, stop, is_writer)
        finally:
            lock.__exit__(None, None, None)


def _train(checked: Checked, workdir: str, stop, is_writer: bool):
    """The run once its workdir is its own: resume or start, compile, step, summarise."""
    run, config, train_iter = checked.run, checked.config, checked.train_iter
    trainer = Trainer(run, tables=checked.masking_tables)
    unfinished = ckpt.unfinished_writes(workdir)  # before the manager deletes them
    manager = ckpt.make_manager(workdir, keep=run.train.checkpoint_keep)
    writer = None
    try:
        restored = _restore(checked, trainer, manager, workdir, unfinished)
        if restored is None:
            return {}  # already at train.num_steps
        start_step, state, log_window = restored
        eval_batches = [trainer.global_batch(b) for b in checked.host_eval_batches]  # once
        compile_steps(trainer, eval_batches[0], stop, with_init=state is None)
        if state is None:
            state = trainer.new_state()
            if run.init_from:
                state = _load_pretrained(trainer, state, run.init_from)
        if is_writer:
            _write_config(config, workdir)
        # A resumed run recomputes later events exactly: the writer drops/hides them.
        wandb = metrics_wandb.open_run(config, workdir, enabled=is_writer)
        writer = metrics_lib.MetricsWriter(
            workdir, enabled=is_writer, start_step=start_step, wandb=wandb
        )
        stop.steps_started()
        loop = TrainLoop(config, trainer, eval_batches, manager, writer, stop)
        result, preempted_at = loop.run(state, train_iter, start_step, log_window)
        ckpt.wait_until_finished(
            manager, run.train.num_steps if preempted_at is None else preempted_at
        )
    finally:
        _close(manager, writer)
    if preempted_at is not None:
        log.warning(
            "checkpoint of step %d written; exiting (resume: the same command)", preempted_at
        )
        raise Preempted(preempted_at, stop.exit_code)
    metrics_lib.log_summary(workdir, result, manager.latest_step())
    return result


def _restore(checked: Checked, trainer: Trainer, manager, workdir: str, unfinished: list):
    """(start step, state or None, open log window) from the newest intact checkpoint, the
    train iterator set to its position; None when it already reached train.num_steps."""
    run = checked.run
    replicated = sharding.replicated(trainer.mesh)
    restored = ckpt.restore_newest_intact(manager, trainer.abstract_state, replicated)
    if restored is None and checked.resume_step is not None:
        raise ConfigError(
            f"{ckpt.checkpoint_dir(workdir)}: no intact checkpoint (each was set aside as "
            "<step>.damaged, see the warnings); move them away to start this workdir afresh"
        )
    if unfinished:
        log.warning(
            "found unfinished checkpoint writes %s (a process stopped while saving); %s",
            unfinished,
            f"resuming from step {restored[0]}, the last complete checkpoint"
            if restored
            else "no complete checkpoint: starting from step 0",
        )
    if restored is None:
        return 0, None, []
    start_step, state, data_state = restored
    log_window = data_state.pop(LOG_WINDOW, [])  # (none in older checkpoints)
    checked.train_iter.set_state(data_state)
    if start_step >= run.train.num_steps:
        log.info(
            "%s is already at train.num_steps=%d (its checkpoint of step %d); nothing to do "
            "(raise --config.train.num_steps to train on)",
            workdir,
            run.train.num_steps,
            start_step,
        )
        return None
    log.info("resumed from the checkpoint of step %d in %s", start_step, workdir)
    return start_step, state, log_window


def _close(manager, writer) -> None:
    """Lets a save in flight finish (a good checkpoint stays whole) even when the run failed."""
    try:
        manager.wait_until_finished()
        manager.close()
    except Exception as e:  # the error that stopped the run is the one to report
        log.error("closing the checkpoint manager: %s", " ".join(str(e).split())[:300])
    if writer is not None:
        writer.close()


def _load_pretrained(trainer: Trainer, state: TrainState, directory: str) -> TrainState:
    # Shapes only: with parameters sharded across hosts no process holds them all.
    template = trainer.abstract_state.params
    source = pretrained.load(directory, tokenizer=None, spec=trainer.run.model)
    params = pretrained.fit(source, template)
    params = jax.device_put(params, trainer.state_sharding.params)
    opt_state = jax.jit(trainer.tx.init, out_shardings=trainer.state_sharding.opt_state)(params)
    log.info("initialised parameters from %s", directory)
    return state.replace(params=params, opt_state=opt_state)


def _write_config(config, workdir: str) -> None:
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    files.write_text(files.join(workdir, "config.json"), text)
    _record_command(workdir)


COMMANDS_FILE = "commands.txt"  # each start's command line, for an export's model card


def _record_command(workdir: str) -> None:
    """Appends this process's command line to WORKDIR/commands.txt (read, then rewritten: a
    bucket cannot append), so an export can say how the run was trained and resumed."""
    import shlex

    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("mlm_jax", "main.py")):
        argv[:1] = ["-m", "mlm_jax.main"]
    path = files.join(workdir, COMMANDS_FILE)
    before = files.read_text(path) if files.exists(path) else ""
    files.write_text(path, before + shlex.join(["python", *argv]) + "\n")

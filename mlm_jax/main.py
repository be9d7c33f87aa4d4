"""Train (or resume) a masked language model.

    python -m mlm_jax.main --config=configs/tiny.py --workdir=DIR [--config.KEY=VALUE ...]
    python -m mlm_jax.main --config=configs/tiny.py --print_config [--workdir=DIR]
    python -m mlm_jax.main --config=configs/bert.py:large --print_config --tpu_topology=v5e:4x4

Every config field, its value and what it means: --print_config (nothing is trained or written;
with --workdir it also says what a run there would do: start, resume from step S, or nothing
left to do; with --tpu_topology, whether the train step fits that TPU slice's chips and the
largest batch that does, from XLA's TPU compiler run here: minutes on a CPU). The defaults and their comments live in mlm_jax/config/defaults.py;
configs/*.py override a few. Override any field with --config.KEY=VALUE (a misspelt key is an
error). This module parses flags, starts the distributed runtime when asked, and calls
train.train_and_evaluate.
"""

from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mlm_jax import cli, logs

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<exp>.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config",
    False,
    "Print every config field with its value and meaning (and, with --workdir, what a run "
    "there would do), then exit: nothing is trained, written or compiled.",
)
_TPU_TOPOLOGY = flags.DEFINE_string(
    "tpu_topology",
    None,
    "With --print_config: whether the train step fits the chips of this Cloud TPU slice "
    "(v5e:2x2, v5e:4x4, v4:2x2x1, ...) and the largest batch that does, from XLA's TPU compiler "
    "run here (libtpu: pip install -r requirements-test.txt); no TPU needed.",
)
_TPU_LARGEST_BATCH = flags.DEFINE_bool(
    "tpu_largest_batch", True, "With --tpu_topology: also search the largest batch that fits."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs off Cloud TPU."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (0-based).")
flags.mark_flags_as_required(["config"])


def _maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when flags or the environment ask for several processes.

    Must run before anything touches a JAX backend. On CPU, cross-process collectives use gloo
    over TCP (JAX 0.10's default for jax_cpu_collectives_implementation, set explicitly so
    another default cannot leave the CPU client without cross-process collectives). The call also
    starts JAX's preemption service, which the loop uses to stop all hosts at one step.
    """
    import jax

    if _COORDINATOR.value or _NUM_PROCESSES.value:
        if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif (
        os.environ.get("MLM_JAX_DISTRIBUTED") == "1"  # set by launch/tpu_*.yaml on a TPU slice
        or os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0  # (GKE sets this)
    ):
        jax.distributed.initialize()  # Cloud TPU: JAX finds the other hosts itself


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a missing --config file or an override naming no config field
    reported as one `error:` line (exit 2), not a traceback; --help exits 0."""
    if any(arg in cli.HELP_FLAGS for arg in argv[1:]):
        cli.absl_flags_parser(__doc__, __name__)(argv)
    for arg in argv[1:]:
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1].split(":", 1)[0]
            if not os.path.isfile(path):
                cli.fail(f"{arg}: no such config file")
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # an unknown flag, a value of the wrong type, a config that raised
        cli.fail(_config_error_line(str(e)))
    except AttributeError as e:  # ml_collections: --config.a.b=... where the config has no a.b
        inner = e.args[0] if e.args else e
        text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
        key, *hint = str(text).split("\n")
        key = key.strip("'\"")
        named = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0].endswith(f".{key}")]
        where = named[0] if named else key
        cli.fail(f"{where}: no such config field" + (f" ({hint[0].strip()})" if hint else ""))


def _config_error_line(text: str) -> str:
    """ml_collections reports a get_config() that raised with the whole traceback in its
    message; the user needs its last line, the config's own words."""
    if "Traceback" not in text:
        return text
    flag = text.split(": Error whilst parsing", 1)[0].removeprefix("flag ")
    message = [line for line in text.splitlines() if line.strip()][-1].split(": ", 1)[-1]
    return message if flag.split("=", 1)[-1] in message else f"{flag}: {message}"


def main(argv) -> None:
    del argv
    logs.configure()
    if _PRINT_CONFIG.value:
        _print_config()
        return
    if _TPU_TOPOLOGY.value:
        cli.fail("--tpu_topology: only with --print_config (it reports; it does not train)")
    if not _WORKDIR.value:
        cli.fail("--workdir: required (the run's directory), or --print_config to look only")
    _maybe_initialize_distributed()
    import tensorflow_datasets as tfds

    from mlm_jax.training import checkpoint
    from mlm_jax.training import run as train

    tfds.display_progress_bar(False)  # the first-use corpus build is seconds; no bars in logs
    from mlm_jax.config.errors import ConfigError

    failed_run = (train.NonFiniteError, checkpoint.CheckpointWriteError)
    # Bad config, flag or workdir: found before compiling (2); a run that failed on its way (1).
    try:
        with cli.one_line_errors((ConfigError,)), cli.one_line_errors(failed_run, code=1):
            train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except train.Preempted as stopped:
        # Exit at once (0 for SIGTERM, 130 for Ctrl-C): its checkpoint is written, or nothing new
        # existed to save (a signal during compilation leaves XLA's compile thread running,
        # which must not delay it).
        sys.stdout.flush()
        sys.stderr.flush()
        pylogging.shutdown()
        os._exit(stopped.code)


def _print_config() -> None:
    """The config's fields with values and comments; with --workdir, what a run would do."""
    from mlm_jax.config import doc as config_doc
    from mlm_jax.config.errors import ConfigError, as_config_errors
    from mlm_jax.training import memory
    from mlm_jax.training import run as train

    config, checked = _CONFIG.value, None
    if _WORKDIR.value:
        with cli.one_line_errors((ConfigError,)):
            checked = train.check(config, _WORKDIR.value)
    print(config_doc.describe(checked.config if checked else config))
    try:  # without --workdir the config may be meant for other devices: say why, go on
        with as_config_errors():
            run = checked.run if checked else train.resolve(config)
            print(memory.estimate(run, memory.vocab_upper_bound(run)[0]).describe())
    except ConfigError as e:
        print(f"memory per device: not estimated ({e})")
    if checked:
        print(train.plan(checked, _WORKDIR.value))
    if _TPU_TOPOLOGY.value:
        _print_tpu_fit(config)


def _print_tpu_fit(config) -> None:
    """The train step compiled for --tpu_topology's chips here: fits or not, largest batch."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compiles for the slice; runs nothing here
    from mlm_jax.config.errors import ConfigError
    from mlm_jax.estimate.fit import fit_lines

    with cli.one_line_errors((ValueError, ConfigError)):
        lines = fit_lines(config, _TPU_TOPOLOGY.value, search=_TPU_LARGEST_BATCH.value)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)

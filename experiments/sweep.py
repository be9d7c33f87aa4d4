r"""Ablation sweeps: the cross product of `--sweep` axes, one run per point, then tables and plots.

    python experiments/sweep.py --config=configs/tiny.py --workdir=DIR \
        --sweep=masking.ratio=0.15,0.3,0.4,0.6 --sweep=seed=0,1 [--config.train.num_steps=300]
    python experiments/sweep.py --workdir=DIR --report        # tables and plots, no training

Each run trains through the same `mlm_jax.training.run.train_and_evaluate` as a single run, in its own
sub-workdir named after its settings (`DIR/masking.ratio=0.3,seed=1`). A run is finished when
its latest checkpoint is at train.num_steps (or, checkpoints deleted, its marker
`DIR/<run>/sweep_done.json` says so); finished runs are skipped and interrupted ones resume from their checkpoints, so rerunning a
sweep is always safe. A failing run does not stop the others; results.csv marks it failed
with the reason.

Axes: `--sweep=KEY=V1,V2,...` over any leaf of the config; values are parsed with the type of
the config field. Keys that must move together form one axis with `/` between keys and values:
`--sweep=masking.mask_prob/masking.random_prob=0.8/0.1,1.0/0.0` (80/10/10 vs 100/0/0). Where
a value holds a comma, `;` separates the values instead: `--sweep='data.dataset=text:{a,b}.txt;python_docs'`.

Where runs go:
  default         one after another in this process.
  --parallel=N    N subprocesses (`python -m mlm_jax.main ...`), devices divided between them:
                  GPUs through CUDA_VISIBLE_DEVICES (contiguous groups of the visible GPUs);
                  on CPU each gets XLA_FLAGS=--xla_force_host_platform_device_count=<count/N>
                  (count from this process's XLA_FLAGS, default 1). TPU chips are not divided
                  here: on a TPU VM run sequentially, or --launch=sky (a slice per run).
  --launch=print  prints one `python -m mlm_jax.main ...` command per run for your launcher.
  --launch=sky    submits each unfinished run as its own SkyPilot managed job (`sky jobs
                  launch --launch_file`, default launch/tpu_v5e.yaml) into the gs:// DIR; the
                  jobs controller relaunches preempted ones. Rerun it to submit what is still
                  unfinished, --report when they are done.

Before it writes or trains anything, the sweep resolves every run's config as the run would:
all bad runs are named together, each with the key to change and where (its --sweep value,
this command line, or the config file: a shorter --config.train.num_steps names the config's
train.warmup_steps to lower). Runs that train elsewhere (--launch=print, sky) are checked
without their data and devices, which only their machine sees. A gs:// DIR that does not
answer within seconds is one line. --dry_run: the checks, then the commands (a local sweep's
as --launch=print's); nothing is written.

Outputs in DIR: sweep.json (axes and runs), results.csv (one row per run), results.md (means
and standard deviations over seeds), metric_vs_<axis>.png (final metrics against the swept
value, seed error bars) and eval_curves.png (eval loss/accuracy of every run over steps).
`--finetune_task=TASK` (repeatable) also fine-tunes each finished run (mlm_jax.finetune) on each
task once per `--finetune_seeds=0,1,..` seed, into DIR/<run>/finetune/<task>/seed=<s>; the tables
get each task's dev accuracy (mean over those seeds) and the mean over tasks, paired by
pretraining seed under --baseline. The built-in corpus's tasks: `python_docs:order`, `python_docs:same_doc`.
DIR may be a bucket (gs://...): everything above goes there (a run's sweep.log is uploaded when
the run ends).

This file is only the command line; the sweep itself is the package mlm_jax.sweep (axes,
execution, run_state, report, plots).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from mlm_jax import cli, files, logs
from mlm_jax.sweep import SweepError
from mlm_jax.sweep.execution import config_args, run_sweep
from mlm_jax.sweep.finetuning import make_plan
from mlm_jax.sweep.report import write_report

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line; defined on demand so importing this module (presets) defines no flags."""
    config_flags.DEFINE_config_file(
        "config", None, "Base experiment config (configs/<exp>.py[:arg]).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Sweep directory: one sub-workdir per run.")
    flags.DEFINE_multi_string(
        "sweep", [], "KEY=V1,V2,... (or K1/K2=A1/A2,B1/B2 for keys that move together)."
    )
    flags.DEFINE_integer("parallel", 1, "Runs at once (>1: one subprocess each).")
    flags.DEFINE_enum(
        "launch", "local", ["local", "print", "sky"],
        "local: run; print: commands; sky: one SkyPilot managed job per run (gs:// workdir).",
    )  # fmt: skip
    flags.DEFINE_string(
        "launch_file", "launch/tpu_v5e.yaml", "--launch=sky: the SkyPilot task YAML of each job."
    )
    flags.DEFINE_bool(
        "dry_run",
        False,
        "Check every run, print the commands (sky: `sky jobs launch`), write nothing.",
    )
    flags.DEFINE_bool("report", False, "Only regenerate results.* and plots from DIR.")
    flags.DEFINE_string(
        "baseline", None, "KEY=VALUE: paired-by-seed differences to that setting (95% t CI)."
    )
    flags.DEFINE_multi_string(
        "finetune_task", [], "Fine-tune every finished run on this task (mlm_jax.finetune's "
        "--task); repeat it for several tasks.",
    )  # fmt: skip
    flags.DEFINE_list(
        "finetune_seeds", ["0"], "Fine-tuning seeds (comma-separated): each task once per seed."
    )
    flags.DEFINE_integer("finetune_epochs", 3, "Epochs of each fine-tuning.")
    flags.DEFINE_integer(
        "finetune_max_len", 0, "Tokens per fine-tuning example; 0 = the run's data.seq_len."
    )
    flags.mark_flag_as_required("workdir")


def main(argv) -> None:
    del argv
    logs.configure()  # in-process runs log as mlm_jax.main's do
    with cli.one_line_errors((SweepError,)):
        if FLAGS.report:
            write_report(FLAGS.workdir, baseline=FLAGS.baseline)
            print(files.read_text(files.join(FLAGS.workdir, "results.md")))
            return
        if FLAGS.config is None:
            raise SweepError("--config is required to run a sweep (or pass --report)")
        rows = run_sweep(
            FLAGS.config,
            FLAGS.workdir,
            FLAGS.sweep,
            base_args=config_args(sys.argv[1:]),
            parallel=FLAGS.parallel,
            launch=FLAGS.launch,
            finetune=make_plan(
                FLAGS.finetune_task,
                FLAGS.finetune_seeds,
                FLAGS.finetune_epochs,
                FLAGS.finetune_max_len,
            ),
            launch_file=FLAGS.launch_file,
            dry_run=FLAGS.dry_run,
            baseline=FLAGS.baseline or "",
        )
    if rows:
        print(files.read_text(files.join(FLAGS.workdir, "results.md")))
        if any(r["status"] not in ("done", "running") for r in rows):  # running: elsewhere
            sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser(__doc__, __name__))

"""Ablation sweeps: one run per point of the `--sweep` axes, then tables and plots.

The command line is experiments/sweep.py (its docstring is the user's guide). Here, by job:
  axes       --sweep strings -> axes -> one settings dict per run, its name and its config
  precheck   every run's config resolved, and a bucket workdir asked, before anything is written
  run_state  what a run's directory says: finished, failed, its final eval, its fine-tune result
  execution  training the runs (in process, --parallel subprocesses, --launch=print), fine-tuning
  report     results.csv and results.md from the run directories alone
  plots      metric_vs_<axis>.png and eval_curves.png
"""


class SweepError(ValueError):
    """Bad sweep input, reported as one line before any run starts."""

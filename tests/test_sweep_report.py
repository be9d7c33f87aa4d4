"""The sweep's report: means over seeds, paired intervals against a baseline (checked by hand
and against scipy's t quantile), the likelihood bound's column, per-task fine-tuning scores."""

import json
import os

import matplotlib.image
import pytest

from mlm_jax import files
from mlm_jax.sweep import SweepError, execution, run_state
from mlm_jax.sweep.execution import run_sweep
from mlm_jax.sweep.finetuning import make_plan
from mlm_jax.sweep.report import write_markdown
from tests.configs import small_run_config
from tests.test_sweep import _fake_trainer, _read_csv


def test_a_mean_over_fewer_runs_than_the_seeds_says_so(tmp_path):
    """Three finished seeds, a fine-tune result for two: the seeds column says 3, and the
    fine-tune mean (over 2) is marked (n=2)."""
    rows = [
        {"run": f"seed={s}", "masking.ratio": 0.3, "seed": s, "status": "done",
         "eval_loss": 5.0 + s, "finetune_accuracy": (0.6 if s < 2 else None)}
        for s in range(3)
    ]  # fmt: skip
    path = str(tmp_path / "results.md")
    write_markdown(path, [["masking.ratio"], ["seed"]], rows)
    line = [x for x in open(path) if x.startswith("| 0.3 |")][0]
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    header = [c.strip() for c in open(path).readline().strip().strip("|").split("|")]
    row = dict(zip(header, cells))
    assert row["seeds"] == "3"
    assert row["eval_loss"] == "6.0000 ± 1.0000"
    assert row["finetune_accuracy"] == "0.6000 ± 0.0000 (n=2)"


def test_baseline_adds_paired_t_intervals_checked_by_hand(tmp_path):
    """Made-up losses of 3 seeds at three ratios, baseline 0.15. Against a t table
    (t(0.975, 2) = 4.303): ratio 0.3 differs by -0.2, -0.1, -0.3 -> mean -0.2, sd 0.1,
    half-width 4.303 * 0.1 / sqrt(3) = 0.2484: [-0.4484, +0.0484], holds 0, no mark; ratio 0.6
    by +0.3, +0.5, +0.4 -> [+0.1516, +0.6484], marked. Its plot is written too."""
    from mlm_jax.sweep import baseline, plots

    base, low, high = [5.0, 5.2, 4.9], [4.8, 5.1, 4.6], [5.3, 5.7, 5.3]
    rows = [
        {"run": f"r{ratio}s{s}", "masking.ratio": ratio, "seed": s, "status": "done",
         "eval_loss": losses[s], "eval_accuracy": 0.3, "own_loss": None, "own_accuracy": None}
        for ratio, losses in ((0.15, base), (0.3, low), (0.6, high)) for s in range(3)
    ]  # fmt: skip
    axes = [["masking.ratio"], ["seed"]]
    metrics = ["eval_loss", "eval_accuracy"]
    paired = baseline.paired_differences(axes, rows, "masking.ratio=0.15", metrics)
    by_ratio = {e["settings"]["masking.ratio"]: e for e in paired["entries"]}
    assert sorted(by_ratio) == [0.3, 0.6] and by_ratio[0.3]["n"] == 3
    for ratio, (mean, lo, hi) in ((0.3, (-0.2, -0.4484, 0.0484)), (0.6, (0.4, 0.1516, 0.6484))):
        got = by_ratio[ratio]["eval_loss"]
        assert got == pytest.approx((mean, lo, hi), abs=2e-4), (ratio, got)
    assert by_ratio[0.3]["eval_accuracy"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    lines = baseline.markdown_lines(paired, metrics)
    row_03 = [x for x in lines if x.startswith("| 0.3 |")][0]
    row_06 = [x for x in lines if x.startswith("| 0.6 |")][0]
    assert "-0.2000 [-0.4484, +0.0484] |" in row_03 and "*" not in row_03.split("|")[3]
    assert "+0.4000 [+0.1516, +0.6484] * |" in row_06
    path = plots.plot_paired(str(tmp_path), paired, metrics)
    assert matplotlib.image.imread(path).shape[0] > 100
    with pytest.raises(SweepError, match="not swept"):
        baseline.parse_baseline("masking.strategy=uniform", axes)
    with pytest.raises(SweepError, match="no finished run"):
        baseline.paired_differences(axes, rows, "masking.ratio=0.45", metrics)


def test_the_likelihood_bound_reaches_the_results_and_the_paired_table():
    """eval/nll_bound of the last eval is a results column and a paired metric; a run that
    logged none (an older run, or eval.nll_bound_rates=0) leaves the cell empty."""
    from mlm_jax.sweep.report import paired_metrics

    events = [
        {"step": 5, "eval/loss": 6.0, "eval/accuracy": 0.0, "eval/nll_bound": 6.2},
        {"step": 10, "eval/loss": 5.0, "eval/accuracy": 0.1, "eval/nll_bound": 5.3},
    ]
    assert run_state.final_eval(events)["eval_nll_bound"] == 5.3
    assert run_state.final_eval([{"step": 10, "eval/loss": 5.0}])["eval_nll_bound"] is None
    assert "eval_nll_bound" in paired_metrics([])


def test_two_tasks_two_finetune_seeds_give_per_task_paired_intervals(tmp_path, monkeypatch):
    """Made-up dev accuracies for 2 ratios x 3 pretraining seeds x 2 tasks x 2 fine-tuning seeds.
    Each run's task score is the mean over its fine-tuning seeds; the paired difference to the
    baseline ratio is taken per pretraining seed; the interval's quantile is scipy's t(0.975, 2).
    The report's csv, paired table and plot carry each task and the mean over tasks."""
    import numpy as np
    from scipy import stats

    from mlm_jax.finetuning import loop

    rng = np.random.default_rng(7)
    made_up = {
        (ratio, seed, task, ft_seed): round(float(rng.uniform(0.5, 0.9)), 3)
        for ratio in (0.15, 0.3) for seed in range(3) for task in ("order", "same") for ft_seed in (0, 1)
    }  # fmt: skip

    def fake_finetune(run_dir, spec, out, *, seed, **kwargs):
        settings = dict(part.split("=") for part in os.path.basename(run_dir).split(","))
        task = spec.split("/")[-2]  # tsv:<dir>/<task>/train.tsv,...
        accuracy = made_up[(float(settings["masking.ratio"]), int(settings["seed"]), task, seed)]
        files.write_text(files.join(out, "result.json"), json.dumps({"dev/accuracy": accuracy}))

    monkeypatch.setattr(execution, "_train_in_process", _fake_trainer(fail_ratio=None))
    monkeypatch.setattr(loop, "finetune", fake_finetune)
    workdir = str(tmp_path / "sweep")
    specs = [f"tsv:{tmp_path}/{t}/train.tsv,{tmp_path}/{t}/dev.tsv" for t in ("order", "same")]
    run_sweep(
        small_run_config(str(tmp_path / "unused"), num_steps=7),
        workdir,
        ["masking.ratio=0.15,0.3", "seed=0,1,2"],
        base_args=[],
        finetune=make_plan(specs, seeds=["0", "1"]),
        baseline="masking.ratio=0.15",
    )

    def task_mean(ratio, seed, task):
        return (made_up[(ratio, seed, task, 0)] + made_up[(ratio, seed, task, 1)]) / 2

    def run_mean(ratio, seed):
        return (task_mean(ratio, seed, "order") + task_mean(ratio, seed, "same")) / 2

    rows = {r["run"]: r for r in _read_csv(os.path.join(workdir, "results.csv"))}
    row = rows["masking.ratio=0.3,seed=2"]
    assert float(row["finetune_accuracy/same/seed=1"]) == made_up[(0.3, 2, "same", 1)]
    assert float(row["finetune_accuracy/order"]) == pytest.approx(task_mean(0.3, 2, "order"))
    assert float(row["finetune_accuracy"]) == pytest.approx(run_mean(0.3, 2))

    def interval(score):
        diffs = np.array([score(0.3, s) - score(0.15, s) for s in range(3)])
        half = stats.t.ppf(0.975, df=2) * diffs.std(ddof=1) / np.sqrt(3)
        return f"{diffs.mean():+.4f} [{diffs.mean() - half:+.4f}, {diffs.mean() + half:+.4f}]"

    markdown = open(os.path.join(workdir, "results.md")).read().splitlines()
    header_at = next(i for i, line in enumerate(markdown) if "| seed pairs |" in line)
    header = [c.strip() for c in markdown[header_at].strip("|").split("|")]
    cells = [c.strip() for c in markdown[header_at + 2].strip("|").split("|")]
    paired = dict(zip(header, cells))
    assert paired["masking.ratio"] == "0.3" and paired["seed pairs"] == "3"
    for column, score in (
        ("Δ finetune_accuracy", run_mean),
        ("Δ finetune_accuracy/order", lambda r, s: task_mean(r, s, "order")),
        ("Δ finetune_accuracy/same", lambda r, s: task_mean(r, s, "same")),
    ):
        assert paired[column].removesuffix(" *") == interval(score), column
    plot = matplotlib.image.imread(os.path.join(workdir, "paired_vs_baseline.png"))
    assert plot.shape[1] > 7 * 400  # a panel per metric: 4 MLM scores, the mean, 2 tasks

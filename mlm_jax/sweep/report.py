"""A sweep's tables, from its run directories alone: results.csv (one row per run) and
results.md (mean and sample std over seeds), plus the plots.

Nothing here needs the process that trained the runs, so `--report` rebuilds everything from
a copied or half-finished sweep directory.
"""

from __future__ import annotations

import io
import logging as pylogging
import math
import os

from mlm_jax import files
from mlm_jax.sweep import SweepError, plots
from mlm_jax.sweep import baseline as baseline_lib
from mlm_jax.sweep.run_state import (
    DONE_MARKER,
    FAILED_MARKER,
    METRICS,
    SWEEP_FILE,
    TRAIN_MEANS,
    final_eval,
    finetune_results,
    is_finished,
    read_json,
)
from mlm_jax.training import workdir as workdir_lib

log = pylogging.getLogger("mlm_jax.sweep")


def collect(workdir: str) -> tuple[list[list[str]], list[dict]]:
    """(axes, one row per run) read from the sweep's workdirs only."""
    from mlm_jax.training import checkpoint as ckpt
    from mlm_jax.training import metrics as metrics_lib

    sweep = read_json(files.join(workdir, SWEEP_FILE))
    if sweep is None:
        raise SweepError(f"{files.join(workdir, SWEEP_FILE)} not found: not a sweep directory")
    rows = []
    for run in sweep["runs"]:
        run_dir = files.join(workdir, run["name"])
        row = {"run": run["name"], **run["settings"]}
        events = metrics_lib.read_metrics(run_dir)
        row.update(final_eval(events))
        saved = read_json(files.join(run_dir, "config.json"))
        step = ckpt.latest_step(run_dir) if files.isdir(run_dir) else None
        if saved and step is not None:
            row["tokens_seen"] = step * saved["train"]["batch_size"] * saved["data"]["seq_len"]
        done = read_json(files.join(run_dir, DONE_MARKER))
        failed = read_json(files.join(run_dir, FAILED_MARKER))
        row["wall_s"] = round(done["wall_s"], 1) if done else None
        row["finetune"] = finetune_results(run_dir, step)
        holder = workdir_lib.live_holder(run_dir) if files.isdir(run_dir) else None
        if is_finished(run_dir):  # (a run that failed once and was finished since is done)
            row["status"], row["reason"] = "done", ""
        elif holder:  # training now, under another driver or by hand
            row["status"], row["reason"] = "running", f"held by {holder}"
        elif failed:
            row["status"], row["reason"] = "failed", failed["reason"]
        else:
            row["status"], row["reason"] = ("partial" if events else "missing"), ""
        rows.append(row)
    add_finetune_columns(rows)
    return sweep["axes"], rows


FINETUNE = "finetune_accuracy"  # mean over the tasks of each task's mean over fine-tuning seeds


def add_finetune_columns(rows: list[dict]) -> None:
    """Turns each row's "finetune" ({task: {seed: dev accuracy}}, run_state.finetune_results)
    into columns: finetune_accuracy/<task>/seed=<s> for each result; finetune_accuracy/<task>,
    the mean over the seeds that task has anywhere in the sweep (empty unless the run has them
    all, so every run's mean is over the same seeds); finetune_accuracy, the mean over tasks
    (empty unless the run has every task). Pairing by pretraining seed then compares these
    means: the fine-tuning seeds of one run are repeats within it, not independent runs."""
    seeds: dict[str, set[int]] = {}
    for row in rows:
        for task, by_seed in row.get("finetune", {}).items():
            seeds.setdefault(task, set()).update(by_seed)
    for row in rows:
        got = row.pop("finetune", {})
        task_means = []
        for task in sorted(seeds):
            values = [got.get(task, {}).get(s) for s in sorted(seeds[task])]
            for s, value in zip(sorted(seeds[task]), values):
                row[f"{FINETUNE}/{task}/seed={s}"] = value
            mean = None if None in values else sum(values) / len(values)
            row[f"{FINETUNE}/{task}"] = mean
            task_means.append(mean)
        if seeds:
            row[FINETUNE] = None if None in task_means else sum(task_means) / len(task_means)


def finetune_columns(rows: list[dict], per_seed: bool = False) -> list[str]:
    """finetune_accuracy and each task's mean (per_seed: each task and seed's result instead),
    in the order add_finetune_columns made them; [] when no row has any."""
    names = dict.fromkeys(k for r in rows for k in r if k.startswith(FINETUNE + "/"))
    if per_seed:
        return [k for k in names if "/seed=" in k]
    means = [k for k in names if "/seed=" not in k]
    shown = any(r.get(FINETUNE) is not None for r in rows) or means
    return [FINETUNE, *means] if shown else []


def _columns(axes, rows: list[dict]) -> tuple[list[str], list[str]]:
    keys = [k for group in axes for k in group]
    values = [name for name, _ in METRICS + TRAIN_MEANS]
    values += [*finetune_columns(rows), "tokens_seen", "wall_s"]
    return keys, values


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(path: str, axes, rows: list[dict]) -> None:
    import csv

    keys, values = _columns(axes, rows)
    header = ["run", *keys, "status", "step", *values, *finetune_columns(rows, True), "reason"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(h)) for h in header])
    files.write_text(path, text.getvalue())


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def group_over_seeds(axes, rows: list[dict]) -> list[dict]:
    """One entry per setting of the non-seed keys: mean and sample std of each metric."""
    keys, values = _columns(axes, rows)
    group_keys = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["status"] == "done":
            groups.setdefault(tuple(row[k] for k in group_keys), []).append(row)
    out = []
    for setting, members in groups.items():
        entry = {"settings": dict(zip(group_keys, setting)), "n": len(members), "counts": {}}
        for name in values:
            got = [float(m[name]) for m in members if m.get(name) is not None]
            entry[name] = _mean_std(got) if got else None
            entry["counts"][name] = len(got)  # runs behind this metric's mean (<= n)
        out.append(entry)
    return out


def write_markdown(path: str, axes, rows: list[dict], paired: dict | None = None) -> None:
    keys, values = _columns(axes, rows)
    group_keys = [k for k in keys if k != "seed"]
    grouped = group_over_seeds(axes, rows)
    header = [*group_keys, "seeds", *values]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in grouped:
        cells = [_cell(entry["settings"][k]) for k in group_keys] + [str(entry["n"])]
        for name in values:
            stat = entry[name]
            if stat is None:
                cells.append("")
            elif name in ("tokens_seen", "wall_s"):
                cells.append(f"{stat[0]:.0f}")
            else:
                mean, std = stat
                cell = f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")
                if entry["counts"][name] < entry["n"]:  # e.g. a fine-tune that failed
                    cell += f" (n={entry['counts'][name]})"
                cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "done"]
    notes = [
        "",
        "eval_* = held-out MLM at the common eval masking (eval.mask_ratio); own_* = at the "
        "run's training masking. *masked_fraction = selected / eligible tokens (train: mean "
        "over the run's log windows). Mean ± sample std over seeds; (n=k) marks a mean over "
        "fewer runs than the seeds column.",
    ]
    if finetune_columns(rows):
        notes.append(
            f"{FINETUNE}/<task>: dev accuracy after fine-tuning, each run's mean over its "
            f"fine-tuning seeds; {FINETUNE}: the mean over tasks (results.csv has each seed's)."
        )
    for r in failed:
        notes.append(f"- {r['run']}: {r['status']} {r.get('reason', '')}".rstrip())
    if paired is not None:
        notes += baseline_lib.markdown_lines(paired, paired_metrics(rows))
    files.write_text(path, "\n".join(lines + notes) + "\n")


def paired_metrics(rows: list[dict]) -> list[str]:
    """The metrics the baseline differences cover: the eval/own scores and the likelihood bound
    (+ fine-tuning, the mean over tasks and each task)."""
    scores = ["eval_loss", "eval_accuracy", "eval_nll_bound", "own_loss", "own_accuracy"]
    return [*scores, *finetune_columns(rows)]


def write_report(workdir: str, baseline: str | None = None) -> list[dict]:
    """results.csv, results.md and the plots in `workdir`; returns the rows. baseline: KEY=VALUE
    for paired differences (None: the one the sweep was started with, if any)."""
    axes, rows = collect(workdir)
    if baseline is None:
        baseline = (read_json(files.join(workdir, SWEEP_FILE)) or {}).get("baseline", "")
    paired = None
    if baseline:
        paired = baseline_lib.paired_differences(axes, rows, baseline, paired_metrics(rows))
    write_csv(files.join(workdir, "results.csv"), axes, rows)
    write_markdown(files.join(workdir, "results.md"), axes, rows, paired)
    metric_plots = plots.plot_metrics(workdir, axes, group_over_seeds(axes, rows))
    if paired is not None:
        metric_plots.append(plots.plot_paired(workdir, paired, paired_metrics(rows)))
    curves = plots.plot_curves(workdir, rows)
    done = sum(r["status"] == "done" for r in rows)
    log.info(
        "report: %d/%d runs done; wrote results.csv, results.md, %s",
        done,
        len(rows),
        ", ".join(os.path.basename(p) for p in [*metric_plots, curves] if p),
    )
    return rows

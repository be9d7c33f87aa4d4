"""A sweep's PNGs: final metrics against each swept axis (seed error bars), and eval curves.

matplotlib is imported inside the functions (Agg backend), so importing the sweep package
stays cheap and needs no display.
"""

from __future__ import annotations

import io

from mlm_jax import files
from mlm_jax.sweep.axes import format_value
from mlm_jax.sweep.run_state import METRICS


def _axis_label(keys) -> str:
    return "/".join(keys)


# What each metric is, written on the figures that show it.
EXPLAINED = (
    "eval_*: held-out MLM at the common eval masking (eval.mask_ratio, the same for every run); "
    "own_*: at the run's own training masking; finetune_accuracy/<task>: dev accuracy after "
    "fine-tuning (mean over fine-tuning seeds), finetune_accuracy: its mean over tasks"
)


def _sane_ylim(ax, ys, errs) -> None:
    """A y-range at least 4 seed spreads tall, so a difference inside the noise looks flat."""
    spread = max([e for e in errs if e] or [0.0])
    low = min(y - (e or 0.0) for y, e in zip(ys, errs))
    high = max(y + (e or 0.0) for y, e in zip(ys, errs))
    middle, half = (low + high) / 2, max((high - low) / 2 * 1.15, 2 * spread, 1e-6)
    ax.set_ylim(middle - half, middle + half)


def plot_metrics(workdir: str, axes, grouped: list[dict]) -> list[str]:
    """Per non-seed axis: final metrics against the axis value, one line per other setting.

    `grouped` is report.group_over_seeds(axes, rows): a mean and std per metric and setting.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not grouped:
        return []
    panels = [name for name, _ in METRICS if not name.endswith("masked_fraction")]
    finetuned = [k for k in grouped[0]["counts"] if k.startswith("finetune_accuracy")]
    panels += [k for k in finetuned if any(g[k] for g in grouped)]  # the mean, then each task
    paths = []
    for keys in axes:
        if keys == ["seed"]:
            continue
        others = [k for group in axes for k in group if k not in keys and k != "seed"]
        x_values = sorted({tuple(g["settings"][k] for k in keys) for g in grouped}, key=str)
        numeric = len(keys) == 1 and all(isinstance(x[0], int | float) for x in x_values)
        if numeric:
            x_values.sort()
        fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        lines = {}
        for g in grouped:
            lines.setdefault(tuple(g["settings"][k] for k in others), []).append(g)
        for ax, name in zip(axs[0], panels):
            _draw_panel(ax, name, keys, others, lines, x_values, numeric)
        if others:
            axs[0][0].legend(fontsize=7)
        fig.text(0.01, 0.01, EXPLAINED + "; n = seeds behind a point", fontsize=7)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        path = files.join(workdir, f"metric_vs_{_axis_label(keys).replace('/', '+')}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


def _draw_panel(ax, name: str, keys, others, lines: dict, x_values: list, numeric: bool) -> None:
    """One metric against the axis value: a line (mean, seed std, n) per other setting."""
    ys_all, errs_all = [], []
    for other, members in sorted(lines.items(), key=str):
        members = sorted(
            members, key=lambda g: x_values.index(tuple(g["settings"][k] for k in keys))
        )
        members = [m for m in members if m[name] is not None]
        if not members:
            continue
        xs = [
            m["settings"][keys[0]]
            if numeric
            else x_values.index(tuple(m["settings"][k] for k in keys))
            for m in members
        ]
        ys = [m[name][0] for m in members]
        errs = [m[name][1] or 0.0 for m in members]
        label = ", ".join(f"{k}={format_value(v)}" for k, v in zip(others, other))
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=label or None)
        for x, y, m in zip(xs, ys, members):
            ax.annotate(f"n={m['counts'][name]}", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
        ys_all.extend(ys)
        errs_all.extend(errs)
    if not numeric:
        ax.set_xticks(range(len(x_values)))
        ax.set_xticklabels(["/".join(format_value(v) for v in x) for x in x_values])
    ax.set_xlabel(_axis_label(keys))
    ax.set_ylabel("mean ± seed std")
    ax.set_title(name, fontsize=9)
    ax.grid(alpha=0.3)
    if ys_all:
        _sane_ylim(ax, ys_all, errs_all)


def plot_paired(workdir: str, paired: dict, metrics: list[str]) -> str:
    """paired_vs_baseline.png: per metric, each setting's paired difference with its 95% t
    interval, a line at 0, and the seed pairs behind each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = paired["entries"]
    labels = [",".join(f"{k}={format_value(v)}" for k, v in e["settings"].items()) for e in entries]
    fig, axs = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.2), squeeze=False)
    for ax, name in zip(axs[0], metrics):
        for i, e in enumerate(entries):
            if e[name] is None:
                continue
            mean, low, high = e[name]
            ax.errorbar([i], [mean], yerr=[[mean - low], [high - mean]], marker="o", capsize=3,
                        color="C3" if low > 0 or high < 0 else "C0")  # fmt: skip
            ax.annotate(f"n={e['n']}", (i, mean), fontsize=7, textcoords="offset points",
                        xytext=(4, 4))  # fmt: skip
        ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"Δ vs {paired['key']}={paired['value']}")
        ax.set_title(f"{name}\npaired difference, 95% t CI", fontsize=9)
        ax.grid(alpha=0.3)
    fig.text(0.01, 0.01, EXPLAINED + "; red: interval excludes 0; n = seed pairs", fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = files.join(workdir, "paired_vs_baseline.png")
    _save_figure(fig, path)
    return path


def plot_curves(workdir: str, rows: list[dict]) -> str | None:
    """Eval loss and accuracy over steps, every run on one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlm_jax.training import metrics as metrics_lib

    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    drawn = 0
    for row in rows:
        events = [
            e
            for e in metrics_lib.read_metrics(files.join(workdir, row["run"]))
            if isinstance(e.get("eval/loss"), float)
        ]
        if not events:
            continue
        steps = [e["step"] for e in events]
        for ax, key in zip(axs, ("eval/loss", "eval/accuracy")):
            ax.plot(steps, [e[key] for e in events], label=row["run"])
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax, key in zip(axs, ("eval/loss", "eval/accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(f"{key} (common eval masking)")
        ax.grid(alpha=0.3)
    axs[1].legend(fontsize=7)
    fig.tight_layout()
    path = files.join(workdir, "eval_curves.png")
    _save_figure(fig, path)
    return path


def _save_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    files.write_bytes(path, png.getvalue())

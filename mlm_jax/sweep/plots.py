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
    if any(g["finetune_accuracy"] for g in grouped):
        panels.append("finetune_accuracy")
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
            if not numeric:
                ax.set_xticks(range(len(x_values)))
                ax.set_xticklabels(["/".join(format_value(v) for v in x) for x in x_values])
            ax.set_xlabel(_axis_label(keys))
            ax.set_title(name)
            ax.grid(alpha=0.3)
        if others:
            axs[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = files.join(workdir, f"metric_vs_{_axis_label(keys).replace('/', '+')}.png")
        _save_figure(fig, path)
        paths.append(path)
    return paths


def plot_curves(workdir: str, rows: list[dict]) -> str | None:
    """Eval loss and accuracy over steps, every run on one chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlm_jax import metrics as metrics_lib

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

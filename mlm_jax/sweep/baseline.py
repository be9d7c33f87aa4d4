"""Paired-by-seed differences to a baseline setting, with 95% t intervals.

Runs of one seed share their data order, initialisation and eval masks, so the difference
metric(setting, seed) - metric(baseline, seed) cancels most of what a seed changes. For each
setting, the n seeds it shares with its baseline partner (the same setting with the baseline
axis at the baseline value) give d_1..d_n; the report shows mean(d) and the interval
mean(d) -+ t(0.975, n - 1) * sd(d) / sqrt(n), and marks it when it excludes 0.
"""

from __future__ import annotations

import math

from mlm_jax.sweep import SweepError
from mlm_jax.sweep.axes import format_value


def parse_baseline(text: str, axes) -> tuple[tuple[str, ...], dict]:
    """`KEY=VALUE` -> (the axis' keys, the baseline point's {key: value}); one SweepError line."""
    if "=" not in text:
        raise SweepError(f"--baseline={text!r}: expected KEY=VALUE, e.g. masking.ratio=0.15")
    key, value = (part.strip() for part in text.split("=", 1))
    for group in axes:
        if key not in group:
            continue
        if list(group) == ["seed"]:
            raise SweepError("--baseline: seed is the pairing, not a setting; name another key")
        return tuple(group), {"key": key, "value": value}
    swept = ", ".join(k for group in axes for k in group if k != "seed")
    raise SweepError(f"--baseline key {key!r} is not swept; expected one of: {swept}")


def _same(a, text: str) -> bool:
    if format_value(a) == text:
        return True
    try:
        return float(a) == float(text)
    except (TypeError, ValueError):
        return False


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the 95% Student t interval of the mean; needs 2 or more values."""
    from scipy import stats  # (a dependency of jax)

    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_differences(axes, rows: list[dict], baseline: str, metrics: list[str]) -> dict:
    """{"key", "value", "entries": [{settings, n, metric: (mean, low, high) | None}]}.

    rows: report.collect's rows (done runs only count). Settings with fewer than 2 shared
    seeds get None for each metric (no interval from one pair).
    """
    group, point = parse_baseline(baseline, axes)
    setting_keys = [k for g in axes for k in g if k != "seed"]
    done = [r for r in rows if r["status"] == "done"]
    base_rows = [r for r in done if _same(r[point["key"]], point["value"])]
    if not base_rows:
        raise SweepError(f"--baseline={baseline}: no finished run has that value")
    base_group = {k: base_rows[0][k] for k in group}  # the whole axis point (keys move together)

    def partner_key(row, seed):
        return tuple(base_group.get(k, row[k]) for k in setting_keys) + (seed,)

    by_key = {tuple(r[k] for k in setting_keys) + (r.get("seed"),): r for r in done}
    entries: dict[tuple, dict] = {}
    for row in done:
        if all(row[k] == base_group[k] for k in group):
            continue
        partner = by_key.get(partner_key(row, row.get("seed")))
        setting = tuple(row[k] for k in setting_keys)
        entry = entries.setdefault(
            setting, {"settings": dict(zip(setting_keys, setting)), "pairs": []}
        )
        if partner is not None:
            entry["pairs"].append((row, partner))
    out = []
    for entry in entries.values():
        result = {"settings": entry["settings"], "n": len(entry["pairs"])}
        for name in metrics:
            diffs = [
                float(a[name]) - float(b[name])
                for a, b in entry["pairs"]
                if a.get(name) is not None and b.get(name) is not None
            ]
            result[name] = t_interval(diffs) if len(diffs) >= 2 else None
        out.append(result)
    return {"key": point["key"], "value": point["value"], "entries": out}


def markdown_lines(paired: dict, metrics: list[str]) -> list[str]:
    """The results.md section: one row per setting, `mean [low, high]`, * when 0 is outside."""
    entries = paired["entries"]
    if not entries:
        return []
    keys = list(entries[0]["settings"])
    header = [*keys, "seed pairs", *[f"Δ {m}" for m in metrics]]
    lines = [
        "",
        f"Paired by seed: difference to {paired['key']}={paired['value']} (setting minus "
        "baseline, same seed), mean [95% t interval]; * = the interval excludes 0.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for e in entries:
        cells = [format_value(e["settings"][k]) for k in keys] + [str(e["n"])]
        for m in metrics:
            stat = e[m]
            if stat is None:
                cells.append("(< 2 pairs)")
                continue
            mean, low, high = stat
            star = " *" if low > 0 or high < 0 else ""
            cells.append(f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]{star}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines

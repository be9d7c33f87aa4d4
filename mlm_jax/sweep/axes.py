"""Sweep axes: `--sweep` strings parsed against the config, their cross product, run names.

An axis is (keys, points): keys that move together (`masking.mask_prob/masking.random_prob`)
and one tuple of values per point (separated by `,`, or by `;` where a value holds a comma), each parsed with the type of its config field. A run is a
{key: value} dict; its directory name is the settings written out (`masking.ratio=0.3,seed=1`).
"""

from __future__ import annotations

import copy
import itertools
import re

from mlm_jax.sweep import SweepError


def _leaf(config, key: str):
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node:
            raise SweepError(
                f"--sweep key {key!r}: {'.'.join(parts[: i + 1])!r} is not in the config"
            )
        node = node[part]
    if hasattr(node, "keys"):
        raise SweepError(f"--sweep key {key!r} is a section, not a field; name one of its fields")
    return node


def parse_value(key: str, text: str, current):
    """`text` parsed with the type of the config field `key` (whose value is `current`)."""
    text = text.strip()
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise SweepError(f"--sweep {key}={text!r}: expected a bool (true/false)")
    for kind in (int, float):
        if isinstance(current, kind):
            try:
                return kind(text)
            except ValueError:
                raise SweepError(
                    f"--sweep {key}={text!r}: expected {kind.__name__} like the config's "
                    f"{current!r}"
                ) from None
    if isinstance(current, str):
        return text
    raise SweepError(
        f"--sweep key {key!r} holds a {type(current).__name__}; only bool, int, float and str "
        "fields can be swept"
    )


def parse_axes(specs: list[str], config) -> list[tuple[tuple[str, ...], list[tuple]]]:
    """[(keys, [values tuple per point])] from `--sweep` strings, checked against `config`."""
    if not specs:
        raise SweepError(
            "no --sweep given: name at least one axis, e.g. --sweep=masking.ratio=0.15,0.4"
        )
    axes, seen = [], set()
    for spec in specs:
        if "=" not in spec:
            raise SweepError(f"--sweep={spec!r}: expected KEY=V1,V2,...")
        key_text, values_text = spec.split("=", 1)
        keys = tuple(k.strip() for k in key_text.split("/"))
        for key in keys:
            if key in seen:
                raise SweepError(f"--sweep key {key!r} appears twice")
            seen.add(key)
        currents = [_leaf(config, key) for key in keys]
        # `;` separates the points when the list has one: values with commas (uniform:0,1).
        items = [v for v in values_text.split(";" if ";" in values_text else ",") if v.strip()]
        if not items:
            raise SweepError(f"--sweep={spec!r}: empty value list")
        points = []
        for item in items:
            parts = item.split("/") if len(keys) > 1 else [item]
            if len(parts) != len(keys):
                raise SweepError(
                    f"--sweep={spec!r}: value {item!r} has {len(parts)} parts for {len(keys)} keys"
                )
            points.append(tuple(parse_value(k, p, c) for k, p, c in zip(keys, parts, currents)))
        if len(set(points)) != len(points):
            raise SweepError(f"--sweep={spec!r}: repeated value")
        axes.append((keys, points))
    return axes


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def run_name(settings: dict) -> str:
    """A filesystem-safe directory name such as `masking.ratio=0.3,seed=1`."""
    text = ",".join(f"{k}={format_value(v)}" for k, v in settings.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def check_names(names: list[str], runs: list[dict]) -> None:
    """Each run needs its own directory: run_name maps some characters to "_", and a name may
    not exceed what a filesystem allows."""
    seen = {}
    for name, settings in zip(names, runs):
        if name in seen:
            raise SweepError(
                f"runs {seen[name]} and {settings} would share the directory {name!r} "
                "(run_name keeps only [A-Za-z0-9._=,+-]); make the swept values differ there"
            )
        if len(name.encode()) > 255:
            raise SweepError(f"run directory name {name[:60]!r}... is over 255 bytes")
        seen[name] = settings


def expand(axes) -> list[dict]:
    """The cross product of the axes: one {key: value} dict per run, in axis order."""
    runs = []
    for combo in itertools.product(*(points for _, points in axes)):
        settings = {}
        for (keys, _), point in zip(axes, combo):
            settings.update(zip(keys, point))
        runs.append(settings)
    return runs


def apply_settings(config, settings: dict):
    """A copy of the (locked) config with the run's settings; unknown keys cannot slip in."""
    config = copy.deepcopy(config)
    for key, value in settings.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        setattr(node, last, value)
    return config

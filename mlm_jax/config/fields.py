"""The checks every spec's constructor uses on its own fields: one ValueError line each,
`config.<key>=<value>: expected <what>`, so every bad value reads the same way."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _fail(key: str, value: Any, expected: str):
    raise ValueError(f"config.{key}={value!r}: expected {expected}")


def check_int(key: str, value: Any, *, minimum: int | None = None, maximum: int | None = None):
    """An integer (not a bool) in [minimum, maximum]; returns it as int."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum is not None and maximum is not None:
            _fail(key, value, f"an integer in {minimum}..{maximum}")
        if maximum is not None:
            _fail(key, value, f"an integer <= {maximum}")
        _fail(key, value, "an integer" + (f" >= {minimum}" if minimum is not None else ""))
    return int(value)


def check_float(
    key: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number (not a bool) in the interval; returns it as float."""
    number = not isinstance(value, bool) and isinstance(value, (int, float, np.floating))
    ok = number and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            _fail(key, value, f"a float in {interval}")
        if low is not None:
            _fail(key, value, f"a float {'>' if low_open else '>='} {low:g}")
        if high is not None:
            _fail(key, value, f"a float {'<' if high_open else '<='} {high:g}")
        _fail(key, value, "a finite float")
    return float(value)


def check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        _fail(key, value, f"one of {', '.join(allowed)}")
    return value


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        _fail(key, value, "True or False")
    return bool(value)

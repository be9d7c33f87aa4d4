"""The masking ratio over a run, and the exact integer budget a ratio gives a row.

A ratio reaches `mask_tokens` as an `ExactRatio`: its float value and, where the ratio is a
constant known on the host (a constant schedule, a piece of a piecewise schedule, a Python
float), the fraction num/den it was written as (0.15 -> 3/20). With that fraction the uniform
budget round(ratio * n) is computed in integers, half to even, so 0.15 of 190 eligible tokens
is 28 (float32 would say 28.5000004 -> 29). Linear and cosine ratios have den = 0 and round in
float32.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

SCHEDULES = ("constant", "linear", "cosine", "piecewise")


class ExactRatio(NamedTuple):
    """A masking ratio on device: value, and num/den when it is an exact constant (else 0/0)."""

    value: jax.Array  # float32 scalar
    num: jax.Array  # int32 scalar
    den: jax.Array  # int32 scalar; 0 = no exact fraction, round value * n in float32


# Rows up to this many tokens keep num * n inside int32 (denominators up to 32767: any ratio
# written with four decimals is exact).
MAX_EXACT_ROW = 65536


def exact_fraction(ratio: float) -> tuple[int, int]:
    """(num, den) of `ratio` as written in decimal (repr), with num * MAX_EXACT_ROW in int32."""
    fraction = Fraction(repr(float(ratio))).limit_denominator((2**31 - 1) // (MAX_EXACT_ROW + 1))
    return fraction.numerator, fraction.denominator


def as_exact_ratio(ratio: Any) -> ExactRatio:
    """An ExactRatio from a Python float (exact), a traced scalar (float only) or itself."""
    if isinstance(ratio, ExactRatio):
        return ratio
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        num, den = exact_fraction(ratio)
        return ExactRatio(jnp.float32(ratio), jnp.int32(num), jnp.int32(den))
    return ExactRatio(jnp.asarray(ratio, jnp.float32), jnp.int32(0), jnp.int32(0))


def parse_pieces(key: str, text: Any) -> tuple[tuple[int, float], ...]:
    """`"800:0.15 1600:0.1"` -> ((800, 0.15), (1600, 0.1)): from each step on, that ratio.

    Steps strictly increase and are > 0; ratios lie in (0, 1). One error line names the key.
    """
    if not isinstance(text, str):
        raise ValueError(f"config.{key}={text!r}: expected a string like '800:0.15 1600:0.1'")
    pieces, last = [], 0
    for item in text.split():
        try:
            step_text, ratio_text = item.split(":")
            step, ratio = int(step_text), float(ratio_text)
        except ValueError:
            raise ValueError(
                f"config.{key}={text!r}: expected STEP:RATIO pairs separated by spaces, "
                f"like '800:0.15' (bad item {item!r})"
            ) from None
        if step <= last or not 0 < ratio < 1:
            raise ValueError(
                f"config.{key}={text!r}: expected increasing steps > 0 and ratios in (0, 1) "
                f"(bad item {item!r})"
            )
        pieces.append((step, ratio))
        last = step
    return tuple(pieces)


def ratio_at_step(step: Any, spec) -> jax.Array:
    """Masking ratio at `step` (float32 scalar; step may be traced).

    With t = clip(step / num_steps, 0, 1): constant -> ratio; linear -> ratio + (end - ratio) t;
    cosine -> end + (ratio - end) (1 + cos(pi t)) / 2. t is the fraction of training done, the
    clock the learning rate decays on too, so the end ratio is where the schedule arrives after
    the last step (num_steps - 1 is 1/num_steps short). piecewise -> ratio until the first
    piece's step, then each piece's ratio from its step on.
    """
    return scheduled_ratio(step, spec).value


def scheduled_ratio(step: Any, spec) -> ExactRatio:
    """The ratio at `step` as mask_tokens takes it: exact for constant and piecewise schedules."""
    start, end = spec.ratio, spec.end_ratio
    if spec.schedule in ("constant", "piecewise"):
        values = [start] + [r for _, r in spec.pieces]
        fractions = [exact_fraction(r) for r in values]
        index = jnp.int32(0)
        for boundary, _ in spec.pieces:
            index = index + (jnp.asarray(step) >= boundary).astype(jnp.int32)
        pick = lambda xs, dtype: jnp.asarray(xs, dtype)[index]  # noqa: E731
        return ExactRatio(
            pick(values, jnp.float32),
            pick([f[0] for f in fractions], jnp.int32),
            pick([f[1] for f in fractions], jnp.int32),
        )
    t = jnp.clip(jnp.asarray(step, jnp.float32) / spec.num_steps, 0.0, 1.0)
    if spec.schedule == "linear":
        value = jnp.float32(start) + (end - start) * t
    else:
        value = jnp.float32(end) + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    return ExactRatio(value, jnp.int32(0), jnp.int32(0))


def largest_ratio(schedule: str, ratio: float, end_ratio: float, pieces) -> float:
    """The largest ratio the schedule reaches (sizes K)."""
    if schedule == "constant":
        return ratio
    if schedule == "piecewise":
        return max([ratio] + [r for _, r in pieces])
    return max(ratio, end_ratio)


def round_budget(n: jax.Array, ratio: ExactRatio) -> jax.Array:
    """round(ratio * n), half to even: in integers when ratio.den > 0, else in float32."""
    den = jnp.maximum(ratio.den, 1)
    product = n * ratio.num
    quotient = product // den
    twice_rest = 2 * (product - quotient * den)
    up = (twice_rest > den) | ((twice_rest == den) & (quotient % 2 == 1))
    exact = quotient + up.astype(jnp.int32)
    approximate = jnp.round(ratio.value * n.astype(jnp.float32)).astype(jnp.int32)
    return jnp.where(ratio.den > 0, exact, approximate)


def real_target(n: jax.Array, ratio: ExactRatio) -> jax.Array:
    """ratio * n as float32 (the word strategies' expected budget)."""
    den = jnp.maximum(ratio.den, 1)
    exact = (n * ratio.num).astype(jnp.float32) / den.astype(jnp.float32)
    return jnp.where(ratio.den > 0, exact, ratio.value * n.astype(jnp.float32))

"""The masking ratio over a run, and the exact integer budget a ratio gives a row.

A ratio reaches `mask_tokens` as an `ExactRatio`: its float value and, where the ratio comes
from the host (a config value, a schedule, a Python float), the exact number
(num + rest / steps) / den. Config ratios are written with at most 4 decimals (any
denominator up to 32767, like 0.125, also works); others are refused in one line, never
replaced by a nearby fraction (a Python float that is not one rounds in float32). With
that fraction the budget round(ratio * n) is computed in integers, half to even, so 0.15 of
190 eligible tokens is 28 (float32 would say 28.5000004 -> 29), and a scheduled ratio gives
the same budget under jit and eagerly at every step: linear ratios are exact fractions of the
step, and cosine's factor is evaluated in 2^-28 fixed point (integers, within 4e-8 of the
cosine). Only a traced float32 ratio (the Python API) rounds in float32.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

SCHEDULES = ("constant", "linear", "cosine", "piecewise")


class ExactRatio(NamedTuple):
    """A masking ratio on device: value, and (num + rest / steps) / den where exact."""

    value: jax.Array  # float32 scalar (logged; the ratio itself when den = 0)
    num: jax.Array  # int32 scalar
    den: jax.Array  # int32 scalar; 0 = no exact fraction, round value * n in float32
    # A scheduled ratio's part between integers (int32 scalars; 0 and 1 for a plain fraction):
    rest: jax.Array | int = 0  # in [0, steps)
    steps: jax.Array | int = 1  # >= 1


# Rows up to this many tokens keep n * den inside int32 (denominators up to 32767: any ratio
# written with four decimals is exact).
MAX_EXACT_ROW = 65536
MAX_DEN = (2**31 - 1) // (MAX_EXACT_ROW + 1)
ONE_Q30 = 2**30  # fixed point of the cosine factor and the largest `steps`


def exact_fraction(ratio: float, key: str = "ratio") -> tuple[int, int]:
    """(num, den) of `ratio` as written in decimal (repr); refused if den > MAX_DEN."""
    fraction = Fraction(repr(float(ratio)))
    if fraction.denominator > MAX_DEN:
        raise ValueError(
            f"{key}={ratio!r}: expected a ratio with at most 4 decimals (a fraction with "
            f"denominator up to {MAX_DEN}), so its budget is exact in integers"
        )
    return fraction.numerator, fraction.denominator


def check_exact_ratios(schedule: str, ratio, end_ratio, corruption_ratio, num_steps: int) -> None:
    """masking.*'s ratios are exact, and a linear or cosine schedule's ends share a denominator."""
    _, den = exact_fraction(ratio, "config.masking.ratio")
    if corruption_ratio:
        exact_fraction(corruption_ratio, "config.masking.corruption_ratio")
    if schedule in ("linear", "cosine"):
        _, end_den = exact_fraction(end_ratio, "config.masking.end_ratio")
        if math.lcm(den, end_den) > MAX_DEN or not 0 < num_steps < ONE_Q30:
            raise ValueError(
                f"config.masking.ratio={ratio!r}, end_ratio={end_ratio!r} over {num_steps} "
                f"steps: expected ratios with at most 4 decimals and fewer than {ONE_Q30} steps"
            )


def _int32(*values):
    return tuple(jnp.asarray(v, jnp.int32) for v in values)


def as_exact_ratio(ratio: Any) -> ExactRatio:
    """An ExactRatio from a Python float (exact if its denominator is at most MAX_DEN, else a
    float32 value as a traced ratio is, never a nearby fraction), a traced scalar or itself."""
    if isinstance(ratio, ExactRatio):
        return ratio
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        fraction = Fraction(repr(float(ratio)))
        num, den = fraction.numerator, fraction.denominator
        if den > MAX_DEN:
            num, den = 0, 0
        return ExactRatio(jnp.float32(ratio), *_int32(num, den, 0, 1))
    return ExactRatio(jnp.asarray(ratio, jnp.float32), *_int32(0, 0, 0, 1))


def parse_pieces(key: str, text: Any) -> tuple[tuple[int, float], ...]:
    """`"800:0.15 1600:0.1"` -> ((800, 0.15), (1600, 0.1)): from each step on, that ratio.

    Steps strictly increase and are > 0; ratios lie in (0, 1) with at most 4 decimals. One
    error line names the key.
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
        exact_fraction(ratio, f"config.{key} item {item!r}:")
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
    """The ratio at `step` as mask_tokens takes it: exact, in integers, for every schedule."""
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
            *_int32(0, 1),
        )
    (a, den_a), (c, den_c) = exact_fraction(start), exact_fraction(end)
    den = math.lcm(den_a, den_c)
    a, c, n_steps = a * den // den_a, c * den // den_c, spec.num_steps
    done = jnp.clip(jnp.asarray(step, jnp.int32), 0, n_steps)  # steps done, of n_steps
    if spec.schedule == "linear":  # den r = low + |c - a| u / n_steps, u the steps away from low
        away, steps = (done if c >= a else n_steps - done), n_steps
    else:  # den r = low + |c - a| g, g the cosine factor towards the high end, in 2^-30
        factor = cosine_factor_q30(done, n_steps)  # (1 + cos(pi t)) / 2: 1 at the start
        away, steps = (ONE_Q30 - factor if c >= a else factor), ONE_Q30
    whole, rest = mul_div(abs(c - a), away, steps)
    num = min(a, c) + whole
    value = (num.astype(jnp.float32) + rest.astype(jnp.float32) / steps) / den
    return ExactRatio(value, num, *_int32(den, rest, steps))


def mul_div(x, y, z) -> tuple[jax.Array, jax.Array]:
    """(q, r) with x y = q z + r, 0 <= r < z, in int32 without overflow (long multiplication,
    one bit of y at a time), for 0 <= x, y < 2^31, 0 < z <= 2^30 and q < 2^31."""
    x, y, z = _int32(x, y, z)
    q, x = (x // z) * y, x % z

    def one_bit(i, carry):  # bits of y from the 30th down
        r, part = carry
        r, part = _reduce(2 * r, 2 * part, z)  # r < z <= 2^30, so 2 r fits
        return _reduce(r + x * ((y >> (30 - i)) & 1), part, z)  # and so does r + x

    # A rolled loop: unrolled, its 31 steps (eight times over in a cosine) made one fusion
    # that XLA's CPU backend took minutes to optimize in the eval step.
    r, part = jax.lax.fori_loop(0, 31, one_bit, (jnp.zeros_like(q), jnp.zeros_like(q)))
    return q + part, r


def _reduce(r, part, z):
    over = r >= z
    return jnp.where(over, r - z, r), part + over.astype(jnp.int32)


# cos(pi x) = sum_k (-1)^k pi^2k / (2k)! (x^2)^k, for x in [0, 1/2]: terms to k = 7 leave
# under 1e-10; coefficients in 2^-28 (|c_1| = 4.93 < 8).
_COS_Q28 = [round((-1) ** k * math.pi ** (2 * k) / math.factorial(2 * k) * 2**28) for k in range(8)]


def cosine_factor_q30(done, n_steps: int) -> jax.Array:
    """round-ish(2^30 (1 + cos(pi done / n_steps)) / 2) in integers (within 2^-24 of it), so
    it is the same number under jit and eagerly on every backend."""
    x, _ = mul_div(ONE_Q30, done, n_steps)  # t in 2^-30
    mirrored = x > ONE_Q30 // 2  # cos(pi t) = -cos(pi (1 - t))
    x = jnp.where(mirrored, ONE_Q30 - x, x)
    x2, _ = mul_div(x, x, ONE_Q30)  # <= 2^28
    poly = jnp.int32(_COS_Q28[-1])
    for coefficient in reversed(_COS_Q28[:-1]):
        product, _ = mul_div(jnp.abs(poly), x2, ONE_Q30)
        poly = coefficient + jnp.sign(poly) * product
    cos_q28 = jnp.where(mirrored, -poly, poly)
    return (2**28 + cos_q28) * 2  # (1 + cos) / 2 in 2^-30


def largest_ratio(schedule: str, ratio: float, end_ratio: float, pieces) -> float:
    """The largest ratio the schedule reaches (sizes K)."""
    if schedule == "constant":
        return ratio
    if schedule == "piecewise":
        return max([ratio] + [r for _, r in pieces])
    return max(ratio, end_ratio)


def round_budget(n: jax.Array, ratio: ExactRatio) -> jax.Array:
    """round(ratio * n), half to even: in integers when ratio.den > 0, else in float32."""
    whole, fraction, den, steps = _scaled(n, ratio)
    quotient = whole // den
    excess = 2 * (whole - quotient * den) - den  # + 2 fraction / steps = den (2 frac(n r) - 1)
    above = (
        (excess > 0) | ((excess == 0) & (fraction > 0)) | ((excess == -1) & (2 * fraction > steps))
    )
    tie = ((excess == 0) & (fraction == 0)) | ((excess == -1) & (2 * fraction == steps))
    exact = quotient + (above | (tie & (quotient % 2 == 1))).astype(jnp.int32)
    approximate = jnp.round(ratio.value * n.astype(jnp.float32)).astype(jnp.int32)
    return jnp.where(ratio.den > 0, exact, approximate)


def real_target(n: jax.Array, ratio: ExactRatio) -> jax.Array:
    """ratio * n as float32 (the word strategies' expected budget)."""
    whole, fraction, den, steps = _scaled(n, ratio)
    exact = (whole.astype(jnp.float32) + fraction.astype(jnp.float32) / steps) / den
    return jnp.where(ratio.den > 0, exact, ratio.value * n.astype(jnp.float32))


def _scaled(n, ratio: ExactRatio):
    """n r den = whole + fraction / steps (integers, 0 <= fraction < steps), with den >= 1."""
    steps = jnp.maximum(ratio.steps, 1)
    part, fraction = mul_div(n, ratio.rest, steps)
    return n * ratio.num + part, fraction, jnp.maximum(ratio.den, 1), steps

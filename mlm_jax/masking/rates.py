"""Per-row masking rates: `masking.rate_distribution` (variable-rate, masked-diffusion training).

    fixed          every row at the scheduled ratio (masking.ratio and its schedule): BERT's MLM
    uniform:A,B    each row draws its own rate t ~ U(A, B); uniform:0,1 is MDLM's / LLaDA's t
    beta:A,B       each row draws t ~ Beta(A, B) (its mass where A and B put it, support (0, 1))

Each row draws its rate from its own masking key (folded with a tag of its own, so the row's
selection keys are the ones a fixed rate would use), which makes the rate follow the row's key:
static masking (masking.static_epochs) keeps a row's rate for as long as its mask. The drawn
rate is rounded to a multiple of 1 / RATE_DENOMINATOR and reaches mask_tokens as an
ExactRatio num / RATE_DENOMINATOR, so the row's budget round(t * n) is computed in integers,
exactly as a constant ratio's is (the grid moves a quantile by at most 1 / (2 *
RATE_DENOMINATOR) = 3e-5, far below what any test of the distribution resolves).

K (predictions per row) is sized by `upper_end`: the largest rate the distribution can draw.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from mlm_jax.config.fields import check_choice
from mlm_jax.masking.schedule import ExactRatio, scheduled_ratio

RATE_KINDS = ("fixed", "uniform", "beta")
LOSS_WEIGHTINGS = ("mean", "elbo")  # masking.loss_weighting (training/weighting.py)
RATE_DENOMINATOR = 2**14  # rates on a grid of 1/16384: num * n stays in int32 for n <= 2**16
_RATE_STREAM = 0x7261  # folded into a row's masking key for its rate ("ra")


@dataclasses.dataclass(frozen=True)
class RateDistribution:
    """A parsed masking.rate_distribution; hashable, so MaskingSpec stays a static jit argument."""

    kind: str = "fixed"
    a: float = 0.0  # uniform: low end; beta: alpha
    b: float = 0.0  # uniform: high end; beta: beta

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    def upper_end(self) -> float:
        """The largest rate a row can draw (sizes K); beta's support reaches 1."""
        if self.kind == "uniform":
            return self.b
        if self.kind == "beta":
            return 1.0
        raise ValueError("a fixed rate has no distribution: K follows the ratio schedule")

    def __str__(self) -> str:
        return "fixed" if self.is_fixed else f"{self.kind}:{self.a!r},{self.b!r}"


def parse_rate_distribution(key: str, text: Any) -> RateDistribution:
    """`fixed` | `uniform:A,B` (0 <= A < B <= 1) | `beta:A,B` (A, B > 0); one error line else."""
    expected = (
        f"config.{key}={text!r}: expected fixed, uniform:A,B with 0 <= A < B <= 1, "
        "or beta:A,B with A, B > 0 (like uniform:0,1 or beta:2,6)"
    )
    if text == "fixed":
        return RateDistribution()
    if not isinstance(text, str) or text.count(":") != 1:
        raise ValueError(expected)
    kind, _, params = text.partition(":")
    try:
        a_text, b_text = params.split(",")
        a, b = float(a_text), float(b_text)
    except ValueError:
        raise ValueError(expected) from None
    finite = math.isfinite(a) and math.isfinite(b)
    if kind == "uniform" and finite and 0 <= a < b <= 1:
        return RateDistribution("uniform", a, b)
    if kind == "beta" and finite and a > 0 and b > 0:
        return RateDistribution("beta", a, b)
    raise ValueError(expected)


def masking_ratio(step, keys_B: jax.Array, spec) -> ExactRatio:
    """The ratio mask_tokens takes: the schedule's at `step`, or each row's own rate."""
    if spec.rates.is_fixed:
        return scheduled_ratio(step, spec)
    return row_rates(keys_B, spec.rates)


def row_rates(keys_B: jax.Array, dist: RateDistribution) -> ExactRatio:
    """One rate per row from the row's own key, as an ExactRatio of [B] arrays on the grid.

    keys_B: per-row masking keys (masking.masking_keys), typed or raw. jit- and vmap-safe.
    """
    if dist.is_fixed:
        raise ValueError("row_rates needs a distribution; a fixed rate is scheduled_ratio's")
    rate_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, _RATE_STREAM)
    if dist.kind == "uniform":
        draw = lambda k: jax.random.uniform(k, (), jnp.float32, dist.a, dist.b)  # noqa: E731
    else:
        draw = lambda k: jax.random.beta(k, dist.a, dist.b, (), jnp.float32)  # noqa: E731
    t_B = jax.vmap(draw)(rate_keys_B)
    num_B = jnp.clip(jnp.round(t_B * RATE_DENOMINATOR), 0, RATE_DENOMINATOR).astype(jnp.int32)
    den_B = jnp.full_like(num_B, RATE_DENOMINATOR)
    return ExactRatio(num_B.astype(jnp.float32) / RATE_DENOMINATOR, num_B, den_B)


def check_rate_fields(
    masking_config: Any, *, schedule: str, mask_prob: float, random_prob: float,
    corruption_ratio: float,
) -> tuple[RateDistribution, str]:  # fmt: skip
    """masking.rate_distribution and masking.loss_weighting, checked against the fields whose
    meaning they change: (distribution, weighting), or one error line.

    A drawn rate replaces the ratio schedule (masking.ratio is not used), so the schedule must
    be constant. elbo is the masked-diffusion bound only when masking hides what it predicts
    and nothing else: [MASK] for every selected token (mask_prob 1, random_prob 0: a kept or
    random token would show or mislead at its own target) and no corruption rate of its own.
    Static masking, strategies and the floor keep their meaning at any rate.
    """
    m = masking_config
    dist = parse_rate_distribution("masking.rate_distribution", m.rate_distribution)
    weighting = check_choice("masking.loss_weighting", m.loss_weighting, LOSS_WEIGHTINGS)
    if not dist.is_fixed and schedule != "constant":
        raise ValueError(
            f"config.masking.schedule={schedule!r}: expected 'constant' with "
            f"masking.rate_distribution={m.rate_distribution!r} (each row draws its own rate)"
        )
    if weighting == "elbo" and (mask_prob != 1 or random_prob != 0 or corruption_ratio != 0):
        raise ValueError(
            f"config.masking.loss_weighting='elbo': expected masking.mask_prob=1, random_prob=0 "
            f"and corruption_ratio=0 (MDLM's [MASK]-only corruption; got {mask_prob:g}, "
            f"{random_prob:g}, {corruption_ratio:g})"
        )
    return dist, weighting

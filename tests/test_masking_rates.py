"""Per-row masking rates (masking.rate_distribution): parsing, the law of the drawn rates
(Kolmogorov-Smirnov against scipy), and the exact budget at each row's own rate."""

from fractions import Fraction

import jax
import numpy as np
import pytest
from scipy import stats

from mlm_jax.masking import mask_tokens, masking_keys
from mlm_jax.masking.rates import (
    RATE_DENOMINATOR,
    RateDistribution,
    parse_rate_distribution,
    row_rates,
)
from tests.test_masking import SPECIAL, make_spec

ROWS = 4000
# KS critical value at significance 1e-4 for ROWS draws, plus the most the 1/RATE_DENOMINATOR
# grid can move the empirical CDF away from the continuous one.
KS_LIMIT = stats.kstwo.ppf(1 - 1e-4, ROWS) + 1 / (2 * RATE_DENOMINATOR)


def rates_of(dist, rows=ROWS, step=0, seed=0):
    keys = masking_keys(jax.random.key(seed), step, np.arange(rows), np.zeros(rows), 0)
    return jax.jit(row_rates, static_argnums=1)(keys, dist)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fixed", RateDistribution()),
        ("uniform:0,1", RateDistribution("uniform", 0.0, 1.0)),
        ("uniform:0.1,0.5", RateDistribution("uniform", 0.1, 0.5)),
        ("beta:2,6", RateDistribution("beta", 2.0, 6.0)),
    ],
)
def test_parse_accepts_the_three_kinds(text, expected):
    assert parse_rate_distribution("masking.rate_distribution", text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "uniform", "uniform:0.5,0.5", "uniform:0.2,1.5", "uniform:-0.1,0.5", "beta:0,1",
     "beta:1", "normal:0,1", "uniform:a,b", "uniform:0,nan", 0.15, "beta:1,2,3"],
)  # fmt: skip
def test_bad_distributions_are_one_line_naming_the_key(text):
    with pytest.raises(ValueError) as e:
        parse_rate_distribution("masking.rate_distribution", text)
    message = str(e.value)
    assert message.startswith(f"config.masking.rate_distribution={text!r}: expected")
    assert "\n" not in message


def test_upper_end_sizes_k():
    assert RateDistribution("uniform", 0.1, 0.4).upper_end() == 0.4
    assert RateDistribution("beta", 2, 6).upper_end() == 1.0


@pytest.mark.parametrize(
    "dist, reference",
    [
        (RateDistribution("uniform", 0.0, 1.0), stats.uniform(0.0, 1.0)),
        (RateDistribution("uniform", 0.2, 0.7), stats.uniform(0.2, 0.5)),
        (RateDistribution("beta", 2.0, 6.0), stats.beta(2.0, 6.0)),
        (RateDistribution("beta", 0.5, 0.5), stats.beta(0.5, 0.5)),
    ],
)
def test_row_rates_follow_the_distribution(dist, reference):
    rates = rates_of(dist)
    values = np.asarray(rates.value, np.float64)
    assert stats.kstest(values, reference.cdf).statistic < KS_LIMIT
    # The value is the exact fraction the budget rounds with.
    np.testing.assert_array_equal(values * RATE_DENOMINATOR, np.asarray(rates.num))
    assert (np.asarray(rates.den) == RATE_DENOMINATOR).all()


def test_rows_draw_independent_rates_from_their_own_keys():
    """Neighbouring rows (keys folded from the same step key) are uncorrelated, and another
    step draws other rates: Pearson r within 4 standard errors (1/sqrt(n)) of 0."""
    values = np.asarray(rates_of(RateDistribution("uniform", 0.0, 1.0)).value)
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 4 / np.sqrt(ROWS - 1)
    other = np.asarray(rates_of(RateDistribution("uniform", 0.0, 1.0), step=1).value)
    assert abs(np.corrcoef(values, other)[0, 1]) < 4 / np.sqrt(ROWS)


def round_half_even(fraction: Fraction) -> int:
    return round(fraction)  # Python rounds Fractions half to even, exactly


@pytest.mark.parametrize("strategy", ["uniform", "whole_word", "span"])
def test_budget_is_exact_at_each_rows_rate(strategy):
    """num_wanted = max(round(t n), floor) in exact arithmetic at each row's own rate t; uniform
    selects exactly that many; the word strategies select t n in expectation (the mean error
    within 5 standard errors of 0)."""
    rows, length = 1024, 64
    rng = np.random.default_rng(0)
    tokens = rng.integers(len(SPECIAL), 50, (rows, length))
    tokens[:, 0], tokens[:, -1] = 2, 3  # [CLS] ... [SEP]
    maskable = rng.random((rows, length)) < 0.9
    starts = rng.random((rows, length)) < 0.6
    spec = make_spec(seq_len=length, strategy=strategy, max_predictions=length)
    keys = masking_keys(jax.random.key(3), 0, np.arange(rows), np.zeros(rows), 0)
    rates = row_rates(keys, RateDistribution("uniform", 0.0, 1.0))
    out = jax.jit(mask_tokens, static_argnames="spec")(
        keys, tokens, maskable, starts, ratio=rates, spec=spec
    )
    n = np.asarray(out.num_maskable)
    t = [Fraction(int(num), RATE_DENOMINATOR) for num in np.asarray(rates.num)]
    wanted = np.array([max(round_half_even(ti * ni), min(ni, 1)) for ti, ni in zip(t, n)])
    np.testing.assert_array_equal(np.asarray(out.num_wanted), wanted)
    assert not np.asarray(out.capped).any()
    selected = np.asarray(out.num_selected)
    if strategy == "uniform":
        np.testing.assert_array_equal(selected, wanted)
        return
    # Rows where the floor binds select whole units above it; elsewhere E[selected] = t n.
    target = np.array([float(ti * ni) for ti, ni in zip(t, n)])
    free = target >= 1
    error = selected[free] - target[free]
    assert free.sum() > 0.9 * rows
    assert abs(error.mean()) < 5 * error.std(ddof=1) / np.sqrt(free.sum())  # 5 standard errors


def test_static_masking_keeps_a_rows_rate_for_its_window():
    """masking.static_epochs=2: an example keeps its rate (and mask) wherever it lands in a
    batch within its 2-epoch window, and draws another in the next window."""
    dist = RateDistribution("uniform", 0.0, 1.0)
    examples = np.arange(64)

    def rates(step, order, epoch):
        keys = masking_keys(jax.random.key(5), step, examples[order], np.full(64, epoch), 2)
        return dict(zip(examples[order], np.asarray(row_rates(keys, dist).num)))

    first = rates(0, np.arange(64), 0)
    assert rates(9, np.arange(64)[::-1], 1) == first  # same window, other step and row order
    later = rates(20, np.arange(64), 2)
    assert sum(later[e] == first[e] for e in examples) <= 1  # a new window, new rates

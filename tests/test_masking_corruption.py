"""Corruption vs prediction (Wettig et al. 2023): masking.corruption_ratio corrupts one rate of
the eligible tokens and masking.ratio predicts another; one set holds the other, the extra
corrupted tokens are [MASK] without loss, the extra predicted ones are seen unchanged, and the
replacement split applies to the tokens both corrupted and predicted.

Rates are checked within 4 standard errors estimated from the rows; the split within 4
binomial sigma."""

from fractions import Fraction

import jax
import numpy as np
import pytest

from mlm_jax.masking.schedule import as_exact_ratio
from tests.test_masking_budget import _jit_mask, selected_BxL, spec_for, synthetic_rows

ROWS, L = 1024, 128
MASK_ID = 4


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows(np.random.default_rng(5), ROWS, L, variable=False)[:3]


def rate_within(chosen, eligible, rate, strategy):
    """Sum chosen / sum eligible is the rate within 4 standard errors (delta method); uniform
    takes exactly round(rate * n) per row (Python's round of the exact product)."""
    chosen, eligible = chosen.astype(np.float64), eligible.astype(np.float64)
    if strategy == "uniform":
        expected = np.array([round(Fraction(str(rate)) * int(n)) for n in eligible])
        np.testing.assert_array_equal(chosen, np.maximum(expected, 1))
        return
    se = (chosen - rate * eligible).std(ddof=1) / np.sqrt(len(chosen)) / eligible.mean()
    assert 4 * se <= 0.003, se
    assert abs(chosen.sum() / eligible.sum() - rate) <= 4 * se, chosen.sum() / eligible.sum()


def split_within(seen, originals, mask_prob=0.8, random_prob=0.1):
    """[MASK] / other token / unchanged counts against the 80/10/10 split (a random draw may
    hit the original: with ~1000 ordinary ids that shifts under 0.1% into 'unchanged')."""
    total = seen.size
    counts = {
        "mask": np.sum(seen == MASK_ID),
        "random": np.sum((seen != MASK_ID) & (seen != originals)),
        "keep": np.sum(seen == originals),
    }
    keep = 1 - mask_prob - random_prob
    for name, p in (("mask", mask_prob), ("random", random_prob), ("keep", keep)):
        sigma = np.sqrt(total * p * (1 - p))
        assert abs(counts[name] - total * p) <= 4 * sigma + 0.002 * total, (name, counts, total)


@pytest.mark.parametrize(
    "strategy,corrupt,predict",
    [("uniform", 0.4, 0.15), ("whole_word", 0.4, 0.15), ("whole_word", 0.15, 0.4)],
)
def test_corruption_and_prediction_rates_and_their_subset(rows, strategy, corrupt, predict):
    tokens, maskable, starts = rows
    spec = spec_for(strategy=strategy, ratio=predict, corruption_ratio=corrupt)
    out = _jit_mask(
        jax.random.key(9), tokens, maskable, starts, ratio=as_exact_ratio(predict), spec=spec
    )
    predicted = selected_BxL(out, L)
    corrupted = np.asarray(out.corrupted)
    inputs = np.asarray(out.inputs)
    eligible = np.asarray(out.num_maskable)
    rate_within(predicted.sum(1), eligible, predict, strategy)
    rate_within(corrupted.sum(1), eligible, corrupt, strategy)
    assert not np.any(corrupted & ~maskable)
    np.testing.assert_array_equal(inputs[~corrupted], tokens[~corrupted])  # the rest untouched
    both = predicted & corrupted
    if corrupt > predict:
        assert not np.any(predicted & ~corrupted), "a predicted token was not corrupted"
        assert np.all(inputs[corrupted & ~predicted] == MASK_ID), "extra corruption is [MASK]"
    else:
        assert not np.any(corrupted & ~predicted), "a corrupted token is not predicted"
        np.testing.assert_array_equal(
            inputs[predicted & ~corrupted], tokens[predicted & ~corrupted]
        )
    split_within(inputs[both], tokens[both])
    # Only predicted positions carry loss: weights mark exactly the predicted set.
    assert np.asarray(out.weights).sum() == predicted.sum()


def test_bad_corruption_ratio_names_the_key():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="masking.corruption_ratio"):
            spec_for(corruption_ratio=bad)

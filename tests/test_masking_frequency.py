"""masking.token_weighting=frequency:ALPHA: selection probabilities against the weights (k = 1)
and against without-replacement inclusion probabilities computed by enumeration (k > 1), with
tolerances from the sample size; alpha 0 is uniform bit for bit; exact budgets; the table is
numpy's; counts come from the training split only; bad values are one line."""

import itertools
import types

import jax
import numpy as np
import pytest
from scipy import stats

from mlm_jax.config.defaults import base_config
from mlm_jax.masking import MaskingSpec, mask_tokens, prepare_host
from mlm_jax.masking.strategies import frequency

VOCAB, MASK = 16, 4
SPECIAL = (0, 1, 2, 3, 4)
VOCAB_NS = types.SimpleNamespace(vocab_size=VOCAB, mask_id=MASK, special_ids=SPECIAL)


def spec_for(seq_len, **overrides):
    config = base_config().masking
    config.update(overrides)
    spec = MaskingSpec.from_config(config, seq_len=seq_len, num_steps=10)
    return spec.with_vocab(VOCAB_NS)


def rows_of(tokens, count):
    """`count` copies of one row [CLS] tokens [SEP]: every ordinary token eligible."""
    row = np.array([2, *tokens, 3], np.int32)
    tokens_BxL = np.tile(row, (count, 1))
    return tokens_BxL, tokens_BxL > MASK


def selected_counts(spec, tokens, count, ratio, table):
    tokens_BxL, maskable = rows_of(tokens, count)
    fn = jax.jit(lambda k: mask_tokens(k, tokens_BxL, maskable, ratio=ratio, spec=spec,
                                       tables={frequency.TABLE: table}))  # fmt: skip
    out = fn(jax.random.key(7))
    positions, weights = np.asarray(out.positions), np.asarray(out.weights)
    return positions, weights, np.asarray(out.num_selected)


def test_alpha_zero_is_uniform_bit_for_bit():
    uniform = spec_for(40, ratio=0.3)
    weighted = spec_for(40, ratio=0.3, token_weighting="frequency:0")
    assert weighted.strategy == "frequency" and weighted.max_predictions == uniform.max_predictions
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, VOCAB, (64, 40)).astype(np.int32)
    maskable = rng.random((64, 40)) < 0.9
    table = {frequency.TABLE: np.log(rng.random(VOCAB)).astype(np.float32)}
    a = mask_tokens(jax.random.key(3), tokens, maskable, ratio=0.3, spec=uniform)
    b = mask_tokens(jax.random.key(3), tokens, maskable, ratio=0.3, spec=weighted, tables=table)
    for name, x, y in zip(a._fields, a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_one_selection_follows_the_weights():
    """k = 1 of 6 tokens: counts of each position against w_i / sum w, chi-square at 1e-3."""
    tokens = [5, 6, 7, 8, 9, 10]
    counts = np.array([0, 0, 0, 0, 0, 0, 1, 3, 7, 15, 31, 63, 0, 0, 0, 0])
    alpha = 0.7
    spec = spec_for(8, ratio=0.1, token_weighting=f"frequency:{alpha}")  # round(0.6) = 1
    n = 40_000
    positions, weights, selected = selected_counts(
        spec, tokens, n, 0.1, frequency.log_weights(counts, alpha)
    )
    assert (selected == 1).all()
    observed = np.bincount(positions[:, 0] - 1, minlength=6)
    w = (counts[tokens] + 1.0) ** -alpha
    expected = n * w / w.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    uniform = np.full(6, n / 6)  # the test can fail: the weights are far from uniform
    assert stats.chisquare(observed, uniform).pvalue < 1e-12


def inclusion_by_enumeration(w, k):
    """P(i among the first k) for successive sampling without replacement, exactly."""
    pi = np.zeros(len(w))
    for order in itertools.permutations(range(len(w)), k):
        left, p = w.sum(), 1.0
        for i in order:
            p *= w[i] / left
            left -= w[i]
        pi[list(order)] += p
    return pi


def test_several_selections_follow_without_replacement_inclusion():
    """k = 2 of 5 tokens: each position's inclusion within 4.5 binomial sigmas of the exact one."""
    tokens = [5, 6, 7, 8, 9]
    counts = np.array([0, 0, 0, 0, 0, 0, 2, 9, 30, 99, 0, 0, 0, 0, 0, 0])
    alpha = 1.0
    spec = spec_for(7, ratio=0.4, token_weighting=f"frequency:{alpha}")  # round(2.0) = 2
    n = 40_000
    positions, weights, selected = selected_counts(
        spec, tokens, n, 0.4, frequency.log_weights(counts, alpha)
    )
    assert (selected == 2).all()
    taken = positions[:, :2] - 1
    observed = np.array([(taken == i).any(axis=1).mean() for i in range(5)])
    pi = inclusion_by_enumeration((counts[tokens] + 1.0) ** -alpha, 2)
    assert pi.sum() == pytest.approx(2.0)
    sigma = np.sqrt(pi * (1 - pi) / n)
    assert (np.abs(observed - pi) < 4.5 * sigma).all(), (observed, pi)
    naive = 2 * ((counts[tokens] + 1.0) ** -alpha) / ((counts[tokens] + 1.0) ** -alpha).sum()
    assert (np.abs(observed - np.minimum(naive, 1)) > 4.5 * sigma).any()  # k w / W is not it


def test_the_table_counts_the_training_split_only(monkeypatch):
    splits = []

    class Rows:
        def __len__(self):
            return 3

        def rows(self, ids):
            return {"tokens": np.array([[2, 5, 5, 6, 3]] * len(ids))}

    def packed_rows(data, tokenizer, split, units=None):
        splits.append(split)
        return Rows()

    from mlm_jax.data import loader

    monkeypatch.setattr(loader, "packed_rows", packed_rows)
    spec = spec_for(8, token_weighting="frequency:0.5")
    tokenizer = types.SimpleNamespace(fingerprint=lambda: "tok")
    prepared = prepare_host(spec, tokenizer, data=None)
    assert splits == ["train"]
    counts = np.zeros(VOCAB)
    counts[[2, 3, 6]], counts[5] = 3, 6
    np.testing.assert_allclose(prepared.tables[frequency.TABLE], -0.5 * np.log(counts + 1), 1e-6)
    assert prepared.fingerprint


@pytest.mark.parametrize(
    "value", ["frequency:-1", "freq:0.5", "frequency:x", "frequency", "frequency:nan"]
)
def test_bad_values_are_one_line(value):
    with pytest.raises(ValueError, match=r"^config\.masking\.token_weighting=") as info:
        spec_for(8, token_weighting=value)
    assert "\n" not in str(info.value)


def test_weighting_needs_the_uniform_strategy():
    with pytest.raises(ValueError, match="token_weighting='frequency:0.5' needs masking.strategy"):
        spec_for(8, strategy="whole_word", token_weighting="frequency:0.5")

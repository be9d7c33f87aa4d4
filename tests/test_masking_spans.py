"""SpanBERT's options: anchored span sampling against a plain-loop reference of the procedure,
and one replacement draw per span (tiled spans decide per token: most multi-word runs mix)."""

import math

import jax
import numpy as np
import pytest

from mlm_jax.masking.schedule import as_exact_ratio
from tests.test_masking_budget import _jit_mask, selected_BxL, spec_for

R, L, RATIO = 512, 128, 0.3
ANCHORED_ROWS = 4096  # 4 SE of the mean run length: about 0.07 words
P, MAX_LEN = 0.2, 10
pytestmark = pytest.mark.slow  # ~20 s each on 2 busy cores (a plain-loop reference, 2 compiles)


def one_piece_rows(rows=R):
    tokens = np.random.default_rng(0).integers(2000, 3000, (rows, L)).astype(np.int32)
    maskable = np.ones((rows, L), bool)
    maskable[:, [0, -1]] = False
    return tokens, maskable, maskable.copy()


def run_lengths(sel_BxL):
    """Lengths of the maximal runs of selected positions (one-piece words: runs in words)."""
    padded = np.pad(sel_BxL, ((0, 0), (1, 1))).astype(np.int8)
    edges = np.diff(padded, axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    return ends[1] - starts[1]


def reference_anchored(rng, n, target):
    """SpanBERT's loop (facebookresearch/SpanBERT, pretraining/fairseq/data/masking.py,
    PairWithSpanMaskingScheme.mask, on one-piece words): draw a length (truncated geometric,
    words) and an anchor uniformly; an anchor already masked is skipped; otherwise the span's
    words from the anchor on are added left to right (masked ones count towards the length).
    Ours takes the word that would cross the target with probability (target - taken)."""
    pmf = np.array([P * (1 - P) ** (k - 1) for k in range(1, MAX_LEN + 1)])
    pmf /= pmf.sum()
    covered = np.zeros(n, bool)
    while True:
        span_len = rng.choice(MAX_LEN, p=pmf) + 1
        anchor = rng.integers(n)
        if covered[anchor]:
            continue
        for w in range(anchor, min(anchor + span_len, n)):
            if covered[w]:
                continue
            taken = covered.sum()
            if taken + 1 > target and rng.random() >= target - taken:
                return covered
            covered[w] = True
            if covered.sum() >= target:
                return covered


def test_anchored_spans_follow_the_reference_procedure():
    tokens, maskable, starts = one_piece_rows(ANCHORED_ROWS)
    spec = spec_for(strategy="span", ratio=RATIO, span_sampling="anchored")
    out = _jit_mask(jax.random.key(2), tokens, maskable, starts, ratio=as_exact_ratio(RATIO),
                    spec=spec)  # fmt: skip
    ours = run_lengths(selected_BxL(out, L))
    rng = np.random.default_rng(3)
    n = L - 2
    rows = [reference_anchored(rng, n, RATIO * n) for _ in range(ANCHORED_ROWS)]
    theirs = run_lengths(np.stack(rows))
    # Two-sample z-test of mean run lengths: 4 standard errors of the difference, small enough
    # to see a covered anchor extending its span (runs 0.19 words longer at this ratio).
    se = math.sqrt(ours.var() / len(ours) + theirs.var() / len(theirs))
    assert 4 * se <= 0.19 / 2, f"too few rows to resolve 0.19 words (se {se:.4f})"
    assert abs(ours.mean() - theirs.mean()) <= 4 * se, (ours.mean(), theirs.mean(), se)
    tiled = _jit_mask(jax.random.key(2), tokens, maskable, starts, ratio=as_exact_ratio(RATIO),
                      spec=spec_for(strategy="span", ratio=RATIO))  # fmt: skip
    tiled_runs = run_lengths(selected_BxL(tiled, L))
    assert tiled_runs.mean() > ours.mean() + 4 * se  # tiling gives longer runs (4.9 vs 4.1)


def test_span_replacement_draws_once_per_span():
    tokens, maskable, starts = one_piece_rows()
    mixed = {}
    for replacement in ("token", "span"):
        spec = spec_for(strategy="span", ratio=0.15, span_replacement=replacement)
        out = _jit_mask(jax.random.key(4), tokens, maskable, starts,
                        ratio=as_exact_ratio(0.15), spec=spec)  # fmt: skip
        sel, inputs = selected_BxL(out, L), np.asarray(out.inputs)
        outcome = np.where(inputs == 4, 0, np.where(inputs != tokens, 1, 2))  # mask/random/keep
        padded = np.pad(sel, ((0, 0), (1, 1))).astype(np.int8)
        begins = np.argwhere(np.diff(padded, axis=1) == 1)
        ends = np.argwhere(np.diff(padded, axis=1) == -1)
        runs = [(r, b, e) for (r, b), (_, e) in zip(begins, ends) if e - b >= 2]
        mixed[replacement] = np.mean([len(set(outcome[r, b:e])) > 1 for r, b, e in runs])
        share = (outcome[sel] == 0).mean()  # the split still holds per token: 80% [MASK]
        assert abs(share - 0.8) < 0.05, (replacement, share)
    # A run mixes outcomes only where two spans touch (measured 5%; per token: 63%).
    assert mixed["token"] > 0.5 and mixed["span"] < 0.1, mixed

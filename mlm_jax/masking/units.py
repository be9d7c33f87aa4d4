"""The units masking takes whole, and how a budget takes them (pure, jit- and vmap-safe).

masking/core.py's docstring states the rule; here are its pieces: the budget a ratio gives a row,
the taking of units in priority order with the exact-expectation crossing draw, spans of whole
words (tiled, truncated-geometric lengths), and the span length sampler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mlm_jax.masking.schedule import ExactRatio, real_target, round_budget


def budget(num_maskable, ratio: ExactRatio, floor, takes_words: bool):
    """(num_wanted, target): a token strategy's integer budget is its target; a strategy that
    takes words meets a real target in expectation (step 3 of the masking docstring)."""
    num_wanted = jnp.maximum(round_budget(num_maskable, ratio), floor)
    if not takes_words:
        return num_wanted, num_wanted.astype(jnp.float32)
    return num_wanted, jnp.maximum(real_target(num_maskable, ratio), floor.astype(jnp.float32))


def take_units(key, len_sorted_W, target, floor, k):
    """Which units (in priority order, lengths len_sorted_W) the budget takes; see step 3 of
    the masking docstring. Returns (taken per sorted unit, whether K refused one)."""
    after_W = jnp.cumsum(len_sorted_W)
    before_W = after_W - len_sorted_W
    reached_W = before_W.astype(jnp.float32) < target
    crossing_W = after_W.astype(jnp.float32) > target
    u = jax.random.uniform(key, ())
    accept_W = (
        ~crossing_W
        | (before_W < floor)
        | (u * len_sorted_W.astype(jnp.float32) < target - before_W.astype(jnp.float32))
    )
    wanted_W = reached_W & accept_W & (len_sorted_W > 0)
    fits_W = after_W <= k
    return wanted_W & fits_W, jnp.any(wanted_W & ~fits_W)


def span_units(key, word_eligible_W, span_p: float, span_max: int):
    """Cuts the eligible words into spans of truncated-geometric length (in words).

    The eligible words are tiled left to right by i.i.d. span lengths; a span is also cut at
    ineligible tokens ([SEP], padding) so it is contiguous in the row. Spans are later taken
    in random order, so every word is equally likely to start one. Returns (span start flag
    per word, span id per word). Ids count from 0, so a row of L spans has ids 0..L-1 and
    every span indexes its own priority (ids from 1 gave the last span id L, which the
    gather clamped onto the priority of span L-1); ineligible words before the first span
    get 0 and are never taken (they have no eligible piece).
    """
    num_words = word_eligible_W.shape[0]
    lengths_E = sample_span_lengths(key, (num_words,), span_p, span_max)
    offsets_E = jnp.cumsum(lengths_E) - lengths_E
    tile_start_E = jnp.zeros(num_words, bool).at[offsets_E].set(True, mode="drop")
    eligible_index_W = jnp.cumsum(word_eligible_W, dtype=jnp.int32) - 1
    prev_eligible_W = jnp.concatenate([jnp.zeros(1, bool), word_eligible_W[:-1]])
    start_W = word_eligible_W & (
        tile_start_E[jnp.clip(eligible_index_W, 0, num_words - 1)] | ~prev_eligible_W
    )
    return start_W, jnp.maximum(jnp.cumsum(start_W, dtype=jnp.int32) - 1, 0)


def sample_span_lengths(key: jax.Array, shape: tuple[int, ...], p: float, max_len: int):
    """Span lengths with P(l) proportional to p (1 - p)^(l - 1) on 1..max_len (int32).

    Inverse CDF against thresholds computed on the host in float64, so the draw is the same
    under jit and eagerly (no transcendental functions on device).
    """
    q = 1.0 - p
    total = 1.0 - q**max_len
    cdf = [(1.0 - q**length) / total for length in range(1, max_len)]
    u = jax.random.uniform(key, shape)
    lengths = jnp.ones(shape, jnp.int32)
    for threshold in cdf:
        lengths = lengths + (u >= threshold).astype(jnp.int32)
    return lengths


def anchored_span_units(key, priority_W, word_eligible_W, span_p: float, span_max: int):
    """SpanBERT's anchored spans: anchors drawn without replacement (the words in priority
    order), each covering a truncated-geometric number of words from itself to the right,
    inside its run of eligible words. As in SpanBERT's loop, an anchor already covered by an
    earlier kept anchor is skipped (it starts no span), so each kept anchor is uniform over
    the uncovered words. A word belongs to the first kept anchor (lowest priority value) that
    covers it, so taking words grouped by their anchor, left to right, masks whole spans in
    anchor order; overlapping spans merge. Returns (span start flag per word, anchor index
    per word: the unit id whose priority orders the word)."""
    num_words = word_eligible_W.shape[0]
    lengths_W = sample_span_lengths(key, (num_words,), span_p, span_max)
    run_W = jnp.cumsum(~word_eligible_W, dtype=jnp.int32)
    index_W = jnp.arange(num_words, dtype=jnp.int32)
    sources = []  # per distance d: (the word d to the left, whether its span reaches this word)
    for d in range(1, span_max):
        source_W = jnp.clip(index_W - d, 0, num_words - 1)
        covers_W = (
            (index_W >= d)
            & word_eligible_W
            & (run_W[source_W] == run_W)
            & word_eligible_W[source_W]
            & (lengths_W[source_W] > d)
        )
        sources.append((source_W, covers_W))
    kept_W = _kept_anchors(priority_W, word_eligible_W, sources)
    most = jnp.asarray(jnp.iinfo(priority_W.dtype).max, priority_W.dtype)
    best_priority_W = jnp.where(kept_W, priority_W, most)
    anchor_W = index_W
    for source_W, covers_W in sources:
        better_W = covers_W & kept_W[source_W] & (priority_W[source_W] < best_priority_W)
        best_priority_W = jnp.where(better_W, priority_W[source_W], best_priority_W)
        anchor_W = jnp.where(better_W, source_W, anchor_W)
    prev_anchor_W = jnp.concatenate([jnp.full(1, -1, jnp.int32), anchor_W[:-1]])
    return word_eligible_W & (anchor_W != prev_anchor_W), anchor_W


def _kept_anchors(priority_W, word_eligible_W, sources):
    """The anchors SpanBERT keeps: eligible words no earlier kept anchor covers.

    Only words to the left can cover a word, so this is well founded; iterating from "all
    kept" settles a word once every anchor that could cover it has settled, and stops at the
    unique fixed point (after the longest chain of such anchors, a few steps on real rows).
    """

    def skip_covered(kept_W):
        blocked_W = jnp.zeros_like(word_eligible_W)
        for source_W, covers_W in sources:
            blocked_W |= covers_W & kept_W[source_W] & (priority_W[source_W] < priority_W)
        return word_eligible_W & ~blocked_W

    _, kept_W = jax.lax.while_loop(
        lambda pair: jnp.any(pair[0] != pair[1]),
        lambda pair: (pair[1], skip_covered(pair[1])),
        (word_eligible_W, skip_covered(word_eligible_W)),
    )
    return kept_W

"""Pure-functional MLM masking: which positions to predict, what the model sees there.

The machinery every strategy shares: eligibility, exact budgets, the crossing draw, the cap K,
per-row keys and static masking, corruption vs prediction, the replacement split. What differs
between strategies (units, which batch field they read, host tables) is theirs, behind the
contract of masking/strategy.py, one module each under masking/strategies/.

Everything here is a function of an explicit PRNG key; nothing touches the host or global
state, shapes are static (K predictions per row), and every function is jit- and vmap-safe.

How the trainer calls it (inside the jitted train step):

    spec = MaskingSpec.from_config(config.masking, seq_len=L, num_steps=N
                                   ).with_vocab(tokenizer)           # once, on the host
    keys_B = masking_keys(mask_key, step, batch["example_ids"], batch["epochs"],
                          spec.static_epochs)                        # per-row keys
    masked = mask_batch(keys_B, batch, ratio=scheduled_ratio(step, spec), spec=spec,
                        tables=tables)  # the strategy's fields; prepare_host's tables
    logits_BxKxV = model(masked.inputs, masked.positions, ...)
    loss = mlm_loss(logits_BxKxV, masked.targets, masked.weights)

`mask_key` should be a key reserved for masking (e.g. `fold_in(run_key, <masking tag>)`), not
the dropout key. Eval uses `MaskingSpec.for_eval(config.eval, ...)` and a fixed key, so every
evaluation of every run masks the same way.

Selection, one row at a time (vmapped over the batch):
  1. eligible = maskable & token not in special_ids & token not in never_mask_ids; n of them.
  2. The row is cut into units: tokens (uniform) or words (whole_word, span; pmi's n-grams).
     Units get a random priority order from the key (or the strategy's own priority) and
     are taken in that order; for span the priority belongs to spans of whole words, whose words are taken left to right.
  3. The budget. floor = min(min_predictions, n). uniform: exactly
     b = max(round(ratio * n), floor) tokens, rounded half to even in integers when the ratio
     is a constant (masking_schedule). whole_word / span: the target t = max(ratio * n, floor)
     is a real number. Units whose tokens end at or before t are taken; the unit that would
     cross t (c tokens taken before it, l tokens long) is taken with probability (t - c) / l,
     or always while c < floor; later units are not. So E[selected | order] = c + l (t - c) / l
     = t exactly: every row selects ratio * n tokens in expectation (rows where the floor
     binds select more), and a unit is never split.
  4. Nothing past K is taken: a unit that would end beyond K is refused (`capped`).
How a word's chance depends on its length: hardly. On full rows of 1-6 piece words at 0.15 a
word of 1 piece is selected with probability about 0.16, of 6 pieces 0.145 (rows of 20-126
tokens: 0.165 and 0.14; at 0.4: 0.40 for all; tests/test_masking_budget.py); BERT's rule (skip a word that would overshoot) halves the
chance from 1 to 6 pieces. Because the priority order and the crossing draw depend only on
the key, the same key with a larger ratio selects a superset of the positions (static masking
under a ratio schedule stays nested).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mlm_jax.data.batch import Batch
from mlm_jax.masking.schedule import ExactRatio, as_exact_ratio
from mlm_jax.masking.spec import (  # noqa: F401 - the spec is part of this module's API
    EVAL_STRATEGIES,
    STRATEGIES,
    MaskingSpec,
    derived_max_predictions,
    input_files,
    prepare_host,
)
from mlm_jax.masking.strategy import Strategy
from mlm_jax.masking.units import budget, take_units


class MaskedBatch(NamedTuple):
    """What the model and the loss need, plus per-row diagnostics (all on device).

    positions are sorted ascending within the first num_selected slots; padding slots hold
    position 0, target 0 and weight 0.
    """

    inputs: jax.Array  # int32 [B, L] tokens with the selected positions corrupted
    positions: jax.Array  # int32 [B, K] selected positions
    targets: jax.Array  # int32 [B, K] original tokens at those positions
    weights: jax.Array  # float32 [B, K] 1 for a real prediction, 0 for a padding slot
    num_maskable: jax.Array  # int32 [B] eligible positions in the row
    num_wanted: jax.Array  # int32 [B] max(round(ratio * num_maskable), floor), before the
    #                        cap K: uniform's exact budget, the word strategies' rounded target
    num_selected: jax.Array  # int32 [B] positions selected (= weights.sum(-1))
    num_spans: jax.Array  # int32 [B] units selected: tokens, words, or spans by strategy
    capped: jax.Array  # bool [B] a unit the budget took was refused because K was full
    corrupted: jax.Array  # bool [B, L] positions the model cannot see as they are (corruption
    #                       rate); equal to the selected positions unless corruption_ratio is set


def masking_keys(
    base_key: jax.Array,
    step: Any,
    example_ids_B: jax.Array,
    epochs_B: jax.Array,
    static_epochs: int,
) -> jax.Array:
    """Per-row masking keys [B].

    Dynamic (static_epochs == 0): the key depends on (step, row index) only: a fresh mask
    every step. Static (N > 0): on (example_id, epoch // N) only: an example keeps its mask
    for N epochs wherever it lands in a batch, and gets a new one in the next window.
    """
    example_ids_B = jnp.asarray(example_ids_B, jnp.int32)
    if static_epochs == 0:
        step_key = jax.random.fold_in(base_key, step)
        rows_B = jnp.arange(example_ids_B.shape[0], dtype=jnp.int32)
        return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, rows_B)
    windows_B = jnp.asarray(epochs_B, jnp.int32) // static_epochs

    def row_key(example_id, window):
        return jax.random.fold_in(jax.random.fold_in(base_key, example_id), window)

    return jax.vmap(row_key)(example_ids_B, windows_B)


def mask_tokens(
    key: jax.Array,
    tokens_BxL: jax.Array,
    maskable_BxL: jax.Array,
    starts_BxL: jax.Array | None = None,
    *,
    ratio: Any,
    spec: MaskingSpec,
    tables: Mapping[str, Any] | None = None,
) -> MaskedBatch:
    """Selects and corrupts positions; see the module docstring for the exact rule.

    key: one key (split into one per row) or per-row keys [B] (from masking_keys); typed
    (jax.random.key) or raw uint32 keys both work. starts_BxL: the unit starts of a strategy
    that takes words (its starts_field of the batch: word_starts, or PMI's unit_starts).
    ratio in (0, 1): a Python float (its budget rounds exactly), an ExactRatio (from
    scheduled_ratio), or a traced float32 scalar; or one per row: an ExactRatio of [B] arrays
    (rates.row_rates) or a float32 [B] array. tables: what the host prepared for the strategy
    (masking/strategy.py's Prepared.tables), if it needs any.
    Of the selected positions, a fraction mask_prob becomes [MASK], random_prob a token drawn
    uniformly from ids 0..vocab_size-1 minus special_ids (it may equal the original), and the
    rest is kept. Replacement draws use keys split off the selection keys.
    """
    tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
    maskable_BxL = jnp.asarray(maskable_BxL, bool)
    if tokens_BxL.ndim != 2 or maskable_BxL.shape != tokens_BxL.shape:
        raise ValueError(
            f"tokens {tokens_BxL.shape} and maskable {maskable_BxL.shape}: expected equal [B, L]"
        )
    starts_BxL = _checked_starts(starts_BxL, tokens_BxL.shape, spec.strategy_record)
    if isinstance(ratio, (int, float)) and not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio!r}: expected a float in (0, 1)")
    ratio = as_exact_ratio(ratio)
    per_row = jnp.ndim(ratio.value) == 1  # one rate per row (masking/rates.py)
    if per_row:
        ratio = ExactRatio(*(jnp.broadcast_to(x, tokens_BxL.shape[:1]) for x in ratio))
    if spec.vocab_size == 0:
        raise ValueError("MaskingSpec without a vocabulary: call spec.with_vocab(tokenizer)")
    key = _row_keys(key, tokens_BxL.shape[0])
    in_axes = (0, 0, 0, 0, 0 if per_row else None, None)
    row_fn = jax.vmap(functools.partial(_mask_row, spec=spec), in_axes=in_axes)
    return row_fn(key, tokens_BxL, maskable_BxL, starts_BxL, ratio, dict(tables or {}))


def mask_batch(keys_B, batch: Batch, *, ratio: Any, spec: MaskingSpec, tables=None) -> MaskedBatch:
    """mask_tokens on a batch: the fields the spec's strategy reads, picked by the strategy."""
    field = spec.strategy_record.starts_field
    starts = None if field is None else batch[field]
    return mask_tokens(
        keys_B, batch["tokens"], batch["maskable"], starts, ratio=ratio, spec=spec, tables=tables
    )


def _checked_starts(starts_BxL, shape, strategy: Strategy):
    """The unit starts as bool [B, L]; all True (every token a unit) for a token strategy."""
    if not strategy.takes_words:
        return jnp.ones(shape, bool)
    if starts_BxL is None:
        raise ValueError(
            f"masking.strategy={strategy.name!r} needs {strategy.starts_field}; pass them or "
            "use masking.strategy='uniform'"
        )
    starts_BxL = jnp.asarray(starts_BxL, bool)
    if starts_BxL.shape != shape:
        raise ValueError(f"{strategy.starts_field} {starts_BxL.shape}: expected {shape}")
    return starts_BxL


def _row_keys(key, batch: int):
    """One key per row: split from one key, or the [B] keys given."""
    key = jnp.asarray(key)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (0 if typed else 1):
        key = jax.random.split(key, batch)
    if key.shape[0] != batch:
        raise ValueError(f"key batch {key.shape[0]}: expected one key or {batch} keys")
    return key


class _RowUnits(NamedTuple):
    """A row cut into units, in the order they are taken (indices: L tokens, W words)."""

    eligible_L: jax.Array  # bool: may be selected
    word_id_L: jax.Array  # int32: the word each token belongs to (a token strategy: itself)
    word_len_W: jax.Array  # int32: eligible tokens per word
    unit_start_W: jax.Array  # bool: the word starts a unit (counts num_spans)
    unit_id_W: jax.Array  # int32: the unit each word belongs to
    order_W: jax.Array  # int32: words in the order they are taken


def _mask_row(key, tokens_L, maskable_L, starts_L, ratio, tables, *, spec: MaskingSpec):
    """One row: units in priority order, the budget takes them, then the replacement split."""
    order_key, span_key, split_key, token_key = jax.random.split(key, 4)
    units = _row_units(order_key, span_key, tokens_L, maskable_L, starts_L, tables, spec)
    num_maskable = units.eligible_L.sum(dtype=jnp.int32)
    floor = jnp.minimum(num_maskable, spec.min_predictions)
    takes_words = spec.strategy_record.takes_words
    num_wanted, target = budget(num_maskable, ratio, floor, takes_words)
    crossing_key = jax.random.fold_in(order_key, 1)

    def positions_taken(target, cap):
        return _positions_taken(crossing_key, units, target, floor, cap)

    selected_W, selected_L, capped = positions_taken(target, spec.max_predictions)
    corrupted_L = selected_L
    if spec.corruption_ratio:
        # The same order and crossing draw at another target: a superset or a subset of the
        # predicted positions (| and & only matter where K capped the predictions). Corrupting
        # more needs no room in K: no loss is taken there.
        corruption = as_exact_ratio(spec.corruption_ratio)
        _, corrupt_target = budget(num_maskable, corruption, floor, takes_words)
        other_L = positions_taken(corrupt_target, tokens_L.shape[0])[1]
        more = corrupt_target >= target
        corrupted_L = jnp.where(more, other_L | selected_L, other_L & selected_L)
    inputs_L = _corrupt(split_key, token_key, tokens_L, selected_L, corrupted_L, units, spec)
    return _predictions(
        tokens_L, inputs_L, selected_L, corrupted_L, spec.max_predictions,
        num_maskable=num_maskable, num_wanted=num_wanted, capped=capped,
        num_spans=(selected_W & units.unit_start_W).sum(dtype=jnp.int32),
    )  # fmt: skip


def _row_units(order_key, span_key, tokens_L, maskable_L, starts_L, tables, spec) -> _RowUnits:
    """Eligible tokens -> words (by the strategy's starts) -> units -> the order they are taken."""
    length = tokens_L.shape[0]
    strategy = spec.strategy_record
    excluded = jnp.asarray(spec.special_ids + spec.never_mask_ids, jnp.int32)
    eligible_L = maskable_L & ~jnp.isin(tokens_L, excluded)
    if strategy.takes_words:
        # A word starts at a start piece, and a new one also starts at and after every
        # ineligible token, so a word never spans [SEP] and an orphan "##" piece stands alone.
        prev_eligible_L = jnp.concatenate([jnp.zeros(1, bool), eligible_L[:-1]])
        word_starts_L = (starts_L | ~eligible_L | ~prev_eligible_L).at[0].set(True)
        word_id_L = jnp.cumsum(word_starts_L, dtype=jnp.int32) - 1
        word_len_W = jax.ops.segment_sum(
            eligible_L.astype(jnp.int32), word_id_L, num_segments=length, indices_are_sorted=True
        )
    else:
        word_id_L = jnp.arange(length, dtype=jnp.int32)
        word_len_W = eligible_L.astype(jnp.int32)
    word_eligible_W = word_len_W > 0
    if strategy.priority is None:
        priority_U = jax.random.bits(order_key, (length,), jnp.uint32)
    else:
        priority_U = strategy.priority(order_key, tokens_L, tables, spec.options)
    if strategy.group is None:
        unit_start_W, unit_id_W = word_eligible_W, jnp.arange(length, dtype=jnp.int32)
    else:
        unit_start_W, unit_id_W = strategy.group(
            span_key, priority_U, word_eligible_W, spec.options
        )
    # Stable sort: the words of one unit stay in position order, so a unit fills left to right.
    order_W = jnp.argsort(priority_U[unit_id_W], stable=True)
    return _RowUnits(eligible_L, word_id_L, word_len_W, unit_start_W, unit_id_W, order_W)


def _positions_taken(crossing_key, units: _RowUnits, target, floor, cap):
    """(words taken [W], positions taken [L], whether the cap refused a unit) at `target`."""
    take_sorted_W, capped = take_units(
        crossing_key, units.word_len_W[units.order_W], target, floor, cap
    )
    length = units.word_id_L.shape[0]
    taken_W = jnp.zeros(length, bool).at[units.order_W].set(take_sorted_W, unique_indices=True)
    return taken_W, taken_W[units.word_id_L] & units.eligible_L, capped


def _corrupt(split_key, token_key, tokens_L, selected_L, corrupted_L, units, spec):
    """What the model sees: predicted-and-corrupted positions split mask/random/keep; corrupted
    but unpredicted ones become [MASK]."""
    length = tokens_L.shape[0]
    split_L = selected_L & corrupted_L
    u_L = jax.random.uniform(split_key, (length,))
    if spec.span_replacement == "span":  # one draw per unit (per word for whole_word)
        u_L = u_L[units.unit_id_W[units.word_id_L]]
    random_L = _random_ordinary_tokens(token_key, (length,), spec)
    return jnp.where(
        (split_L & (u_L < spec.mask_prob)) | (corrupted_L & ~selected_L),
        spec.mask_id,
        jnp.where(split_L & (u_L < spec.mask_prob + spec.random_prob), random_L, tokens_L),
    )


def _predictions(tokens_L, inputs_L, selected_L, corrupted_L, k, **diagnostics) -> MaskedBatch:
    """The selected positions packed into K slots, ascending, padding slots weighted 0."""
    length = tokens_L.shape[0]
    num_selected = selected_L.sum(dtype=jnp.int32)
    slot_L = jnp.where(selected_L, jnp.cumsum(selected_L, dtype=jnp.int32) - 1, k)
    positions_K = (
        jnp.zeros(k, jnp.int32)
        .at[slot_L]
        .set(jnp.arange(length, dtype=jnp.int32), mode="drop", unique_indices=True)
    )
    valid_K = jnp.arange(k) < num_selected
    return MaskedBatch(
        inputs=inputs_L.astype(jnp.int32),
        positions=positions_K,
        targets=jnp.where(valid_K, tokens_L[positions_K], 0),
        weights=valid_K.astype(jnp.float32),
        num_selected=num_selected,
        corrupted=corrupted_L,
        **diagnostics,
    )


def _random_ordinary_tokens(key, shape, spec: MaskingSpec):
    """Uniform draws over 0..vocab_size-1 minus special_ids: draw a rank, skip the specials."""
    tokens = jax.random.randint(key, shape, 0, spec.vocab_size - len(spec.special_ids))
    for special in spec.special_ids:  # sorted ascending, so each skip sees the earlier ones
        tokens = tokens + (tokens >= special).astype(tokens.dtype)
    return tokens

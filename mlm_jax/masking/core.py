"""Pure-functional MLM masking: which positions to predict, what the model sees there.

Everything here is a function of an explicit PRNG key; nothing touches the host or global
state, shapes are static (K predictions per row), and every function is jit- and vmap-safe.

How the trainer calls it (inside the jitted train step):

    spec = MaskingSpec.from_config(config.masking, seq_len=L, num_steps=N
                                   ).with_vocab(tokenizer)           # once, on the host
    keys_B = masking_keys(mask_key, step, batch["example_ids"], batch["epochs"],
                          spec.static_epochs)                        # per-row keys
    masked = mask_tokens(keys_B, batch["tokens"], batch["maskable"], batch["word_starts"],
                         ratio=scheduled_ratio(step, spec), spec=spec)
    logits_BxKxV = model(masked.inputs, masked.positions, ...)
    loss = mlm_loss(logits_BxKxV, masked.targets, masked.weights)

`mask_key` should be a key reserved for masking (e.g. `fold_in(run_key, <masking tag>)`), not
the dropout key. Eval uses `MaskingSpec.for_eval(config.eval, ...)` and a fixed key, so every
evaluation of every run masks the same way.

Selection, one row at a time (vmapped over the batch):
  1. eligible = maskable & token not in special_ids & token not in never_mask_ids; n of them.
  2. The row is cut into units: tokens (uniform) or words (whole_word, span). Units get a
     random priority order from the key and are taken in that order; for span the priority
     belongs to spans of whole words, whose words are taken left to right.
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

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mlm_jax.config.fields import check_choice, check_float, check_int
from mlm_jax.masking.rates import RateDistribution, check_rate_fields, parse_rate_distribution
from mlm_jax.masking.schedule import (
    SCHEDULES,
    ExactRatio,
    as_exact_ratio,
    check_exact_ratios,
    exact_fraction,
    largest_ratio,
    parse_pieces,
)
from mlm_jax.masking.units import anchored_span_units, budget, span_units, take_units

STRATEGIES = ("uniform", "whole_word", "span", "pmi")  # pmi: whole_word over PMI units
EVAL_STRATEGIES = ("uniform", "whole_word", "span")  # (the common eval needs no vocabulary)
SPAN_SAMPLINGS = ("tile", "anchored")
SPAN_REPLACEMENTS = ("token", "span")
# Extra predictions per row when K is derived, for the last word of whole_word/span, which
# may overshoot the token budget (a word of more pieces than this is dropped if it won't fit).
WORD_OVERSHOOT_SLACK = 8


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


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """Everything masking needs, checked once; hashable so jit can take it static.

    The vocabulary fields stay unset (vocab_size 0) until `with_vocab` fills them from the
    tokenizer; mask_tokens needs them set.
    """

    strategy: str
    mask_prob: float
    random_prob: float
    max_predictions: int  # K, resolved (never 0 here)
    ratio: float = 0.15
    end_ratio: float = 0.15
    schedule: str = "constant"
    num_steps: int = 1  # the schedule's length (train.num_steps)
    span_p: float = 0.2
    span_max: int = 10
    span_sampling: str = "tile"  # tile: spans tile the row | anchored: SpanBERT's anchors
    span_replacement: str = "token"  # token: 80/10/10 per token | span: one draw per span
    pmi_vocab: str = ""  # strategy=pmi: the directory of data.pmi's n-gram vocabulary
    static_epochs: int = 0
    min_predictions: int = 1  # floor of the budget in tokens (rows with eligible tokens)
    corruption_ratio: float = 0.0  # 0 = corrupt what is predicted; else its own rate (Wettig)
    pieces: tuple[tuple[int, float], ...] = ()  # piecewise schedule: (from step, ratio)
    never_mask_ids: tuple[int, ...] = ()  # sorted; never selected (may be drawn as random)
    vocab_size: int = 0
    mask_id: int = -1
    special_ids: tuple[int, ...] = ()  # sorted; never selected, never drawn as a random token
    rate_distribution: str = "fixed"  # fixed, or a rate drawn per row (canonical text)
    loss_weighting: str = "mean"  # mean | elbo (training/weighting.py)

    @classmethod
    def from_config(cls, masking_config: Any, *, seq_len: int, num_steps: int) -> MaskingSpec:
        """Checks config.masking and resolves K (max_predictions = 0 -> derived).

        seq_len and num_steps come checked from their own specs (data, train).
        Derived K = ceil(max_ratio * (seq_len - 2)) (a row holds at least [CLS] and [SEP]),
        plus WORD_OVERSHOOT_SLACK for whole_word/span, rounded up to a multiple of 8 and
        clamped to seq_len. max_ratio is the largest ratio the schedule reaches (its larger end),
        or the largest rate masking.rate_distribution draws.
        """
        m = masking_config
        schedule = check_choice("masking.schedule", m.schedule, SCHEDULES)
        strategy = check_choice("masking.strategy", m.strategy, STRATEGIES)
        ratio = check_float("masking.ratio", m.ratio, low=0, high=1, low_open=True, high_open=True)
        end_ratio = check_float(
            "masking.end_ratio", m.end_ratio, low=0, high=1, low_open=True, high_open=True
        )
        mask_prob, random_prob = _replacement_split("masking", m.mask_prob, m.random_prob)
        span_p = check_float("masking.span_p", m.span_p, low=0, high=1, low_open=True)
        span_max = check_int("masking.span_max", m.span_max, minimum=1)
        span_sampling = check_choice("masking.span_sampling", m.span_sampling, SPAN_SAMPLINGS)
        span_replacement = check_choice(
            "masking.span_replacement", m.span_replacement, SPAN_REPLACEMENTS
        )
        static_epochs = check_int("masking.static_epochs", m.static_epochs, minimum=0)
        min_predictions = check_int(
            "masking.min_predictions", m.min_predictions, minimum=0, maximum=seq_len
        )
        pieces = parse_pieces("masking.piecewise", m.piecewise)
        pmi_vocab = m.pmi_vocab
        if strategy == "pmi" and (not isinstance(pmi_vocab, str) or not pmi_vocab):
            raise ValueError(
                f"config.masking.pmi_vocab={pmi_vocab!r}: expected the directory "
                "`python -m mlm_jax.data.pmi --out=DIR` wrote, with masking.strategy='pmi'"
            )
        corruption = check_float("masking.corruption_ratio", m.corruption_ratio, low=0, high=1,
                                 high_open=True)  # fmt: skip
        if schedule == "piecewise" and not pieces:
            raise ValueError(
                f"config.masking.piecewise={m.piecewise!r}: expected at least one STEP:RATIO "
                "pair with masking.schedule='piecewise', like '800:0.15'"
            )
        k = check_int("masking.max_predictions", m.max_predictions, minimum=0, maximum=seq_len)
        never = tuple(sorted({int(i) for i in m.never_mask_ids}))
        if never and never[0] < 0:
            raise ValueError(f"config.masking.never_mask_ids={never}: expected ids >= 0")
        # Fields a schedule does not use are normalised, so equal masking compares equal.
        pieces = pieces if schedule == "piecewise" else ()
        if schedule in ("constant", "piecewise"):
            end_ratio = ratio
        rates, weighting = check_rate_fields(
            m, schedule=schedule, mask_prob=mask_prob, random_prob=random_prob,
            corruption_ratio=corruption,
        )  # fmt: skip
        check_exact_ratios(schedule, ratio, end_ratio, corruption, num_steps)
        if k == 0:
            max_ratio = largest_ratio(schedule, ratio, end_ratio, pieces)
            if not rates.is_fixed:
                max_ratio = rates.upper_end()
            k = derived_max_predictions(max_ratio, seq_len, strategy)
        return cls(
            strategy=strategy,
            mask_prob=mask_prob,
            random_prob=random_prob,
            max_predictions=k,
            ratio=ratio,
            end_ratio=end_ratio,
            schedule=schedule,
            num_steps=1 if schedule in ("constant", "piecewise") else int(num_steps),
            span_p=span_p,
            span_max=span_max,
            span_sampling=span_sampling,
            span_replacement=span_replacement,
            static_epochs=static_epochs,
            min_predictions=min_predictions,
            corruption_ratio=corruption,
            pmi_vocab=pmi_vocab if strategy == "pmi" else "",
            pieces=pieces,
            never_mask_ids=never,
            rate_distribution=str(rates),
            loss_weighting=weighting,
        )

    @classmethod
    def for_eval(cls, eval_config: Any, *, seq_len: int) -> MaskingSpec:
        """The masking every run is evaluated with, whatever it trains with: comparable numbers.

        Only eval.* shape it (mask_ratio, strategy, mask_prob, random_prob). The rest of
        masking.* (K, never_mask_ids, the span shape, static masks) stays at its defaults, so
        runs that differ there are still scored on the same positions with the same corruption.
        """
        e = eval_config
        ratio = check_float(
            "eval.mask_ratio", e.mask_ratio, low=0, high=1, low_open=True, high_open=True
        )
        exact_fraction(ratio, "config.eval.mask_ratio")
        strategy = check_choice("eval.strategy", e.strategy, EVAL_STRATEGIES)
        mask_prob, random_prob = _replacement_split("eval", e.mask_prob, e.random_prob)
        return cls(
            strategy=strategy,
            mask_prob=mask_prob,
            random_prob=random_prob,
            max_predictions=derived_max_predictions(ratio, seq_len, strategy),
            ratio=ratio,
            end_ratio=ratio,
        )

    @property
    def rates(self) -> RateDistribution:
        """masking.rate_distribution, parsed (checked in from_config)."""
        return parse_rate_distribution("masking.rate_distribution", self.rate_distribution)

    def with_vocab(self, tokenizer) -> MaskingSpec:
        """The spec with the tokenizer's [MASK] id, special ids and vocabulary size."""
        vocab_size = int(tokenizer.vocab_size)
        special = tuple(sorted({int(i) for i in tokenizer.special_ids} | {int(tokenizer.mask_id)}))
        if self.never_mask_ids and self.never_mask_ids[-1] >= vocab_size:
            raise ValueError(
                f"config.masking.never_mask_ids={self.never_mask_ids}: expected ids in "
                f"[0, vocab_size={vocab_size})"
            )
        if special[0] < 0 or special[-1] >= vocab_size or len(special) >= vocab_size:
            raise ValueError(
                f"tokenizer special ids {special}: expected ids in [0, {vocab_size}) that leave "
                "ordinary tokens to draw"
            )
        return dataclasses.replace(
            self, vocab_size=vocab_size, mask_id=int(tokenizer.mask_id), special_ids=special
        )


def derived_max_predictions(max_ratio: float, seq_len: int, strategy: str) -> int:
    """K when masking.max_predictions is 0: room for the largest ratio on a full row."""
    k = math.ceil(max_ratio * (seq_len - 2))
    if strategy != "uniform":
        k += WORD_OVERSHOOT_SLACK
    return min(-(-k // 8) * 8, seq_len)


def _replacement_split(section: str, mask_prob: Any, random_prob: Any) -> tuple[float, float]:
    mask_prob = check_float(f"{section}.mask_prob", mask_prob, low=0, high=1)
    random_prob = check_float(f"{section}.random_prob", random_prob, low=0, high=1)
    if mask_prob + random_prob > 1 + 1e-9:
        raise ValueError(
            f"config.{section}.mask_prob + {section}.random_prob = "
            f"{mask_prob + random_prob}: expected at most 1 (the rest keeps the token)"
        )
    return mask_prob, random_prob


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
    word_starts_BxL: jax.Array | None = None,
    *,
    ratio: Any,
    spec: MaskingSpec,
) -> MaskedBatch:
    """Selects and corrupts positions; see the module docstring for the exact rule.

    key: one key (split into one per row) or per-row keys [B] (from masking_keys); typed
    (jax.random.key) or raw uint32 keys both work. ratio in (0, 1): a Python float (its
    budget rounds exactly), an ExactRatio (from scheduled_ratio), or a traced float32 scalar;
    or one per row: an ExactRatio of [B] arrays (rates.row_rates) or a float32 [B] array.
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
    if spec.strategy != "uniform":
        if word_starts_BxL is None:
            raise ValueError(
                f"masking.strategy={spec.strategy!r} needs word_starts; pass them or use "
                "masking.strategy='uniform'"
            )
        word_starts_BxL = jnp.asarray(word_starts_BxL, bool)
        if word_starts_BxL.shape != tokens_BxL.shape:
            raise ValueError(f"word_starts {word_starts_BxL.shape}: expected {tokens_BxL.shape}")
    else:
        word_starts_BxL = jnp.ones(tokens_BxL.shape, bool)
    if isinstance(ratio, (int, float)) and not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio!r}: expected a float in (0, 1)")
    ratio = as_exact_ratio(ratio)
    per_row = jnp.ndim(ratio.value) == 1  # one rate per row (masking/rates.py)
    if per_row:
        ratio = ExactRatio(*(jnp.broadcast_to(x, tokens_BxL.shape[:1]) for x in ratio))
    if spec.vocab_size == 0:
        raise ValueError("MaskingSpec without a vocabulary: call spec.with_vocab(tokenizer)")

    batch = tokens_BxL.shape[0]
    key = jnp.asarray(key)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (0 if typed else 1):
        key = jax.random.split(key, batch)
    if key.shape[0] != batch:
        raise ValueError(f"key batch {key.shape[0]}: expected one key or {batch} keys")

    row_fn = jax.vmap(_mask_row, in_axes=(0, 0, 0, 0, 0 if per_row else None, None))
    return row_fn(key, tokens_BxL, maskable_BxL, word_starts_BxL, ratio, spec)


def _mask_row(key, tokens_L, maskable_L, word_starts_L, ratio, spec: MaskingSpec):
    """One row: selection by unit priority, then the replacement split."""
    length = tokens_L.shape[0]
    k = spec.max_predictions
    order_key, span_key, split_key, token_key = jax.random.split(key, 4)

    excluded = jnp.asarray(spec.special_ids + spec.never_mask_ids, jnp.int32)
    eligible_L = maskable_L & ~jnp.isin(tokens_L, excluded)
    num_maskable = eligible_L.sum(dtype=jnp.int32)
    floor = jnp.minimum(num_maskable, spec.min_predictions)
    num_wanted, target = budget(num_maskable, ratio, floor, spec.strategy)

    if spec.strategy == "uniform":
        word_id_L = jnp.arange(length, dtype=jnp.int32)
        word_len_W = eligible_L.astype(jnp.int32)
    else:
        # A word starts at a word-start piece, and a new one also starts at and after every
        # ineligible token, so a word never spans [SEP] and an orphan "##" piece stands alone.
        prev_eligible_L = jnp.concatenate([jnp.zeros(1, bool), eligible_L[:-1]])
        starts_L = (word_starts_L | ~eligible_L | ~prev_eligible_L).at[0].set(True)
        word_id_L = jnp.cumsum(starts_L, dtype=jnp.int32) - 1
        word_len_W = jax.ops.segment_sum(
            eligible_L.astype(jnp.int32), word_id_L, num_segments=length, indices_are_sorted=True
        )
    word_eligible_W = word_len_W > 0

    priority_U = jax.random.bits(order_key, (length,), jnp.uint32)
    if spec.strategy == "span" and spec.span_sampling == "anchored":
        unit_start_W, unit_id_W = anchored_span_units(
            span_key, priority_U, word_eligible_W, spec.span_p, spec.span_max
        )
    elif spec.strategy == "span":
        unit_start_W, unit_id_W = span_units(span_key, word_eligible_W, spec.span_p, spec.span_max)
    else:
        unit_start_W = word_eligible_W
        unit_id_W = jnp.arange(length, dtype=jnp.int32)
    # Stable sort: the words of one span stay in position order, so a span fills left to right.
    order_W = jnp.argsort(priority_U[unit_id_W], stable=True)
    crossing_key = jax.random.fold_in(order_key, 1)
    len_sorted_W = word_len_W[order_W]

    def positions_taken(target, cap):
        take_sorted_W, capped = take_units(crossing_key, len_sorted_W, target, floor, cap)
        taken_W = jnp.zeros(length, bool).at[order_W].set(take_sorted_W, unique_indices=True)
        return taken_W, taken_W[word_id_L] & eligible_L, capped

    selected_W, selected_L, capped = positions_taken(target, k)
    num_selected = selected_L.sum(dtype=jnp.int32)
    num_spans = (selected_W & unit_start_W).sum(dtype=jnp.int32)
    if spec.corruption_ratio:
        # The same order and crossing draw at another target: a superset or a subset of the
        # predicted positions (| and & only matter where K capped the predictions). Corrupting
        # more needs no room in K: no loss is taken there.
        _, corrupt_target = budget(
            num_maskable, as_exact_ratio(spec.corruption_ratio), floor, spec.strategy
        )
        other_L = positions_taken(corrupt_target, length)[1]
        more = corrupt_target >= target
        corrupted_L = jnp.where(more, other_L | selected_L, other_L & selected_L)
    else:
        corrupted_L = selected_L
    split_L = selected_L & corrupted_L  # predicted and corrupted: mask_prob / random_prob / keep

    u_L = jax.random.uniform(split_key, (length,))
    if spec.span_replacement == "span":  # one draw per span (per word for whole_word)
        u_L = u_L[unit_id_W[word_id_L]]
    random_L = _random_ordinary_tokens(token_key, (length,), spec)
    inputs_L = jnp.where(
        (split_L & (u_L < spec.mask_prob)) | (corrupted_L & ~selected_L),
        spec.mask_id,
        jnp.where(split_L & (u_L < spec.mask_prob + spec.random_prob), random_L, tokens_L),
    )

    slot_L = jnp.where(selected_L, jnp.cumsum(selected_L, dtype=jnp.int32) - 1, k)
    positions_K = (
        jnp.zeros(k, jnp.int32)
        .at[slot_L]
        .set(jnp.arange(length, dtype=jnp.int32), mode="drop", unique_indices=True)
    )
    valid_K = jnp.arange(k) < num_selected
    targets_K = jnp.where(valid_K, tokens_L[positions_K], 0)
    return MaskedBatch(
        inputs=inputs_L.astype(jnp.int32),
        positions=positions_K,
        targets=targets_K,
        weights=valid_K.astype(jnp.float32),
        num_maskable=num_maskable,
        num_wanted=num_wanted,
        num_selected=num_selected,
        num_spans=num_spans,
        capped=capped,
        corrupted=corrupted_L,
    )


def _random_ordinary_tokens(key, shape, spec: MaskingSpec):
    """Uniform draws over 0..vocab_size-1 minus special_ids: draw a rank, skip the specials."""
    tokens = jax.random.randint(key, shape, 0, spec.vocab_size - len(spec.special_ids))
    for special in spec.special_ids:  # sorted ascending, so each skip sees the earlier ones
        tokens = tokens + (tokens >= special).astype(tokens.dtype)
    return tokens

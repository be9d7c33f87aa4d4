"""MaskingSpec: config.masking (and eval.*) checked once into a frozen, hashable record.

The shared keys are checked here; each strategy checks its own (masking/strategy.py's
read_config), and its settings ride in `options`. K (predictions per row) is derived here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from mlm_jax.config.fields import check_choice, check_float, check_int
from mlm_jax.masking import strategies
from mlm_jax.masking.rates import RateDistribution, check_rate_fields, parse_rate_distribution
from mlm_jax.masking.schedule import (
    SCHEDULES,
    check_exact_ratios,
    exact_fraction,
    largest_ratio,
    parse_pieces,
)
from mlm_jax.masking.strategy import HostData, Options, Prepared, Strategy

STRATEGIES = strategies.NAMES  # what masking.strategy may say (masking/strategies/)
EVAL_STRATEGIES = strategies.EVAL_NAMES  # (the common eval needs no host preparation)
SPAN_REPLACEMENTS = ("token", "span")
# Extra predictions per row when K is derived, for the last word of whole_word/span, which
# may overshoot the token budget (a word of more pieces than this is dropped if it won't fit).
WORD_OVERSHOOT_SLACK = 8


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    """Everything masking needs, checked once; hashable so jit can take it static.

    The vocabulary fields stay unset (vocab_size 0) until `with_vocab` fills them from the
    tokenizer; mask_tokens needs them set.
    """

    strategy: str  # a name in masking/strategies/ (the selected strategy)
    mask_prob: float
    random_prob: float
    max_predictions: int  # K, resolved (never 0 here)
    ratio: float = 0.15
    end_ratio: float = 0.15
    schedule: str = "constant"
    num_steps: int = 1  # the schedule's length (train.num_steps)
    span_replacement: str = "token"  # token: 80/10/10 per token | span: one draw per unit
    options: Options = ()  # the strategy's own settings (its read_config), e.g. span_p
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

    @property
    def strategy_record(self) -> Strategy:
        """The Strategy the spec names (masking/strategy.py)."""
        return strategies.get(self.strategy)

    def option(self, name: str) -> Any:
        """One of the strategy's own settings."""
        return dict(self.options)[name]

    @classmethod
    def from_config(cls, masking_config: Any, *, seq_len: int, num_steps: int) -> MaskingSpec:
        """Checks config.masking and resolves K (max_predictions = 0 -> derived).

        seq_len and num_steps come checked from their own specs (data, train).
        Derived K = ceil(max_ratio * (seq_len - 2)) (a row holds at least [CLS] and [SEP]),
        plus WORD_OVERSHOOT_SLACK for strategies that take words, clamped to seq_len. max_ratio
        is the largest ratio the schedule reaches, or the largest rate
        masking.rate_distribution draws.
        """
        m = masking_config
        schedule, ratio, end_ratio, pieces = _schedule_fields(m)
        strategy = strategies.select(m)
        mask_prob, random_prob = _replacement_split("masking", m.mask_prob, m.random_prob)
        options = _strategy_options(m, strategy)
        span_replacement = check_choice(
            "masking.span_replacement", m.span_replacement, SPAN_REPLACEMENTS
        )
        static_epochs = check_int("masking.static_epochs", m.static_epochs, minimum=0)
        min_predictions = check_int(
            "masking.min_predictions", m.min_predictions, minimum=0, maximum=seq_len
        )
        corruption = check_float("masking.corruption_ratio", m.corruption_ratio, low=0, high=1,
                                 high_open=True)  # fmt: skip
        k = check_int("masking.max_predictions", m.max_predictions, minimum=0, maximum=seq_len)
        never = tuple(sorted({int(i) for i in m.never_mask_ids}))
        if never and never[0] < 0:
            raise ValueError(f"config.masking.never_mask_ids={never}: expected ids >= 0")
        rates, weighting = check_rate_fields(
            m, schedule=schedule, mask_prob=mask_prob, random_prob=random_prob,
            corruption_ratio=corruption,
        )  # fmt: skip
        check_exact_ratios(schedule, ratio, end_ratio, corruption, num_steps)
        if k == 0:
            max_ratio = largest_ratio(schedule, ratio, end_ratio, pieces)
            if not rates.is_fixed:
                max_ratio = rates.upper_end()
            k = derived_max_predictions(max_ratio, seq_len, strategy.name)
        return cls(
            strategy=strategy.name,
            mask_prob=mask_prob,
            random_prob=random_prob,
            max_predictions=k,
            ratio=ratio,
            end_ratio=end_ratio,
            schedule=schedule,
            num_steps=1 if schedule in ("constant", "piecewise") else int(num_steps),
            span_replacement=span_replacement,
            options=options,
            static_epochs=static_epochs,
            min_predictions=min_predictions,
            corruption_ratio=corruption,
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
        from mlm_jax.config.defaults import base_config  # the strategies' default options

        e = eval_config
        ratio = check_float(
            "eval.mask_ratio", e.mask_ratio, low=0, high=1, low_open=True, high_open=True
        )
        exact_fraction(ratio, "config.eval.mask_ratio")
        strategy = strategies.select(e, "eval.strategy", EVAL_STRATEGIES)
        mask_prob, random_prob = _replacement_split("eval", e.mask_prob, e.random_prob)
        return cls(
            strategy=strategy.name,
            mask_prob=mask_prob,
            random_prob=random_prob,
            max_predictions=derived_max_predictions(ratio, seq_len, strategy.name),
            ratio=ratio,
            end_ratio=ratio,
            options=strategy.read_config(base_config().masking, True),
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


def _schedule_fields(m: Any) -> tuple[str, float, float, tuple[tuple[int, float], ...]]:
    """(schedule, ratio, end_ratio, pieces), checked; fields the schedule does not use are
    normalised, so equal masking compares equal."""
    schedule = check_choice("masking.schedule", m.schedule, SCHEDULES)
    ratio = check_float("masking.ratio", m.ratio, low=0, high=1, low_open=True, high_open=True)
    end_ratio = check_float(
        "masking.end_ratio", m.end_ratio, low=0, high=1, low_open=True, high_open=True
    )
    pieces = parse_pieces("masking.piecewise", m.piecewise)
    if schedule == "piecewise" and not pieces:
        raise ValueError(
            f"config.masking.piecewise={m.piecewise!r}: expected at least one STEP:RATIO "
            "pair with masking.schedule='piecewise', like '800:0.15'"
        )
    if schedule in ("constant", "piecewise"):
        end_ratio = ratio
    return schedule, ratio, end_ratio, pieces if schedule == "piecewise" else ()


def _strategy_options(masking_config: Any, chosen: Strategy) -> Options:
    """Every strategy's own keys checked (a bad value fails whatever runs); the chosen one's kept."""
    options = ()
    for strategy in strategies.REGISTRY.values():
        read = strategy.read_config(masking_config, strategy is chosen)
        options = read if strategy is chosen else options
    return options


def prepare_host(spec: MaskingSpec, tokenizer, data) -> Prepared:
    """What the host builds for the spec's strategy before training (once per run): marks for
    the packer and tables for the steps (masking/strategy.py); nothing for most strategies."""
    prepare = spec.strategy_record.prepare
    return Prepared() if prepare is None else prepare(spec, HostData(tokenizer, data))


def input_files(spec: MaskingSpec) -> dict[str, str]:
    """The files the strategy's host preparation reads, by name (a resume checks their bytes)."""
    files = spec.strategy_record.input_files
    return {} if files is None else dict(files(spec))


def derived_max_predictions(max_ratio: float, seq_len: int, strategy: str) -> int:
    """K when masking.max_predictions is 0: room for the largest ratio on a full row, and no
    more: every slot past the budget is head and loss work on a padding prediction (rounding
    19 up to 24 cost the BERT tiny step 12 %, docs/performance.md). Runs recorded before K was
    exact rounded it up to a multiple of 8; training/resume.py keeps theirs."""
    k = math.ceil(max_ratio * (seq_len - 2))
    if strategies.get(strategy).takes_words:
        k += WORD_OVERSHOOT_SLACK
    return min(k, seq_len)


def _replacement_split(section: str, mask_prob: Any, random_prob: Any) -> tuple[float, float]:
    mask_prob = check_float(f"{section}.mask_prob", mask_prob, low=0, high=1)
    random_prob = check_float(f"{section}.random_prob", random_prob, low=0, high=1)
    if mask_prob + random_prob > 1 + 1e-9:
        raise ValueError(
            f"config.{section}.mask_prob + {section}.random_prob = "
            f"{mask_prob + random_prob}: expected at most 1 (the rest keeps the token)"
        )
    return mask_prob, random_prob

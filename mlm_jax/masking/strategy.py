"""What a masking strategy is: the contract every module under masking/strategies/ fills in.

A strategy decides only which units a row is cut into and in which order they are taken. What
every strategy gets for free lives in masking/core.py: eligibility (specials, never_mask_ids),
the exact per-row budget, the crossing draw, the cap K, per-row keys and static masking,
corruption vs prediction, and the [MASK]/random/keep split.

The road through a row (core._mask_row), with the strategy's hooks in brackets:
  tokens --[starts_field]--> words --[group]--> units --[priority]--> order --budget--> positions

A strategy's keys are read by its `read_config` for every config, chosen or not, so a bad value
fails whatever strategy runs; only the chosen strategy's options reach the spec (`spec.options`).
What the host prepares (`prepare`) reaches the packer as `marks` and the jitted steps as
`tables`: one dict of arrays per run, passed to every step the same way, never an argument of
its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

Options = tuple[tuple[str, Any], ...]  # a strategy's own settings, hashable (the spec is static)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the host built for a strategy before training, once per run.

    marks: an object the packer calls as `marks.unit_starts(ids, word_starts)` to mark unit
    starts while tokenizing (it has a `fingerprint` naming the token cache), or None.
    tables: arrays the jitted steps receive (replicated), e.g. a [V] weight per token.
    fingerprint: names what was built (logged; tied to the tokenizer it was built for).
    """

    marks: Any = None
    tables: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    fingerprint: str = ""


@dataclasses.dataclass(frozen=True)
class HostData:
    """What `prepare` may read on the host: the run's tokenizer and data spec (data.DataSpec)."""

    tokenizer: Any
    data: Any


def no_options(masking_config: Any, chosen: bool) -> Options:
    """read_config of a strategy without keys of its own."""
    del masking_config, chosen
    return ()


@dataclasses.dataclass(frozen=True)
class Strategy:
    """One masking strategy. Only `name` is required; the defaults make a token-level strategy.

    starts_field: the per-token bool field of the batch whose True starts a unit (a word, a PMI
      n-gram); None: every eligible token is its own unit, and the budget is the exact integer
      round(ratio * n) (with starts, a real target met in expectation: core's docstring).
    read_config(masking_config, chosen) -> Options: checks the strategy's own keys (one error
      line each); called for every strategy, `chosen` says whether this one runs.
    group(key, priority_W, word_eligible_W, options) -> (unit_start_W, unit_id_W): words into
      units of several words (spans), taken whole; None: each word is a unit.
    priority(key, tokens_L, unit_id_W, tables, options) -> priority per unit [L] (ascending is
      taken first; ties keep position order); None: uniform random bits from the key.
    prepare(spec, HostData) -> Prepared: what the host builds before training; None: nothing.
    input_files(spec) -> {name: path}: the files `prepare` reads, which a resumed run checks
      still hold the bytes it started with (training/inputs.py), before preparing.
    for_eval: may be eval.strategy (the common eval masking has no host preparation).
    selected_by: a key of its own (read as `masking.<key>`) whose value other than "none"
      selects this strategy in place of `masking.strategy`, which must then be `variant_of`.
    """

    name: str
    doc: str = ""
    starts_field: str | None = None
    read_config: Callable[[Any, bool], Options] = no_options
    group: Callable[..., tuple[jax.Array, jax.Array]] | None = None
    priority: Callable[..., jax.Array] | None = None
    prepare: Callable[[Any, HostData], Prepared] | None = None
    input_files: Callable[[Any], Mapping[str, str]] | None = None
    for_eval: bool = True
    selected_by: str = ""
    variant_of: str = ""

    @property
    def takes_words(self) -> bool:
        """Whether units are cut from a starts field (so a unit may overshoot the budget)."""
        return self.starts_field is not None

"""The masking strategies, by the name `masking.strategy` gives: one module each.

Adding one: a module that defines `STRATEGY` (masking/strategy.py says what it holds), and one
line in `_MODULES` below. docs/extending.md walks through it.
"""

from __future__ import annotations

from typing import Any

from mlm_jax.config.fields import check_choice
from mlm_jax.masking.strategies import frequency, pmi, span, uniform, whole_word
from mlm_jax.masking.strategy import Strategy

_MODULES = (uniform, whole_word, span, pmi, frequency)
REGISTRY: dict[str, Strategy] = {m.STRATEGY.name: m.STRATEGY for m in _MODULES}
# What masking.strategy may say (a strategy with `selected_by` is chosen by its own key).
NAMES = tuple(name for name, s in REGISTRY.items() if not s.selected_by)
EVAL_NAMES = tuple(name for name in NAMES if REGISTRY[name].for_eval)


def get(name: str) -> Strategy:
    """The strategy a spec names (spec.strategy)."""
    return REGISTRY[name]


def select(masking_config: Any, key: str = "masking.strategy", names=NAMES) -> Strategy:
    """The strategy a config asks for: masking.strategy, or a variant its own key selects."""
    name = check_choice(key, masking_config.strategy, names)
    for variant in REGISTRY.values():
        value = masking_config.get(variant.selected_by, "none") if variant.selected_by else "none"
        if value == "none":
            continue
        if name != variant.variant_of:
            raise ValueError(
                f"config.masking.{variant.selected_by}={value!r} needs "
                f"masking.strategy={variant.variant_of!r}, not {name!r}"
            )
        return variant
    return REGISTRY[name]

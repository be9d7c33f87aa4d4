"""span: spans of whole words with truncated-geometric lengths (SpanBERT, Joshi et al. 2020).

tile: i.i.d. span lengths tile each run of eligible words, and spans are taken in random order.
anchored: SpanBERT's anchors, drawn without replacement, each covering a span to its right.
Its keys: masking.span_p (geometric parameter), span_max (longest span, in words),
span_sampling (tile | anchored). masking.span_replacement is shared (masking/core.py).
"""

from __future__ import annotations

from typing import Any

from mlm_jax.config.fields import check_choice, check_float, check_int
from mlm_jax.masking.strategy import Options, Strategy
from mlm_jax.masking.units import anchored_span_units, span_units

SAMPLINGS = ("tile", "anchored")


def read_config(masking_config: Any, chosen: bool) -> Options:
    """masking.span_p, span_max and span_sampling, checked whatever strategy runs."""
    del chosen
    m = masking_config
    return (
        ("span_p", check_float("masking.span_p", m.span_p, low=0, high=1, low_open=True)),
        ("span_max", check_int("masking.span_max", m.span_max, minimum=1)),
        ("span_sampling", check_choice("masking.span_sampling", m.span_sampling, SAMPLINGS)),
    )


def group(key, priority_W, word_eligible_W, options: Options):
    """Words -> spans: (span start flag per word, span id per word)."""
    o = dict(options)
    if o["span_sampling"] == "anchored":
        return anchored_span_units(key, priority_W, word_eligible_W, o["span_p"], o["span_max"])
    return span_units(key, word_eligible_W, o["span_p"], o["span_max"])


STRATEGY = Strategy(
    name="span",
    doc="spans of whole words",
    starts_field="word_starts",
    read_config=read_config,
    group=group,
)

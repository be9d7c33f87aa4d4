"""frequency: token-level masking where a token's chance to be selected is proportional to
count^-alpha (rare tokens more often; issue 26, after Yang et al. 2022's frequency-aware masking).

Selected by `masking.token_weighting=frequency:ALPHA` with masking.strategy=uniform. The counts
come from the training split only (never the held-out one), counted on the host once per run
with the run's tokenizer, add-one smoothed so an unseen token keeps a finite weight; the [V]
table of log weights, -alpha * log(count + 1), reaches the jitted steps as
tables["frequency_log_weight"] and is fingerprinted with the tokenizer's fingerprint.

Each row keeps uniform's exact budget b = max(round(ratio * n), floor): the tokens are ordered by
Gumbel top-k (log w + Gumbel noise, largest first), so the first b eligible ones are a weighted
sample without replacement (successive sampling, P(next = i) = w_i / sum of the weights left).
With alpha 0 every weight is 1 and the order is uniform's own, drawn from the same bits: bit for
bit the uniform strategy.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.masking.strategy import HostData, Options, Prepared, Strategy

TABLE = "frequency_log_weight"
_COUNT_CHUNK = 4096  # rows counted at a time on the host


def parse_token_weighting(text: Any) -> float | None:
    """`none` -> None; `frequency:ALPHA` (finite ALPHA >= 0) -> ALPHA; one error line else."""
    if text == "none":
        return None
    kind, _, alpha_text = str(text).partition(":") if isinstance(text, str) else ("", "", "")
    try:
        alpha = float(alpha_text)
    except ValueError:
        alpha = math.nan
    if kind != "frequency" or not math.isfinite(alpha) or alpha < 0:
        raise ValueError(
            f"config.masking.token_weighting={text!r}: expected none or frequency:ALPHA with a "
            "number ALPHA >= 0 (like frequency:0.5)"
        )
    return alpha


def read_config(masking_config: Any, chosen: bool) -> Options:
    """masking.token_weighting, checked whatever runs; alpha kept when it is chosen."""
    alpha = parse_token_weighting(masking_config.get("token_weighting", "none"))
    return (("alpha", alpha),) if chosen else ()


def priority(key, tokens_L, tables, options: Options):
    """Ascending priority per token: uniform's bits at alpha 0, else -(log w + Gumbel)."""
    alpha = dict(options)["alpha"]
    length = tokens_L.shape[0]
    if alpha == 0:  # every weight 1: uniform's own order, bit for bit
        return jax.random.bits(key, (length,), jnp.uint32)
    gumbel_L = jax.random.gumbel(key, (length,), jnp.float32)
    return -(jnp.asarray(tables[TABLE])[tokens_L] + gumbel_L)


def token_counts(rows, vocab_size: int) -> np.ndarray:
    """Occurrences of each id over all rows of `rows` (len, rows(ids)["tokens"]), int64 [V]."""
    counts = np.zeros(vocab_size, np.int64)
    for start in range(0, len(rows), _COUNT_CHUNK):
        ids = np.arange(start, min(start + _COUNT_CHUNK, len(rows)))
        tokens = np.asarray(rows.rows(ids)["tokens"]).reshape(-1)
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
    return counts


def log_weights(counts: np.ndarray, alpha: float) -> np.ndarray:
    """log of (count + 1)^-alpha, float32 [V]."""
    return (-alpha * np.log1p(counts.astype(np.float64))).astype(np.float32)


def prepare(spec, host: HostData) -> Prepared:
    """Counts the training split's tokens (with the run's tokenizer) into the weight table."""
    from mlm_jax.data import loader  # host side only

    counts = token_counts(loader.packed_rows(host.data, host.tokenizer, "train"), spec.vocab_size)
    table = log_weights(counts, spec.option("alpha"))
    digest = hashlib.sha256(host.tokenizer.fingerprint().encode())
    digest.update(counts.tobytes())
    digest.update(repr(spec.option("alpha")).encode())
    return Prepared(tables={TABLE: table}, fingerprint=digest.hexdigest()[:16])


STRATEGY = Strategy(
    name="frequency",
    doc="tokens weighted by count^-alpha (masking.token_weighting)",
    read_config=read_config,
    priority=priority,
    prepare=prepare,
    for_eval=False,
    selected_by="token_weighting",
    variant_of="uniform",
)

"""eval/nll_bound: nats per token on the held-out set, the masked-diffusion (any-order) bound.

For a row of n eligible tokens x and a model p that fills [MASK]s,

    -log p(x) / n  <=  E_{m ~ U{1..n}} E_{M: m of the n, uniformly} [ (1/m) sum_{j in M} CE_j ]

where CE_j = -log p(x_j | x with M replaced by [MASK]) (the any-order autoregressive bound;
MDLM's continuous-time ELBO with Bernoulli(t) masks integrates to the same 1/m weights). Summed
over rows and divided by their tokens it is training/weighting.py's elbo loss at uniform m.

The estimator is the same for every run and every checkpoint: S = eval.nll_bound_rates
stratified rates per row, t_s = (s + u_i) / S for s = 0..S-1 with one offset u_i per row from a
fixed key, and m = ceil(t_s n) (so m is exactly uniform on 1..n marginally, and the estimate
unbiased); which m tokens comes from fixed keys too. Masking is the common eval masking made
MDLM's: uniform tokens, all [MASK] (no random or kept tokens, which would show the model its
targets), K = the whole row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mlm_jax.data.batch import Batch
from mlm_jax.masking.core import MaskingSpec, derived_max_predictions, mask_tokens
from mlm_jax.masking.schedule import ExactRatio
from mlm_jax.training.weighting import loss_weights, weighted_loss_sums

_OFFSETS = 0x6F66  # fold tag of the per-row stratum offsets ("of")
_BOUND_SEED = 0x626F  # the bound's root key, the same for every run ("bo")


def bound_spec(eval_spec: MaskingSpec, seq_len: int) -> MaskingSpec:
    """The eval masking (vocabulary, specials) made MDLM's: uniform, [MASK] only, K = seq_len."""
    return dataclasses.replace(
        eval_spec,
        strategy="uniform",
        mask_prob=1.0,
        random_prob=0.0,
        corruption_ratio=0.0,
        min_predictions=1,
        max_predictions=derived_max_predictions(1.0, seq_len, "uniform"),
        ratio=0.5,
        end_ratio=0.5,
        schedule="constant",
    )


def stratum_counts(offsets_B, num_maskable_B, stratum, num_strata: int):
    """m = ceil((stratum + u) / S * n), clipped to 1..n (0 for a row with no eligible token)."""
    n_B = jnp.asarray(num_maskable_B, jnp.int32)
    t_B = (jnp.asarray(stratum, jnp.float32) + offsets_B) / num_strata
    m_B = jnp.ceil(t_B * n_B.astype(jnp.float32)).astype(jnp.int32)
    return jnp.clip(m_B, jnp.minimum(n_B, 1), n_B)


def bound_sums(logits_fn, key, batch: Batch, spec: MaskingSpec, stratum, num_strata: int) -> dict:
    """The bound's sums on one held-out batch at one stratum (jit-safe; stratum may be traced).

    logits_fn(inputs_BxL, positions_BxK) -> logits_BxKxV is the model, deterministic.
    spec: bound_spec(...) with its vocabulary. Returns {"bound_sum", "bound_tokens"}; the bound
    is their ratio summed over batches and strata.
    """
    tokens_BxL, maskable_BxL = batch["tokens"], batch["maskable"]
    rows = tokens_BxL.shape[0]
    offsets_B = jax.random.uniform(jax.random.fold_in(key, _OFFSETS), (rows,))
    keys_B = jax.random.split(jax.random.fold_in(key, stratum), rows)
    # The eligible count comes from masking itself (one cheap pass at any rate), so the bound
    # counts exactly the tokens masking would.
    n_B = mask_tokens(keys_B, tokens_BxL, maskable_BxL, ratio=0.5, spec=spec).num_maskable
    m_B = stratum_counts(offsets_B, n_B, stratum, num_strata)
    den_B = jnp.maximum(n_B, 1)
    rate = ExactRatio(m_B.astype(jnp.float32) / den_B, m_B, den_B)  # round(n * m / n) = m
    masked = mask_tokens(keys_B, tokens_BxL, maskable_BxL, ratio=rate, spec=spec)
    logits_BxKxV = logits_fn(masked.inputs, masked.positions)
    weights = loss_weights("elbo", masked.weights, masked.num_maskable, masked.num_selected)
    sums = weighted_loss_sums(logits_BxKxV, masked.targets, *weights)
    return {"bound_sum": sums["objective_sum"], "bound_tokens": sums["objective_tokens"]}


def bound_step(params, batch: Batch, key, stratum, *, model, spec, num_strata: int) -> dict:
    """eval/nll_bound's sums on one held-out batch at one stratified rate (training/bound.py)."""

    def logits_fn(inputs_BxL, positions_BxK):
        return model.apply(
            {"params": params},
            inputs_BxL,
            positions_BxK,
            document_ids_BxL=batch["document_ids"],
            deterministic=True,
        )

    return bound_sums(logits_fn, key, batch, spec, stratum, num_strata)


def nll_bound(bound_fn, eval_batches: list, num_strata: int) -> dict[str, float]:
    """{"eval/nll_bound": nats per token} over the held-out batches, or {} if they have no
    eligible token. bound_fn(batch, key, stratum) is bound_step with the parameters bound; its
    keys do not depend on config.seed, so every run and checkpoint gets the same estimator."""
    base = jax.random.key(_BOUND_SEED)
    sums = [
        bound_fn(batch, jax.random.fold_in(base, i), jnp.int32(s))
        for s in range(num_strata)
        for i, batch in enumerate(eval_batches)
    ]
    sums = jax.device_get(sums)  # one host sync
    tokens = sum(float(x["bound_tokens"]) for x in sums)
    if tokens == 0:
        return {}
    return {"eval/nll_bound": sum(float(x["bound_sum"]) for x in sums) / tokens}

"""How the loss weighs predictions: `masking.loss_weighting` = mean (BERT) or elbo (MDLM).

mean: every prediction counts the same,

    L_mean = sum_{i,k} w_ik CE_ik / sum_{i,k} w_ik

with CE_ik = -log p(x_ik | the row as corrupted) and w_ik = 1 for a real prediction, 0 for a
padding slot.

elbo: the masked-diffusion bound (Sahoo et al. 2024, MDLM, eq. 11 with the linear schedule
alpha_t = 1 - t, whose weight -alpha'_t / (1 - alpha_t) is 1/t), normalised per token as MDLM
and init2winit's MDLM do (the weighted sum over the batch divided by its tokens):

    L_elbo = sum_i (1 / t_i) sum_k w_ik CE_ik / sum_i n_i,    t_i = m_i / n_i

n_i is row i's eligible tokens and m_i the tokens it predicts. t_i is the rate the row was
masked at, realised: masking here takes an exact count m_i of the n_i tokens (a uniform subset),
not each token with chance t, and then the bound is the any-order one,
-log p(x_i) / n_i <= E_{m ~ U{1..n_i}} E_M [(1/m) sum_{j in M} CE_j] (MDLM's integral over t of
Binomial(n, t) / t gives exactly these 1/m weights). Weighting by the drawn rate instead would
be wrong for exact budgets: a row drawn at t = 1e-4 still predicts its floor of one token and
would weigh it 1e4 times. Rows that predict nothing (m_i = 0) add no tokens. L_elbo is in nats
per eligible token; with uniform masking, [MASK] replacement only and m ~ U{1..n} it bounds the
held-out negative log-likelihood (training/bound.py estimates it that way).

Both return sums that combine exactly across microbatches, shards and eval batches.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mlm_jax.masking.rates import LOSS_WEIGHTINGS


def loss_weights(weighting: str, weights_BxK, num_maskable_B, num_selected_B):
    """(loss weight per prediction [B, K], tokens each row adds to the denominator [B])."""
    weights_BxK = jnp.asarray(weights_BxK, jnp.float32)
    if weighting == "mean":
        return weights_BxK, weights_BxK.sum(-1)
    if weighting != "elbo":
        raise ValueError(f"loss weighting {weighting!r}: expected one of {LOSS_WEIGHTINGS}")
    n_B = jnp.asarray(num_maskable_B, jnp.float32)
    m_B = jnp.asarray(num_selected_B, jnp.float32)
    inverse_rate_B = n_B / jnp.maximum(m_B, 1.0)  # 1 / t_i
    return weights_BxK * inverse_rate_B[:, None], jnp.where(m_B > 0, n_B, 0.0)


def weighted_loss_sums(logits_BxKxV, targets_BxK, loss_weights_BxK, tokens_B) -> dict:
    """{"objective_sum": sum of weighted cross-entropies, "objective_tokens": its denominator}."""
    losses_BxK = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxKxV.astype(jnp.float32), targets_BxK
    )
    return {
        "objective_sum": jnp.sum(losses_BxK * loss_weights_BxK),
        "objective_tokens": jnp.sum(tokens_B),
    }


def weighted_loss(logits_BxKxV, targets_BxK, loss_weights_BxK, tokens_B):
    """The loss (objective_sum / objective_tokens) and its sums."""
    sums = weighted_loss_sums(logits_BxKxV, targets_BxK, loss_weights_BxK, tokens_B)
    return sums["objective_sum"] / jnp.maximum(sums["objective_tokens"], 1.0), sums

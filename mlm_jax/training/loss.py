"""How MLM predictions are scored: cross-entropy at the K selected positions, as sums that
combine exactly across microbatches, shards and eval batches."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def mlm_loss(logits_BxKxV, targets_BxK, weights_BxK):
    """Weighted mean cross-entropy over predictions, plus sums that combine across shards."""
    losses_BxK = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxKxV.astype(jnp.float32), targets_BxK
    )
    weights_BxK = weights_BxK.astype(jnp.float32)
    correct_BxK = is_first_argmax(logits_BxKxV, targets_BxK).astype(jnp.float32)
    loss_sum = jnp.sum(losses_BxK * weights_BxK)
    weight_sum = jnp.sum(weights_BxK)
    metrics = {
        "loss_sum": loss_sum,
        "correct_sum": jnp.sum(correct_BxK * weights_BxK),
        "weight_sum": weight_sum,
    }
    return loss_sum / jnp.maximum(weight_sum, 1.0), metrics


def is_first_argmax(logits_BxKxV, targets_BxK):
    """`argmax(logits) == targets` (ties go to the first index, as argmax breaks them), in
    three single-output passes over V: a max, a gather and an any. XLA:CPU does not vectorize
    argmax's (value, index) reduce: over [32, 40, 8192] logits it took 25 ms here against 5,
    ~5 % of a ModernBERT tiny train step (docs/performance.md). A row with a NaN logit counts
    no hit (argmax would name the NaN's index; that row's loss is NaN either way)."""
    best_BxKx1 = jnp.max(logits_BxKxV, axis=-1, keepdims=True)
    target_BxK = jnp.take_along_axis(logits_BxKxV, targets_BxK[..., None], axis=-1)[..., 0]
    before_target_BxKxV = jnp.arange(logits_BxKxV.shape[-1]) < targets_BxK[..., None]
    best_before_BxK = jnp.any((logits_BxKxV == best_BxKx1) & before_target_BxKxV, axis=-1)
    return (target_BxK == best_BxKx1[..., 0]) & ~best_before_BxK

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
    correct_BxK = (jnp.argmax(logits_BxKxV, axis=-1) == targets_BxK).astype(jnp.float32)
    loss_sum = jnp.sum(losses_BxK * weights_BxK)
    weight_sum = jnp.sum(weights_BxK)
    metrics = {
        "loss_sum": loss_sum,
        "correct_sum": jnp.sum(correct_BxK * weights_BxK),
        "weight_sum": weight_sum,
    }
    return loss_sum / jnp.maximum(weight_sum, 1.0), metrics

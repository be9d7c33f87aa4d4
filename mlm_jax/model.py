"""Which model a spec describes, and how its MLM predictions are scored.

`mlm_model(spec)` and `classifier(spec, num_labels)` are the only places that pick a family
(bert.py or modernbert.py, by model.arch), so the trainer, fill-mask, export and fine-tuning never name one.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import optax

from mlm_jax import bert, modernbert
from mlm_jax.model_spec import ModelSpec


def mlm_model(spec: ModelSpec) -> nn.Module:
    """Encoder plus MLM head: (tokens_BxL, positions_BxK, ...) -> float32 logits_BxKxV."""
    if spec.arch == "modernbert":
        return modernbert.ModernBertMLM(spec)
    return bert.BertMLM(spec)


def classifier(spec: ModelSpec, num_labels: int, pooling: str = "cls") -> nn.Module:
    """Encoder plus a sequence-classification head: tokens_BxL -> float32 logits_BxC.
    pooling (modernbert): cls | mean; BERT pools [CLS] through its pooler."""
    if spec.arch == "modernbert":
        return modernbert.ModernBertForSequenceClassification(spec, num_labels, pooling)
    return bert.BertForSequenceClassification(spec, num_labels)


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

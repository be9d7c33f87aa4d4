"""Which model a spec describes.

`mlm_model(spec)` and `classifier(spec, num_labels)` are the only places that pick a family
(models/bert.py or models/modernbert.py, by model.arch), so the trainer, fill-mask, export and fine-tuning never name one.
"""

from __future__ import annotations

import flax.linen as nn

from mlm_jax.models import bert, modernbert
from mlm_jax.models.spec import ModelSpec


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

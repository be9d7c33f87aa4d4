"""model.arch -> its family (models/family.py's contract): the one place a family is picked.

The trainer, fill-mask, generation, export and fine-tuning build models through `mlm_model` and
`classifier`; the spec checks a family's own fields through `family`. A new family is one module
with a `FAMILY` record and one entry here (docs/extending.md).
"""

from __future__ import annotations

import flax.linen as nn

from mlm_jax.models import bert, modernbert
from mlm_jax.models.family import Family, Spec

FAMILIES: dict[str, Family] = {f.name: f for f in (bert.FAMILY, modernbert.FAMILY)}


def family(arch: str) -> Family:
    """The family of a model.arch that ModelSpec accepted (so one of FAMILIES)."""
    return FAMILIES[arch]


def mlm_model(spec: Spec) -> nn.Module:
    """Encoder plus MLM head: (tokens_BxL, positions_BxK, ...) -> float32 logits_BxKxV."""
    return family(spec.arch).mlm(spec)


def classifier(spec: Spec, num_labels: int, pooling: str = "") -> nn.Module:
    """Encoder plus a sequence-classification head: tokens_BxL -> float32 logits_BxC.
    pooling: one of the family's poolings ('' = its first); another is refused in one line."""
    chosen = family(spec.arch)
    pooling = pooling or chosen.poolings[0]
    if pooling not in chosen.poolings:
        raise ValueError(
            f"--pooling={pooling!r}: a {chosen.title} classifier pools by "
            f"{' or '.join(chosen.poolings)}"
        )
    return chosen.classifier(spec, num_labels, pooling)

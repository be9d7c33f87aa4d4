"""The contract of an encoder family: what one `model.arch` gives the rest of the code.

A family is one module (models/bert.py, models/modernbert.py) that ends with a `FAMILY`
record, plus its Hugging Face conversion in the hf package (hf/bert.py, hf/modernbert.py,
whose `CONVERSION` record hf/common.py defines); models/registry.py maps `model.arch` to the
record. Nothing outside a family's modules asks which family a spec describes: the trainer,
fill-mask, generation, export, fine-tuning and the FLOPs model go through the record.

A family's modules take the spec as `Spec` and import nothing from models/spec.py: the spec
checks a family's own fields through this record (spec -> registry -> families), so the
import would be a cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

Spec = Any  # a models.spec.ModelSpec (see the module docstring for why it is not imported)


def all_global(spec: Spec, index: int) -> bool:
    """Every layer attends to the whole row (BERT)."""
    del spec, index
    return True


@dataclasses.dataclass(frozen=True)
class Family:
    """One encoder family, by the roles the rest of the code needs."""

    name: str  # its model.arch
    title: str  # how messages name it ("BERT", "ModernBERT")
    # spec -> Flax module: (tokens_BxL, positions_BxK, *, document_ids_BxL=None,
    # token_types_BxL=None, deterministic=True) -> float32 logits_BxKxV at the K slots;
    # parameters {encoder/{embeddings/word_embeddings, ...}, mlm_head/...}.
    mlm: Callable[[Spec], Any]
    # (spec, num_labels, pooling) -> Flax module: (tokens_BxL, *, document_ids=None,
    # token_types=None, deterministic=True) -> float32 logits_BxC; its encoder under `encoder`.
    classifier: Callable[[Spec, int, str], Any]
    poolings: tuple[str, ...]  # the classifier's pooling choices; the first is the default
    # Checks of the spec fields only this family reads (ModelSpec's constructor calls it after
    # the shared ones): one ValueError line naming the key, as config/fields.py writes them.
    check_spec: Callable[[Spec], None]
    # Whether layer `index` attends to the whole row (else to model.local_window around each
    # token): what the FLOPs model, the window check and the HF config read.
    is_global_layer: Callable[[Spec, int], bool] = all_global
    # E x M matmuls per MLP, for the FLOPs model: 2 (in, out) or 3 (a gated MLP's two halves
    # in, then out).
    mlp_matmuls: int = 2

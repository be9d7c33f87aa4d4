"""ModelSpec: config.model resolved and checked once, the one description every model reads.

Frozen and hashable, so Flax modules take it as a static field and jit can close over it. Its
constructor owns the checks of config.model's fields (one line naming the key); the vocabulary
comes later from the tokenizer (`with_vocab`), and `split_dims` tells the mesh check which
dimensions each logical axis carries.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from mlm_jax.config.fields import check_bool, check_choice, check_float, check_int
from mlm_jax.models.family import Family
from mlm_jax.models.registry import FAMILIES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTIONS = ("xla", "cudnn")
GELUS = ("exact", "tanh")
REMATS = ("none", "full", "dots")
GLU_ACTIVATIONS = ("gelu", "silu")  # modernbert's gated MLP: GeGLU (ModernBERT) | SwiGLU
NORMS = ("layernorm", "rmsnorm")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The encoder's shape and numerics; vocab_size 0 until the tokenizer is known."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int = 0  # real vocabulary (what the MLM head predicts over); 0 = unresolved
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pre_ln: bool = False
    dtype: str = "float32"
    attention: str = "xla"
    gelu: str = "exact"
    remat: str = "none"
    scan_layers: bool = True
    fused_qkv: bool = True
    pad_vocab_multiple: int = 128
    attend_across_documents: bool = False
    pad_id: int = 0
    arch: str = "bert"  # the family (models/registry.py); its own checks: Family.check_spec
    # modernbert only (bert ignores them): see config/defaults.py
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    local_window: int = 128
    global_every: int = 3
    glu_activation: str = "gelu"
    norm: str = "layernorm"

    def __post_init__(self):
        def key(name):
            return f"model.{name}"

        for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
            check_int(key(name), getattr(self, name), minimum=1)
        check_int(key("vocab_size"), self.vocab_size, minimum=0)
        check_int(key("max_position_embeddings"), self.max_position_embeddings, minimum=1)
        check_int(key("type_vocab_size"), self.type_vocab_size, minimum=1)
        check_int(key("pad_vocab_multiple"), self.pad_vocab_multiple, minimum=1)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"config.model.hidden_size={self.hidden_size!r}: expected a multiple of "
                f"model.num_heads={self.num_heads}"
            )
        check_float(key("dropout_rate"), self.dropout_rate, low=0, high=1, high_open=True)
        check_float(
            key("attention_dropout_rate"),
            self.attention_dropout_rate,
            low=0,
            high=1,
            high_open=True,
        )
        check_float(key("layer_norm_eps"), self.layer_norm_eps, low=0, low_open=True)
        check_float(key("initializer_range"), self.initializer_range, low=0, low_open=True)
        check_choice(key("dtype"), self.dtype, tuple(DTYPES))
        check_choice(key("attention"), self.attention, ATTENTIONS)
        check_choice(key("gelu"), self.gelu, GELUS)
        check_choice(key("remat"), self.remat, REMATS)
        for name in ("pre_ln", "scan_layers", "fused_qkv", "attend_across_documents"):
            check_bool(key(name), getattr(self, name))
        check_choice(key("arch"), self.arch, tuple(FAMILIES))
        check_float(key("global_rope_theta"), self.global_rope_theta, low=1, low_open=True)
        check_float(key("local_rope_theta"), self.local_rope_theta, low=1, low_open=True)
        check_int(key("global_every"), self.global_every, minimum=1)
        check_int(key("local_window"), self.local_window, minimum=2)
        if self.local_window % 2:
            raise ValueError(
                f"config.model.local_window={self.local_window!r}: expected an even number "
                "(a token sees local_window / 2 tokens on each side)"
            )
        check_choice(key("glu_activation"), self.glu_activation, GLU_ACTIVATIONS)
        check_choice(key("norm"), self.norm, NORMS)
        self.family.check_spec(self)

    @classmethod
    def from_config(cls, model_config: Any) -> ModelSpec:
        """From config.model (a ConfigDict or mapping); keys that are not model fields are
        ignored (init_from is the run's business)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"pad_id"}
        return cls(**{k: model_config[k] for k in names if k in model_config})

    def with_vocab(self, tokenizer) -> ModelSpec:
        """The spec with the tokenizer's vocabulary: config.model.vocab_size 0 takes its size,
        a larger one is kept (spare rows), a smaller one is refused."""
        size = int(tokenizer.vocab_size)
        if self.vocab_size and self.vocab_size < size:
            raise ValueError(
                f"config.model.vocab_size={self.vocab_size} is smaller than the tokenizer's "
                f"vocabulary ({size})"
            )
        return dataclasses.replace(
            self, vocab_size=self.vocab_size or size, pad_id=int(tokenizer.pad_id)
        )

    def split_dims(self) -> dict[str, list[tuple[str, int]]]:
        """Logical axis -> the (config key, size) of every dimension that carries it, so the
        mesh check knows what must divide by the mesh axes an axis is split over."""
        hidden = self.hidden_size
        return {
            "embed": [("model.hidden_size", hidden)],
            "heads": [("model.num_heads", self.num_heads)],
            # (the MLM head's transform and the pooler put hidden_size on "mlp" too)
            "mlp": [
                ("model.intermediate_size", self.intermediate_size),
                ("model.hidden_size", hidden),
            ],
            "kv": [("the head size model.hidden_size / model.num_heads", self.head_dim)],
            # the vocabulary is padded to a multiple of this, whatever its size
            "vocab": [("model.pad_vocab_multiple", self.pad_vocab_multiple)],
        }

    @property
    def family(self) -> Family:
        """The family model.arch names (models/registry.py)."""
        return FAMILIES[self.arch]

    @property
    def has_local_layers(self) -> bool:
        """Some layer attends only to model.local_window around each token."""
        return not all(self.is_global_layer(i) for i in range(self.num_layers))

    def is_global_layer(self, index: int) -> bool:
        """Layer `index` attends to the whole row (the family says which do)."""
        return self.family.is_global_layer(self, index)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

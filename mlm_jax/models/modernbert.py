"""ModernBERT: rotary positions, pre-norm bias-free blocks, GeGLU, local and global attention.

The architecture as transformers' ModernBertForMaskedLM computes it, so weights move to and
from Hugging Face unchanged (hf/modernbert.py): token embeddings and a norm (no position
table); per block a norm (none in layer 0), fused Wqkv, RoPE (rotate-half layout; one theta
for global layers, another for local ones), attention, Wo, residual, norm, Wi [E, 2, M] whose
first half goes through the activation and gates the second, Wo, residual; a final norm; an
MLM head of dense, activation, norm and the tied decoder with a bias. Layers 0, n, 2n, ...
attend globally (n = model.global_every), the others only to tokens at most
model.local_window / 2 away, within the packing document mask.

Parameter tree (names as models/bert.py's where the role is the same; nothing has a bias but the
decoder's output_bias; layer 0's attention_norm exists so the layers stack, and is unused):

    encoder/embeddings/{word_embeddings [Vp,E], norm/scale}
    encoder/layers/{attention_norm, qkv/kernel [E,3,N,D], attention_out/kernel [N,D,E],
                    mlp_norm, mlp_in/kernel [E,2,M], mlp_out/kernel [M,E]}
    encoder/final_norm
    mlm_head/{transform/kernel [E,E], norm, output_bias [Vp]}
    classifier_head/{transform, norm}, classifier/{kernel,bias}   (sequence classification)

Its sliding-window layers compute in blocks (models/attention.py). Shape letters as in
models/bert.py.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax.config.fields import check_int
from mlm_jax.models.attention import (
    apply_rope,
    attention_groups,
    blocked_local_attention,
    rope_tables,
    uses_blocks,
)
from mlm_jax.models.attention import softmax_attention as _softmax_attention  # its name here before
from mlm_jax.models.family import Family, Spec
from mlm_jax.models.head import PredictionTransform, SparseMLMHead
from mlm_jax.models.layers import (
    Dropout,
    activation,
    constrain,
    dense,
    layer_norm,
    lookup_tokens,
    scanned_stack,
    with_remat,
    word_embeddings,
)

POOLINGS = ("cls", "mean")  # ModernBERT's classifier_pooling choices


def check_spec(c: Spec) -> None:
    """ModernBERT's own checks: its global layers' pattern fits the stack, and rotary
    positions rotate pairs of a head's dims."""
    check_int("model.global_every", c.global_every, minimum=1, maximum=c.num_layers)
    if c.head_dim % 2:
        raise ValueError(
            f"config.model.hidden_size={c.hidden_size} / model.num_heads={c.num_heads}"
            f" = {c.head_dim}: rotary positions need an even head size"
        )


def is_global_layer(c: Spec, index: int) -> bool:
    """Layers 0, n, 2n, ... attend globally (n = model.global_every), the others locally."""
    return index % c.global_every == 0


def norm(c: Spec, name=None):
    """ModernBERT's bias-free LayerNorm, or RMSNorm (model.norm=rmsnorm)."""
    return layer_norm(c, name, use_bias=False, rms=c.norm == "rmsnorm")


def out_stddev(c: Spec) -> float:
    """ModernBERT's init of the projections into the residual stream: range / sqrt(2 layers)."""
    return c.initializer_range / math.sqrt(2.0 * c.num_layers)


class Embeddings(nn.Module):
    """Token embeddings, the norm and dropout (no position or token-type tables)."""

    config: Spec

    def setup(self):
        c = self.config
        self.word_embeddings = word_embeddings(self, c)
        self.norm = norm(c)
        self.dropout = Dropout(c.dropout_rate)

    def __call__(self, tokens_BxL, *, deterministic: bool):
        c = self.config
        x_BxLxE = lookup_tokens(self.word_embeddings, tokens_BxL, c).astype(c.compute_dtype)
        x_BxLxE = constrain(x_BxLxE, ("batch", "length", "embed"))
        return self.dropout(self.norm(x_BxLxE), deterministic=deterministic)


class Block(nn.Module):
    """One pre-norm block: (norm,) attention with RoPE, residual; norm, gated MLP, residual.

    `index` is the layer's number when the stack is unrolled; a scanned stack passes it as a
    traced argument instead, and the layer picks its attention with lax.cond (only the chosen
    branch runs)."""

    config: Spec
    deterministic: bool = True
    index: int | None = None

    @nn.compact
    def __call__(self, x_BxLxE, shared, layer_index=None):
        c = self.config
        index = self.index if self.index is not None else layer_index
        groups_BxL, mask_Bx1xLxL, rope_global, rope_local = shared

        h_BxLxE = norm(c, "attention_norm")(x_BxLxE)
        if self.index is not None:
            h_BxLxE = x_BxLxE if index == 0 else h_BxLxE
        else:
            h_BxLxE = jnp.where(index == 0, x_BxLxE, h_BxLxE)
        q, k, v = self._qkv(h_BxLxE)

        dropout_key = None
        if not self.deterministic and c.attention_dropout_rate > 0:
            dropout_key = self.make_rng("dropout")

        def attend(rope, local):
            qr, kr = apply_rope(q, *rope), apply_rope(k, *rope)
            return self._attention(qr, kr, v, groups_BxL, mask_Bx1xLxL, local, dropout_key)

        if not c.has_local_layers:
            attn_BxLxNxD = attend(rope_global, False)
        elif self.index is not None:
            is_global = is_global_layer(c, index)
            attn_BxLxNxD = attend(rope_global if is_global else rope_local, not is_global)
        else:
            attn_BxLxNxD = jax.lax.cond(
                is_global_layer(c, index),
                lambda: attend(rope_global, False),
                lambda: attend(rope_local, True),
            )
        attn_BxLxNxD = constrain(attn_BxLxNxD, ("batch", "length", "heads", "kv"))
        out_BxLxE = dense(
            c,
            c.hidden_size,
            ("heads", "kv", "embed"),
            axis=(-2, -1),
            name="attention_out",
            use_bias=False,
            stddev=out_stddev(c),
        )(attn_BxLxNxD)
        out_BxLxE = Dropout(c.attention_dropout_rate)(out_BxLxE, deterministic=self.deterministic)
        x_BxLxE = constrain(x_BxLxE + out_BxLxE, ("batch", "length", "embed"))
        return self._gated_mlp(x_BxLxE), None

    def _qkv(self, h_BxLxE):
        """Wqkv (one matmul, or three with fused_qkv=False): q, k, v [B,L,N,D]."""
        c = self.config
        qkv = dense(
            c,
            (3, c.num_heads, c.head_dim),
            ("embed", None, "heads", "kv"),
            name="qkv",
            separate=not c.fused_qkv,
            use_bias=False,
        )(h_BxLxE)
        if c.fused_qkv:
            qkv_BxLx3xNxD = constrain(qkv, ("batch", "length", None, "heads", "kv"))
            qkv = tuple(qkv_BxLx3xNxD[:, :, i] for i in range(3))
        return tuple(constrain(t, ("batch", "length", "heads", "kv")) for t in qkv)

    def _gated_mlp(self, x_BxLxE):
        """norm, Wi [E, 2, M], act(first half) x second half, dropout, Wo, residual."""
        c = self.config
        h_BxLxE = norm(c, "mlp_norm")(x_BxLxE)
        h_BxLx2xM = dense(
            c, (2, c.intermediate_size), ("embed", None, "mlp"), name="mlp_in", use_bias=False
        )(h_BxLxE)
        h_BxLx2xM = constrain(h_BxLx2xM, ("batch", "length", None, "mlp"))
        h_BxLxM = glu_activation(c, h_BxLx2xM[:, :, 0]) * h_BxLx2xM[:, :, 1]
        h_BxLxM = constrain(h_BxLxM, ("batch", "length", "mlp"))
        h_BxLxM = Dropout(c.dropout_rate)(h_BxLxM, deterministic=self.deterministic)
        h_BxLxE = dense(
            c,
            c.hidden_size,
            ("mlp", "embed"),
            name="mlp_out",
            use_bias=False,
            stddev=out_stddev(c),
        )(h_BxLxM)
        return constrain(x_BxLxE + h_BxLxE, ("batch", "length", "embed"))

    def _attention(self, q, k, v, groups_BxL, mask_Bx1xLxL, local: bool, dropout_key):
        c = self.config
        half, length = c.local_window // 2, q.shape[1]
        kw = dict(
            scale=1.0 / math.sqrt(c.head_dim),
            dtype=c.compute_dtype,
            dropout_key=dropout_key,
            dropout_rate=c.attention_dropout_rate,
        )
        if local and uses_blocks(length, c.local_window):
            return blocked_local_attention(q, k, v, groups_BxL, half, **kw)
        if local:
            positions = jnp.arange(length)
            near_LxL = jnp.abs(positions[:, None] - positions[None, :]) <= half
            mask_Bx1xLxL = mask_Bx1xLxL & near_LxL
        if dropout_key is None:  # the fused path: XLA/cuDNN pick the kernel
            return jax.nn.dot_product_attention(
                q, k, v, mask=mask_Bx1xLxL, implementation=c.attention
            )
        return _softmax_attention(
            q, k, v, mask_Bx1xLxL, spec=("bqnd,bknd->bnqk", "bnqk,bknd->bqnd"), **kw
        )


def glu_activation(c: Spec, x):
    """GeGLU's GELU (model.gelu's form) or SwiGLU's SiLU, on the MLP's first half."""
    if c.glu_activation == "silu":
        return jax.nn.silu(x.astype(jnp.float32)).astype(x.dtype)
    return activation(c, x)


class ModernBertEncoder(nn.Module):
    """Embeddings, the block stack and the final norm: last hidden states [B,L,E]."""

    config: Spec

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.final_norm = norm(self.config)

    def _blocks(self, deterministic: bool):
        c = self.config
        block_cls = with_remat(Block, c)
        if c.scan_layers:  # the layer's number reaches each layer as a traced argument
            return scanned_stack(block_cls, c, deterministic, (nn.broadcast, 0))
        return [block_cls(c, deterministic, i, name=f"layer_{i}") for i in range(c.num_layers)]

    @nn.compact
    def __call__(
        self, tokens_BxL, *, document_ids_BxL=None, token_types_BxL=None, deterministic=True
    ):
        """token_types_BxL is accepted and ignored (ModernBERT has no segment embeddings)."""
        del token_types_BxL
        c = self.config
        length = tokens_BxL.shape[1]
        groups_BxL = attention_groups(tokens_BxL, document_ids_BxL, c)
        mask_Bx1xLxL = (groups_BxL[:, :, None] == groups_BxL[:, None, :])[:, None]
        tables = functools.partial(rope_tables, length, c.head_dim)
        shared = (groups_BxL, mask_Bx1xLxL, tables(c.global_rope_theta), tables(c.local_rope_theta))
        x_BxLxE = self.embeddings(tokens_BxL, deterministic=deterministic)
        blocks = self._blocks(deterministic)
        if c.scan_layers:
            x_BxLxE, _ = blocks(x_BxLxE, shared, jnp.arange(c.num_layers))
        else:
            for block in blocks:
                x_BxLxE, _ = block(x_BxLxE, shared)
        return self.final_norm(x_BxLxE)


def head_options(c: Spec) -> dict:
    """ModernBertPredictionHead's form of head.prediction_transform: no biases, the model's
    norm, the smaller init of the projections into the residual stream."""
    return dict(use_bias=False, rms=c.norm == "rmsnorm", stddev=out_stddev(c))


class ModernBertMLM(nn.Module):
    """Encoder plus the sparse MLM head (head.SparseMLMHead in ModernBERT's form)."""

    config: Spec

    @nn.compact
    def __call__(
        self,
        tokens_BxL,
        positions_BxK,
        *,
        document_ids_BxL=None,
        token_types_BxL=None,
        deterministic=True,
    ):
        c = self.config
        encoder = ModernBertEncoder(c, name="encoder")
        x_BxLxE = encoder(
            tokens_BxL, document_ids_BxL=document_ids_BxL, deterministic=deterministic
        )
        head = SparseMLMHead(c, **head_options(c), name="mlm_head")
        return head(x_BxLxE, positions_BxK, encoder.embeddings.word_embeddings)


class ModernBertForSequenceClassification(nn.Module):
    """Encoder, [CLS] or mean pooling, the prediction head, dropout, a linear classifier
    (ModernBertForSequenceClassification's computation)."""

    config: Spec
    num_labels: int
    pooling: str = "cls"

    @nn.compact
    def __call__(self, tokens_BxL, *, document_ids=None, token_types=None, deterministic=True):
        c = self.config
        x_BxLxE = ModernBertEncoder(c, name="encoder")(
            tokens_BxL, document_ids_BxL=document_ids, deterministic=deterministic
        )
        if self.pooling == "mean":
            real_BxL = attention_groups(tokens_BxL, document_ids, c) != 0
            weights_BxLx1 = real_BxL[:, :, None].astype(jnp.float32)
            summed_BxE = jnp.sum(x_BxLxE.astype(jnp.float32) * weights_BxLx1, axis=1)
            pooled_BxE = summed_BxE / jnp.maximum(jnp.sum(weights_BxLx1, axis=1), 1.0)
        else:
            pooled_BxE = x_BxLxE[:, 0]
        head = PredictionTransform(c, **head_options(c), name="classifier_head")
        pooled_BxE = head(pooled_BxE.astype(c.compute_dtype))
        pooled_BxE = Dropout(c.dropout_rate)(pooled_BxE, deterministic=deterministic)
        logits_BxC = dense(
            c, self.num_labels, ("embed", None), name="classifier", stddev=c.hidden_size**-0.5
        )(pooled_BxE)
        return logits_BxC.astype(jnp.float32)


def _classifier(spec: Spec, num_labels: int, pooling: str) -> nn.Module:
    return ModernBertForSequenceClassification(spec, num_labels, pooling)


FAMILY = Family(
    name="modernbert",
    title="ModernBERT",
    mlm=ModernBertMLM,
    classifier=_classifier,
    poolings=POOLINGS,
    check_spec=check_spec,
    is_global_layer=is_global_layer,
    mlp_matmuls=3,  # Wi is [E, 2, M]: the gate's and the value's halves, then Wo
)

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

A sliding-window layer computes its scores in blocks of window/2 queries against the 3 key
blocks around them, so its cost grows with L x 1.5 window, not L^2 (models/flops.py counts the
window) where that is at most half the row (`uses_blocks`).
Shape letters as in models/bert.py; W window/2 (a block), C blocks.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax.config.fields import check_int
from mlm_jax.models.family import Family, Spec
from mlm_jax.models.layers import (
    Dropout,
    PredictionTransform,
    SparseMLMHead,
    activation,
    constrain,
    dense,
    dropout_keep_mask,
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


def attention_groups(tokens_BxL, document_ids_BxL, c: Spec):
    """int32 [B,L]: a query sees a key only where the two are equal (0 = padding). Documents
    of a packed row are groups unless model.attend_across_documents; otherwise real tokens are
    one group and padding another (padding queries see padding: harmless, never read)."""
    if document_ids_BxL is None:
        return (tokens_BxL != c.pad_id).astype(jnp.int32)
    if c.attend_across_documents:
        return (document_ids_BxL != 0).astype(jnp.int32)
    return document_ids_BxL.astype(jnp.int32)


def rope_tables(length: int, head_dim: int, theta: float):
    """(cos, sin) float32 [L, D] of rotary positions 0..L-1, frequencies repeated per half."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_LxD2 = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb_LxD = jnp.concatenate([freqs_LxD2, freqs_LxD2], axis=-1)
    return jnp.cos(emb_LxD), jnp.sin(emb_LxD)


def apply_rope(x_BxLxNxD, cos_LxD, sin_LxD):
    """x cos + rotate_half(x) sin in float32 (rotate_half(x) = [-x2, x1]), in x's dtype."""
    x32 = x_BxLxNxD.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_LxD[None, :, None, :] + rotated * sin_LxD[None, :, None, :]
    return out.astype(x_BxLxNxD.dtype)


def _softmax_attention(q, k, v, mask, scale, dtype, dropout_key, dropout_rate, spec):
    """Scores, masked softmax in float32, optional dropout on the probabilities, values.
    `spec` is the einsum pair (scores, output) for the layout of q/k/v."""
    scores_spec, out_spec = spec
    scores = jnp.einsum(scores_spec, q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout_key is not None:
        keep, keep_prob = dropout_keep_mask(dropout_key, probs.shape, dropout_rate)
        probs = jnp.where(keep, probs * (1.0 / keep_prob), 0).astype(dtype)
    return jnp.einsum(out_spec, probs, v)


def _window_blocks(x_BxL, block: int, fill):
    """[B, L, ...] -> [B, C, 3W, ...]: for each block of W positions, the blocks before, at and
    after it (`fill` past either end)."""
    b, length = x_BxL.shape[:2]
    widths = [(0, 0), (block, block)] + [(0, 0)] * (x_BxL.ndim - 2)
    padded = jnp.pad(x_BxL, widths, constant_values=fill)
    blocks = padded.reshape(b, length // block + 2, block, *x_BxL.shape[2:])
    return jnp.concatenate([blocks[:, :-2], blocks[:, 1:-1], blocks[:, 2:]], axis=2)


def blocked_local_attention(q, k, v, groups_BxL, half: int, **kw):
    """Sliding-window attention (|query - key| <= half, same group) over blocks of `half`
    queries and the 3 key blocks around each: L x 3 half scores instead of L x L."""
    b, length, n, d = q.shape
    c = length // half
    q_BxCxWxNxD = q.reshape(b, c, half, n, d)
    k_BxCx3WxNxD = _window_blocks(k, half, 0)
    v_BxCx3WxNxD = _window_blocks(v, half, 0)
    gq_BxCxW = groups_BxL.reshape(b, c, half)
    gk_BxCx3W = _window_blocks(groups_BxL, half, -1)  # -1: past the ends, never a group
    offset_Wx3W = jnp.arange(3 * half)[None, :] - (jnp.arange(half)[:, None] + half)
    near_Wx3W = jnp.abs(offset_Wx3W) <= half
    mask = near_Wx3W[None, None] & (gq_BxCxW[..., :, None] == gk_BxCx3W[..., None, :])
    out_BxCxWxNxD = _softmax_attention(
        q_BxCxWxNxD,
        k_BxCx3WxNxD,
        v_BxCx3WxNxD,
        mask[:, :, None],  # [B,C,1,W,3W] against scores [B,C,N,W,3W]
        spec=("bcqnd,bcknd->bcnqk", "bcnqk,bcknd->bcqnd"),
        **kw,
    )
    return out_BxCxWxNxD.reshape(b, length, n, d)


def uses_blocks(length: int, window: int) -> bool:
    """Whether a local layer at this length computes in blocks (else a masked L x L): the
    blocks must tile the row, and their 1.5 windows of keys be at most half the row, since
    blocking costs copies (at 128 tokens and a window of 64 the blocked step was 46 % slower
    than the all-global one on the CPU; at 1024 and 128, 20 % faster: docs/performance.md)."""
    half = window // 2
    return length % half == 0 and 2 * 3 * half <= length


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
    """ModernBertPredictionHead's form of layers.prediction_transform: no biases, the model's
    norm, the smaller init of the projections into the residual stream."""
    return dict(use_bias=False, rms=c.norm == "rmsnorm", stddev=out_stddev(c))


class ModernBertMLM(nn.Module):
    """Encoder plus the sparse MLM head (layers.SparseMLMHead in ModernBERT's form)."""

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

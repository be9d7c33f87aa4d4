"""BERT: embeddings, post- or pre-LN blocks, the encoder stack, MLM and classification heads.

Exactly BERT by default (post-LN, erf GELU, tied decoder), so weights move to and from Hugging
Face unchanged (hf/bert.py). Every parameter and the main activations carry logical axis
names (batch, length, embed, heads, kv, mlp, vocab, layers); the mesh mapping lives in the config.

Parameter tree (scan_layers=True stacks the blocks under `layers` with a leading layers axis;
scan_layers=False names them `layer_0`, `layer_1`, ...):

    encoder/embeddings/{word_embeddings [Vp,E], position_embeddings [P,E],
                        token_type_embeddings [T,E], norm/{scale,bias}}
    encoder/layers/{qkv/{kernel [E,3,N,D], bias [3,N,D]}, attention_out/{kernel [N,D,E], bias},
                    attention_norm, mlp_in/{kernel [E,M], bias}, mlp_out/{kernel [M,E], bias},
                    mlp_norm}
    encoder/final_norm                      (pre_ln only)
    mlm_head/{transform/{kernel [E,E], bias}, norm, output_bias [Vp]}
    pooler/{kernel,bias}, classifier/{kernel,bias}   (BertForSequenceClassification)

Shape letters: B batch, L length, K predictions per row, E hidden, N heads, D head dim,
M intermediate, V real vocab, Vp padded vocab, C classes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax.models.family import Family, Spec
from mlm_jax.models.head import SparseMLMHead
from mlm_jax.models.layers import (
    Dropout,
    activation,
    attention_mask,
    constrain,
    dense,
    init_weights,
    layer_norm,
    lookup_tokens,
    scanned_stack,
    with_remat,
    word_embeddings,
)


class Embeddings(nn.Module):
    """Word + learned absolute position + token type embeddings, then LayerNorm and dropout."""

    config: Spec

    def setup(self):
        c = self.config
        self.word_embeddings = word_embeddings(self, c)
        self.position_embeddings = self.param(
            "position_embeddings",
            nn.with_logical_partitioning(init_weights(c), (None, "embed")),
            (c.max_position_embeddings, c.hidden_size),
            jnp.float32,
        )
        self.token_type_embeddings = self.param(
            "token_type_embeddings",
            nn.with_logical_partitioning(init_weights(c), (None, "embed")),
            (c.type_vocab_size, c.hidden_size),
            jnp.float32,
        )
        self.norm = layer_norm(c)
        self.dropout = Dropout(c.dropout_rate)

    def __call__(self, tokens_BxL, token_types_BxL=None, *, deterministic: bool):
        c = self.config
        x_BxLxE = lookup_tokens(self.word_embeddings, tokens_BxL, c)
        x_BxLxE = x_BxLxE + self.position_embeddings[None, : tokens_BxL.shape[1]]
        if token_types_BxL is None:
            x_BxLxE = x_BxLxE + self.token_type_embeddings[0]
        else:
            x_BxLxE = x_BxLxE + jnp.take(self.token_type_embeddings, token_types_BxL, axis=0)
        x_BxLxE = constrain(x_BxLxE.astype(c.compute_dtype), ("batch", "length", "embed"))
        return self.dropout(self.norm(x_BxLxE), deterministic=deterministic)


class Block(nn.Module):
    """One Transformer block: bidirectional self-attention and a GELU MLP, post- or pre-LN."""

    config: Spec
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxLxE, mask_Bx1xLxL):
        c = self.config
        n, d = c.num_heads, c.head_dim
        dropout = Dropout(c.dropout_rate)

        h_BxLxE = layer_norm(c, "attention_norm")(x_BxLxE) if c.pre_ln else x_BxLxE
        qkv = dense(
            c, (3, n, d), ("embed", None, "heads", "kv"), name="qkv", separate=not c.fused_qkv
        )(h_BxLxE)
        if c.fused_qkv:  # one [E, 3E] matmul, then q, k, v sliced out of its output
            qkv_BxLx3xNxD = constrain(qkv, ("batch", "length", None, "heads", "kv"))
            qkv = tuple(qkv_BxLx3xNxD[:, :, i] for i in range(3))
        q, k, v = (constrain(t_BxLxNxD, ("batch", "length", "heads", "kv")) for t_BxLxNxD in qkv)
        attn_BxLxNxD = self._attention(q, k, v, mask_Bx1xLxL)
        attn_BxLxNxD = constrain(attn_BxLxNxD, ("batch", "length", "heads", "kv"))
        out_BxLxE = dense(
            c, c.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name="attention_out"
        )(attn_BxLxNxD)
        x_BxLxE = x_BxLxE + dropout(out_BxLxE, deterministic=self.deterministic)
        if not c.pre_ln:
            x_BxLxE = layer_norm(c, "attention_norm")(x_BxLxE)
        x_BxLxE = constrain(x_BxLxE, ("batch", "length", "embed"))

        h_BxLxE = layer_norm(c, "mlp_norm")(x_BxLxE) if c.pre_ln else x_BxLxE
        h_BxLxM = dense(c, c.intermediate_size, ("embed", "mlp"), name="mlp_in")(h_BxLxE)
        h_BxLxM = constrain(activation(c, h_BxLxM), ("batch", "length", "mlp"))
        h_BxLxE = dense(c, c.hidden_size, ("mlp", "embed"), name="mlp_out")(h_BxLxM)
        x_BxLxE = x_BxLxE + dropout(h_BxLxE, deterministic=self.deterministic)
        if not c.pre_ln:
            x_BxLxE = layer_norm(c, "mlp_norm")(x_BxLxE)
        return constrain(x_BxLxE, ("batch", "length", "embed")), None

    def _attention(self, q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, mask_Bx1xLxL):
        c = self.config
        if self.deterministic or c.attention_dropout_rate == 0.0:
            # Fused path: XLA/cuDNN pick the kernel; [B,L,N,D] in and out, no transposes here.
            return jax.nn.dot_product_attention(
                q_BxLxNxD, k_BxLxNxD, v_BxLxNxD, mask=mask_Bx1xLxL, implementation=c.attention
            )
        # Training with attention dropout (BERT's default): dot_product_attention has no
        # dropout, so spell it out. Set attention_dropout_rate=0 to train on the fused path.
        scores_BxNxLxL = jnp.einsum(
            "bqnd,bknd->bnqk", q_BxLxNxD, k_BxLxNxD, preferred_element_type=jnp.float32
        ) / jnp.sqrt(jnp.float32(c.head_dim))
        scores_BxNxLxL = jnp.where(mask_Bx1xLxL, scores_BxNxLxL, jnp.finfo(jnp.float32).min)
        probs_BxNxLxL = jax.nn.softmax(scores_BxNxLxL, axis=-1).astype(c.compute_dtype)
        probs_BxNxLxL = Dropout(c.attention_dropout_rate)(probs_BxNxLxL, deterministic=False)
        return jnp.einsum("bnqk,bknd->bqnd", probs_BxNxLxL, v_BxLxNxD)


class BertEncoder(nn.Module):
    """Embeddings and the block stack; returns last hidden states [B,L,E] in the compute dtype."""

    config: Spec

    def setup(self):
        c = self.config
        self.embeddings = Embeddings(c)
        if c.pre_ln:
            self.final_norm = layer_norm(c)

    def _blocks(self, deterministic: bool):
        c = self.config
        block_cls = with_remat(Block, c)
        if c.scan_layers:
            return [scanned_stack(block_cls, c, deterministic, nn.broadcast)]
        return [block_cls(c, deterministic, name=f"layer_{i}") for i in range(c.num_layers)]

    @nn.compact
    def __call__(
        self, tokens_BxL, *, document_ids_BxL=None, token_types_BxL=None, deterministic=True
    ):
        c = self.config
        mask_Bx1xLxL = attention_mask(
            tokens_BxL,
            document_ids_BxL,
            pad_id=c.pad_id,
            attend_across_documents=c.attend_across_documents,
        )
        x_BxLxE = self.embeddings(tokens_BxL, token_types_BxL, deterministic=deterministic)
        for block in self._blocks(deterministic):
            x_BxLxE, _ = block(x_BxLxE, mask_Bx1xLxL)
        if c.pre_ln:
            x_BxLxE = self.final_norm(x_BxLxE)
        return x_BxLxE


class BertMLM(nn.Module):
    """Encoder plus the sparse MLM head (head.SparseMLMHead: biases, LayerNorm)."""

    config: Spec

    def setup(self):
        self.encoder = BertEncoder(self.config)
        self.mlm_head = SparseMLMHead(self.config)

    def __call__(
        self,
        tokens_BxL,
        positions_BxK,
        *,
        document_ids_BxL=None,
        token_types_BxL=None,
        deterministic=True,
    ):
        """Returns float32 logits_BxKxV over the real vocabulary (padding rows never predicted)."""
        x_BxLxE = self.encoder(
            tokens_BxL,
            document_ids_BxL=document_ids_BxL,
            token_types_BxL=token_types_BxL,
            deterministic=deterministic,
        )
        return self.mlm_head(x_BxLxE, positions_BxK, self.encoder.embeddings.word_embeddings)


class BertForSequenceClassification(nn.Module):
    """Encoder + BERT pooler (dense + tanh on [CLS]) + dropout + linear classifier."""

    config: Spec
    num_labels: int

    @nn.compact
    def __call__(self, tokens_BxL, *, document_ids=None, token_types=None, deterministic=True):
        c = self.config
        x_BxLxE = BertEncoder(c, name="encoder")(
            tokens_BxL,
            document_ids_BxL=document_ids,
            token_types_BxL=token_types,
            deterministic=deterministic,
        )
        pooled_BxE = jnp.tanh(
            dense(c, c.hidden_size, ("embed", "mlp"), name="pooler")(x_BxLxE[:, 0])
        )
        pooled_BxE = Dropout(c.dropout_rate)(pooled_BxE, deterministic=deterministic)
        logits_BxC = dense(c, self.num_labels, ("embed", None), name="classifier")(pooled_BxE)
        return logits_BxC.astype(jnp.float32)


def _classifier(spec: Spec, num_labels: int, pooling: str) -> nn.Module:
    del pooling  # "cls", the only one: BERT pools [CLS] through its pooler
    return BertForSequenceClassification(spec, num_labels)


def _check_spec(spec: Spec) -> None:
    """BERT reads only the fields every family shares (ModelSpec checks them)."""
    del spec


FAMILY = Family(
    name="bert",
    title="BERT",
    mlm=BertMLM,
    classifier=_classifier,
    poolings=("cls",),
    check_spec=_check_spec,
)

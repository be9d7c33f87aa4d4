"""BERT encoder, sparse MLM head and classification head (flax.linen).

Exactly BERT by default (post-LN, erf GELU, tied decoder), so weights move to and from Hugging
Face unchanged (see hf.py). Every parameter and the main activations carry logical axis names
(batch, length, embed, heads, kv, mlp, vocab, layers); the mesh mapping lives in the config.

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

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.random import threefry2x32_p

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_REMAT_POLICIES = {
    "full": None,  # save nothing inside a block: recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projection outputs
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """config.model with the vocabulary resolved; hashable so it can be a static module field."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # real vocabulary (what the MLM head predicts over)
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
    init_from: str = ""
    pad_id: int = 0

    def __post_init__(self):
        checks = [
            (self.hidden_size % self.num_heads == 0, "hidden_size", "a multiple of num_heads"),
            (self.vocab_size > 0, "vocab_size", "> 0 (resolve 0 from the tokenizer)"),
            (self.dtype in _DTYPES, "dtype", f"one of {sorted(_DTYPES)}"),
            (self.attention in ("xla", "cudnn"), "attention", "xla or cudnn"),
            (self.gelu in ("exact", "tanh"), "gelu", "exact or tanh"),
            (self.remat in ("none", "full", "dots"), "remat", "none, full or dots"),
            (self.pad_vocab_multiple >= 1, "pad_vocab_multiple", ">= 1"),
            (self.num_layers >= 1, "num_layers", ">= 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"config.model.{key}={getattr(self, key)!r}: expected {expected}")

    @classmethod
    def from_config(cls, model_config: Any, *, vocab_size: int = 0, pad_id: int = 0):
        """Builds from the config.model ConfigDict; vocab_size=0 there takes the tokenizer's."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"pad_id"}
        values = {k: model_config[k] for k in fields if k in model_config}
        configured = int(values.get("vocab_size", 0))
        if configured and vocab_size and configured < vocab_size:
            raise ValueError(
                f"config.model.vocab_size={configured}: smaller than the tokenizer's {vocab_size}"
            )
        values["vocab_size"] = configured or vocab_size
        return cls(**values, pad_id=pad_id)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _init(config: ModelConfig):
    return nn.initializers.truncated_normal(stddev=config.initializer_range)


def _constrain(x, names):
    return nn.with_logical_constraint(x, names)


def _gelu(config: ModelConfig, x):
    """BERT's exact GELU, or its tanh approximation (HF's gelu_new) when configured."""
    return gelu(x, config.gelu == "tanh")


_SQRT_HALF, _SQRT_2_OVER_PI, _TANH_CUBIC = 0.5**0.5, (2.0 / np.pi) ** 0.5, 0.044715


def _gelu_cdf_and_slope(x32, approximate: bool):
    """Phi(x) (or its tanh approximation) and d/dx [x Phi(x)], in float32."""
    if approximate:
        tanh_u = jnp.tanh(_SQRT_2_OVER_PI * (x32 + _TANH_CUBIC * x32**3))
        cdf = 0.5 * (1.0 + tanh_u)
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * x32**2)
        return cdf, cdf + 0.5 * x32 * (1.0 - tanh_u**2) * du_dx
    cdf = 0.5 * (1.0 + jax.lax.erf(x32 * _SQRT_HALF))
    pdf = jnp.exp(-0.5 * x32**2) * (0.5 * _SQRT_2_OVER_PI)
    return cdf, cdf + x32 * pdf


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def gelu(x, approximate: bool = False):
    """x Phi(x), computed in float32 whatever x's dtype (as PyTorch, and so HF BERT, does).

    Not jax.nn.gelu: its exact form goes through erfc, which XLA expands into a two-branch
    polynomial with an exp and two divisions (68 ops per element in the H100 fusion, against 8
    counting one erf here), over the step's largest activation. The custom JVP keeps one tensor of
    x's dtype (the slope) for the backward pass where autodiff of the float32 formula would keep
    several float32 ones.
    """
    x32 = x.astype(jnp.float32)
    cdf, _ = _gelu_cdf_and_slope(x32, approximate)
    return (x32 * cdf).astype(x.dtype)


@gelu.defjvp
def _gelu_jvp(approximate, primals, tangents):
    (x,), (t,) = primals, tangents
    x32 = x.astype(jnp.float32)
    cdf, slope = _gelu_cdf_and_slope(x32, approximate)
    return (x32 * cdf).astype(x.dtype), t * slope.astype(t.dtype)


class Dense(nn.Module):
    """A dense layer over the trailing `axis` dims, in the compute dtype with float32 params.

    The kernel is created at its full shape [*in, *out] with its logical names (flax's
    DenseGeneral creates it flat and reshapes it, which breaks its sharding annotation once a
    mesh is set).
    """

    config: ModelConfig
    features: int | tuple[int, ...]
    names: tuple[str | None, ...]  # logical names of the kernel's dims, inputs then outputs
    axis: int | tuple[int, ...] = -1
    # True: one matmul per index of the first output dim, returned as a tuple (same kernel);
    # slicing one fused output instead costs a copy per slice where a custom call (cuDNN
    # attention) consumes it.
    separate: bool = False

    @nn.compact
    def __call__(self, x):
        c = self.config
        features = self.features if isinstance(self.features, tuple) else (self.features,)
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        axes = tuple(a % x.ndim for a in axes)
        in_shape = tuple(x.shape[a] for a in axes)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(_init(c), self.names),
            in_shape + features,
            jnp.float32,
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), self.names[len(axes) :]),
            features,
            jnp.float32,
        )
        dtype = c.compute_dtype
        x, kernel, bias = x.astype(dtype), kernel.astype(dtype), bias.astype(dtype)
        contract = (axes, tuple(range(len(axes))))
        if not self.separate:
            return jnp.tensordot(x, kernel, contract) + bias
        kernels = (jnp.take(kernel, i, axis=len(axes)) for i in range(features[0]))
        return tuple(jnp.tensordot(x, k, contract) + b for k, b in zip(kernels, bias))


def _dense(config: ModelConfig, features, names, axis=-1, name=None, separate=False):
    return Dense(config, features, tuple(names), axis, separate, name=name)


def _layer_norm(config: ModelConfig, name=None):
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        name=name,
    )


_DROPOUT_LEVELS = 1 << 16  # dropout draws 16-bit uniforms: the rate is rounded to 1/65536


def _threefry_halves(key, shape: tuple[int, ...]):
    """16-bit draws (held in uint32) of `shape`, whose last dim is a multiple of 4.

    jax.random.bits spends one Threefry-2x32 hash per element at any width below 64 bits and
    XORs the hash's two output words together. Here each hash of a counter (the element's
    flat index / 4, so values depend on the global shape only, never on sharding) gives both
    words, i.e. four 16-bit draws. Shifts and masks, not a bitcast, split the words, so XLA
    can fuse the split into the kernel that compares and writes the mask.
    """
    counts_shape = shape[:-1] + (shape[-1] // 4,)
    counts = jnp.zeros(counts_shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(counts_shape))):
        iota = jax.lax.broadcasted_iota(jnp.uint32, counts_shape, axis)
        counts = counts + iota * jnp.uint32(stride)
        stride *= counts_shape[axis]
    k1, k2 = jax.random.key_data(key)
    hi, lo = threefry2x32_p.bind(k1, k2, jnp.zeros_like(counts), counts)
    halves = [hi >> 16, hi & 0xFFFF, lo >> 16, lo & 0xFFFF]
    return jnp.stack(halves, axis=-1).reshape(shape)


def dropout_keep_mask(key, shape: tuple[int, ...], rate: float):
    """Boolean keep mask with P(keep) = 1 - round(rate * 2^16) / 2^16, and that probability.

    Why not jax.random.bernoulli: it spends a 32-bit draw (a whole Threefry hash) per element,
    and on CPU the random bits of BERT's dropout (~40M per step at base size, batch 8) cost ~15%
    of the train step. With a Threefry key and a last dim divisible by 4, one hash serves four
    elements here (_threefry_halves); other keys and shapes take one 16-bit draw each. The rate
    moves by at most 8e-6 and the scaling uses the rounded probability, so the expected output
    still equals the input exactly.
    """
    threshold = round(rate * _DROPOUT_LEVELS)
    keep_prob = 1.0 - threshold / _DROPOUT_LEVELS
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)  # a raw uint32 key of the default implementation
    fast = (
        str(jax.random.key_impl(key)) == "threefry2x32"
        and len(shape) > 0
        and shape[-1] % 4 == 0
        and int(np.prod(shape)) // 4 < 2**32  # the counter is one 32-bit word
    )
    halves = _threefry_halves(key, shape) if fast else jax.random.bits(key, shape, jnp.uint16)
    return halves >= min(threshold, _DROPOUT_LEVELS - 1), keep_prob


class Dropout(nn.Module):
    """Inverted dropout drawing from the "dropout" RNG stream, with the cheap mask above."""

    rate: float

    @nn.compact
    def __call__(self, x, *, deterministic: bool):
        threshold = round(self.rate * _DROPOUT_LEVELS)
        if deterministic or threshold == 0:
            return x
        if threshold >= _DROPOUT_LEVELS:
            return jnp.zeros_like(x)
        keep, keep_prob = dropout_keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        # Scaled in float32: 1/0.9 rounded to bfloat16 first (1.109375) shrank every kept unit.
        kept = (x.astype(jnp.float32) * (1.0 / keep_prob)).astype(x.dtype)
        return jnp.where(keep, kept, jnp.zeros_like(x))


def attention_mask(tokens_BxL, document_ids_BxL, *, pad_id: int, attend_across_documents: bool):
    """Boolean [B,1,L,L] (query, key) mask.

    Padding is document_ids == 0 when given, else tokens == pad_id. Padding queries get a
    harmless non-empty row (no NaNs, no effect on real positions, which never see padding keys).
    """
    if document_ids_BxL is None:
        real_BxL = tokens_BxL != pad_id
        doc_BxL = real_BxL.astype(jnp.int32)  # 1 = real, 0 = padding
    else:
        real_BxL = document_ids_BxL != 0
        doc_BxL = document_ids_BxL
    if attend_across_documents or document_ids_BxL is None:
        mask_BxLxL = real_BxL[:, None, :] | ~real_BxL[:, :, None]
    else:
        mask_BxLxL = doc_BxL[:, :, None] == doc_BxL[:, None, :]
    return mask_BxLxL[:, None, :, :]


class Embeddings(nn.Module):
    """Word + learned absolute position + token type embeddings, then LayerNorm and dropout."""

    config: ModelConfig

    def setup(self):
        c = self.config
        self.word_embeddings = self.param(
            "word_embeddings",
            nn.with_logical_partitioning(_init(c), ("vocab", "embed")),
            (c.padded_vocab_size, c.hidden_size),
            jnp.float32,
        )
        self.position_embeddings = self.param(
            "position_embeddings",
            nn.with_logical_partitioning(_init(c), (None, "embed")),
            (c.max_position_embeddings, c.hidden_size),
            jnp.float32,
        )
        self.token_type_embeddings = self.param(
            "token_type_embeddings",
            nn.with_logical_partitioning(_init(c), (None, "embed")),
            (c.type_vocab_size, c.hidden_size),
            jnp.float32,
        )
        self.norm = _layer_norm(c)
        self.dropout = Dropout(c.dropout_rate)

    def __call__(self, tokens_BxL, token_types_BxL=None, *, deterministic: bool):
        c = self.config
        length = tokens_BxL.shape[1]
        if length > c.max_position_embeddings:
            raise ValueError(
                f"sequence length {length}: longer than "
                f"config.model.max_position_embeddings={c.max_position_embeddings}"
            )
        # The table gathered whole along `embed` first: a lookup into a table split on the
        # hidden dimension yields activations split on it too, and moving those to the batch
        # split made XLA's SPMD partitioner replicate the whole [B,L,E] activation.
        table_VxE = _constrain(self.word_embeddings, ("vocab", None))
        x_BxLxE = jnp.take(table_VxE, tokens_BxL, axis=0)
        x_BxLxE = x_BxLxE + self.position_embeddings[None, :length]
        if token_types_BxL is None:
            x_BxLxE = x_BxLxE + self.token_type_embeddings[0]
        else:
            x_BxLxE = x_BxLxE + jnp.take(self.token_type_embeddings, token_types_BxL, axis=0)
        x_BxLxE = _constrain(x_BxLxE.astype(c.compute_dtype), ("batch", "length", "embed"))
        return self.dropout(self.norm(x_BxLxE), deterministic=deterministic)

    def attend(self, h_BxKxE):
        """Tied decoder: logits over the padded vocabulary, accumulated in float32."""
        return tied_logits(h_BxKxE, self.word_embeddings.astype(self.config.compute_dtype))


@jax.custom_jvp
def tied_logits(h_BxKxE, table_VxE):
    """h @ table^T in float32, whose backward matmuls run in h's dtype (as mixed precision does).

    Autodiff of the float32-accumulated einsum would meet the float32 cotangent with the
    bfloat16 table and run both backward matmuls ([B*K, Vp] by [Vp, E]) in float32 (TF32 on a
    GPU, half the bfloat16 rate). The tangent is computed in the compute dtype and only then
    widened, so its transpose narrows the cotangent first. Nothing changes in float32.
    """
    return jnp.einsum("bke,ve->bkv", h_BxKxE, table_VxE, preferred_element_type=jnp.float32)


@tied_logits.defjvp
def _tied_logits_jvp(primals, tangents):
    (h, table), (dh, dtable) = primals, tangents
    tangent = jnp.einsum("bke,ve->bkv", dh, table) + jnp.einsum("bke,ve->bkv", h, dtable)
    return tied_logits(h, table), tangent.astype(jnp.float32)


class Block(nn.Module):
    """One Transformer block: bidirectional self-attention and a GELU MLP, post- or pre-LN."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_BxLxE, mask_Bx1xLxL):
        c = self.config
        n, d = c.num_heads, c.head_dim
        dropout = Dropout(c.dropout_rate)

        h_BxLxE = _layer_norm(c, "attention_norm")(x_BxLxE) if c.pre_ln else x_BxLxE
        qkv = _dense(
            c, (3, n, d), ("embed", None, "heads", "kv"), name="qkv", separate=not c.fused_qkv
        )(h_BxLxE)
        if c.fused_qkv:  # one [E, 3E] matmul, then q, k, v sliced out of its output
            qkv_BxLx3xNxD = _constrain(qkv, ("batch", "length", None, "heads", "kv"))
            qkv = tuple(qkv_BxLx3xNxD[:, :, i] for i in range(3))
        q, k, v = (_constrain(t_BxLxNxD, ("batch", "length", "heads", "kv")) for t_BxLxNxD in qkv)
        attn_BxLxNxD = self._attention(q, k, v, mask_Bx1xLxL)
        attn_BxLxNxD = _constrain(attn_BxLxNxD, ("batch", "length", "heads", "kv"))
        out_BxLxE = _dense(
            c, c.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), name="attention_out"
        )(attn_BxLxNxD)
        x_BxLxE = x_BxLxE + dropout(out_BxLxE, deterministic=self.deterministic)
        if not c.pre_ln:
            x_BxLxE = _layer_norm(c, "attention_norm")(x_BxLxE)
        x_BxLxE = _constrain(x_BxLxE, ("batch", "length", "embed"))

        h_BxLxE = _layer_norm(c, "mlp_norm")(x_BxLxE) if c.pre_ln else x_BxLxE
        h_BxLxM = _dense(c, c.intermediate_size, ("embed", "mlp"), name="mlp_in")(h_BxLxE)
        h_BxLxM = _constrain(_gelu(c, h_BxLxM), ("batch", "length", "mlp"))
        h_BxLxE = _dense(c, c.hidden_size, ("mlp", "embed"), name="mlp_out")(h_BxLxM)
        x_BxLxE = x_BxLxE + dropout(h_BxLxE, deterministic=self.deterministic)
        if not c.pre_ln:
            x_BxLxE = _layer_norm(c, "mlp_norm")(x_BxLxE)
        return _constrain(x_BxLxE, ("batch", "length", "embed")), None

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

    config: ModelConfig

    def setup(self):
        c = self.config
        self.embeddings = Embeddings(c)
        if c.pre_ln:
            self.final_norm = _layer_norm(c)

    def _blocks(self, deterministic: bool):
        c = self.config
        block_cls = Block
        if c.remat != "none":
            block_cls = nn.remat(
                block_cls, prevent_cse=not c.scan_layers, policy=_REMAT_POLICIES[c.remat]
            )
        if c.scan_layers:
            stack_cls = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return [stack_cls(c, deterministic, name="layers")]
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
    """Encoder plus the MLM head, evaluated only at the K masked positions of each row."""

    config: ModelConfig

    def setup(self):
        c = self.config
        self.encoder = BertEncoder(c)
        self.mlm_head = MLMHead(c)

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
        h_BxKxE = jnp.take_along_axis(x_BxLxE, positions_BxK[:, :, None], axis=1)
        h_BxKxE = _constrain(h_BxKxE, ("batch", "length", "embed"))
        h_BxKxE = self.mlm_head(h_BxKxE)
        logits_BxKxVp = self.encoder.embeddings.attend(h_BxKxE) + self.mlm_head.output_bias
        logits_BxKxVp = _constrain(logits_BxKxVp, ("batch", "length", "vocab"))
        return logits_BxKxVp[..., : self.config.vocab_size]


class MLMHead(nn.Module):
    """BERT's prediction transform (dense + GELU + LayerNorm) and the decoder's output bias."""

    config: ModelConfig

    def setup(self):
        c = self.config
        self.transform = _dense(c, c.hidden_size, ("embed", "mlp"))
        self.norm = _layer_norm(c)
        self.output_bias = self.param(
            "output_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (c.padded_vocab_size,),
            jnp.float32,
        )

    def __call__(self, h_BxKxE):
        # Pinning the transform's output to the batch sharding is not only a hint: without it
        # XLA's SPMD partitioner (jax 0.10.2) computes wrong gradients for the transform and
        # everything below it on a mesh with data, fsdp and tensor axes all > 1
        # (tests/test_sharding.py catches it).
        h_BxKxE = _constrain(self.transform(h_BxKxE), ("batch", "length", "embed"))
        return self.norm(_gelu(self.config, h_BxKxE))


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


class BertForSequenceClassification(nn.Module):
    """Encoder + BERT pooler (dense + tanh on [CLS]) + dropout + linear classifier."""

    config: ModelConfig
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
            _dense(c, c.hidden_size, ("embed", "mlp"), name="pooler")(x_BxLxE[:, 0])
        )
        pooled_BxE = Dropout(c.dropout_rate)(pooled_BxE, deterministic=deterministic)
        logits_BxC = _dense(c, self.num_labels, ("embed", None), name="classifier")(pooled_BxE)
        return logits_BxC.astype(jnp.float32)

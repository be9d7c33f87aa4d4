"""Layers every encoder family shares: dense, norm, dropout, GELU, attention mask, the token
table and its lookup, scanned and rematerialised block stacks. The sparse MLM head, which
builds on these, is models/head.py.

Each takes the ModelSpec (models/spec.py) for its numerics (compute dtype, float32 parameters, init range) and
names its parameters' dims with logical axes (batch, length, embed, heads, kv, mlp, vocab,
layers); the mesh mapping lives in the config. A family's module (models/bert.py,
models/modernbert.py) builds its blocks from these and imports nothing from another family.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from mlm_jax.models.family import Spec


def init_weights(spec: Spec, stddev: float | None = None):
    """Truncated normal (at 2 stddev) with the spec's initializer_range, as BERT initialises;
    `stddev` overrides it (ModernBERT shrinks its output projections)."""
    return nn.initializers.truncated_normal(stddev=stddev or spec.initializer_range)


def constrain(x, names):
    """Pins an activation's logical axes (a no-op outside a mesh context)."""
    return nn.with_logical_constraint(x, names)


def activation(spec: Spec, x):
    """BERT's exact GELU, or its tanh approximation (HF's gelu_new) when configured."""
    return gelu(x, spec.gelu == "tanh")


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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x, kernel, n_in: int):
    """x's last n_in dims contracted with kernel [*in, *out]: jnp.tensordot(x, kernel, n_in),
    with a backward that picks which operand XLA:CPU copies for the kernel gradient.

    XLA:CPU's dot copies its left operand with the contracted dim innermost. Autodiff asks for
    dY^T X, so every weight gradient first copied dY to [out, tokens]. Here the gradient is
    X^T dY (a copy of X), or (dY^T X)^T where the copy of dY plus the kernel-sized transpose
    of the result is smaller. Same sums, other order: equal up to float rounding. The
    ModernBERT tiny step ran 1.11-1.21x faster and BERT-base 1.08x (docs/performance.md,
    Levers); on GPU and TPU each form is one dot.
    """
    return jnp.tensordot(x, kernel, n_in)


def _project_fwd(x, kernel, n_in):
    return jnp.tensordot(x, kernel, n_in), (x, kernel)


def _project_bwd(n_in, residuals, g):
    x, kernel = residuals
    lead, n_out = x.ndim - n_in, kernel.ndim - n_in
    out_dims = tuple(range(lead, g.ndim))
    dx = jax.lax.dot_general(g, kernel, ((out_dims, tuple(range(n_in, n_in + n_out))), ((), ())))
    tokens = tuple(range(lead))
    size_in = math.prod(kernel.shape[:n_in])
    n_tokens, size_out = x.size // size_in, kernel.size // size_in
    if n_tokens * size_in <= (n_tokens + size_in) * size_out:  # the smaller copy
        dkernel = jax.lax.dot_general(x, g, ((tokens, tokens), ((), ())))
    else:
        dkernel_t = jax.lax.dot_general(g, x, ((tokens, tokens), ((), ())))
        dkernel = jnp.transpose(dkernel_t, (*range(n_out, n_out + n_in), *range(n_out)))
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


project.defvjp(_project_fwd, _project_bwd)


class Dense(nn.Module):
    """A dense layer over the trailing `axis` dims, in the compute dtype with float32 params.

    The kernel is created at its full shape [*in, *out] with its logical names (flax's
    DenseGeneral creates it flat and reshapes it, which breaks its sharding annotation once a
    mesh is set).
    """

    config: Spec
    features: int | tuple[int, ...]
    names: tuple[str | None, ...]  # logical names of the kernel's dims, inputs then outputs
    axis: int | tuple[int, ...] = -1
    # True: one matmul per index of the first output dim, returned as a tuple (same kernel);
    # slicing one fused output instead costs a copy per slice where a custom call (cuDNN
    # attention) consumes it.
    separate: bool = False
    use_bias: bool = True  # ModernBERT's projections have none
    stddev: float | None = None  # init stddev; None = config.initializer_range

    @nn.compact
    def __call__(self, x):
        c = self.config
        features = self.features if isinstance(self.features, tuple) else (self.features,)
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        axes = tuple(a % x.ndim for a in axes)
        in_shape = tuple(x.shape[a] for a in axes)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init_weights(c, self.stddev), self.names),
            in_shape + features,
            jnp.float32,
        )
        dtype = c.compute_dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros_init(), self.names[len(axes) :]),
                features,
                jnp.float32,
            ).astype(dtype)
        x = jnp.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))  # contract the last
        if not self.separate:
            out = project(x, kernel, len(axes))
            return out + bias if self.use_bias else out
        kernels = (jnp.take(kernel, i, axis=len(axes)) for i in range(features[0]))
        outs = tuple(project(x, k, len(axes)) for k in kernels)
        return tuple(o + b for o, b in zip(outs, bias)) if self.use_bias else outs


def dense(
    config: Spec,
    features,
    names,
    axis=-1,
    name=None,
    separate=False,
    use_bias=True,
    stddev=None,
):
    return Dense(config, features, tuple(names), axis, separate, use_bias, stddev, name=name)


def layer_norm(config: Spec, name=None, use_bias=True, rms=False):
    """LayerNorm over `embed` (BERT's; ModernBERT's has no bias), or RMSNorm with rms=True."""
    scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",))
    if rms:
        return nn.RMSNorm(
            epsilon=config.layer_norm_eps,
            dtype=config.compute_dtype,
            param_dtype=jnp.float32,
            scale_init=scale_init,
            name=name,
        )
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        use_bias=use_bias,
        scale_init=scale_init,
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


_REMAT_POLICIES = {
    "full": None,  # save nothing inside a block: recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep projection outputs
}


def with_remat(block_cls, c: Spec):
    """The block class rematerialised as model.remat says (scan-friendly CSE setting)."""
    if c.remat == "none":
        return block_cls
    return nn.remat(block_cls, prevent_cse=not c.scan_layers, policy=_REMAT_POLICIES[c.remat])


def scanned_stack(block_cls, c: Spec, deterministic: bool, in_axes):
    """All num_layers blocks as one nn.scan named `layers`, parameters stacked on `layers`;
    in_axes says how the arguments after the carried activations reach each layer."""
    stack_cls = nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=c.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return stack_cls(c, deterministic, name="layers")


def word_embeddings(module: nn.Module, c: Spec):
    """The [Vp, E] token table (also the tied decoder) as a parameter of `module`."""
    return module.param(
        "word_embeddings",
        nn.with_logical_partitioning(init_weights(c), ("vocab", "embed")),
        (c.padded_vocab_size, c.hidden_size),
        jnp.float32,
    )


def lookup_tokens(table_VxE, tokens_BxL, c: Spec):
    """Rows of the token table (float32), after refusing rows longer than the model's limit.

    The table is gathered whole along `embed` first: a lookup into a table split on the hidden
    dimension yields activations split on it too, and moving those to the batch split made
    XLA's SPMD partitioner replicate the whole [B,L,E] activation.
    """
    length = tokens_BxL.shape[1]
    if length > c.max_position_embeddings:
        raise ValueError(
            f"sequence length {length}: longer than "
            f"config.model.max_position_embeddings={c.max_position_embeddings}"
        )
    return jnp.take(constrain(table_VxE, ("vocab", None)), tokens_BxL, axis=0)

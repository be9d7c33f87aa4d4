"""The sparse MLM head every family shares: the prediction transform, then the tied decoder
(the token table) plus an output bias, only at the K prediction slots of each row.

Two derivatives are written by hand, each for a measured reason: `tied_logits` keeps the
backward matmuls in the compute dtype, and `add_output_bias` sums the bias gradient as a
matmul, which XLA:CPU runs an order of magnitude faster than its reduce at vocabulary widths.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mlm_jax.models.family import Spec
from mlm_jax.models.layers import activation, constrain, dense, layer_norm


@jax.custom_jvp
def tied_logits(h_BxKxE, table_VxE):
    """h @ table^T in float32, whose backward matmuls run in h's dtype (as mixed precision does).

    Autodiff of the float32-accumulated einsum would meet the float32 cotangent with the
    bfloat16 table and run both backward matmuls ([B*K, V] by [V, E]) in float32 (TF32 on a
    GPU, half the bfloat16 rate). The tangent is computed in the compute dtype and only then
    widened, so its transpose narrows the cotangent first. Nothing changes in float32.
    """
    return jnp.einsum("bke,ve->bkv", h_BxKxE, table_VxE, preferred_element_type=jnp.float32)


@tied_logits.defjvp
def _tied_logits_jvp(primals, tangents):
    (h, table), (dh, dtable) = primals, tangents
    tangent = jnp.einsum("bke,ve->bkv", dh, table) + jnp.einsum("bke,ve->bkv", h, dtable)
    return tied_logits(h, table), tangent.astype(jnp.float32)


@jax.custom_vjp
def add_output_bias(logits_BxKxV, bias_V):
    """logits + bias, whose bias gradient (the cotangent summed over every slot) is a matmul
    with a ones vector at float32 precision.

    XLA:CPU (jax 0.10.2) reduces [32, 19, 30522] over its leading axes in ~32 ms and [8, 38,
    32768] in ~18, against 1.5 and 0.6 ms as a matmul (`python experiments/bench_head_sums.py`,
    docs/performance.md); on GPU and TPU both are cheap. Same sum, other order: equal to rounding.
    """
    return logits_BxKxV + bias_V


def _add_output_bias_fwd(logits_BxKxV, bias_V):
    return logits_BxKxV + bias_V, None


def _add_output_bias_bwd(_, g_BxKxV):
    ones_BxK = jnp.ones(g_BxKxV.shape[:-1], g_BxKxV.dtype)
    highest = jax.lax.Precision.HIGHEST  # TPUs would otherwise sum float32 in bfloat16 passes
    return g_BxKxV, jnp.einsum("bk,bkv->v", ones_BxK, g_BxKxV, precision=highest)


add_output_bias.defvjp(_add_output_bias_fwd, _add_output_bias_bwd)


def prediction_transform(c: Spec, h_BxKxE, *, use_bias: bool, rms: bool, stddev=None):
    """dense (E -> E), the activation, a norm, as parameters `transform` and `norm` of the
    calling module: BERT's MLM transform (biases, LayerNorm) and ModernBERT's prediction head
    (bias-free, LayerNorm or RMSNorm, a smaller init)."""
    h_BxKxE = dense(
        c, c.hidden_size, ("embed", "mlp"), name="transform", use_bias=use_bias, stddev=stddev
    )(h_BxKxE)
    # Pinning the transform's output to the batch sharding is not only a hint: without it
    # XLA's SPMD partitioner (jax 0.10.2) computes wrong gradients for the transform and
    # everything below it on a mesh with data, fsdp and tensor axes all > 1
    # (tests/test_sharding.py catches it).
    h_BxKxE = constrain(h_BxKxE, ("batch", "length", "embed"))
    return layer_norm(c, "norm", use_bias=use_bias, rms=rms)(activation(c, h_BxKxE))


class PredictionTransform(nn.Module):
    """`prediction_transform` as a module of its own (ModernBERT's classifier head)."""

    config: Spec
    use_bias: bool = True
    rms: bool = False
    stddev: float | None = None

    @nn.compact
    def __call__(self, h_BxKxE):
        kw = dict(use_bias=self.use_bias, rms=self.rms, stddev=self.stddev)
        return prediction_transform(self.config, h_BxKxE, **kw)


class SparseMLMHead(nn.Module):
    """The MLM head, evaluated only at the K prediction slots of each row: the final hidden
    states there, the prediction transform, the tied decoder (the token table) plus an output
    bias, in float32 over the real vocabulary (the table's padding rows are never predicted).

    Parameters: transform, norm (`prediction_transform`'s), output_bias [Vp].
    """

    config: Spec
    use_bias: bool = True
    rms: bool = False
    stddev: float | None = None  # the transform's init; None = model.initializer_range

    @nn.compact
    def __call__(self, x_BxLxE, positions_BxK, table_VxE):
        c = self.config
        h_BxKxE = jnp.take_along_axis(x_BxLxE, positions_BxK[:, :, None], axis=1)
        h_BxKxE = constrain(h_BxKxE, ("batch", "length", "embed"))
        kw = dict(use_bias=self.use_bias, rms=self.rms, stddev=self.stddev)
        h_BxKxE = prediction_transform(c, h_BxKxE, **kw)
        output_bias = self.param(
            "output_bias",
            nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (c.padded_vocab_size,),
            jnp.float32,
        )
        # The padding rows are sliced off the table, not the logits: a [B, K, Vp] slice forward
        # and pad backward cost more than the [Vp, E] ones.
        table_VxE = table_VxE[: c.vocab_size].astype(c.compute_dtype)
        logits_BxKxV = add_output_bias(tied_logits(h_BxKxE, table_VxE), output_bias[: c.vocab_size])
        return constrain(logits_BxKxV, ("batch", "length", "vocab"))

"""Attention pieces beyond jax.nn.dot_product_attention, for any family that needs them:
rotary positions, group masks, a masked softmax with dropout on the probabilities, and
sliding-window attention computed in blocks (ModernBERT's local layers).

A sliding-window layer computes its scores in blocks of window/2 queries against the 3 key
blocks around them, so its cost grows with L x 1.5 window, not L^2 (models/flops.py counts the
window), where that is at most half the row (`uses_blocks`).
Shape letters as in models/bert.py; W window/2 (a block), C blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.models.family import Spec
from mlm_jax.models.layers import dropout_keep_mask


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
    """(cos, sin) float32 [L, D] of rotary positions 0..L-1, frequencies repeated per half.

    Computed on the host, so they reach XLA as constants: computed in the step, XLA:CPU
    evaluated cos and sin again inside every fusion that read them (RoPE's backward, fused
    with the q, k, v slices, per element); the ModernBERT tiny step ran 1.03-1.13x faster with
    host tables (docs/performance.md, Levers). The frequencies round as transformers' float32 ones
    do (the power in double, the rest in float32); cos and sin are rounded from double.
    """
    f32 = np.float32
    exponents = np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)
    inv_freq = f32(1.0) / (theta ** exponents.astype(np.float64)).astype(f32)
    freqs_LxD2 = np.arange(length, dtype=f32)[:, None] * inv_freq[None, :]
    angles_LxD = np.concatenate([freqs_LxD2, freqs_LxD2], axis=-1).astype(np.float64)
    cos_LxD, sin_LxD = np.cos(angles_LxD), np.sin(angles_LxD)
    return jnp.asarray(cos_LxD, jnp.float32), jnp.asarray(sin_LxD, jnp.float32)


def apply_rope(x_BxLxNxD, cos_LxD, sin_LxD):
    """x cos + rotate_half(x) sin in float32 (rotate_half(x) = [-x2, x1]), in x's dtype."""
    x32 = x_BxLxNxD.astype(jnp.float32)
    half = x32.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_LxD[None, :, None, :] + rotated * sin_LxD[None, :, None, :]
    return out.astype(x_BxLxNxD.dtype)


def softmax_attention(q, k, v, mask, scale, dtype, dropout_key, dropout_rate, spec):
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


def window_blocks(x_BxL, block: int, fill):
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
    k_BxCx3WxNxD = window_blocks(k, half, 0)
    v_BxCx3WxNxD = window_blocks(v, half, 0)
    gq_BxCxW = groups_BxL.reshape(b, c, half)
    gk_BxCx3W = window_blocks(groups_BxL, half, -1)  # -1: past the ends, never a group
    offset_Wx3W = jnp.arange(3 * half)[None, :] - (jnp.arange(half)[:, None] + half)
    near_Wx3W = jnp.abs(offset_Wx3W) <= half
    mask = near_Wx3W[None, None] & (gq_BxCxW[..., :, None] == gk_BxCx3W[..., None, :])
    out_BxCxWxNxD = softmax_attention(
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

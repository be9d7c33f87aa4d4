"""Model FLOPs per token of the MLM train step: what MFU divides by, in the benchmark and the
GPU estimate alike.

These are the FLOPs the objective needs, not what XLA executes: a multiply-add is 2 FLOPs and
the backward pass costs twice the forward, so a weight matmul costs 6 x its parameters per row
it sees. With E = hidden size, M = intermediate size, L = tokens per row, V = the real
vocabulary and K = prediction slots per row (masking's max_predictions):

    6 * layers * (4 E^2 + 2 E M)              encoder projections (qkv, out, mlp in/out)
  + 12 * layers * L * E                       attention scores Q K^T and the weighted sum P V
  + 6 * (E^2 + E V) * K / L                   MLM head (transform + tied decoder over the real
                                              vocabulary V), only at the K prediction slots
                                              per row of L tokens

A family (models/family.py) changes two terms: a gated MLP has three E x M matmuls
(ModernBERT's Wi is [E, 2M]), so 6 * layers * (4 E^2 + Family.mlp_matmuls E M); and a
sliding-window layer's queries (Family.is_global_layer false) see at most local_window keys, so
its attention term is 12 * min(L, local_window) * E per layer (the global layers keep
12 * L * E). ModernBERT's blocked kernel computes 1.5 windows of scores; the model FLOPs count
the window, as for the global layers they count the row.

Embedding lookups, biases, LayerNorm, GELU, softmax and the optimizer are not counted (as in
the usual 6N convention); padding rows of the embedding table (Vp - V) are not counted either.
"""

from __future__ import annotations

from mlm_jax.models.registry import family


def flops_per_token(model_config, seq_len: int, max_predictions: int) -> dict[str, float]:
    """Model FLOPs per input token, by part and "total" (the formula is the module docstring).

    `model_config` needs num_layers, hidden_size, intermediate_size and vocab_size (the real
    vocabulary, as in mlm_jax.models.spec.ModelSpec); arch (default bert) picks the family.
    """
    n, e, m = model_config.num_layers, model_config.hidden_size, model_config.intermediate_size
    v = model_config.vocab_size
    chosen = family(getattr(model_config, "arch", "bert"))
    window = min(seq_len, getattr(model_config, "local_window", seq_len))
    # keys each query sees, per layer
    keys = [seq_len if chosen.is_global_layer(model_config, i) else window for i in range(n)]
    parts = {
        "encoder_matmuls": 6.0 * n * (4 * e * e + chosen.mlp_matmuls * e * m),
        "attention": 12.0 * sum(keys) * e,
        "mlm_head": 6.0 * (e * e + e * v) * max_predictions / seq_len,
    }
    parts["total"] = sum(parts.values())
    return parts


# bfloat16 dense datasheet peaks, FLOP/s, matched by substring of device_kind (first match).
DATASHEET_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM (device_kind "NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),  # v6e (Trillium)
    ("TPU v6e", 918e12),
)


def datasheet_peak(device_kind: str, dtype_name: str) -> float | None:
    """The chip's bf16 dense datasheet peak in FLOP/s, or None (unknown chip, other dtype)."""
    if dtype_name != "bfloat16":
        return None
    for key, peak in DATASHEET_BF16:
        if key.lower() in device_kind.lower():
            return peak
    return None

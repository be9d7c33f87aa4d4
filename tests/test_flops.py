"""mlm_jax.models.flops: the model FLOPs per token, part by part, against a count by hand."""

import types

import pytest

from mlm_jax.models.flops import flops_per_token


def test_each_part_is_the_hand_count_and_the_total_their_sum():
    # BERT-base's shape: E=768, M=3072, 12 layers, V=30522; L=128 tokens, K=20 predictions.
    model = types.SimpleNamespace(
        num_layers=12, hidden_size=768, intermediate_size=3072, vocab_size=30522
    )
    parts = flops_per_token(model, seq_len=128, max_predictions=20)
    assert parts["encoder_matmuls"] == 6 * 12 * (4 * 768**2 + 2 * 768 * 3072)  # 6 x weights
    assert parts["attention"] == 12 * 12 * 128 * 768  # QK^T and PV, forward and backward
    assert parts["mlm_head"] == pytest.approx(6 * (768**2 + 768 * 30522) * 20 / 128)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    # The head is paid only at the prediction slots: half the slots, half its FLOPs.
    fewer = flops_per_token(model, seq_len=128, max_predictions=10)
    assert fewer["mlm_head"] == pytest.approx(parts["mlm_head"] / 2)
    assert fewer["encoder_matmuls"] == parts["encoder_matmuls"]


def test_modernbert_counts_the_glu_and_local_layers_at_their_window():
    # ModernBERT-base: 22 layers, E=768, M=1152, global every 3rd (8 global, 14 local), window
    # 128; at L=1024 a local layer's attention is 128/1024 of a global one's.
    from mlm_jax.models.spec import ModelSpec

    spec = ModelSpec(
        num_layers=22, hidden_size=768, num_heads=12, intermediate_size=1152, vocab_size=50368,
        arch="modernbert",
    )  # fmt: skip
    parts = flops_per_token(spec, seq_len=1024, max_predictions=308)
    assert parts["encoder_matmuls"] == 6 * 22 * (4 * 768**2 + 3 * 768 * 1152)
    assert parts["attention"] == 12 * 768 * (8 * 1024 + 14 * 128)
    all_global = flops_per_token(spec.__class__(**{**spec.__dict__, "global_every": 1}), 1024, 308)
    assert all_global["attention"] == 12 * 768 * 22 * 1024

"""mlm_jax.flops: the model FLOPs per token, part by part, against a count by hand."""

import types

import pytest

from mlm_jax.flops import flops_per_token


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

"""AdamW decays matrices and embeddings but never LayerNorm parameters or biases (as BERT)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax.models.bert import BertMLM
from mlm_jax.models.spec import ModelSpec
from mlm_jax.training import optim
from tests.configs import small_run_config


def _model_params():
    config = ModelSpec(
        num_layers=2, hidden_size=16, num_heads=2, intermediate_size=32, vocab_size=100
    )
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(BertMLM(config).init, jax.random.key(0), tokens, tokens[:, :2])
    return nn.unbox(shapes)["params"]


def test_decay_mask_covers_matrices_and_embeddings_only():
    mask = optim.decay_mask(_model_params())
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = {k for k, v in flat.items() if v}
    assert "['encoder']['embeddings']['word_embeddings']" in decayed
    assert "['encoder']['embeddings']['position_embeddings']" in decayed
    assert "['encoder']['layers']['mlp_in']['kernel']" in decayed
    for name in decayed:
        assert not name.endswith("['bias']") and "norm" not in name, name
    assert any("norm']['scale']" in k for k in flat) and any("['bias']" in k for k in flat)


def test_schedule_warms_up_then_decays_to_zero():
    config = small_run_config("", num_steps=100).train
    config.warmup_steps = 10
    schedule = optim.learning_rate_schedule(config)
    peak = config.learning_rate
    np.testing.assert_allclose(
        [schedule(0), schedule(5), schedule(10), schedule(55), schedule(100)],
        [0.0, peak / 2, peak, peak / 2, 0.0],
        rtol=1e-5,
        atol=1e-12,
    )


def test_wsd_warms_up_holds_the_peak_then_decays_in_its_shape():
    """100 steps, 10 of warmup, the last 20 decaying: hand-computed points of each shape."""
    import pytest

    def lr(shape, step):
        spec = optim.OptimizerSpec(
            learning_rate=1.0, num_steps=100, warmup_steps=10, lr_schedule="wsd",
            decay_share=0.2, decay_shape=shape,
        )  # fmt: skip
        return float(optim.learning_rate_schedule(spec)(step))

    for shape in ("linear", "cosine", "sqrt"):
        assert lr(shape, 5) == pytest.approx(0.5)
        assert lr(shape, 10) == lr(shape, 50) == lr(shape, 80) == 1.0
        assert lr(shape, 100) == pytest.approx(0.0, abs=1e-7)
    assert lr("linear", 85) == pytest.approx(0.75)
    assert lr("cosine", 90) == pytest.approx(0.5)
    assert lr("sqrt", 85) == pytest.approx(1 - 0.5)
    with pytest.raises(ValueError, match=r"^config\.train\.decay_share=0\.95: its 95 decay steps"):
        optim.OptimizerSpec(
            learning_rate=1.0, num_steps=100, warmup_steps=10, lr_schedule="wsd", decay_share=0.95
        )

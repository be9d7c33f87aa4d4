"""AdamW decays matrices and embeddings but never LayerNorm parameters or biases (as BERT)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlm_jax import optim
from mlm_jax.bert import BertMLM
from mlm_jax.model_spec import ModelSpec
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

"""Quickstart: a small BERT on the built-in python_docs corpus, sized for a 2-core CPU.

Run it (no download; see README.md for the time it takes and what it reaches):

    python -m mlm_jax.main --config=configs/tiny.py --workdir=/tmp/mlm_tiny

Override any field from the command line, e.g. `--config.masking.ratio=0.4`. Every field and
its meaning: mlm_jax/config/defaults.py.
"""

from mlm_jax.config.defaults import base_config


def get_config():
    c = base_config()
    c.data.dataset = "python_docs"  # built into the project: needs no network
    c.data.vocab_size = 8192  # WordPiece vocabulary trained on the corpus on first use
    c.data.seq_len = 128  # tokens per packed row

    c.model.num_layers = 4  # a 4-layer, 128-wide BERT: 1.9M parameters with this vocabulary
    c.model.hidden_size = 128
    c.model.num_heads = 4
    c.model.intermediate_size = 512

    c.train.num_steps = 1000  # ~0.5 s a step on 2 quiet CPU cores: about 9 minutes in all
    c.train.batch_size = 32  # sequences per step
    c.train.learning_rate = 2e-3  # small models take a high peak rate
    c.train.warmup_steps = 100

    c.eval.every_steps = 200
    c.eval.num_batches = 4  # 128 distinct held-out rows, the same at every evaluation
    c.checkpoint.every_steps = 200
    return c

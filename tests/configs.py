"""Small configs for tests: the real defaults, shrunk to run in seconds on 2 CPU cores."""

from mlm_jax.config import defaults as config_defaults


def small_run_config(data_dir: str, *, num_steps: int = 30):
    """A 2-layer, 64-wide BERT on the built-in corpus with a 512-token vocabulary."""
    c = config_defaults.base_config()
    c.data.dataset = "python_docs"
    c.data.data_dir = data_dir
    c.data.vocab_size = 512
    c.data.seq_len = 64
    c.data.heldout_fraction = 0.05
    c.model.num_layers = 2
    c.model.hidden_size = 64
    c.model.num_heads = 4
    c.model.intermediate_size = 128
    c.train.num_steps = num_steps
    c.train.batch_size = 8
    c.train.warmup_steps = 5
    c.train.learning_rate = 2e-3
    c.log.every_steps = 5
    c.eval.every_steps = 10
    c.eval.num_batches = 2
    c.eval.batch_size = 8
    # The likelihood bound's step (traced, compiled and run at every eval) only where a test
    # reads it: test_variable_rate_run and test_sweep turn it back on.
    c.eval.nll_bound_rates = 0
    c.checkpoint.every_steps = 10
    c.checkpoint.keep = 3
    c.mesh.data = 1
    return c


def resume_test_config(data_dir: str):
    """The small run for 20 steps, as the tests of stopping and resuming run it."""
    c = small_run_config(data_dir, num_steps=20)
    # Train events average 4 steps; the step-10 checkpoint falls inside the window 9-12, which
    # a resumed run must still average whole.
    c.log.every_steps = 4
    c.model.dropout_rate = 0.1  # dropout keys must resume too
    return c

"""ModernBERT-class encoders (model.arch=modernbert): `tiny` for the 2-core CPU, and `base` /
`large` at ModernBERT's shapes (Warner et al. 2024) for GPU and TPU.

    python -m mlm_jax.main --config=configs/modernbert.py:tiny --workdir=/tmp/modern_tiny
    python -m mlm_jax.main --config=configs/modernbert.py:base --workdir=gs://BUCKET/mb-base \\
        --config.data.dataset=tfds:wikipedia/20230601.en

All train at ModernBERT's masking rate of 30% and are evaluated at the common eval masking
(eval.*, 15%), so their held-out numbers compare with every other run's. A long-context
phase starts from a run directory: --config.model.init_from=<workdir of phase 1>
--config.data.seq_len=8192 (docs/experiments.md, phases).
"""

from mlm_jax.config.defaults import base_config

SIZES = {  # (layers, hidden, heads, intermediate (the GLU's half-width))
    "tiny": (4, 128, 4, 384),
    "base": (22, 768, 12, 1152),
    "large": (28, 1024, 16, 2624),
}


def get_config(arg: str = "tiny"):
    if arg not in SIZES:
        raise ValueError(f"configs/modernbert.py:{arg}: expected one of {', '.join(SIZES)}")
    c = base_config()
    layers, hidden, heads, intermediate = SIZES[arg]
    c.model.arch = "modernbert"
    c.model.num_layers = layers
    c.model.hidden_size = hidden
    c.model.num_heads = heads
    c.model.intermediate_size = intermediate
    c.model.max_position_embeddings = 8192  # RoPE has no table: the longest phase's length
    c.model.layer_norm_eps = 1e-5  # ModernBERT's norm_eps
    # Unrolled: each layer's attention (global or windowed) is fixed at trace time. Scanned,
    # a lax.cond picks it per layer, which cost more than the window saves on the CPU
    # (docs/performance.md, ModernBERT); 22 unrolled layers compiled in 17 s there.
    c.model.scan_layers = False
    c.model.dropout_rate = 0.0  # ModernBERT trains without dropout
    c.model.attention_dropout_rate = 0.0
    c.masking.ratio = 0.3  # ModernBERT's masking rate
    c.masking.end_ratio = 0.3
    c.train.b2 = 0.98
    c.train.weight_decay = 1e-5  # ModernBERT's (decoupled) weight decay is small
    c.train.lr_schedule = "wsd"  # warmup, stable, decay (ModernBERT, Ettin)

    if arg == "tiny":  # the built-in corpus, sized and timed like configs/tiny.py
        c.data.dataset = "python_docs"
        c.data.vocab_size = 8192
        c.data.seq_len = 128
        c.model.local_window = 64  # +-32 in a 128-token row (ModernBERT's 128 is ~global here)
        c.train.num_steps = 1000
        c.train.batch_size = 32
        c.train.learning_rate = 2e-3
        c.train.warmup_steps = 100
        c.eval.every_steps = 200
        c.eval.num_batches = 4
        c.checkpoint.every_steps = 200
        return c

    c.data.dataset = "tfds:wikipedia/20230601.en"  # prepare with `tfds build` (README)
    c.data.vocab_size = 32768
    c.data.seq_len = 1024  # ModernBERT's first phase; the context extension goes to 8192
    c.model.dtype = "bfloat16"
    c.model.remat = "dots" if arg == "large" else "none"
    c.train.num_steps = 100_000
    c.train.batch_size = 1024
    c.train.learning_rate = 8e-4 if arg == "base" else 5e-4  # ModernBERT's peaks
    c.train.warmup_steps = 3000
    c.log.every_steps = 100
    c.eval.every_steps = 5000
    c.eval.num_batches = 32
    c.eval.batch_size = 256
    c.checkpoint.every_steps = 5000
    c.checkpoint.keep = 3
    return c

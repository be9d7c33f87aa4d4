"""BERT-base and BERT-large pretraining recipes for GPU and TPU.

The argument picks size and recipe: `base`, `large` (the original BERT recipe: batch 256,
peak LR 1e-4, 1M steps at sequence length 128) or `base-24h`, `large-24h` (the large-batch,
high-LR recipe of Izsak et al. 2021 that Wettig et al. 2023 used for masking-ratio studies:
batch 4096, peak LR 2e-3 (base) / 1e-3 (large), 6% warmup, 23k steps, pre-LN).

    python -m mlm_jax.main --config=configs/bert.py:base --workdir=gs://BUCKET/bert-base \\
        --config.data.dataset=tfds:wikipedia/20230601.en \\
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets

Use a published vocabulary with `--config.data.tokenizer=/path/to/vocab.txt`.

On one GPU the fastest step found so far (README, Speed; estimated, not yet measured) adds
`--config.model.attention=cudnn --config.model.attention_dropout_rate=0` (the fused kernel has
no attention dropout) and `--config.model.scan_layers=false --config.model.remat=none` (compile
time then grows with depth; for BERT-large at batch 256 XLA's memory analysis gives ~33 GiB).
"""

from mlm_jax.config.defaults import base_config

SIZES = {  # (layers, hidden, heads, intermediate)
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}


def get_config(arg: str = "base"):
    size, _, recipe = arg.partition("-")
    if size not in SIZES or recipe not in ("", "24h"):
        raise ValueError(f"configs/bert.py:{arg}: expected base, large, base-24h or large-24h")
    c = base_config()
    c.data.dataset = "tfds:wikipedia/20230601.en"  # prepare with `tfds build` (README)
    c.data.vocab_size = 30522  # BERT's vocabulary size
    c.data.seq_len = 128  # phase-1 length of the original recipe

    layers, hidden, heads, intermediate = SIZES[size]
    c.model.num_layers = layers
    c.model.hidden_size = hidden
    c.model.num_heads = heads
    c.model.intermediate_size = intermediate
    c.model.dtype = "bfloat16"  # compute in bf16 on GPU/TPU; parameters stay float32
    c.model.remat = "none" if size == "base" else "dots"  # recompute to fit large batches

    c.log.every_steps = 100
    c.eval.every_steps = 5000
    c.eval.num_batches = 32
    c.eval.batch_size = 256
    c.checkpoint.every_steps = 5000
    c.checkpoint.keep = 3

    if recipe == "":  # Devlin et al. 2019
        c.train.num_steps = 1_000_000
        c.train.batch_size = 256
        c.train.learning_rate = 1e-4
        c.train.warmup_steps = 10_000
        c.train.b2 = 0.999
    else:  # Izsak et al. 2021 / Wettig et al. 2023
        c.train.num_steps = 23_000
        c.train.batch_size = 4096
        c.train.learning_rate = 2e-3 if size == "base" else 1e-3
        c.train.warmup_steps = 1380  # 6% of the steps
        c.train.b2 = 0.98
        c.model.pre_ln = True  # stable at this LR; not exportable to HF BERT
        c.model.dropout_rate = 0.0
        c.model.attention_dropout_rate = 0.0
        c.eval.every_steps = 1000
        c.checkpoint.every_steps = 1000
    return c

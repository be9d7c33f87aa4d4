"""The real train step on synthetic token ids: no corpus, no tokenizer.

What experiments/benchmark.py times and experiments/gpu_estimate.py compiles for a device it
does not have. The vocabulary is the config's size (model.vocab_size, or data.vocab_size when
that is 0) with ids 0..4 as the specials; a batch is full rows of one document each.
"""

from __future__ import annotations

import time
import types

import jax
import numpy as np

from mlm_jax.config.errors import as_config_errors
from mlm_jax.data.batch import Batch, token_rows, with_row_ids
from mlm_jax.data.spec import MIN_TRAINED_VOCAB
from mlm_jax.training.resolve import resolve
from mlm_jax.training.trainer import Trainer

# Synthetic vocabulary: ids 0..4 are the specials, everything above an ordinary token.
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def vocab_size_of(config) -> int:
    return int(config.model.vocab_size) or int(config.data.vocab_size)


def synthetic_vocab(vocab_size: int):
    """What Trainer needs from a tokenizer, without one."""
    if vocab_size <= MASK + 1:
        raise ValueError(f"vocab_size={vocab_size}: expected > {MASK + 1} (ids 0..4 are specials)")
    return types.SimpleNamespace(
        pad_id=PAD,
        unk_id=UNK,
        cls_id=CLS,
        sep_id=SEP,
        mask_id=MASK,
        vocab_size=vocab_size,
        special_ids=(PAD, UNK, CLS, SEP, MASK),
    )


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> Batch:
    """Full rows of one document each: [CLS] random ordinary ids [SEP], 75% word starts."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(MASK + 1, vocab_size, (batch_size, seq_len)).astype(np.int32)
    tokens[:, 0] = CLS
    tokens[:, -1] = SEP
    word_starts = rng.random((batch_size, seq_len)) < 0.75
    rows = token_rows(tokens, np.ones_like(tokens), tokens > MASK, word_starts)
    return with_row_ids(rows, np.arange(batch_size), np.zeros(batch_size))


def without_corpus(config):
    """`config` with its corpus and tokenizer replaced by the built-in, never-read ones.

    Synthetic ids read no corpus, so a corpus this machine lacks (configs/bert.py's Wikipedia)
    must not stop them; nor may it stop a sweep's check of runs that train on another machine.
    The vocabulary size is kept (model.vocab_size, else data.vocab_size).
    """
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.data.dataset, config.data.data_dir, config.data.tokenizer = "python_docs", "", ""
        config.data.vocab_size = max(int(config.data.vocab_size), MIN_TRAINED_VOCAB)
    return config


def make_trainer(config, devices=None) -> Trainer:
    """The run's Trainer with model.vocab_size resolved from the synthetic vocabulary."""
    vocab = synthetic_vocab(vocab_size_of(config))
    num_devices = None if devices is None else len(devices)
    with as_config_errors():
        run = resolve(without_corpus(config), num_devices=num_devices).with_vocab(vocab)
    return Trainer(run, devices=devices)


def abstract_batch(trainer: Trainer, rows: int) -> dict:
    """ShapeDtypeStructs of a global batch of `rows` synthetic rows, sharded as the trainer
    feeds its steps (the strategy's starts field too, e.g. pmi's unit_starts)."""
    batch = synthetic_batch(rows, trainer.run.data.seq_len, trainer.run.model.vocab_size)
    starts_field = trainer.run.masking.strategy_record.starts_field
    if starts_field is not None and starts_field not in batch:
        batch[starts_field] = batch["word_starts"]
    return {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding)
        for k, v in batch.items()
    }


def compile_train_step(config, devices=None, compiler_options=None):
    """The Trainer, its train step compiled from abstract shapes (no parameters allocated), and
    the seconds that lowering and compiling took (the Trainer's own setup left out)."""
    trainer = make_trainer(config, devices)
    batch = abstract_batch(trainer, trainer.run.train.batch_size)
    with trainer.activate():
        start = time.perf_counter()
        lowered = trainer.jitted("train").lower(trainer.abstract_state, batch, trainer.tables)
        compiled = lowered.compile(compiler_options=compiler_options)
    return trainer, compiled, time.perf_counter() - start

"""Runs a few train steps of a small model on one mesh and prints losses and parameters.

Started in a subprocess by test_sharding.py with XLA_FLAGS set to fake 8 CPU devices, so the
same script serves as the single-device oracle and as every sharded variant.
"""

import json
import sys
import types

import jax
import numpy as np

from mlm_jax.config import defaults as config_defaults
from mlm_jax.training.resolve import resolve
from mlm_jax.training.trainer import Trainer

VOCAB = types.SimpleNamespace(pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4, vocab_size=512)
VOCAB.special_ids = (0, 1, 2, 3, 4)


def small_config(mesh, microbatches=1, dropout=0.1):
    c = config_defaults.base_config()
    c.model.num_layers = 2
    c.model.hidden_size = 64
    c.model.num_heads = 4
    c.model.intermediate_size = 128
    c.model.vocab_size = VOCAB.vocab_size
    c.model.dropout_rate = dropout
    c.model.attention_dropout_rate = dropout
    c.data.seq_len = 32
    c.train.batch_size = 16
    c.train.num_steps = 10
    c.train.warmup_steps = 1
    c.train.microbatches = microbatches
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    return c


def synthetic_batch(step, batch=16, length=32):
    rng = np.random.default_rng(step)
    tokens = rng.integers(5, VOCAB.vocab_size, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, size=batch)
    document_ids = np.zeros((batch, length), np.int32)
    for i, n in enumerate(lengths):
        cut = rng.integers(2, n - 1)
        document_ids[i, :cut] = 1
        document_ids[i, cut:n] = 2
        tokens[i, n:] = VOCAB.pad_id
        tokens[i, 0] = VOCAB.cls_id
        tokens[i, cut - 1] = VOCAB.sep_id
        tokens[i, n - 1] = VOCAB.sep_id
    maskable = ~np.isin(tokens, VOCAB.special_ids)
    word_starts = rng.random((batch, length)) < 0.7
    return {
        "tokens": tokens,
        "document_ids": document_ids,
        "maskable": maskable,
        "word_starts": word_starts,
        "example_ids": np.arange(step * batch, (step + 1) * batch, dtype=np.int32),
        "epochs": np.zeros(batch, np.int32),
    }


def small_trainer(mesh, devices=None, model=None, **kw):
    """Trainer of small_config on the first devices (or `devices`), config.model updated."""
    config = small_config(mesh, **kw)
    config.model.update(model or {})
    devices = devices if devices is not None else jax.devices()[: int(np.prod(mesh))]
    return Trainer(small_run(config, len(devices)), devices=devices)


def small_run(config, num_devices: int = 1):
    """The RunSpec of a small_config on `num_devices`, with the synthetic vocabulary."""
    return resolve(config, num_devices=num_devices).with_vocab(VOCAB)


def run(mesh, num_steps=3, **kw):
    trainer = small_trainer(mesh, **kw)
    state = trainer.new_state()
    losses = []
    with trainer.activate():
        for step in range(num_steps):
            state, metrics = trainer.train_step(state, trainer.global_batch(synthetic_batch(step)))
            losses.append(float(metrics["loss"]))
    params = jax.device_get(state.params)
    flat = {
        jax.tree_util.keystr(path): np.asarray(leaf).ravel().tolist()
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    return {"losses": losses, "params": flat}


if __name__ == "__main__":
    # One run's arguments, or a list of them: one process start (JAX's import, the device
    # setup) then serves every run, each printed as one JSON line in order.
    runs = json.loads(sys.argv[1])
    for args in runs if isinstance(runs, list) else [runs]:
        print(json.dumps(run(tuple(args.pop("mesh")), **args)), flush=True)

"""resolve(config) -> RunSpec (training/resolve.py, spec.py) and the checks that span sections
(training/checks.py), without building anything: every field lands where the loop reads it, and
each refusal is one line naming the key, the value and what was expected.
"""

import numpy as np
import pytest

from mlm_jax.config import defaults
from mlm_jax.config.errors import ConfigError
from mlm_jax.data.tokenizer import load_tokenizer
from mlm_jax.training import checks
from mlm_jax.training.resolve import resolve
from mlm_jax.training.spec import RunSpec, TrainSpec
from tests.test_data_loader import VOCAB


def small_config():
    c = defaults.base_config()
    c.model.num_layers, c.model.hidden_size, c.model.num_heads = 2, 64, 4
    c.model.intermediate_size = 128
    c.data.seq_len = 64
    c.train.batch_size, c.eval.batch_size = 8, 8
    return c


def resolved(config, *, devices=1, local=None, hosts=1) -> RunSpec:
    return resolve(config, num_devices=devices, local_devices=local or devices, num_hosts=hosts)


def refusal(config, **where) -> str:
    with pytest.raises(ValueError) as e:
        resolved(config, **where)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_every_loop_field_lands_where_the_loop_reads_it():
    c = small_config()
    c.train.num_steps, c.train.batch_size, c.train.microbatches = 777, 12, 3
    c.train.nan_policy = "skip"
    c.log.every_steps, c.eval.every_steps, c.eval.num_batches = 7, 11, 5
    c.eval.batch_size, c.checkpoint.every_steps, c.checkpoint.keep = 6, 13, 4
    assert resolved(c).train == TrainSpec(
        num_steps=777, batch_size=12, microbatches=3, nan_policy="skip", log_every=7,
        eval_every=11, eval_batches=5, eval_batch_size=6, checkpoint_every=13, checkpoint_keep=4,
    )  # fmt: skip


def test_the_sections_are_resolved_from_their_keys():
    c = small_config()
    c.seed, c.model.init_from, c.train.b2 = 5, "/some/run", 0.95
    run = resolved(c, devices=4)
    assert (run.seed, run.init_from, run.optimizer.b2) == (5, "/some/run", 0.95)
    assert (run.model.hidden_size, run.data.seq_len, run.mesh.shape) == (64, 64, (4, 1, 1))
    assert run.tokens_per_step == 8 * 64
    assert run.masking.ratio == c.masking.ratio and run.eval_masking.ratio == c.eval.mask_ratio
    hash(run)  # jitted functions close over it


def test_own_masking_is_the_runs_only_where_it_differs_from_evals():
    c = small_config()
    assert resolved(c).own_masking is None
    c.masking.ratio = 0.4
    assert resolved(c).own_masking.ratio == 0.4


def test_with_vocab_takes_the_tokenizers_size_and_ids():
    tokenizer = load_tokenizer(VOCAB)
    run = resolved(small_config()).with_vocab(tokenizer)
    assert run.model.vocab_size == tokenizer.vocab_size == 30522
    assert run.model.pad_id == tokenizer.pad_id
    c = small_config()
    c.model.vocab_size = 100
    with pytest.raises(ValueError, match=r"^config.model.vocab_size=100 is smaller than"):
        resolved(c).with_vocab(tokenizer)


@pytest.mark.parametrize(
    "key, value, expected",
    [("train.num_steps", 0, "an integer >= 1"), ("train.nan_policy", "ignore", "one of stop, skip"),
     ("log.every_steps", -1, "an integer >= 0"), ("eval.num_batches", 0, "an integer >= 1"),
     ("checkpoint.keep", 0, "an integer >= 1"), ("seed", -1, "an integer >= 0")],
)  # fmt: skip
def test_a_bad_loop_field_is_one_line_naming_it(key, value, expected):
    c = small_config()
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = value
    assert refusal(c) == f"config.{key}={value!r}: expected {expected}"


@pytest.mark.parametrize(
    "change, where, message",
    [({"train.batch_size": 6}, {"devices": 4},
      "config.train.batch_size=6 must be a positive multiple of the data-parallel size 4"),
     ({"eval.batch_size": 6}, {"devices": 4},
      "config.eval.batch_size=6 must be a positive multiple of the data-parallel size 4"),
     ({"train.batch_size": 9, "eval.batch_size": 9}, {"hosts": 2, "devices": 1},
      "config.train.batch_size=9 must divide by the number of hosts 2"),
     ({"train.microbatches": 3}, {},
      "config.train.microbatches=3 must divide the per-shard batch 8"),
     ({"data.seq_len": 600}, {},
      "config.data.seq_len=600 exceeds config.model.max_position_embeddings=512"),
     ({"model.arch": "modernbert", "model.local_window": 200, "model.global_every": 2}, {},
      "config.model.local_window=200 covers every 64-token row"),
     ({"mesh.data": 1, "mesh.tensor": 8, "model.num_heads": 4}, {"devices": 8},
      "config.model.num_heads=4 must divide by 8, the mesh axes tensor"),
     ({"mesh.data": 2, "mesh.tensor": 2}, {"devices": 4, "local": 1, "hosts": 4},
      "config.mesh: the axes the batch is not split over ({'tensor': 2}) hold 2 devices"),
     ({"masking.ratio": 0.001, "masking.min_predictions": 0}, {},
      "config.masking.ratio=0.001 selects round(0.001 x 62) = 0 of the 62 maskable tokens")],
)  # fmt: skip
def test_the_checks_that_span_sections(change, where, message):
    c = small_config()
    for key, value in change.items():
        section, name = key.split(".")
        c[section][name] = value
    found = refusal(c, **where)
    assert found.startswith(message), found
    with pytest.raises(ConfigError):
        resolved(c, **where)


def test_a_tensor_group_within_one_host_is_accepted():
    c = small_config()
    c.mesh.data, c.mesh.tensor = 2, 2
    resolved(c, devices=4, local=2, hosts=2)


def _batch(maskable):
    tokens = np.full(maskable.shape, 1000, np.int32)
    return {"tokens": tokens, "maskable": maskable}


def test_held_out_batches_with_nothing_to_mask_are_refused():
    run = resolved(small_config()).with_vocab(load_tokenizer(VOCAB))
    rows = np.zeros((8, 64), bool)
    with pytest.raises(ConfigError, match=r"hold no token the eval masking"):
        checks.check_eval_batches(run, [_batch(rows)] * 2)
    rows[3, 5] = True  # one eligible token: min_predictions=1 selects it
    checks.check_eval_batches(run, [_batch(rows)])

"""Parameter and optimizer memory per device, estimated before anything is allocated: equal to
the bytes of a real initialised model and Adam state, refusing an impossible config in one line
before compiling (or training a tokenizer), and shown by --print_config."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlm_jax.config.errors import ConfigError
from mlm_jax.models.bert import BertMLM
from mlm_jax.training import memory, optim
from mlm_jax.training import run as train
from tests.configs import small_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nbytes(tree):
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree))


def test_the_estimate_is_the_bytes_of_a_real_model_and_its_adam_state(tmp_path):
    config = small_run_config(str(tmp_path / "unused"))
    run = train.resolve(config)
    found = memory.estimate(run, vocab_size=512)
    spec = train.resolve(config).model
    spec = type(spec)(**{**spec.__dict__, "vocab_size": 512})
    tokens = jnp.zeros((1, 64), jnp.int32)
    init = jax.jit(BertMLM(spec).init)  # (one program: eager, op by op, took ~8 s)
    params = nn.unbox(init(jax.random.key(0), tokens, tokens[:, :8])["params"])
    adam = jax.jit(optim.make_optimizer(run.optimizer)[0].init)(params)  # real Adam moments
    assert found.params == nbytes(params)
    assert found.optimizer == nbytes(adam) >= 2 * found.params  # two moments per parameter
    assert 0 < found.needed < found.available
    assert found.describe().startswith("memory per device: parameters 0.00 GiB + optimizer")


def test_a_model_no_device_holds_is_one_line_before_anything_is_built(data_dir, tmp_path):
    config = small_run_config(data_dir)
    config.model.num_layers, config.model.hidden_size = 400, 8192
    config.model.num_heads, config.model.intermediate_size = 64, 32768
    with pytest.raises(ConfigError) as info:
        train.check(config, str(tmp_path / "run"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the model (model.num_layers=400, model.hidden_size=8192, ")
    assert "optimizer state alone, more than the" in message
    assert not (tmp_path / "run").exists()


def _main(*args):
    return subprocess.run(
        [sys.executable, "-m", "mlm_jax.main", "--config=configs/tiny.py", *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_billion_token_vocabulary_is_refused_not_a_native_abort(tmp_path):
    """Training such a tokenizer aborted in a native allocation (exit 134); the vocabulary the
    config asks for is the estimate's upper bound, so it stops before training one."""
    done = _main(f"--workdir={tmp_path / 'run'}", "--config.data.vocab_size=1000000000")
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.vocab_size=1000000000) needs" in errors[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_print_config_shows_the_estimate():
    done = _main("--print_config")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "memory per device: parameters " in done.stdout

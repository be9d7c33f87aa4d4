"""Tools that read a run's parameters (hf export, fill_mask, fine-tuning, init_from) through
checkpoint.load_trained check them against the fingerprint saved with them: a damaged or
truncated checkpoint is one line naming it, never a silently different model."""

import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mlm_jax.training import checkpoint
from tests.test_checkpoint import replicated  # noqa: F401 - the fixture

KERNEL = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)


@pytest.fixture
def run(tmp_path, replicated):  # noqa: F811 - the fixture imported above
    workdir = str(tmp_path / "run")
    config = ml_collections.ConfigDict({"train": {"num_steps": 1}, "seed": 0})
    manager = checkpoint.make_manager(workdir, keep=1)
    state = {"params": {"dense": {"kernel": jnp.asarray(KERNEL)}}, "step": jnp.asarray(1)}
    checkpoint.save(manager, 1, state, {"next_batch": 1}, config, replicated)
    checkpoint.wait_until_finished(manager, 1)
    manager.close()
    return workdir


def largest_state_file(workdir):
    state_dir = os.path.join(workdir, "checkpoints", "1", "state")
    found = [os.path.join(r, n) for r, _, ns in os.walk(state_dir) for n in ns]
    return max(found, key=os.path.getsize)


def test_an_intact_checkpoint_reads_back(run):
    params, _ = checkpoint.load_trained(run)
    np.testing.assert_array_equal(params["dense"]["kernel"], KERNEL)


def test_flipped_parameter_bytes_are_one_line_naming_the_checkpoint(run):
    path = largest_state_file(run)  # the kernel's 256 KiB are nearly all of it
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    step_dir = os.path.join(run, "checkpoints", "1")
    with pytest.raises(ValueError, match=f"^{step_dir}: damaged checkpoint .*'kernel'"):
        checkpoint.load_trained(run)


def test_a_truncated_checkpoint_is_one_line_naming_it(run):
    path = largest_state_file(run)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    step_dir = os.path.join(run, "checkpoints", "1")
    with pytest.raises(ValueError, match=f"^{step_dir}: the checkpoint does not read") as info:
        checkpoint.load_trained(run)
    assert "\n" not in str(info.value)

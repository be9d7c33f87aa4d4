"""training/checkpoint.py on its own, with a tiny state on one CPU device: what is saved comes
back (state, data position, config), the fingerprint is the checksum numpy computes, a damaged
newest step is set aside for the one before, and write failures are one line naming the step.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mlm_jax.training import checkpoint


@pytest.fixture(scope="module")
def replicated():
    return NamedSharding(jax.make_mesh((1,), ("data",)), P())


def make_state(step: int):
    rng = np.random.default_rng(step)
    return {
        "params": {"dense": {"kernel": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}},
        "opt": jnp.asarray(rng.normal(size=(7,)), jnp.bfloat16),
        "step": jnp.asarray(step, jnp.int32),
    }


def abstract(state, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def numpy_checksums(x) -> list[int]:
    """[sum, sum of bits x (i * 2654435761 + 1)] of the array's bits, modulo 2**32."""
    x = np.asarray(x)
    bits = x.view({4: np.uint32, 2: np.uint16}[x.dtype.itemsize]).astype(np.uint64).ravel()
    weights = (np.arange(bits.size, dtype=np.uint64) * 2654435761 + 1) % 2**32
    return [int(bits.sum() % 2**32), int((bits * weights % 2**32).sum() % 2**32)]


def test_the_fingerprint_is_the_checksum_of_every_leafs_bits(replicated):
    state = make_state(3)
    found = checkpoint.fingerprint(state, replicated)
    assert found == {
        "['opt']": numpy_checksums(state["opt"]),
        "['params']['dense']['kernel']": numpy_checksums(state["params"]["dense"]["kernel"]),
        "['step']": numpy_checksums(state["step"]),
    }
    flipped = np.asarray(state["params"]["dense"]["kernel"]).copy()
    flipped.view(np.uint32)[1, 2] ^= 1  # one bit
    state["params"]["dense"]["kernel"] = jnp.asarray(flipped)
    assert checkpoint.fingerprint(state, replicated) != found


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, replicated):
    """A workdir with steps 1, 2, 3 saved (keep=2: 2 and 3 stay)."""
    workdir = str(tmp_path_factory.mktemp("ckpt") / "run")
    config = ml_collections.ConfigDict({"train": {"num_steps": 3}, "seed": 4})
    manager = checkpoint.make_manager(workdir, keep=2)
    for step in (1, 2, 3):
        data = {"next_batch": 10 * step}
        checkpoint.save(manager, step, make_state(step), data, config, replicated)
    checkpoint.wait_until_finished(manager, 3)
    manager.close()
    return workdir, config


def test_a_saved_step_comes_back_whole(saved_run, replicated):
    workdir, config = saved_run
    assert checkpoint.latest_step(workdir) == 3
    assert checkpoint.unfinished_writes(workdir) == []
    manager = checkpoint.make_manager(workdir, read_only=True)
    assert sorted(manager.all_steps()) == [2, 3]
    for step in (2, 3):
        state, data = checkpoint.restore(
            manager, step, abstract(make_state(0), replicated), replicated
        )
        jax.tree.map(np.testing.assert_array_equal, state, make_state(step))
        assert data == {"next_batch": 10 * step}
    assert checkpoint.saved_config(workdir).to_dict() == config.to_dict()
    params, loaded_config = checkpoint.load_trained(workdir, step=2)
    assert isinstance(params["dense"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(
        params["dense"]["kernel"], make_state(2)["params"]["dense"]["kernel"]
    )
    assert loaded_config.to_dict() == config.to_dict()


def _flip_largest_file(step_dir):
    found = [
        os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state")) for n in ns
    ]
    path = max(found, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(16)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_a_damaged_newest_step_is_set_aside_for_the_one_before(
    saved_run, tmp_path, replicated, caplog
):
    import shutil

    workdir = str(tmp_path / "run")
    shutil.copytree(saved_run[0], workdir)
    _flip_largest_file(os.path.join(workdir, "checkpoints", "3"))
    manager = checkpoint.make_manager(workdir, keep=2)
    with caplog.at_level("WARNING"):
        found = checkpoint.restore_newest_intact(
            manager, abstract(make_state(0), replicated), replicated
        )
    step, state, data = found
    assert (step, data) == (2, {"next_batch": 20})
    jax.tree.map(np.testing.assert_array_equal, state, make_state(2))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3.damaged"]
    assert "the checkpoint of step 3 is damaged or incomplete" in caplog.text
    manager.close()


def test_a_half_written_step_is_named_and_not_the_latest(tmp_path):
    workdir = str(tmp_path)
    os.makedirs(os.path.join(workdir, "checkpoints", "7.orbax-checkpoint-tmp-1234", "state"))
    os.makedirs(os.path.join(workdir, "checkpoints", "8", "state"))  # no commit marker
    assert checkpoint.unfinished_writes(workdir) == ["7.orbax-checkpoint-tmp-1234", "8"]
    assert checkpoint.latest_step(workdir) is None


def test_an_unwritable_workdir_is_one_line_before_anything_runs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^workdir .*: cannot write to .*file") as e:
        checkpoint.check_writable(str(tmp_path / "file" / "run"))
    assert "\n" not in str(e.value)
    checkpoint.check_writable(str(tmp_path / "ok"))
    assert not os.path.exists(tmp_path / "ok")  # the probe's folders go again


def test_saved_config_falls_back_to_config_json(tmp_path):
    assert checkpoint.saved_config(str(tmp_path)) is None
    (tmp_path / "config.json").write_text(json.dumps({"seed": 1}))
    assert checkpoint.saved_config(str(tmp_path)).seed == 1
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: not the JSON config this project writes"):
        checkpoint.saved_config(str(tmp_path))


def test_a_failed_save_names_its_step_and_the_last_complete_one():
    class Manager:
        directory = "/runs/a/checkpoints"

        def latest_step(self):
            return 40

        def check_for_errors(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(checkpoint.CheckpointWriteError) as e:
        checkpoint.check_saved(Manager(), 50)
    assert str(e.value) == (
        "could not write the checkpoint of step 50 to /runs/a/checkpoints (OSError: [Errno 28] "
        "No space left on device); the last complete checkpoint is step 40"
    )


def test_the_iterator_state_round_trips_as_json():
    saved = checkpoint.IteratorState({"next_batch": 5, "seed": 1})
    restored = checkpoint.IteratorState()
    restored.set_state(saved.get_state())
    assert restored.state == {"next_batch": 5, "seed": 1}

"""The train and eval steps compile for a Cloud TPU slice, v5e:2x2, on this CPU (XLA's TPU
compiler from libtpu; no TPU): ModernBERT and BERT, a data mesh and an fsdp x tensor mesh,
every masking strategy. A sharding the TPU compiler rejects, or an op it cannot lower, fails
here instead of on a rented slice. Per-chip memory must stay within PEAK_BOUND, and each
chip's arguments must be the shards the mesh gives it (JAX's shard shapes, summed here, plus
the padding of TPU's tiled layouts).

Default run: three cases, which with the last test cover both families, both meshes and the
four strategies (BERT on the data mesh with uniform masking is that test's train step, which
TPU's compiler sharded, lowered and scheduled before it found the batch too large); the other
thirteen combinations (a minute each) are marked exhaustive: `pytest --exhaustive` runs them.
Compiled as a run compiles them (XLA's lower optimization efforts halve the compile time but
keep ~15x the temporaries, so the memory they report is not a run's).
"""

import math
import os
import subprocess
import sys

import pytest

from mlm_jax.estimate.tpu import libtpu_installed

pytestmark = pytest.mark.skipif(
    not libtpu_installed(), reason="libtpu not installed (pip install -r requirements-test.txt)"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5e:2x2"
CONFIGS = {"bert": "configs/tiny.py", "modernbert": "configs/modernbert.py"}  # (tiny)
MESHES = {"data": (4, 1, 1), "fsdp_tensor": (1, 2, 2)}  # (data, fsdp, tensor)
STRATEGIES = ("uniform", "whole_word", "span", "pmi")
DEFAULT = {  # (bert, data, uniform): test_print_config_reports_a_batch_too_large_...
    ("bert", "fsdp_tensor"): "pmi",
    ("modernbert", "data"): "span",
    ("modernbert", "fsdp_tensor"): "whole_word",
}
# Tiny configs: ~2M parameters (f32 + Adam: ~25 MB unsharded), 32 x 128 tokens a step.
PEAK_BOUND = 64 * 2**20  # bytes per chip, of a v5e's 16 GiB (they need ~30-45 MiB)


def _combinations():
    for family in CONFIGS:
        for mesh in MESHES:
            for strategy in STRATEGIES:
                rest = DEFAULT.get((family, mesh)) != strategy
                marks = [pytest.mark.slow, pytest.mark.exhaustive] if rest else []
                yield pytest.param(
                    family, mesh, strategy, marks=marks, id=f"{family}-{mesh}-{strategy}"
                )


def _config(family: str, mesh: str, strategy: str):
    from mlm_jax.config.files import load_config_file

    config = load_config_file(CONFIGS[family])
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = MESHES[mesh]
    config.masking.strategy = strategy
    if strategy == "pmi":
        config.masking.pmi_vocab = "/pmi-vocab-never-read-by-a-compile"
    return config


def _shard_bytes(tree) -> int:
    """What each chip holds of a tree of sharded ShapeDtypeStructs, from JAX's shard shapes."""
    import jax

    return sum(
        math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
    )


@pytest.fixture(scope="module")
def tpu():
    from mlm_jax.estimate.tpu import tpu_slice

    return tpu_slice(TOPOLOGY)


@pytest.mark.parametrize("family,mesh,strategy", list(_combinations()))
def test_train_and_eval_steps_compile_for_a_v5e_slice(tpu, family, mesh, strategy):
    from mlm_jax.estimate.memory import Memory
    from mlm_jax.estimate.tpu import compile_eval_step
    from mlm_jax.training.synthetic import abstract_batch, compile_train_step

    trainer, train, _ = compile_train_step(_config(family, mesh, strategy), list(tpu.devices))
    eval_name = "eval_own" if "eval_own" in trainer.eval_steps else "eval"
    evaluate = compile_eval_step(trainer, eval_name)
    assert trainer.run.masking.strategy == strategy
    for compiled in (train, evaluate):
        peak = Memory.of(compiled).peak
        assert peak <= PEAK_BOUND, f"{peak / 2**20:.1f} MiB per chip"
    # Each chip holds its shards of the state and batch; TPU layouts pad small arrays to
    # tiles (an f32[768] takes 1024), 15-25 % more for these tiny models. A state left whole
    # on an fsdp x tensor mesh would hold 4x its shards.
    batch = abstract_batch(trainer, trainer.run.train.batch_size)
    shards = _shard_bytes(trainer.abstract_state) + _shard_bytes(batch)
    assert shards <= Memory.of(train).arguments <= 1.5 * shards


def test_print_config_reports_a_batch_too_large_for_a_v5e_slice_as_not_fitting():
    """configs/tiny.py at batch 65536 on v5e:2x2 is 16384 rows a chip; the attention
    probabilities the backward keeps, f32 [rows, 4 heads, 128, 128] in each of 4 layers, are
    16 GiB alone, over a v5e's 16 GiB. --print_config says it does not fit (XLA's TPU
    compiler refuses the step here), and by how much, without a TPU."""
    done = subprocess.run(
        [
            sys.executable, "-m", "mlm_jax.main", "--config=configs/tiny.py", "--print_config",
            "--tpu_topology=v5e:2x2", "--tpu_largest_batch=false",
            "--config.train.batch_size=65536",
        ],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    verdict = done.stdout.strip().splitlines()[-1]
    assert verdict.startswith("does not fit: "), done.stdout[-2000:]
    needed = float(verdict.split()[3])  # "does not fit: N GiB per chip, ..."
    assert needed > 16.0

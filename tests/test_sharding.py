"""The same train steps on 1 device and on several 8-device meshes give the same numbers.

The single-device run is the oracle: sharding must change where the work happens, never
the result. Each run is a subprocess so XLA_FLAGS can fake 8 CPU devices before JAX starts.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlm_jax.training import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _eight_cpu_devices_env(**extra):
    """Environment of a subprocess whose JAX sees 8 CPU devices and imports this checkout."""
    return dict(
        os.environ,
        XLA_FLAGS=f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count=8",
        PYTHONPATH=ROOT,
        **extra,
    )


def _last_json_line(*python_args):
    """The JSON object a Python subprocess on 8 CPU devices printed last."""
    out = subprocess.run(
        [sys.executable, *python_args],
        env=_eight_cpu_devices_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


MODERNBERT = dict(arch="modernbert", num_layers=3, global_every=2, local_window=8)

# Every sharded run the tests compare, made in one 8-device subprocess (one JAX start-up). Each
# costs a sharded compile (~15 s on 2 cores): the default set covers every mesh axis for both
# families, the fused and the three-matmul q/k/v and microbatching; EXHAUSTIVE adds the other
# layouts (pytest --exhaustive).
RUNS = {
    "oracle": dict(mesh=[1, 1, 1]),
    "2x2x2": dict(mesh=[2, 2, 2]),
    "1x4x2 unfused qkv": dict(mesh=[1, 4, 2], model={"fused_qkv": False}),
    "whole batch": dict(mesh=[2, 1, 1], dropout=0.0),
    "4 microbatches": dict(mesh=[2, 1, 1], dropout=0.0, microbatches=4),
    **{  # ModernBERT: global layers 0 and 2, layer 1 a window of +-4 in blocks, dropout on
        f"modernbert {name}": dict(mesh=mesh, model=MODERNBERT)
        for name, mesh in (("oracle", [1, 1, 1]), ("2x2x2", [2, 2, 2]), ("1x4x2", [1, 4, 2]))
    },
    "8x1x1": dict(mesh=[8, 1, 1]),
    "1x4x2": dict(mesh=[1, 4, 2]),
    "2x2x2 unfused qkv": dict(mesh=[2, 2, 2], model={"fused_qkv": False}),
}
EXHAUSTIVE = {"8x1x1", "1x4x2", "2x2x2 unfused qkv", "modernbert 1x4x2"}


@pytest.fixture(scope="module")
def runs(request):
    """name -> the losses and parameters sharded_worker.py printed for RUNS[name]."""
    every = request.config.getoption("--exhaustive")
    names = [name for name in RUNS if every or name not in EXHAUSTIVE]
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "sharded_worker.py"),
            json.dumps([RUNS[name] for name in names]),
        ],
        env=_eight_cpu_devices_env(),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-len(names) :]
    return dict(zip(names, map(json.loads, lines)))


def _layouts(*names, prefix=""):
    """pytest params of RUNS names, those in EXHAUSTIVE marked so."""
    marked = [pytest.mark.exhaustive]
    return [pytest.param(n, marks=marked if prefix + n in EXHAUSTIVE else [], id=n) for n in names]


def _assert_close(a, b, rtol):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=rtol)
    assert a["params"].keys() == b["params"].keys()
    for name in a["params"]:
        x, y = np.asarray(a["params"][name]), np.asarray(b["params"][name])
        scale = max(np.abs(x).max(), 1e-12)
        assert np.abs(x - y).max() / scale <= rtol, name


@pytest.mark.slow
@pytest.mark.parametrize("mesh", _layouts("2x2x2", "8x1x1", "1x4x2"))
def test_sharded_steps_match_single_device(runs, mesh):
    _assert_close(runs[mesh], runs["oracle"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", _layouts("2x2x2", "1x4x2", prefix="modernbert "))
def test_modernbert_sharded_steps_match_single_device(runs, mesh):
    _assert_close(runs[f"modernbert {mesh}"], runs["modernbert oracle"], rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", _layouts("1x4x2 unfused qkv", "2x2x2 unfused qkv"))
def test_q_k_v_as_three_matmuls_match_the_fused_single_device_run(runs, layout):
    # model.fused_qkv changes how q, k, v are computed (and sharded), not the function.
    _assert_close(runs[layout], runs["oracle"], rtol=1e-5)


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(runs):
    # Without dropout the microbatch split is the only difference: the mean loss gradient
    # summed over microbatches equals the one of the whole batch.
    _assert_close(runs["4 microbatches"], runs["whole batch"], rtol=1e-5)


class _Mesh(dict):
    logical_axis_rules = ()


@pytest.mark.parametrize(
    "sizes, devices, expected",
    [((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 2), 8, (2, 2, 2)), ((1, 4, 2), 8, (1, 4, 2))],
)
def test_mesh_shape_resolves_minus_one(sizes, devices, expected):
    mesh = dict(zip(sharding.MESH_AXES, sizes))
    assert sharding.mesh_shape(mesh, devices) == expected


@pytest.mark.parametrize("sizes", [(3, 1, 1), (-1, 3, 1), (-1, -1, 1), (0, 1, 1)])
def test_mesh_that_does_not_fit_the_devices_is_rejected(sizes):
    mesh = dict(zip(sharding.MESH_AXES, sizes))
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.mesh_shape(mesh, 8)


@pytest.mark.slow
def test_train_step_compiles_without_replicating_whole_tensors_on_a_3_axis_mesh():
    """XLA's SPMD partitioner warns when the only reshard it finds replicates a whole tensor
    (the global [B,L,E] activations on every device, at pod scale out of memory). The embedding
    lookup into a table split on `embed` did that on data x fsdp x tensor meshes."""
    # conftest quiets XLA's warnings; this one must show.
    env = _eight_cpu_devices_env(TF_CPP_MIN_LOG_LEVEL="0")
    small = ["--config.model.num_layers=2", "--config.train.batch_size=8"]
    small += ["--config.data.seq_len=32", "--config.mesh.data=2", "--config.mesh.fsdp=2"]
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "benchmark.py"),
            "--config=" + os.path.join(ROOT, "configs", "tiny.py"),
            "--compile_scaling",  # compile only, from abstract shapes
            "--config.mesh.tensor=2",
            *small,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Involuntary full rematerialization" not in out.stderr


_MOMENTS_PER_DEVICE = """
import json, jax
from tests import sharded_worker

trainer = sharded_worker.small_trainer((2, 4, 1))
state = trainer.new_state()
device = jax.devices()[0]

def bytes_on(tree):  # what this device holds of every array in the tree
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )

params = bytes_on(state.params)
print(json.dumps({"params": params, "opt_state": bytes_on(state.opt_state),
                  "whole_params": sum(x.nbytes for x in jax.tree.leaves(state.params))}))
"""


@pytest.mark.slow
def test_fsdp_shards_adams_moments_like_the_parameters():
    """On a data=2 x fsdp=4 mesh a device holds a quarter of the parameters, and its share of
    the AdamW state is two such quarters (mu and nu) plus scalar counts, not two whole copies."""
    held = _last_json_line("-c", _MOMENTS_PER_DEVICE)
    assert held["params"] < 0.3 * held["whole_params"]  # fsdp=4 (biases and norms replicate)
    assert held["opt_state"] == pytest.approx(2 * held["params"], abs=64)

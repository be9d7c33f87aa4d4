"""Two processes on localhost (2 fake CPU devices each, gloo collectives) train like one
process with 4 devices, read disjoint halves of every batch, and leave a checkpoint that a
1-process run resumes.

The oracle is the 1-process, 4-device run of the same config and data: the same global
batches, masks and dropout, so the losses agree to float32 reduction-order noise.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_fault_tolerance import run_main, write_config_file

from mlm_jax.training import checkpoint, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_STEPS = 6
CKPT_EVERY = 3
VOCAB_SIZE = 500
BASE = ("log.every_steps=1", f"checkpoint.every_steps={CKPT_EVERY}", "eval.every_steps=0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _losses(workdir) -> dict[int, float]:
    return {e["step"]: e["train/loss"] for e in metrics.read_metrics(workdir) if "train/loss" in e}


def _recorded(path) -> dict[int, list[int]]:
    with open(path) as f:
        return {r["batch"]: r["example_ids"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """The 1-process/4-device oracle, the 2-process run, and a 1-device resume of the latter."""

    root = tmp_path_factory.mktemp("multihost")
    config_file = write_config_file(str(root), data_dir, num_steps=NUM_STEPS)
    # A vocabulary size no other test caches: the processes of the 2-process run make it.
    overrides = (*BASE, "mesh.data=-1", f"data.vocab_size={VOCAB_SIZE}")

    two = str(root / "two_processes")
    address = f"localhost:{_free_port()}"
    procs = [
        run_main(
            config_file,
            two,
            *overrides,
            devices=2,
            hooks={"record": f"{two}.ids"},
            extra_flags=(
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            wait=False,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=400)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out

    vocab_dir = str(root / "vocab")  # the 2-process run's vocabulary, before its workdir moves
    shutil.copytree(os.path.join(two, "tokenizer"), vocab_dir)
    one = str(root / "one_process")
    done = run_main(
        config_file,
        one,
        *overrides,
        devices=4,
        hooks={"record": f"{one}.ids"},
    )
    assert done.returncode == 0, done.stderr

    # Resume the 2-process checkpoint of step 3 in one process with one device.
    resumed = str(root / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    for name in ("config.json", "metrics.jsonl"):
        with open(os.path.join(two, name)) as src, open(os.path.join(resumed, name), "w") as dst:
            dst.write(src.read())
    os.rename(
        os.path.join(two, "checkpoints", str(CKPT_EVERY)),
        os.path.join(resumed, "checkpoints", str(CKPT_EVERY)),
    )
    os.rename(os.path.join(two, "tokenizer"), os.path.join(resumed, "tokenizer"))
    done = run_main(config_file, resumed, *overrides, devices=1)
    assert done.returncode == 0, done.stderr
    return {
        "one": one,
        "two": two,
        "resumed": resumed,
        "resume_log": done.stderr,
        "host_logs": outputs,
        "vocab": vocab_dir,
    }


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(runs):
    one, two = _losses(runs["one"]), _losses(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, NUM_STEPS + 1))
    # Same global batches and keys; only the order of float32 sums may differ (gloo vs local).
    np.testing.assert_allclose([two[s] for s in one], list(one.values()), rtol=2e-5)


@pytest.mark.slow
def test_hosts_build_their_own_vocabulary_and_it_is_the_same(runs):
    trained = f"training a {VOCAB_SIZE}-token WordPiece vocabulary"
    host0, host1 = runs["host_logs"]
    # Each host makes its own (unless the other's is already in the shared cache): no broadcast.
    assert trained in host0 or trained in host1
    vocab = open(os.path.join(runs["vocab"], "vocab.txt")).read().split("\n")
    assert len(vocab) - (vocab[-1] == "") == VOCAB_SIZE
    for name in ("vocab.txt", "tokenizer.json"):
        with open(os.path.join(runs["vocab"], name), "rb") as a:
            with open(os.path.join(runs["one"], "tokenizer", name), "rb") as b:
                assert a.read() == b.read(), name


@pytest.mark.slow
def test_processes_read_disjoint_halves_of_each_global_batch(runs):
    oracle = _recorded(f"{runs['one']}.ids.0")
    host0, host1 = _recorded(f"{runs['two']}.ids.0"), _recorded(f"{runs['two']}.ids.1")
    assert host0.keys() == host1.keys() and set(range(NUM_STEPS)) <= set(host0)
    for batch in range(NUM_STEPS):
        assert not set(host0[batch]) & set(host1[batch]), batch
        assert host0[batch] + host1[batch] == oracle[batch], batch


@pytest.mark.slow
def test_only_process_0_writes_metrics_and_config(runs):
    two = runs["two"]
    steps = [e["step"] for e in metrics.read_metrics(two)]
    assert steps == list(range(1, NUM_STEPS + 1))  # one writer: no event twice
    assert os.path.exists(os.path.join(two, "config.json"))
    assert len(os.listdir(os.path.join(two, "tensorboard"))) == 1
    data = os.path.join(two, "checkpoints", str(NUM_STEPS), "data")
    assert sorted(os.listdir(data)) == [
        "commit_success.txt",
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(runs):
    assert f"resumed from the checkpoint of step {CKPT_EVERY}" in runs["resume_log"]
    assert "process_0-of-2.json (written by a run on another host count)" in runs["resume_log"]
    one, resumed = _losses(runs["one"]), _losses(runs["resumed"])
    assert sorted(resumed) == list(range(1, NUM_STEPS + 1))
    later = range(CKPT_EVERY + 1, NUM_STEPS + 1)
    np.testing.assert_allclose([resumed[s] for s in later], [one[s] for s in later], rtol=2e-5)
    params, _ = checkpoint.load_trained(runs["resumed"])
    assert int(checkpoint.latest_step(runs["resumed"])) == NUM_STEPS
    assert all(np.isfinite(np.asarray(v)).all() for v in _leaves(params))


def _leaves(tree):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else (v,)


_INIT_PROBE = """
import jax
from absl import flags
from mlm_jax import main

calls = []
jax.distributed.initialize = lambda *args, **kwargs: calls.append((args, kwargs))
flags.FLAGS(["main", "--config=configs/tiny.py", "--workdir=/tmp/unused"])
main._maybe_initialize_distributed()
print(len(calls))
"""


@pytest.mark.parametrize(
    "env, calls",
    [({}, 0), ({"MLM_JAX_DISTRIBUTED": "1"}, 1), ({"TPU_WORKER_HOSTNAMES": "h0,h1"}, 1)],
)
def test_cloud_tpu_pod_slices_start_jax_distributed(env, calls):
    """launch/tpu_*.yaml set MLM_JAX_DISTRIBUTED=1 on TPU slices (GCE TPU VMs do not
    set TPU_WORKER_HOSTNAMES; GKE does): either makes main call jax.distributed.initialize(),
    without arguments, which also starts the preemption service."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MLM_JAX_DISTRIBUTED", "TPU_WORKER_HOSTNAMES")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _INIT_PROBE],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(calls)

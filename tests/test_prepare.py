"""Prepared-rows stores (mlm_jax.data.prepare on Beam's DirectRunner, read by data/rows.py).

The oracle is the on-the-fly path (loader.packed_rows over the same corpus, tokenizer, seed):
a run from `rows:<dir>` must see exactly its batches, train and eval, for both packings. Shards
and Beam elements are made tiny so rows cross chunk and shard boundaries many times.
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from mlm_jax.config.errors import ConfigError
from mlm_jax.data import loader, prepare, rows
from mlm_jax.data.spec import DataSpec
from mlm_jax.training import run as train
from tests.test_data_loader import (
    VOCAB,
    assert_batches_equal,
    data,
    eval_batches,
    make_config,
    real_paragraphs,
    take,
    train_iterator,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"rows_per_shard": 7, "docs_per_chunk": 13}  # many shards, rows across chunk edges


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    path = root / "corpus.txt"
    path.write_text("\n\n".join(real_paragraphs(200)) + "\n", encoding="utf-8")
    return root, str(path)


def on_the_fly_config(corpus, packing):
    root, path = corpus
    config = make_config(path, root / "tfds", packing=packing)
    config.data.tokenizer = ""  # trained on the train split, by prepare as by a run
    config.data.vocab_size = 300
    return config


@pytest.fixture(scope="module", params=["concat", "pad"])
def store(request, corpus):
    """(on-the-fly config, the same config reading its prepared store, the store's folder)."""
    config = on_the_fly_config(corpus, request.param)
    out = str(corpus[0] / f"rows-{request.param}")
    prepare.prepare(data(config), out, **SMALL)
    from_store = on_the_fly_config(corpus, request.param)
    from_store.data.dataset = f"rows:{out}"
    return config, from_store, out


def test_store_batches_equal_the_on_the_fly_batches(store):
    config, from_store, out = store
    manifest = rows.read_manifest(out)
    assert len(manifest["splits"]["train"]["shards"]) > 3
    assert manifest["seq_len"] == config.data.seq_len
    assert manifest["packing"] == config.data.packing
    reference_tokenizer = loader.get_tokenizer(data(config))
    tokenizer = loader.get_tokenizer(data(from_store))
    assert manifest["tokenizer"]["fingerprint"] == reference_tokenizer.fingerprint()
    assert tokenizer.same_vocabulary(reference_tokenizer)
    expected = loader.packed_rows(data(config), reference_tokenizer, "train")
    assert manifest["splits"]["train"]["rows"] == len(expected)
    epoch = -(-len(expected) // config.train.batch_size) + 2  # past an epoch's end
    assert_batches_equal(
        take(train_iterator(from_store, tokenizer), epoch),
        take(train_iterator(config, reference_tokenizer), epoch),
    )
    assert_batches_equal(
        eval_batches(from_store, tokenizer), eval_batches(config, reference_tokenizer)
    )


HOST = """
import dataclasses, json, sys
import numpy as np
import grain
from mlm_jax.data import loader
from mlm_jax.data.spec import DataSpec
read = []
inner = grain.sources.ArrayRecordDataSource.__getitems__
def logged(self, keys):
    read.extend(int(k) for k in keys)
    return inner(self, keys)
grain.sources.ArrayRecordDataSource.__getitems__ = logged
spec, batch_size, seed, index, result = json.loads(sys.argv[1])
data = DataSpec(**spec)
it = loader.make_train_iterator(
    data, loader.get_tokenizer(data), batch_size=batch_size, seed=seed,
    process_index=index, process_count=2)
batches = [next(it) for _ in range(3)]
np.savez(result, read=np.asarray(read), **{
    k: np.stack([b[k] for b in batches]) for k in batches[0]})
"""


@pytest.mark.slow  # two processes, each importing the input pipeline
def test_two_processes_read_disjoint_rows_whose_union_is_the_global_batch(store):
    config, from_store, out = store
    if config.data.packing != "concat":
        pytest.skip("one packing is enough for the host split")
    spec = dataclasses.asdict(data(from_store))
    procs, results = [], []
    for index in range(2):
        result = os.path.join(os.path.dirname(out), f"host{index}.npz")
        args = json.dumps([spec, from_store.train.batch_size, from_store.seed, index, result])
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", HOST, args], cwd=REPO, text=True, stderr=subprocess.PIPE
            )
        )
        results.append(result)
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    hosts = [dict(np.load(r)) for r in results]
    tokenizer = loader.get_tokenizer(data(from_store))
    full = take(train_iterator(from_store, tokenizer), 10)
    for key in full[0]:
        union = np.concatenate([hosts[0][key], hosts[1][key]], axis=1)  # [batches, B, ...]
        np.testing.assert_array_equal(union, np.stack([b[key] for b in full[:3]]), err_msg=key)
    half = from_store.train.batch_size // 2
    ids = [set(h["example_ids"].ravel().tolist()) for h in hosts]
    assert not ids[0] & ids[1]
    for i, h in enumerate(hosts):  # a host reads its own rows of the shuffle, nothing else
        # (its prefetch threads read some of its next batches' rows too)
        ahead = {int(r) for b in full for r in b["example_ids"][i * half : (i + 1) * half]}
        assert ids[i] <= set(h["read"].tolist()) <= ahead


def check_line(config, workdir) -> str:
    with pytest.raises(ConfigError) as e:
        train.check(config, str(workdir))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_a_store_that_disagrees_with_the_config_is_one_line(store, tmp_path):
    config, from_store, out = store
    other = from_store.copy_and_resolve_references()
    other.data.seq_len = 64
    assert "config.data.seq_len=64 but the store" in check_line(other, tmp_path / "a")
    other = from_store.copy_and_resolve_references()
    other.data.packing = {"concat": "pad", "pad": "concat"}[config.data.packing]
    assert f"config.data.packing={other.data.packing!r} but" in check_line(other, tmp_path / "b")
    other = from_store.copy_and_resolve_references()
    other.data.tokenizer = VOCAB
    assert "is not the one the store" in check_line(other, tmp_path / "c")


def test_a_partly_written_store_is_one_line(store, tmp_path):
    _, from_store, out = store
    broken = str(tmp_path / "broken")
    shutil.copytree(out, broken)
    config = from_store.copy_and_resolve_references()
    config.data.dataset = f"rows:{broken}"
    manifest = rows.read_manifest(broken)
    os.remove(os.path.join(broken, manifest["splits"]["train"]["shards"][-1]))
    assert "partly written store" in check_line(config, tmp_path / "a")
    os.remove(os.path.join(broken, rows.MANIFEST))
    assert "partly written store (no manifest.json" in check_line(config, tmp_path / "b")
    shutil.copytree(out, broken, dirs_exist_ok=True)
    manifest["splits"]["heldout"]["rows"] += 1  # shards that hold fewer rows than it says
    manifest["fingerprint"] = rows.manifest_fingerprint(manifest)  # (not an edit by hand)
    with open(os.path.join(broken, rows.MANIFEST), "w") as f:
        json.dump(manifest, f)
    assert "partly written" in check_line(config, tmp_path / "c")


def test_prepare_writes_a_store_into_a_bucket(corpus, bucket):
    config = on_the_fly_config(corpus, "concat")
    manifest = prepare.prepare(data(config), "gs://b/rows", **SMALL)
    objects = bucket.objects()
    for name in manifest["splits"]["train"]["shards"] + ["manifest.json"]:
        assert f"gs://b/rows/{name}" in objects
    assert "gs://b/rows/tokenizer/tokenizer.json" in objects
    tokenizer = loader.get_tokenizer(data(config))
    assert manifest["tokenizer"]["fingerprint"] == tokenizer.fingerprint()
    assert manifest["splits"]["train"]["rows"] == len(
        loader.packed_rows(data(config), tokenizer, "train")
    )
    with pytest.raises(ValueError, match="already holds a prepared store"):
        prepare.prepare(data(config), "gs://b/rows", **SMALL)


@pytest.mark.slow  # trains: a run killed with -9 and resumed, in subprocesses
def test_kill_9_resume_from_a_store_equals_the_uninterrupted_on_the_fly_run(
    data_dir, uninterrupted_run, tmp_path
):
    """The oracle is resume_test_config's on-the-fly run (conftest): the same losses at every
    step and the same final parameters, from a store, across a kill -9 and a restart."""
    from tests.configs import resume_test_config
    from tests.test_fault_tolerance import RUNNER, assert_same_params, steps_of

    out = str(tmp_path / "rows")
    prepare.prepare(DataSpec.from_config(resume_test_config(data_dir).data), out)
    config_file = tmp_path / "rows_config.py"
    with open(os.path.join(REPO, "tests", "configs.py")) as f:
        text = f.read()
    config_file.write_text(
        text + "\n\ndef get_config():\n"
        f"    c = resume_test_config({data_dir!r})\n"
        f"    c.data.dataset = 'rows:{out}'\n    return c\n"
    )
    runner = tmp_path / "runner.py"  # mlm_jax.main with test_fault_tolerance's kill hook
    runner.write_text(RUNNER)

    def run_main(workdir, hooks=None):
        # This process's environment (its XLA flags and compilation cache, which the oracle
        # filled): the runs load the step the oracle compiled instead of compiling it again.
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "MLM_TEST_HOOKS": json.dumps(hooks or {})}
        command = [sys.executable, str(runner), f"--config={config_file}", f"--workdir={workdir}"]
        return subprocess.run(
            command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600
        )

    workdir = str(tmp_path / "killed")
    hooks = {"kill_at": 14, "kill_after": f"{workdir}/checkpoints/10"}
    killed = run_main(workdir, hooks=hooks)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_main(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in resumed.stderr
    assert steps_of(workdir) == steps_of(uninterrupted_run)
    assert_same_params(workdir, uninterrupted_run)

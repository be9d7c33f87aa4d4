"""data.prepare as a transaction (a lock, a build aside, a publish by rename) and a damaged store
refused in one line naming the file, before anything compiles."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mlm_jax.data import prepare, rows, store_transaction
from mlm_jax.data.tokenizer import load_tokenizer
from tests import test_prepare
from tests.signals_support import SignalsItselfWhileCollected
from tests.test_data_loader import VOCAB, data
from tests.test_prepare import REPO, SMALL, check_line, on_the_fly_config

corpus = test_prepare.corpus  # the same fixture, one corpus per module


@pytest.fixture(scope="module")
def store(corpus):
    """(a config reading the store, the store's folder), prepared once for the module."""
    out = str(corpus[0] / "rows")
    prepare.prepare(data(on_the_fly_config(corpus, "concat")), out, **SMALL)
    config = on_the_fly_config(corpus, "concat")
    config.data.dataset = f"rows:{out}"
    return config, out


def copy_of(store, tmp_path):
    config, out = store
    broken = str(tmp_path / "broken")
    shutil.copytree(out, broken)
    config = config.copy_and_resolve_references()
    config.data.dataset = f"rows:{broken}"
    return config, broken, rows.read_manifest(broken)


def test_a_killed_prepares_leftovers_never_mix_into_the_next_store(corpus, tmp_path):
    """A prepare killed after writing tokenizer/ (here: the vocabulary of another tokenizer),
    then run again with its own: the store holds the tokenizer its manifest names."""
    out = tmp_path / "rows"
    (out / "tokenizer").mkdir(parents=True)
    shutil.copy(VOCAB, out / "tokenizer" / "vocab.txt")
    (out / ".tmp-0123").mkdir()
    (out / "train-00000-of-00009.array_record").write_bytes(b"half")
    manifest = prepare.prepare(data(on_the_fly_config(corpus, "concat")), str(out), **SMALL)
    stored = load_tokenizer(str(out / "tokenizer"))
    assert stored.vocab_size < 1000  # the trained one (300 tokens), not MiniLM's 30,522
    assert manifest["tokenizer"]["fingerprint"] == stored.fingerprint()
    shards = set(manifest["splits"]["train"]["shards"] + manifest["splits"]["heldout"]["shards"])
    leftover = set(os.listdir(out)) - shards - {"tokenizer", "manifest.json", ".prepare.lock"}
    assert not leftover


def test_a_second_prepare_into_the_same_folder_is_refused_while_one_runs(corpus, tmp_path):
    out = str(tmp_path / "rows")
    with store_transaction._PrepareLock(out):  # what a running prepare holds
        with pytest.raises(ValueError, match=r"--out=.*: another prepare is writing this store"):
            prepare.prepare(data(on_the_fly_config(corpus, "concat")), out, **SMALL)
    assert os.listdir(out) == [".prepare.lock"]


def test_an_interrupted_prepare_publishes_nothing(corpus, tmp_path, monkeypatch):
    out = tmp_path / "rows"

    def interrupted(*_, **__):
        assert list(tmp_path.glob("*/.tmp-*/tokenizer/*"))  # it got that far
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare.beam, "Pipeline", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(data(on_the_fly_config(corpus, "concat")), str(out), **SMALL)
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(data(on_the_fly_config(corpus, "concat")), str(mine), **SMALL)
    assert os.listdir(mine) == [".prepare.lock"]  # the user's empty folder stays, empty


def test_prepare_refuses_a_folder_of_the_users_files(corpus, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files prepare did not write \(notes.txt\)"):
        prepare.prepare(data(on_the_fly_config(corpus, "concat")), str(tmp_path), **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_shard_is_one_line_naming_it(store, tmp_path, damage):
    config, broken, manifest = copy_of(store, tmp_path)
    shard = os.path.join(broken, manifest["splits"]["train"]["shards"][1])
    body = bytearray(open(shard, "rb").read())
    if damage == "flipped":
        body[len(body) // 2] ^= 0xFF
    else:
        body = body[: len(body) - 10]
    open(shard, "wb").write(bytes(body))
    message = check_line(config, tmp_path / "w")
    assert message.startswith(f"{shard}: ")


def edit_manifest(broken, edit):
    path = os.path.join(broken, rows.MANIFEST)
    manifest = json.load(open(path))
    edit(manifest)
    json.dump(manifest, open(path, "w"))
    return path


def test_a_manifest_missing_a_key_or_edited_is_one_line(store, tmp_path):
    config, broken, _ = copy_of(store, tmp_path)
    path = edit_manifest(broken, lambda m: m.pop("token_dtype"))
    assert check_line(config, tmp_path / "a").startswith(f"{path}: 'token_dtype' missing")
    shutil.copy(os.path.join(store[1], rows.MANIFEST), path)

    def edited_seq_len(manifest):
        manifest["seq_len"] = 64

    edit_manifest(broken, edited_seq_len)
    config.data.seq_len = 64  # as its edited manifest says
    assert check_line(config, tmp_path / "b").startswith(f"{path}: edited after prepare")
    edit_manifest(broken, lambda m: m.pop("fingerprint"))  # as a store from before fingerprints
    line = check_line(config, tmp_path / "c")  # record size, met on the held-out rows
    assert line.startswith(f"{broken}/heldout-00000-of")


def test_a_bad_token_dtype_names_the_manifest(store, tmp_path):
    config, broken, _ = copy_of(store, tmp_path)
    path = edit_manifest(broken, lambda m: m.update(token_dtype="int7", fingerprint=None))
    path = edit_manifest(broken, lambda m: m.update(fingerprint=rows.manifest_fingerprint(m)))
    assert check_line(config, tmp_path / "a").startswith(f"{path}: token_dtype='int7'")


PREPARE_CONFIG = """
import pathlib
from tests.test_prepare import on_the_fly_config

def get_config():
    return on_the_fly_config((pathlib.Path({root!r}), {path!r}), "concat")
"""


@pytest.mark.slow  # a prepare in a subprocess, stopped by a signal
def test_sigterm_stops_prepare_at_once_and_leaves_nothing(corpus, tmp_path):
    config_file = tmp_path / "prepare_config.py"
    config_file.write_text(PREPARE_CONFIG.format(root=str(corpus[0]), path=corpus[1]))
    out = tmp_path / "rows"
    command = [sys.executable, "-m", "mlm_jax.data.prepare", f"--config={config_file}",
               f"--out={out}", "--rows_per_shard=7", "--docs_per_chunk=13"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(out.glob(".tmp-*/tokenizer")) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        f"error: --out={out}: prepare stopped by SIGTERM; nothing was published"
    )
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the point)
def test_a_sigterm_whose_exception_was_swallowed_still_publishes_nothing(tmp_path):
    """Seen in CI: the handler's KeyboardInterrupt raised inside XLA's gc callback was ignored,
    and the stopped prepare published its store and exited 0."""
    out = str(tmp_path / "rows")
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with store_transaction.interrupts_raise(), store_transaction.transaction(out) as staging:
            with open(os.path.join(staging, rows.MANIFEST), "w") as f:
                f.write("{}")
            SignalsItselfWhileCollected()  # collected at once: the raise is lost
    assert not os.path.exists(out)

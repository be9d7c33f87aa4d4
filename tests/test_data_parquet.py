"""parquet:<glob>: the same texts as JSONL records give the same documents, rows and batches
(train and eval); files are read one record batch at a time; a bucket works as a folder does;
Beam's prepare reads it into a store; bad files are one line.

The oracle is the text: kind reading JSONL, which older tests hold to transformers' tokenizer;
the Parquet files are written by pyarrow from the same records.
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlm_jax.data import loader, prepare, sources
from mlm_jax.data.sources import parquet
from tests.test_data_loader import (
    assert_batches_equal,
    data,
    eval_batches,
    make_config,
    real_paragraphs,
    take,
    train_iterator,
)

FIELD = "body"  # not "text": data.text_field names it


def _records(n_files=2, per_file=30):
    """Records of 1-3 paragraphs (text_unit splits them), with nulls between."""
    paragraphs = iter(real_paragraphs(n_files * per_file * 2))
    files = []
    for f in range(n_files):
        records = []
        for i in range(per_file):
            k = 1 + (f + i) % 3
            records.append("\n\n".join(next(paragraphs) for _ in range(k)) if i % 7 else None)
        files.append(records)
    return files


def write_corpus(root, records_per_file, *, row_group_size=4):
    """The records as JSONL files (root/jsonl/) and as Parquet files (root/parquet/)."""
    for kind in ("jsonl", "parquet"):
        os.makedirs(root / kind, exist_ok=True)
    for f, records in enumerate(records_per_file):
        with open(root / "jsonl" / f"part-{f}.jsonl", "w", encoding="utf-8") as out:
            for r in records:
                out.write(json.dumps({FIELD: r, "id": 1} if r is not None else {"id": 2}) + "\n")
        table = pa.table({"id": list(range(len(records))), FIELD: pa.array(records, pa.string())})
        pq.write_table(table, root / "parquet" / f"part-{f}.parquet", row_group_size=row_group_size)
    return f"text:{root}/jsonl/*.jsonl", f"parquet:{root}/parquet/*.parquet"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet_corpus")
    return (root, *write_corpus(root, _records()))


def configs(corpus, **changes):
    root, as_jsonl, as_parquet = corpus
    out = []
    for dataset in (as_jsonl, as_parquet):
        config = make_config("", root / "tfds", text_field=FIELD, **changes)
        config.data.dataset = dataset
        config.data.tokenizer = ""  # trained on each corpus's train split
        config.data.vocab_size = 300
        out.append(config)
    return out


@pytest.mark.parametrize("packing", ["concat", "pad"])
def test_parquet_gives_the_batches_jsonl_gives(corpus, packing):
    as_jsonl, as_parquet = configs(corpus, packing=packing)
    jsonl_corpus = loader.load_corpus(data(as_jsonl))
    parquet_corpus = loader.load_corpus(data(as_parquet))
    assert list(parquet_corpus.train) == list(jsonl_corpus.train)
    assert list(parquet_corpus.heldout) == list(jsonl_corpus.heldout)
    assert len(parquet_corpus.train) > 60  # records were cut into paragraphs
    assert parquet_corpus.key != jsonl_corpus.key
    tokenizers = [loader.get_tokenizer(data(c)) for c in (as_jsonl, as_parquet)]
    assert tokenizers[0].same_vocabulary(tokenizers[1])
    n_rows = len(loader.packed_rows(data(as_jsonl), tokenizers[0], "train"))
    epoch = -(-n_rows // as_jsonl.train.batch_size) + 2  # past an epoch's end
    assert_batches_equal(
        take(train_iterator(as_parquet, tokenizers[1]), epoch),
        take(train_iterator(as_jsonl, tokenizers[0]), epoch),
    )
    assert_batches_equal(
        eval_batches(as_parquet, tokenizers[1]), eval_batches(as_jsonl, tokenizers[0])
    )


def test_files_are_read_one_record_batch_at_a_time(corpus, monkeypatch):
    """Only iter_batches, of the text column, BATCH_ROWS rows at a time: never a whole file."""
    root = corpus[0]
    read = []
    inner = pq.ParquetFile.iter_batches

    def logged(self, *args, **kwargs):
        for batch in inner(self, *args, **kwargs):
            read.append((kwargs["columns"], batch.num_rows))
            yield batch

    def whole(*args, **kwargs):
        raise AssertionError("a whole file was read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", logged)
    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    monkeypatch.setattr(parquet, "BATCH_ROWS", 8)
    texts = list(parquet.file_texts(str(root / "parquet" / "part-0.parquet"), FIELD))
    assert texts == [r for r in _records()[0] if r is not None]
    assert [columns for columns, _ in read] == [[FIELD]] * 4
    assert [n for _, n in read] == [8, 8, 8, 6]


def test_a_bucket_reads_as_a_folder_does(corpus, bucket, tmp_path):
    root, _, as_parquet = corpus
    for name in sorted(os.listdir(root / "parquet")):
        with open(root / "parquet" / name, "rb") as f:
            bucket.pipe(f"gs://b/corpus/{name}", f.read())
    local, remote = configs(corpus)[1], configs(corpus)[1]
    remote.data.dataset = "parquet:gs://b/corpus/*.parquet"
    remote.data.data_dir = str(tmp_path / "tfds")
    sources.check_dataset(data(remote))
    got, expected = loader.load_corpus(data(remote)), loader.load_corpus(data(local))
    assert list(got.train) == list(expected.train)
    assert list(got.heldout) == list(expected.heldout)


def test_a_parquet_corpus_prepares_into_a_store(corpus, tmp_path):
    _, as_parquet = configs(corpus)
    out = str(tmp_path / "rows")
    manifest = prepare.prepare(data(as_parquet), out, rows_per_shard=7, docs_per_chunk=13)
    assert len(manifest["splits"]["train"]["shards"]) > 3
    from_store = configs(corpus)[1]
    from_store.data.dataset = f"rows:{out}"
    tokenizer = loader.get_tokenizer(data(from_store))
    reference = loader.get_tokenizer(data(as_parquet))
    assert tokenizer.same_vocabulary(reference)
    assert_batches_equal(
        take(train_iterator(from_store, tokenizer), 6),
        take(train_iterator(as_parquet, reference), 6),
    )


def test_bad_parquet_input_is_one_line(tmp_path):
    pq.write_table(pa.table({"text": ["a b c"], "n": [1]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"body": [b"bytes"]}), tmp_path / "bytes.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    base = make_config("", tmp_path / "tfds")

    def error(dataset, field="text"):
        base.data.dataset, base.data.text_field = dataset, field
        with pytest.raises(ValueError) as e:
            sources.check_dataset(data(base))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "the glob matches no .parquet file" in error(f"parquet:{tmp_path}/none/*.parquet")
    assert "no column 'body' (data.text_field); it has ['text', 'n']" in error(
        f"parquet:{tmp_path}/a.parquet", "body"
    )
    assert "column 'body' (data.text_field) holds binary, expected strings" in error(
        f"parquet:{tmp_path}/bytes.parquet", "body"
    )
    assert "junk.parquet: not a Parquet file" in error(f"parquet:{tmp_path}/junk.parquet")


@pytest.mark.slow  # trains
def test_a_run_trains_on_a_parquet_corpus(corpus, tmp_path):
    from mlm_jax.training import metrics
    from mlm_jax.training.run import train_and_evaluate

    _, config = configs(corpus)
    config.train.num_steps = 10
    config.train.warmup_steps = 2
    config.eval.every_steps = 10
    config.checkpoint.every_steps = 10
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)
    losses = {e["step"]: e["eval/loss"] for e in metrics.read_metrics(workdir) if "eval/loss" in e}
    assert sorted(losses) == [0, 10]
    assert losses[10] < losses[0]  # ln(300) = 5.7 before; the unigram alone is far below

"""Sources: python_docs builds offline, text:<glob> documents, tfds:<name>, the registry, and bad
input lines. (parquet:<glob>: tests/test_data_parquet.py.)"""

import gzip
import json
import logging
import time
import types

import pytest
import tensorflow_datasets as tfds

from mlm_jax.data import sources
from mlm_jax.data.sources import text, units


def spec(dataset, data_dir, text_unit="paragraph", heldout_fraction=0.2, text_field="text"):
    return types.SimpleNamespace(
        dataset=dataset,
        data_dir=str(data_dir),
        text_unit=text_unit,
        text_field=text_field,
        heldout_fraction=heldout_fraction,
    )


def test_python_docs_builds_offline_and_split_is_fixed(data_dir):
    # (How long the build takes is a benchmark's business: experiments/bench_data.py.) The
    # session's data dir and the small runs' fraction: the build they use, built once.
    fraction = 0.05
    corpus = sources.load_corpus(spec("python_docs", data_dir, heldout_fraction=fraction))
    train, heldout = list(corpus.train), list(corpus.heldout)
    assert len(train) > 1000 and len(heldout) > 20
    assert fraction / 4 < len(heldout) / (len(train) + len(heldout)) < 2.5 * fraction
    assert not set(train) & set(heldout)
    assert len(set(train)) == len(train)  # deduplicated
    import inspect
    from pydoc_data.topics import topics

    assert inspect.cleandoc(topics["if"]).strip() in set(train + heldout)  # help topics are there
    assert any("Return the" in t for t in train)  # stdlib docstrings are there
    # A second load reads the built dataset (same documents, in the same order).
    again = sources.load_corpus(spec("python_docs", data_dir, heldout_fraction=fraction))
    assert list(again.heldout) == heldout


def write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_text_units_and_file_kinds(tmp_path):
    src = tmp_path / "src"
    write(src / "a.txt", b"first para line one\nline two\n\n\nsecond para\n\n")
    write(src / "b.txt.gz", gzip.compress(b"gz para\n\ngz other\n"))
    records = [{"text": "json one\n\njson two"}, {"other": 1}, {"text": ""}]
    write(src / "c.jsonl", "\n".join(json.dumps(r) for r in records).encode() + b"\nnot json\n")
    write(src / "ignored.csv", b"x,y\n")
    expected = {
        "paragraph": {
            "first para line one\nline two",
            "second para",
            "gz para",
            "gz other",
            "json one",
            "json two",
        },
        "line": {
            "first para line one",
            "line two",
            "second para",
            "gz para",
            "gz other",
            "json one",
            "json two",
        },
        "file": {
            "first para line one\nline two\n\n\nsecond para",
            "gz para\n\ngz other",
            "json one\n\njson two",
        },
    }
    for unit, docs in expected.items():
        got = []
        for path in text.match_files(str(src / "*")):
            got.extend(text.file_documents(path, unit))
        assert set(got) == docs and len(got) == len(docs), unit
    # Through TFDS: every document lands in exactly one split.
    corpus = sources.load_corpus(
        spec(f"text:{src}/*", tmp_path / "data", "line", heldout_fraction=0.3)
    )
    assert sorted(list(corpus.train) + list(corpus.heldout)) == sorted(expected["line"])
    assert len(corpus.heldout) >= 1


def test_non_utf8_replaced_and_counted(tmp_path, caplog):
    path = write(tmp_path / "bad.txt", b"caf\xe9 ok\n\nfine \xff\xfe text\n")
    with caplog.at_level(logging.WARNING):
        corpus = sources.load_corpus(spec(f"text:{path}", tmp_path / "data", heldout_fraction=0.5))
    docs = sorted(list(corpus.train) + list(corpus.heldout))
    assert docs == ["caf\ufffd ok", "fine \ufffd\ufffd text"]
    assert "3 undecodable bytes replaced" in caplog.text


def test_long_line_is_cut_not_loaded_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(units, "MAX_DOC_CHARS", 1000)
    path = write(tmp_path / "long.txt", b"x" * 4500 + b"\n\nshort\n")
    docs = list(text.file_documents(str(path), "paragraph"))
    assert [len(d) for d in docs] == [1000, 1000, 1000, 1000, 500, 5]


def test_editing_a_file_rebuilds(tmp_path):
    path = write(tmp_path / "src" / "a.txt", b"one\ntwo\nthree\nfour\n")
    first = sources.load_corpus(spec(f"text:{path}", tmp_path / "data", "line", 0.5))
    time.sleep(0.01)
    write(path, b"one\ntwo\nthree\nfour\nfive\nsix\n")
    second = sources.load_corpus(spec(f"text:{path}", tmp_path / "data", "line", 0.5))
    assert first.key != second.key
    assert len(second.train) + len(second.heldout) == 6


class TinyText(tfds.core.GeneratorBasedBuilder):
    """A small TFDS text dataset built locally (stands in for wikipedia / c4 / lm1b)."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "title": tfds.features.Text()}
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 40), "test": self._generate_examples(40, 45)}

    def _generate_examples(self, start, stop):
        for i in range(start, stop):
            yield i, {"text": f"document number {i} é", "title": f"title {i}"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfds")
    TinyText(data_dir=str(directory), file_format="array_record").download_and_prepare()
    return directory


def test_tfds_dataset_by_name_and_feature(tfds_dir):
    corpus = sources.load_corpus(spec("tfds:tiny_text", tfds_dir))
    assert sorted(corpus.train) == sorted(f"document number {i} é" for i in range(40))
    assert sorted(corpus.heldout) == sorted(f"document number {i} é" for i in range(40, 45))
    titles = sources.load_corpus(spec("tfds:tiny_text:title", tfds_dir))
    assert sorted(titles.heldout) == sorted(f"title {i}" for i in range(40, 45))


@pytest.mark.parametrize(
    "dataset, message",
    [
        ("wikitext", "expected one of python_docs | text:<glob> | parquet:<glob> | tfds:"),
        ("python_docs:x", "expected one of python_docs"),
        ("text:", "expected one of"),
        ("text:/nonexistent/*.txt", "glob matches no"),
        ("tfds:no_such_dataset_xyz", "unknown TFDS dataset.*tfds build no_such_dataset_xyz"),
        ("tfds:tiny_text:body", "no feature 'body'"),
    ],
)
def test_bad_datasets_fail_with_one_line(dataset, message, tfds_dir):
    with pytest.raises(ValueError, match=message) as info:
        sources.check_dataset(spec(dataset, tfds_dir))
    assert "\n" not in str(info.value)


def test_empty_corpus_fails_clearly(tmp_path):
    write(tmp_path / "empty.txt", b"")
    with pytest.raises(ValueError, match="all 1 matched files are empty"):
        sources.check_dataset(spec(f"text:{tmp_path}/*.txt", tmp_path))
    write(tmp_path / "blank.txt", b"\n\n   \n")
    with pytest.raises(ValueError, match="0 non-empty documents"):
        sources.load_corpus(spec(f"text:{tmp_path}/*.txt", tmp_path / "data"))


def test_unprepared_tfds_dataset_says_how_to_build(tmp_path):
    with pytest.raises(
        ValueError, match="tfds build tiny_text --data_dir=.* --file_format=array_record"
    ):
        sources.check_dataset(spec("tfds:tiny_text", tmp_path))


def test_jsonl_records_field_is_data_text_field(tmp_path):
    records = [{"body": "one\n\ntwo", "text": "not this"}, {"text": "nor this"}, {"body": "three"}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in records).encode())
    assert list(text.file_documents(str(path), "paragraph", "body")) == ["one", "two", "three"]
    corpus = sources.load_corpus(
        spec(f"text:{path}", tmp_path / "data", heldout_fraction=0.5, text_field="body")
    )
    assert sorted(list(corpus.train) + list(corpus.heldout)) == ["one", "three", "two"]
    default = sources.load_corpus(spec(f"text:{path}", tmp_path / "data", heldout_fraction=0.5))
    assert default.key != corpus.key  # another field is another corpus


def test_every_kind_is_one_module_named_by_its_usage():
    import importlib

    assert list(sources.SOURCES) == ["python_docs", "text", "parquet", "tfds", "rows"]
    for kind, source in sources.SOURCES.items():
        assert source.usage.split(":")[0] == kind
        assert importlib.import_module(f"mlm_jax.data.sources.{kind}").SOURCE is source
        assert sources.parse(source.usage.replace("<", "").replace(">", ""))[0] is source


def test_text_files_in_a_bucket_read_as_local_ones(tmp_path, bucket):
    local = write(tmp_path / "src" / "a.txt", b"one\n\ntwo\n\nthree four\n")
    write(tmp_path / "src" / "b.txt.gz", gzip.compress(b"five\n\nsix\n"))
    for path in sorted((tmp_path / "src").iterdir()):
        bucket.pipe(f"gs://b/src/{path.name}", path.read_bytes())
    got = sources.load_corpus(spec("text:gs://b/src/*", tmp_path / "remote", heldout_fraction=0.5))
    expected = sources.load_corpus(
        spec(f"text:{local.parent}/*", tmp_path / "local", heldout_fraction=0.5)
    )
    assert len(got.train) + len(got.heldout) == 5
    assert (list(got.train), list(got.heldout)) == (list(expected.train), list(expected.heldout))

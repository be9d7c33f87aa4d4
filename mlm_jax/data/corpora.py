"""config.data.dataset -> random-access train / held-out document sources.

Three forms: `python_docs` (built-in), `text:<glob>` (local files), `tfds:<name>[:<feature>]`
(any prepared TFDS text dataset in ArrayRecord format). All are read with TFDS data sources:
random access, no TensorFlow. `check_dataset` does the cheap checks (no building, no reading)
so a bad name fails in a second with one line; `load_corpus` builds what is missing. A fourth,
`rows:<dir>`, is a store of rows packed once (data/rows.py): checked here, read by the loader.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from mlm_jax import files
from mlm_jax.data import python_docs, text_files

HELDOUT_SPLITS = ("validation", "test")  # tfds:<name>: the first one present is held out


def data_dir(data_config) -> str:
    """config.data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    d = data_config.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(d)


def parse_dataset(spec: str) -> tuple[str, str, str]:
    """'python_docs' | 'text:<glob>' | 'tfds:<name>[:<feature>]' -> (kind, name_or_glob, feature)."""
    if spec == "python_docs":
        return "python_docs", "", "text"
    if spec.startswith("text:") and len(spec) > len("text:"):
        return "text", spec[len("text:") :], "text"
    if spec.startswith("tfds:") and len(spec) > len("tfds:"):
        name, _, feature = spec[len("tfds:") :].partition(":")
        return "tfds", name, feature or "text"
    if spec.startswith("rows:") and len(spec) > len("rows:"):  # a prepared store (data/rows.py)
        return "rows", spec[len("rows:") :], ""
    raise ValueError(
        f"data.dataset={spec!r}: expected python_docs, text:<glob> or tfds:<name>[:<feature>] "
        "(or rows:<dir>, a store mlm_jax.data.prepare wrote)"
    )


class DocumentSource(Sequence):
    """Documents (str) of one split: a TFDS data source, one feature, rows [start, stop)."""

    def __init__(self, source, feature: str, start: int = 0, stop: int | None = None):
        self._source = source
        self._feature = feature
        self._start = start
        self._stop = len(source) if stop is None else stop

    def __len__(self) -> int:
        return self._stop - self._start

    def _text(self, example) -> str:
        value = example[self._feature] if isinstance(example, dict) else example
        if isinstance(value, bytes | np.bytes_):
            return bytes(value).decode("utf-8", errors="replace")
        return str(value)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.get_batch(range(*i.indices(len(self))))
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self._text(self._source[self._start + i % len(self)])

    def get_batch(self, indices) -> list[str]:
        """Several documents in one read (ArrayRecord reads them in parallel)."""
        keys = [self._start + int(i) for i in indices]
        if hasattr(self._source, "__getitems__"):
            return [self._text(e) for e in self._source.__getitems__(keys)]
        return [self._text(self._source[k]) for k in keys]


@dataclasses.dataclass(frozen=True)
class Corpus:
    key: str  # names the corpus content (cache keys of tokenizers and tokenized splits)
    train: DocumentSource
    heldout: DocumentSource


def _check_tfds(name: str, feature: str, directory: str) -> tfds.core.DatasetBuilder:
    how = (
        f"build it first: tfds build {name.split('/')[0]} --data_dir={directory} "
        "--file_format=array_record"
    )
    try:
        builder = tfds.builder(name, data_dir=directory)
    except Exception as e:  # DatasetNotFoundError and friends, all one line for the user
        raise ValueError(
            f"data.dataset='tfds:{name}': unknown TFDS dataset ({type(e).__name__}); {how}"
        ) from None
    if not builder.is_prepared():
        raise ValueError(f"data.dataset='tfds:{name}': not prepared in {directory}; {how}")
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format != "array_record":
        raise ValueError(
            f"data.dataset='tfds:{name}': stored as {file_format}, random access needs array_record; {how}"
        )
    if feature not in builder.info.features.keys():
        raise ValueError(
            f"data.dataset='tfds:{name}:{feature}': no feature {feature!r}; "
            f"it has {sorted(builder.info.features.keys())}"
        )
    if "train" not in builder.info.splits:
        raise ValueError(
            f"data.dataset='tfds:{name}': no 'train' split (has {list(builder.info.splits)})"
        )
    return builder


def check_dataset(data_config) -> None:
    """Cheap checks of data.dataset: raises ValueError with one line naming what is wrong."""
    kind, name, feature = parse_dataset(data_config.dataset)
    if kind == "text":
        files = text_files.match_files(name)
        if not files:
            raise ValueError(
                f"data.dataset={data_config.dataset!r}: the glob matches no {'/'.join(text_files.SUFFIXES)} file"
            )
        if sum(os.path.getsize(p) for p in files) == 0:
            raise ValueError(
                f"data.dataset={data_config.dataset!r}: all {len(files)} matched files are empty"
            )
        for path in files:
            if path.endswith(".gz") and os.path.getsize(path) > 0:
                with open(path, "rb") as f:
                    if f.read(2) != b"\x1f\x8b":
                        raise ValueError(
                            f"{path}: not a gzip file (data.dataset={data_config.dataset!r}); "
                            "expected .gz files to be gzip-compressed text"
                        )
    elif kind == "tfds":
        _check_tfds(name, feature, data_dir(data_config))
    elif kind == "rows":
        from mlm_jax.data import rows

        rows.check_store(data_config)


def _build(make_builder, directory: str) -> dict:
    """Prepares the dataset once: processes that start together (the hosts of a run on one
    machine, a sweep's runs) wait for the first one's build instead of racing into its folder.
    A builder made before another process finished the build does not see it: make a new one."""
    builder = make_builder()
    if not builder.is_prepared():
        with files.exclusive_lock(os.path.join(directory, ".mlm_jax-build.lock")):
            builder = make_builder()
            if not builder.is_prepared():
                builder.download_and_prepare(file_format="array_record")
    return builder.as_data_source()


def load_corpus(data_config) -> Corpus:
    """Builds the dataset if needed and returns its train / held-out document sources."""
    kind, name, feature = parse_dataset(data_config.dataset)
    directory = data_dir(data_config)
    if kind in ("python_docs", "text"):  # built by a project builder into the data dir
        if kind == "python_docs":
            config = python_docs.config_for(data_config.heldout_fraction)
            builder_cls, prefix = python_docs.PythonDocs, "python_docs"
        else:
            config = text_files.config_for(
                name, data_config.text_unit, data_config.heldout_fraction
            )
            builder_cls, prefix = text_files.TextFiles, "text_files"
        splits = _build(
            lambda: builder_cls(config=config, data_dir=directory, file_format="array_record"),
            directory,
        )
        corpus = Corpus(
            f"{prefix}-{config.name}",
            DocumentSource(splits["train"], "text"),
            DocumentSource(splits["validation"], "text"),
        )
        if len(corpus.heldout) == 0 and len(corpus.train) > 0:
            raise ValueError(
                f"data.dataset={data_config.dataset!r}: no document fell in the held-out split "
                f"({len(corpus.train)} documents, heldout_fraction={data_config.heldout_fraction}); "
                "add text or raise data.heldout_fraction"
            )
    else:
        builder = _check_tfds(name, feature, directory)
        splits = builder.as_data_source()
        train = splits["train"]
        key = f"tfds-{name.replace('/', '_')}-{builder.info.version}-{feature}"
        heldout_name = next((s for s in HELDOUT_SPLITS if s in splits), None)
        if heldout_name is not None:
            corpus = Corpus(
                key, DocumentSource(train, feature), DocumentSource(splits[heldout_name], feature)
            )
        else:  # no held-out split shipped: the last fraction of train (TFDS shuffled it at build)
            n_heldout = max(1, round(len(train) * data_config.heldout_fraction))
            cut = len(train) - n_heldout
            corpus = Corpus(
                f"{key}-h{data_config.heldout_fraction!r}",
                DocumentSource(train, feature, 0, cut),
                DocumentSource(train, feature, cut, len(train)),
            )
    if len(corpus.train) == 0:
        raise ValueError(
            f"data.dataset={data_config.dataset!r}: the corpus has no training documents"
        )
    return corpus


def iter_training_texts(
    source: DocumentSource, *, max_chars: int = 200_000_000, chunk: int = 1024
) -> Iterator[str]:
    """Documents for training a tokenizer: all of them, or evenly spread ones up to max_chars."""
    n = len(source)
    if n == 0:
        return
    mean_chars = max(1, sum(len(t) for t in source.get_batch(range(min(n, 256)))) // min(n, 256))
    keep = min(n, max(1, max_chars // mean_chars))
    indices = np.linspace(0, n - 1, keep).round().astype(np.int64) if keep < n else np.arange(n)
    for begin in range(0, len(indices), chunk):
        yield from source.get_batch(indices[begin : begin + chunk])

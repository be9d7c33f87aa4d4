"""What a data source is: `data.dataset=<kind>:<arg>` -> random-access train / held-out documents.

A kind is one module of this package and one entry of its registry (sources/__init__.py). Its
Source says how the form is spelled, does the cheap checks (no building, and no reading beyond a
glob or a file's metadata, so a bad name fails in a second with one line) and makes the Corpus:
documents read in batches by index, never a whole file at once. A kind that must be built first
(python_docs, text:, parquet:) is built once into the data dir (sources/built.py).

`data` below is a DataSpec (data/spec.py) or anything with its fields.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

import numpy as np


def data_dir(data) -> str:
    """data.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    d = data.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(d)


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


@dataclasses.dataclass(frozen=True)
class Source:
    """One kind of data.dataset. `check(arg, data)` and `corpus(arg, data)` raise ValueError
    with one line naming what is wrong."""

    usage: str  # how the form is spelled in messages: "text:<glob>"
    check: Callable[[str, object], None]  # cheap: nothing built, no document read
    corpus: Callable[[str, object], Corpus] | None  # None: prepared rows, not documents
    takes_arg: bool = True  # python_docs is the kind alone
    # rows:<dir> only: packed rows written by mlm_jax.data.prepare (data/rows.py); the loader
    # reads them by id instead of tokenizing documents
    prepared_rows: bool = False

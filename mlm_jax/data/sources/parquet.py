"""parquet:<glob>: Parquet files (local or gs://), their column data.text_field (default `text`).

The corpora people pretrain on ship this way (FineWeb, DCLM, C4 mirrors). Each row's text is a
record, cut into documents as a JSONL record's text is (data.text_unit, sources/units.py), so
the same texts given as JSONL make the same documents. Built once into the data dir
(sources/built.py); pyarrow reads the files one record batch at a time, the text column only
(ParquetFile.iter_batches), never a whole file. Null values are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mlm_jax import files
from mlm_jax.data.sources import units
from mlm_jax.data.sources.built import BuiltFiles, build, files_config
from mlm_jax.data.sources.core import Corpus, Source

SUFFIX = ".parquet"
BATCH_ROWS = 1024  # rows per record batch read


def match_files(pattern: str) -> dict[str, tuple[int, str]]:
    """The .parquet files the glob matches (files.glob: path -> size, version)."""
    return {p: v for p, v in files.glob(pattern).items() if p.endswith(SUFFIX)}


def _check_column(path: str, field: str) -> None:
    """The file is Parquet and has a string column `field` (its footer only is read)."""
    try:
        with files.open_binary(path) as f:
            schema = pq.read_schema(f)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a Parquet file ({e})") from None
    if field not in schema.names:
        raise ValueError(f"{path}: no column {field!r} (data.text_field); it has {schema.names}")
    kind = schema.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ValueError(
            f"{path}: column {field!r} (data.text_field) holds {kind}, expected strings"
        )


def file_texts(path: str, field: str) -> Iterator[str]:
    """The column's values, one record batch at a time; nulls skipped."""
    _check_column(path, field)
    with files.open_binary(path) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=[field]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text


class ParquetFiles(BuiltFiles):
    """Documents of Parquet files; see the module docstring."""

    RELEASE_NOTES = {"1.0.0": "rows of one string column, cut as JSONL records."}
    kind = "Parquet files"

    def file_documents(self, path: str) -> Iterator[str]:
        cfg = self.builder_config
        for text in file_texts(path, cfg.text_field):
            yield from units.record_documents(text, cfg.text_unit)


def _matched(pattern: str, data) -> dict[str, tuple[int, str]]:
    matched = match_files(pattern)
    if not matched:
        raise ValueError(f"data.dataset={data.dataset!r}: the glob matches no {SUFFIX} file")
    return matched


def _check(pattern: str, data) -> None:
    """Cheap: the glob matches, and the first file has the column (one footer read)."""
    _check_column(next(iter(_matched(pattern, data))), data.text_field)


def _corpus(pattern: str, data) -> Corpus:
    # (a build checks every file's column as it reads it; a built corpus reads no file)
    return build(ParquetFiles, files_config(_matched(pattern, data), data), data)


SOURCE = Source(usage="parquet:<glob>", check=_check, corpus=_corpus)

"""text:<glob>: the user's own .txt / .txt.gz / .jsonl(.gz) files (local or gs://).

Built once into the data dir (sources/built.py). Documents are cut as data.text_unit says
(sources/units.py); in a .jsonl file each record's data.text_field (default `text`) plays the
role of a file. Undecodable bytes become U+FFFD and are counted in the log. Reading is line by
line with a cap on line and record length, so one enormous line cannot exhaust memory.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import logging
from collections.abc import Iterator

from mlm_jax import files
from mlm_jax.data.sources import units
from mlm_jax.data.sources.built import BuiltFiles, build, files_config
from mlm_jax.data.sources.core import Corpus, Source

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
MAX_JSONL_LINE_CHARS = 1 << 26  # a .jsonl record must fit in memory; longer ones are skipped

_replaced = [0]  # undecodable byte runs replaced during the current read (single-threaded build)


def _count_and_replace(error: UnicodeDecodeError):
    _replaced[0] += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("mlm_jax_count_replace", _count_and_replace)


def match_files(pattern: str) -> dict[str, tuple[int, str]]:
    """The files the glob matches with a supported suffix (files.glob: path -> size, version)."""
    return {p: v for p, v in files.glob(pattern).items() if p.endswith(SUFFIXES)}


def _open_text(path: str) -> io.TextIOWrapper:
    if path.endswith(".gz") and not files.is_remote(path):
        raw = gzip.open(path, "rb")
    elif path.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=files.open_binary(path))  # the object closes when collected
    else:
        raw = files.open_binary(path)
    return io.TextIOWrapper(raw, encoding="utf-8", errors="mlm_jax_count_replace", newline=None)


def _lines(path: str) -> Iterator[str]:
    """Lines without their newline; a line longer than MAX_DOC_CHARS comes in several pieces."""
    with _open_text(path) as f:
        while True:
            line = f.readline(units.MAX_DOC_CHARS)
            if not line:
                return
            yield line.rstrip("\n")


def _jsonl_texts(path: str, field: str) -> Iterator[str]:
    """Each record's `field`, where it is a string (other lines are skipped, the long ones
    with a warning)."""
    with _open_text(path) as f:
        line_number = 0
        while True:
            line = f.readline(MAX_JSONL_LINE_CHARS)
            if not line:
                return
            line_number += 1
            if not line.endswith("\n") and len(line) >= MAX_JSONL_LINE_CHARS:
                log.warning(
                    "%s:%d: record longer than %d chars skipped", path, line_number, len(line)
                )
                while line and not line.endswith("\n"):  # drain the rest of the record
                    line = f.readline(units.MAX_DOC_CHARS)
                continue
            if not line.strip():
                continue
            try:
                text = json.loads(line).get(field)
            except (json.JSONDecodeError, AttributeError):
                logging.debug("%s:%d: not a JSON object, skipped", path, line_number)
                continue
            if isinstance(text, str):
                yield text


def file_documents(path: str, text_unit: str, text_field: str = "text") -> Iterator[str]:
    """Non-empty documents of one file, stripped."""
    if ".jsonl" in path.rsplit("/", 1)[-1]:
        for text in _jsonl_texts(path, text_field):
            yield from units.record_documents(text, text_unit)
    else:
        yield from units.split(_lines(path), text_unit)


class TextFiles(BuiltFiles):
    """Documents of text files; see the module docstring."""

    RELEASE_NOTES = {"1.0.0": "paragraph/line/file documents, hash-based held-out split."}
    kind = "text files"

    def file_documents(self, path: str) -> Iterator[str]:
        cfg = self.builder_config
        warned = self.__dict__.setdefault("_warned", set())  # once a build, not once a pass
        _replaced[0] = 0
        yield from file_documents(path, cfg.text_unit, cfg.text_field)
        if _replaced[0] and path not in warned:
            warned.add(path)
            log.warning("%s: %d undecodable bytes replaced by U+FFFD", path, _replaced[0])


def _matched(pattern: str, data) -> dict[str, tuple[int, str]]:
    matched = match_files(pattern)
    if not matched:
        raise ValueError(
            f"data.dataset={data.dataset!r}: the glob matches no {'/'.join(SUFFIXES)} file"
        )
    return matched


def _check(pattern: str, data) -> None:
    """Cheap: the glob matches, not every file is empty, .gz files start as gzip does."""
    matched = _matched(pattern, data)
    if not any(size for size, _ in matched.values()):
        raise ValueError(
            f"data.dataset={data.dataset!r}: all {len(matched)} matched files are empty"
        )
    for path, (size, _) in matched.items():
        if path.endswith(".gz") and size > 0:
            with files.open_binary(path) as f:
                if f.read(2) != b"\x1f\x8b":
                    raise ValueError(
                        f"{path}: not a gzip file (data.dataset={data.dataset!r}); "
                        "expected .gz files to be gzip-compressed text"
                    )


def _corpus(pattern: str, data) -> Corpus:
    return build(TextFiles, files_config(_matched(pattern, data), data), data)


SOURCE = Source(usage="text:<glob>", check=_check, corpus=_corpus)

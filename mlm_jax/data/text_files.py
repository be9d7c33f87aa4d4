"""text:<glob>: the user's own .txt / .txt.gz / .jsonl(.gz) files as a TFDS dataset.

Built once under the data dir with TFDS's TensorFlow-free array_record writer. The builder
config's name hashes the matched files (paths, sizes, mtimes), the text unit and the held-out
fraction, so editing a file builds a fresh dataset instead of reading a stale one.

Documents: one per blank-line-separated paragraph, per line, or per file (data.text_unit); in
a .jsonl file each record's `text` field plays the role of a file. Undecodable bytes become
U+FFFD and are counted in the log; empty documents are skipped. Reading is line by line with a
cap on line and document length, so one enormous line cannot exhaust memory: longer text is
cut into pieces of MAX_DOC_CHARS characters (the packer cuts rows far shorter anyway).
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from mlm_jax.data.python_docs import LoggedBuild, heldout_by_hash

log = logging.getLogger(__name__)

TEXT_UNITS = ("paragraph", "line", "file")
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
MAX_DOC_CHARS = 1 << 20  # longer documents (and lines) are cut into pieces of this many chars
MAX_JSONL_LINE_CHARS = 1 << 26  # a .jsonl record must fit in memory; longer ones are skipped

_replaced = [0]  # undecodable byte runs replaced during the current read (single-threaded build)


def _count_and_replace(error: UnicodeDecodeError):
    _replaced[0] += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("mlm_jax_count_replace", _count_and_replace)


def match_files(pattern: str) -> list[str]:
    """Sorted files the glob matches (`**` recursive, `~` expanded), supported suffixes only."""
    paths = glob.glob(os.path.expanduser(pattern), recursive=True)
    return sorted(p for p in paths if os.path.isfile(p) and p.endswith(SUFFIXES))


def _open_text(path: str) -> io.TextIOWrapper:
    raw = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", errors="mlm_jax_count_replace", newline=None)


def _lines(path: str) -> Iterator[str]:
    """Lines without their newline; a line longer than MAX_DOC_CHARS comes in several pieces."""
    with _open_text(path) as f:
        while True:
            line = f.readline(MAX_DOC_CHARS)
            if not line:
                return
            yield line.rstrip("\n")


def _units(lines: Iterator[str], text_unit: str) -> Iterator[str]:
    """Documents from a stream of lines: per line, per paragraph or the whole stream."""
    if text_unit == "line":
        yield from lines
        return
    parts: list[str] = []
    size = 0
    for line in lines:
        if text_unit == "paragraph" and not line.strip():
            yield "\n".join(parts)
            parts, size = [], 0
            continue
        parts.append(line)
        size += len(line) + 1
        if size >= MAX_DOC_CHARS:  # cap the document, continue it as the next one
            yield "\n".join(parts)
            parts, size = [], 0
    yield "\n".join(parts)


def _jsonl_texts(path: str) -> Iterator[str]:
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
                    line = f.readline(MAX_DOC_CHARS)
                continue
            if not line.strip():
                continue
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError):
                logging.debug("%s:%d: not a JSON object, skipped", path, line_number)
                continue
            if isinstance(text, str):
                yield text


def file_documents(path: str, text_unit: str) -> Iterator[str]:
    """Non-empty documents of one file, stripped (text_unit checked by DataSpec)."""
    if ".jsonl" in os.path.basename(path):
        chunks = (
            doc for text in _jsonl_texts(path) for doc in _units(iter(text.split("\n")), text_unit)
        )
    else:
        chunks = _units(_lines(path), text_unit)
    for doc in chunks:
        doc = doc.strip()
        if doc:
            yield doc


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
    files: tuple[str, ...] = ()
    text_unit: str = "paragraph"
    heldout_fraction: float = 0.02


def config_for(pattern: str, text_unit: str, heldout_fraction: float) -> TextFilesConfig:
    """A builder config named by a hash of what the dataset is built from."""
    files = match_files(pattern)
    if not files:
        raise ValueError(
            f"data.dataset='text:{pattern}': the glob matches no {'/'.join(SUFFIXES)} file"
        )
    h = hashlib.sha256(f"{text_unit}|{heldout_fraction!r}".encode())
    for path in files:
        stat = os.stat(path)
        h.update(f"|{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return TextFilesConfig(
        name=f"{text_unit}_{h.hexdigest()[:16]}",
        files=tuple(os.path.abspath(p) for p in files),
        text_unit=text_unit,
        heldout_fraction=heldout_fraction,
    )


class TextFiles(LoggedBuild, tfds.core.GeneratorBasedBuilder):
    """Documents of local text files; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to find: TFDS would look it up beside the module through the
    # importlib_resources backport, which TFDS does not install (and nothing is downloaded).
    code_path = None
    RELEASE_NOTES = {"1.0.0": "paragraph/line/file documents, hash-based held-out split."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"text files: {len(self.builder_config.files)} files",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        # One pass to fix the split first: TFDS refuses an empty split, so a small corpus whose
        # hashes all land in train holds out its last document instead.
        cfg = self.builder_config
        heldout = bytearray()
        for path in cfg.files:
            _replaced[0] = 0
            heldout.extend(
                heldout_by_hash(d, cfg.heldout_fraction)
                for d in file_documents(path, cfg.text_unit)
            )
            if _replaced[0]:
                log.warning("%s: %d undecodable bytes replaced by U+FFFD", path, _replaced[0])
        if len(heldout) < 2:
            raise ValueError(
                f"text files {cfg.files[0]}...: {len(heldout)} non-empty documents; need at least 2 "
                "(one to train on, one held out)"
            )
        if not any(heldout):
            heldout[-1] = 1
        if all(heldout):
            heldout[0] = 0
        return {
            "train": self._generate_examples(heldout, want_heldout=False),
            "validation": self._generate_examples(heldout, want_heldout=True),
        }

    def _generate_examples(self, heldout: bytearray, want_heldout: bool):
        cfg = self.builder_config
        i = 0
        for file_index, path in enumerate(cfg.files):
            for doc_index, doc in enumerate(file_documents(path, cfg.text_unit)):
                if heldout[i] == want_heldout:
                    yield f"{file_index}:{doc_index}", {"text": doc}
                i += 1

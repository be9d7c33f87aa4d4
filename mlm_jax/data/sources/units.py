"""Text -> documents, as data.text_unit says: one per blank-line-separated paragraph, per line, or
the whole text (a file, a JSONL record or a Parquet row).

The file kinds (text:, parquet:) all cut their text here, so the same text is the same
documents whichever file it came in. A document is capped at MAX_DOC_CHARS characters (longer
text continues as the next document; the packer cuts rows far shorter anyway); documents are
stripped and empty ones dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

TEXT_UNITS = ("paragraph", "line", "file")
MAX_DOC_CHARS = 1 << 20  # longer documents (and lines of text files) are cut into pieces


def split(lines: Iterable[str], text_unit: str) -> Iterator[str]:
    """Documents from a stream of lines (without their newlines), stripped, none empty."""
    for document in _units(iter(lines), text_unit):
        document = document.strip()
        if document:
            yield document


def record_documents(text: str, text_unit: str) -> Iterator[str]:
    """The documents of one record's text (a JSONL record's field, a Parquet row's column)."""
    return split(text.split("\n"), text_unit)


def _units(lines: Iterator[str], text_unit: str) -> Iterator[str]:
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

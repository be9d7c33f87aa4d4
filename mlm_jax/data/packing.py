"""Documents -> fixed-length rows: a token stream tokenized once, cut into rows on demand.

A split is tokenized once (batched, all cores) into a flat stream on disk: each document's
tokens followed by [SEP], plus the offset where each document starts. Rows are then numpy
slices of that memory-mapped stream, so any row can be read in O(seq_len) without touching the
rest of the corpus (random access for a global shuffle and per-host shards):

  concat: row r = [CLS] + stream[r*(L-1) : (r+1)*(L-1)], [PAD] after the stream ends. A document
          cut at a row boundary continues in the next row. document_ids number the documents
          inside the row 1, 2, ... ([CLS] belongs to the first one), 0 on padding.
  pad:    row r = [CLS] + document r (truncated to L-2 tokens) + [SEP] + [PAD]...

The row index is stable across epochs (the loader shuffles row indices, never row contents),
so `example_ids` name the same tokens every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from mlm_jax import files
from mlm_jax.data.batch import token_rows

PACKINGS = ("concat", "pad")
_FORMAT_VERSION = 1  # bump when the on-disk layout changes


@dataclasses.dataclass(frozen=True)
class TokenStream:
    """One tokenized split. Document i = tokens[offsets[i]:offsets[i+1]], its last token [SEP]."""

    tokens: np.ndarray  # uint16 or int32 [T], memory-mapped
    word_starts: np.ndarray  # bool [T]
    offsets: np.ndarray  # int64 [N+1]
    unit_starts: np.ndarray | None = None  # bool [T]: PMI unit starts, when built with units

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1


def token_dtype(tokenizer) -> np.dtype:
    """The narrowest dtype that holds every id of the vocabulary (uint16 or int32)."""
    fits = tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1
    return np.dtype(np.uint16 if fits else np.int32)


def encode_documents(texts, tokenizer, units=None):
    """Documents -> their piece of the stream: tokens [T] (int32), word starts [T] (bool), each
    document's length, and (with units, a data.pmi.PmiUnits) PMI unit starts [T] (bool), else
    None; every document's tokens are followed by [SEP]."""
    encoded = tokenizer.encode_arrays(texts)
    sep, no = np.asarray([tokenizer.sep_id], np.int32), np.zeros(1, bool)
    tokens = np.concatenate([np.zeros(0, np.int32)] + [x for ids, _ in encoded for x in (ids, sep)])
    starts = np.concatenate([np.zeros(0, bool)] + [x for _, st in encoded for x in (st, no)])
    unit_starts = None
    if units is not None:  # the host marks PMI unit starts while packing
        marked = [units.unit_starts(ids, st) for ids, st in encoded]
        unit_starts = np.concatenate([np.zeros(0, bool)] + [x for st in marked for x in (st, no)])
    lengths = [len(ids) + 1 for ids, _ in encoded]
    return tokens.astype(np.int32), starts.astype(bool), lengths, unit_starts


def _write_stream(directory: str, documents, tokenizer, batch_docs: int, units=None) -> dict:
    dtype = token_dtype(tokenizer)
    lengths = []
    with (
        open(os.path.join(directory, "tokens.bin"), "wb") as tokens_f,
        open(os.path.join(directory, "word_starts.bin"), "wb") as starts_f,
        open(os.path.join(directory, "unit_starts.bin"), "wb") as units_f,
    ):
        for begin in range(0, len(documents), batch_docs):
            texts = documents.get_batch(range(begin, min(begin + batch_docs, len(documents))))
            tokens, starts, doc_lengths, unit_starts = encode_documents(texts, tokenizer, units)
            tokens_f.write(tokens.astype(dtype).tobytes())
            starts_f.write(starts.tobytes())
            if unit_starts is not None:
                units_f.write(unit_starts.tobytes())
            lengths.extend(doc_lengths)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(os.path.join(directory, "offsets.npy"), offsets)
    return {
        "dtype": np.dtype(dtype).name,
        "num_tokens": int(offsets[-1]),
        "version": _FORMAT_VERSION,
        "units": units is not None,  # unit_starts.bin holds PMI unit starts
    }


def _read_stream(directory: str) -> TokenStream:
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    n = meta["num_tokens"]

    def memmap(name, dtype):
        if n == 0:  # np.memmap refuses empty files
            return np.zeros(0, dtype)
        return np.memmap(os.path.join(directory, name), dtype=dtype, mode="r", shape=(n,))

    return TokenStream(
        tokens=memmap("tokens.bin", np.dtype(meta["dtype"])),
        word_starts=memmap("word_starts.bin", np.bool_),
        offsets=np.load(os.path.join(directory, "offsets.npy")),
        unit_starts=memmap("unit_starts.bin", np.bool_) if meta.get("units") else None,
    )


def tokenize_to_stream(
    documents, tokenizer, cache_dir: str, *, batch_docs: int = 512, units=None
) -> TokenStream:
    """Tokenizes `documents` (a DocumentSource) once into cache_dir; later calls just map it.
    units (a data.pmi.PmiUnits): also mark its unit starts (the cache dir must name it)."""
    if os.path.exists(os.path.join(cache_dir, "meta.json")):
        return _read_stream(cache_dir)
    with files.new_local_dir(cache_dir) as tmp:  # concurrent writers write equal caches
        meta = _write_stream(tmp, documents, tokenizer, batch_docs, units)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
    return _read_stream(cache_dir)


class PackedRows:
    """Random access to the rows of a token stream; rows(indices) returns a batch of rows."""

    def __init__(self, stream: TokenStream, *, seq_len: int, packing: str, tokenizer):
        self.stream = stream
        self.seq_len = seq_len
        self.packing = packing
        self.cls_id, self.pad_id = tokenizer.cls_id, tokenizer.pad_id
        self.sep_id = tokenizer.sep_id
        self.is_special_V = tokenizer.is_special_V
        if packing == "concat":
            self._num_rows = -(-len(stream.tokens) // (seq_len - 1))
        else:
            self._num_rows = stream.num_documents

    def __len__(self) -> int:
        return self._num_rows

    def rows(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `row_ids` [b] as tokens / document_ids / maskable / word_starts, each [b, L]."""
        row_ids = np.asarray(row_ids, np.int64)
        if self.packing == "concat":
            body = self._concat_body(row_ids)
        else:
            body = self._pad_body(row_ids)
        tokens_BxLm1, safe_BxLm1, valid_BxLm1, doc_ids_BxLm1 = body
        b = len(row_ids)
        tokens = np.concatenate([np.full((b, 1), self.cls_id, np.int32), tokens_BxLm1], axis=1)
        # [CLS] belongs to the row's first document (a row always holds at least one token).
        document_ids = np.concatenate([np.ones((b, 1), np.int32), doc_ids_BxLm1], axis=1)
        maskable = ~self.is_special_V[tokens]

        def starts(stream_starts):
            body_starts = np.where(valid_BxLm1, stream_starts[safe_BxLm1], False)
            return np.concatenate([np.zeros((b, 1), bool), body_starts], axis=1) & maskable

        units = self.stream.unit_starts  # PMI units (data.pmi), for strategy=pmi
        return token_rows(
            tokens,
            document_ids,
            maskable,
            starts(self.stream.word_starts),
            None if units is None else starts(units),
        )

    def _concat_body(self, row_ids):
        width = self.seq_len - 1
        positions_BxW = row_ids[:, None] * width + np.arange(width)[None, :]
        total = len(self.stream.tokens)
        valid = positions_BxW < total
        safe = np.where(valid, positions_BxW, 0)
        tokens = np.where(valid, self.stream.tokens[safe].astype(np.int32), self.pad_id)
        doc_index = np.searchsorted(self.stream.offsets, safe, side="right") - 1
        doc_ids = np.where(valid, doc_index - doc_index[:, :1] + 1, 0)
        return tokens, safe, valid, doc_ids

    def _pad_body(self, row_ids):
        width = self.seq_len - 1
        starts_at = self.stream.offsets[row_ids]
        # Document tokens without its [SEP], truncated so that [SEP] still fits in the row.
        lengths = np.minimum(self.stream.offsets[row_ids + 1] - starts_at - 1, width - 1)
        cols = np.arange(width)[None, :]
        is_text = cols < lengths[:, None]
        safe = np.where(is_text, starts_at[:, None] + cols, 0)
        tokens = np.where(is_text, self.stream.tokens[safe].astype(np.int32), self.pad_id)
        tokens[np.arange(len(row_ids)), lengths] = self.sep_id
        doc_ids = (cols <= lengths[:, None]).astype(np.int32)
        return tokens, safe, is_text, doc_ids

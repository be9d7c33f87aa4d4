"""A prepared-rows store: packed rows written once (mlm_jax.data.prepare), read by row id.

`data.dataset=rows:<dir>` trains from one. No host tokenizes anything: each host reads just its
rows of each global batch, by id, through grain's ArrayRecord data source (local or gs://).
Layout of <dir>:

  manifest.json        written last, so a store without it is partly written: what the rows
                       are (seq_len, packing, tokenizer and its hash, source) and their shards
  tokenizer/           the tokenizer the rows were made with
  train-00000-of-00004.array_record ...    one record per row, row ids in shard order
  heldout-00000-of-00001.array_record

A record is one row's fields as fixed-width little-endian arrays (`row_dtype`): tokens,
document_ids, word_starts; maskable is ~special(tokens), as the on-the-fly packer makes it.
Row r of a split is row r of the on-the-fly path's PackedRows for the same corpus, tokenizer,
seq_len and packing, so the loader's global shuffle, per-host slices and checkpointed iterator
state are the same whichever way the rows come.
"""

from __future__ import annotations

import json

import numpy as np

from mlm_jax import files

PREFIX = "rows:"
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "mlm_jax.rows/1"  # bump when the record layout or the manifest changes
SPLITS = ("train", "heldout")


def store_dir(dataset: str) -> str:
    """'rows:<dir>' -> <dir> (without a trailing slash)."""
    return dataset[len(PREFIX) :].rstrip("/")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def row_dtype(seq_len: int, token_dtype: str) -> np.dtype:
    """One record: a row's tokens, document ids (1, 2, ... per row; 0 on padding) and word starts."""
    doc_dtype = "<u2" if seq_len <= np.iinfo(np.uint16).max else "<i4"
    return np.dtype(
        [
            ("tokens", np.dtype(token_dtype).newbyteorder("<"), (seq_len,)),
            ("document_ids", doc_dtype, (seq_len,)),
            ("word_starts", "?", (seq_len,)),
        ]
    )


def encode_rows(batch: dict[str, np.ndarray], dtype: np.dtype) -> list[bytes]:
    """A batch of rows (PackedRows.rows) -> one record (bytes) per row."""
    out = np.zeros(len(batch["tokens"]), dtype)
    for name in dtype.names:
        out[name] = batch[name]
    return [row.tobytes() for row in out]


def decode_rows(records: list[bytes], dtype: np.dtype) -> dict[str, np.ndarray]:
    """Records -> tokens / document_ids / word_starts, each [b, L] as PackedRows returns them."""
    rows = np.frombuffer(b"".join(records), dtype)
    return {
        "tokens": rows["tokens"].astype(np.int32),
        "document_ids": rows["document_ids"].astype(np.int32),
        "word_starts": rows["word_starts"].copy(),
    }


def read_manifest(directory: str) -> dict:
    """The store's manifest; a missing one (a store still being written, or never) or one of
    another format is one line."""
    path = files.join(directory, MANIFEST)
    if not files.exists(path):
        if files.isdir(directory) and files.listdir(directory):
            raise ValueError(
                f"data.dataset='{PREFIX}{directory}': partly written store (no {MANIFEST}; "
                "preparing it stopped before the end or still runs): prepare it again"
            )
        raise ValueError(
            f"data.dataset='{PREFIX}{directory}': no prepared store there (no {MANIFEST}); "
            "make one with python -m mlm_jax.data.prepare"
        )
    try:
        manifest = json.loads(files.read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a JSON manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r}, this code reads {FORMAT!r}; prepare it again"
        )
    return manifest


def check_store(data) -> dict:
    """Cheap checks of a rows:<dir> dataset against config.data: the manifest (complete store),
    seq_len and packing, every shard present. One line each; returns the manifest."""
    directory = store_dir(data.dataset)
    manifest = read_manifest(directory)
    where = f"the store {PREFIX}{directory} holds"
    if manifest["seq_len"] != data.seq_len:
        raise ValueError(
            f"config.data.seq_len={data.seq_len} but {where} rows of {manifest['seq_len']} "
            f"tokens; set data.seq_len={manifest['seq_len']} or prepare a store for {data.seq_len}"
        )
    if manifest["packing"] != data.packing:
        raise ValueError(
            f"config.data.packing={data.packing!r} but {where} {manifest['packing']!r} rows; "
            f"set data.packing={manifest['packing']!r} or prepare a store with {data.packing!r}"
        )
    present = set(files.listdir(directory))
    for split in SPLITS:
        for name in manifest["splits"][split]["shards"]:
            if name not in present:
                raise ValueError(
                    f"data.dataset='{PREFIX}{directory}': partly written store ({name} of its "
                    f"{MANIFEST} is missing); prepare it again"
                )
    return manifest


def check_tokenizer(data, tokenizer) -> None:
    """The rows were made with one tokenizer; training them with another is one line."""
    directory = store_dir(data.dataset)
    expected = read_manifest(directory)["tokenizer"]["fingerprint"]
    if tokenizer.fingerprint() != expected:
        raise ValueError(
            f"the tokenizer (hash {tokenizer.fingerprint()}) is not the one the store "
            f"{PREFIX}{directory} was prepared with (hash {expected}, in {directory}/"
            f"{TOKENIZER_DIR}); leave data.tokenizer empty to use the store's"
        )


class StoreRows:
    """Random access to one split of a store, like packing.PackedRows: rows(indices) -> batch."""

    def __init__(self, directory: str, split: str, tokenizer):
        import grain

        manifest = read_manifest(directory)
        meta = manifest["splits"][split]
        self.seq_len, self.packing = manifest["seq_len"], manifest["packing"]
        self.dtype = row_dtype(self.seq_len, manifest["token_dtype"])
        self.is_special_V = tokenizer.is_special_V
        paths = [files.join(directory, name) for name in meta["shards"]]
        self.source = grain.sources.ArrayRecordDataSource(paths)
        self._num_rows = meta["rows"]
        if len(self.source) != self._num_rows:
            raise ValueError(
                f"data.dataset='{PREFIX}{directory}': its {split} shards hold {len(self.source)} "
                f"rows, its {MANIFEST} says {self._num_rows}: partly written; prepare it again"
            )

    def __len__(self) -> int:
        return self._num_rows

    def rows(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `row_ids` [b] as tokens / document_ids / maskable / word_starts, each [b, L]."""
        records = self.source.__getitems__([int(i) for i in row_ids])
        fields = decode_rows(records, self.dtype)
        return {
            "tokens": fields["tokens"],
            "document_ids": fields["document_ids"],
            "maskable": ~self.is_special_V[fields["tokens"]],
            "word_starts": fields["word_starts"],
        }

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

from mlm_jax import checksums, files
from mlm_jax.data.batch import Batch, token_rows

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
    """The store's manifest; a missing one (a store still being written, or never), one of
    another format, one without a key a manifest has, or one edited after prepare wrote it
    (its fingerprint no longer its content's) is one line."""
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ValueError(f"{path}: format {found!r}, this code reads {FORMAT!r}; prepare it again")
    _check_keys(manifest, path)
    if "fingerprint" in manifest and manifest["fingerprint"] != manifest_fingerprint(manifest):
        raise ValueError(
            f"{path}: edited after prepare wrote it (its fingerprint no longer matches its "
            "content); prepare the store again rather than editing its manifest"
        )
    return manifest


_REQUIRED = {  # every key a reader uses, and the type it must have
    "seq_len": int, "packing": str, "token_dtype": str, "tokenizer": dict, "splits": dict,
}  # fmt: skip


def _check_keys(manifest: dict, path: str) -> None:
    def need(mapping, key, kind, where):
        if not isinstance(mapping.get(key), kind):
            raise ValueError(
                f"{path}: {where}{key!r} missing or not a {kind.__name__} (found "
                f"{mapping.get(key)!r}); prepare the store again"
            )

    for key, kind in _REQUIRED.items():
        need(manifest, key, kind, "")
    need(manifest["tokenizer"], "fingerprint", str, "tokenizer.")
    for split in SPLITS:
        need(manifest["splits"], split, dict, "splits.")
        for key, kind in (("rows", int), ("shards", list)):
            need(manifest["splits"][split], key, kind, f"splits.{split}.")
    try:
        row_dtype(manifest["seq_len"], manifest["token_dtype"])
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: token_dtype={manifest['token_dtype']!r} / seq_len={manifest['seq_len']} do "
            f"not make a row ({e}); prepare the store again"
        ) from None


def manifest_fingerprint(manifest: dict) -> str:
    """SHA-256 of the manifest's content but its own fingerprint (keys sorted)."""
    content = {k: v for k, v in manifest.items() if k != "fingerprint"}
    return checksums.bytes_digest(json.dumps(content, sort_keys=True).encode())


def verify_shards(directory: str, manifest: dict, split: str) -> None:
    """Each shard of `split` has the size prepare wrote and, on a local disk, the same SHA-256
    (in a bucket the store checks its objects' own checksums): one line naming a damaged,
    truncated or replaced shard, before anything compiles. Stores written before shards were
    fingerprinted are read unverified."""
    meta = manifest["splits"][split]
    sizes, digests = meta.get("bytes", {}), meta.get("sha256", {})
    found = files.glob(files.join(directory, f"{split}-*.array_record"))
    for name in meta["shards"]:
        path = files.join(directory, name)
        if name in sizes and path in found and found[path][0] != sizes[name]:
            raise ValueError(
                f"{path}: {found[path][0]} bytes, prepare wrote {sizes[name]} (truncated or "
                "replaced); prepare the store again"
            )
        if name in digests and not files.is_remote(path):
            checksums.verify_file(path, digests[name], "; prepare the store again")


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
        verify_shards(directory, manifest, split)
        self.source = grain.sources.ArrayRecordDataSource(paths)
        self._num_rows = meta["rows"]
        if len(self.source) != self._num_rows:
            raise ValueError(
                f"data.dataset='{PREFIX}{directory}': its {split} shards hold {len(self.source)} "
                f"rows, its {MANIFEST} says {self._num_rows}: partly written; prepare it again"
            )
        self._first_shard = paths[0] if paths else directory

    def _check_record_size(self, records: list[bytes]) -> None:
        """A record is one row of the manifest's seq_len and token_dtype: else one line (a
        manifest edited by hand, or shards of another store), not a crash after compiling.
        Checked on the records a host reads anyway (the held-out rows are read before
        compiling), so no host reads a row that is not its own."""
        if records and len(records[0]) != self.dtype.itemsize:
            raise ValueError(
                f"{self._first_shard}: records of {len(records[0])} bytes, but its {MANIFEST} "
                f"(seq_len={self.seq_len}) makes rows of {self.dtype.itemsize}; prepare the "
                "store again"
            )

    def __len__(self) -> int:
        return self._num_rows

    def rows(self, row_ids: np.ndarray) -> Batch:
        """Rows `row_ids` [b] as tokens / document_ids / maskable / word_starts, each [b, L]."""
        records = self.source.__getitems__([int(i) for i in row_ids])
        self._check_record_size(records)
        fields = decode_rows(records, self.dtype)
        maskable = ~self.is_special_V[fields["tokens"]]
        return token_rows(fields["tokens"], fields["document_ids"], maskable, fields["word_starts"])

"""The per-host input pipeline: DataSpec -> tokenizer -> packed rows -> per-host batches.

Order of the data: the global stream is position p = 0, 1, 2, ... over epochs; position p is
row shuffle_{seed, epoch}(p mod num_rows) of epoch p // num_rows. Global batch s holds positions
[s*B, (s+1)*B); host i of n takes its contiguous slice [i*B/n, (i+1)*B/n) of it and reads only
those rows. The order is a function of (seed, data) alone, not of the number of hosts, so a run
can resume on a different host count. Epochs roll over inside a batch without a pause.

The iterator is grain: MapDataset.range(batches).map(host batch).to_iter_dataset() with
background prefetch threads; its state is just the index of the next global batch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile

import grain
import numpy as np

from mlm_jax import files
from mlm_jax.data import corpora, packing
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.data.spec import DataSpec

log = logging.getLogger(__name__)

BATCH_KEYS = ("tokens", "document_ids", "maskable", "word_starts", "example_ids", "epochs")
_NUM_BATCHES = 2**62  # "infinite": the train stream never ends


def cache_root(data: DataSpec) -> str:
    """Where tokenizers and tokenized splits are cached: <data_dir>/mlm_jax (local disk only)."""
    directory = corpora.data_dir(data)
    if "://" in directory:  # memory-mapped caches need a local file system
        return os.path.expanduser("~/.cache/mlm_jax")
    return os.path.join(directory, "mlm_jax")


@functools.lru_cache(maxsize=8)
def load_corpus(data: DataSpec) -> corpora.Corpus:
    """The spec's corpus, built on first use (once per process and spec)."""
    return corpora.load_corpus(data)


def get_tokenizer(data: DataSpec, workdir: str | None = None) -> tokenizer_lib.Tokenizer:
    """The run's tokenizer: workdir/tokenizer if present (a resumed run), else data.tokenizer,
    else a WordPiece vocabulary trained once per (corpus, vocab_size, lowercase) and cached.
    The chosen files are copied into workdir/tokenizer/ so a checkpoint carries its tokenizer."""
    import jax

    d = data
    run_copy = files.join(workdir, "tokenizer") if workdir else None
    if run_copy and files.has_dir(run_copy):
        log.info("using the run's tokenizer %s", run_copy)
        return tokenizer_lib.load_tokenizer(run_copy)
    if d.tokenizer:
        tokenizer = tokenizer_lib.load_tokenizer(d.tokenizer)
    elif jax.process_count() > 1:
        # Training is not bit-reproducible (tokenizers breaks ties in hash-map order), and each
        # host has its own cache: process 0's vocabulary is the run's, sent to the others.
        tokenizer = _from_process_0(lambda: _trained_tokenizer(data))
    else:
        tokenizer = _trained_tokenizer(data)
    if run_copy:
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            files.copy_dir(tmp, run_copy)
        tokenizer = tokenizer_lib.load_tokenizer(run_copy)  # exactly what a resumed run will load
    return tokenizer


def _trained_tokenizer(data: DataSpec) -> tokenizer_lib.Tokenizer:
    """The cached WordPiece vocabulary of the spec, trained on the train split if missing."""
    d = data
    corpus = load_corpus(data)
    casing = "uncased" if d.lowercase else "cased"
    cached = os.path.join(cache_root(data), "tokenizers", f"{corpus.key}-v{d.vocab_size}-{casing}")
    if not os.path.isdir(cached):
        log.info("training a %d-token WordPiece vocabulary on %s", d.vocab_size, corpus.key)
        trained = tokenizer_lib.train_wordpiece(
            corpora.iter_training_texts(corpus.train),
            vocab_size=d.vocab_size,
            lowercase=d.lowercase,
        )
        with tempfile.TemporaryDirectory() as tmp:
            trained.save(tmp)
            files.copy_dir(tmp, cached)
    return tokenizer_lib.load_tokenizer(cached)


def _from_process_0(make) -> tokenizer_lib.Tokenizer:
    """`make()` on process 0; every process gets its saved files (a collective: all must call)."""
    import jax
    from jax.experimental import multihost_utils

    payload = b""
    if jax.process_index() == 0:
        with tempfile.TemporaryDirectory() as tmp:
            make().save(tmp)
            saved = {}
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), encoding="utf-8") as f:
                    saved[name] = f.read()
        payload = json.dumps(saved).encode()
    size = int(multihost_utils.broadcast_one_to_all(np.int64(len(payload))))
    local = np.frombuffer(payload, np.uint8) if payload else np.zeros(size, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(local)).tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in json.loads(received).items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        return tokenizer_lib.load_tokenizer(tmp)


def packed_rows(data: DataSpec, tokenizer, split: str) -> packing.PackedRows:
    """Rows of the train or heldout split, tokenized once and cached on disk."""
    corpus = load_corpus(data)
    documents = {"train": corpus.train, "heldout": corpus.heldout}[split]
    cache_dir = os.path.join(
        cache_root(data), "tokens", corpus.key, f"{split}-{tokenizer.fingerprint()}"
    )
    stream = packing.tokenize_to_stream(documents, tokenizer, cache_dir)
    if stream.num_documents == 0:
        raise ValueError(
            f"config.data.dataset={data.dataset!r}: the {split} split has no documents"
        )
    return packing.PackedRows(
        stream, seq_len=data.seq_len, packing=data.packing, tokenizer=tokenizer
    )


def _host_slice(global_batch: int, process_index, process_count, what: str) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch % process_count:
        raise ValueError(f"{what}={global_batch}: not divisible by the {process_count} hosts")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index}: expected 0..{process_count - 1}")
    host_batch = global_batch // process_count
    return process_index * host_batch, host_batch


def _epoch_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"mlm_jax.data/{seed}/{epoch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class _HostBatches:
    """Global batch index -> this host's rows of it (a picklable callable for grain's map)."""

    def __init__(
        self, rows: packing.PackedRows, *, global_batch, host_offset, host_batch, seed, shuffle
    ):
        self.rows, self.global_batch = rows, global_batch
        self.host_offset, self.host_batch = host_offset, host_batch
        self.seed, self.shuffle = seed, shuffle

    def row_ids(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.rows)
        epochs, within = np.divmod(positions, n)
        if not self.shuffle:
            return within, epochs
        shuffle = grain.experimental.index_shuffle
        row_ids = np.asarray(
            [
                shuffle(int(i), max_index=n - 1, seed=_epoch_seed(self.seed, int(e)), rounds=4)
                for i, e in zip(within, epochs)
            ],
            np.int64,
        )
        return row_ids, epochs

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        start = int(batch_index) * self.global_batch + self.host_offset
        positions = np.arange(start, start + self.host_batch, dtype=np.int64)
        row_ids, epochs = self.row_ids(positions)
        batch = self.rows.rows(row_ids)
        batch["example_ids"] = row_ids.astype(np.int32)
        batch["epochs"] = epochs.astype(np.int32)
        return batch


class TrainIterator:
    """Infinite iterator of per-host batches with get_state() / set_state() for checkpoints."""

    def __init__(self, host_batches: _HostBatches, *, prefetch: int):
        dataset = grain.MapDataset.range(0, _NUM_BATCHES).map(host_batches)
        options = grain.ReadOptions(num_threads=max(prefetch, 1), prefetch_buffer_size=prefetch)
        dataset = dataset.to_iter_dataset(options)
        self._dataset = dataset
        self._host_batches = host_batches
        self._iterator = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        """JSON-serialisable: the next global batch, plus what must match on restore."""
        hb = self._host_batches
        return {
            "next_batch": int(self._iterator.get_state()["next_index"]),
            "global_batch_size": hb.global_batch,
            "num_rows": len(hb.rows),
            "seed": hb.seed,
        }

    def set_state(self, state: dict) -> None:
        hb = self._host_batches
        expected = {"global_batch_size": hb.global_batch, "num_rows": len(hb.rows), "seed": hb.seed}
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(
                    f"data iterator state has {key}={state.get(key)!r} but this run has {value!r}: "
                    "the checkpoint was written with another dataset, tokenizer, seq_len or batch size"
                )
        iterator = iter(self._dataset)
        iterator.set_state({"next_index": int(state["next_batch"])})
        self._iterator = iterator


def make_train_iterator(
    data: DataSpec, tokenizer, *, batch_size: int, seed: int, process_index=None, process_count=None
) -> TrainIterator:
    """This host's slice of each global train batch of `batch_size` rows, reshuffled every
    epoch from `seed`."""
    rows = packed_rows(data, tokenizer, "train")
    host_offset, host_batch = _host_slice(
        batch_size, process_index, process_count, "train.batch_size"
    )
    host_batches = _HostBatches(
        rows, global_batch=batch_size, host_offset=host_offset, host_batch=host_batch,
        seed=int(seed), shuffle=True,
    )  # fmt: skip
    return TrainIterator(host_batches, prefetch=data.prefetch)


def make_eval_batches(
    data: DataSpec,
    tokenizer,
    *,
    batch_size: int,
    num_batches: int,
    seed: int,
    process_index=None,
    process_count=None,
) -> list[dict]:
    """`num_batches` held-out batches (this host's slices), in a fixed order. If the held-out
    split has fewer rows than asked for, it wraps around (and says so)."""
    rows = packed_rows(data, tokenizer, "heldout")
    host_offset, host_batch = _host_slice(
        batch_size, process_index, process_count, "eval.batch_size"
    )
    wanted = num_batches * batch_size
    if wanted > len(rows):
        log.warning(
            "eval asks for %d rows, the held-out split has %d: rows repeat", wanted, len(rows)
        )
    host_batches = _HostBatches(
        rows, global_batch=batch_size, host_offset=host_offset, host_batch=host_batch,
        seed=int(seed), shuffle=False,
    )  # fmt: skip
    return [host_batches(i) for i in range(num_batches)]

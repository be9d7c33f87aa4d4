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
import logging
import os
import tempfile
from collections.abc import Iterator

import grain
import numpy as np

from mlm_jax import files
from mlm_jax.data import packing, rows, sources
from mlm_jax.data import tokenizer as tokenizer_lib
from mlm_jax.data.batch import Batch, with_row_ids
from mlm_jax.data.spec import DataSpec

log = logging.getLogger(__name__)

RUN_TOKENIZER = "tokenizer"  # the workdir's copy of its tokenizer
# Names cached vocabularies by how they were trained: v2 = the byte-reproducible trainer.
TOKENIZER_TRAINING = "wp2"
_NUM_BATCHES = 2**62  # "infinite": the train stream never ends


def cache_root(data: DataSpec) -> str:
    """Where tokenizers and tokenized splits are cached: <data_dir>/mlm_jax (local disk only)."""
    directory = sources.core.data_dir(data)
    if "://" in directory:  # memory-mapped caches need a local file system
        return os.path.expanduser("~/.cache/mlm_jax")
    return os.path.join(directory, "mlm_jax")


@functools.lru_cache(maxsize=8)
def load_corpus(data: DataSpec) -> sources.Corpus:
    """The spec's corpus, built on first use (once per process and spec)."""
    return sources.load_corpus(data)


def get_tokenizer(data: DataSpec) -> tokenizer_lib.Tokenizer:
    """The tokenizer the spec asks for: data.tokenizer, or (empty) a WordPiece vocabulary of
    data.vocab_size trained on the train split once and cached. Writes nothing to a workdir."""
    if sources.holds_rows(data.dataset):  # a prepared store: its own tokenizer, or the same
        store = rows.store_dir(data.dataset)
        tokenizer = tokenizer_lib.load_tokenizer(
            data.tokenizer or files.join(store, rows.TOKENIZER_DIR)
        )
        rows.check_tokenizer(data, tokenizer)
        return tokenizer
    if not data.tokenizer:  # training is byte-reproducible: every host may train (or find) its own
        return _trained_tokenizer(data)
    tokenizer = tokenizer_lib.load_tokenizer(data.tokenizer)
    _warn_if_trained_on_heldout(tokenizer, data)
    return tokenizer


def run_tokenizer(data: DataSpec, workdir: str, *, resuming: bool) -> tokenizer_lib.Tokenizer:
    """The run's tokenizer. A resumed run keeps the one its checkpoints were trained with
    (workdir/tokenizer/). A new run uses the config's, and a tokenizer/ a run left in the
    workdir before its first checkpoint must be that same vocabulary, or the run stops."""
    copy = files.join(workdir, RUN_TOKENIZER)
    if resuming:
        if not files.has_dir(copy):
            raise ValueError(f"{copy}: missing; the checkpoints of {workdir} need their tokenizer")
        log.info("using the run's tokenizer %s", copy)
        return tokenizer_lib.load_tokenizer(copy)
    tokenizer = get_tokenizer(data)
    if files.has_dir(copy) and not tokenizer_lib.load_tokenizer(copy).same_vocabulary(tokenizer):
        asked = (
            f"data.tokenizer={data.tokenizer!r}"
            if data.tokenizer
            else (f"the {data.vocab_size}-token vocabulary trained on {data.dataset}")
        )
        raise ValueError(
            f"{copy} holds another vocabulary than the config's ({asked}); use a new workdir, "
            "or delete that folder to start this one afresh"
        )
    return tokenizer


def keep_in_workdir(tokenizer: tokenizer_lib.Tokenizer, workdir: str) -> tokenizer_lib.Tokenizer:
    """Copies the tokenizer into workdir/tokenizer/ (once checks passed) and returns the copy,
    which is exactly what a resumed run loads."""
    copy = files.join(workdir, RUN_TOKENIZER)
    if not files.has_dir(copy):
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save(tmp)
            files.copy_dir(tmp, copy)
    return tokenizer_lib.load_tokenizer(copy)


def train_tokenizer(data: DataSpec) -> tokenizer_lib.Tokenizer:
    """A WordPiece vocabulary of data.vocab_size trained on the spec's train split, recording
    what it was trained on (so a run that holds out other documents can tell)."""
    corpus = load_corpus(data)
    tokenizer = tokenizer_lib.train_wordpiece(
        iter_training_texts(corpus.train),
        vocab_size=data.vocab_size,
        lowercase=data.lowercase,
    )
    tokenizer.trained_on = {
        "dataset": data.dataset,
        "heldout_fraction": data.heldout_fraction,
        "corpus": corpus.key,
    }
    return tokenizer


def iter_training_texts(
    source: sources.DocumentSource, *, max_chars: int = 200_000_000, chunk: int = 1024
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


def _trained_tokenizer(data: DataSpec) -> tokenizer_lib.Tokenizer:
    """The cached WordPiece vocabulary of the spec, trained on the train split if missing."""
    corpus = load_corpus(data)
    casing = "uncased" if data.lowercase else "cased"
    name = f"{corpus.key}-v{data.vocab_size}-{casing}-{TOKENIZER_TRAINING}"
    cached = os.path.join(cache_root(data), "tokenizers", name)
    if not os.path.isdir(cached):
        log.info("training a %d-token WordPiece vocabulary on %s", data.vocab_size, corpus.key)
        trained = train_tokenizer(data)
        with tempfile.TemporaryDirectory() as tmp:
            trained.save(tmp)
            files.copy_dir(tmp, cached)
    return tokenizer_lib.load_tokenizer(cached)


def _warn_if_trained_on_heldout(tokenizer: tokenizer_lib.Tokenizer, data: DataSpec) -> None:
    """Documents are held out by a hash of their text below the fraction, so a vocabulary
    trained with a smaller held-out fraction of the same dataset has seen some of this run's
    held-out documents (a dataset that ships its own held-out split keeps one corpus key)."""
    trained = tokenizer.trained_on or {}
    if trained.get("dataset") != data.dataset or trained.get("corpus") == load_corpus(data).key:
        return
    if float(trained.get("heldout_fraction", 1.0)) < data.heldout_fraction:
        log.warning(
            "data.tokenizer=%s was trained on %s holding out %g of the documents; this run holds "
            "out %g, so the vocabulary has seen documents this run evaluates on (train it with "
            "--heldout_fraction=%g)",
            data.tokenizer,
            data.dataset,
            trained["heldout_fraction"],
            data.heldout_fraction,
            data.heldout_fraction,
        )


def packed_rows(
    data: DataSpec, tokenizer, split: str, units=None
) -> packing.PackedRows | rows.StoreRows:
    """Rows of the train or heldout split, tokenized once and cached on disk (or, for a
    rows:<dir> dataset, read from the prepared store by row id: nothing tokenized or cached).
    units: a data.pmi.PmiUnits whose unit starts the rows also carry; the cache is named by it."""
    if sources.holds_rows(data.dataset):
        if units is not None:
            raise ValueError(
                f"config.data.dataset={data.dataset!r}: a prepared store holds no PMI units; "
                "masking.strategy=pmi needs a dataset of documents (python_docs, text:, parquet:, tfds:)"
            )
        rows.check_tokenizer(data, tokenizer)  # a resumed run's own copy must be the store's too
        return rows.StoreRows(rows.store_dir(data.dataset), split, tokenizer)
    corpus = load_corpus(data)
    documents = {"train": corpus.train, "heldout": corpus.heldout}[split]
    name = f"{split}-{tokenizer.fingerprint()}"
    if units is not None:
        name += f"-pmi{units.fingerprint}"
    cache_dir = os.path.join(cache_root(data), "tokens", corpus.key, name)
    stream = packing.tokenize_to_stream(documents, tokenizer, cache_dir, units=units)
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

    def __call__(self, batch_index: int) -> Batch:
        start = int(batch_index) * self.global_batch + self.host_offset
        positions = np.arange(start, start + self.host_batch, dtype=np.int64)
        row_ids, epochs = self.row_ids(positions)
        return with_row_ids(self.rows.rows(row_ids), row_ids, epochs)


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
    data: DataSpec,
    tokenizer,
    *,
    batch_size: int,
    seed: int,
    process_index=None,
    process_count=None,
    units=None,
) -> TrainIterator:
    """This host's slice of each global train batch of `batch_size` rows, reshuffled every
    epoch from `seed`. units: PMI units to mark (packed_rows)."""
    train_rows = packed_rows(data, tokenizer, "train", units)
    host_offset, host_batch = _host_slice(
        batch_size, process_index, process_count, "train.batch_size"
    )
    host_batches = _HostBatches(
        train_rows, global_batch=batch_size, host_offset=host_offset, host_batch=host_batch,
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
    units=None,
) -> list[dict]:
    """`num_batches` held-out batches (this host's slices), in a fixed order. If the held-out
    split has fewer rows than asked for, it wraps around (and says so)."""
    heldout = packed_rows(data, tokenizer, "heldout", units)
    host_offset, host_batch = _host_slice(
        batch_size, process_index, process_count, "eval.batch_size"
    )
    if len(heldout) < batch_size:
        raise ValueError(
            f"config.data.dataset={data.dataset!r}: the held-out split holds {len(heldout)} rows of "
            f"{data.seq_len} tokens, fewer than one eval batch (eval.batch_size={batch_size}), "
            "too few to evaluate; add text, raise data.heldout_fraction or lower eval.batch_size"
        )
    wanted = num_batches * batch_size
    if wanted > len(heldout):
        log.warning(
            "eval asks for %d rows, the held-out split has %d: rows repeat", wanted, len(heldout)
        )
    host_batches = _HostBatches(
        heldout, global_batch=batch_size, host_offset=host_offset, host_batch=host_batch,
        seed=int(seed), shuffle=False,
    )  # fmt: skip
    return [host_batches(i) for i in range(num_batches)]

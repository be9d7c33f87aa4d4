r"""Tokenize and pack a corpus once, on Apache Beam, into a prepared-rows store (data/rows.py).

    python -m mlm_jax.data.prepare --config=configs/bert.py:base \
        --config.data.dataset=text:'corpus/*.txt' --out=gs://BUCKET/rows/corpus-128 \
        [-- --runner=DataflowRunner --project=P --region=R --temp_location=gs://BUCKET/tmp]

Then train with --config.data.dataset=rows:gs://BUCKET/rows/corpus-128. Without Beam options
the pipeline runs on Beam's DirectRunner on this machine; any Beam runner runs the same one.
The config's data section says what to prepare (dataset, tokenizer or vocab_size, seq_len,
packing, text_unit, heldout_fraction); the tokenizer is trained here if the config names none,
exactly as a run would train it, and stored in <out>/tokenizer.

The pipeline, per split: documents in chunks -> tokenized chunks (the on-the-fly path's
packing.encode_documents) -> each chunk's place in the split's token stream (a side input of
every chunk's size) -> pieces of the stream keyed by the shard of rows they fall in ->
GroupByKey -> each shard's rows cut by packing.PackedRows, the on-the-fly path's own packer,
written as one ArrayRecord file. The manifest is written last, once every shard is written, so
a store without one is partly written and is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile

import numpy as np

from mlm_jax import checksums, cli, files
from mlm_jax.data import packing, rows, sources, store_transaction
from mlm_jax.data import tokenizer as tokenizer_lib

if __name__ == "__main__":
    cli.quiet_library_noise()  # before Beam's import, which logs a line about BigQuery
try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
except ModuleNotFoundError as missing:  # Beam is the [prepare] extra: one line, no traceback
    if __name__ != "__main__":
        raise
    cli.fail(
        cli.missing_package(missing.name, cli.install_extra("prepare"), "mlm_jax.data.prepare")
    )

DOCS_PER_CHUNK = 512  # documents tokenized by one Beam element
ROWS_PER_SHARD = 65536  # rows per ArrayRecord file (~8-64 MB at seq_len 128-512)
WRITER_OPTIONS = "group_size:1"  # one row a chunk (random access); zstd halves the bytes


class _Tokenize(beam.DoFn):
    """(chunk index, first document, end) -> (chunk index, its piece of the token stream)."""

    def __init__(self, data, tokenizer_dir: str, split: str):
        self.data, self.tokenizer_dir, self.split = data, tokenizer_dir, split

    def setup(self):
        from mlm_jax.data import loader

        corpus = loader.load_corpus(self.data)
        self.documents = {"train": corpus.train, "heldout": corpus.heldout}[self.split]
        self.tokenizer = tokenizer_lib.load_tokenizer(self.tokenizer_dir)

    def process(self, element):
        index, begin, end = element
        tokens, starts, lengths, _ = packing.encode_documents(
            self.documents.get_batch(range(begin, end)), self.tokenizer
        )
        yield index, {"tokens": tokens, "starts": starts, "lengths": np.asarray(lengths, np.int64)}


def _layout(sizes: dict, *, seq_len: int, packing_name: str, rows_per_shard: int) -> dict:
    """Every chunk's first token and document in the split, and the split's row count."""
    order = sorted(sizes)
    token_counts = np.asarray([sizes[i][0] for i in order], np.int64)
    doc_counts = np.asarray([sizes[i][1] for i in order], np.int64)
    token_starts = np.concatenate([[0], np.cumsum(token_counts)])
    doc_starts = np.concatenate([[0], np.cumsum(doc_counts)])
    num_tokens, num_docs = int(token_starts[-1]), int(doc_starts[-1])
    num_rows = -(-num_tokens // (seq_len - 1)) if packing_name == "concat" else num_docs
    return {
        "token_start": {i: int(t) for i, t in zip(order, token_starts)},
        "doc_start": {i: int(d) for i, d in zip(order, doc_starts)},
        "tokens": num_tokens,
        "documents": num_docs,
        "rows": num_rows,
        "shards": max(1, -(-num_rows // rows_per_shard)),
    }


def _piece_bounds(t0, d0, doc_starts, num_tokens, *, seq_len, packing_name, rows_per_shard):
    """[(shard, begin, end)]: the part [begin, end) of a chunk's tokens that falls in each shard
    of rows, for a chunk whose first token is token t0 of the stream, its first document d0."""
    if packing_name == "concat":  # shard s holds stream tokens [s*R*(L-1), (s+1)*R*(L-1))
        span = rows_per_shard * (seq_len - 1)
        shards = range(t0 // span, (t0 + num_tokens - 1) // span + 1)
        return [(s, max(0, s * span - t0), min(num_tokens, (s + 1) * span - t0)) for s in shards]
    # pad: shard s holds documents [s*R, (s+1)*R), one row each
    ends = np.concatenate([doc_starts, [num_tokens]])
    n = len(doc_starts)
    shards = range(d0 // rows_per_shard, (d0 + n - 1) // rows_per_shard + 1)
    return [
        (s, int(ends[min(max(0, s * rows_per_shard - d0), n)]),
         int(ends[min(max(0, (s + 1) * rows_per_shard - d0), n)]))
        for s in shards
    ]  # fmt: skip


def _shard_pieces(element, layout: dict, **packing_args):
    """A tokenized chunk -> (shard, piece) for each shard of rows its tokens fall in. A piece is
    (its first token's place in the stream, tokens, word starts, where documents start in it)."""
    index, chunk = element
    t0, d0 = layout["token_start"][index], layout["doc_start"][index]
    lengths = chunk["lengths"]
    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # in the chunk
    bounds = _piece_bounds(t0, d0, doc_starts, len(chunk["tokens"]), **packing_args)
    for s, a, b in bounds if len(lengths) else ():
        inside = doc_starts[(doc_starts >= a) & (doc_starts < b)] - a
        yield s, (t0 + a, chunk["tokens"][a:b], chunk["starts"][a:b], inside)


def shard_rows(
    pieces, shard: int, layout: dict, tokenizer, *, seq_len, packing_name, rows_per_shard
):
    """One shard's pieces of the stream -> its rows, cut by the on-the-fly packer."""
    pieces = sorted(pieces, key=lambda p: p[0])
    tokens = np.concatenate([p[1] for p in pieces])
    starts = np.concatenate([p[2] for p in pieces])
    place = np.concatenate([[0], np.cumsum([len(p[1]) for p in pieces])[:-1]])
    doc_starts = np.concatenate([p[3] + off for p, off in zip(pieces, place)] + [[0, len(tokens)]])
    offsets = np.unique(doc_starts.astype(np.int64))  # sorted; [0] and the end always in
    stream = packing.TokenStream(tokens=tokens, word_starts=starts, offsets=offsets)
    packed = packing.PackedRows(stream, seq_len=seq_len, packing=packing_name, tokenizer=tokenizer)
    count = min(rows_per_shard, layout["rows"] - shard * rows_per_shard)
    return packed.rows(np.arange(count, dtype=np.int64))


class _WriteShard(beam.DoFn):
    """(shard, pieces) -> its ArrayRecord file in the store; yields (split, name, rows)."""

    def __init__(self, out: str, split: str, tokenizer_dir: str, token_dtype: str, **packing_args):
        self.out, self.split, self.tokenizer_dir = out, split, tokenizer_dir
        self.token_dtype, self.packing_args = token_dtype, packing_args

    def setup(self):
        self.tokenizer = tokenizer_lib.load_tokenizer(self.tokenizer_dir)

    def process(self, element, layout):
        from array_record.python import array_record_module

        shard, pieces = element
        batch = shard_rows(list(pieces), shard, layout, self.tokenizer, **self.packing_args)
        records = rows.encode_rows(
            batch, rows.row_dtype(self.packing_args["seq_len"], self.token_dtype)
        )
        name = rows.shard_name(self.split, shard, layout["shards"])
        local_dir = self.out if not files.is_remote(self.out) else tempfile.mkdtemp()
        tmp = os.path.join(local_dir, f".tmp-{name}-{os.getpid()}")
        writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
        for record in records:
            writer.write(record)
        writer.close()
        digest, size = checksums.file_digest(tmp), os.path.getsize(tmp)
        if files.is_remote(self.out):
            files.upload_file(tmp, files.join(self.out, name))
            os.remove(tmp)
        else:
            os.replace(tmp, os.path.join(self.out, name))
        yield self.split, name, len(records), digest, size


def _manifest(written, layouts: dict, *, data, tokenizer, token_dtype, rows_per_shard, corpus_key):
    splits = {}
    for split in rows.SPLITS:
        shards = sorted((name, n, d, b) for s, name, n, d, b in written if s == split)
        layout = layouts[split]
        if sum(s[1] for s in shards) != layout["rows"] or len(shards) != layout["shards"]:
            raise RuntimeError(f"{split}: wrote {shards}, expected {layout['rows']} rows")
        splits[split] = {
            "rows": layout["rows"],
            "tokens": layout["tokens"],
            "documents": layout["documents"],
            "rows_per_shard": rows_per_shard,
            "shards": [s[0] for s in shards],
            "sha256": {s[0]: s[2] for s in shards},  # rows.verify_shards checks them
            "bytes": {s[0]: s[3] for s in shards},
        }
    manifest = {
        "format": rows.FORMAT,
        "seq_len": data.seq_len,
        "packing": data.packing,
        "token_dtype": token_dtype,
        "tokenizer": {
            "path": rows.TOKENIZER_DIR,
            "fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size,
        },
        "source": {
            "dataset": data.dataset,
            "corpus": corpus_key,
            "text_unit": data.text_unit,
            "text_field": data.text_field,
            "heldout_fraction": data.heldout_fraction,
            "tokenizer": data.tokenizer or f"trained: {data.vocab_size} tokens",
        },
        "splits": splits,
    }
    return {**manifest, "fingerprint": rows.manifest_fingerprint(manifest)}


def prepare(
    data,
    out: str,
    *,
    pipeline_args: list[str] = (),
    docs_per_chunk: int = DOCS_PER_CHUNK,
    rows_per_shard: int = ROWS_PER_SHARD,
) -> dict:
    """Prepares the store of `data` (a DataSpec) in `out` (a folder or gs://); its manifest."""
    from mlm_jax.data import loader

    if sources.holds_rows(data.dataset):
        raise ValueError(f"data.dataset={data.dataset!r}: already a prepared store")
    out = out.rstrip("/")
    corpus = loader.load_corpus(data)  # built (TFDS) before the workers read it
    with store_transaction.transaction(out) as staging:
        _run_pipeline(data, staging, corpus, pipeline_args, docs_per_chunk, rows_per_shard)
    return rows.read_manifest(out)


def _run_pipeline(data, out, corpus, pipeline_args, docs_per_chunk, rows_per_shard) -> None:
    """The Beam pipeline that writes the store's tokenizer, shards and (last) manifest to out."""
    from mlm_jax.data import loader

    tokenizer_dir = files.join(out, rows.TOKENIZER_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        loader.get_tokenizer(data).save(tmp)
        files.copy_dir(tmp, tokenizer_dir)
    tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)  # what every reader will load
    token_dtype = packing.token_dtype(tokenizer).name
    packing_args = {"seq_len": data.seq_len, "packing_name": data.packing,
                    "rows_per_shard": rows_per_shard}  # fmt: skip
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        layouts, written = {}, []
        for split in rows.SPLITS:
            n = len({"train": corpus.train, "heldout": corpus.heldout}[split])
            layouts[split], shards = _split_stages(
                pipeline, split, n, data, out, tokenizer_dir, token_dtype, docs_per_chunk,
                packing_args,
            )  # fmt: skip
            written.append(shards)
        layouts_by_split = (
            [layouts[s] | f"{s}/keyed" >> beam.Map(lambda lay, s=s: (s, lay)) for s in rows.SPLITS]
            | "layouts" >> beam.Flatten()
            | "layouts by split" >> beam.combiners.ToDict()
        )
        _ = (
            written
            | "shards" >> beam.Flatten()
            | "all shards" >> beam.combiners.ToList()
            | "manifest" >> beam.Map(
                _write_manifest, beam.pvalue.AsSingleton(layouts_by_split), out=out, data=data,
                tokenizer_dir=tokenizer_dir, token_dtype=token_dtype,
                rows_per_shard=rows_per_shard, corpus_key=corpus.key,
            )
        )  # fmt: skip


def _split_stages(pipeline, split, n, data, out, tokenizer_dir, token_dtype, docs_per_chunk,
                  packing_args):  # fmt: skip
    """One split's stages: chunks of documents tokenized, their sizes -> the split's layout
    (which row of which shard each chunk's tokens fill), then its shards written."""
    ranges = [(i, b, min(b + docs_per_chunk, n)) for i, b in enumerate(range(0, n, docs_per_chunk))]
    chunks = (
        pipeline
        | f"{split}/chunks" >> beam.Create(ranges)
        | f"{split}/tokenize" >> beam.ParDo(_Tokenize(data, tokenizer_dir, split))
    )
    layout = (
        chunks
        | f"{split}/sizes"
        >> beam.Map(lambda kv: (kv[0], (len(kv[1]["tokens"]), len(kv[1]["lengths"]))))
        | f"{split}/all sizes" >> beam.combiners.ToDict()
        | f"{split}/layout" >> beam.Map(_layout, **packing_args)
    )
    shards = (
        chunks
        | f"{split}/pieces"
        >> beam.FlatMap(_shard_pieces, beam.pvalue.AsSingleton(layout), **packing_args)
        | f"{split}/by shard" >> beam.GroupByKey()
        | f"{split}/write"
        >> beam.ParDo(
            _WriteShard(out, split, tokenizer_dir, token_dtype, **packing_args),
            beam.pvalue.AsSingleton(layout),
        )
    )
    return layout, shards


def _write_manifest(written, layouts, *, out, data, tokenizer_dir, **fields):
    tokenizer = tokenizer_lib.load_tokenizer(tokenizer_dir)
    manifest = _manifest(written, layouts, data=data, tokenizer=tokenizer, **fields)
    files.write_text(files.join(out, rows.MANIFEST), json.dumps(manifest, indent=2))


def main(argv: list[str]) -> None:
    import tensorflow_datasets as tfds
    from absl import flags

    from mlm_jax import cli, logs
    from mlm_jax.data.spec import DataSpec

    logs.configure()  # Beam's INFO lines (type hints, runners) are not the user's business
    tfds.display_progress_bar(False)  # a corpus built on first use, as mlm_jax.main builds it
    flags_ = flags.FLAGS
    try:
        with cli.one_line_errors(), store_transaction.interrupts_raise():
            data = DataSpec.from_config(flags_.config.data)
            manifest = prepare(
                data,
                flags_.out,
                pipeline_args=argv[1:],
                docs_per_chunk=flags_.docs_per_chunk,
                rows_per_shard=flags_.rows_per_shard,
            )
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the transaction has cleaned up
        how = str(e) or "SIGINT"
        cli.fail(
            f"--out={flags_.out}: prepare stopped by {how}; nothing was published",
            128 + signal.Signals[how].value,
        )
    train = manifest["splits"]["train"]
    print(
        f"prepared {flags_.out}: {train['rows']} train rows ({train['tokens']} tokens) in "
        f"{len(train['shards'])} shards, {manifest['splits']['heldout']['rows']} held-out rows; "
        f"train with --config.data.dataset={rows.PREFIX}{flags_.out}",
        file=sys.stderr,
    )


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file; its data section is prepared.", lock_config=True
    )
    flags.DEFINE_string("out", None, "The store's folder (local or gs://), new or empty.")
    flags.DEFINE_integer("docs_per_chunk", DOCS_PER_CHUNK, "Documents per tokenizing element.")
    flags.DEFINE_integer("rows_per_shard", ROWS_PER_SHARD, "Rows per ArrayRecord file.")
    flags.mark_flags_as_required(["config", "out"])


if __name__ == "__main__":
    from absl import app

    from mlm_jax import cli

    _define_flags()
    app.run(main, flags_parser=cli.absl_flags_parser(__doc__, __name__))

"""Input-pipeline throughput on one host: tokens/s the loader delivers, and one-off build costs.

    python experiments/bench_data.py [--config=configs/tiny.py] [--batches=300] [--data_dir=DIR]
    python experiments/bench_data.py --config=configs/tiny.py --dataset=rows:DIR   # a store

Prints (1) the one-off costs: building the corpus, getting the tokenizer, tokenizing the train
split into the token cache (tokens/s of the batched tokenizer); (2) the steady state: per-host
batches/s and tokens/s through the grain iterator with prefetch, which is what a train step
sees. Compare (2) with the train step's batch_size * seq_len tokens per step.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from mlm_jax.config.files import load_config_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")
    )
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument(
        "--data_dir", default="", help="default: a fresh temporary dir (cold caches)"
    )
    parser.add_argument("--dataset", default="", help="config.data.dataset (default: the config's)")
    args = parser.parse_args()

    from mlm_jax.data import loader, packing
    from mlm_jax.data.spec import DataSpec

    config = load_config_file(args.config)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_data_")
    config.data.data_dir = data_dir
    config.data.dataset = args.dataset or config.data.dataset
    data = DataSpec.from_config(config.data)

    from_store = config.data.dataset.startswith("rows:")  # prepared: nothing to build or tokenize
    start = time.perf_counter()
    corpus = None if from_store else loader.load_corpus(data)
    if corpus is not None:
        print(
            f"corpus {config.data.dataset}: {len(corpus.train)} train docs, build {time.perf_counter() - start:.1f}s"
        )
    start = time.perf_counter()
    tokenizer = loader.get_tokenizer(data)
    print(f"tokenizer: vocab {tokenizer.vocab_size}, {time.perf_counter() - start:.1f}s")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if corpus is not None:
            stream = packing.tokenize_to_stream(
                corpus.train, tokenizer, os.path.join(tmp, "stream")
            )
            seconds = time.perf_counter() - start
            print(
                f"tokenize train split: {len(stream.tokens):,} tokens in {seconds:.1f}s = {len(stream.tokens) / seconds:,.0f} tokens/s"
            )

    iterator = loader.make_train_iterator(
        data, tokenizer, batch_size=config.train.batch_size, seed=config.seed
    )
    batch = next(iterator)  # warm up: token cache built, prefetch threads started
    rows, seq_len = batch["tokens"].shape
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    seconds = time.perf_counter() - start
    tokens_per_s = args.batches * rows * seq_len / seconds
    print(
        f"loader: {args.batches / seconds:,.0f} batches/s of {rows}x{seq_len} = {tokens_per_s:,.0f} tokens/s "
        f"(prefetch={config.data.prefetch}, packing={config.data.packing})"
    )
    print(
        f"a train step consumes {rows * seq_len} tokens: the loader feeds {args.batches / seconds:,.0f} steps/s"
    )
    if from_store:  # rows read by id from the store's ArrayRecord shards, this host's only
        print(f"store {config.data.dataset}: {args.batches * rows / seconds:,.0f} rows/s per host")
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

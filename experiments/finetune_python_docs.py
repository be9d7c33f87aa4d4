"""Benchmark: does MLM pretraining on python_docs help a downstream task? Real vs shuffled words.

    python experiments/finetune_python_docs.py --pretrained=RUN_DIR --out=DIR [--task_dir=DIR]

Builds a balanced sentence task from the built-in corpus: label `real` for a sentence as
written, `shuffled` for the same words in a random order. Both classes hold the same bag of
words, so only word order separates them, which is what an MLM learns and a model that only
counts words cannot. Training sentences come from the corpus's training documents, dev
sentences from its held-out documents (the same hash split as data.heldout_fraction), so dev
text was never seen in pretraining. Then fine-tunes the run's encoder and, as the baseline, the
same architecture from random initialisation, and prints both with the majority-class accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mlm_jax.data.python_docs import heldout_by_hash, stdlib_documents  # noqa: E402

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*,?$")


def sentences(documents: list[str], min_words: int = 8, max_words: int = 24) -> list[list[str]]:
    """Prose sentences (mostly plain words, no code) as word lists, final period dropped."""
    out = []
    for doc in documents:
        for raw in re.split(r"(?<=[.!?])\s+|\n\s*\n", doc):
            words = raw.replace("\n", " ").strip().rstrip(".!?").split()
            if not (min_words <= len(words) <= max_words):
                continue
            if sum(bool(_WORD.match(w)) for w in words) >= 0.9 * len(words):
                out.append(words)
    return out


def examples(word_lists: list[list[str]], count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (label, text) pairs, half real and half shuffled, from distinct sentences."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(word_lists))[:count]
    out = []
    for i, index in enumerate(order):
        words = list(word_lists[index])
        if i % 2:
            shuffled = list(words)
            while shuffled == words:
                rng.shuffle(shuffled)
            out.append(("shuffled", " ".join(shuffled)))
        else:
            out.append(("real", " ".join(words)))
    return out


def same_document_pairs(docs: list[str], count: int, seed: int) -> list[tuple[str, str, str]]:
    """`count` (label, a, b): half two sentences of one document, half of two documents."""
    rng = np.random.default_rng(seed)
    per_doc = [[" ".join(w) for w in sentences([d])] for d in docs]
    rich = [s for s in per_doc if len(s) >= 2]
    out = []
    for i in range(count):
        if i % 2 == 0:
            doc = rich[rng.integers(len(rich))]
            a, b = rng.choice(len(doc), 2, replace=False)
            out.append(("same", doc[a], doc[b]))
        else:
            d1, d2 = rng.choice(len(rich), 2, replace=False)
            out.append(
                (
                    "different",
                    rich[d1][rng.integers(len(rich[d1]))],
                    rich[d2][rng.integers(len(rich[d2]))],
                )
            )
    return out


def build_task(
    task_dir: str,
    *,
    kind: str = "order",
    heldout_fraction: float = 0.05,
    num_train: int = 2000,
    num_dev: int = 500,
    seed: int = 0,
) -> str:
    """Writes train.tsv and dev.tsv; returns the `tsv:TRAIN,DEV` task spec."""
    docs = stdlib_documents()
    train_docs = [d for d in docs if not heldout_by_hash(d, heldout_fraction)]
    dev_docs = [d for d in docs if heldout_by_hash(d, heldout_fraction)]
    os.makedirs(task_dir, exist_ok=True)
    paths = []
    for name, split_docs, count in (("train", train_docs, num_train), ("dev", dev_docs, num_dev)):
        path = os.path.join(task_dir, f"{name}.tsv")
        if kind == "same_doc":
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(
                    "\t".join(row) + "\n" for row in same_document_pairs(split_docs, count, seed)
                )
            paths.append(path)
            continue
        pool = sentences(split_docs)
        if len(pool) < count:
            count = len(pool) - len(pool) % 2
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"{label}\t{text}\n" for label, text in examples(pool, count, seed))
        paths.append(path)
    return "tsv:" + ",".join(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a finished run directory")
    parser.add_argument("--out", required=True, help="where the task and results go")
    parser.add_argument(
        "--task",
        choices=("order", "same_doc"),
        default="order",
        help="order: real vs word-shuffled sentence; same_doc: are two sentences from one document",
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_len", type=int, default=64, help="tokens per sentence")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_dev", type=int, default=500)
    args = parser.parse_args()

    import logging

    from mlm_jax import finetune

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("mlm_jax").setLevel(logging.INFO)
    task = build_task(
        os.path.join(args.out, "task"),
        kind=args.task,
        num_train=args.num_train,
        num_dev=args.num_dev,
    )
    results = {}
    for init in ("pretrained", "random"):
        results[init] = finetune.finetune(
            args.pretrained,
            task,
            os.path.join(args.out, init),
            init=init,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            max_len=args.max_len,
        )
    summary = {
        "task": task,
        "train_examples": results["pretrained"]["train_examples"],
        "dev_examples": results["pretrained"]["dev_examples"],
        "majority_accuracy": results["pretrained"]["dev/majority_accuracy"],
        "pretrained_accuracy": results["pretrained"]["dev/accuracy"],
        "random_init_accuracy": results["random"]["dev/accuracy"],
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

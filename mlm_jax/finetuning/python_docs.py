"""Tasks from the built-in corpus (python_docs): does pretraining help a downstream task?

`order`: label `real` for a sentence as written, `shuffled` for the same words in a random
order; both classes hold the same bag of words, so only word order separates them, which is
what an MLM learns and a model that only counts words cannot. `same_doc`: are two sentences
from one document (`same`, `different`)?

Training examples come from the corpus's training documents, dev examples from its held-out
documents (the hash split of the run's own data.heldout_fraction), and a dev sentence that also
occurs in a training document (boilerplate repeated across pages) is dropped, so no dev text was
seen in pretraining. Sentences are distinct within a split and rows are drawn without
replacement, so a small pool gives fewer examples (logged), never repeats.
"""

from __future__ import annotations

import functools
import logging
import re

import numpy as np

from mlm_jax import files

log = logging.getLogger(__name__)

KINDS = ("order", "same_doc")
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


def same_document_pairs(per_doc: list[list[str]], count: int, seed: int) -> list[tuple[str, ...]]:
    """Up to `count` distinct (label, a, b) rows: half two sentences of one document, half
    sentences of two documents; fewer (even) when the documents cannot give that many."""
    rng = np.random.default_rng(seed)
    rich = [doc for doc in per_doc if len(doc) >= 2]
    same = [(d, i, j) for d, doc in enumerate(rich) for i in range(len(doc)) for j in range(i + 1, len(doc))]  # fmt: skip
    half = min(count // 2, len(same), len(rich) * (len(rich) - 1) // 2)
    same_rows = [("same", rich[d][i], rich[d][j]) for d, i, j in (same[k] for k in rng.permutation(len(same))[:half])]  # fmt: skip
    different, tries = set(), 0
    while len(different) < half and tries < 100 * half:  # distinct (document, sentence) pairs
        tries += 1
        d1, d2 = rng.choice(len(rich), 2, replace=False)
        different.add((d1, rng.integers(len(rich[d1])), d2, rng.integers(len(rich[d2]))))
    half = min(half, len(different))
    diff_rows = [("different", rich[a][i], rich[b][j]) for a, i, b, j in sorted(different)[:half]]
    diff_rows = [diff_rows[k] for k in rng.permutation(len(diff_rows))]
    return [row for pair in zip(same_rows[:half], diff_rows) for row in pair]


def _distinct(texts: list[str], kept: set, unseen_in: str = "") -> list[str]:
    """texts not in `kept` (which gathers them), nor in the training text when given."""
    out = []
    for text in texts:
        if text not in kept and not (unseen_in and text in unseen_in):
            kept.add(text)
            out.append(text)
    return out


@functools.lru_cache(maxsize=8)  # a sweep fine-tunes many runs on the same task
def task_rows(
    kind: str,
    heldout_fraction: float = 0.05,
    num_train: int = 2000,
    num_dev: int = 500,
    seed: int = 0,
) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
    """(train rows, dev rows) of `kind`, each row (label, text[, text2])."""
    from mlm_jax.data.sources.built import heldout_by_hash
    from mlm_jax.data.sources.python_docs import stdlib_documents

    if kind not in KINDS:
        raise ValueError(f"python_docs task {kind!r}: expected one of {', '.join(KINDS)}")
    docs = stdlib_documents()
    train_docs = [d for d in docs if not heldout_by_hash(d, heldout_fraction)]
    dev_docs = [d for d in docs if heldout_by_hash(d, heldout_fraction)]
    train_text = " ".join(" ".join(d.split()) for d in train_docs)  # whitespace-normalised
    out = []
    for name, split_docs, count in (("train", train_docs, num_train), ("dev", dev_docs, num_dev)):
        unseen_in, kept = (train_text if name == "dev" else ""), set()
        # Each sentence once in the split: boilerplate repeated across pages stays in the first.
        per_doc = [_distinct([" ".join(w) for w in sentences([d])], kept, unseen_in) for d in split_docs]  # fmt: skip
        if kind == "same_doc":
            rows = same_document_pairs(per_doc, count, seed)
        else:
            pool = [text.split() for doc in per_doc for text in doc]
            rows = examples(pool, min(count, len(pool) - len(pool) % 2), seed)
        if len(rows) < count:
            log.warning("%s: %d %s examples (the documents give no more)", name, len(rows), kind)
        out.append(tuple(tuple(row) for row in rows))
    return out[0], out[1]


def heldout_fraction(run_dir: str) -> float:
    """The run's own data.heldout_fraction: its held-out documents are the dev documents. One
    ValueError line when `run_dir` is no run of this project pretrained on python_docs."""
    from mlm_jax.training.checkpoint import saved_config

    config = saved_config(run_dir) if run_dir and files.isdir(run_dir) else None
    if config is None:
        raise ValueError(
            f"python_docs tasks need --pretrained=RUN_DIR, a run of this project (got "
            f"{run_dir!r}): its held-out documents become the dev documents"
        )
    if config.data.dataset != "python_docs":
        raise ValueError(
            f"--pretrained={run_dir} was pretrained on data.dataset={config.data.dataset!r}; "
            "python_docs tasks are built from python_docs and must hold out what the run never saw"
        )
    return float(config.data.heldout_fraction)

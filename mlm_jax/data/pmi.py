"""PMI-masking units (Levine et al., ICLR 2021): n-grams of words that co-occur far more than
their parts, masked as one unit.

Build once over a corpus's training split:

    python -m mlm_jax.data.pmi --dataset=python_docs --tokenizer=DIR --out=PMI_DIR

then train with `masking.strategy=pmi masking.pmi_vocab=PMI_DIR`. A word here is a WordPiece
word (a start piece and its ## continuations), so a unit never splits a word. For an n-gram w
(n = 2..max_n) with count c(w) >= min_count, the score is Levine et al.'s

    PMI_n(w) = min over segmentations of w into 2..n contiguous parts s_1..s_k of
               log p(w) - sum_i log p(s_i),     p(x) = c(x) / (number of |x|-grams),

so an n-gram scores high only if no split of it explains its frequency. The vocabulary is the
vocab_size top-scoring n-grams. While packing, the host marks unit starts: each document's
words are matched left to right against the vocabulary (longest n-gram first), and a match
becomes one unit (the word starts inside it are cleared). Masking then takes these
`unit_starts` exactly as whole_word takes word starts; arrays in, never corpora.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os

import numpy as np

from mlm_jax import checksums, files

VOCAB_FILE = "pmi_vocab.txt"  # one n-gram per line: words by spaces, a word's piece ids by ","
META_FILE = "pmi_meta.json"


@dataclasses.dataclass(frozen=True)
class PmiUnits:
    """An n-gram vocabulary, ready to mark unit starts in tokenized documents."""

    ngrams: frozenset  # of tuples of words; a word is a tuple of piece ids
    max_n: int
    fingerprint: str  # names the token cache built with it

    def unit_starts(self, ids: np.ndarray, word_starts: np.ndarray) -> np.ndarray:
        """word_starts with the starts inside each matched n-gram cleared (greedy, longest first)."""
        bounds = list(np.flatnonzero(word_starts)) + [len(ids)]
        words = document_words(ids, word_starts)
        out = word_starts.copy()
        i = 0
        while i < len(words):
            for n in range(min(self.max_n, len(words) - i), 1, -1):
                if tuple(words[i : i + n]) in self.ngrams:
                    out[bounds[i + 1] : bounds[i + n]] = False
                    i += n
                    break
            else:
                i += 1
        return out


def document_words(ids: np.ndarray, word_starts: np.ndarray) -> list[tuple[int, ...]]:
    bounds = list(np.flatnonzero(word_starts)) + [len(ids)]
    return [tuple(int(i) for i in ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def count_ngrams(word_documents, max_n: int) -> list[collections.Counter]:
    """counts[n][ngram] for n = 1..max_n (index 0 unused), n-grams inside a document only."""
    counts = [collections.Counter() for _ in range(max_n + 1)]
    for words in word_documents:
        for n in range(1, max_n + 1):
            counts[n].update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return counts


def _segmentations(n: int):
    """All ways to cut range(n) into >= 2 contiguous parts, as lists of (start, end)."""
    for mask in range(1, 2 ** (n - 1)):
        cuts = [i + 1 for i in range(n - 1) if mask >> i & 1]
        edges = [0, *cuts, n]
        yield list(zip(edges[:-1], edges[1:]))


def pmi_score(ngram: tuple, counts: list[collections.Counter], totals: list[int]) -> float:
    """Levine et al.'s PMI_n: the smallest log-ratio of p(ngram) to a segmentation's product."""
    n = len(ngram)
    log_p = math.log(counts[n][ngram] / totals[n])
    best = math.inf
    for parts in _segmentations(n):
        log_parts = sum(math.log(counts[b - a][ngram[a:b]] / totals[b - a]) for a, b in parts)
        best = min(best, log_p - log_parts)
    return best


def build_vocabulary(word_documents, *, max_n: int, min_count: int, vocab_size: int):
    """[(score, ngram)] of the vocab_size best n-grams (n = 2..max_n, count >= min_count)."""
    counts = count_ngrams(word_documents, max_n)
    totals = [max(sum(c.values()), 1) for c in counts]
    scored = [
        (pmi_score(ngram, counts, totals), ngram)
        for n in range(2, max_n + 1)
        for ngram, c in counts[n].items()
        if c >= min_count
    ]
    scored.sort(key=lambda x: (-x[0], x[1]))  # ties broken by ids: the same file every time
    return scored[:vocab_size]


def write_vocabulary(out_dir: str, scored, meta: dict) -> None:
    """pmi_vocab.txt, then pmi_meta.json with its SHA-256 (written last: a vocabulary without
    it is partly written). A local folder is built aside and renamed into place whole."""
    lines = [" ".join(",".join(str(i) for i in word) for word in ngram) for _, ngram in scored]
    text = "\n".join(lines) + "\n"
    meta = {**meta, "sha256": checksums.bytes_digest(text.encode())}
    if files.is_remote(out_dir):
        files.write_text(files.join(out_dir, VOCAB_FILE), text)
        files.write_text(files.join(out_dir, META_FILE), json.dumps(meta, indent=2) + "\n")
        return
    with files.new_local_dir(out_dir) as tmp:
        files.write_text(os.path.join(tmp, VOCAB_FILE), text)
        files.write_text(os.path.join(tmp, META_FILE), json.dumps(meta, indent=2) + "\n")


def _read_vocabulary(directory: str) -> tuple[str, dict]:
    """(pmi_vocab.txt's text, its meta), checked against each other: one line naming the file
    that is missing, not text, not JSON, or whose bytes are not the ones built."""
    path, meta_path = files.join(directory, VOCAB_FILE), files.join(directory, META_FILE)
    if not (files.exists(path) and files.exists(meta_path)):
        raise ValueError(
            f"config.masking.pmi_vocab={directory!r}: no {VOCAB_FILE} and {META_FILE} there; "
            "build them with python -m mlm_jax.data.pmi"
        )
    try:
        text = files.read_text(path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not text (byte {e.start} is not UTF-8); rebuild it") from None
    try:
        meta = json.loads(files.read_text(meta_path))
        max_n = int(meta["max_n"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: not a PMI vocabulary's meta ({e!r}); rebuild it") from None
    digest = checksums.bytes_digest(text.encode())
    if meta.get("sha256", digest) != digest:
        raise ValueError(
            f"{path}: not the bytes built (sha256 {digest[:12]}..., {META_FILE} says "
            f"{meta['sha256'][:12]}...): truncated or edited; rebuild it"
        )
    lines = sum(1 for line in text.splitlines() if line.strip())
    if "kept" in meta and lines != meta["kept"]:  # a vocabulary built before the sha256
        raise ValueError(f"{path}: {lines} n-grams, {META_FILE} says {meta['kept']}; rebuild it")
    return text, {**meta, "max_n": max_n}


def _parse_ngrams(text: str, path: str, vocab_size: int | None) -> frozenset:
    """The n-grams of pmi_vocab.txt; a line that is not piece ids (below vocab_size) is one line."""
    ngrams = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ngram = tuple(tuple(int(i) for i in word.split(",")) for word in line.split())
        except ValueError:
            raise ValueError(
                f"{path}: line {number} {line[:60]!r} is not words of piece ids"
            ) from None
        top = max(i for word in ngram for i in word)
        if min(i for word in ngram for i in word) < 0 or (vocab_size and top >= vocab_size):
            raise ValueError(
                f"{path}: line {number} holds id {top}, beyond the tokenizer's {vocab_size} ids "
                "(built with another tokenizer?); rebuild it"
            )
        ngrams.add(ngram)
    return frozenset(ngrams)


def load_units(directory: str, tokenizer=None) -> PmiUnits:
    """The vocabulary in `directory`; with a tokenizer, refuses one built with another."""
    text, meta = _read_vocabulary(directory)
    if tokenizer is not None and meta.get("tokenizer") != tokenizer.fingerprint():
        raise ValueError(
            f"config.masking.pmi_vocab={directory!r} was built with tokenizer "
            f"{meta.get('tokenizer')}, not this run's {tokenizer.fingerprint()}: rebuild it"
        )
    path = files.join(directory, VOCAB_FILE)
    ngrams = _parse_ngrams(text, path, tokenizer.vocab_size if tokenizer is not None else None)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return PmiUnits(ngrams=ngrams, max_n=meta["max_n"], fingerprint=digest)


def main(argv=None) -> None:
    import argparse

    from mlm_jax import cli, new_output
    from mlm_jax.config.defaults import base_config
    from mlm_jax.data import loader
    from mlm_jax.data.spec import DataSpec

    defaults = base_config().data
    parser = argparse.ArgumentParser(description="Build a PMI-masking n-gram vocabulary.")
    parser.add_argument("--dataset", default="python_docs")
    parser.add_argument("--tokenizer", required=True, help="vocab.txt, tokenizer.json or DIR")
    parser.add_argument("--out", required=True, help="directory for pmi_vocab.txt + meta")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--text_unit", default=defaults.text_unit)
    parser.add_argument(
        "--text_field", default=defaults.text_field, help="JSONL field, Parquet column"
    )
    parser.add_argument("--heldout_fraction", type=float, default=defaults.heldout_fraction,
                        help="held out as the runs hold it out; only the rest is counted")  # fmt: skip
    parser.add_argument("--max_n", type=int, default=5, help="longest n-gram (Levine: 5)")
    parser.add_argument("--min_count", type=int, default=10, help="fewest occurrences")
    parser.add_argument("--vocab_size", type=int, default=20000, help="n-grams kept")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        new_output.check_new(args.out)  # before any work: never over the user's files
        for name, low in (("max_n", 2), ("min_count", 1), ("vocab_size", 1)):
            if getattr(args, name) < low:
                raise ValueError(f"--{name}={getattr(args, name)}: expected an integer >= {low}")
        data = DataSpec.from_config(
            defaults, dataset=args.dataset, data_dir=args.data_dir, text_unit=args.text_unit,
            text_field=args.text_field, heldout_fraction=args.heldout_fraction,
            tokenizer=args.tokenizer,
        )  # fmt: skip
        tokenizer = loader.get_tokenizer(data)
        train = loader.load_corpus(data).train  # counts over the training split only
        docs = (
            document_words(ids, starts)
            for begin in range(0, len(train), 512)
            for ids, starts in tokenizer.encode_arrays(
                train.get_batch(range(begin, min(begin + 512, len(train))))
            )
        )
        scored = build_vocabulary(
            docs, max_n=args.max_n, min_count=args.min_count, vocab_size=args.vocab_size
        )
        meta = {
            "dataset": args.dataset, "heldout_fraction": args.heldout_fraction,
            "tokenizer": tokenizer.fingerprint(), "max_n": args.max_n,
            "min_count": args.min_count, "vocab_size": args.vocab_size, "kept": len(scored),
        }  # fmt: skip
        new_output.check_new(args.out)  # again: the corpus took a while
        write_vocabulary(args.out, scored, meta)
    print(f"wrote {len(scored)} n-grams to {files.join(args.out, VOCAB_FILE)}")


if __name__ == "__main__":
    main()

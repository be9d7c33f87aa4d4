"""data.dataset's kinds: `<kind>:<arg>` -> a Source (sources/core.py), one module per kind.

To add a kind, write sources/<kind>.py ending in `SOURCE = Source(...)` and name it in SOURCES.
Nothing else dispatches on the kind: the spec checks it through `check_dataset`, the loader,
the tokenizer CLI, pmi and prepare read it through `load_corpus`.
"""

from __future__ import annotations

from mlm_jax.data.sources import parquet, python_docs, rows, text, tfds
from mlm_jax.data.sources.core import Corpus, DocumentSource, Source

__all__ = [
    "SOURCES",
    "Corpus",
    "DocumentSource",
    "Source",
    "check_dataset",
    "holds_rows",
    "load_corpus",
    "parse",
]

SOURCES: dict[str, Source] = {
    "python_docs": python_docs.SOURCE,
    "text": text.SOURCE,
    "parquet": parquet.SOURCE,
    "tfds": tfds.SOURCE,
    "rows": rows.SOURCE,
}


def parse(dataset: str) -> tuple[Source, str]:
    """'text:corpus/*.txt' -> (text's Source, 'corpus/*.txt'); one line if no kind matches."""
    kind, colon, arg = dataset.partition(":")
    source = SOURCES.get(kind)
    well_formed = source is not None and (bool(arg) if source.takes_arg else not colon)
    if not well_formed:
        forms = " | ".join(s.usage for s in SOURCES.values())
        raise ValueError(f"data.dataset={dataset!r}: expected one of {forms}")
    return source, arg


def check_dataset(data) -> None:
    """The cheap checks of data.dataset (nothing built, no document read): one line each."""
    source, arg = parse(data.dataset)
    source.check(arg, data)


def holds_rows(dataset: str) -> bool:
    """Whether data.dataset names prepared rows (rows:<dir>) rather than documents."""
    return parse(dataset)[0].prepared_rows


def load_corpus(data) -> Corpus:
    """The train / held-out documents of data.dataset, built first if its kind needs that."""
    source, arg = parse(data.dataset)
    if source.corpus is None:
        raise ValueError(
            f"data.dataset={data.dataset!r}: {source.usage} holds packed rows, not documents"
        )
    corpus = source.corpus(arg, data)
    if len(corpus.train) == 0:
        raise ValueError(f"data.dataset={data.dataset!r}: the corpus has no training documents")
    return corpus

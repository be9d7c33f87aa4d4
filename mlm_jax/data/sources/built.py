"""Corpora this project builds once into the data dir: python_docs, text:<glob>, parquet:<glob>.

Their documents are read from the source once, in a fixed order, and written with TFDS in its
TensorFlow-free mode (ArrayRecord); runs then read them by index (`as_data_source()`). A
document is held out when a hash of its text falls below data.heldout_fraction, so the split is
the same on every machine and does not depend on file order. The builder config's name says
what the corpus was built from (for files: their paths, sizes and mtimes, the text unit, the
held-out fraction), so an edited file builds a fresh corpus instead of reading a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from mlm_jax import files
from mlm_jax.data.sources.core import Corpus, DocumentSource, data_dir

log = logging.getLogger(__name__)


def heldout_by_hash(text: str, fraction: float) -> bool:
    """Deterministic split: True for about `fraction` of all texts, the same on every machine."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


class BuiltDocuments(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A corpus of this project: a subclass yields (key, document) in a fixed order. The keys
    fix where TFDS puts each document, so they never change for a given input."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to find: TFDS would look it up beside the module through the
    # importlib_resources backport, which TFDS does not install (and nothing is downloaded).
    code_path = None

    def documents(self) -> Iterator[tuple[str | int, str]]:
        raise NotImplementedError

    def what(self) -> str:
        """What the corpus is built from, for its description and messages."""
        return self.name

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs wants a metadata dir beside the module.
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.what(),
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _log_download_bytes(self) -> None:  # instead of TFDS' "Downloading ... Unknown size"
        log.info("building the %s corpus once into %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # One pass to fix the split first: TFDS refuses an empty split, so a small corpus whose
        # hashes all land on one side moves its last (or first) document to the other.
        fraction = self.builder_config.heldout_fraction
        heldout = bytearray(heldout_by_hash(text, fraction) for _, text in self.documents())
        if len(heldout) < 2:
            raise ValueError(
                f"{self.what()}: {len(heldout)} non-empty documents; need at least 2 (one to "
                "train on, one held out)"
            )
        if not any(heldout):
            heldout[-1] = 1
        if all(heldout):
            heldout[0] = 0
        return {
            "train": self._generate_examples(heldout, want_heldout=False),
            "validation": self._generate_examples(heldout, want_heldout=True),
        }

    def _generate_examples(self, heldout: bytearray, want_heldout: bool):
        for i, (key, text) in enumerate(self.documents()):
            if heldout[i] == want_heldout:
                yield key, {"text": text}


@dataclasses.dataclass
class FilesConfig(tfds.core.BuilderConfig):
    """A corpus of files: which ones, and how their text becomes documents."""

    files: tuple[str, ...] = ()
    text_unit: str = "paragraph"
    heldout_fraction: float = 0.02
    text_field: str = "text"  # JSONL records' field / Parquet files' column


class BuiltFiles(BuiltDocuments, skip_registration=True):
    """A corpus of files (a FilesConfig): a subclass cuts one file into documents; they are
    keyed `<file index>:<document index>`, in the order of the sorted paths."""

    kind = "files"  # for messages: "text files", "Parquet files"

    def file_documents(self, path: str) -> Iterator[str]:
        raise NotImplementedError

    def what(self) -> str:
        return f"{self.kind} {self.builder_config.files[0]}..."

    def documents(self):
        for file_index, path in enumerate(self.builder_config.files):
            for doc_index, document in enumerate(self.file_documents(path)):
                yield f"{file_index}:{doc_index}", document


def files_config(matched: dict[str, tuple[int, str]], data) -> FilesConfig:
    """The config of the files `matched` (files.glob), named by a hash of what they are."""
    field = "" if data.text_field == "text" else f"|field={data.text_field}"  # (older names)
    h = hashlib.sha256(f"{data.text_unit}|{data.heldout_fraction!r}{field}".encode())
    paths = []
    for path, (size, version) in matched.items():
        path = path if files.is_remote(path) else os.path.abspath(path)
        h.update(f"|{path}|{size}|{version}".encode())
        paths.append(path)
    return FilesConfig(
        name=f"{data.text_unit}_{h.hexdigest()[:16]}",
        files=tuple(paths),
        text_unit=data.text_unit,
        heldout_fraction=data.heldout_fraction,
        text_field=data.text_field,
    )


def build(builder_cls: type[BuiltDocuments], config, data) -> Corpus:
    """The corpus, built first if it is not yet (once per data dir: processes that start
    together wait for the first one's build instead of racing into its folder)."""
    directory = data_dir(data)

    def make():  # a builder made before another process finished does not see the build
        return builder_cls(config=config, data_dir=directory, file_format="array_record")

    builder = make()
    if not builder.is_prepared():
        with files.exclusive_lock(os.path.join(directory, ".mlm_jax-build.lock")):
            builder = make()
            if not builder.is_prepared():
                builder.download_and_prepare(file_format="array_record")
    splits = builder.as_data_source()
    corpus = Corpus(
        f"{builder.name}-{config.name}",
        DocumentSource(splits["train"], "text"),
        DocumentSource(splits["validation"], "text"),
    )
    if len(corpus.heldout) == 0 and len(corpus.train) > 0:
        raise ValueError(
            f"data.dataset={data.dataset!r}: no document fell in the held-out split "
            f"({len(corpus.train)} documents, heldout_fraction={data.heldout_fraction}); "
            "add text or raise data.heldout_fraction"
        )
    return corpus

"""python_docs: a corpus every Python installation already carries, as a TFDS dataset.

Documents are the `pydoc_data` help topics and the docstrings (module, class, function) of the
standard library's source files, read with `ast` so no module is imported (no side effects
from antigravity, this, turtle, ...). Exact duplicates are dropped. A document goes to the
validation split when a hash of its text falls below `heldout_fraction`, so the split is fixed
and independent of file order. The corpus depends on the Python version, which therefore names
the builder config (e.g. `py311_h200` = Python 3.11, 2.00% held out).

Built with TFDS in its TensorFlow-free mode (file_format=array_record), read back with random
access through `as_data_source()`. Builds in a few seconds, no network.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import logging
import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds

# Directories of the standard library whose docstrings are tests, demos or bundled third parties.
_SKIPPED_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "turtledemo",
    "lib2to3",
}
_MIN_CHARS = 20  # shorter docstrings ("Return self.") carry no language worth learning


def heldout_by_hash(text: str, fraction: float) -> bool:
    """Deterministic split: True for about `fraction` of all texts, the same on every machine."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


def stdlib_documents() -> list[str]:
    """pydoc topics + standard-library docstrings, cleaned and deduplicated, in a fixed order."""
    from pydoc_data.topics import topics

    texts = [inspect.cleandoc(topics[name]) for name in sorted(topics)]
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1]):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # a few files are deliberately invalid (bad encodings, py2 syntax)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    texts.append(doc)
    seen: set[str] = set()
    unique = []
    for text in texts:
        text = text.strip()
        if len(text) >= _MIN_CHARS and text not in seen:
            seen.add(text)
            unique.append(text)
    return unique


class LoggedBuild:
    """A builder of this project's own corpora: one log line when it builds, instead of TFDS'
    "Downloading and preparing dataset Unknown size ..." for data that downloads nothing."""

    def _log_download_bytes(self) -> None:
        logging.getLogger("mlm_jax.data").info(
            "building the %s corpus once into %s", self.name, self.data_dir
        )

    def _log_download_done(self) -> None:
        pass


@dataclasses.dataclass
class PythonDocsConfig(tfds.core.BuilderConfig):
    heldout_fraction: float = 0.02


def config_for(heldout_fraction: float) -> PythonDocsConfig:
    basis_points = round(heldout_fraction * 10_000)
    name = f"py{sys.version_info.major}{sys.version_info.minor}_h{basis_points}"
    return PythonDocsConfig(name=name, heldout_fraction=basis_points / 10_000)


class PythonDocs(LoggedBuild, tfds.core.GeneratorBasedBuilder):
    """Standard-library docstrings and pydoc topics, one document per example."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to find: TFDS would look it up beside the module through the
    # importlib_resources backport, which TFDS does not install (and nothing is downloaded).
    code_path = None
    RELEASE_NOTES = {"1.0.0": "pydoc topics + stdlib docstrings via ast, deduplicated."}

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs wants a metadata dir beside the module.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        documents = stdlib_documents()
        fraction = self.builder_config.heldout_fraction
        is_heldout = [heldout_by_hash(d, fraction) for d in documents]
        return {
            "train": self._generate_examples(documents, is_heldout, want_heldout=False),
            "validation": self._generate_examples(documents, is_heldout, want_heldout=True),
        }

    def _generate_examples(self, documents, is_heldout, want_heldout):
        for i, (text, heldout) in enumerate(zip(documents, is_heldout)):
            if heldout == want_heldout:
                yield i, {"text": text}

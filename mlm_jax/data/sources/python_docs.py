"""python_docs: a corpus every Python installation already carries, as a TFDS dataset.

Documents are the `pydoc_data` help topics and the docstrings (module, class, function) of the
standard library's source files, read with `ast` so no module is imported (no side effects
from antigravity, this, turtle, ...). Exact duplicates are dropped. Built and held out as every
corpus this project builds (sources/built.py). The corpus depends on the Python version, which
therefore names the builder config (e.g. `py311_h200` = Python 3.11, 2.00% held out).

Builds in a few seconds, no network.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds

from mlm_jax.data.sources.built import BuiltDocuments, build
from mlm_jax.data.sources.core import Corpus, Source

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


@functools.cache
def stdlib_documents() -> tuple[str, ...]:
    """pydoc topics + standard-library docstrings, cleaned and deduplicated, in a fixed order.
    Parsing the standard library takes seconds: a process that builds the corpus and then a
    fine-tuning task from it reads it once."""
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
    return tuple(unique)


@dataclasses.dataclass
class PythonDocsConfig(tfds.core.BuilderConfig):
    heldout_fraction: float = 0.02


def config_for(heldout_fraction: float) -> PythonDocsConfig:
    basis_points = round(heldout_fraction * 10_000)
    name = f"py{sys.version_info.major}{sys.version_info.minor}_h{basis_points}"
    return PythonDocsConfig(name=name, heldout_fraction=basis_points / 10_000)


class PythonDocs(BuiltDocuments):
    """Standard-library docstrings and pydoc topics, one document per example."""

    RELEASE_NOTES = {"1.0.0": "pydoc topics + stdlib docstrings via ast, deduplicated."}

    def what(self) -> str:
        return __doc__

    def documents(self):
        if not hasattr(self, "_documents"):  # read the standard library once per build
            self._documents = stdlib_documents()
        return enumerate(self._documents)


def _check(arg: str, data) -> None:
    del arg, data  # nothing to check: every Python has its standard library


def _corpus(arg: str, data) -> Corpus:
    return build(PythonDocs, config_for(data.heldout_fraction), data)


SOURCE = Source(usage="python_docs", check=_check, corpus=_corpus, takes_arg=False)

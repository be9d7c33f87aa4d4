"""Fine-tuning tasks: a spec string -> train and dev texts with integer labels.

tsv:TRAIN,DEV          lines `label<TAB>text[<TAB>text2]` (no header); labels are any strings,
                       numbered in sorted order (so a binary task's positive class, for F1,
                       is the later name: `same` of different/same, `1` of 0/1).
tfds:glue/NAME         GLUE through tfds.data_source (sst2, cola, mrpc, qqp, mnli, qnli, rte,
                       wnli); prepared once with `tfds build glue/NAME --file_format=array_record`.
python_docs:KIND       the built-in corpus's `order` or `same_doc` task (finetuning/python_docs),
                       dev text from the pretraining run's own held-out documents.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

# GLUE task -> (text features, dev split). stsb is regression and not handled here.
GLUE = {
    "sst2": (("sentence",), "validation"),
    "cola": (("sentence",), "validation"),
    "mrpc": (("sentence1", "sentence2"), "validation"),
    "qqp": (("question1", "question2"), "validation"),
    "mnli": (("premise", "hypothesis"), "validation_matched"),
    "qnli": (("question", "sentence"), "validation"),
    "rte": (("sentence1", "sentence2"), "validation"),
    "wnli": (("sentence1", "sentence2"), "validation"),
}
KINDS = "tsv:TRAIN,DEV, tfds:glue/<name> or python_docs:order|same_doc"


@dataclasses.dataclass
class Split:
    texts_a: list[str]
    texts_b: list[str] | None  # second text of each pair, None for single sentences
    labels: np.ndarray  # int32 [n]


@dataclasses.dataclass
class Task:
    train: Split
    dev: Split
    num_labels: int
    label_names: list[str]  # label_names[i] is the class numbered i


def read_tsv(path: str) -> list[list[str]]:
    """The non-empty lines of a task file, split on tabs; one ValueError naming the path."""
    if not os.path.exists(path):
        raise ValueError(f"task file {path!r} does not exist")
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) not in (2, 3):
                raise ValueError(
                    f"{path}:{number}: expected label<TAB>text[<TAB>text2], got {len(fields)} fields"
                )
            rows.append(fields)
    if not rows:
        raise ValueError(f"task file {path!r} has no examples")
    return rows


def task_from_rows(train_rows, dev_rows, train_where: str, dev_where: str) -> Task:
    """(label, text[, text2]) rows -> Task, labels numbered in sorted order of the train labels."""
    widths = {len(r) for r in [*train_rows, *dev_rows]}
    if len(widths) > 1:
        raise ValueError(f"{train_where},{dev_where}: mix of single texts and pairs")
    names = sorted({r[0] for r in train_rows})
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({r[0] for r in dev_rows} - set(index))
    if unknown:
        raise ValueError(f"{dev_where}: labels {unknown} do not occur in {train_where}")

    def split(rows):
        return Split(
            texts_a=[r[1] for r in rows],
            texts_b=[r[2] for r in rows] if widths == {3} else None,
            labels=np.asarray([index[r[0]] for r in rows], np.int32),
        )

    return Task(split(train_rows), split(dev_rows), len(names), names)


def load_tsv_task(train_path: str, dev_path: str) -> Task:
    return task_from_rows(read_tsv(train_path), read_tsv(dev_path), train_path, dev_path)


def load_glue_task(name: str, data_dir: str | None = None) -> Task:
    import tensorflow_datasets as tfds

    if name not in GLUE:
        raise ValueError(f"task tfds:glue/{name}: expected one of {', '.join(sorted(GLUE))}")
    features, dev_split = GLUE[name]

    def split(which: str) -> Split:
        try:
            source = tfds.data_source(
                f"glue/{name}", split=which, data_dir=data_dir or None, download=False
            )
        except Exception as e:  # not built / not downloadable offline
            raise ValueError(
                f"tfds:glue/{name} is not prepared under {data_dir or '$TFDS_DATA_DIR'} "
                f"({type(e).__name__}); build it once with `tfds build glue/{name} "
                "--file_format=array_record` (needs network)"
            ) from e
        examples = [source[i] for i in range(len(source))]

        def text(ex, key):
            value = ex[key]
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)

        return Split(
            texts_a=[text(ex, features[0]) for ex in examples],
            texts_b=[text(ex, features[1]) for ex in examples] if len(features) > 1 else None,
            labels=np.asarray([int(ex["label"]) for ex in examples], np.int32),
        )

    train, dev = split("train"), split(dev_split)
    num_labels = int(max(train.labels.max(), dev.labels.max())) + 1
    return Task(train, dev, num_labels, [str(i) for i in range(num_labels)])


def check_spec(spec: str) -> tuple[str, str]:
    """(kind, rest) of a well-formed spec, or one ValueError line; reads no file."""
    kind, _, rest = spec.partition(":")
    if kind == "tsv":
        paths = rest.split(",")
        if len(paths) != 2 or not all(paths):
            raise ValueError(f"--task={spec!r}: expected tsv:TRAIN,DEV")
    elif kind == "tfds":
        if not rest.startswith("glue/"):
            raise ValueError(f"--task={spec!r}: expected {KINDS}")
    elif kind == "python_docs":
        from mlm_jax.finetuning.python_docs import KINDS as DOC_KINDS

        if rest not in DOC_KINDS:
            raise ValueError(f"--task={spec!r}: expected python_docs:{'|'.join(DOC_KINDS)}")
    else:
        raise ValueError(f"--task={spec!r}: expected {KINDS}")
    return kind, rest


def load_task(spec: str, data_dir: str | None = None, pretrained: str = "") -> Task:
    """The task a spec names. pretrained: the run directory a python_docs task holds out from."""
    kind, rest = check_spec(spec)
    if kind == "tsv":
        return load_tsv_task(*rest.split(","))
    if kind == "tfds":
        return load_glue_task(rest.split("/", 1)[1], data_dir)
    from mlm_jax.finetuning import python_docs

    train_rows, dev_rows = python_docs.task_rows(rest, python_docs.heldout_fraction(pretrained))
    return task_from_rows(train_rows, dev_rows, f"{spec} (train)", f"{spec} (dev)")


def task_name(spec: str) -> str:
    """A short name for a spec, for folders and table columns: the GLUE name, the python_docs
    kind, or a tsv task's folder (`tasks/order/train.tsv` -> `order`; the file's stem when it
    lies in the current folder)."""
    kind, rest = check_spec(spec)
    if kind == "tsv":
        train = os.path.normpath(rest.split(",")[0])
        folder = os.path.basename(os.path.dirname(train))
        name = folder if folder not in ("", ".") else os.path.splitext(os.path.basename(train))[0]
    else:
        name = rest.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "task"

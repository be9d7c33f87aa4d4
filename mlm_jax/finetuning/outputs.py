"""A fine-tuning's output directory: metrics.jsonl, result.json, never over the user's files.

A directory is fine-tuning's when it holds MARKER (written before anything else); one that
holds other files and no marker is refused in one line, so `--workdir=` naming a folder of the
user's never loses a result.json or metrics.jsonl of theirs.
"""

from __future__ import annotations

import json

from mlm_jax import files

MARKER = ".mlm_jax_finetune"
RESULT_FILE = "result.json"  # the final dev scores, the majority-class accuracy, the request
METRICS_FILE = "metrics.jsonl"  # one line per epoch: train loss, dev loss and scores


def check_owned(workdir: str) -> None:
    """One ValueError line if `workdir` is a file or holds files fine-tuning did not write."""
    if not files.isdir(workdir):
        if files.exists(workdir):
            raise ValueError(f"--workdir={workdir!r}: a file, not a directory")
        return
    names = files.listdir(workdir)
    if names and MARKER not in names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(
            f"--workdir={workdir!r} holds files fine-tuning did not write ({shown}); use an "
            "empty or new directory, so that none of them is overwritten"
        )


def claim(workdir: str) -> None:
    """Checks `workdir` (check_owned) and marks it as fine-tuning's."""
    check_owned(workdir)
    files.write_text(files.join(workdir, MARKER), "")


def write_epochs(workdir: str, records: list[dict]) -> None:
    """metrics.jsonl, rewritten whole (a bucket object cannot be appended to)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    files.write_text(files.join(workdir, METRICS_FILE), text)


def write_result(workdir: str, result: dict) -> None:
    files.write_text(files.join(workdir, RESULT_FILE), json.dumps(result, indent=2))

"""Commands that make a new artifact folder (data.tokenizer, data.pmi) never write over files.

`--out` must be new or an empty folder; anything else is refused in one line before any work,
so a tokenizer or vocabulary of the user's (or of an earlier build a run trained with) is never
replaced under a run that recorded its fingerprint.
"""

from __future__ import annotations

from mlm_jax import files


def check_new(out: str, flag: str = "--out") -> None:
    """One ValueError line if `out` is a file or a folder that holds anything."""
    if not files.exists(out):
        return
    if not files.isdir(out):
        raise ValueError(f"{flag}={out}: a file, not a folder")
    names = files.listdir(out)
    if names:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(
            f"{flag}={out} already holds files ({shown}); choose a new or empty folder, so that "
            "none of them is overwritten"
        )

"""The bytes a run trains with, fingerprinted in WORKDIR/inputs.json; a resume meeting others stops.

A resumed run reads its tokenizer (WORKDIR/tokenizer/), its PMI vocabulary and its prepared
store again. If any of them changed since the run started (a vocabulary rebuilt at the same
path, a store prepared again, a tokenizer file edited), the steps after the resume would mask
or read differently from the steps before, silently. So the run records their fingerprints
when it starts and a resume compares: a difference is one line naming both. Workdirs from
before inputs.json resume unchecked (and record it from then on).
"""

from __future__ import annotations

import json

from mlm_jax import checksums, files, masking

INPUTS_FILE = "inputs.json"


def fingerprints(run, tokenizer) -> dict:
    """{input: {"path", "fingerprint"}} of the run's tokenizer, the files its masking strategy
    reads (masking.input_files: pmi's vocabulary) and prepared store (a rows:<dir> dataset).
    A file that is missing is left out: its own reader says so in its own words."""
    from mlm_jax.data import rows, sources

    found = {"tokenizer": {"path": "tokenizer/", "fingerprint": tokenizer.fingerprint()}}
    named = masking.input_files(run.masking)
    if sources.holds_rows(run.data.dataset):
        named["store"] = files.join(rows.store_dir(run.data.dataset), rows.MANIFEST)
    for name, path in named.items():
        if files.exists(path):
            found[name] = {"path": path, "fingerprint": checksums.file_digest(path)}
    return found


def check_resume(workdir: str, current: dict) -> None:
    """One ValueError line if an input recorded in WORKDIR/inputs.json has other bytes now."""
    path = files.join(workdir, INPUTS_FILE)
    if not files.exists(path):
        return  # a workdir from before inputs.json
    try:
        recorded = json.loads(files.read_text(path))
        recorded = {k: v for k, v in recorded.items() if "fingerprint" in v}
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise ValueError(f"{path}: not this project's inputs record ({e})") from None
    for name, now in current.items():
        was = recorded.get(name)
        if was is not None and was["fingerprint"] != now["fingerprint"]:
            raise ValueError(
                f"the {name.replace('_', ' ')} {now['path']} is not the one {workdir} trained "
                f"with: fingerprint {_short(now)} now, {_short(was)} when the run started "
                f"(from {was['path']}, recorded in {path}); put those bytes back, or start a "
                "new workdir"
            )


def record(workdir: str, current: dict, tokenizer) -> None:
    """Writes WORKDIR/inputs.json (after check_resume passed: the same fingerprints, and those
    of inputs an older record lacks), with `tokenizer`, the run's own copy a resume loads."""
    current = {
        **current,
        "tokenizer": {**current["tokenizer"], "fingerprint": tokenizer.fingerprint()},
    }
    path, text = files.join(workdir, INPUTS_FILE), json.dumps(current, indent=2) + "\n"
    if not files.exists(path) or files.read_text(path) != text:  # a finished run stays as it was
        files.write_text(path, text)


def _short(entry: dict) -> str:
    return entry["fingerprint"][:16]

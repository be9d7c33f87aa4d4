"""SHA-256 fingerprints of the files this project writes, and their one check on reading.

A directory the project publishes (an `hf export`, a prepared store's shards) lists its files'
digests in SHA256SUMS (the format `sha256sum -c` reads), so that a flipped byte, a truncated
file or a file swapped for another is one `error:` line naming the file, never a model or
rows silently different from the ones written.
"""

from __future__ import annotations

import hashlib
import os

from mlm_jax import files

SUMS_FILE = "SHA256SUMS"
_BLOCK = 1 << 22  # bytes hashed per read: constant memory whatever the file's size


def file_digest(path) -> str:
    """The SHA-256 of a file's bytes (local or gs://), hex."""
    digest = hashlib.sha256()
    with files.open_binary(path) as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sums(directory, names) -> dict[str, str]:
    """Writes SHA256SUMS for the files `names` of `directory`; returns {name: digest}."""
    sums = {name: file_digest(files.join(directory, name)) for name in sorted(names)}
    files.write_text(
        files.join(directory, SUMS_FILE), "".join(f"{d}  {n}\n" for n, d in sums.items())
    )
    return sums


def read_sums(directory) -> dict[str, str] | None:
    """{name: digest} of the directory's SHA256SUMS, or None where it has none (a directory
    written elsewhere, or before fingerprints); an unreadable one is one line."""
    path = files.join(directory, SUMS_FILE)
    if not files.exists(path):
        return None
    sums = {}
    try:
        for line in files.read_text(path).splitlines():
            digest, name = line.split("  ", 1)
            if len(digest) != 64 or os.sep in name.lstrip("*").rstrip():
                raise ValueError(line)
            sums[name.lstrip("*")] = digest
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a SHA256SUMS file ({e}); the directory was edited") from None
    return sums


def verify_file(path, expected: str, what: str = "") -> None:
    """One ValueError line naming `path` if it is missing or its bytes are not the ones
    fingerprinted."""
    if not files.exists(path):
        raise ValueError(f"{path}: missing{what}")
    actual = file_digest(path)
    if actual != expected:
        raise ValueError(
            f"{path}: damaged or replaced (sha256 {actual[:12]}..., written as "
            f"{expected[:12]}...){what}"
        )


def verify_dir(directory, names=None) -> bool:
    """Checks the files of `directory` its SHA256SUMS lists (or only `names` among them).
    False where there is no SHA256SUMS; one ValueError line naming the first bad file."""
    sums = read_sums(directory)
    if sums is None:
        return False
    for name, digest in sums.items():
        if names is None or name in names:
            verify_file(files.join(directory, name), digest, f" (listed in {SUMS_FILE})")
    return True

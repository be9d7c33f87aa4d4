"""Where `hf export` writes: never over the user's files, never through a symlink, all or nothing.

The export is built in a new hidden folder beside `--out_dir`, fingerprinted (SHA256SUMS) and
renamed into place only when whole, so a killed export leaves no half-written model, and no
file is ever opened for writing inside the directory the user named (a `config.json` there
that is a symlink to a file elsewhere is replaced with the directory, never written through).
`--out_dir` may be new, empty, or an earlier export (it holds SHA256SUMS and only the files it
lists); anything else is refused in one line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from mlm_jax import checksums


def check_out_dir(out_dir: str) -> str:
    """`out_dir` expanded (a symlink to a folder: that folder); one ValueError line if it is a
    file or holds files an export did not write."""
    out_dir = os.path.expanduser(str(out_dir))
    if "://" in out_dir:
        raise ValueError(f"--out_dir={out_dir}: a local directory expected (export, then upload)")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out_dir={out_dir}: a file, not a directory")
    if not os.path.isdir(out_dir):
        return os.path.abspath(out_dir)
    out_dir = os.path.realpath(out_dir)
    names = sorted(os.listdir(out_dir))
    if not names:
        return out_dir
    try:
        listed = checksums.read_sums(out_dir)
    except ValueError:
        listed = None
    theirs = [n for n in names if listed is None or (n not in listed and n != checksums.SUMS_FILE)]
    if theirs:
        shown = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
        raise ValueError(
            f"--out_dir={out_dir} holds files no export wrote ({shown}); use an empty or new "
            "directory, so that none of them is overwritten"
        )
    return out_dir


@contextlib.contextmanager
def publish(out_dir: str) -> Iterator[str]:
    """A new empty folder to write the export into; on leaving the block its files are
    fingerprinted and the folder becomes `out_dir` (replacing an earlier export there) in one
    rename. On an error nothing is published and `out_dir` is as it was."""
    out_dir = check_out_dir(out_dir)
    parent, name = os.path.split(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield tmp
        checksums.write_sums(tmp, os.listdir(tmp))
        _give_default_modes(tmp)
        _replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _give_default_modes(folder: str) -> None:
    """mkdtemp and safetensors make private (0700 / 0600) entries: give the folder and its
    files the modes a plain mkdir / open would, so whoever may read the parent may read them."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for entry in os.listdir(folder):
        os.chmod(os.path.join(folder, entry), 0o666 & ~umask)


def _replace(tmp: str, out_dir: str) -> None:
    """Renames `tmp` to `out_dir`; an empty or earlier-export `out_dir` is moved aside first
    (check_out_dir again, so files that appeared meanwhile are never removed)."""
    if not os.path.isdir(out_dir):
        os.rename(tmp, out_dir)
        return
    check_out_dir(out_dir)
    old = tempfile.mkdtemp(
        prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir)
    )
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)

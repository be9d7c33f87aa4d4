"""A run's files on a local disk or in a bucket (gs://): the few calls the workdir needs.

Local paths keep their POSIX guarantees: a file is written to a temporary name and renamed,
so a reader never sees half of it. Bucket objects (through etils.epath: TensorFlow's gfile if
installed, else fsspec/gcsfs) are written whole and appear at once, but cannot be appended to
or renamed cheaply, so appenders keep the text and rewrite it (metrics.MetricsWriter), and a
copied folder counts as present only once its marker object is written (`copy_dir`).
"""

from __future__ import annotations

import contextlib
import glob as globlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from etils import epath

log = logging.getLogger(__name__)

_COMPLETE = ".complete"  # marker object: a folder copied into a bucket is whole


def is_remote(path) -> bool:
    """True for a URL (gs://bucket/...), false for a path on this machine's file system."""
    return "://" in os.fspath(path)


def join(path, *names: str) -> str:
    return (
        os.fspath(epath.Path(path).joinpath(*names))
        if is_remote(path)
        else os.path.join(path, *names)
    )


def exists(path) -> bool:
    return epath.Path(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
    return epath.Path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def listdir(path) -> list[str]:
    """Names in a folder (a bucket: the objects and prefixes directly under it)."""
    if is_remote(path):
        return sorted(child.name for child in epath.Path(path).iterdir())
    return sorted(os.listdir(path))


def glob(pattern: str) -> dict[str, tuple[int, str]]:
    """The files `pattern` matches (`**` recursive, `~` expanded here), sorted by path, each
    with its size and a token that changes when it is rewritten (mtime, or GCS generation)."""
    if not is_remote(pattern):
        found = {}
        for path in sorted(globlib.glob(os.path.expanduser(pattern), recursive=True)):
            if os.path.isfile(path):
                stat = os.stat(path)
                found[path] = (stat.st_size, str(stat.st_mtime_ns))
        return found
    import fsspec

    protocol = pattern.split("://", 1)[0]
    fs, inside = fsspec.core.url_to_fs(pattern)
    return {
        f"{protocol}://{name}": (
            int(info["size"]),
            "|".join(str(info.get(k, "")) for k in ("generation", "mtime", "updated", "created")),
        )
        for name, info in sorted(fs.glob(inside, detail=True).items())
        if info.get("type") == "file"
    }


def open_binary(path) -> BinaryIO:
    """A file opened for reading bytes, local or in a bucket (seekable either way)."""
    if is_remote(path):
        return epath.Path(path).open("rb")
    return open(path, "rb")  # noqa: SIM115


def read_text(path) -> str:
    if is_remote(path):
        return epath.Path(path).read_text()
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_text(path, text: str) -> None:
    """Writes `text` so that readers see the old file or the new one, never a part."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
    """Writes `data` so that readers see the old file or the new one, never a part."""
    if is_remote(path):
        epath.Path(path).write_bytes(data)  # an object appears whole on upload
        return
    makedirs(os.path.dirname(os.path.abspath(path)))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def makedirs(path) -> None:
    """Makes a local folder and its parents; nothing to do in a bucket, which has no folders."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def remove(path) -> None:
    """Deletes a file if it is there."""
    if is_remote(path):
        epath.Path(path).unlink(missing_ok=True)
    elif os.path.exists(path):
        os.remove(path)


def upload_file(local_path: str, destination) -> None:
    """Copies one local file to `destination` (a path or a URL), replacing it."""
    with open(local_path, "rb") as f:
        write_bytes(destination, f.read())


def has_dir(path) -> bool:
    """Whether a folder written by `copy_dir` is there whole."""
    return exists(join(path, _COMPLETE)) if is_remote(path) else os.path.isdir(path)


def copy_dir(source: str, destination) -> None:
    """Copies the files of the local folder `source` to `destination`, all or nothing.

    Locally a temporary folder is renamed into place (if another process got there first, its
    copy stays). In a bucket the files are uploaded, then the marker `has_dir` looks for.
    """
    names = sorted(n for n in os.listdir(source) if os.path.isfile(os.path.join(source, n)))
    if is_remote(destination):
        if has_dir(destination):  # another process got there first; keep its copy
            return
        for name in names:
            upload_file(os.path.join(source, name), join(destination, name))
        epath.Path(join(destination, _COMPLETE)).write_text("")
        return
    with new_local_dir(destination) as tmp:
        for name in names:
            shutil.copy2(os.path.join(source, name), tmp)


@contextlib.contextmanager
def new_local_dir(destination: str) -> Iterator[str]:
    """A temporary folder beside `destination` to fill in the block, then renamed to it: readers
    see the whole folder or none. If another process renamed its own first, that one stays (the
    writers of one destination write the same content)."""
    parent = os.path.dirname(os.path.abspath(destination))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        yield tmp
        try:
            os.rename(tmp, destination)
        except OSError:
            log.info("%s was written concurrently; using the existing one", destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_copy(path, names: tuple[str, ...] | None = None) -> Iterator[str]:
    """A local path with the contents of `path` (a file, or the files of a folder) in the block.

    Local paths are yielded as they are. A URL is downloaded into a temporary folder first, for
    readers that need real files (tokenizers); `names` limits a folder to those files.
    """
    if not is_remote(path):
        yield os.fspath(path)
        return
    remote = epath.Path(path)
    with tempfile.TemporaryDirectory(prefix="mlm_jax-") as tmp:
        local = os.path.join(tmp, remote.name)
        if remote.is_dir():
            os.makedirs(local)
            for child in remote.iterdir():
                if (names is None or child.name in names) and not child.is_dir():
                    with open(os.path.join(local, child.name), "wb") as f:
                        f.write(child.read_bytes())
        else:
            with open(local, "wb") as f:
                f.write(remote.read_bytes())
        yield local


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Holds an exclusive lock on the local file `path` (made if missing) for the block: other
    processes on this machine wait at the same call. (A bucket path locks nothing.)"""
    if is_remote(path):
        yield
        return
    import fcntl

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""An in-memory stand-in for Google Cloud Storage, behind gs:// URLs, for tests.

epath reads gs:// through fsspec (TensorFlow is not installed in the test environment), so
registering this file system for the "gs"/"gcs" protocols routes every epath call to memory.
Like GCS, and unlike a disk, it cannot append to an object. Orbax writes array data through
TensorStore's own GCS driver, which this does not reach: tests keep checkpoints local.
"""

from __future__ import annotations

import fsspec
from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    root_marker = ""
    store: dict = {}
    pseudo_dirs = [""]

    @classmethod
    def _strip_protocol(cls, path):
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
        return path.rstrip("/")

    def __init__(self, *args, finalize_on_close=True, **kwargs):
        super().__init__(*args, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode:
            raise NotImplementedError(f"{path}: objects cannot be appended to (mode {mode!r})")
        return super()._open(path, mode=mode, **kwargs)

    def objects(self) -> dict[str, bytes]:
        """Every object as gs://path -> bytes."""
        return {f"gs://{k}": v.getvalue() for k, v in self.store.items()}


def install() -> FakeGCS:
    """Routes gs:// to a fresh, empty FakeGCS; returns it."""
    from etils.epath import backend

    FakeGCS.store = {}
    FakeGCS.pseudo_dirs = [""]
    for protocol in FakeGCS.protocol:
        fsspec.register_implementation(protocol, FakeGCS, clobber=True)
    FakeGCS.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
    return fsspec.filesystem("gs")


def uninstall() -> None:
    """Gives gs:// back to the real client (gcsfs)."""
    from etils.epath import backend
    from fsspec.registry import _registry  # (fsspec has no public unregister)

    for protocol in FakeGCS.protocol:
        _registry.pop(protocol, None)
    backend.fsspec_backend._get_filesystem.cache_clear()

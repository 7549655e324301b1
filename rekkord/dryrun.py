"""``save --dry-run``: the real save pipeline, with nothing written.

The save runs as usual -- the same walk, excludes, stat cache, chunking,
packing, deduplication, compression and sealing -- so what it reports is
what a save would do, and ``bytes_stored`` is exactly what it would upload.
Two things make it write nothing:

* :class:`DryRunStorage` wraps the repository's storage: reads, stats and
  listings go to the real storage (what a write key may do anyway), writes
  and deletes only to memory.  No blob, snapshot record, session marker or
  anything else reaches the repository; the bytes each kind of object would
  have taken are counted (:attr:`DryRunStorage.uploads`).
* the save uses a private copy of the local cache (a temporary file, removed
  afterwards): the real cache is only read, once, to copy it.

This module is the whole dry-run path: the save code knows nothing of it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from .cache import Cache
from .errors import ObjectExists, ObjectNotFound, StorageError
from .repository import Repository
from .storage.base import Storage


class DryRunStorage(Storage):
    """Reads from ``inner``; keeps writes and deletes in memory.  Blob
    contents are not kept (only their sizes): a dry run of a large save
    does not hold its data."""

    atomic_exclusive = True

    def __init__(self, inner: Storage):
        self.inner = inner
        self.url = inner.url
        self.connections = inner.connections
        self._lock = threading.Lock()
        self._written: dict[str, bytes | int] = {}
        self._deleted: set[str] = set()
        #: top-level prefix ("blobs", "snapshots", "sessions", ...) -> [objects, bytes] written
        self.uploads: dict[str, list[int]] = {}

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        with self._lock:
            if exclusive and self._exists_locked(name):
                raise ObjectExists(f"{name} exists")
            self._written[name] = len(data) if name.startswith(("blobs/", "parity/")) else bytes(data)
            self._deleted.discard(name)
            kind = self.uploads.setdefault(name.split("/", 1)[0], [0, 0])
            kind[0] += 1
            kind[1] += len(data)

    def _exists_locked(self, name: str) -> bool:
        if name in self._written:
            return True
        if name in self._deleted:
            return False
        return self.inner.stat(name) is not None

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            if name in self._deleted:
                raise ObjectNotFound(f"{name} not found")
            v = self._written.get(name)
        if v is None:
            return self.inner.read(name, offset, length)
        if isinstance(v, int):
            raise StorageError(f"{name}: written by this dry run, contents not kept")
        return v[offset:] if length is None else v[offset:offset + length]

    def stat(self, name: str) -> int | None:
        with self._lock:
            if name in self._deleted:
                return None
            v = self._written.get(name)
        if v is None:
            return self.inner.stat(name)
        return v if isinstance(v, int) else len(v)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        with self._lock:
            written = {n: (v if isinstance(v, int) else len(v)) for n, v in self._written.items()
                       if n.startswith(prefix)}
            deleted = set(self._deleted)
        for name, size in self.inner.list(prefix):
            if name not in deleted and name not in written:
                yield name, size
        yield from written.items()

    def delete(self, name: str) -> None:
        with self._lock:
            self._written.pop(name, None)
            self._deleted.add(name)

    # The storage's clock (a save session reads it); what this dry run wrote
    # was written "now".
    def now(self) -> float:
        return self.inner.now()

    def mtime(self, name: str) -> float | None:
        with self._lock:
            if name in self._deleted:
                return None
            written = name in self._written
        return self.inner.now() if written else self.inner.mtime(name)

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        with self._lock:
            written = {n: (v if isinstance(v, int) else len(v)) for n, v in self._written.items()
                       if n.startswith(prefix)}
            deleted = set(self._deleted)
        for name, size, t in self.inner.list_times(prefix):
            if name not in deleted and name not in written:
                yield name, size, t
        if written:
            now = self.inner.now()
            for name, size in written.items():
                yield name, size, now

    def flush(self) -> None:
        pass

    def defer_sync(self) -> None:
        pass

    def create(self) -> None:
        pass

    def uploaded_bytes(self) -> int:
        return sum(b for _, b in self.uploads.values())


def cache_copy(path: str | None) -> tuple[Cache, str | None]:
    """A private, writable copy of the cache at ``path`` (``None`` or a
    missing file: an empty in-memory cache), and the temporary directory to
    remove afterwards.  The cache at ``path`` is only read."""
    if path is None or not os.path.exists(path):
        return Cache(None), None
    tmp = tempfile.mkdtemp(prefix="rekkord-dry-run-")
    try:
        dst_path = os.path.join(tmp, "cache.sqlite")
        src = sqlite3.connect(path)
        dst = sqlite3.connect(dst_path)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        copy = Cache(dst_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return copy, tmp


@dataclass
class DryRunResult:
    channel: str
    stats: object  # SaveStats of the save that would have run
    uploads: dict = field(default_factory=dict)  # kind -> [objects, bytes]
    warnings: list = field(default_factory=list)

    @property
    def bytes_upload(self) -> int:
        return sum(b for _, b in self.uploads.values())

    def to_json(self) -> dict:
        from dataclasses import asdict

        return {"dry_run": True, "channel": self.channel, **asdict(self.stats),
                "bytes_upload": self.bytes_upload,
                "uploads": {k: {"objects": n, "bytes": b} for k, (n, b) in sorted(self.uploads.items())},
                "problems": [{"path": p, "message": m} for p, m in self.warnings]}


def dry_run_save(repo: Repository, cache_path: str | None, options, channel: str, paths: list[str] | None = None,
                 *, stream=None, stream_name: str | None = None, time_ns: int | None = None, progress=None,
                 warn=None) -> DryRunResult:
    """What ``Saver(...).save(channel, paths)`` (or ``save_stream`` with
    ``stream``) would do, with nothing written to the repository and the
    cache at ``cache_path`` unchanged."""
    from .save import Saver

    storage = DryRunStorage(repo.storage)
    dry_repo = Repository(storage, repo.config, repo.key)
    cache, tmp = cache_copy(cache_path)
    try:
        saver = Saver(dry_repo, cache, options, progress=progress, warn=warn)
        if stream is not None:
            res = saver.save_stream(channel, stream_name, stream, time_ns=time_ns)
        else:
            res = saver.save(channel, list(paths or []), time_ns=time_ns)
    finally:
        cache.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return DryRunResult(channel, res.stats, {k: list(v) for k, v in storage.uploads.items()}, res.warnings)

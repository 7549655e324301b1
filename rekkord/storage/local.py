"""Local directory backend: one file per object, written to a temporary name,
flushed, then linked into place (``link`` never replaces, so exclusive writes
are atomic) and the directory flushed."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from ..errors import (
    NoSpace,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
)
from .base import Storage

TMP_PREFIX = ".tmp-"


def _syncfs(fd: int) -> None:
    """syncfs(2) where libc has it, else sync(2)."""
    try:
        import ctypes

        if ctypes.CDLL("libc.so.6", use_errno=True).syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def _translate(e: OSError, what: str) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on device")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoragePermissionDenied(f"{what}: permission denied")
    if e.errno == errno.ENOENT:
        return ObjectNotFound(f"{what}: not found")
    return StorageError(f"{what}: {e.strerror or e}")


class LocalStorage(Storage):
    connections = 4

    def __init__(self, path: str | os.PathLike, *, sync: bool = True):
        self.root = os.path.abspath(os.fspath(path))
        self.url = self.root
        self.sync = sync
        self._deferred = False
        self._unsynced: list[str] = []
        self._made: set[str] = set()

    def _path(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise StorageError(f"invalid object name {name!r}")
        return os.path.join(self.root, *name.split("/"))

    def create(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise _translate(e, f"create {self.root}") from e

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        path = self._path(name)
        d = os.path.dirname(path)
        if d not in self._made:
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                raise _translate(e, f"write {self.url}/{name}") from e
            self._made.add(d)
        tmp = os.path.join(d, TMP_PREFIX + os.urandom(8).hex())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if self.sync and not self._deferred:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if exclusive:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ObjectExists(f"write {self.url}/{name}: already exists") from None
            else:
                os.replace(tmp, path)
                tmp = None
            if self._deferred:
                if len(self._unsynced) <= 512:
                    self._unsynced.append(path)
            elif self.sync:
                dfd = os.open(d, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            raise _translate(e, f"write {self.url}/{name}") from e
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def defer_sync(self) -> None:
        self._deferred = True
        self._unsynced = []

    def flush(self) -> None:
        if not (self.sync and self._deferred):
            return
        paths, self._unsynced = self._unsynced, []
        if len(paths) <= 512:  # (the list stops growing past 512)
            # Few files: fsync them (in parallel, so the file system batches
            # the journal commits) and their directories.
            from concurrent.futures import ThreadPoolExecutor

            dirs = sorted({os.path.dirname(p) for p in paths})
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(self._fsync_path, paths))
                list(pool.map(self._fsync_path, dirs))
            return
        # Many files: one syncfs() is far cheaper than an fsync each.
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError as e:
            raise _translate(e, f"flush {self.url}") from e
        try:
            _syncfs(fd)
        finally:
            os.close(fd)

    def _fsync_path(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return  # deleted since (e.g. by prune); nothing to make durable
        except OSError as e:
            raise _translate(e, f"flush {path}") from e
        try:
            os.fsync(fd)
        except OSError as e:
            raise _translate(e, f"flush {path}") from e
        finally:
            os.close(fd)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb", buffering=0) as f:
                if offset:
                    f.seek(offset)
                if length is None:
                    return f.read()
                return f.read(length)
        except OSError as e:
            raise _translate(e, f"read {self.url}/{name}") from e

    def stat(self, name: str) -> int | None:
        try:
            return os.stat(self._path(name)).st_size
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _translate(e, f"stat {self.url}/{name}") from e

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        # Walk only the directories that can hold names with this prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, *base.split("/")) if base else self.root
        if not os.path.isdir(start):
            if not os.path.isdir(self.root):
                raise ObjectNotFound(f"list {self.url}: repository directory does not exist")
            return
        stack = [(start, base)]
        while stack:
            d, rel = stack.pop()
            try:
                it = os.scandir(d)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _translate(e, f"list {self.url}/{rel}") from e
            with it:
                for de in it:
                    if de.name.startswith(TMP_PREFIX):
                        continue
                    name = f"{rel}/{de.name}" if rel else de.name
                    if de.is_dir(follow_symlinks=False):
                        if name.startswith(prefix) or prefix.startswith(name + "/"):
                            stack.append((de.path, name))
                    elif name.startswith(prefix):
                        try:
                            yield name, de.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _translate(e, f"delete {self.url}/{name}") from e

"""Local directory backend: one file per object, written to a temporary name,
flushed, then linked into place (``link`` never replaces, so exclusive writes
are atomic) and the directory flushed.

``rename`` moves the name itself -- ``renameat2(RENAME_NOREPLACE)`` where the
kernel and file system have it, else ``link`` and ``unlink`` -- so the
garbage collector's fossilising needs no free space (a full disk can be
pruned).  Object times are the file system's: ``mtime`` of the file, and
for ``now`` the ``mtime`` of a temporary file just created."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from .. import directio, libc
from ..errors import (
    NoSpace,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
)
from .base import Storage

TMP_PREFIX = ".tmp-"

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """Move ``src`` to ``dst`` unless ``dst`` exists (:class:`FileExistsError`;
    ``src`` is then untouched): atomically with ``renameat2(RENAME_NOREPLACE)``
    where the kernel and the file system support it, else with ``link`` and
    ``unlink`` (a crash in between leaves both names).  Neither needs free
    space for the data."""
    f = libc.function("renameat2", (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint))
    if f is not None:
        if f(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src, None, dst)
        # this file system has no RENAME_NOREPLACE: links do the same
    os.link(src, dst)
    os.unlink(src)


def _translate(e: OSError, what: str) -> StorageError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"{what}: no space left on device")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoragePermissionDenied(f"{what}: permission denied")
    if e.errno == errno.ENOENT:
        return ObjectNotFound(f"{what}: not found")
    return StorageError(f"{what}: {e.strerror or e}")


class LocalStorage(Storage):
    # Writes are memory copies (into the page cache, or into an aligned
    # buffer for O_DIRECT): more threads than cores only add buffers (the
    # save's store pool is sized max(cores, connections)).
    connections = 2
    fork_safe = True  # (files opened per request)

    def __init__(self, path: str | os.PathLike, *, sync: bool = True):
        self.root = os.path.abspath(os.fspath(path))
        self.url = self.root
        self.sync = sync
        self._deferred = False
        self._made: set[str] = set()
        self._direct = directio.Choice()  # objects of directio.MIN_SIZE and more past the page cache

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
                w = self._direct.writer(fd, 0) if len(data) >= directio.MIN_SIZE else None
                if w is not None:
                    w.write(data, 0)
                    w.finish()
                    data = b""
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
                self._sync_later(path, d)
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
        # Files are fsynced in the background while the save goes on (the
        # file system batches concurrent fsyncs into few journal commits);
        # flush() waits for them and syncs the directories.
        from concurrent.futures import ThreadPoolExecutor

        if not self.sync or self._deferred:
            return
        self._deferred = True
        self._sync_pool = ThreadPoolExecutor(8, thread_name_prefix="rekkord-fsync")
        self._sync_futs = []
        self._sync_dirs = set()

    def _sync_later(self, path: str, d: str) -> None:
        self._sync_dirs.add(d)
        futs = self._sync_futs
        futs.append(self._sync_pool.submit(self._fsync_path, path))
        if len(futs) > 1024:
            self._sync_futs = [f for f in futs if not f.done()]

    def flush(self) -> None:
        if not self._deferred:
            return
        futs, self._sync_futs = self._sync_futs, []
        for f in futs:
            f.result()
        dirs, self._sync_dirs = self._sync_dirs, set()
        for f in [self._sync_pool.submit(self._fsync_path, d) for d in dirs]:
            f.result()

    def close(self) -> None:
        if self._deferred:
            self._sync_pool.shutdown(wait=True)
            self._deferred = False

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

    def rename(self, src: str, dst: str) -> None:
        sp, dp = self._path(src), self._path(dst)
        what = f"rename {self.url}/{src} to {dst}"
        d = os.path.dirname(dp)
        for attempt in range(2):
            if d not in self._made:
                try:
                    # A directory takes a block on most file systems: on a
                    # full disk this can fail where the move itself would not
                    # (tmpfs and a disk with a block to spare make it).
                    os.makedirs(d, exist_ok=True)
                except OSError as e:
                    raise _translate(e, what) from e
                self._made.add(d)
            try:
                rename_noreplace(sp, dp)
                break
            except FileExistsError:
                raise ObjectExists(f"{what}: {dst} already exists") from None
            except FileNotFoundError:
                if not os.path.lexists(sp):
                    raise ObjectNotFound(f"{what}: not found") from None
                self._made.discard(d)  # the target directory went away meanwhile: make it again
                if attempt:
                    raise ObjectNotFound(f"{what}: cannot create {os.path.dirname(dst)}") from None
            except OSError as e:
                if e.errno == errno.EXDEV:  # fossils/ on another file system (a mount inside the repository)
                    return Storage.rename(self, src, dst)
                raise _translate(e, what) from e
        if self._deferred:
            self._sync_dirs.update((d, os.path.dirname(sp)))
        elif self.sync:
            for x in {d, os.path.dirname(sp)}:
                self._fsync_path(x)

    def now(self) -> float:
        tmp = os.path.join(self.root, TMP_PREFIX + "clock-" + os.urandom(8).hex())
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                return os.fstat(fd).st_mtime
            finally:
                os.close(fd)
                os.unlink(tmp)
        except OSError as e:
            raise _translate(e, f"read the time of {self.url}") from e

    def mtime(self, name: str) -> float | None:
        try:
            return os.stat(self._path(name)).st_mtime
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _translate(e, f"stat {self.url}/{name}") from e

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

    def _walk(self, start: str, base: str, descend) -> Iterator[tuple[str, os.DirEntry]]:
        """Every non-directory below ``start`` (whose name is ``base``),
        temporary names included, as (name, entry); descends into the
        directories whose entry and name ``descend`` accepts."""
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
                    name = f"{rel}/{de.name}" if rel else de.name
                    if de.is_dir(follow_symlinks=False):
                        if descend(de, name):
                            stack.append((de.path, name))
                    else:
                        yield name, de

    def remove_temporaries(self, older_than: float) -> tuple[int, int]:
        count = size = 0
        limit = self.now() - older_than  # the file system's clock judges its mtimes
        for _, de in self._walk(self.root, "", lambda de, name: True):
            if not de.name.startswith(TMP_PREFIX):
                continue
            try:
                st = de.stat(follow_symlinks=False)
                if st.st_mtime < limit:
                    os.unlink(de.path)
                    count, size = count + 1, size + st.st_size
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _translate(e, f"remove temporary {de.path}") from e
        return count, size

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, st in self._list_stat(prefix):
            yield name, st.st_size

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        for name, st in self._list_stat(prefix):
            yield name, st.st_size, st.st_mtime

    def _list_stat(self, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
        # Walk only the directories that can hold names with this prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, *base.split("/")) if base else self.root
        if not os.path.isdir(start):
            if not os.path.isdir(self.root):
                raise ObjectNotFound(f"list {self.url}: repository directory does not exist")
            return

        def descend(de: os.DirEntry, name: str) -> bool:
            return not de.name.startswith(TMP_PREFIX) and (name.startswith(prefix) or prefix.startswith(name + "/"))

        for name, de in self._walk(start, base, descend):
            if de.name.startswith(TMP_PREFIX) or not name.startswith(prefix):
                continue
            try:
                st = de.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield name, st

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise _translate(e, f"delete {self.url}/{name}") from e

"""Reading a snapshot's index: entries, sub-path selection, listing."""

from __future__ import annotations

import collections
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from . import format as fmt
from .errors import IntegrityError, PathNotFound
from .index import Entry, decode_one
from .repository import Repository, Snapshot


def normalize_subpath(path: str | bytes | None) -> bytes:
    if path is None:
        return b""
    p = path if isinstance(path, bytes) else __import__("os").fsencode(path)
    parts = [c for c in p.split(b"/") if c and c != b"."]
    if b".." in parts:
        raise PathNotFound(f"path {p.decode(errors='replace')} may not contain '..'")
    return b"/".join(parts)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``SNAPSHOT[:PATH]`` → (snapshot, path or None)."""
    if ":" in spec:
        snap, path = spec.split(":", 1)
        return snap, path or "/"
    return spec, None


def iter_entries(repo: Repository, snap: Snapshot, *, prefetch: int = 4) -> Iterator[Entry]:
    """All entries of a snapshot in depth-first order (parents first)."""
    repo.key.require("read", "read snapshot contents")
    ids = [i for i, _ in snap.index]
    buf = bytearray()
    with ThreadPoolExecutor(max(1, prefetch)) as pool:
        futs = collections.deque()
        it = iter(ids)
        for i in it:
            futs.append(pool.submit(repo.read_blob, i, fmt.T_INDEX))
            if len(futs) >= prefetch:
                break
        while futs:
            data = futs.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                futs.append(pool.submit(repo.read_blob, nxt, fmt.T_INDEX))
            buf += data
            pos = 0
            n = len(buf)
            while n - pos >= 4:
                (rl,) = struct.unpack_from("<I", buf, pos)
                if n - pos - 4 < rl:
                    break
                e, pos = decode_one(buf, pos)
                yield e
            del buf[:pos]
    if buf:
        raise IntegrityError(f"snapshot {snap.id}: index ends in the middle of a record")


def select(entries: Iterator[Entry], subpath: bytes) -> Iterator[tuple[Entry, bytes]]:
    """Entries at or below ``subpath``, with their path relative to it.
    The entry for ``subpath`` itself comes first with relative path ``b""``."""
    if not subpath:
        for e in entries:
            yield e, e.path
        return
    prefix = subpath + b"/"
    found = False
    for e in entries:
        if e.path == subpath:
            found = True
            yield e, b""
        elif e.path.startswith(prefix):
            found = True
            yield e, e.path[len(prefix):]
        elif found and not e.path.startswith(prefix):
            # Depth-first order: once we leave the subtree, it is complete.
            break
    if not found:
        raise PathNotFound(f"path /{subpath.decode(errors='replace')} is not in the snapshot")


class BlobFetcher:
    """Fetches, verifies and decrypts blobs on a pool; each blob fetched once
    while it is in use; completed blobs kept in a bounded LRU."""

    def __init__(self, repo: Repository, threads: int, max_bytes: int = 32 << 20):
        self.repo = repo
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="rekkord-fetch")
        self.lock = threading.Lock()
        self.futs: collections.OrderedDict[bytes, Future] = collections.OrderedDict()
        self.max_bytes = max_bytes
        self.bytes = 0
        self.fetched = 0

    def _fetch(self, blob_id: bytes) -> bytes:
        data = self.repo.read_blob(blob_id, fmt.T_DATA)
        with self.lock:
            self.bytes += len(data)
            self.fetched += 1
        return data

    def get(self, blob_id: bytes) -> Future:
        with self.lock:
            fut = self.futs.get(blob_id)
            if fut is not None:
                self.futs.move_to_end(blob_id)
                return fut
            fut = self.pool.submit(self._fetch, blob_id)
            self.futs[blob_id] = fut
            # Evict completed blobs, oldest first, beyond the budget.
            while self.bytes > self.max_bytes and len(self.futs) > 1:
                old_id, old = next(iter(self.futs.items()))
                if not old.done():
                    break
                del self.futs[old_id]
                if old.exception() is None:
                    self.bytes -= len(old.result())
            return fut

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

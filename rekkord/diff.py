"""Browsing snapshots: compare two (diff), search many (find), read one file (cat).

diff
    Both indexes are streamed; the first is kept as a compact map (path ->
    metadata tuple + content fingerprint), the second is compared against it
    entry by entry.  A file's content is *unchanged* when its extent list is
    identical.  Different extents do not always mean different content:
    small files live inside packs, and a pack changes when a neighbour
    changes.  So when two files of equal size have different extents and
    the extents cannot prove a difference (packed files), the content is
    fetched and compared byte for byte.  Files cut by the chunker (every
    extent a whole blob, offset 0) need no fetch: equal content cuts into
    equal blob ids.

find
    A glob on the name (a pattern without '/') or on the path (a pattern with
    '/'; ``*`` stays inside one component, ``**`` crosses them; a pattern not
    starting with '/' or '**' may match at any depth).

cat / read
    :func:`lookup` finds one entry; :class:`ContentReader` reads a byte range
    of a file, fetching only the blobs that cover it (with read-ahead), and is
    shared with the FUSE mount.
"""

from __future__ import annotations

import bisect
import fnmatch
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import IntegrityError, PathNotFound, RekkordError, UsageError
from .index import V2 as _WIDE, F_UNREADABLE, K_DIR, K_FILE, K_HARDLINK, K_SYMLINK, Entry, Extent

# Summaries keep extents in the wide layout, which holds format v2's keys too.
encode_extents, decode_extents = _WIDE.encode_extents, _WIDE.decode_extents
from .repository import Repository, Snapshot
from .snapshot import BlobFetcher, iter_entries, normalize_subpath

ADDED = "added"
REMOVED = "removed"
MODIFIED = "modified"
METADATA = "metadata"
STATUS_CHARS = {ADDED: "+", REMOVED: "-", MODIFIED: "M", METADATA: "m"}

# Fields compared for a metadata-only change (atime is never compared).
META_FIELDS = ("mode", "owner", "mtime", "xattrs", "link")


def _is_file(kind: int) -> bool:
    return kind in (K_FILE, K_HARDLINK)


@dataclass(slots=True)
class _Summary:
    """What diff keeps of an entry of the first snapshot."""

    kind: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    rdev: int
    target: bytes  # symlink target or hard link's first path
    xattrs: bytes  # digest of the xattrs ('' when none)
    extents: bytes  # encoded extents (or their digest when long)
    short: bool  # extents holds the encoded extents (not a digest)

    @classmethod
    def of(cls, e: Entry) -> "_Summary":
        enc = encode_extents(e.extents)
        short = len(e.extents) <= 4
        return cls(e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.rdev, e.target,
                   _xattr_digest(e.xattrs), enc if short else _digest(enc), short)


def _digest(b: bytes) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


def _xattr_digest(xattrs) -> bytes:
    if not xattrs:
        return b""
    h = hashlib.blake2b(digest_size=16)
    for k, v in xattrs:
        h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(4, "little") + v)
    return h.digest()


@dataclass
class Change:
    path: bytes  # relative to the snapshot root, like Entry.path
    status: str  # added | removed | modified | metadata
    kind: str  # kind name of the new entry (old one when removed)
    size: int  # new size (old one when removed)
    old_size: int | None = None
    details: list[str] = field(default_factory=list)  # what changed: content, type, size, mode, ...

    @property
    def display_path(self) -> str:
        return "/" + os.fsdecode(self.path)

    def to_json(self) -> dict:
        d = {"path": self.display_path, "status": self.status, "type": self.kind, "size": self.size}
        if self.old_size is not None and self.old_size != self.size:
            d["old_size"] = self.old_size
        if self.details:
            d["changed"] = self.details
        return d


@dataclass
class DiffStats:
    added: int = 0
    removed: int = 0
    modified: int = 0
    metadata: int = 0
    bytes_added: int = 0
    bytes_removed: int = 0
    contents_compared: int = 0  # files whose bytes had to be fetched to decide

    def count(self, c: Change):
        setattr(self, c.status, getattr(self, c.status) + 1)
        if c.status == ADDED:
            self.bytes_added += c.size
        elif c.status == REMOVED:
            self.bytes_removed += c.size
        elif c.status == MODIFIED:
            delta = c.size - (c.old_size or 0)
            if delta > 0:
                self.bytes_added += delta
            else:
                self.bytes_removed -= delta


def _path_key(p: bytes):
    return p.split(b"/")


class Differ:
    """Compare snapshot ``a`` (older) with ``b`` (newer), optionally only below
    ``subpath``.  ``compare_content=False`` skips the byte comparison of packed
    files and calls them modified when their extents differ."""

    def __init__(self, repo: Repository, a: Snapshot, b: Snapshot, *, subpath: str | bytes | None = None,
                 compare_content: bool = True, threads: int = 8):
        repo.key.require("read", "compare snapshots")
        self.repo = repo
        self.a = a
        self.b = b
        self.sub = normalize_subpath(subpath)
        self.compare_content = compare_content
        self.threads = threads
        self.stats = DiffStats()
        self.chunk_min = repo.chunker_params.min_size

    def _entries(self, snap: Snapshot) -> Iterator[Entry]:
        sub = self.sub
        if not sub:
            yield from iter_entries(self.repo, snap)
            return
        prefix = sub + b"/"
        for e in iter_entries(self.repo, snap):
            if e.path == sub or e.path.startswith(prefix):
                yield e

    def run(self) -> list[Change]:
        old: dict[bytes, _Summary] = {}
        for e in self._entries(self.a):
            old[e.path] = _Summary.of(e)
        changes: list[Change] = []
        pending: list[tuple[Change, list[Extent], list[Extent]]] = []
        seen_new = False
        for e in self._entries(self.b):
            seen_new = True
            s = old.pop(e.path, None)
            if s is None:
                changes.append(Change(e.path, ADDED, e.kind_name, e.size))
                continue
            c = self._compare(s, e, pending)
            if c is not None:
                changes.append(c)
        if self.sub and not seen_new and not old and not changes:
            raise PathNotFound(f"path /{os.fsdecode(self.sub)} is in neither snapshot")
        for path, s in old.items():
            changes.append(Change(path, REMOVED, _kind_name(s.kind), s.size))
        if pending:
            self._compare_contents(pending, changes)
        changes.sort(key=lambda c: _path_key(c.path))
        for c in changes:
            self.stats.count(c)
        return changes

    def _compare(self, s: _Summary, e: Entry, pending) -> Change | None:
        details = []
        content_known_same = True
        if _is_file(s.kind) != _is_file(e.kind) or (not _is_file(s.kind) and s.kind != e.kind):
            return Change(e.path, MODIFIED, e.kind_name, e.size, s.size, ["type"])
        if _is_file(e.kind):
            enc = encode_extents(e.extents)
            same_ext = (enc if s.short else _digest(enc)) == s.extents
            if s.size != e.size:
                details += ["content", "size"]
            elif not same_ext:
                if self._extents_prove_difference(e, s):
                    details.append("content")
                elif self.compare_content and s.short:
                    content_known_same = False
                else:
                    details.append("content")
        elif e.kind == K_SYMLINK:
            if s.target != e.target:
                details.append("target")
        elif s.rdev != e.rdev:
            details.append("device")
        if s.mode != e.mode:
            details.append("mode")
        if (s.uid, s.gid) != (e.uid, e.gid):
            details.append("owner")
        if s.mtime_ns != e.mtime_ns:
            details.append("mtime")
        if s.xattrs != _xattr_digest(e.xattrs):
            details.append("xattrs")
        if _is_file(e.kind) and (s.kind != e.kind or (s.kind == K_HARDLINK and s.target != e.target)):
            details.append("link")
        content = any(d in ("content", "target", "device", "type") for d in details)
        if not content_known_same:
            c = Change(e.path, METADATA, e.kind_name, e.size, s.size, details)
            pending.append((c, decode_extents(s.extents), list(e.extents)))
            return None
        if not details:
            return None
        return Change(e.path, MODIFIED if content else METADATA, e.kind_name, e.size, s.size, details)

    def _extents_prove_difference(self, e: Entry, s: _Summary) -> bool:
        """Chunked files (not packed): different blob ids mean different bytes."""
        if e.size < self.chunk_min:
            return False
        if any(x.offset for x in e.extents):
            return False
        if s.short and any(x.offset for x in decode_extents(s.extents)):
            return False
        return True

    def _compare_contents(self, pending, changes: list[Change]):
        fetcher = BlobFetcher(self.repo, self.threads, max_bytes=64 << 20)
        try:
            for c, old_ext, new_ext in pending:
                self.stats.contents_compared += 1
                same = _read_extents(fetcher, old_ext) == _read_extents(fetcher, new_ext)
                if not same:
                    c.details.insert(0, "content")
                    c.status = MODIFIED
                if c.details:
                    changes.append(c)
        finally:
            fetcher.close()


def _read_extents(fetcher: BlobFetcher, extents: list[Extent]) -> bytes:
    futs = [fetcher.get(x.blob, x.key) for x in extents]
    return b"".join(f.result()[x.offset:x.offset + x.length] for f, x in zip(futs, extents))


def _kind_name(kind: int) -> str:
    return Entry(kind, b"").kind_name


def diff(repo: Repository, a: Snapshot, b: Snapshot, **kw) -> tuple[list[Change], DiffStats]:
    d = Differ(repo, a, b, **kw)
    changes = d.run()
    return changes, d.stats


# ---- find -----------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern:
    """``*`` and ``?`` stay within one path component, ``**`` crosses them,
    ``[...]`` is a character class (as in fnmatch)."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            if i < n and pattern[i] == "/":  # '**/' also matches no directory at all
                out[-1] = "(?:.*/)?"
                i += 1
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 2 if i + 1 < n and pattern[i + 1] in "!^" else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.S)


class Matcher:
    """Matches entries by name (pattern without '/') or by path."""

    def __init__(self, pattern: str):
        if not pattern:
            raise UsageError("empty pattern")
        self.pattern = pattern
        if "/" in pattern.rstrip("/"):
            p = pattern.rstrip("/")
            if not p.startswith("/") and not p.startswith("**"):
                p = "**/" + p
            self.path_re = glob_regex(p.lstrip("/") if p.startswith("/") else p)
            self.name = None
        else:
            self.path_re = None
            self.name = pattern.rstrip("/")

    def match(self, e: Entry) -> bool:
        if self.name is not None:
            return fnmatch.fnmatchcase(os.fsdecode(e.name), self.name)
        return self.path_re.fullmatch(os.fsdecode(e.path)) is not None


def find(repo: Repository, snaps: Iterable[Snapshot], pattern: str, *, threads: int = 4,
         on_error: Callable[[Snapshot, Exception], None] | None = None
         ) -> Iterator[tuple[Snapshot, Entry]]:
    """Matching entries of each snapshot, snapshot by snapshot in the given
    order; snapshots are read ``threads`` at a time."""
    repo.key.require("read", "search snapshot contents")
    m = Matcher(pattern)
    snaps = list(snaps)

    def scan(snap: Snapshot) -> list[Entry]:
        return [e for e in iter_entries(repo, snap, prefetch=2) if m.match(e)]

    with ThreadPoolExecutor(max(1, threads)) as pool:
        futs = [pool.submit(scan, s) for s in snaps]
        for snap, fut in zip(snaps, futs):
            try:
                found = fut.result()
            except IntegrityError as err:
                if on_error is None:
                    raise
                on_error(snap, err)
                continue
            for e in found:
                yield snap, e


# ---- one file ----------------------------------------------------------------------


def lookup(repo: Repository, snap: Snapshot, path: str | bytes) -> Entry:
    """The entry at ``path`` (``/`` is the root, which has no entry: an
    error here)."""
    sub = normalize_subpath(path)
    if not sub:
        raise UsageError("/ is a directory (the snapshot root)")
    for e in iter_entries(repo, snap):
        if e.path == sub:
            return e
    raise PathNotFound(f"path /{os.fsdecode(sub)} is not in snapshot {snap.id[:8]}")


class ContentReader:
    """Reads byte ranges of one file's content.  Fetches only the blobs whose
    extents overlap the range (plus ``readahead`` following blobs on
    sequential reads); decrypted blobs come from a shared :class:`BlobFetcher`
    (an LRU)."""

    def __init__(self, fetcher: BlobFetcher, extents: list[Extent], size: int, *, readahead: int = 2):
        self.fetcher = fetcher
        self.extents = extents
        self.size = size
        self.starts = []
        pos = 0
        for x in extents:
            self.starts.append(pos)
            pos += x.length
        self.total = pos
        self.readahead = readahead
        self.next_pos = 0
        self.lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        out = []
        pos = offset
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        sequential = offset == self.next_pos
        self.next_pos = end
        last = i
        futs = []
        j = i
        while j < len(self.extents) and self.starts[j] < end:
            futs.append((j, self.fetcher.get(self.extents[j].blob, self.extents[j].key)))
            last = j
            j += 1
        if sequential and self.readahead:
            for k in range(last + 1, min(last + 1 + self.readahead, len(self.extents))):
                self.fetcher.get(self.extents[k].blob, self.extents[k].key)
        for j, fut in futs:
            x = self.extents[j]
            start = self.starts[j]
            lo = max(pos, start) - start
            hi = min(end, start + x.length) - start
            blob = fut.result()
            piece = blob[x.offset + lo:x.offset + hi]
            if len(piece) != hi - lo:
                raise IntegrityError(f"blob {x.blob.hex()} is shorter than the index says")
            if start + lo > pos:  # a gap between extents: zeros (never written by save)
                out.append(bytes(start + lo - pos))
            out.append(piece)
            pos = start + hi
        if pos < end:  # the index says the file is longer than its extents: a hole
            out.append(bytes(end - pos))
        return b"".join(out)

    def iter(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        pos = 0
        while pos < self.size:
            data = self.read(pos, chunk)
            if not data:
                break
            pos += len(data)
            yield data


def file_entry(entry: Entry, path: str | bytes) -> Entry:
    """``entry`` if it has content, else a clear error."""
    p = path if isinstance(path, str) else os.fsdecode(path)
    if entry.kind == K_DIR:
        raise UsageError(f"{p} is a directory")
    if entry.kind == K_SYMLINK:
        raise UsageError(f"{p} is a symbolic link to {os.fsdecode(entry.target)}")
    if not _is_file(entry.kind):
        raise UsageError(f"{p} is a {entry.kind_name}, not a file")
    if entry.flags & F_UNREADABLE:
        raise RekkordError(f"{p} was unreadable when it was saved; the snapshot holds no content for it")
    return entry

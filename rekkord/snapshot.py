"""Reading a snapshot's index: entries, sub-path selection, listing."""

from __future__ import annotations

import collections
import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from . import format as fmt, schema
from .errors import IntegrityError, PathNotFound, StorageError, UnsupportedFormat
from .index import K_DIR, K_FILE, K_HARDLINK, K_SYMLINK, KIND_NAMES, Entry, decode_one
from .repository import Repository, Snapshot


def normalize_subpath(path: str | bytes | None) -> bytes:
    if path is None:
        return b""
    p = path if isinstance(path, bytes) else os.fsencode(path)
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


# ---- validating the entry stream (every index is hostile input) ----------------------

#: Set on the directories :class:`EntryValidator` adds where a damaged index
#: lost their records (never a format flag: those fit in a byte).
F_IMPLICIT = 0x100
_CONTENT_KINDS = (K_FILE, K_HARDLINK)


def path_problem(path: bytes) -> str | None:
    """Why ``path`` cannot be a path in a snapshot (relative, '/'-separated,
    no empty, '.' or '..' component, no NUL, within the format's lengths)."""
    if len(path) > schema.MAX_PATH:
        return f"path too long ({len(path)} bytes)"
    if b"\0" in path:
        return "path holds a NUL byte"
    comps = path.split(b"/")
    if b"" in comps:
        return "absolute path or empty component" if path.startswith(b"/") else "empty path component"
    if b"." in comps or b".." in comps:
        return "path holds a '.' or '..' component"
    if max(map(len, comps)) > schema.MAX_NAME:
        return "path component too long"
    return None


class EntryValidator:
    """Refuses every entry a genuine save never writes, so that restore,
    mount, ls, find, diff and cat only see a well-formed tree:

    * paths relative, without empty, ``.`` or ``..`` components or NUL, within
      the format's lengths;
    * depth-first order with names in byte order (components compared as a
      tuple), so no path repeats;
    * every parent a directory of the snapshot seen before its entries (no
      entry below a symlink, a file or nothing);
    * kinds, flags, modes, symlink and hard link targets, xattrs and extents
      within the format.

    After a lost run of index records (``resync()``, salvage of a damaged
    index) the directories above the next entries may be lost with them:
    they are added as implicit directories (flag :data:`F_IMPLICIT`), unless
    what was seen says that path is not a directory.

    ``check(e)`` returns the entries to pass on (the implicit directories,
    then ``e``), or None with the reason in ``last_refusal``; entries below a
    refused one are dropped without a second report (``skipped`` counts
    them)."""

    def __init__(self, *, data_limit: int = schema.data_blob_limit(256 << 10, 4 << 20)):
        self.data_limit = data_limit
        self.stack: list[tuple] = [()]  # directories enclosing the next entry; () is the root
        self.last: tuple | None = None
        self.last_dir = True
        self.refused_below: tuple | None = None
        self.last_refusal: str | None = None
        self.skipped = 0
        self.resyncing = False

    def resync(self) -> None:
        self.resyncing = True

    def _refuse(self, comps: tuple, why: str) -> None:
        self.refused_below = comps or None  # (a refused root entry hides nothing)
        self.last_refusal = why
        return None

    def check(self, e: Entry) -> list[Entry] | None:
        path = e.path
        rb = self.refused_below
        if rb is not None:
            comps = tuple(path.split(b"/")) if path else ()
            if len(comps) > len(rb) and comps[:len(rb)] == rb:
                self.skipped += 1
                self.last_refusal = None
                return None
            self.refused_below = None
        if not path:
            comps = ()
            if self.last is not None or e.kind != K_DIR:
                return self._refuse(comps, "a root entry that is not the first entry or not a directory")
        else:
            why = path_problem(path)
            if why:
                return self._refuse((path,), why)
            comps = tuple(path.split(b"/"))
            if self.last is not None and comps <= self.last:
                return self._refuse(comps, "out of order or repeated (the index is sorted, depth first)")
        why = self._entry_problem(e)
        if why:
            return self._refuse(comps, why)
        out = []
        if comps:
            stack = self.stack
            parent = comps[:-1]
            if stack[-1] != parent:
                while len(stack) > 1 and stack[-1] != comps[:len(stack[-1])]:
                    stack.pop()
                if stack[-1] != parent:
                    if not self.resyncing:
                        return self._refuse(comps, "its parent is not a directory in the snapshot")
                    last = self.last
                    if last is not None and not self.last_dir and len(last) < len(comps) \
                            and comps[:len(last)] == last:
                        return self._refuse(comps, "its parent is not a directory in the snapshot")
                    for i in range(len(stack[-1]) + 1, len(comps)):
                        stack.append(comps[:i])
                        out.append(Entry(K_DIR, b"/".join(comps[:i]), mode=0o755, flags=F_IMPLICIT))
        self.resyncing = False
        self.last = comps
        self.last_dir = e.kind == K_DIR
        if e.kind == K_DIR and comps:
            self.stack.append(comps)
        out.append(e)
        return out

    def _entry_problem(self, e: Entry) -> str | None:
        kind = e.kind
        if kind not in KIND_NAMES:
            return f"unknown entry kind {kind}"
        if e.flags & ~0x0F:
            return f"unknown flags {e.flags:#x}"
        if e.mode > 0o7777:
            return f"invalid mode {e.mode:o}"
        if e.extents:
            if kind not in _CONTENT_KINDS:
                return f"a {KIND_NAMES[kind]} with content"
            limit = self.data_limit
            for x in e.extents:
                if x.offset + x.length > limit:
                    return "an extent beyond the largest blob"
        t = e.target
        if kind == K_SYMLINK:
            if not t or len(t) > schema.MAX_TARGET or b"\0" in t:
                return "invalid symlink target"
        elif kind == K_HARDLINK:
            why = path_problem(t) if t else "empty hard link target"
            if why:
                return f"invalid hard link target ({why})"
        elif t:
            return f"a {KIND_NAMES[kind]} with a link target"
        if e.xattrs:
            total = 0
            for k, v in e.xattrs:
                if not k or len(k) > schema.MAX_XATTR_NAME or b"\0" in k or len(v) > schema.MAX_XATTR_VALUE:
                    return "invalid extended attribute"
                total += len(k) + len(v)
            if total > schema.MAX_XATTR_BYTES:
                return "extended attributes too large"
        return None


# ---- reading an index that may be damaged --------------------------------------------

_LEN = struct.Struct("<I")
_MIN_RECORD = 4 + 44 + 1 + 1 + 2 + 2 + 4  # head, meta, user, group, target, xattrs, extents
#: How far after a lost run of records salvage looks for the next record,
#: and how many plausible records in a row it takes as re-synchronised.
_RESYNC_WINDOW = 2 << 20
_RESYNC_RECORDS = 8


def _plausible(e: Entry) -> bool:
    return (e.kind in KIND_NAMES and e.flags < 16 and e.mode < 0o10000 and (not e.path or path_problem(e.path) is None)
            and all(x.length <= (64 << 20) for x in e.extents))


def _chain(buf, o: int, final: bool, decode_one=decode_one) -> bool:
    """Whether plausible records follow each other from offset ``o`` (to the
    end of ``buf``, where a last record may be cut off unless ``final``, or
    for :data:`_RESYNC_RECORDS` records)."""
    n = len(buf)
    pos = o
    count = 0
    while n - pos >= 4:
        (rl,) = _LEN.unpack_from(buf, pos)
        if rl < _MIN_RECORD or rl > schema.MAX_INDEX_RECORD:
            return False
        if pos + 4 + rl > n:
            if final:
                return False
            head = buf[pos + 4:pos + 6]
            if len(head) == 2 and (head[0] not in KIND_NAMES or head[1] >= 16):
                return False
            break
        try:
            e, pos = decode_one(buf, pos)
        except IntegrityError:
            return False
        if not _plausible(e):
            return False
        count += 1
        if count >= _RESYNC_RECORDS:
            return True
    if final:
        return count >= 1 and pos == n
    return count >= 2


def describe_loss(blobs: list[tuple[bytes, str]], before: bytes | None, after: bytes | None) -> str:
    """One line for a lost run of index records."""
    names = "; ".join(f"index blob {b.hex()}: {m}" for b, m in blobs)
    a = f"/{os.fsdecode(before)}" if before is not None else "the start"
    b = f"/{os.fsdecode(after)}" if after is not None else "the end"
    return f"{names}: the entries between {a} and {b} are lost"


def iter_entries(repo: Repository, snap: Snapshot, *, prefetch: int = 4,
                 on_damage: Callable[[list[tuple[bytes, str]], bytes | None, bytes | None], None] | None = None,
                 on_refused: Callable[[bytes, str], None] | None = None,
                 on_copy: Callable[[str], None] | None = None) -> Iterator[Entry]:
    """All entries of a snapshot in depth-first order (parents first), each
    one checked by an :class:`EntryValidator`: what it refuses is reported
    through ``on_refused(path, reason)`` and skipped.

    Without ``on_damage`` a missing or damaged index blob raises
    :class:`IntegrityError`.  With it (salvage: restore every intact file,
    check names the lost paths) the walk goes on: the records of the damaged
    blobs are lost, reading resumes at the first record recognisable after
    them, and ``on_damage(blobs, last_path_before, first_path_after)`` names
    each lost run (``blobs``: [(blob id, message)]; paths None at the start
    or the end).

    An index blob stored as copies (format v2, docs/format.md §13.8) is read
    from the first copy that verifies; reading a later one is said through
    ``on_copy(message)`` (or the repository's ``notice``), and only when
    every copy fails are its records lost."""
    repo.key.require("read", "read snapshot contents")
    groups = snap.copies_of("index")
    ids = [g[0][0] for g in groups]
    what = f" of snapshot {snap.id[:8]}"
    decode_one = repo.index.decode_one
    limit = repo.codec.limits.get(fmt.T_DATA) if repo.codec is not None else None
    v = EntryValidator(data_limit=limit) if limit else EntryValidator()
    buf = bytearray()
    last_path: bytes | None = None
    lost: list[tuple[bytes, str]] = []  # the current damaged run
    pending = bytearray()  # data after a damaged run, until a record boundary is found
    scanned = 0  # offsets of pending already tried
    salvage = on_damage is not None

    def fetch(k: int):
        try:
            return repo.read_copies(groups[k], fmt.T_INDEX, what=what, on_copy=on_copy)
        except (IntegrityError, StorageError, UnsupportedFormat) as e:
            if not salvage:
                raise
            return e

    def damaged(run, before, after):
        v.resync()
        on_damage(run, before, after)

    with ThreadPoolExecutor(max(1, prefetch)) as pool:
        futs = [pool.submit(fetch, k) for k in range(min(prefetch, len(ids)))]
        for k, bid in enumerate(ids):
            data = futs[k].result()
            futs[k] = None
            if k + prefetch < len(ids):
                futs.append(pool.submit(fetch, k + prefetch))
            final = k == len(ids) - 1
            if isinstance(data, Exception):
                msg = str(data)
                prefix = f"blob {bid.hex()}: "
                lost.append((bid, msg[len(prefix):] if msg.startswith(prefix) else msg))
                buf.clear()
                pending.clear()
                scanned = 0
                continue
            if lost:
                pending += data
                end = min(len(pending) - 3, _RESYNC_WINDOW)
                o = next((i for i in range(scanned, end) if _chain(pending, i, final, decode_one)), None)
                if o is None:
                    scanned = max(scanned, end)
                    if scanned >= _RESYNC_WINDOW:  # no record boundary near: the rest of this blob is lost too
                        pending.clear()
                        scanned = 0
                    continue
                buf = bytearray(pending[o:])
                pending.clear()
                scanned = 0
                first, _ = decode_one(buf, 0)
                damaged(lost, last_path, first.path)
                lost = []
            else:
                buf += data
            pos = 0
            n = len(buf)
            try:
                while n - pos >= 4:
                    (rl,) = _LEN.unpack_from(buf, pos)
                    if rl > schema.MAX_INDEX_RECORD:
                        raise IntegrityError(f"index record is too large ({rl} bytes)")
                    if n - pos - 4 < rl:
                        break
                    e, pos = decode_one(buf, pos)
                    last_path = e.path
                    out = v.check(e)
                    if out is None:
                        if v.last_refusal is not None and on_refused is not None:
                            on_refused(e.path, v.last_refusal)
                        continue
                    yield from out
            except IntegrityError as err:
                if not salvage:
                    raise IntegrityError(f"snapshot {snap.id}: index blob {bid.hex()}: {err}") from None
                lost.append((bid, f"undecodable index record ({err})"))
                buf.clear()
                continue
            del buf[:pos]
    if lost:
        damaged(lost, last_path, None)
    elif buf:
        if not salvage:
            raise IntegrityError(f"snapshot {snap.id}: index ends in the middle of a record")
        damaged([(ids[-1], "the index ends in the middle of a record")], last_path, None)


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
        self.damaged: set[bytes] = set()  # blobs found missing or damaged (for a repair hint)

    def _fetch(self, blob_id: bytes, key: bytes = b"") -> bytes:
        try:
            data = self.repo.read_blob(blob_id, fmt.T_DATA, key)
        except IntegrityError as e:
            with self.lock:
                self.damaged.add(blob_id)
            data = self.repo.rebuild_data(blob_id, key, e)  # (parity, rekkord/parity.py; else raises e)
        with self.lock:
            self.bytes += len(data)
            self.fetched += 1
        return data

    def get(self, blob_id: bytes, key: bytes = b"") -> Future:
        with self.lock:
            fut = self.futs.get(blob_id)
            if fut is not None:
                self.futs.move_to_end(blob_id)
                return fut
            fut = self.pool.submit(self._fetch, blob_id, key)
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

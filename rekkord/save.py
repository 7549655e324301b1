"""Saving a snapshot: walk → read → chunk → hash → dedup → compress → seal → upload.

Threads: the main thread walks the tree in a deterministic depth-first order
and keeps the pipeline's order; a *file pool* reads and chunks files; a
*store pool* hashes, compresses, seals and uploads blobs.  The hot calls
(read, FastCDC, BLAKE3, zstd, XChaCha20) release the GIL.  Once a save has
more than READER_PROCESSES_AFTER small files to read, *reader processes*
(rekkord/readers.py) read them instead of the file pool: their per-file
system calls no longer take the GIL from the main thread, which is what
bounds a save of many small files.  Memory is bounded by a cap on bytes in
flight and on pending entries.

Write ordering (what makes an interrupted save harmless, docs/integrity.md):
every blob is written atomically and never replaced; the snapshot record is
written last, after every blob it references is stored.  A save killed at any
point leaves only unreferenced blobs, which the next save finds and reuses.
"""

from __future__ import annotations

import collections
import fnmatch
import os
import stat as statmod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from . import format as fmt
from . import readers, readworker
from .cache import Cache
from .errors import IntegrityError, ObjectExists, RekkordError, StorageError, StoragePermissionDenied, UsageError
from .index import (
    F_CHANGED,
    F_LINKED,
    F_PROBLEMS,
    F_PARTIAL,
    F_UNREADABLE,
    K_DIR,
    K_FILE,
    K_HARDLINK,
    K_SYMLINK,
    Entry,
    Extent,
    kind_from_mode,
)
from .chunker import INDEX_PARAMS, Chunker, RecordCutter
from .format_v2 import VARIANTS
from .repository import Repository, default_host, user_name

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
READ_BLOCK = 1024 * 1024


#: small files a save reads on threads before it starts its reader processes.
#: Measured on 2 cores (2026-12-03, alternating, first saves): from 2000
#: instead of 20 000, files-100k 3.65 s against 3.85-3.87, the source tree
#: (34k small files) 2.76-2.83 against 3.05-3.18, the system tree (18.7k)
#: 4.16-4.22 against 4.30-4.41; a reader process is ~9 MiB.  Below this many
#: the process would not pay for its start.
READER_PROCESSES_AFTER = 2_000


@dataclass
class SaveOptions:
    excludes: list[str] = field(default_factory=list)
    iexcludes: list[str] = field(default_factory=list)  # matched ignoring case (restic's --iexclude)
    exclude_caches: bool = False
    #: restic's --exclude-if-present: ``FILE`` or ``FILE:HEADER``; a directory
    #: holding FILE (starting with HEADER) keeps only FILE.
    exclude_if_present: list[str] = field(default_factory=list)
    exclude_larger_than: int | None = None  # regular files larger than this many bytes are skipped
    one_file_system: bool = False
    host: str | None = None
    tags: list[str] = field(default_factory=list)
    threads: int | None = None
    #: processes that read small files (rekkord/readers.py), started once a
    #: save has more than READER_PROCESSES_AFTER of them to read; None: one per
    #: core but the main thread's (none on one core), 0: read them on threads.
    reader_processes: int | None = None
    xattrs: bool = True
    atime: bool = False  # off by default: reading files changes it, churning the index


@dataclass
class SaveStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    files_unchanged: int = 0
    bytes_total: int = 0  # size of all regular files in the snapshot
    bytes_read: int = 0  # bytes actually read (not served by the stat cache)
    bytes_new: int = 0  # plaintext bytes of new blobs
    bytes_stored: int = 0  # stored bytes of new blobs
    blobs_new: int = 0
    blobs_known: int = 0
    blobs_repaired: int = 0  # found missing or damaged (repair hint, crash) and uploaded again
    blobs_proven: int = 0  # format v2: found under their name, read back and proven (another save stored them)
    parity_groups: int = 0  # parity groups written over the new data blobs (repositories with parity)
    parity_bytes: int = 0
    warnings: int = 0
    duration: float = 0.0


@dataclass
class SaveResult:
    snapshot_id: str
    channel: str
    stats: SaveStats
    warnings: list[tuple[str, str]]

    def to_json(self) -> dict:
        return {"id": self.snapshot_id, "channel": self.channel, **asdict(self.stats),
                "problems": [{"path": p, "message": m} for p, m in self.warnings]}


class Excluder:
    """restic-like patterns: a pattern without '/' matches a name anywhere; one
    with '/' matches the absolute path (``*`` does not cross '/', ``**`` does).
    ``ipatterns`` match ignoring case (restic's --iexclude: pattern and name
    are both lower-cased)."""

    def __init__(self, patterns: list[str], ipatterns: list[str] = ()):
        self.name_patterns = []
        self.path_patterns = []
        self.iname_patterns = []
        self.ipath_patterns = []
        for ps, names, paths, fold in ((patterns, self.name_patterns, self.path_patterns, False),
                                       (ipatterns, self.iname_patterns, self.ipath_patterns, True)):
            for p in ps:
                p = p.strip()
                if not p or p.startswith("#"):
                    continue
                if fold:
                    p = p.lower()
                if "/" in p.rstrip("/"):
                    paths.append(_glob_regex(p.rstrip("/")))
                else:
                    names.append(p.rstrip("/"))

    def excluded(self, path: bytes, name: bytes) -> bool:
        if self.name_patterns:
            n = os.fsdecode(name)
            if any(fnmatch.fnmatchcase(n, p) for p in self.name_patterns):
                return True
        if self.path_patterns:
            s = os.fsdecode(path)
            if any(r.fullmatch(s) for r in self.path_patterns):
                return True
        if self.iname_patterns:
            n = os.fsdecode(name).lower()
            if any(fnmatch.fnmatchcase(n, p) for p in self.iname_patterns):
                return True
        if self.ipath_patterns:
            s = os.fsdecode(path).lower()
            return any(r.fullmatch(s) for r in self.ipath_patterns)
        return False


def parse_tag_file_spec(spec: str) -> tuple[bytes, bytes]:
    """``FILE[:HEADER]`` of --exclude-if-present -> (name, header)."""
    name, _, header = spec.partition(":")
    if not name or "/" in name:
        raise UsageError(f"--exclude-if-present {spec!r}: give a file name (FILE or FILE:HEADER)")
    return os.fsencode(name), os.fsencode(header)


def _glob_regex(pattern: str):
    import re

    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def count_tree(paths: list[str], options: SaveOptions | None = None, stop=None) -> int:
    """The bytes of the regular files a save of ``paths`` would visit --
    excludes, --exclude-larger-than and --one-file-system applied, tag files
    not -- for the progress display's estimate: one ``lstat`` per entry, no
    reading.  ``stop()`` true ends the count early (returns 0)."""
    opts = options or SaveOptions()
    ex = Excluder(opts.excludes, opts.iexcludes)
    limit = opts.exclude_larger_than
    total = 0
    for p in paths:
        root = os.path.abspath(os.fsencode(p))
        try:
            st = os.lstat(root)
        except OSError:
            continue
        dev = st.st_dev
        stack = [(root, st)]
        while stack:
            if stop is not None and stop():
                return 0
            path, st = stack.pop()
            if statmod.S_ISREG(st.st_mode):
                if limit is None or st.st_size <= limit:
                    total += st.st_size
                continue
            if not statmod.S_ISDIR(st.st_mode) or (opts.one_file_system and st.st_dev != dev):
                continue
            try:
                with os.scandir(path) as it:
                    for de in it:
                        if ex.excluded(de.path, de.name):
                            continue
                        try:
                            stack.append((de.path, de.stat(follow_symlinks=False)))
                        except OSError:
                            continue
            except OSError:
                continue
    return total


def read_exclude_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [line.rstrip("\n") for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError as e:
        raise UsageError(f"cannot read exclude file {path}: {e.strerror}") from None


class Stored(tuple):
    """What storing a blob gave: ``(ref, stored size)``, and ``.key``: what an
    index extent holds beside the ref (format v2 data blobs: the plaintext id)."""

    def __new__(cls, pair, key: bytes = b"", copies: list | None = None):
        self = super().__new__(cls, pair)
        self.key = key
        self.copies = copies or []  # index blobs, reference lists: the other copies, [(ref, size)]
        return self


def copy_pid(pid: bytes, k: int) -> bytes:
    """What a writer's cache knows copy ``k`` (>= 1) of an index blob or
    reference list by (copy 0: the plaintext id itself)."""
    from . import crypto

    return crypto.keyed_hash(pid, b"rekkord v2 copy\0", bytes([k]))


class _Extents:
    """The extents of one file's chunks, collected as their stores complete.

    Keeping a Future per chunk until the end of the file grew a 16 GiB
    file's save by ~30 MiB; finished ones leave the queue as it goes."""

    def __init__(self):
        self.pending: collections.deque[tuple[Future, int]] = collections.deque()
        self.done: list[Extent] = []

    def add(self, fut: Future, n: int) -> None:
        self.pending.append((fut, n))
        while self.pending and self.pending[0][0].done():
            self._take()

    def result(self) -> list[Extent]:
        """Waits for the stores still running; raises the first failure."""
        while self.pending:
            self._take()
        return self.done

    def _take(self) -> None:
        fut, n = self.pending.popleft()
        r = fut.result()
        self.done.append(Extent(r[0], 0, n, r.key))


class _ByteBudget:
    """Bounds the bytes in flight between pipeline stages."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def acquire(self, n: int):
        with self.cond:
            while self.used > 0 and self.used + n > self.limit:
                self.cond.wait()
            self.used += n

    def release(self, n: int):
        with self.cond:
            self.used -= n
            self.cond.notify_all()


class _Pack:
    __slots__ = ("future",)

    def __init__(self):
        self.future: Future | None = None


class _Item:
    """An entry on its way to the index, in walk order."""

    __slots__ = ("entry", "abspath", "st", "job", "job_index", "small", "pack", "pack_off", "ready_extents",
                 "cacheable", "record")

    def __init__(self, entry: Entry, abspath: bytes, st):
        self.entry = entry
        self.abspath = abspath
        self.st = st
        self.job: Future | None = None  # batch read (small files) or whole-file store (large)
        self.job_index = 0  # this file's place in its batch
        self.small = False
        self.pack: _Pack | None = None
        self.pack_off = 0
        self.ready_extents = None
        self.cacheable = False
        self.record: bytes | None = None  # an unchanged file's cached index record


class Saver:
    def __init__(self, repo: Repository, cache: Cache, options: SaveOptions | None = None,
                 progress=None, warn=None):
        repo.key.require("save", "save snapshots")
        self.repo = repo
        self.cache = cache
        self.opts = options or SaveOptions()
        self.progress = progress
        self.warn_cb = warn
        self.stats = SaveStats()
        self.warnings: list[tuple[str, str]] = []
        self.codec = repo.codec
        self.ix = repo.index  # the format's index record layout
        cache.set_extent_size(self.ix.extent_size)
        self.squatted: list[str] = []  # names an invalid object occupied (format v2)
        self.chunker: Chunker = repo.chunker()
        self.small_limit = repo.chunker_params.min_size
        self.cutter = repo.pack_cutter()
        self._reader = readworker.BatchReader(self.small_limit * 4, self.cutter.key, self.cutter.mask, self.opts.xattrs)
        self.excluder = Excluder(self.opts.excludes, self.opts.iexcludes)
        self.tag_files = [parse_tag_file_spec(t) for t in self.opts.exclude_if_present]
        cores = os.cpu_count() or 2
        self.threads = self.opts.threads or max(2, cores)
        store_threads = max(self.threads, min(repo.storage.connections, 32))
        self.file_pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rekkord-read")
        procs = self.opts.reader_processes
        # (one core is the main thread's: on 2 cores one reader saved as fast as two, in 20-30 MiB less)
        self._procs_wanted = (cores - 1 if cores > 1 else 0) if procs is None else procs
        self._procs = None  # the reader processes, once started (False: they could not be)
        self._small_read = 0  # small files handed to readers so far
        self.store_pool = ThreadPoolExecutor(store_threads, thread_name_prefix="rekkord-store")
        # Bytes handed to the store pool and not yet stored: enough to keep every
        # thread busy, small enough that memory stays flat whatever the data size.
        # (16 MiB held a first save of the nightly data set at 106 MiB of RSS
        # against 69-74 with 8 MiB and a 4 MiB read-ahead below, no slower;
        # S3's 16 connections still get two chunks each.)
        self.budget = _ByteBudget(max(8 << 20, store_threads * 2 * repo.chunker_params.avg_size))
        self.stats_lock = threading.Lock()
        self.names: dict[int, bytes] = {}
        self.groups: dict[int, bytes] = {}
        self.hardlinks: dict[tuple[int, int], _Item] = {}
        self.failed: BaseException | None = None
        self.refs = bytearray()  # every blob id the snapshot references, 32 bytes each (for gc.SaveSession)
        # Bytes of small files submitted for reading but not yet packed
        # (main thread only): bounds the read-ahead.
        self.small_pending = 0
        self.small_pending_limit = 4 << 20
        self._small_batch: list[_Item] = []  # small files not yet handed to a read task
        self._small_batch_bytes = 0
        self._last_read: tuple = (None, None)  # the last read batch's Future and its answers
        self._cache_has_files = True  # set at the start of a save
        # A cached index record is reused as is only when this save would
        # encode the same: with the default xattrs and atime options (the
        # record keeps what the save that made it read).  Otherwise a cached
        # file still gives its extents, and its record is encoded anew.
        self._reuse_records = self.opts.xattrs and not self.opts.atime
        self._stream = None  # (name, binary stream, mode) when saving one stream (save_stream)
        self._copy = None  # (source repository, snapshot) when copying one (copy_snapshot)
        # Blobs not to trust without reading them back: named by a repair hint
        # from check, or written by a save that died before its flush
        # (docs/integrity.md).  Filled by _prepare_cache.
        self.suspects: set[bytes] = set()
        # Of those, the ones a repair hint names: uploaded again whatever the
        # object under their name holds (its MAC may be valid and its content
        # spoiled: any key holder can make such an object, docs/integrity.md).
        self.hinted: set[bytes] = set()
        self.repaired: set[bytes] = set()  # hinted blobs this save uploaded again
        self._hints: dict[str, list[bytes]] = {}
        self._last_progress = 0.0
        # Parity groups over the data blobs this save stores (rekkord/parity.py).
        self.parity = None
        from .parity import ratio_of

        ratio = ratio_of(repo.config) if self.codec.convergent else None
        if ratio:
            from .parity import GroupBuilder

            self.parity = GroupBuilder(repo.storage, ratio, repo.limits[fmt.T_DATA], on_written=self._parity_written,
                                       on_error=lambda m: self.warn(b"(parity)", m))

    # ---- warnings / progress ---------------------------------------------------

    def warn(self, path: bytes, message: str):
        p = os.fsdecode(path)
        with self.stats_lock:
            self.warnings.append((p, message))
            self.stats.warnings += 1
        if self.warn_cb:
            self.warn_cb(p, message)

    def _tick(self, force=False):
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress > 0.2:
            self._last_progress = now
            self.progress(self.stats)

    # ---- blob store (store pool) ---------------------------------------------

    def store_blob(self, btype: int, data) -> "Stored":
        if self.codec.convergent:
            if btype != fmt.T_DATA and self.repo.copies > 1:
                return self._store_copies(btype, data)
            return self._store_v2(btype, data)
        return Stored(self._store_v1(btype, data))

    def _store_v2(self, btype: int, data) -> "Stored":
        """Format v2: a blob is named by the hash of its bytes, and a data
        blob's bytes follow from its plaintext.  Reuse only what this cache
        uploaded or proved; an object found under the name is proven by
        reading it back: if it hashes to its name it holds exactly these
        bytes (so the word of another writer is never taken).  An invalid
        object under the name is replaced where the storage lets us, else the
        blob goes under another name variant (docs/format.md §12)."""
        codec = self.codec
        pid = codec.plain_id(btype, data)
        key = pid if btype == fmt.T_DATA else b""
        hit = self.cache.plain_lookup(pid)
        if hit is not None and hit[0] not in self.suspects:
            with self.stats_lock:
                self.stats.blobs_known += 1
            return Stored(hit, key)
        inner = codec._inner(data)
        storage = self.repo.storage
        new = replaced = False
        variants = list(range(VARIANTS)) + [None] if btype == fmt.T_DATA else [None] * 3
        for variant in variants:
            ref, raw = codec.seal_for_store(btype, data, pid, variant, inner=inner)
            name = fmt.blob_name(ref)
            try:
                storage.write(name, raw, exclusive=True)
                new = True
                break
            except ObjectExists:
                pass
            if self._proven(name, ref):
                break  # another save stored these very bytes: nothing to upload
            # Something that is not these bytes squats the name (damaged, or
            # planted by someone who can compute names): replace it if the
            # storage lets us (an old snapshot using the name heals), else
            # use the next variant.
            if ref not in self.hinted:  # (a check already named a hinted one)
                with self.stats_lock:
                    self.squatted.append(name)
                self.warn(name.encode(), "an invalid object occupies this name (damaged, or planted by someone "
                          "who can compute names); this save's copy goes elsewhere and a check names the object")
            try:
                storage.write(name, raw, exclusive=False)
                new = replaced = True
                break
            except StorageError:
                continue
        else:
            raise StorageError(f"cannot store blob {pid.hex()[:16]}: every name it may take is occupied by an "
                               "invalid object")
        size = len(raw)
        if new and (replaced or ref in self.hinted):
            with self.stats_lock:
                self.stats.blobs_repaired += 1
                self.repaired.add(ref)
        if new:
            self.cache.add_pending(ref)
            if self.parity is not None and btype == fmt.T_DATA:
                self.parity.add(ref, raw)
        self.cache.add_blob(ref, size)
        self.cache.add_plain(pid, ref, size)
        self._count_stored(new, len(data), size, proven=not new)
        return Stored((ref, size), key)

    def _store_copies(self, btype: int, data) -> "Stored":
        """Format v2 index blobs and reference lists, stored as copies under
        independent names (docs/format.md §13.8): reused only together, as
        this cache stored them; else sealed together again."""
        codec = self.codec
        n = self.repo.copies
        pid = codec.plain_id(btype, data)
        pids = [pid] + [copy_pid(pid, k) for k in range(1, n)]
        hits = [self.cache.plain_lookup(p) for p in pids]
        if all(h is not None and h[0] not in self.suspects for h in hits):
            with self.stats_lock:
                self.stats.blobs_known += n
            return Stored(hits[0], b"", [tuple(h) for h in hits[1:]])
        inner = codec._inner(data)
        storage = self.repo.storage
        for _attempt in range(3):
            sealed = codec.seal_copies(btype, data, n, inner=inner)
            written = []
            try:
                for ref, raw in sealed:
                    storage.write(fmt.blob_name(ref), raw, exclusive=True)
                    written.append((ref, len(raw)))
            except ObjectExists:  # (a random nonce met an existing name: seal them all again)
                continue
            break
        else:
            raise StorageError(f"cannot store {fmt.TYPE_NAMES[btype]} blob {pid.hex()[:16]}: its names are taken")
        for p, (ref, size) in zip(pids, written):
            self.cache.add_pending(ref)
            self.cache.add_blob(ref, size)
            self.cache.add_plain(p, ref, size)
        with self.stats_lock:
            self.stats.blobs_new += n
            self.stats.bytes_new += len(data)
            self.stats.bytes_stored += sum(s for _, s in written)
        return Stored(written[0], b"", written[1:])

    def _parity_written(self, name: str, size: int) -> None:
        with self.stats_lock:
            self.stats.parity_groups += 1
            self.stats.parity_bytes += size

    def _proven(self, name: str, ref: bytes) -> bool:
        """Whether the object under ``name`` hashes to it (read back)."""
        try:
            raw = self.repo.read_raw(name)
        except (StorageError, IntegrityError):
            return False
        return self.codec.verify(ref, raw) is None

    def _store_v1(self, btype: int, data) -> tuple[bytes, int]:
        blob_id = self.codec.blob_id(btype, data)
        hinted = blob_id in self.hinted
        # Reference lists decide what prune keeps, and any key holding psk can
        # make one: never trust one by its name (the cache knows names from a
        # listing) -- write it, and verify what a name already holds.
        size = None if hinted or btype == fmt.T_REFLIST else self.cache.blob_size(blob_id)
        if size is not None:
            with self.stats_lock:
                self.stats.blobs_known += 1
            return blob_id, size
        name = fmt.blob_name(blob_id)
        suspect = blob_id in self.suspects
        if suspect and not hinted:
            size = self._intact_size(name, blob_id)
            if size is not None:  # present and intact after all: nothing to upload
                self.cache.add_blob(blob_id, size)
                with self.stats_lock:
                    self.stats.blobs_known += 1
                return blob_id, size
        raw = self.codec.seal(btype, blob_id, data)
        try:
            self.repo.storage.write(name, raw, exclusive=not hinted)
            size = len(raw)
            new = True
        except ObjectExists:
            size = self.repo.storage.stat(name)
            new = False
            # Same content, same level: same stored size.  A different size
            # means a damaged object (e.g. left empty by a crash); verify it.
            # A reference list is read back and compared whatever its size.
            if suspect or (btype == fmt.T_REFLIST and not self._same_reflist(name, blob_id, data)) or (
                    size != len(raw) and self._intact_size(name, blob_id) is None):
                # Missing, damaged or not ours in storage (verified above): replace it.
                self.repo.storage.write(name, raw, exclusive=False)
                size = len(raw)
                new = True
                with self.stats_lock:
                    self.stats.blobs_repaired += 1
        except StoragePermissionDenied as e:
            if not hinted:
                raise
            raise StoragePermissionDenied(
                f"blob {blob_id.hex()} is named by a repair hint (found missing or damaged by a check) and "
                f"cannot be uploaded again here ({e}); a check with a key and credentials that may delete "
                "quarantines the bad object, after which this save can replace it") from None
        if hinted:
            with self.stats_lock:
                self.stats.blobs_repaired += 1
                self.repaired.add(blob_id)
        if new:
            self.cache.add_pending(blob_id)
        self.cache.add_blob(blob_id, size)
        self._count_stored(new, len(data), size)
        return blob_id, size

    def _count_stored(self, new: bool, length: int, size: int, *, proven: bool = False) -> None:
        """A blob stored (``new``) or found, in the save's statistics;
        ``proven``: found under its name and proven (format v2)."""
        with self.stats_lock:
            if new:
                self.stats.blobs_new += 1
                self.stats.bytes_new += length
                self.stats.bytes_stored += size
            else:
                self.stats.blobs_known += 1
                self.stats.blobs_proven += proven

    def _same_reflist(self, name: str, blob_id: bytes, data) -> bool:  # (format v1)
        """Whether the reference list stored under ``name`` holds ``data``
        (a write key can open reference lists: they are sealed with psk)."""
        try:
            return self.repo.read_blob(blob_id, fmt.T_REFLIST) == bytes(data)
        except (IntegrityError, StorageError):
            return False

    def _intact_size(self, name: str, blob_id: bytes) -> int | None:
        """The stored size if the object exists with a valid MAC, else None."""
        try:
            raw = self.repo.read_raw(name)
        except (StorageError, IntegrityError):
            return None
        return None if self.codec.verify(blob_id, raw) else len(raw)

    def submit_store(self, btype: int, data: bytes) -> Future:
        if self.failed is not None:
            # A store already failed for good (e.g. the server is gone): stop
            # reading and chunking instead of queueing the rest of the data.
            raise self.failed
        n = len(data)
        self.budget.acquire(n)
        fut = self.store_pool.submit(self.store_blob, btype, data)
        fut.add_done_callback(lambda f: self._stored(f, n))
        return fut

    def _stored(self, fut: Future, n: int) -> None:
        self.budget.release(n)
        if not fut.cancelled() and fut.exception() is not None and self.failed is None:
            self.failed = fut.exception()

    # ---- file reading (file pool) ----------------------------------------------

    def read_small_batch(self, files: list[tuple[bytes, int, int, int, int]]) -> list[tuple]:
        """Read a run of small files on a read thread (one task: no per-file
        thread hand-off), their xattrs too; the same work a reader process
        does (rekkord/readers.py)."""
        return self._reader.read(files)

    def large_job(self, path: bytes, st) -> tuple[list[Extent], int, str | None, int, list]:
        return (*self.save_large(path, st), self._xattrs(path))

    def save_large(self, path: bytes, st) -> tuple[list[Extent], int, str | None, int]:
        try:
            fd = readworker.open_nofollow(path)
        except OSError as e:
            return [], F_UNREADABLE, f"cannot open: {e.strerror}", 0
        extents = _Extents()
        flags = 0
        msg = None
        total = 0
        try:
            f = os.fdopen(fd, "rb", buffering=0, closefd=False)
            try:
                for chunk in self.chunker.cut_file(f, st.st_size):
                    total += len(chunk)
                    extents.add(self.submit_store(fmt.T_DATA, chunk), len(chunk))
                    with self.stats_lock:
                        self.stats.bytes_read += len(chunk)
            except OSError as e:
                flags |= F_PARTIAL
                msg = f"read error after {total} bytes: {e.strerror}"
            after = os.fstat(fd)
            if readworker.changed(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, after) or total != st.st_size:
                flags |= F_CHANGED
                msg = msg or "file changed while it was being read"
        finally:
            os.close(fd)
        return extents.result(), flags, msg, total

    # ---- walking (main thread) -------------------------------------------------

    def _owner(self, uid: int, gid: int) -> tuple[bytes, bytes]:
        u = self.names.get(uid)
        if u is None:
            try:
                import pwd

                u = pwd.getpwuid(uid).pw_name.encode()[:255]
            except (KeyError, ImportError):
                u = b""
            self.names[uid] = u
        g = self.groups.get(gid)
        if g is None:
            try:
                import grp

                g = grp.getgrgid(gid).gr_name.encode()[:255]
            except (KeyError, ImportError):
                g = b""
            self.groups[gid] = g
        return u, g

    def _xattrs(self, target: bytes | int) -> list[tuple[bytes, bytes]]:
        """Extended attributes of a path (not following symlinks) or an open fd."""
        return readworker.xattrs_of(target) if self.opts.xattrs else []

    def _entry(self, rel: bytes, abspath: bytes, st, *, xattrs: bool = True) -> Entry:
        u, g = self._owner(st.st_uid, st.st_gid)
        return Entry(
            kind=kind_from_mode(st.st_mode), path=rel, mode=statmod.S_IMODE(st.st_mode),
            uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns, atime_ns=st.st_atime_ns if self.opts.atime else 0,
            size=st.st_size if statmod.S_ISREG(st.st_mode) else 0,
            rdev=st.st_rdev if (statmod.S_ISCHR(st.st_mode) or statmod.S_ISBLK(st.st_mode)) else 0,
            user=u, group=g, xattrs=self._xattrs(abspath) if xattrs else [],
        )

    def _walk(self, roots: list[bytes]):
        """Yield (abspath, relpath, stat) depth-first, parents before children,
        names in byte order.  Parents of the saved paths are yielded too."""
        emitted: set[bytes] = set()
        for root in roots:
            comps = [c for c in root.split(b"/") if c]
            for i in range(1, len(comps)):
                rel = b"/".join(comps[:i])
                if rel in emitted:
                    continue
                emitted.add(rel)
                try:
                    yield b"/" + rel, rel, os.lstat(b"/" + rel), False
                except OSError as e:
                    self.warn(b"/" + rel, f"cannot stat: {e.strerror}")
            try:
                st = os.lstat(root)
            except OSError as e:
                self.warn(root, f"cannot stat: {e.strerror}")
                continue
            if self._too_large(st) or (comps and self.excluder.excluded(root, comps[-1])):
                continue  # restic's rule: excludes apply to the saved paths themselves too
            rel = b"/".join(comps)
            yield from self._walk_tree(root, rel, st, st.st_dev)

    def _walk_tree(self, abspath: bytes, rel: bytes, st, root_dev: int):
        stack = [(abspath, rel, st)]
        while stack:
            abspath, rel, st = stack.pop()
            if not statmod.S_ISDIR(st.st_mode):
                yield abspath, rel, st, False
                continue
            descend = not (self.opts.one_file_system and st.st_dev != root_dev)
            yield abspath, rel, st, descend
            if not descend:
                continue
            try:
                names = sorted(os.listdir(abspath))
            except OSError as e:
                self.warn(abspath, f"cannot list directory: {e.strerror}")
                continue
            if self.opts.exclude_caches and b"CACHEDIR.TAG" in names:
                try:
                    with open(abspath + b"/CACHEDIR.TAG", "rb") as f:
                        if f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE:
                            names = [b"CACHEDIR.TAG"]
                except OSError:
                    pass
            for tag, header in self.tag_files:
                if tag in names and self._tagged(abspath + b"/" + tag if abspath != b"/" else b"/" + tag, header):
                    names = [tag]
                    break
            children = []
            for name in names:
                child = abspath + b"/" + name if abspath != b"/" else b"/" + name
                crel = rel + b"/" + name if rel else name
                if self.excluder.excluded(child, name):
                    continue
                try:
                    cst = os.lstat(child)
                except FileNotFoundError:
                    continue  # vanished between listing and stat
                except OSError as e:
                    self.warn(child, f"cannot stat: {e.strerror}")
                    continue
                if self._too_large(cst):
                    continue
                children.append((child, crel, cst))
            stack.extend(reversed(children))

    def _too_large(self, st) -> bool:
        limit = self.opts.exclude_larger_than
        return limit is not None and statmod.S_ISREG(st.st_mode) and st.st_size > limit

    def _tagged(self, tagpath: bytes, header: bytes) -> bool:
        """Whether the tag file (of --exclude-if-present) excludes its
        directory: it exists and, with a header, starts with it (restic's
        rule; a tag file that cannot be read or has another header gives a
        warning and excludes nothing)."""
        try:
            os.lstat(tagpath)
        except FileNotFoundError:
            return False
        except OSError as e:
            self.warn(tagpath, f"cannot access the exclusion tag file: {e.strerror}")
            return False
        if not header:
            return True
        try:
            with open(tagpath, "rb") as f:
                head = f.read(len(header))
        except OSError as e:
            self.warn(tagpath, f"cannot read the exclusion tag file: {e.strerror}")
            return False
        if head != header:
            self.warn(tagpath, "exclusion tag file does not start with the expected header; not excluding")
            return False
        return True

    # ---- the pipeline -----------------------------------------------------------

    def save(self, channel: str, paths: list[str], *, time_ns: int | None = None) -> SaveResult:
        # The save announces itself to prune for as long as it runs, from before
        # it reads the generation until its record is written (rekkord/gc.py).
        from .gc import SaveSession

        with SaveSession(self.repo) as session:
            self._closed_at_start = session.closed_at_start
            result = self._save(channel, paths, time_ns=time_ns)
            session.after_record(result.snapshot_id, self.refs, self.cache)
        return result

    def _save(self, channel: str, paths: list[str], *, time_ns: int | None = None) -> SaveResult:
        if not channel or "/" in channel:
            raise UsageError(f"invalid channel name {channel!r}")
        roots = []
        for p in paths:
            ap = os.path.abspath(os.fsencode(p))
            if not os.path.lexists(ap):
                raise UsageError(f"path {p} does not exist")
            roots.append(os.path.normpath(ap))
        roots = sorted(set(roots))
        # Drop paths inside other saved paths.
        roots = [r for r in roots if not any(r != o and r.startswith(o.rstrip(b"/") + b"/") for o in roots)]
        if b"/" in roots:
            roots = [b"/"]
        started = time.monotonic()
        time_ns = time_ns or time.time_ns()
        self._prepare_cache()
        self._cache_has_files = self.cache.has_files()  # a first save skips every lookup
        self.cache.open_session()  # closed once the record is durable (rekkord/cache.py)
        self.cache.commit()
        self.cache.begin()
        self.repo.storage.defer_sync()
        try:
            if self._copy is not None:
                index_ids, reflist_ids = self._run_copy()
            elif self._stream is not None:
                index_ids, reflist_ids = self._run_stream(time_ns)
            else:
                index_ids, reflist_ids = self._run(roots)
        except BaseException:
            self._shutdown(cancel=True)
            if self.parity is not None:
                self.parity.close()
            try:
                self.repo.storage.flush()  # what was written is then durable: no need to re-verify it
                self.cache.close_session()
            except RekkordError:
                self.cache.leave_session()  # not durable: the next save re-verifies what it wrote
            self.cache.commit()
            raise
        self._shutdown()
        if self.parity is not None:
            try:
                self.parity.finish()  # the last group, before the flush that precedes the record
            except BaseException:
                self.parity.close()
                raise
        self.refs += b"".join(i for i, _ in index_ids + reflist_ids)
        copied = self.repo.copies > 1 and all(getattr(x, "copies", None) for x in index_ids + reflist_ids)
        if copied:
            self.refs += b"".join(c for x in index_ids + reflist_ids for c, _ in x.copies)
        self.stats.duration = round(time.monotonic() - started, 3)
        private = {"paths": [os.fsdecode(r) for r in roots]}
        if self._stream is not None:
            private["stdin"] = os.fsdecode(self._stream[0])
        if self._copy is not None:
            private = self._copy_private
        import json

        pbody = json.dumps(private).encode()
        pid, sealed = self.codec.seal_for_store(fmt.T_INDEX, pbody)
        record = {
            "channel": channel,
            "time_ns": time_ns,
            "host": self.opts.host or default_host(),
            "user": user_name(),
            "tags": list(self.opts.tags),
            "linked_flag": True,  # first hard links carry F_LINKED (restore needs no per-file memory)
            "index": [[i.hex(), s] for i, s in index_ids],
            "reflist": [[i.hex(), s] for i, s in reflist_ids],
            "stats": asdict(self.stats),
            "private": {"id": pid.hex(), "sealed": bytes(sealed).hex()},
        }
        if copied:
            record["copies"] = {"index": [[x.copies[0][0].hex(), x.copies[0][1]] for x in index_ids],
                                "reflist": [[x.copies[0][0].hex(), x.copies[0][1]] for x in reflist_ids]}
        if self._copy is not None:
            record.update(self._copy_fields)
        # Every blob must be durable before the record that references them.
        self.repo.storage.flush()
        self.cache.clear_pending()
        sid = self.repo.write_snapshot(record)
        self.repo.storage.flush()  # the record too, before we say it is saved
        self._note_repaired()
        self.cache.set_meta("last_snapshot", sid)
        self.cache.close_session()
        self.cache.commit()
        self._tick(force=True)
        return SaveResult(sid, channel, self.stats, self.warnings)

    def copy_snapshot(self, source: Repository, snap) -> SaveResult:
        """Copy ``snap`` of the ``source`` repository (opened with a key that
        reads) into this one: every blob it uses is read, verified and stored
        again under this repository's keys (deduplicated like a save: blobs
        this repository has are not uploaded), its index rewritten, and a
        record written with the source's channel, host, user, time and tags
        (``copy_of`` names the original).  Entries the source's index holds
        but no save writes are refused; files whose data is damaged are left
        out and named."""
        source.key.require("read", "read the snapshots to copy")
        rec = snap.record
        self._copy = (source, snap)
        self._copy_private = source.private(snap)
        self._copy_fields = {"host": snap.host, "user": rec.get("user", ""), "tags": list(snap.tags),
                             "copy_of": f"{source.id}:{snap.id}"}
        return self.save(snap.channel, [], time_ns=snap.time_ns)

    def _run_copy(self):
        from .snapshot import BlobFetcher, iter_entries

        source, snap = self._copy
        ix = self.ix
        index_cutter = RecordCutter(Chunker(INDEX_PARAMS, self.chunker.seed))
        index_futs: list[Future] = []
        reflist = _ReflistBuilder(self)
        fetcher = BlobFetcher(source, max(4, min(source.storage.connections, 16)))
        mapping: collections.OrderedDict[bytes, Future] = collections.OrderedDict()  # source blob -> its store
        fetching: collections.deque[tuple[bytes, Future]] = collections.deque()
        waiting: set[bytes] = set()
        pending: collections.deque[Entry] = collections.deque()
        lost: set[bytes] = set()  # source blobs that could not be read (their files are left out)

        def store_next():
            ref, fut = fetching.popleft()
            waiting.discard(ref)
            try:
                data = fut.result()
            except (IntegrityError, StorageError) as e:
                lost.add(ref)
                self.warn(b"(source blob " + ref.hex().encode() + b")", f"cannot be copied: {e}")
                return
            mapping[ref] = self.submit_store(fmt.T_DATA, data)
            if len(mapping) > 100_000:
                mapping.popitem(last=False)

        def emit(e: Entry):
            if any(x.blob in lost for x in e.extents):
                self.warn(b"/" + e.path, "DAMAGED in the source snapshot: not copied")
                return
            e.extents = [Extent(mapping[x.blob].result()[0], x.offset, x.length, mapping[x.blob].result().key)
                         for x in e.extents]
            for ch in index_cutter.feed(ix.encode(e)):
                index_futs.append(self.submit_store(fmt.T_INDEX, ch))
            for x in e.extents:
                reflist.add(x.blob)
            if e.kind == K_DIR:
                self.stats.dirs += 1
            elif e.kind in (K_FILE, K_HARDLINK):
                self.stats.files += 1
                self.stats.bytes_total += e.size
            else:
                self.stats.others += 1
            self._tick()

        def ready(e: Entry) -> bool:
            return all(x.blob in mapping or x.blob in lost for x in e.extents)

        try:
            for e in iter_entries(source, snap, on_refused=lambda p, why: self.warn(b"/" + p, f"REFUSED: {why}"),
                                  on_copy=lambda m: self.warn(b"(source snapshot " + snap.id[:8].encode() + b")", m)):
                for x in e.extents:
                    if x.blob not in mapping and x.blob not in waiting and x.blob not in lost:
                        waiting.add(x.blob)
                        fetching.append((x.blob, fetcher.get(x.blob, x.key)))
                        with self.stats_lock:
                            self.stats.bytes_read += x.length
                pending.append(e)
                while len(fetching) > 16:
                    store_next()
                while pending and ready(pending[0]):
                    emit(pending.popleft())
                if self.failed is not None:
                    raise self.failed
            while fetching:
                store_next()
            while pending:
                e = pending.popleft()
                for x in e.extents:  # (evicted from the mapping while it waited: store it again)
                    if x.blob not in mapping and x.blob not in lost:
                        fetching.append((x.blob, fetcher.get(x.blob, x.key)))
                        store_next()
                emit(e)
        finally:
            fetcher.close()
        for ch in index_cutter.finish():
            index_futs.append(self.submit_store(fmt.T_INDEX, ch))
        reflist.finish()
        index_ids = [f.result() for f in index_futs] or [self.store_blob(fmt.T_INDEX, b"")]
        return index_ids, [f.result() for f in reflist.futures]

    def save_stream(self, channel: str, name: str, stream, *, mode: int = 0o600,
                    time_ns: int | None = None) -> SaveResult:
        """Save the binary ``stream`` (anything with ``readinto``, e.g. a
        pipe from pg_dump) as one file ``name`` at the snapshot root, cut by
        the same chunker as files.  Reading stops at EOF; an exception raised
        by the stream aborts the save before the snapshot record is written."""
        n = os.fsencode(name)
        if not n or b"/" in n or n in (b".", b".."):
            raise UsageError(f"invalid name {name!r} for the saved stream (a plain file name)")
        self._stream = (n, stream, mode)
        return self.save(channel, [], time_ns=time_ns)

    def _run_stream(self, time_ns: int):
        name, stream, mode = self._stream
        extents = _Extents()
        total = 0
        for chunk in self.chunker.cut_stream(stream):
            extents.add(self.submit_store(fmt.T_DATA, chunk), len(chunk))
            total += len(chunk)
            with self.stats_lock:
                self.stats.bytes_read += len(chunk)
                self.stats.bytes_total = total
            self._tick()
        uid, gid = os.getuid(), os.getgid()
        u, g = self._owner(uid, gid)
        e = Entry(kind=K_FILE, path=name, mode=mode, uid=uid, gid=gid, mtime_ns=time_ns, size=total, user=u,
                  group=g, extents=extents.result())
        self.stats.files = 1
        cutter = RecordCutter(Chunker(INDEX_PARAMS, self.chunker.seed))
        index_ids = [self.store_blob(fmt.T_INDEX, ch) for ch in cutter.feed(self.ix.encode(e)) + cutter.finish()]
        reflist = _ReflistBuilder(self)
        for x in e.extents:
            reflist.add(x.blob)
        reflist.finish()
        return index_ids, [f.result() for f in reflist.futures]

    def _prepare_cache(self):
        gen = self.repo.generation()
        self.cache.bind_generation(gen)
        v2 = self.codec.convergent
        # A collection closed since the blobs were listed moved some of them
        # to fossils: list again (the generation says so too, unless someone
        # with storage access removed the newest generation).
        closed = getattr(self, "_closed_at_start", set())
        seen = set(filter(None, (self.cache.get_meta("collections_seen") or "").split(",")))
        if self.cache.get_meta("generation") != str(gen) or self.cache.get_meta("listed") != "1" \
                or not closed <= seen:
            self.cache.begin()
            # (Format v2: the listing says only what exists; what this cache
            # may reuse is what it proved, kept in its "plain" table.)
            self.cache.reset_blobs()
            batch = []
            least = 1 if v2 else fmt.BLOB_OVERHEAD  # (an empty object is damaged)
            for name, size in self.repo.storage.list("blobs/"):
                bid = fmt.blob_id_from_name(name)
                if bid is not None and size >= least:
                    batch.append((bid, size))
                    if len(batch) >= 10000:
                        self.cache.add_blobs(batch)
                        batch = []
            self.cache.add_blobs(batch)
            self.cache.set_meta("generation", gen)
            self.cache.set_meta("listed", "1")
            self.cache.set_meta("collections_seen", ",".join(sorted(closed)))
            self.cache.commit()
            relisted = True
        else:
            relisted = False
        # Crash recovery and healing (docs/integrity.md).  Blobs written by a
        # save that died before its flush may be lost or empty (power loss),
        # and blobs a check found missing or damaged must be uploaded again:
        # forget them (and the cached files using them) and verify each one
        # by reading it back before trusting it.
        dead = self.cache.dead_sessions()  # saves that died on this cache: {session: their pending blobs}
        suspects = {b for ids in dead.values() for b in ids}
        if dead and not relisted:
            # The dead save may have stored blobs its cache never recorded.
            known = self.cache.blob_size
            for name, _size in self.repo.storage.list("blobs/"):
                bid = fmt.blob_id_from_name(name)
                if bid is not None and known(bid) is None:
                    suspects.add(bid)
        # A repair hint stays in force until a check finds what it names
        # intact (and deletes it): every save that produces one of its blobs
        # uploads it again, once per cache (then its own upload is what the
        # object holds).  A save that does not hold the data cannot repair
        # it, and must not stop the next save, of another channel, from doing so.
        hints = self.repo.repairs()
        repaired = self._repaired_by_cache()
        self._hints = hints
        hinted = set()
        for name, ids in hints.items():
            done = repaired.get(name, set())
            hinted.update(i for i in ids if i not in done)
        suspects |= hinted
        if suspects:
            self.cache.forget_blobs(suspects, self.ix.extent_size)
        self.cache.reap_sessions(dead)
        self.suspects = suspects
        self.hinted = hinted

    def _repaired_by_cache(self) -> dict[str, set[bytes]]:
        import json

        try:
            d = json.loads(self.cache.get_meta("repairs_uploaded") or "{}")
            return {k: {bytes.fromhex(i) for i in v} for k, v in d.items()}
        except (ValueError, TypeError, AttributeError):
            return {}

    def _note_repaired(self) -> None:
        """Remember, per hint, which of its blobs this cache uploaded again
        (hints that are gone are forgotten)."""
        import json

        if not self._hints:
            self.cache.set_meta("repairs_uploaded", "{}")
            return
        before = self._repaired_by_cache()
        out = {}
        for name, ids in self._hints.items():
            got = before.get(name, set()) | (self.repaired & set(ids))
            if got:
                out[name] = sorted(i.hex() for i in got)
        self.cache.set_meta("repairs_uploaded", json.dumps(out))

    def _shutdown(self, cancel=False):
        self.file_pool.shutdown(wait=True, cancel_futures=cancel)
        if self._procs:
            self._procs.shutdown()
            self._procs = False
        self.store_pool.shutdown(wait=True, cancel_futures=cancel)

    def _run(self, roots: list[bytes]):
        stage1: collections.deque[_Item] = collections.deque()
        stage2: collections.deque[_Item] = collections.deque()
        index_cutter = RecordCutter(Chunker(INDEX_PARAMS, self.chunker.seed))
        index_futs: list[Future] = []
        reflist_futs: list[Future] = []
        reflist = _ReflistBuilder(self)
        pack = {"buf": bytearray(), "files": 0, "members": [], "obj": _Pack()}
        seen = int(time.time())

        def flush_pack():
            if not pack["members"]:
                return
            obj = pack["obj"]
            obj.future = self.submit_store(fmt.T_DATA, bytes(pack["buf"]))
            pack["buf"] = bytearray()
            pack["files"] = 0
            pack["members"] = []
            pack["obj"] = _Pack()

        def to_stage2(item: _Item):
            e = item.entry
            if item.small and item.job is None:  # would silently save an empty file
                raise AssertionError(f"internal error: {os.fsdecode(item.abspath)} was never read")
            if item.job is not None:
                if item.small:
                    data, flags, msg, e.xattrs, cut_mark, nread = self._read_result(item)
                    self.small_pending -= item.st.st_size
                    with self.stats_lock:
                        self.stats.bytes_read += nread
                    e.flags |= flags
                    if msg:
                        self.warn(item.abspath, msg)
                    if data:
                        e.size = len(data) if flags else e.size
                        off = len(pack["buf"])
                        pack["buf"] += data
                        pack["files"] += 1
                        pack["members"].append(item)
                        item.pack = pack["obj"]
                        item.pack_off = off
                        item.ready_extents = [Extent(b"", off, len(data))]
                        if self.cutter.should_cut_marked(len(pack["buf"]), pack["files"], cut_mark):
                            flush_pack()
                    else:
                        item.ready_extents = []
                else:
                    extents, flags, msg, total, e.xattrs = item.job.result()
                    e.flags |= flags
                    if msg:
                        self.warn(item.abspath, msg)
                    if flags:
                        e.size = total
                    item.ready_extents = extents
                item.cacheable = e.flags & F_PROBLEMS == 0
            stage2.append(item)

        def emit(item: _Item):
            if item.record is not None:  # unchanged file: its cached record, as is
                for ch in index_cutter.feed(item.record):
                    index_futs.append(self.submit_store(fmt.T_INDEX, ch))
                ext = item.ready_extents
                for o in range(0, len(ext), self.ix.extent_size):
                    reflist.add(ext[o:o + 32])
                return
            e = item.entry
            if item.pack is not None:
                r = item.pack.future.result()
                e.extents = [Extent(r[0], item.pack_off, x.length, r.key) for x in item.ready_extents]
            elif item.ready_extents is not None:
                e.extents = item.ready_extents
            if e.kind == K_HARDLINK and not e.extents:
                first = self.hardlinks.get((item.st.st_dev, item.st.st_ino))
                if first is not None:
                    e.extents = first.entry.extents
                    e.xattrs = first.entry.xattrs
            extents = self.ix.encode_extents(e.extents)
            record = self.ix.encode(e, extents)
            for ch in index_cutter.feed(record):
                index_futs.append(self.submit_store(fmt.T_INDEX, ch))
            for x in e.extents:
                reflist.add(x.blob)
            if item.cacheable and e.kind == K_FILE:
                self.cache.store_file(item.abspath, item.st, extents, seen,
                                      record if item.st.st_nlink == 1 else None)
            elif item.cacheable and e.kind == K_DIR:
                self.cache.store_file(item.abspath, item.st, b"", seen, record)

        # The last read batch and pack seen finished: the 64 files of a batch
        # and the members of a pack ask their Future (and its lock) once.
        done = [None, None]

        def drain(block: bool):
            if block or (stage1 and stage1[0].small and stage1[0].job is None):
                self._flush_small_batch()
            while stage1:
                head = stage1[0]
                if head.small and head.job is None:  # still in the unsubmitted read batch
                    if not block:
                        break
                    self._flush_small_batch()
                job = head.job
                if job is not None and job is not done[0]:
                    if not block and not job.done():
                        break
                    done[0] = job
                to_stage2(stage1.popleft())
            # A pending pack must be closed before its members can be emitted
            # when we are draining everything.
            if block and not stage1:
                flush_pack()
            while stage2:
                head = stage2[0]
                if head.pack is not None and head.pack is not done[1]:
                    fut = head.pack.future
                    if fut is None or (not block and not fut.done()):
                        break
                    done[1] = head.pack
                emit(stage2.popleft())
            self.cache.maybe_commit()
            self._tick()

        for abspath, rel, st, _descend in self._walk(roots):
            item = self._classify(abspath, rel, st)
            if item is None:
                continue
            stage1.append(item)
            if len(stage1) + len(stage2) > 4096 or self.small_pending > self.small_pending_limit:
                # Back-pressure: wait for the oldest work before walking further.
                self._flush_small_batch()
                if stage1 and stage1[0].job is not None:
                    stage1[0].job.result()
                drain(block=False)
                if len(stage2) > 4096:
                    flush_pack()
                    drain(block=True)
            else:
                drain(block=False)
        drain(block=True)
        self._last_read = (None, None)
        for ch in index_cutter.finish():
            index_futs.append(self.submit_store(fmt.T_INDEX, ch))
        reflist.finish()
        reflist_futs = reflist.futures
        index_ids = [f.result() for f in index_futs]
        reflist_ids = [f.result() for f in reflist_futs]
        if not index_ids:
            # An empty snapshot still has one (empty) index chunk.
            index_ids = [self.store_blob(fmt.T_INDEX, b"")]
        return index_ids, reflist_ids

    def _flush_small_batch(self) -> None:
        items = self._small_batch
        if not items:
            return
        self._small_batch = []
        self._small_batch_bytes = 0
        files = [readworker.request(it.abspath, it.st) for it in items]
        self._small_read += len(files)
        fut = self._submit_read(files)
        for i, it in enumerate(items):
            it.job = fut
            it.job_index = i

    def _reader_processes(self):
        """The reader processes, started once this save has read enough
        small files for them to pay (a nightly save with a few changed files
        never starts them); None: read on threads."""
        if self._procs is None and self._procs_wanted and self._small_read > READER_PROCESSES_AFTER:
            self._procs = False
            try:
                self._procs = readers.ReaderPool(self._procs_wanted, self._reader)
            except (OSError, readers.ReaderDied) as e:
                self.warn(b"(save)", f"cannot start reader processes ({e}); reading on threads")
        return self._procs or None

    def _submit_read(self, files: list) -> Future:
        procs = self._reader_processes()
        if procs is not None:
            try:
                return procs.submit(files)
            except readers.ReaderDied:
                self._reader_died()
        return self.file_pool.submit(self.read_small_batch, files)

    def _reader_died(self) -> None:
        if self._procs:
            self.warn(b"(save)", "a reader process ended; reading on threads")
            self._procs.shutdown()
            self._procs = False

    def _read_result(self, item: "_Item") -> tuple:
        """What the reader said of a small file; read here again if its
        reader process died (killed by the OOM killer, say)."""
        job = item.job
        try:
            if job is not self._last_read[0]:
                self._last_read = (job, job.result())
            return self._last_read[1][item.job_index]
        except readers.ReaderDied:
            self._reader_died()
            return self._reader.read([readworker.request(item.abspath, item.st)])[0]

    def _classify(self, abspath: bytes, rel: bytes, st) -> _Item | None:
        hit = None
        is_reg = statmod.S_ISREG(st.st_mode)
        is_dir = not is_reg and statmod.S_ISDIR(st.st_mode)
        if (is_reg or is_dir) and self._cache_has_files:
            hit = self.cache.lookup_record(abspath, st)
            if hit is not None and hit[1] is not None and self._reuse_records and (is_dir or st.st_nlink == 1):
                # The common case of a nightly save: an unchanged file or
                # directory costs this stat and one cache lookup, nothing else
                # (no xattrs, no encoding).
                item = _Item(None, abspath, st)
                item.ready_extents, item.record = hit
                if is_dir:
                    self.stats.dirs += 1
                    return item
                self.stats.files += 1
                self.stats.files_unchanged += 1
                self.stats.bytes_total += st.st_size
                return item
        try:
            # A regular file's xattrs are read by the task that reads it.
            e = self._entry(rel, abspath, st, xattrs=not is_reg)
        except ValueError:
            self.warn(abspath, "unknown file type; skipped")
            return None
        item = _Item(e, abspath, st)
        if e.kind == K_DIR:
            self.stats.dirs += 1
            item.cacheable = True
        elif e.kind == K_SYMLINK:
            self.stats.others += 1
            try:
                e.target = os.readlink(abspath)
            except OSError as err:
                self.warn(abspath, f"cannot read link: {err.strerror}")
        elif e.kind == K_FILE:
            self.stats.files += 1
            self.stats.bytes_total += st.st_size
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                first = self.hardlinks.get(key)
                if first is not None:
                    e.kind = K_HARDLINK
                    e.target = first.entry.path
                    # Content (and xattrs: same inode) come from the first link
                    # once it is emitted.
                    return item
                self.hardlinks[key] = item
                e.flags |= F_LINKED
            cached = hit[0] if hit is not None else None
            if cached is not None:
                e.xattrs = self._xattrs(abspath)
                e.extents = self.ix.decode_extents(cached)
                item.ready_extents = e.extents
                self.stats.files_unchanged += 1
                # Stored again, with its index record, so that next time the
                # lookup_record fast path above serves it.
                item.cacheable = st.st_nlink == 1
            elif st.st_size == 0:
                e.xattrs = self._xattrs(abspath)
                item.ready_extents = []
                # Still open it: an unreadable empty file should be reported.
                if not os.access(abspath, os.R_OK):
                    e.flags |= F_UNREADABLE
                    self.warn(abspath, "cannot open: Permission denied")
            elif st.st_size < self.small_limit:
                item.small = True
                self.small_pending += st.st_size
                self._small_batch.append(item)
                self._small_batch_bytes += st.st_size
                if len(self._small_batch) >= 64 or self._small_batch_bytes >= 1 << 20:
                    self._flush_small_batch()
            else:
                item.job = self.file_pool.submit(self.large_job, abspath, st)
        else:
            self.stats.others += 1
        return item


class _ReflistBuilder:
    """The snapshot's reference list: every blob id the index points at, in
    first-use order, cut at content-defined record boundaries."""

    MIN = 1024
    MAX = 65536

    def __init__(self, saver: Saver):
        self.saver = saver
        self.records: list[bytes] = []
        self.futures: list[Future] = []
        self.last: bytes | None = None

    def add(self, blob_id: bytes):
        if blob_id == self.last:
            return
        self.last = blob_id
        self.records.append(blob_id)
        n = len(self.records)
        if n >= self.MAX or (n >= self.MIN and blob_id[0] == 0 and blob_id[1] < 32):
            self._cut()

    def _cut(self):
        if not self.records:
            return
        # Sizes come from the cache, filled by the store jobs that created or
        # found each blob (they have all completed: the index waited for them).
        recs = []
        for bid in self.records:
            size = self.saver.cache.blob_size(bid)
            if size is None:
                size = self.saver.repo.storage.stat(fmt.blob_name(bid))
                if size is None:
                    raise StorageError(f"blob {bid.hex()} vanished from the repository during the save")
            recs.append((bid, size))
        self.records = []
        self.saver.refs += b"".join(b for b, _ in recs)
        self.futures.append(self.saver.submit_store(fmt.T_REFLIST, fmt.pack_reflist(recs)))

    def finish(self):
        self._cut()

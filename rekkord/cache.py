"""The local cache: an optimisation only, never a source of truth.

One SQLite file per repository (and key role) in the user cache directory:

* ``blobs``: blob ids known to exist in the repository, with stored sizes;
* ``files``: the stat cache, path -> (dev, inode, size, mtime, ctime) and the
  extents of its content, so an unchanged file costs one ``stat``;
* ``verified``: when ``check --read-data-subset`` last verified a blob;
* ``sessions`` and ``session_pending``: the saves running on this cache and
  the blobs each wrote but has not yet made durable (storage ``flush``); a
  save that finds a session whose process is gone knows it died before its
  flush and re-verifies those blobs (docs/integrity.md);
* ``snapshots_seen``: snapshot records ``check`` has seen (first seen, gone
  since), to notice records that vanish, reappear or arrive backdated;
* ``plain`` (format v2): plaintext id -> the name (and size) of the object
  this writer uploaded or proved for it: what it may reuse without proving
  again (``blobs`` says only what exists);
* ``meta``: the garbage-collection generation the rest was built under.

Deleting the file is always safe: the next save lists the repository's blobs
again and re-reads files.

**Many processes, one cache.**  Any number of saves, checks (and whatever
else opens it) may use one cache at once (docs/architecture.md, "The local
cache").  The file is in WAL mode, so readers never wait; every read is its
own short read transaction (no snapshot held open: the WAL can always be
checkpointed).  Writes are buffered in memory -- reads see them at once --
and written in short ``BEGIN IMMEDIATE`` transactions (never a deferred one
that would have to upgrade to a write lock, which SQLite refuses at once
with "database is locked" when another process wrote meanwhile): when the
buffer grows, every few seconds of a save (in a background thread, off the
save's path), and at ``commit``.  A transaction that cannot get the write
lock within the busy timeout leaves its rows in the buffer for the next
try; a cache that fails otherwise (deleted ``-shm``, corrupted, unreadable,
a full disk) is replaced for the rest of the process by a throw-away one in
memory, with a warning.  No SQLite error ever escapes.

Rows a save learned under one garbage-collection generation are written
only while the file's generation is still that one: once another process
re-listed the repository for a newer generation, they could name blobs a
prune has since moved away.  The save keeps them for itself (the fossil
protocol covers its own snapshot) and writes no more of them.

Directory and files are private to their owner: the directory is made (or
made again) 0700 and the database created 0600 before SQLite opens it, so
its ``-wal`` and ``-shm`` files get the same mode, whatever the umask.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (id BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plain (pid BLOB PRIMARY KEY, ref BLOB NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime INTEGER, ctime INTEGER, extents BLOB NOT NULL, seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verified (id BLOB PRIMARY KEY, time INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, started REAL NOT NULL, pid INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS session_pending (session TEXT NOT NULL, id BLOB NOT NULL, PRIMARY KEY (session, id))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots_seen (
    id TEXT PRIMARY KEY, first_seen REAL NOT NULL, gone_since REAL, not_before REAL NOT NULL
) WITHOUT ROWID;
"""
# (``pending`` and the meta key ``save_open``: caches written before sessions;
# read as one dead session.)

#: Seconds a write transaction waits for another process's write lock.
BUSY_TIMEOUT = 30.0
#: Seconds one read transaction serves a save's lookups at most.
READ_SPAN = 0.5
#: Buffered rows that start a background write.
FLUSH_ROWS = 5000
#: Buffered rows at which whoever adds one more waits for the background
#: write to finish (unless the file was locked by others), so that at most
#: twice this many are held: a first save of 100k small files outran the
#: writer to 50k rows (~40 MiB) without it.
WAIT_ROWS = 2 * FLUSH_ROWS
#: Buffered rows kept while the file stays locked; past this, known blobs and
#: cached files are dropped (the save then asks the storage, reads the files).
MAX_BUFFERED = 500_000
EXTENT = 40  # bytes per encoded extent of format v1 (32-byte ref first; v2: 72, see Cache.extent_size)
LEGACY_SESSION = "(before sessions)"

_FILE_COLS = "path, dev, ino, size, mtime, ctime, extents, seen, record"
_LOOKUP_FILE = "SELECT dev, ino, size, mtime, ctime, extents, record FROM files WHERE path=?"
#: Files' rows go in this many to a statement: SQLite's step releases
#: Python's GIL and takes it back, once a statement, so one row a step cost
#: the save's main thread a hand-off of the GIL per file.
_FILE_ROWS_PER_INSERT = 128
_INSERT_FILE = f"INSERT OR REPLACE INTO files ({_FILE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_FILES = f"INSERT OR REPLACE INTO files ({_FILE_COLS}) VALUES " + \
    ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * _FILE_ROWS_PER_INSERT)
_SCAN_FILES = "SELECT path, dev, ino, size, mtime, ctime, extents, record FROM files WHERE path >= ? ORDER BY path"
#: Rows a scan of the files table steps over before it seeks instead
#: (Cache._scan_file: files deleted since, a subtree the walk skips).
SCAN_SKIP = 32


def _busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


class _Buffer:
    """Writes not yet in the file, in the order they must be applied: a
    reset, then forgotten blobs, then rows."""

    __slots__ = ("reset", "forget", "meta", "blobs", "pending", "files", "verified", "plain", "step")

    def __init__(self):
        self.reset = False  # delete every known blob and cached file first
        self.forget: set[bytes] = set()  # blobs to delete, with the cached files using them
        self.meta: dict[str, str] = {}
        self.blobs: dict[bytes, int] = {}
        self.pending: set[bytes] = set()
        self.files: dict[bytes, tuple] = {}
        self.verified: dict[bytes, int] = {}
        self.plain: dict[bytes, tuple[bytes, int]] = {}  # pid -> (ref, size), format v2
        self.step = EXTENT  # the encoded extent size of the files' rows

    def rows(self) -> int:
        return len(self.forget) + len(self.meta) + len(self.blobs) + len(self.pending) + len(self.files) + \
            len(self.verified) + len(self.plain) + self.reset

    def then(self, newer: _Buffer) -> _Buffer:
        """This buffer followed by ``newer`` (a failed write goes back in
        front of what was buffered since)."""
        if newer.reset:  # known blobs and cached files go; the rest stays
            newer.forget |= self.forget
            newer.meta = {**self.meta, **newer.meta}
            newer.pending |= self.pending
            newer.verified = {**self.verified, **newer.verified}
            newer.plain = {k: v for k, v in {**self.plain, **newer.plain}.items() if v[0] not in newer.forget}
            return newer
        self.forget |= newer.forget
        for b in newer.forget:
            self.blobs.pop(b, None)
            self.verified.pop(b, None)
        if newer.forget:
            _drop_files_using(self.files, newer.forget, self.step)
            for k in [k for k, v in self.plain.items() if v[0] in newer.forget]:
                del self.plain[k]
        self.plain.update(newer.plain)
        self.meta.update(newer.meta)
        self.blobs.update(newer.blobs)
        self.pending |= newer.pending
        self.files.update(newer.files)
        self.verified.update(newer.verified)
        return self


def _insert_files(db: sqlite3.Connection, rows: list[tuple]) -> None:
    n = _FILE_ROWS_PER_INSERT
    whole = len(rows) - len(rows) % n
    if whole:
        db.executemany(_INSERT_FILES, (tuple(itertools.chain.from_iterable(rows[i:i + n]))
                                       for i in range(0, whole, n)))
    if whole < len(rows):
        db.executemany(_INSERT_FILE, rows[whole:])


def _uses_any(extents: bytes, ids: set[bytes], step: int = EXTENT) -> bool:
    return any(extents[o:o + 32] in ids for o in range(0, len(extents), step))


def _drop_files_using(files: dict[bytes, tuple], ids: set[bytes], step: int = EXTENT) -> None:
    for path in [p for p, row in files.items() if _uses_any(row[6], ids, step)]:
        del files[path]


def _private_dir(d: str) -> None:
    """Make ``d`` (and its parents), and make it 0700 when it is ours."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 != 0o700:
        os.chmod(d, 0o700)


def _private_file(path: str) -> None:
    """Create ``path`` 0600 (SQLite gives its -wal and -shm files the mode of
    the database), and make existing files of ours 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in (path + "-wal", path + "-shm"):
        try:
            st = os.lstat(extra)
        except FileNotFoundError:
            continue
        if st.st_uid == os.geteuid() and st.st_mode & 0o777 != 0o600 and not os.path.islink(extra):
            os.chmod(extra, 0o600)


class Cache:
    def __init__(self, path: str | None, *, warn: Callable[[str], None] | None = None,
                 busy_timeout: float = BUSY_TIMEOUT):
        """``path=None`` gives a throw-away in-memory cache.  ``warn`` is
        called with a message when the cache cannot be used and this process
        goes on without it."""
        self.path = path
        self.warn = warn
        self.busy_timeout = busy_timeout
        self.lock = threading.RLock()  # the buffers
        self._wlock = threading.RLock()  # the write connection; orders the writes
        self._rlock = threading.RLock()  # the read connection
        self.extent_size = EXTENT  # the format's encoded extent (72 in format v2): set_extent_size
        self._buf = _Buffer()
        self._inflight: list[_Buffer] = []  # being written (still visible to reads)
        self._generation: str | None = None  # the GC generation this process's rows were learned under
        self._stale = False  # the file moved to another generation: keep our rows to ourselves
        self._own_blobs: dict[bytes, int] = {}  # (then here)
        self._own_plain: dict[bytes, tuple[bytes, int]] = {}
        self._db_stale = False  # a reset is buffered: the file's blobs and files are not to be read
        self._session: tuple[str, int] | None = None  # (id, locked fd) of this process's save
        self._bg = None  # background writer
        self._bg_fut = None
        self._locked_out = False  # the last write found the file locked by others
        self._last_commit = time.monotonic()
        self._dropped = False
        self.degraded: str | None = None  # why the file is not used (None: it is)
        self._rtx = False  # a read transaction is open on the read connection (since _rtx_since)
        self._rtx_since = 0.0
        self._wrote = False  # this process committed since that read transaction began
        #: the files-table scan of _scan_file: [cursor, its current row, last path asked], in the read transaction
        self._scan: list | None = None
        self.wdb = self.db = None
        self._memory = path is None  # the cache is in memory (throw-away, or after a failure)
        if path is None:
            self._use_memory()
        else:
            try:
                self._open_file(path)
            except (OSError, sqlite3.Error) as e:
                self._degrade(f"cannot open {path}: {e}")

    # ---- connections ------------------------------------------------------------

    def _connect(self, target: str) -> sqlite3.Connection:
        db = sqlite3.connect(target, timeout=self.busy_timeout, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _open_file(self, path: str) -> None:
        _private_dir(os.path.dirname(path) or ".")
        _private_file(path)
        w = self._connect(path)
        try:
            # (A file system without shared memory keeps its journal mode:
            # still correct, readers then wait for writers.)
            w.execute("PRAGMA journal_mode=WAL")
            w.execute("BEGIN IMMEDIATE")
            try:
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        w.execute(stmt)
                cols = [r[1] for r in w.execute("PRAGMA table_info(files)")]
                if "record" not in cols:  # caches made before the index record was cached
                    w.execute("ALTER TABLE files ADD COLUMN record BLOB")
                w.execute("COMMIT")
            except BaseException:
                w.execute("ROLLBACK")
                raise
            r = self._connect(path)
        except BaseException:
            w.close()
            raise
        self.wdb, self.db = w, r
        _private_file(path)  # -wal and -shm exist now

    def _use_memory(self) -> None:
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=MEMORY")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                db.execute(stmt)
        db.execute("ALTER TABLE files ADD COLUMN record BLOB")
        if self._generation is not None:
            # what this process learned stays usable for the rest of its run
            db.execute("INSERT INTO meta VALUES ('generation', ?)", (self._generation,))
        self.wdb = self.db = db

    def _degrade(self, why: str) -> None:
        """Go on with a throw-away cache in memory (once)."""
        with self._wlock, self._rlock:
            if self._memory:
                return
            old = (self.wdb, self.db)
            self._scan = None
            self._rtx = False
            self.degraded = why
            self._memory = True
            self._db_stale = False
            self._use_memory()
            for c in set(filter(None, old)):
                try:
                    c.close()
                except sqlite3.Error:
                    pass
        if self.warn is not None:
            self.warn(f"cache {self.path}: {why}; going on without it (slower, still correct)")

    def _read_one(self, sql: str, args=()) -> tuple | None:
        """The first row of a point query; None when there is none, or when
        the file is busy (read it as "not known").

        The hot lookups of a save (a file's stat-cache row, a blob's size)
        share one read transaction for up to :data:`READ_SPAN` seconds (one
        read transaction per lookup would cost more than the lookup): never longer, so the
        WAL can always be checkpointed, and never past a write of this
        process (which would otherwise be invisible to it).  The read
        connection never writes, so it never needs a write lock."""
        with self._rlock:
            db = self.db
            try:
                if db is not self.wdb:  # (in memory: one connection, no sharing)
                    self._read_tx()
                return db.execute(sql, args).fetchone()
            except sqlite3.Error:
                self._end_read()
        rows = self._read(sql, args)
        return rows[0] if rows else None

    def _read_tx(self) -> None:
        """Begin, or renew, the shared read transaction of :meth:`_read_one`
        (caller holds _rlock; the read connection is not the writing one)."""
        now = time.monotonic()
        if self._rtx and (self._wrote or now - self._rtx_since > READ_SPAN):
            self._close_scan()
            self.db.execute("COMMIT")
            self._rtx = False
        if not self._rtx:
            self._wrote = False
            self.db.execute("BEGIN")
            self._rtx, self._rtx_since = True, now

    def _scan_file(self, path: bytes) -> tuple | None:
        """``_LOOKUP_FILE`` for ``path``, for lookups that come in ascending
        path order (a save's walk): one forward scan of the files table in
        the shared read transaction instead of a point query per file (a
        step of a cursor costs a fraction of a query).  A path that comes
        before the last one asked, or far after the scan's row, seeks
        again; a path the scan has stepped past is not in the table."""
        with self._rlock:
            db = self.db
            if db is self.wdb:
                return self._read_one(_LOOKUP_FILE, (path,))
            try:
                self._read_tx()
                sc = self._scan
                if sc is None or path < sc[2]:
                    sc = self._seek(path)
                else:
                    skipped = 0
                    while sc[1] is not None and sc[1][0] < path:
                        skipped += 1
                        if skipped > SCAN_SKIP:
                            sc = self._seek(path)
                            break
                        sc[1] = sc[0].fetchone()
                    sc[2] = path
                row = sc[1]
                return row[1:] if row is not None and row[0] == path else None
            except (sqlite3.Error, TypeError):  # (TypeError: a path that is not bytes, in a damaged file)
                self._end_read()
        rows = self._read(_LOOKUP_FILE, (path,))
        return rows[0] if rows else None

    def _seek(self, path: bytes) -> list:
        """A new scan of the files table from ``path`` (caller holds _rlock)."""
        self._close_scan()
        cur = self.db.execute(_SCAN_FILES, (path,))
        self._scan = [cur, cur.fetchone(), path]
        return self._scan

    def _close_scan(self) -> None:
        if self._scan is not None:
            try:
                self._scan[0].close()
            except sqlite3.Error:
                pass
            self._scan = None

    def _end_read(self) -> None:
        """End the read transaction of the point lookups (caller holds _rlock)."""
        self._close_scan()
        if self._rtx:
            self._rtx = False
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _read(self, sql: str, args=()) -> list | None:
        """Rows of one query (its own read transaction); None when the file
        is busy beyond the timeout (read it as "not known")."""
        for _ in range(2):
            with self._rlock:
                self._end_read()
                db = self.db
                try:
                    return db.execute(sql, args).fetchall()
                except sqlite3.Error as e:
                    if _busy(e):
                        return None
                    err = e
            self._degrade(f"{type(err).__name__}: {err}")
        return None

    def _transaction(self, fn: Callable[[sqlite3.Connection], None]) -> bool:
        """Run ``fn`` in one immediate write transaction (caller holds
        ``_wlock``).  False when the file stayed locked (nothing written)."""
        for _ in range(2):
            db = self.wdb
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    fn(db)
                    db.execute("COMMIT")
                    self._wrote = True  # (before the rows leave the buffers: the next lookup sees them)
                except BaseException:
                    try:
                        db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    raise
                return True
            except sqlite3.Error as e:
                if _busy(e):
                    return False
                self._degrade(f"{type(e).__name__}: {e}")
        return False

    # ---- buffered writes ---------------------------------------------------------------

    def _buffers(self) -> list[_Buffer]:
        """Newest first (caller holds the lock)."""
        return [self._buf, *reversed(self._inflight)]

    def _flush(self) -> bool:
        """Write what is buffered; False when the file stayed locked (the rows
        wait in the buffer for the next try)."""
        with self._wlock:
            with self.lock:
                buf = self._buf
                if not buf.rows():
                    return True
                self._buf = self._new_buffer()
                self._inflight.append(buf)
            ok = False
            try:
                ok = self._transaction(lambda db: self._apply(db, buf))
            finally:
                with self.lock:
                    self._inflight.remove(buf)
                    self._locked_out = not ok
                    if ok:
                        if buf.reset:
                            self._db_stale = False
                    else:
                        self._buf = buf.then(self._buf)
                        if self._buf.rows() > MAX_BUFFERED:
                            self._drop_buffered()
            self._last_commit = time.monotonic()
            return ok

    def _drop_buffered(self) -> None:
        """The file stays locked and the buffer is full: keep only what keeps
        others correct (pending blobs, forgotten ones), drop the rest."""
        b = self._buf
        for bid, size in b.blobs.items():
            if len(self._own_blobs) < MAX_BUFFERED:
                self._own_blobs[bid] = size
        b.blobs.clear()
        b.files.clear()
        b.verified.clear()
        if not self._dropped and self.warn is not None:
            self._dropped = True
            self.warn(f"cache {self.path}: locked by other processes for long; this run caches less")

    def _new_buffer(self) -> _Buffer:
        b = _Buffer()
        b.step = self.extent_size
        return b

    def _apply(self, db: sqlite3.Connection, buf: _Buffer) -> None:
        if buf.reset:  # (its meta says listed=0 and our generation)
            db.execute("DELETE FROM blobs")
            db.execute("DELETE FROM files")
        if buf.forget:
            ids = [(i,) for i in buf.forget]
            db.executemany("DELETE FROM blobs WHERE id=?", ids)
            db.executemany("DELETE FROM verified WHERE id=?", ids)
            db.executemany("DELETE FROM plain WHERE ref=?", ids)
            doomed = [(p,) for p, ext in db.execute("SELECT path, extents FROM files")  # (streamed)
                      if _uses_any(ext, buf.forget, buf.step)]
            db.executemany("DELETE FROM files WHERE path=?", doomed)
        if (buf.blobs or buf.files) and self._generation is not None and not self._stale:
            row = db.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
            current = buf.meta.get("generation", row[0] if row else None)
            if current != self._generation:
                self._stale = True  # another process re-listed for another generation
        blobs, files, plain = buf.blobs, buf.files, buf.plain
        if self._stale:
            with self.lock:
                self._own_blobs.update(blobs)
                self._own_plain.update(plain)
            blobs, files, plain = {}, {}, {}
        if buf.meta:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(buf.meta.items()))
        if blobs:
            db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?)", list(blobs.items()))
        if plain:
            db.executemany("INSERT OR REPLACE INTO plain VALUES (?, ?, ?)", [(k, r, n) for k, (r, n) in plain.items()])
        if buf.pending and self._session is not None:
            sid = self._session[0]
            db.executemany("INSERT OR IGNORE INTO session_pending VALUES (?, ?)", [(sid, i) for i in buf.pending])
        if files:
            _insert_files(db, list(files.values()))
        if buf.verified:
            db.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?)", list(buf.verified.items()))

    def _grown(self) -> bool:
        """Start a background write once enough is buffered (caller holds
        the lock).  True: so much is buffered that the caller is to call
        :meth:`_hold_back` once it has let the lock go."""
        rows = self._buf.rows()
        if rows >= FLUSH_ROWS:
            self._flush_in_background()
        return rows >= WAIT_ROWS and not self._locked_out

    def _hold_back(self) -> None:
        """Wait for the background write, then start the next one: what is
        buffered stays bounded however fast rows come (not while the file
        is locked by others: each wait would cost the busy timeout)."""
        self._wait_background()
        with self.lock:
            self._grown()

    def _flush_in_background(self) -> None:
        with self.lock:
            if self._bg_fut is not None and not self._bg_fut.done():
                return
            if self._bg is None:
                from concurrent.futures import ThreadPoolExecutor

                self._bg = ThreadPoolExecutor(1, thread_name_prefix="rekkord-cache")
            self._bg_fut = self._bg.submit(self._flush)

    def _wait_background(self) -> None:
        fut = self._bg_fut
        if fut is not None:
            try:
                fut.result()
            except Exception as e:  # never expected: _flush handles SQLite's errors
                self._degrade(f"{type(e).__name__}: {e}")

    # ---- transactions (kept for callers: writes are buffered anyway) -------------

    def begin(self):
        """Nothing to do: writes are buffered until :meth:`commit`."""

    def commit(self) -> bool:
        """Write everything buffered now (waiting at most the busy timeout for
        other processes); False when the file stayed locked."""
        self._wait_background()
        return self._flush()

    def maybe_commit(self, every: float = 5.0):
        """Write in the background if the last write is ``every`` seconds old."""
        if time.monotonic() - self._last_commit > every:
            self._last_commit = time.monotonic()
            if every <= 0:
                self.commit()
            else:
                self._flush_in_background()

    def close(self):
        self._wait_background()
        if not self._flush() and self.warn is not None and self._buf.rows():
            self.warn(f"cache {self.path}: locked by other processes; what this run learned is not kept")
        self.leave_session()  # a save still open here did not end well: the next save re-verifies it
        if self._bg is not None:
            self._bg.shutdown()
        with self._wlock, self._rlock:
            self._close_scan()
            for c in {self.wdb, self.db}:
                try:
                    if c is not None:
                        c.close()
                except sqlite3.Error:
                    pass

    def abandon(self) -> None:
        """Stop as a crash would: nothing buffered is written, the session
        stays behind (for tests of crash recovery)."""
        self._wait_background()
        if self._bg is not None:
            self._bg.shutdown()
        with self._wlock, self._rlock:
            for c in {self.wdb, self.db}:
                try:
                    if c is not None:
                        c.close()
                except sqlite3.Error:
                    pass
        if self._session is not None:
            os.close(self._session[1])
            self._session = None

    # ---- meta -------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.lock:
            for b in self._buffers():
                if key in b.meta:
                    return b.meta[key]
        rows = self._read("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    def set_meta(self, key: str, value) -> None:
        with self.lock:
            self._buf.meta[key] = str(value)

    # ---- generation and sessions ------------------------------------------------------

    def bind_generation(self, generation) -> None:
        """The garbage-collection generation this process's knowledge is
        learned under (a save, before it looks at the cache)."""
        with self.lock:
            self._generation = str(generation)
            self._stale = False

    def open_session(self) -> None:
        """A save starts: blobs it adds as pending are its own, and a later
        process that finds this session with no process behind it (killed,
        power loss) takes them for unsafe."""
        if self.path is None or self._session is not None or self._memory:
            return
        sid = secrets.token_hex(8)
        d = self.path + ".sessions"
        try:
            _private_dir(d)
            fd = os.open(os.path.join(d, sid), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._degrade(f"cannot make a session lock in {d}: {e.strerror or e}")
            return
        self._session = (sid, fd)
        with self._wlock:
            ok = self._transaction(lambda db: db.execute("INSERT INTO sessions VALUES (?, ?, ?)",
                                                         (sid, time.time(), os.getpid())))
        if not ok:
            # Without its row, a crash of this save would go unnoticed: keep
            # nothing of this run in the file rather than that.
            self._release_session_lock(remove=True)
            self._degrade("locked by other processes for too long")

    def close_session(self) -> None:
        """The save ended (its record durable, or given up after a flush):
        its pending blobs are safe, the session goes."""
        if self._session is None:
            return
        sid = self._session[0]
        with self.lock:
            self._buf.pending.clear()
        self._flush()

        def fn(db):
            db.execute("DELETE FROM session_pending WHERE session=?", (sid,))
            db.execute("DELETE FROM sessions WHERE id=?", (sid,))

        with self._wlock:
            if self._memory:
                ok = True
            else:
                ok = self._transaction(fn)
        self._release_session_lock(remove=ok)

    def leave_session(self) -> None:
        """The save ends without its blobs known to be durable: its session
        stays in the file with no process behind it, so the next save takes
        its pending blobs for unsafe (as after a crash)."""
        if self._session is not None:
            self._flush()
            self._release_session_lock()

    def _release_session_lock(self, remove: bool = False) -> None:
        sid, fd = self._session
        self._session = None
        if remove:
            try:
                os.unlink(os.path.join(self.path + ".sessions", sid))
            except OSError:
                pass
        os.close(fd)

    def _alive(self, sid: str) -> bool:
        if self._session is not None and sid == self._session[0]:
            return True
        if not sid or not all(c in "0123456789abcdef" for c in sid):
            return False
        try:
            fd = os.open(os.path.join(self.path + ".sessions", sid), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False  # its lock is gone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        finally:
            os.close(fd)
        return False

    def dead_sessions(self) -> dict[str, list[bytes]]:
        """Saves that died on this cache (their process is gone) -> the blobs
        they wrote but had not made durable.  Hand them to
        :meth:`reap_sessions` once dealt with."""
        if self.path is None or self._memory:
            return {}
        sids = self._read("SELECT id FROM sessions UNION SELECT DISTINCT session FROM session_pending") or []
        dead = {}
        for (sid,) in sids:
            if not self._alive(sid):
                dead[sid] = [r[0] for r in self._read(
                    "SELECT id FROM session_pending WHERE session=?", (sid,)) or []]
        legacy = [r[0] for r in self._read("SELECT id FROM pending") or []]
        if legacy or self.get_meta("save_open") == "1":
            dead[LEGACY_SESSION] = legacy
        return dead

    def reap_sessions(self, dead: Iterable[str]) -> None:
        """Forget dead sessions (their blobs were made suspects)."""
        dead = list(dead)
        if not dead:
            return

        def fn(db):
            for sid in dead:
                if sid == LEGACY_SESSION:
                    db.execute("DELETE FROM pending")
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('save_open', '0')")
                else:
                    db.execute("DELETE FROM session_pending WHERE session=?", (sid,))
                    db.execute("DELETE FROM sessions WHERE id=?", (sid,))

        if not self._flush():
            return  # what was forgotten of them must be in the file first: they stay for the next save
        with self._wlock:
            ok = self._transaction(fn)
        if ok:
            for sid in dead:
                if sid != LEGACY_SESSION and all(c in "0123456789abcdef" for c in sid):
                    try:
                        os.unlink(os.path.join(self.path + ".sessions", sid))
                    except OSError:
                        pass

    # ---- known blobs ------------------------------------------------------------------

    def blob_size(self, blob_id: bytes) -> int | None:
        with self.lock:
            buf = self._buf
            size = buf.blobs.get(blob_id)
            if size is not None:
                return size
            simple = not (self._inflight or buf.forget or buf.reset or self._own_blobs or self._db_stale)
        if simple:
            row = self._read_one("SELECT size FROM blobs WHERE id=?", (blob_id,))
            return row[0] if row else None
        with self.lock:
            for b in self._buffers():
                size = b.blobs.get(blob_id)
                if size is not None:
                    return size
                if blob_id in b.forget:
                    return None
                if b.reset:
                    return self._own_blobs.get(blob_id)
            size = self._own_blobs.get(blob_id)
            if size is not None or self._db_stale:
                return size
        row = self._read_one("SELECT size FROM blobs WHERE id=?", (blob_id,))
        return row[0] if row else None

    def add_blob(self, blob_id: bytes, size: int) -> None:
        with self.lock:
            self._buf.blobs[blob_id] = size
            full = self._grown()
        if full:
            self._hold_back()

    def add_blobs(self, items) -> None:
        with self.lock:
            self._buf.blobs.update(items)
            full = self._grown()
        if full:
            self._hold_back()

    def set_extent_size(self, n: int) -> None:
        """The repository format's encoded extent (40 in v1, 72 in v2): how
        cached files' extents are read when a blob is forgotten."""
        with self.lock:
            self.extent_size = n
            self._buf.step = n

    def forget_blobs(self, ids, extent_size: int | None = None) -> None:
        """Forget blobs (found missing or damaged) and every cached file using
        them: at once for this process, in the file as soon as it can be
        written."""
        if extent_size is not None:
            self.set_extent_size(extent_size)
        ids = set(ids)
        if not ids:
            return
        with self.lock:
            # (buffers being written are left alone: the newest buffer's
            # forget hides their rows from reads, and is written after them)
            b = self._buf
            for i in ids:
                b.blobs.pop(i, None)
                b.verified.pop(i, None)
                self._own_blobs.pop(i, None)
            for k in [k for k, v in b.plain.items() if v[0] in ids]:
                del b.plain[k]
            for k in [k for k, v in self._own_plain.items() if v[0] in ids]:
                del self._own_plain[k]
            _drop_files_using(b.files, ids, b.step)
            b.forget |= ids
        self.commit()

    # ---- format v2: what this cache proved (plaintext id -> name) ------------------------

    def add_plain(self, pid: bytes, ref: bytes, size: int) -> None:
        with self.lock:
            self._buf.plain[pid] = (ref, size)
            full = self._grown()
        if full:
            self._hold_back()

    def plain_lookup(self, pid: bytes) -> tuple[bytes, int] | None:
        """(name, stored size) of the object this writer uploaded or proved
        for plaintext ``pid`` -- while that object is still known to exist
        (a garbage collection may have moved it: ``blobs`` was listed again)."""
        hit = None
        with self.lock:
            for b in self._buffers():
                v = b.plain.get(pid)
                if v is not None:
                    hit = v
                    break
            else:
                hit = self._own_plain.get(pid)
        if hit is None:
            row = self._read_one("SELECT ref, size FROM plain WHERE pid=?", (pid,))
            if row is None:
                return None
            hit = (row[0], row[1])
            with self.lock:
                if any(hit[0] in b.forget for b in self._buffers()):
                    return None
        return hit if self.blob_size(hit[0]) is not None else None

    def reset_blobs(self) -> None:
        """Forget every known blob and cached file (the repository is listed
        again under the generation given to :meth:`bind_generation`)."""
        with self.lock:
            reset = self._new_buffer()
            reset.reset = True
            reset.meta["listed"] = "0"
            if self._generation is not None:
                reset.meta["generation"] = self._generation
            self._buf = self._buf.then(reset)
            self._own_blobs.clear()
            self._stale = False
            self._db_stale = True
        self.commit()

    def blob_count(self) -> int:
        self.commit()
        rows = self._read("SELECT count(*) FROM blobs")
        return rows[0][0] if rows else 0

    # ---- stat cache -------------------------------------------------------------------

    def lookup_file(self, path: bytes, st: os.stat_result) -> bytes | None:
        """The extents of an unchanged file saved before, or None."""
        hit = self.lookup_record(path, st)
        return hit[0] if hit is not None else None

    def has_files(self) -> bool:
        with self.lock:
            for b in self._buffers():
                if b.files:
                    return True
                if b.reset:
                    return False
            if self._db_stale:
                return False
        return bool(self._read("SELECT 1 FROM files LIMIT 1"))

    def lookup_record(self, path: bytes, st: os.stat_result) -> tuple[bytes, bytes | None] | None:
        """(extents, encoded index record) of an unchanged file saved before.
        Any change to content, mode, owner or xattrs moves ctime, so a match
        means the record can be reused byte for byte."""
        with self.lock:
            b = self._buf
            if self._inflight or b.forget or b.reset or self._db_stale:
                row = self._buffered_file(path)
            else:  # (the common case, the hot path of an unchanged save)
                row = b.files.get(path)
        if row is False:
            return None
        if row is None:
            found = self._scan_file(path)
            if found is None:
                return None
            if self._inflight or self._buf.forget:
                with self.lock:
                    forgotten = set().union(*(b.forget for b in self._buffers()))
                if forgotten and _uses_any(found[5], forgotten, self.extent_size):
                    return None  # a blob it uses was forgotten, not yet in the file
            dev, ino, size, mtime, ctime, extents, record = found
        else:
            _, dev, ino, size, mtime, ctime, extents, _, record = row
        if (dev, ino, size, mtime, ctime) != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            return None
        return extents, record  # the record is None for rows stored without one

    def _buffered_file(self, path: bytes):
        """The buffered row for ``path``; None: look in the file; False: it
        is not known (forgotten, or the file's rows are being reset)."""
        with self.lock:
            forgotten: set[bytes] = set()
            for b in self._buffers():
                row = b.files.get(path)
                if row is not None:
                    return False if forgotten and _uses_any(row[6], forgotten, self.extent_size) else row
                forgotten |= b.forget
                if b.reset:
                    return False
            return False if self._db_stale else None

    def store_file(self, path: bytes, st: os.stat_result, extents: bytes, seen: int,
                   record: bytes | None = None) -> None:
        with self.lock:
            self._buf.files[path] = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                     extents, seen, record)
            full = self._grown()
        if full:
            self._hold_back()

    # ---- verification memory (check --read-data-subset) -------------------------------

    def mark_verified(self, ids, when: int | None = None) -> None:
        when = int(when or time.time())
        with self.lock:
            self._buf.verified.update((i, when) for i in ids)
            full = self._grown()
        if full:
            self._hold_back()

    def last_verified(self, blob_id: bytes) -> int | None:
        with self.lock:
            for b in self._buffers():
                if blob_id in b.verified:
                    return b.verified[blob_id]
                if blob_id in b.forget:
                    return None
        rows = self._read("SELECT time FROM verified WHERE id=?", (blob_id,))
        return rows[0][0] if rows else None

    # ---- blobs written but not yet durable (crash recovery; docs/integrity.md) -------

    def add_pending(self, blob_id: bytes) -> None:
        with self.lock:
            self._buf.pending.add(blob_id)

    def pending_blobs(self) -> list[bytes]:
        """The blobs of the saves that died on this cache (see
        :meth:`dead_sessions`)."""
        return sorted({b for ids in self.dead_sessions().values() for b in ids})

    def clear_pending(self) -> None:
        """This save's pending blobs are durable now."""
        with self.lock:
            self._buf.pending.clear()
        if self._session is None:
            return
        sid = self._session[0]
        self._flush()
        with self._wlock:
            self._transaction(lambda db: db.execute("DELETE FROM session_pending WHERE session=?", (sid,)))

    # ---- snapshot records seen by check --------------------------------------------

    def seen_snapshots(self) -> dict[str, tuple[float, float | None, float]]:
        """sid -> (first_seen, gone_since, not_before) as unix times;
        ``not_before``: the previous check that did not see it yet (0: none),
        so the record appeared between ``not_before`` and ``first_seen``."""
        rows = self._read("SELECT id, first_seen, gone_since, not_before FROM snapshots_seen") or []
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def note_snapshots(self, present, when: float | None = None, previous: float = 0.0) -> None:
        """Record that exactly ``present`` exist now (``previous``: the time of
        the previous check): new ones get a first-seen time, vanished ones a
        gone-since time, reappeared ones lose it."""
        when = when or time.time()
        present = set(present)

        def fn(db):
            rows = {r[0]: (r[1], r[2], r[3]) for r in db.execute(
                "SELECT id, first_seen, gone_since, not_before FROM snapshots_seen").fetchall()}
            db.executemany("INSERT INTO snapshots_seen VALUES (?, ?, NULL, ?)",
                           [(s, when, previous) for s in present if s not in rows])
            db.executemany("UPDATE snapshots_seen SET gone_since=? WHERE id=?",
                           [(when, s) for s, (_, gone, _) in rows.items() if s not in present and gone is None])
            db.executemany("UPDATE snapshots_seen SET gone_since=NULL WHERE id=?",
                           [(s,) for s, (_, gone, _) in rows.items() if s in present and gone is not None])

        self._flush()
        with self._wlock:
            self._transaction(fn)


def cache_path(cache_dir: str, repo_id: str, role: str) -> str:
    return os.path.join(cache_dir, f"{repo_id}-{role}.sqlite")

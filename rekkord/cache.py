"""The local cache: an optimisation only, never a source of truth.

One SQLite file per repository (and key role) in the user cache directory:

* ``blobs``: blob ids known to exist in the repository, with stored sizes;
* ``files``: the stat cache, path -> (dev, inode, size, mtime, ctime) and the
  extents of its content, so an unchanged file costs one ``stat``;
* ``verified``: when ``check --read-data-subset`` last verified a blob;
* ``pending``: blobs a save wrote but has not yet made durable (storage
  ``flush``); a save that finds rows here knows the previous one died before
  its flush and re-verifies those blobs (docs/integrity.md);
* ``snapshots_seen``: snapshot records ``check`` has seen (first seen, gone
  since), to notice records that vanish, reappear or arrive backdated;
* ``meta``: the garbage-collection generation the rest was built under.

Deleting the file is always safe: the next save lists the repository's blobs
again and re-reads files.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (id BLOB PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
    mtime INTEGER, ctime INTEGER, extents BLOB NOT NULL, seen INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verified (id BLOB PRIMARY KEY, time INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots_seen (
    id TEXT PRIMARY KEY, first_seen REAL NOT NULL, gone_since REAL, not_before REAL NOT NULL
) WITHOUT ROWID;
"""


class Cache:
    def __init__(self, path: str | None):
        """``path=None`` gives a throw-away in-memory cache."""
        self.path = path
        if path is not None:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL" if path else "PRAGMA journal_mode=MEMORY")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        cols = [r[1] for r in self.db.execute("PRAGMA table_info(files)")]
        if "record" not in cols:  # caches made before the index record was cached
            self.db.execute("ALTER TABLE files ADD COLUMN record BLOB")
        self.lock = threading.RLock()
        self._file_rows: list[tuple] = []
        self._bg = None  # background inserter of stat-cache rows
        self._bg_futs: list = []
        self._in_tx = False
        self._last_commit = time.monotonic()

    # ---- transactions (one writer thread at a time, guarded by the lock) ------

    def begin(self):
        with self.lock:
            if not self._in_tx:
                self.db.execute("BEGIN")
                self._in_tx = True

    def commit(self):
        self._drain_bg()
        with self.lock:
            self._flush_files()
            if self._in_tx:
                self.db.execute("COMMIT")
                self._in_tx = False
            self._last_commit = time.monotonic()

    def maybe_commit(self, every: float = 5.0):
        if time.monotonic() - self._last_commit > every:
            self.commit()
            self.begin()

    def close(self):
        self._drain_bg()
        if self._bg is not None:
            self._bg.shutdown()
        with self.lock:
            self.commit()
            self.db.close()

    # ---- meta -------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    # ---- known blobs ------------------------------------------------------------------

    def blob_size(self, blob_id: bytes) -> int | None:
        with self.lock:
            row = self.db.execute("SELECT size FROM blobs WHERE id=?", (blob_id,)).fetchone()
        return row[0] if row else None

    def add_blob(self, blob_id: bytes, size: int) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (blob_id, size))

    def add_blobs(self, items) -> None:
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?)", items)

    def forget_blobs(self, ids) -> None:
        """Forget blobs (found missing or damaged) and every cached file using them."""
        ids = list(ids)
        self._drain_bg()
        with self.lock:
            if self._file_rows:
                self._flush_files()
            self.db.executemany("DELETE FROM blobs WHERE id=?", [(i,) for i in ids])
            self.db.executemany("DELETE FROM verified WHERE id=?", [(i,) for i in ids])
            if ids:
                bad = set(ids)
                doomed = []
                for path, ext in self.db.execute("SELECT path, extents FROM files"):
                    for o in range(0, len(ext), 40):
                        if ext[o:o + 32] in bad:
                            doomed.append((path,))
                            break
                self.db.executemany("DELETE FROM files WHERE path=?", doomed)

    def reset_blobs(self) -> None:
        self._drain_bg()
        with self.lock:
            if self._file_rows:
                self._flush_files()
            self.db.execute("DELETE FROM blobs")
            self.db.execute("DELETE FROM files")

    def blob_count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM blobs").fetchone()[0]

    # ---- stat cache -------------------------------------------------------------------

    def lookup_file(self, path: bytes, st: os.stat_result) -> bytes | None:
        """The extents of an unchanged file saved before, or None."""
        hit = self.lookup_record(path, st)
        return hit[0] if hit is not None else None

    def has_files(self) -> bool:
        self._drain_bg()
        with self.lock:
            if self._file_rows:
                self._flush_files()
            return self.db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is not None

    def lookup_record(self, path: bytes, st: os.stat_result) -> tuple[bytes, bytes | None] | None:
        """(extents, encoded index record) of an unchanged file saved before.
        Any change to content, mode, owner or xattrs moves ctime, so a match
        means the record can be reused byte for byte."""
        self._drain_bg()
        with self.lock:
            if self._file_rows:
                self._flush_files()
            row = self.db.execute(
                "SELECT dev, ino, size, mtime, ctime, extents, record FROM files WHERE path=?", (path,)
            ).fetchone()
        if row is None:
            return None
        if (row[0], row[1], row[2], row[3], row[4]) != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                                          st.st_ctime_ns):
            return None
        return row[5], row[6]  # the record is None for rows stored without one

    def store_file(self, path: bytes, st: os.stat_result, extents: bytes, seen: int,
                   record: bytes | None = None) -> None:
        # Buffered: one executemany per thousand files instead of one statement
        # each (every statement releases and re-takes the GIL).
        with self.lock:
            self._file_rows.append(
                (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, extents, seen, record))
            if len(self._file_rows) < 1000:
                return
            rows, self._file_rows = self._file_rows, []
        # Inserted by a background thread: the saver's main thread walks on
        # (the executemany cost ~26 us per row on its critical path).
        if self._bg is None:
            from concurrent.futures import ThreadPoolExecutor

            self._bg = ThreadPoolExecutor(1, thread_name_prefix="rekkord-cache")
        self._bg_futs.append(self._bg.submit(self._insert_files, rows))

    def _insert_files(self, rows) -> None:
        with self.lock:
            self.db.executemany(
                "INSERT OR REPLACE INTO files (path, dev, ino, size, mtime, ctime, extents, seen, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _drain_bg(self) -> None:
        """Wait for background inserts (never call while holding the lock)."""
        futs, self._bg_futs = self._bg_futs, []
        for f in futs:
            f.result()

    def _flush_files(self) -> None:
        rows, self._file_rows = self._file_rows, []
        if rows:
            self.db.executemany(
                "INSERT OR REPLACE INTO files (path, dev, ino, size, mtime, ctime, extents, seen, record) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    # ---- verification memory (check --read-data-subset) -------------------------------

    def mark_verified(self, ids, when: int | None = None) -> None:
        when = int(when or time.time())
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?)", [(i, when) for i in ids])

    def last_verified(self, blob_id: bytes) -> int | None:
        with self.lock:
            row = self.db.execute("SELECT time FROM verified WHERE id=?", (blob_id,)).fetchone()
        return row[0] if row else None


    # ---- blobs written but not yet durable (crash recovery; docs/integrity.md) -------

    def add_pending(self, blob_id: bytes) -> None:
        with self.lock:
            self.db.execute("INSERT OR IGNORE INTO pending VALUES (?)", (blob_id,))

    def pending_blobs(self) -> list[bytes]:
        with self.lock:
            return [r[0] for r in self.db.execute("SELECT id FROM pending")]

    def clear_pending(self) -> None:
        with self.lock:
            self.db.execute("DELETE FROM pending")

    # ---- snapshot records seen by check --------------------------------------------

    def seen_snapshots(self) -> dict[str, tuple[float, float | None, float]]:
        """sid -> (first_seen, gone_since, not_before) as unix times;
        ``not_before``: the previous check that did not see it yet (0: none),
        so the record appeared between ``not_before`` and ``first_seen``."""
        with self.lock:
            return {r[0]: (r[1], r[2], r[3]) for r in self.db.execute(
                "SELECT id, first_seen, gone_since, not_before FROM snapshots_seen")}

    def note_snapshots(self, present, when: float | None = None, previous: float = 0.0) -> None:
        """Record that exactly ``present`` exist now (``previous``: the time of
        the previous check): new ones get a first-seen time, vanished ones a
        gone-since time, reappeared ones lose it."""
        when = when or time.time()
        present = set(present)
        with self.lock:
            rows = self.seen_snapshots()
            self.db.executemany("INSERT INTO snapshots_seen VALUES (?, ?, NULL, ?)",
                                [(s, when, previous) for s in present if s not in rows])
            self.db.executemany("UPDATE snapshots_seen SET gone_since=? WHERE id=?",
                                [(when, s) for s, (_, gone, _) in rows.items() if s not in present and gone is None])
            self.db.executemany("UPDATE snapshots_seen SET gone_since=NULL WHERE id=?",
                                [(s,) for s, (_, gone, _) in rows.items() if s in present and gone is not None])


def cache_path(cache_dir: str, repo_id: str, role: str) -> str:
    return os.path.join(cache_dir, f"{repo_id}-{role}.sqlite")

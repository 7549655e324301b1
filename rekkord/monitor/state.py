"""The monitor's state: one SQLite file with a versioned schema.

It holds what the monitor has seen (snapshot records' public fields, the
audit part of failure reports), check results, repository sizes over time,
alerts and their deliveries, and login sessions.  Nothing in it is secret:
no key, password hash or session token (only a hash of each token) — and,
since the monitor holds audit keys only, no file name.  Deleting the file
loses history only: the next poll sees the repositories again.

``PRAGMA user_version`` is the schema version.  A file made by a newer
rekkord is refused; an older one is upgraded by the steps in MIGRATIONS.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time

from ..errors import ConfigError

SCHEMA_VERSION = 1

#: MIGRATIONS[n] turns a version n-1 database into version n.
MIGRATIONS = {
    1: """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE repositories (
    name TEXT PRIMARY KEY, repo_id TEXT, first_seen REAL NOT NULL,
    last_poll REAL, last_poll_ok REAL, poll_error TEXT, failed_polls INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER, objects INTEGER, keys_digest TEXT, size_baseline INTEGER, size_baseline_time REAL,
    check_requested REAL);
CREATE TABLE snapshots (
    repo TEXT NOT NULL, id TEXT NOT NULL, channel TEXT NOT NULL, host TEXT NOT NULL, kid TEXT NOT NULL,
    time_ns INTEGER NOT NULL, trusted INTEGER NOT NULL, problem TEXT,
    files INTEGER, bytes_total INTEGER, bytes_new INTEGER, bytes_stored INTEGER, warnings INTEGER, duration REAL,
    first_seen REAL NOT NULL, gone REAL, PRIMARY KEY (repo, id));
CREATE INDEX snapshots_channel ON snapshots (repo, channel, time_ns);
CREATE TABLE reports (
    repo TEXT NOT NULL, id TEXT NOT NULL, channel TEXT NOT NULL, host TEXT NOT NULL, kid TEXT NOT NULL,
    time_ns INTEGER NOT NULL, status TEXT NOT NULL, exit_code INTEGER NOT NULL, error TEXT NOT NULL,
    files INTEGER, warnings INTEGER, bytes INTEGER, trusted INTEGER NOT NULL, problem TEXT,
    first_seen REAL NOT NULL, gone REAL, PRIMARY KEY (repo, id));
CREATE TABLE checks (
    id INTEGER PRIMARY KEY, repo TEXT NOT NULL, started REAL NOT NULL, duration REAL, status TEXT NOT NULL,
    snapshots INTEGER, blobs INTEGER, bytes_read INTEGER, problems TEXT, damaged TEXT, error TEXT);
CREATE INDEX checks_repo ON checks (repo, started);
CREATE TABLE sizes (
    repo TEXT NOT NULL, time REAL NOT NULL, bytes INTEGER NOT NULL, objects INTEGER NOT NULL,
    snapshots INTEGER NOT NULL, PRIMARY KEY (repo, time));
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY, repo TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL,
    title TEXT NOT NULL, text TEXT NOT NULL, opened REAL NOT NULL, last_sent REAL, resolved REAL,
    acked_by TEXT, acked REAL);
CREATE INDEX alerts_open ON alerts (key) WHERE resolved IS NULL;
CREATE INDEX alerts_repo ON alerts (repo, opened);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY, alert INTEGER, event TEXT NOT NULL, target TEXT NOT NULL, recipients TEXT,
    subject TEXT NOT NULL, body TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL, status TEXT NOT NULL, last_error TEXT, sent REAL);
CREATE INDEX deliveries_pending ON deliveries (next_try) WHERE status = 'pending';
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY, user TEXT NOT NULL, csrf TEXT NOT NULL, created REAL NOT NULL,
    expires REAL NOT NULL);
""",
}


class State:
    """Thread-safe access to the state file (one connection, one lock; every
    method is one short transaction)."""

    def __init__(self, path: str | None):
        self.path = path
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        try:
            self.db = sqlite3.connect(path or ":memory:", check_same_thread=False, isolation_level=None,
                                      timeout=30)
            self.db.row_factory = sqlite3.Row
            if path is not None:
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.lock = threading.RLock()
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"state file {path}: {e} (delete it to start afresh; only history is lost)") from None
        if path is not None:
            os.chmod(path, 0o600)

    def _migrate(self):
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigError(f"state file {self.path} has schema version {version}, newer than this rekkord "
                              f"knows ({SCHEMA_VERSION}): run a newer rekkord, or delete the file (only history "
                              "is lost)")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self.lock:
                self.db.execute("BEGIN")
                try:
                    for stmt in _statements(MIGRATIONS[v]):
                        self.db.execute(stmt)
                    self.db.execute(f"PRAGMA user_version = {v}")
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self):
        with self.lock:
            self.db.close()

    # ---- helpers ---------------------------------------------------------------------------

    def q(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, args=()):
        with self.lock:
            return self.db.execute(sql, args).fetchone()

    def x(self, sql: str, args=()) -> int:
        with self.lock:
            return self.db.execute(sql, args).lastrowid

    def tx(self):
        return _Tx(self)

    def get_meta(self, key: str, default=None):
        r = self.one("SELECT value FROM meta WHERE key = ?", (key,))
        return r[0] if r else default

    def set_meta(self, key: str, value) -> None:
        self.x("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    # ---- repositories ------------------------------------------------------------------------

    def repository(self, name: str) -> sqlite3.Row:
        with self.lock:
            r = self.db.execute("SELECT * FROM repositories WHERE name = ?", (name,)).fetchone()
            if r is None:
                self.db.execute("INSERT INTO repositories (name, first_seen) VALUES (?, ?)", (name, time.time()))
                r = self.db.execute("SELECT * FROM repositories WHERE name = ?", (name,)).fetchone()
            return r

    def update_repository(self, name: str, **fields) -> None:
        self.repository(name)
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.x(f"UPDATE repositories SET {cols} WHERE name = ?", (*fields.values(), name))

    # ---- checks ------------------------------------------------------------------------------------

    def add_check(self, repo: str, started: float, duration: float | None, status: str, *, snapshots=None,
                  blobs=None, bytes_read=None, problems=(), damaged=(), error: str | None = None) -> int:
        return self.x("INSERT INTO checks (repo, started, duration, status, snapshots, blobs, bytes_read, problems, "
                      "damaged, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (repo, started, duration, status, snapshots, blobs, bytes_read, json.dumps(list(problems)),
                       json.dumps(list(damaged)), error))

    def last_check(self, repo: str):
        r = self.one("SELECT * FROM checks WHERE repo = ? ORDER BY started DESC, id DESC LIMIT 1", (repo,))
        return _check_row(r)

    def checks(self, repo: str, limit: int = 500) -> list[dict]:
        rows = self.q("SELECT * FROM checks WHERE repo = ? ORDER BY started DESC, id DESC LIMIT ?", (repo, limit))
        return [_check_row(r) for r in reversed(rows)]

    # ---- alerts -----------------------------------------------------------------------------------------

    def open_alerts(self, repo: str | None = None) -> list[sqlite3.Row]:
        if repo is None:
            return self.q("SELECT * FROM alerts WHERE resolved IS NULL ORDER BY opened")
        return self.q("SELECT * FROM alerts WHERE resolved IS NULL AND repo = ? ORDER BY opened", (repo,))

    def alerts(self, repo: str | None = None, limit: int = 200) -> list[sqlite3.Row]:
        if repo is None:
            return self.q("SELECT * FROM alerts ORDER BY opened DESC, id DESC LIMIT ?", (limit,))
        return self.q("SELECT * FROM alerts WHERE repo = ? ORDER BY opened DESC, id DESC LIMIT ?", (repo, limit))

    # ---- sessions ------------------------------------------------------------------------------------------

    def add_session(self, token_hash: str, user: str, csrf: str, lifetime: float) -> None:
        now = time.time()
        with self.lock:
            self.db.execute("DELETE FROM sessions WHERE expires < ?", (now,))
            self.db.execute("INSERT INTO sessions (token_hash, user, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
                            (token_hash, user, csrf, now, now + lifetime))

    def session(self, token_hash: str):
        return self.one("SELECT * FROM sessions WHERE token_hash = ? AND expires >= ?", (token_hash, time.time()))

    def end_session(self, token_hash: str) -> None:
        self.x("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


def _check_row(r) -> dict | None:
    if r is None:
        return None
    d = dict(r)
    d["problems"] = json.loads(d["problems"] or "[]")
    d["damaged"] = json.loads(d["damaged"] or "[]")
    return d


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


class _Tx:
    def __init__(self, state: State):
        self.state = state

    def __enter__(self):
        self.state.lock.acquire()
        self.state.db.execute("BEGIN")
        return self.state.db

    def __exit__(self, exc_type, *rest):
        try:
            self.state.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.state.lock.release()

"""A storage wrapper that injects faults, for pipeline tests.

``FaultyStorage(inner, faults)`` passes every call to a real backend, except
where a :class:`Fault` matches: it can raise an error (permanent or
transient), return a short read, flip a bit in what a read returns, drop a
write while reporting success, store a truncated object, or kill the process
(SIGKILL) at a precise operation.  It counts every operation and can keep a
journal (one line per completed write and flush, fsynced) so that a test can
simulate a power loss after a killed process: objects written since the last
flush are emptied or removed (:func:`lose_unflushed_writes`).

Run as a program, it runs the real CLI with the repository's storage
wrapped, so that a real process can be killed at an exact point::

    python tests/faulty_storage.py '{"faults": [{"op": "write", "match": "blobs/",
        "action": "kill", "after": 7}], "journal": "/tmp/j"}' -r REPO -k KEY save c /src
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass

from rekkord.errors import StorageError, TransientStorageError
from rekkord.storage.base import Storage

ACTIONS = ("error", "transient", "short", "flip", "drop", "truncate", "kill")


@dataclass
class Fault:
    op: str  # write | read | stat | list | delete | rename | flush
    action: str  # one of ACTIONS
    match: str = ""  # a name prefix ("" matches every name)
    after: int = 0  # let this many matching operations through first
    times: int | None = None  # fire this many times (None: every time after ``after``)
    probability: float = 1.0
    fired: int = 0
    seen: int = 0

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")

    def hit(self, op: str, name: str, rng: random.Random) -> bool:
        if op != self.op or not name.startswith(self.match):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.probability < 1.0 and rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


class FaultyStorage(Storage):
    def __init__(self, inner: Storage, faults: list[Fault] | None = None, *, seed: int = 0,
                 journal: str | None = None):
        self.inner = inner
        self.faults = list(faults or [])
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.ops: Counter = Counter()
        self.written: list[str] = []  # names written (successfully, as far as the caller knows)
        self.journal = journal
        self.url = inner.url
        self.connections = inner.connections
        self.atomic_exclusive = inner.atomic_exclusive

    # ---- machinery -------------------------------------------------------------

    def _fault(self, op: str, name: str) -> Fault | None:
        with self.lock:
            self.ops[op] += 1
            for f in self.faults:
                if f.hit(op, name, self.rng):
                    return f
        return None

    def _log(self, line: str):
        if self.journal is None:
            return
        with self.lock:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _raise(f: Fault, what: str):
        if f.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if f.action == "transient":
            raise TransientStorageError(f"{what}: injected transient failure")
        raise StorageError(f"{what}: injected failure")

    # ---- the interface -----------------------------------------------------------

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        f = self._fault("write", name)
        if f is not None:
            if f.action == "drop":
                self.written.append(name)
                return
            if f.action == "truncate":
                data = bytes(data)[: self.rng.randrange(0, max(1, len(data)))]
            else:
                self._raise(f, f"write {name}")
        self.inner.write(name, data, exclusive=exclusive)
        with self.lock:
            self.written.append(name)
        self._log(f"write {name}")

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        f = self._fault("read", name)
        if f is not None and f.action not in ("short", "flip"):
            self._raise(f, f"read {name}")
        data = self.inner.read(name, offset, length)
        if f is not None and f.action == "short" and data:
            data = data[: self.rng.randrange(0, len(data))]
        elif f is not None and f.action == "flip" and data:
            b = bytearray(data)
            i = self.rng.randrange(len(b))
            b[i] ^= 1 << self.rng.randrange(8)
            data = bytes(b)
        return data

    def stat(self, name: str) -> int | None:
        f = self._fault("stat", name)
        if f is not None:
            self._raise(f, f"stat {name}")
        return self.inner.stat(name)

    def list(self, prefix: str = ""):
        f = self._fault("list", prefix)
        if f is not None:
            self._raise(f, f"list {prefix}")
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        f = self._fault("delete", name)
        if f is not None:
            self._raise(f, f"delete {name}")
        self.inner.delete(name)

    def rename(self, src: str, dst: str) -> None:
        f = self._fault("rename", src)
        if f is not None:
            self._raise(f, f"rename {src}")
        self.inner.rename(src, dst)
        self._log(f"write {dst}")

    def create(self) -> None:
        self.inner.create()

    def now(self) -> float:
        return self.inner.now()

    def mtime(self, name: str) -> float | None:
        return self.inner.mtime(name)

    def list_times(self, prefix: str = ""):
        f = self._fault("list", prefix)
        if f is not None:
            self._raise(f, f"list {prefix}")
        return self.inner.list_times(prefix)

    def close(self) -> None:
        self.inner.close()

    def defer_sync(self) -> None:
        self.inner.defer_sync()

    def flush(self) -> None:
        f = self._fault("flush", "")
        if f is not None:
            self._raise(f, "flush")
        self.inner.flush()
        self._log("flush")


def lose_unflushed_writes(journal: str, root: str, *, mode: str = "empty") -> list[str]:
    """Simulate a power loss on a local repository at ``root``: every object
    the journal shows written after the last flush is emptied (``mode=
    "empty"``, what ext4 leaves of a file whose data never reached the disk)
    or removed (``"remove"``).  Returns the names affected."""
    try:
        with open(journal) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    last_flush = max((i for i, line in enumerate(lines) if line == "flush"), default=-1)
    lost = [line.split(" ", 1)[1] for line in lines[last_flush + 1:] if line.startswith("write ")]
    for name in lost:
        path = os.path.join(root, *name.split("/"))
        if mode == "remove":
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        elif os.path.exists(path):
            os.truncate(path, 0)
    return lost


# --- helpers for integrity tests: saving, finding objects by role, tampering ------


def save_tree(local_repo, paths, *, role: str = "write", channel: str = "c", cache_name: str | None = None,
              storage: Storage | None = None, time_ns: int | None = None):
    """Save with the library, with the role's own persistent cache."""
    from rekkord.cache import Cache, cache_path
    from rekkord.repository import Repository
    from rekkord.save import Saver

    repo = local_repo.repo(role) if storage is None else Repository.open(storage, local_repo.keys[role])
    cache = Cache(cache_path(local_repo.cache_dir, repo.id, cache_name or role))
    try:
        return Saver(repo, cache).save(channel, [os.fspath(p) for p in paths], time_ns=time_ns)
    finally:
        cache.close()


def run_check(local_repo, role: str = "audit", *, cache_name: str | None = None, storage: Storage | None = None,
              **kw):
    """Check with the library and the role's own persistent cache."""
    from rekkord.cache import Cache, cache_path
    from rekkord.check import Checker
    from rekkord.repository import Repository

    repo = local_repo.repo(role) if storage is None else Repository.open(storage, local_repo.keys[role])
    cache = Cache(cache_path(local_repo.cache_dir, repo.id, cache_name or f"check-{role}"))
    try:
        return Checker(repo, cache, **kw).run()
    finally:
        cache.close()


def blob_roles(local_repo, sid: str, storage: Storage | None = None) -> dict[str, list[bytes]]:
    """The blobs of a snapshot by role: ``index``, ``reflist`` (the first copy
    of each), ``index_all``, ``reflist_all`` (every copy, format v2),
    ``copies``: the first copy -> all its copies, ``data`` (chunks of large
    files), ``pack`` (blobs holding small files); and ``files``: path -> blob
    ids; ``keys``: blob id -> the key its extents hold (format v2)."""
    from rekkord.repository import Repository
    from rekkord.snapshot import iter_entries

    repo = local_repo.repo("admin") if storage is None else Repository.open(storage, local_repo.master)
    snap = repo.load_snapshot(sid)
    out = {"index": [b for b, _ in snap.index], "reflist": [b for b, _ in snap.reflist],
           "index_all": [b for b, _ in snap.all_blobs("index")], "reflist_all": [b for b, _ in snap.all_blobs("reflist")],
           "copies": {g[0][0]: [b for b, _ in g] for w in ("index", "reflist") for g in snap.copies_of(w)},
           "data": [], "pack": [], "files": {}, "keys": {}}
    for e in iter_entries(repo, snap):
        if not e.extents:
            continue
        out["files"]["/" + os.fsdecode(e.path)] = [x.blob for x in e.extents]
        for x in e.extents:
            out["keys"][x.blob] = x.key  # (format v2: what the blob's key comes from)
            kind = "pack" if e.size < repo.chunker_params.min_size else "data"
            if x.blob not in out[kind]:
                out[kind].append(x.blob)
    return out


def obj_path(url: str, name: str) -> str:
    return os.path.join(url, *name.split("/"))


def blob_path(url: str, blob_id: bytes) -> str:
    h = blob_id.hex()
    return os.path.join(url, "blobs", h[:2], h)


def flip_bit(path: str, pos: int | None = None) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        i = len(data) // 2 if pos is None else pos
        data[i] ^= 0x10
        f.seek(0)
        f.write(data)


def truncate(path: str, keep: float = 0.5) -> None:
    os.truncate(path, int(os.path.getsize(path) * keep))


def swap(a: str, b: str) -> None:
    tmp = a + ".swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def copy_to(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())


def forged_codec(config: dict):
    """A blob codec as someone with only the storage and the public keys can
    build one: the real data public key, but guessed (random) psk-derived
    keys and id key, which they do not have."""
    from rekkord import crypto, format as fmt

    from rekkord.format_v2 import CodecV2

    psk = os.urandom(32)
    codec_class = CodecV2 if config.get("format", 1) >= 2 else fmt.BlobCodec
    return codec_class(fmt.BlobKeys(
        id_key=os.urandom(32), mac_key=crypto.derive(crypto.CTX_MAC, psk),
        list_key=crypto.derive(crypto.CTX_LIST, psk), session_mix=crypto.derive(crypto.CTX_SESSION, psk),
        data_pk=bytes.fromhex(config["data_pk"]), data_sk=None))


def forge_blob(config: dict, blob_id: bytes, btype: int, plaintext: bytes = b"planted by the storage") -> bytes:
    return forged_codec(config).seal(btype, blob_id, plaintext)


def forge_record(config: dict, sid: str, record: dict) -> bytes:
    """A snapshot record sealed to the real log public key and signed by a
    key the forger made (they have neither psk nor a certified key)."""
    from rekkord import crypto, format as fmt

    return fmt.seal_record(sid, {**record, "id": sid, "repo": config["repo"]}, os.urandom(32),
                           bytes.fromhex(config["log_pk"]), crypto.derive(crypto.CTX_LOG, os.urandom(32)))


def main(argv: list[str]) -> None:
    """``faulty_storage.py SPEC REKKORD-ARGS...``: the real CLI over a wrapped storage."""
    spec = json.loads(argv[0])
    import rekkord.storage as storage_mod
    from rekkord.cli.main import cli

    real_open = storage_mod.open_storage

    def open_wrapped(url, options=None):
        faults = [Fault(**f) for f in spec.get("faults", [])]
        return FaultyStorage(real_open(url, options), faults, seed=spec.get("seed", 0),
                             journal=spec.get("journal"))

    storage_mod.open_storage = open_wrapped
    cli.main(args=argv[1:], prog_name="rekkord")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(sys.argv[1:])

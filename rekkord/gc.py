"""Garbage collection without locks: save sessions, fossils and prune.

The protocol (two-step fossil collection, after Duplicacy; the full argument
is in docs/maintenance.md):

* A **save session** announces itself before it looks at the repository:
  ``sessions/<sid>`` (a small JSON marker, MACed with a psk-derived key,
  refreshed every minute while the save runs, deleted once its snapshot
  record is written).  A prune that finds a marker not refreshed for the
  session timeout declares the session dead by writing ``sessions/<sid>.dead``.
* **Step 1** (collect): blobs no snapshot references are moved from
  ``blobs/xx/<id>`` to ``fossils/<cid>/xx/<id>``.  The ids are written first
  (``gc/collections/<cid>.fossils``); after the moves the generation is bumped
  (``generations/<n>``), the save sessions present are listed, and the
  collection is closed with ``gc/collections/<cid>.done`` naming them.
* **Step 2** (delete): a fossil of a closed collection is deleted only when
  every session the collection named has finished (marker gone) or was
  declared dead, judged *before* the snapshots are listed; fossils a snapshot
  references are moved back (resurrected) instead.  A collection without its
  ``.done`` (an interrupted prune) is rolled back: all its fossils return.

Why a save can never end with a snapshot referencing a deleted blob: a save
that could have believed a fossil to exist (its cache was filled before the
moves, or it uploaded the blob before the moves) announced itself before the
collection listed the sessions, so it is named by the collection; its record is
written before its marker goes, so the deleting prune sees the record and
resurrects instead.  A save that started later reads the bumped generation
and re-lists the blobs after the moves.  A save declared dead that was only
slow finds its ``.dead`` marker after writing its record and verifies every
blob it references (resurrecting fossils; if one is gone it deletes its own
record and fails).  Deletion never waits on a clock unless a saver died.

Time is the storage's (:class:`StorageClock`): whether a session is alive is
decided by its marker's modification time on the storage against the
storage's current time, as are the ages of tombstones, collections, the forget
log, quarantine and failure reports -- never this machine's clock, nor a time
a writer put into an object, so a writer or a pruner days off cannot make a
running save look dead (docs/maintenance.md, "Clocks").
"""

from __future__ import annotations

import base64
import calendar
import hmac
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from . import crypto, format as fmt, keys as keymod, schema
from .errors import IntegrityError, ObjectExists, ObjectNotFound, RekkordError, SnapshotNotFound, StorageError

#: Key for the MAC of save-session markers (format v1; docs/maintenance.md).
CTX_SESSION_MARKER = "rekkord v1 2026-11 save session marker key"
#: How often a running save refreshes its marker (seconds).
SESSION_REFRESH = 60.0
#: A marker not refreshed for this long belongs to a dead save (prune's default).
SESSION_TIMEOUT = 30 * 60.0
#: Dead-session tombstones are kept this long (then removed with their marker).
DEAD_KEEP = 7 * 86400.0
#: A save that ran longer than this verifies its blobs whatever it finds.
LONG_SAVE = DEAD_KEEP / 2
#: Entries of the signed log of forgotten snapshots are kept this long.
FORGET_LOG_KEEP = 90 * 86400.0
#: Generations kept below the newest (older ones are removed by prune).
GENERATIONS_KEPT = 16
#: Temporary objects of interrupted writes older than this are removed by prune
#: (a write takes seconds; the margin covers frozen writers and skewed clocks).
TEMP_KEEP = 86400.0
#: A reading of the storage's clock is advanced by this process's monotonic
#: clock for this long before the storage is asked again (seconds).
CLOCK_REREAD = 60.0

SESSIONS = "sessions/"
FOSSILS = "fossils/"
#: Objects set aside because another object claimed their name and verified
#: better (or a check found them spoiled): kept as evidence, never read.
QUARANTINE = "quarantine/"
QUARANTINE_KEEP = 30 * 86400.0
#: Context of the signatures on prune's bookkeeping (format v1, docs/maintenance.md).
GC_SIG_CONTEXT = b"rekkord gc v1\0"
GC = "gc/collections/"  # collection manifests (gc/forgotten/: the forget log, rekkord/forget.py)
GENERATIONS = "generations/"
DEAD_SUFFIX = ".dead"


# ---- names ----------------------------------------------------------------------


def fossil_name(cid: str, blob_id: bytes) -> str:
    h = blob_id.hex()
    return f"{FOSSILS}{cid}/{h[:2]}/{h}"


def parse_fossil_name(name: str) -> tuple[str, bytes] | None:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "fossils":
        return None
    bid = fmt.blob_id_from_name(f"blobs/{parts[2]}/{parts[3]}")
    return None if bid is None else (parts[1], bid)


def _collection_files(storage) -> tuple[set[str], set[str]]:
    """(cids with an id list, cids closed with .done) from ``gc/``."""
    intents, done = set(), set()
    for name, _ in storage.list(GC):
        base = name[len(GC):]
        if base.endswith(".fossils"):
            intents.add(base[: -len(".fossils")])
        elif base.endswith(".done"):
            done.add(base[: -len(".done")])
    return intents, done


def _name_time(stamp: str) -> float:
    """The UTC time a name begins with (``20261201T101500Z-...``): when a
    collection started, or an object was quarantined; 0.0 (as old as can be)
    for a name that is not one of ours."""
    try:
        return float(calendar.timegm(time.strptime(stamp.split("-")[0], "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return 0.0


def _collection_time(cid: str) -> float:
    """When collection ``cid`` started (its id begins with the UTC time)."""
    return _name_time(cid)


def time_stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def new_collection_id(now: float | None = None) -> str:
    return time_stamp(time.time() if now is None else now) + "-" + crypto.random_bytes(4).hex()


def quarantine_name(name: str, now: float) -> str:
    """Where ``name`` is set aside (``now``: the storage's time, which decides
    when the quarantined copy goes)."""
    return f"{QUARANTINE}{time_stamp(now)}-{crypto.random_bytes(4).hex()}/{name}"


# ---- time, by the storage's clock ---------------------------------------------------


class StorageClock:
    """The garbage collector's time: the storage's own (``Storage.now`` and
    object modification times), never this machine's wall clock nor a time a
    writer put into an object.  A save whose machine is days behind keeps its
    marker fresh by rewriting it (the storage stamps every write), and a prune
    days ahead measures ages against the storage's present.

    ``now()`` asks the storage once, then advances that reading with this
    process's monotonic clock, asking again after :data:`CLOCK_REREAD`
    seconds.  ``age(name)`` is the time since ``name`` was last written.

    A backend that cannot tell time (``NotImplementedError``; every backend
    of rekkord can) makes ``exact`` False: then ``now()`` is this machine's
    clock and ages come from the times written into the objects, which
    requires the clocks of every saving and pruning machine to agree within
    the session timeout (docs/maintenance.md, "Clocks")."""

    def __init__(self, storage, *, fallback: Callable[[], float] = time.time):
        self.storage = storage
        self.fallback = fallback
        self.exact = True
        self._base: tuple[float, float] | None = None  # (storage time, monotonic time) of the last reading
        self._lock = threading.Lock()

    def now(self) -> float:
        if not self.exact:
            return self.fallback()
        mono = time.monotonic()
        with self._lock:
            base = self._base
        if base is not None and mono - base[1] <= CLOCK_REREAD:
            return base[0] + (mono - base[1])
        try:
            t = float(self.storage.now())
        except NotImplementedError:
            self.exact = False
            return self.fallback()
        with self._lock:
            self._base = (t, time.monotonic())
        return t

    def mtime(self, name: str, written: float | None = None) -> float | None:
        """When ``name`` was last written, by the storage's clock (None when
        it is gone); without storage times, ``written`` (what the object says)."""
        if self.exact:
            try:
                return self.storage.mtime(name)
            except NotImplementedError:
                self.exact = False
        return written

    def age(self, name: str, written: float | None = None) -> float | None:
        """Seconds since ``name`` was last written (None: it is gone, or,
        without storage times, ``written`` is None)."""
        m = self.mtime(name, written)
        return None if m is None else self.now() - m

    def list_times(self, prefix: str) -> list[tuple[str, int, float | None]]:
        """``(name, size, mtime)`` of every object under ``prefix``; mtime
        None without storage times."""
        if self.exact:
            try:
                return list(self.storage.list_times(prefix))
            except NotImplementedError:
                self.exact = False
        return [(n, s, None) for n, s in self.storage.list(prefix)]


# ---- generations ----------------------------------------------------------------


def generations(storage) -> list[int]:
    out = []
    for name, _ in storage.list(GENERATIONS):
        try:
            out.append(int(name[len(GENERATIONS):]))
        except ValueError:
            continue
    return sorted(out)


def bump_generation(storage, cid: str, now: float | None = None) -> int:
    """Write ``generations/<max+1>`` exclusively: a new generation is always
    greater than every generation that existed when it was written.  (Its
    ``time``, ``now`` or this machine's clock, is for people only.)"""
    for _ in range(1000):
        gens = generations(storage)
        n = (gens[-1] if gens else 0) + 1
        body = json.dumps({"v": 1, "time": int(time.time() if now is None else now), "collection": cid}).encode()
        try:
            storage.write(f"{GENERATIONS}{n}", body, exclusive=True)
            return n
        except ObjectExists:
            continue
    raise StorageError(f"cannot bump the generation in {storage.url} (too many concurrent prunes)")


# ---- collection manifests --------------------------------------------------------


def _read_json(storage, name: str, limit: int = schema.MAX_SMALL_OBJECT) -> dict | None:
    try:
        raw = storage.read(name, 0, limit + 1)
    except ObjectNotFound:
        return None
    return schema.loads_object(raw, name, limit=limit)


def signed_object(key, name: str, body: dict) -> bytes:
    """Prune's bookkeeping (collection manifests and closings, dead-session
    tombstones), signed by the pruning key and bound to its name: a write
    key or the storage can plant such objects, but not sign them."""
    sig = crypto.sign(key.sign_seed, GC_SIG_CONTEXT + name.encode() + b"\0" + keymod.canonical(body))
    return json.dumps({"body": body, "kid": key.kid, "sig": sig.hex()}, sort_keys=True).encode()


def read_signed(repo, name: str, limit: int = schema.MAX_SMALL_OBJECT) -> dict | None:
    """The body of a signed bookkeeping object, or None when it is missing,
    damaged, or not signed by a certified, unrevoked key that may prune."""
    try:
        d = _read_json(repo.storage, name, limit)
        if d is None:
            return None
        body, kid, sig = d["body"], d["kid"], bytes.fromhex(d["sig"])
    except (IntegrityError, KeyError, ValueError, TypeError, AttributeError):
        return None
    if not isinstance(body, dict) or not isinstance(kid, str) or not repo.may_sign(kid, "prune") \
            or kid in repo.revocations():
        return None
    pk = repo.signer_pk(kid)
    if pk is None or not crypto.verify(pk, GC_SIG_CONTEXT + name.encode() + b"\0" + keymod.canonical(body), sig):
        return None
    return body


def _manifest_ids(body: dict, name: str) -> list[tuple[bytes, int]]:
    try:
        packed = base64.b64decode(body["fossils"], validate=True)
        return fmt.unpack_reflist(packed)
    except (KeyError, TypeError, ValueError, IntegrityError):
        raise IntegrityError(f"{name}: damaged fossil list") from None


def read_collection_ids(storage, cid: str) -> list[tuple[bytes, int]] | None:
    """The blob ids (and sizes) collection ``cid`` set out to fossilise, by
    the word of its manifest (signed or not: only used to move fossils back)."""
    name = f"{GC}{cid}.fossils"
    d = _read_json(storage, name, schema.MAX_LIST_OBJECT)
    if d is None:
        return None
    return _manifest_ids(d.get("body", d) if isinstance(d.get("body"), dict) else d, name)


def find_fossil(storage, blob_id: bytes) -> str | None:
    """The name of a fossil of ``blob_id`` in a pending collection, if any."""
    intents, done = _collection_files(storage)
    for cid in sorted(intents | done, reverse=True):
        name = fossil_name(cid, blob_id)
        if storage.exists(name):
            return name
    return None


def read_moved(storage, blob_id: bytes) -> bytes | None:
    """The bytes of a blob not found in ``blobs/``: from a fossil, or from
    ``blobs/`` again -- it may have moved back meanwhile (a move writes its
    destination before deleting its source, so looking in the fossils and
    then in ``blobs/`` again cannot miss a blob moved once)."""
    for _ in range(3):
        name = find_fossil(storage, blob_id)
        if name is not None:
            try:
                return storage.read(name)
            except ObjectNotFound:
                pass
        try:
            return storage.read(fmt.blob_name(blob_id))
        except ObjectNotFound:
            pass
    return None


MOVED, PRESENT = 2, 1


def resurrect(storage, src: str, blob_id: bytes, *, drop_spare=None) -> int:
    """Move fossil ``src`` back to ``blobs/``.  True when ``blobs/`` holds
    the blob afterwards: :data:`MOVED` (moved now) or :data:`PRESENT`
    (already there); 0 when it is nowhere.

    When ``blobs/`` already has the blob the fossil is kept unless
    ``drop_spare`` (a callable settling the conflict: only a prune settling a
    *closed* collection passes one).  Anyone else may be looking at a
    collection still moving blobs -- the object in ``blobs/`` may be a copy
    that collection is about to delete, and its fossil the copy that
    survives.  Two objects claiming one name are never settled by the name
    alone: ``drop_spare(src, dst)`` reads both and keeps what verifies."""
    dst = fmt.blob_name(blob_id)
    try:
        storage.rename(src, dst)
        return MOVED
    except ObjectExists:
        if drop_spare is not None:
            drop_spare(src, dst, blob_id)
        return PRESENT
    except ObjectNotFound:
        return PRESENT if storage.exists(dst) else 0
    except StorageError:
        # E.g. credentials that may write but not delete (append-only backup
        # machines): the copy is back in blobs/, the fossil stays for prune.
        if storage.exists(dst):
            return MOVED
        raise


# ---- save sessions ---------------------------------------------------------------


def _marker_key(psk: bytes) -> bytes:
    return crypto.derive(CTX_SESSION_MARKER, psk)


def _marker_mac(key: bytes, body: dict) -> bytes:
    return crypto.keyed_hash(key, b"rekkord session v1\0", keymod.canonical(body))


def open_marker(raw: bytes, key: bytes, sid: str) -> dict | None:
    """The body of a session marker, or None when it is damaged, forged or
    malformed (any key holder can MAC one: its fields are checked too)."""
    try:
        d = schema.loads_object(raw, "session marker")
        body, mac = d["body"], bytes.fromhex(d["mac"])
    except (IntegrityError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(body, dict) or body.get("session") != sid:
        return None
    if not hmac.compare_digest(mac, _marker_mac(key, body)):
        return None
    num = schema.number(0, 2**62)
    if num(body.get("refreshed")) or num(body.get("started")) or type(body.get("ended", False)) is not bool:
        return None
    return body


class SaveSession:
    """Announces a save to prune for as long as it runs (a context manager).

    Use: enter before the save looks at the repository (before the
    generation is read and the blob cache validated), call
    :meth:`after_record` once the snapshot record is written, leave at the
    end.  ``refresh_interval=None`` disables the background refresh (tests
    call :meth:`refresh` themselves)."""

    def __init__(self, repo, *, refresh_interval: float | None = SESSION_REFRESH, clock=time.time):
        """``clock`` gives the ``started`` and ``refreshed`` fields of the
        marker, for people only: prune judges a marker by its modification
        time on the storage (:class:`StorageClock`)."""
        self.repo = repo
        self.storage = repo.storage
        self.id = crypto.random_bytes(16).hex()
        self.name = f"{SESSIONS}{self.id}"
        self.dead_name = self.name + DEAD_SUFFIX
        self.interval = refresh_interval
        self.clock = clock
        self.key = _marker_key(repo.key.psk)
        self.started = clock()
        self.started_mono = time.monotonic()
        self.times = StorageClock(self.storage, fallback=clock)
        self.started_storage: float | None = None  # the storage's time of the first marker
        self.closed_at_start: set[str] = set()
        self.collections_at_start: set[str] = set()
        self.generation_at_start = 0
        self.declared_dead = False
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False

    def _marker(self, ended: bool = False) -> bytes:
        body = {"v": 1, "session": self.id, "started": int(self.started), "refreshed": int(self.clock()),
                "n": self.refreshes, "interval": self.interval or 0}
        if ended:
            body["ended"] = True
        return json.dumps({"body": body, "mac": _marker_mac(self.key, body).hex()}, sort_keys=True).encode()

    def begin(self) -> "SaveSession":
        # Order matters (docs/maintenance.md): marker first, then the list of
        # closed collections, then (by the caller) the generation.
        self.storage.write(self.name, self._marker(), exclusive=True)
        self._active = True
        try:
            self.started_storage = self.times.mtime(self.name)
            intents, self.closed_at_start = _collection_files(self.storage)
            self.collections_at_start = intents | self.closed_at_start
            gens = generations(self.storage)
            self.generation_at_start = gens[-1] if gens else 0
        except BaseException:
            self.end()
            raise
        if self.interval:
            self._thread = threading.Thread(target=self._loop, name="rekkord-session", daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> "SaveSession":
        return self.begin()

    def __exit__(self, *exc):
        self.end()

    def refresh(self) -> None:
        self.refreshes += 1
        self.storage.write(self.name, self._marker(), exclusive=False)
        if self.storage.exists(self.dead_name):
            self.declared_dead = True

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except RekkordError:
                pass  # a missed refresh is safe: after_record checks the .dead marker

    def end(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        if self._active:
            self._active = False
            try:
                self.storage.delete(self.name)
            except RekkordError:
                # Credentials that may not delete (append-only backup
                # machines): say so in the marker; prune removes it.
                try:
                    self.storage.write(self.name, self._marker(ended=True), exclusive=False)
                except RekkordError:
                    pass  # a leftover marker only delays a prune until it times out
            try:
                self.storage.delete(self.dead_name)
            except RekkordError:
                pass

    def after_record(self, sid: str, refs: bytes | bytearray, cache=None) -> int:
        """Called once the snapshot record ``sid`` is written; ``refs`` is
        every blob id it references (32 bytes each).  Moves back the fossils
        of collections that closed after this save started, and, when a prune
        presumed the save dead, verifies every referenced blob.  Returns how
        many blobs were resurrected; raises :class:`StorageError` (after
        deleting the record) when a referenced blob is gone for good."""
        storage = self.storage
        resurrected = 0
        refset: set[bytes] | None = None

        def ref_set() -> set[bytes]:
            nonlocal refset
            if refset is None:
                mv = memoryview(refs)
                refset = {bytes(mv[o:o + 32]) for o in range(0, len(mv), 32)}
            return refset

        intents, done = _collection_files(storage)
        # A collection that closed after this save started must have named it
        # (its marker was written first) and so cannot have deleted anything
        # it uses.  One that did not name it, or that is gone already, means
        # the marker was missing (deleted by someone with storage access) or
        # the save was taken for dead: verify every referenced blob.
        suspicious = bool((self.collections_at_start - self.closed_at_start) - (intents | done))
        # Every collection that moved blobs bumped the generation: one that
        # came and went while this save ran (settled without waiting for it)
        # is gone from gc/ but not from generations/.
        later = [n for n in generations(storage) if n > self.generation_at_start]
        if later and set(range(self.generation_at_start + 1, max(later) + 1)) - set(later):
            suspicious = True  # a generation is missing
        moved = set()
        for n in later:
            try:
                cid = (_read_json(storage, f"{GENERATIONS}{n}") or {}).get("collection")
            except IntegrityError:
                cid = None
            if not isinstance(cid, str) or cid not in intents | done:
                suspicious = True
            elif cid in done:
                moved.add(cid)
        for cid in moved | (done - self.closed_at_start):
            d = read_signed(self.repo, f"{GC}{cid}.done")
            sessions = d.get("sessions") if d is not None else None
            if not isinstance(sessions, list) or self.id not in sessions:
                suspicious = True
        for cid in sorted(intents - self.closed_at_start):
            try:
                ids = read_collection_ids(storage, cid) or []
            except IntegrityError:
                ids = []
            mine = ref_set()
            for bid, _ in ids:
                try:
                    if bid in mine and storage.exists(fossil_name(cid, bid)):
                        if resurrect(storage, fossil_name(cid, bid), bid):
                            resurrected += 1
                except StorageError:
                    pass  # an optimisation only: the next prune moves it back

        dead = (suspicious or self.declared_dead or storage.exists(self.dead_name)
                or self.elapsed() > LONG_SAVE or time.monotonic() - self.started_mono > LONG_SAVE)
        if dead:
            try:
                lost = self._verify(ref_set())
                why = f"deleted {len(lost)} blobs it needed"
            except StorageError as e:
                lost, why = [], f"its blobs could not be verified ({e})"
                failed = True
            else:
                failed = bool(lost)
            if failed:
                try:
                    storage.delete(f"snapshots/{sid}")
                except RekkordError:
                    pass
                if cache is not None:
                    cache.begin()
                    cache.forget_blobs(lost, self.repo.index.extent_size)
                    cache.set_meta("listed", "0")
                    cache.commit()
                raise StorageError(f"snapshot {sid} withdrawn: a prune presumed this save dead (no refresh of "
                                   f"{self.name} in time, or the marker was removed) and {why}; run the save again")
        return resurrected

    def elapsed(self) -> float:
        """How long this save has run, by the storage's clock (it counts a
        suspended machine's sleep, which the monotonic clock does not); by
        ``clock`` where the storage cannot tell time."""
        if self.started_storage is not None and self.times.exact:
            return self.times.now() - self.started_storage
        return self.clock() - self.started

    def _verify(self, refs: set[bytes]) -> list[bytes]:
        present = set()
        for name, _ in self.storage.list("blobs/"):
            bid = fmt.blob_id_from_name(name)
            if bid is not None:
                present.add(bid)
        missing = [b for b in refs if b not in present]
        if not missing:
            return []
        fossils: dict[bytes, list[str]] = defaultdict(list)
        for name, _ in self.storage.list(FOSSILS):
            p = parse_fossil_name(name)
            if p is not None:
                fossils[p[1]].append(name)
        lost = []
        for bid in missing:
            if not any(resurrect(self.storage, n, bid) for n in fossils.get(bid, ())):
                lost.append(bid)
        return lost


# ---- prune ----------------------------------------------------------------------


@dataclass
class PruneReport:
    dry_run: bool = False
    snapshots: int = 0
    blobs_total: int = 0  # in blobs/ when step 1 listed them
    blobs_referenced: int = 0
    fossilised: int = 0  # moved to a new collection by this run (or would be)
    fossilised_bytes: int = 0
    deleted: int = 0  # fossils deleted by this run: space reclaimed
    deleted_bytes: int = 0
    resurrected: int = 0
    resurrected_bytes: int = 0
    rolled_back: int = 0  # fossils returned from interrupted collections
    collection: str | None = None  # the collection this run started
    collections_deleted: list[str] = field(default_factory=list)
    collections_pending: list[str] = field(default_factory=list)
    waiting_for_sessions: int = 0  # running saves that pending collections wait for
    sessions_declared_dead: int = 0
    conflicts: int = 0  # two objects under one blob's name (a fossil and a blob) settled by verifying both
    quarantined: list[str] = field(default_factory=list)  # set aside under quarantine/ (kept 30 days)
    temporaries_removed: int = 0  # leftovers of interrupted writes (killed saves)
    temporaries_bytes: int = 0
    reports_removed: int = 0  # failure reports older than 30 days (rekkord/report.py)
    parity_deleted: int = 0  # parity groups none of whose members exists any more (or would be)
    parity_deleted_bytes: int = 0
    generation: int = 0
    duration: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class _Walk:
    """Which blobs the snapshots reference (audit key: records and reference
    lists only).  Reference lists are read once per run, by id."""

    def __init__(self, repo, pool_size: int):
        self.repo = repo
        self.pool_size = pool_size
        self.reflists: dict[bytes, list[bytes]] = {}
        self.snap_refs: dict[str, list[bytes]] = {}

    def _read_reflist(self, copies: list[tuple[bytes, int]], sid: str) -> list[bytes]:
        bid = copies[0][0]
        try:
            data = self.repo.read_copies(copies, fmt.T_REFLIST, what=f" of snapshot {sid[:8]}")
            return [c for c, _ in fmt.unpack_reflist(data)]
        except IntegrityError as e:
            raise IntegrityError(f"prune refused: reference list {bid.hex()} of snapshot {sid} is unreadable "
                                 f"({e}); run rekkord check") from None

    def update(self) -> set[bytes]:
        """List the snapshots now; return every blob id they reference."""
        ids = self.repo.snapshot_ids()
        present = set(ids)
        for sid in list(self.snap_refs):
            if sid not in present:
                del self.snap_refs[sid]
        new = [sid for sid in ids if sid not in self.snap_refs]
        snaps = []
        for sid in new:
            try:
                snaps.append(self.repo.load_snapshot(sid))
            except SnapshotNotFound:
                continue  # forgotten meanwhile
            except IntegrityError as e:
                raise IntegrityError(f"prune refused: snapshot {sid} cannot be opened ({e}), so what it "
                                     f"references is unknown; run rekkord check, and forget it if it is "
                                     "garbage") from None
        todo = {}
        for s in snaps:
            for copies in s.copies_of("reflist"):
                if copies[0][0] not in self.reflists:
                    todo[copies[0][0]] = (copies, s.id)
        if todo:
            def one(item):
                bid, (copies, sid) = item
                return bid, self._read_reflist(copies, sid)

            if self.pool_size > 1 and len(todo) > 1:
                with ThreadPoolExecutor(self.pool_size) as pool:
                    results = list(pool.map(one, todo.items()))
            else:
                results = [one(i) for i in todo.items()]
            self.reflists.update(results)
        for s in snaps:
            refs = [b for b, _ in s.all_blobs("index")] + [b for b, _ in s.all_blobs("reflist")]
            for bid, _ in s.reflist:
                refs.extend(self.reflists[bid])
            self.snap_refs[s.id] = refs
        out: set[bytes] = set()
        for refs in self.snap_refs.values():
            out.update(refs)
        return out


class Pruner:
    """Runs one prune: step 2 for the collections that are ready, then step 1
    (a new collection), then step 2 for it at once if no save was running.

    ``progress(phase, done, total)`` reports long phases; ``threads=1`` runs
    every storage operation in the calling thread.  Every age it judges
    (sessions, tombstones, collections, the forget log, quarantine, failure
    reports) is measured by the storage's clock (:class:`StorageClock`)."""

    def __init__(self, repo, *, dry_run: bool = False, session_timeout: float = SESSION_TIMEOUT,
                 threads: int | None = None, progress: Callable[[str, int, int], None] | None = None,
                 refresh_interval: float | None = SESSION_REFRESH):
        repo.key.require("prune", "prune the repository")
        self.repo = repo
        self.storage = repo.storage
        self.dry_run = dry_run
        self.timeout = session_timeout
        self.threads = threads or max(4, min(repo.storage.connections, 16))
        self.progress = progress
        self.times = StorageClock(repo.storage)
        self.refresh_interval = refresh_interval  # of the marker announcing a collection being built
        self.key = _marker_key(repo.key.psk)
        self.report = PruneReport(dry_run=dry_run)
        self.walk = _Walk(repo, self.threads)
        self._session_state: dict[str, str] = {}
        self._lock = threading.Lock()
        self._kept: set[str] = set()  # fossils left in place by a conflict this run could not settle

    # ---- helpers -----------------------------------------------------------

    def _tick(self, phase: str, done: int, total: int):
        if self.progress is not None:
            self.progress(phase, done, total)

    def _map(self, fn, items: list, phase: str):
        total = len(items)
        if self.threads <= 1 or total <= 1:
            out = []
            for i, x in enumerate(items):
                out.append(fn(x))
                if i % 256 == 255:
                    self._tick(phase, i + 1, total)
        else:
            with ThreadPoolExecutor(self.threads) as pool:
                out = []
                for i, r in enumerate(pool.map(fn, items)):
                    out.append(r)
                    if i % 256 == 255:
                        self._tick(phase, i + 1, total)
        self._tick(phase, total, total)
        return out

    def _fossils_by_collection(self, cid: str | None = None) -> dict[str, dict[bytes, tuple[str, int]]]:
        out: dict[str, dict[bytes, tuple[str, int]]] = defaultdict(dict)
        for name, size in self.storage.list(f"{FOSSILS}{cid}/" if cid else FOSSILS):
            p = parse_fossil_name(name)
            if p is not None:
                out[p[0]][p[1]] = (name, size)
        return out

    def session_state(self, sid: str, *, fresh: bool = False) -> str:
        """'running', 'finished' or 'dead' (declared dead now if it timed out)."""
        if not fresh and sid in self._session_state:
            return self._session_state[sid]
        name = f"{SESSIONS}{sid}"
        try:
            raw = self.storage.read(name, 0, schema.MAX_SMALL_OBJECT + 1)
        except ObjectNotFound:
            state = "finished"
        else:
            # Only a tombstone signed by a key that may prune counts: a write
            # key (or the storage) cannot declare a running save dead.
            if read_signed(self.repo, name + DEAD_SUFFIX) is not None:
                state = "dead"
            else:
                body = open_marker(raw, self.key, sid)
                # Alive: the marker was written (refreshed) within the timeout,
                # by the storage's clock -- not by the time the saver wrote into
                # it, which is the saver's clock (or anything a key holder likes).
                age = None if body is None else self.times.age(name, float(body.get("refreshed", 0)))
                if body is not None and body.get("ended"):
                    state = "finished"  # (a save that could not delete its marker)
                elif body is not None and age is None:
                    state = "finished"  # gone since it was read: the save ended
                elif age is not None and age < self.timeout:
                    state = "running"
                else:
                    state = "dead"
                    self.report.sessions_declared_dead += 1
                    if not self.dry_run:
                        tomb = name + DEAD_SUFFIX
                        body = {"v": 1, "session": sid, "time": int(self.times.now()), "by": self.repo.key.kid}
                        try:
                            self.storage.write(tomb, signed_object(self.repo.key, tomb, body), exclusive=True)
                        except ObjectExists:
                            pass  # (an unsigned one: the save still sees it and verifies its blobs)
        self._session_state[sid] = state
        return state

    def _list_sessions(self) -> list[str]:
        out = []
        for name, _ in self.storage.list(SESSIONS):
            sid = name[len(SESSIONS):]
            if "/" not in sid and not sid.endswith(DEAD_SUFFIX):
                out.append(sid)
        return out

    def _move_back(self, cid: str, items: list[tuple[bytes, str, int]], *,
                   drop_spare: bool = True) -> tuple[int, int]:
        """Resurrect fossils (id, name, size); returns (count, bytes) moved.
        Spare fossils (``blobs/`` has the blob) are settled by
        :meth:`_settle_spare` unless the collection is one still being built."""
        if self.dry_run or not items:
            return len(items), sum(s for _, _, s in items)
        resolver = self._settle_spare if drop_spare else None
        got = self._map(lambda it: resurrect(self.storage, it[1], it[0], drop_spare=resolver), items,
                        f"resurrecting from {cid}")
        moved = [it for it, r in zip(items, got) if r == MOVED]
        return len(moved), sum(s for _, _, s in moved)

    # ---- two objects, one name ---------------------------------------------------

    def _verdict(self, raw: bytes | None, bid: bytes) -> int:
        """2: opens and matches its id (keys that can read); 1: its MAC
        verifies; 0: invalid or unreadable."""
        if raw is None:
            return 0
        codec = self.repo.codec
        if codec.verify(bid, raw):
            return 0
        if codec.convergent:
            return 2  # (format v2: bytes that hash to their name are the right bytes)
        if self.repo.key.can("read"):
            try:
                codec.open(bid, raw)
                return 2
            except (IntegrityError, RekkordError):
                return 0
        return 1

    def _same_content(self, a: bytes, b: bytes, bid: bytes) -> bool:
        """Two sealings that this key can open (any key opens reference
        lists) holding the same plaintext."""
        try:
            return self.repo.codec.open(bid, a) == self.repo.codec.open(bid, b)
        except RekkordError:
            return False

    def _read_bounded(self, name: str) -> bytes | None:
        try:
            return self.repo.read_raw(name)
        except (ObjectNotFound, IntegrityError):
            return None

    def _settle_spare(self, fossil: str, blob: str, bid: bytes) -> None:
        """A fossil whose blob is back in ``blobs/``.  Two objects claiming
        one name are never settled by the name alone: the fossil is dropped
        only when it holds the same bytes, or when both open and match the id
        (a key that can read); when only the fossil verifies it replaces the
        one in ``blobs/``; otherwise (the one in ``blobs/`` verifies at least
        as well: an audit key cannot tell two valid MACs apart) the fossil is
        set aside in ``quarantine/``, where a check that finds the blob
        spoiled looks for a good copy."""
        a, b = self._read_bounded(blob), self._read_bounded(fossil)
        if b is None:
            return
        if a is not None and (a == b or self._same_content(a, b, bid)):
            self.storage.delete(fossil)
            return
        va, vb = self._verdict(a, bid), self._verdict(b, bid)
        with self._lock:
            self.report.conflicts += 1
        if va == vb == 2:
            self.storage.delete(fossil)  # two genuine sealings of the same content
        elif va >= vb:
            self._quarantine(fossil)
        else:
            self._quarantine(blob)
            try:
                self.storage.rename(fossil, blob)
            except ObjectExists:
                with self._lock:  # someone put a copy back meanwhile; the fossil stays for the next prune
                    self._kept.add(fossil)

    def _quarantine(self, name: str) -> None:
        """Set an object aside (kept as evidence for a while, never read)."""
        dst = quarantine_name(name, self.times.now())
        try:
            self.storage.rename(name, dst)
            self.report.quarantined.append(name)
        except ObjectNotFound:
            pass

    # ---- the run -------------------------------------------------------------

    def _closed(self, cid: str) -> tuple[dict, dict] | None:
        """(manifest, closing) of a collection closed by a key that may
        prune: both signed, both naming this collection.  Anything else is
        not a closed collection (and is rolled back, never deleted from)."""
        done = read_signed(self.repo, f"{GC}{cid}.done")
        if done is None or done.get("collection") != cid:
            return None
        manifest = read_signed(self.repo, f"{GC}{cid}.fossils", schema.MAX_LIST_OBJECT)
        if manifest is None or manifest.get("collection") != cid:
            return None
        if not isinstance(done.get("sessions", []), list) \
                or not all(isinstance(x, str) for x in done.get("sessions", [])):
            return None
        return manifest, done

    def run(self) -> PruneReport:
        started = time.monotonic()
        storage = self.storage
        rep = self.report
        if not self.dry_run:
            storage.defer_sync()
        intents, done_names = _collection_files(storage)
        fossils = self._fossils_by_collection()
        closed: dict[str, tuple[dict, dict]] = {}
        for cid in sorted(done_names):
            c = self._closed(cid)
            if c is not None:
                closed[cid] = c
        # Collections not validly closed: interrupted (or, if prunes overlap,
        # still being built), or forged.  Roll back: every fossil whose blob
        # is not in blobs/ goes back.  Spare fossils stay until the collection
        # is clearly abandoned: a prune still copying may delete the blobs/
        # original.
        incomplete = sorted((intents | done_names | set(fossils)) - set(closed))
        if incomplete:
            in_blobs = {fmt.blob_id_from_name(n) for n, _ in storage.list("blobs/")}
        for cid in incomplete:
            owner = None
            if cid in intents:
                manifest = read_signed(self.repo, f"{GC}{cid}.fossils", schema.MAX_LIST_OBJECT)
                owner = manifest.get("owner") if manifest is not None else None
                if isinstance(owner, str) and self.session_state(owner) == "running":
                    continue  # still being built by another prune
            items = [(bid, n, s) for bid, (n, s) in fossils.get(cid, {}).items() if bid not in in_blobs]
            rep.rolled_back += self._move_back(cid, items, drop_spare=False)[0]
            spares = [(bid, n) for bid, (n, _) in fossils.get(cid, {}).items() if bid in in_blobs]
            # Spare copies go once the owner is known to be gone (without an
            # owner to ask: once the collection is clearly abandoned).
            abandoned = isinstance(owner, str) or self._collection_age(cid) > DEAD_KEEP
            if self.dry_run or (spares and not abandoned):
                continue
            storage.flush()
            for bid, n in spares:
                self._settle_spare(n, fmt.blob_name(bid), bid)
            if not any(n in self._kept for _, n in spares):
                storage.delete(f"{GC}{cid}.fossils")
                storage.delete(f"{GC}{cid}.done")
        # Which closed collections may delete: every session they name has
        # finished or is dead -- judged before the snapshots are listed.
        ready = [cid for cid, (_, d) in closed.items() if self._all_finished(d.get("sessions", []))]
        refs = self.walk.update()
        for cid in sorted(closed):
            self._settle(cid, fossils.get(cid, {}), refs, closed[cid][0], delete=cid in ready)
        # Step 1: a new collection of what nothing references.
        listing = {}
        for name, size in storage.list("blobs/"):
            bid = fmt.blob_id_from_name(name)
            if bid is not None:
                listing[bid] = size
        rep.blobs_total = len(listing)
        rep.snapshots = len(self.walk.snap_refs)
        rep.blobs_referenced = len(refs)
        unused = sorted(b for b in listing if b not in refs)
        rep.fossilised = len(unused)
        rep.fossilised_bytes = sum(listing[b] for b in unused)
        if unused and not self.dry_run:
            cid = self._collect(unused, listing)
            # Step 2 at once when no save that could have seen the blobs runs.
            c = self._closed(cid)
            if c is not None and self._all_finished(c[1].get("sessions", []), fresh=True):
                refs = self.walk.update()
                self._settle(cid, self._fossils_by_collection(cid).get(cid, {}), refs, c[0], delete=True)
            else:
                rep.collections_pending.append(cid)
                if c is not None:
                    closed[cid] = c
        elif unused and not any(self.session_state(s) == "running" for s in self._list_sessions()):
            # Dry run: with no save running, a real run would delete them at once.
            rep.deleted += len(unused)
            rep.deleted_bytes += rep.fossilised_bytes
        self._prune_parity()
        if not self.dry_run:
            self._housekeeping()
        gens = generations(storage)
        rep.generation = gens[-1] if gens else 0
        waiting = set()
        for cid in rep.collections_pending:
            d = closed[cid][1] if cid in closed else {}
            waiting.update(s for s in d.get("sessions", []) if self._session_state.get(s) == "running")
        rep.waiting_for_sessions = len(waiting)
        rep.duration = round(time.monotonic() - started, 3)
        return rep

    def _all_finished(self, sessions: Iterable[str], fresh: bool = False) -> bool:
        # Every session is looked at (so that dead ones get their tombstone).
        states = [self.session_state(s, fresh=fresh) for s in sessions]
        return all(s != "running" for s in states)

    def _settle(self, cid: str, fossils: dict[bytes, tuple[str, int]], refs: set[bytes], manifest: dict, *,
                delete: bool):
        """Step 2 for one closed collection: resurrect what is referenced;
        when ``delete``, delete the rest -- only fossils its signed manifest
        lists, with the size it recorded -- and the collection."""
        rep = self.report
        listed = dict(_manifest_ids(manifest, f"{GC}{cid}.fossils"))
        back = [(bid, n, s) for bid, (n, s) in fossils.items() if bid in refs or bid not in listed]
        # (A fossil the manifest does not list was not put there by this
        # collection: it goes back if blobs/ lacks it, never deleted.)
        n, size = self._move_back(cid, [x for x in back if x[0] in refs])
        rep.resurrected += n
        rep.resurrected_bytes += size
        self._move_back(cid, [x for x in back if x[0] not in refs])
        if not delete:
            rep.collections_pending.append(cid)
            return
        doomed = [(n, s) for bid, (n, s) in fossils.items() if bid not in refs and listed.get(bid) == s]
        kept = [n for bid, (n, s) in fossils.items() if bid not in refs and bid in listed and listed[bid] != s]
        rep.deleted += len(doomed)
        rep.deleted_bytes += sum(s for _, s in doomed)
        if self.dry_run:
            rep.collections_deleted.append(cid)
            return
        self.storage.flush()  # resurrected blobs are durable before any fossil goes
        self._map(lambda it: self.storage.delete(it[0]), doomed, f"deleting fossils of {cid}")
        for n in kept:  # not the bytes the collection moved: set aside, not deleted
            self._quarantine(n)
        if any(n in self._kept for n, _ in fossils.values()):
            rep.collections_pending.append(cid)  # spares kept in a conflict: settled again next time
            return
        rep.collections_deleted.append(cid)
        self.storage.delete(f"{GC}{cid}.fossils")
        self.storage.delete(f"{GC}{cid}.done")

    def _collect(self, unused: list[bytes], listing: dict[bytes, int]) -> str:
        # The collecting prune announces itself like a save: a prune finding
        # this collection unfinished leaves it alone while the owner runs,
        # and rolls it back completely once the owner is gone.
        with SaveSession(self.repo, refresh_interval=self.refresh_interval) as owner:
            return self._collect_as(owner, unused, listing)

    def _collect_as(self, owner: "SaveSession", unused: list[bytes], listing: dict[bytes, int]) -> str:
        storage = self.storage
        rep = self.report
        key = self.repo.key
        cid = new_collection_id(self.times.now())
        rep.collection = cid
        body = {"v": 1, "collection": cid, "created": int(self.times.now()), "owner": owner.id, "count": len(unused),
                "bytes": rep.fossilised_bytes,
                "fossils": base64.b64encode(fmt.pack_reflist([(b, listing[b]) for b in unused])).decode()}
        name = f"{GC}{cid}.fossils"
        storage.write(name, signed_object(key, name, body), exclusive=True)
        # Move: copy everything, make the copies durable, then delete the originals.
        if type(storage).rename is not _base_rename():
            def move(bid):
                try:
                    storage.rename(fmt.blob_name(bid), fossil_name(cid, bid))
                except (ObjectNotFound, ObjectExists):
                    pass  # gone meanwhile / something planted under the fossil's name: the blob stays

            self._map(move, unused, "fossilising")
        else:
            def copy(bid) -> bool:
                try:
                    data = storage.read(fmt.blob_name(bid))
                except ObjectNotFound:
                    return False  # gone meanwhile
                try:
                    storage.write(fossil_name(cid, bid), data, exclusive=True)
                except ObjectExists:
                    # Only a copy of these very bytes lets the original go.
                    return self._read_bounded(fossil_name(cid, bid)) == data
                return True

            copied = self._map(copy, unused, "fossilising")
            storage.flush()
            if owner.declared_dead or storage.exists(owner.dead_name):
                # Another prune took this one for dead and may have rolled the
                # collection back, dropping the copies: keep the originals.
                raise StorageError(f"prune stopped: collection {cid} was presumed dead by another prune "
                                   f"(no refresh of {owner.name} in time); run prune again")
            self._map(lambda bid: storage.delete(fmt.blob_name(bid)),
                      [b for b, ok in zip(unused, copied) if ok], "fossilising")
        storage.flush()
        gen = bump_generation(storage, cid, self.times.now())
        storage.flush()
        sessions = [sid for sid in self._list_sessions() if sid != owner.id]
        # Snapshots written while we moved may reference fossils: move those
        # back now rather than at the next prune.
        refs = self.walk.update()
        mine = self._fossils_by_collection(cid).get(cid, {})
        back = [(bid, n, s) for bid, (n, s) in mine.items() if bid in refs]
        if back:
            n, size = self._move_back(cid, back)
            self.report.resurrected += n
            self.report.resurrected_bytes += size
            storage.flush()
        done = {"v": 1, "collection": cid, "generation": gen, "closed": int(self.times.now()),
                "sessions": sorted(sessions), "snapshots": sorted(self.walk.snap_refs)}
        name = f"{GC}{cid}.done"
        storage.write(name, signed_object(key, name, done), exclusive=False)
        storage.flush()
        return cid

    def _prune_parity(self):
        """Delete the parity groups (rekkord/parity.py) none of whose members
        is in ``blobs/`` or among the fossils any more.  The groups are listed
        before the blobs: a save writes a group only after its members, so a
        group listed here whose members the later listing lacks lost them to
        a prune, never to a save still running.  Only a group whose manifest
        reads is judged (a damaged one is left to check)."""
        from . import parity as par

        storage = self.storage
        groups = {}
        for obj, size in storage.list(par.PREFIX):
            name = par.name_from_object(obj)
            if name is not None:
                groups[name] = size
        if not groups:
            return
        present = {fmt.blob_id_from_name(n) for n, _ in storage.list("blobs/")}
        present |= {p[1] for p in (parse_fossil_name(n) for n, _ in storage.list(FOSSILS)) if p is not None}
        idx = par.ParityIndex(storage, threads=self.threads)
        doomed = [(par.object_name(name), groups[name]) for name, g in idx.groups(groups).items()
                  if not any(m in present for m, _ in g.members)]
        self.report.parity_deleted = len(doomed)
        self.report.parity_deleted_bytes = sum(s for _, s in doomed)
        if doomed and not self.dry_run:
            self._map(lambda it: storage.delete(it[0]), doomed, "deleting parity groups")

    def _housekeeping(self):
        storage = self.storage
        from .forget import FORGOTTEN

        self.report.temporaries_removed, self.report.temporaries_bytes = storage.remove_temporaries(TEMP_KEEP)

        times = self.times
        # Ages by the storage's clock: an object's modification time against
        # the storage's present (docs/maintenance.md, "Clocks").  Where the
        # storage cannot tell, the time in the name (forget log, quarantine).
        for name, _, mtime in times.list_times(FORGOTTEN):
            stamp = _name_time(name[len(FORGOTTEN):])
            if not stamp:
                continue  # not one of ours
            # (The name has the forgetting machine's time: for people only.)
            if times.now() - (mtime if mtime is not None else stamp) > FORGET_LOG_KEEP:
                storage.delete(name)
        for name, _, mtime in times.list_times(QUARANTINE):
            # Quarantined by a rename, which keeps the object's own (older)
            # time: the name says when, by the storage's clock of the prune or
            # check that set it aside.  The later of the two decides.
            stamp = _name_time(name[len(QUARANTINE):])
            if stamp and times.now() - max(stamp, mtime or 0.0) > QUARANTINE_KEEP:
                storage.delete(name)

        from .report import prune_reports

        self.report.reports_removed = prune_reports(self.repo, times)
        gens = generations(storage)
        if len(gens) > GENERATIONS_KEPT:
            for n in gens[: len(gens) - GENERATIONS_KEPT]:
                storage.delete(f"{GENERATIONS}{n}")
        markers: dict[str, float | None] = {}
        tombs: dict[str, float | None] = {}
        for name, _, mtime in times.list_times(SESSIONS):
            rest = name[len(SESSIONS):]
            if rest.endswith(DEAD_SUFFIX):
                tombs[rest[: -len(DEAD_SUFFIX)]] = mtime
            else:
                markers[rest] = mtime
        for sid in list(markers):
            try:
                body = open_marker(storage.read(f"{SESSIONS}{sid}", 0, schema.MAX_SMALL_OBJECT + 1), self.key, sid)
            except ObjectNotFound:
                continue
            if body is not None and body.get("ended"):
                storage.delete(f"{SESSIONS}{sid}")
                storage.delete(f"{SESSIONS}{sid}{DEAD_SUFFIX}")
                tombs.pop(sid, None)
        for sid, tomb_mtime in tombs.items():
            if sid not in markers:
                # A marker goes only when its save ends (after its last look
                # at the tombstone): a tombstone without one is useless.
                storage.delete(f"{SESSIONS}{sid}{DEAD_SUFFIX}")
                continue
            d = read_signed(self.repo, f"{SESSIONS}{sid}{DEAD_SUFFIX}")
            if d is None:
                continue  # not signed by a pruning key: ignored by prune (the save verifies and removes it)
            written = float(d.get("time", 0) if type(d.get("time")) in (int, float) else 0)
            if times.now() - (tomb_mtime if tomb_mtime is not None else written) < DEAD_KEEP:
                continue
            try:
                body = open_marker(storage.read(f"{SESSIONS}{sid}", 0, schema.MAX_SMALL_OBJECT + 1), self.key, sid)
            except ObjectNotFound:
                body = None
            if body is not None:
                age = times.age(f"{SESSIONS}{sid}", float(body.get("refreshed", 0)))
                if age is not None and age < self.timeout:
                    continue  # still refreshed: the save lives and will need its tombstone
            storage.delete(f"{SESSIONS}{sid}")
            storage.delete(f"{SESSIONS}{sid}{DEAD_SUFFIX}")

    def _collection_age(self, cid: str) -> float:
        """How long ago collection ``cid`` last wrote anything, by the
        storage's clock: its newest bookkeeping object or fossil (a fossil
        moved by a rename keeps its blob's older time, so the newest counts),
        and never older than its id says."""
        times = [t for _, _, t in self.times.list_times(f"{GC}{cid}.")]
        times += [t for _, _, t in self.times.list_times(f"{FOSSILS}{cid}/")]
        newest = max([_collection_time(cid)] + [t for t in times if t is not None])
        return self.times.now() - newest


def _base_rename():
    from .storage.base import Storage

    return Storage.rename


def prune(repo, **kw) -> PruneReport:
    return Pruner(repo, **kw).run()

"""Verifying a repository (docs/integrity.md).

Levels:

* **structure** (default; audit key or better): the config (verified when the
  repository is opened), every certificate, revocation and repair hint; every
  snapshot record opened and its signature checked against a certified key
  that was not revoked before the snapshot appeared; the reference graph
  walked (index and reference-list blobs named by each record, reference
  lists opened with the psk-derived list key); every referenced blob present
  with the recorded size, read, and its MAC and type verified; unreferenced
  blobs MAC-verified too (a forged or misplaced object is caught even when
  nothing references it); objects outside the layout reported.  Nothing is
  decrypted with the data key: no file content or name is seen.
* **read-data** (read, full or admin key): also decrypts, decompresses and
  re-hashes every referenced blob against its id, and reads every index to
  prove that each file's blobs are in its snapshot's reference list (the
  graph prune relies on is complete).
* **subset** (``--read-data-subset N%|SIZE``): structure without reading every
  blob, plus a part of the blobs read in full (MAC only with an audit key),
  least recently verified first, remembered in the local cache, so that a
  nightly run covers the whole repository over a period.

Healing: blobs found missing or damaged are forgotten by this key's cache and
published in a repair hint (``repairs/<random>``, MACed with a psk-derived
key) that every saver reads; a saver that still has the data uploads it again
(save.py).  Hints whose blobs check finds intact again are deleted.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import format as fmt, keys as keymod
from .cache import Cache
from .errors import (
    ExitCode,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    RekkordError,
    SnapshotNotFound,
    StorageError,
    UnsupportedFormat,
    UsageError,
)
from .index import F_CHANGED, F_PARTIAL, F_UNREADABLE
from .repository import Repository, Snapshot
from .format_v2 import name_of
from .snapshot import describe_loss, iter_entries

#: Names the repository layout uses (docs/format.md); anything else is reported.
KNOWN_NAMES = ("config",)
KNOWN_PREFIXES = ("keys/", "revoked/", "snapshots/", "blobs/", "generations/", "repairs/", "sessions/",
                  "fossils/", "gc/", "quarantine/", "reports/",
                  "annotations/", "parity/")

# Problem kinds.  All but UNVERIFIED are damage (exit 4); UNVERIFIED means the
# storage failed to answer, so the check is incomplete (exit 7).
MISSING = "missing"
DAMAGED = "damaged"
WRONG_SIZE = "wrong-size"
UNTRUSTED = "untrusted"
UNEXPECTED = "unexpected"
REPLAYED = "replayed"
INCOMPLETE_GRAPH = "incomplete-graph"
INVALID = "invalid"  # well sealed, but content no genuine save writes (forged by a key holder)
UNVERIFIED = "unverified"

WHAT_BLOB = {fmt.T_DATA: "data blob", fmt.T_INDEX: "index blob", fmt.T_REFLIST: "reference list"}


@dataclass
class Problem:
    object: str  # storage name: blobs/ab/ab12…, snapshots/<id>, keys/<kid>, config, …
    what: str  # data blob, index blob, reference list, snapshot record, key certificate, …
    kind: str
    message: str
    snapshots: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # only with a key that can read names
    #: What its content can still be read from (an intact copy, a parity
    #: group): the snapshots lost nothing, the repository lost redundancy.
    recoverable_from: str | None = None

    @property
    def damage(self) -> bool:
        return self.kind != UNVERIFIED

    def to_json(self) -> dict:
        return {"object": self.object, "what": self.what, "kind": self.kind, "message": self.message,
                "snapshots": self.snapshots, "paths": self.paths, "recoverable_from": self.recoverable_from}

    def __str__(self) -> str:
        s = f"{self.what} {self.object}: {self.message}"
        if self.snapshots:
            more = f" and {len(self.snapshots) - 10} more" if len(self.snapshots) > 10 else ""
            s += f" (snapshots: {', '.join(x[:8] for x in self.snapshots[:10])}{more})"
        if self.paths:
            more = f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else ""
            s += f" (files: {', '.join(self.paths[:5])}{more})"
        return s


@dataclass
class CheckReport:
    level: str = "structure"
    snapshots: int = 0
    blobs_referenced: int = 0
    blobs_checked: int = 0  # referenced blobs found present with the recorded size
    blobs_read: int = 0  # blobs read whole (MAC verified)
    blobs_decrypted: int = 0  # of which decrypted and re-hashed against their ids
    bytes_read: int = 0
    orphans: int = 0  # blobs no snapshot references (leftovers of interrupted saves, forget)
    problems: list[Problem] = field(default_factory=list)
    damaged_snapshots: list[str] = field(default_factory=list)
    #: Snapshots that lost nothing but redundancy: a copy of an index blob or
    #: reference list, or a data blob parity rebuilds (check --repair writes them again).
    degraded_snapshots: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # what check --repair wrote again, one line each
    parity_groups: int = 0  # parity groups found (repositories with parity)
    parity_rebuilt: int = 0  # lost or damaged data blobs their parity group rebuilds
    healed_snapshots: list[str] = field(default_factory=list)  # damaged at the previous check, clean now
    vanished_snapshots: list[str] = field(default_factory=list)  # seen by the previous check, gone now
    snapshot_info: dict = field(default_factory=dict)  # id -> channel, time, host (damaged ones)
    repair_hint: str | None = None  # the repair hint written by this run
    repairs_removed: int = 0  # hints deleted because what they named is intact again
    notes: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if any(p.damage for p in self.problems):
            return "damaged"
        return "incomplete" if self.problems else "clean"

    @property
    def exit_code(self) -> int:
        return {"clean": ExitCode.OK, "damaged": ExitCode.DAMAGED, "incomplete": ExitCode.STORAGE}[self.status]

    def to_json(self) -> dict:
        return {
            "ok": self.ok, "status": self.status, "level": self.level, "snapshots": self.snapshots,
            "blobs_referenced": self.blobs_referenced, "blobs_checked": self.blobs_checked,
            "blobs_read": self.blobs_read, "blobs_decrypted": self.blobs_decrypted,
            "bytes_read": self.bytes_read, "orphans": self.orphans,
            "damaged_snapshots": [{"id": s, **self.snapshot_info.get(s, {})} for s in self.damaged_snapshots],
            "degraded_snapshots": [{"id": s, **self.snapshot_info.get(s, {})} for s in self.degraded_snapshots],
            "repaired": self.repaired, "parity_groups": self.parity_groups, "parity_rebuilt": self.parity_rebuilt,
            "healed_snapshots": self.healed_snapshots, "vanished_snapshots": self.vanished_snapshots,
            "repair_hint": self.repair_hint, "repairs_removed": self.repairs_removed,
            "problems": [p.to_json() for p in self.problems], "notes": self.notes, "duration": self.duration,
        }


def parse_subset(spec: str | None) -> tuple[str, float] | None:
    """``"10%"`` → ("fraction", 0.1); ``"500M"`` → ("bytes", 500e6)."""
    if spec is None or spec == "":
        return None
    s = spec.strip().upper()
    try:
        if s.endswith("%"):
            v = float(s[:-1])
            if not 0 <= v <= 100:
                raise ValueError
            return "fraction", v / 100
        if s.endswith("IB"):
            s = s[:-2]
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        else:
            s = s[:-1] if s.endswith("B") else s
            mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
        if s[-1:] in mult:
            v = float(s[:-1]) * mult[s[-1]]
        else:
            v = float(s)
        if v < 0:
            raise ValueError
        return "bytes", v
    except (ValueError, IndexError):
        raise UsageError(f"--read-data-subset: {spec!r} is neither a percentage (10%) nor a size (500M, 2GiB)") \
            from None


# --- the checker -----------------------------------------------------------------


class Checker:
    def __init__(self, repo: Repository, cache: Cache | None = None, *, read_data: bool = False,
                 subset: str | None = None, threads: int | None = None, progress=None, heal: bool = True,
                 repair: bool = False):
        repo.key.require("check", "check the repository")
        if read_data and not repo.key.can("read"):
            raise PermissionDenied(f"{keymod.article(repo.key.role)} {repo.key.role} key cannot decrypt data (--read-data); check without it "
                                   "verifies every blob's MAC, or use --read-data-subset for a part")
        self.repo = repo
        self.cache = cache
        if cache is not None:
            cache.set_extent_size(repo.index.extent_size)
        self.subset = parse_subset(subset)
        self.read_data = read_data and self.subset is None
        self.can_read = repo.key.can("read")
        self.threads = threads or max(4, min(repo.storage.connections, 16))
        self.progress = progress
        self.heal = heal
        #: Write again what can be rebuilt exactly: a lost copy of an index
        #: blob or reference list from another copy, a data blob from parity.
        self.repair = repair
        self.siblings: dict[bytes, list[bytes]] = {}  # a copy -> the copies stored with it (same group, in order)
        self.report = CheckReport(level="read-data" if self.read_data else "subset" if self.subset else "structure")
        self.lock = threading.Lock()
        self._last_progress = 0.0
        self.names: dict[bytes, str] = {}  # storage names of referenced blobs that are not blobs/xx/<id>
        self.spoiled: set[bytes] = set()  # MAC valid, content wrong (found by decrypting)
        self.resized: dict[bytes, int] = {}  # present with a size other than recorded: verified before judged
        self.keys: dict[bytes, bytes] = {}  # format v2: data blob -> its key (from the indexes, --read-data)
        self.size_conflicts: dict[bytes, set[int]] = {}
        self._fossil_sizes: dict[bytes, int] = {}
        self.empty_leftovers: list[str] = []

    # ---- helpers -------------------------------------------------------------------

    def blob_name(self, bid: bytes) -> str:
        return self.names.get(bid) or fmt.blob_name(bid)

    def problem(self, obj: str, what: str, kind: str, msg: str, snaps: Iterable[str] = ()) -> Problem:
        p = Problem(obj, what, kind, msg, sorted(set(snaps)))
        with self.lock:
            self.report.problems.append(p)
        return p

    def _tick(self):
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress > 0.2:
            self._last_progress = now
            self.progress(self.report)

    def _parallel(self, fn, items: Iterable) -> None:
        """Run ``fn`` over ``items`` on the pool with a bounded number in flight."""
        sem = threading.BoundedSemaphore(self.threads * 4)
        errors: list[BaseException] = []

        def run(x):
            try:
                fn(x)
            except BaseException as e:  # noqa: BLE001 — re-raised below, in the caller's thread
                errors.append(e)
            finally:
                sem.release()

        with ThreadPoolExecutor(self.threads, thread_name_prefix="rekkord-check") as pool:
            for x in items:
                if errors:
                    break
                sem.acquire()
                pool.submit(run, x)
        if errors:
            raise errors[0]

    # ---- the run -----------------------------------------------------------------------

    def run(self) -> CheckReport:
        started = time.monotonic()
        repo = self.repo
        r = self.report
        listing: dict[str, int] = dict(repo.storage.list(""))
        blobs: dict[bytes, int] = {}
        self.fossils: dict[bytes, str] = {}  # blobs a prune collected (rekkord/gc.py): still readable
        for name, size in listing.items():
            if name.startswith("fossils/"):
                from .gc import parse_fossil_name

                parsed = parse_fossil_name(name)
                if parsed is None:
                    self.problem(name, "object", UNEXPECTED, "not a fossil name; not part of the repository format")
                else:
                    self.fossils[parsed[1]] = name
                    self._fossil_sizes[parsed[1]] = size
            elif name.startswith("blobs/"):
                bid = fmt.blob_id_from_name(name)
                if bid is None:
                    self.problem(name, "object", UNEXPECTED, "not a blob name; not part of the repository format")
                else:
                    blobs[bid] = size
            elif name not in KNOWN_NAMES and not name.startswith(KNOWN_PREFIXES):
                self.problem(name, "object", UNEXPECTED, "not part of the repository format (a copy, a "
                             "leftover or planted by someone with storage access)")
        self._check_keys(listing)
        snaps = self._load_snapshots(listing)
        from . import tags as tagmod

        tagmod.annotations(self.repo, lambda n, m: self.problem(n, "tag annotation", UNTRUSTED, m))
        r.snapshots = len(snaps)
        by_id = {s.id: s for s in snaps}
        refs, kinds, direct, reflists = self._walk(snaps, blobs)
        r.blobs_referenced = len(refs)
        # Presence and size, from the listing.
        bad: dict[bytes, Problem] = {}
        present = []
        fossil_refs = 0
        for bid, size in refs.items():
            what = WHAT_BLOB[kinds.get(bid, fmt.T_DATA)]
            actual = blobs.get(bid)
            if bid in bad:
                continue
            if actual is None and bid not in self.fossils:
                actual = self._confirm(bid, blobs)
            if actual is None and bid in self.fossils:
                actual = self._fossil_sizes[bid]  # collected by a prune while a save used it
                self.names[bid] = self.fossils[bid]
                fossil_refs += 1
            if actual is None:
                bad[bid] = self.problem(self.blob_name(bid), what, MISSING, "missing")
            elif actual != size or bid in self.size_conflicts:
                # Recorded with another size (or with several): damage, unless
                # the object verifies -- a spoiled object replaced by a good
                # copy of the same content (format v1 records the stored size
                # the save found, and a forgery's size is not the honest one).
                self.resized[bid] = actual
                present.append(bid)
            else:
                present.append(bid)
        r.blobs_checked = len(present)
        if fossil_refs:
            r.notes.append(f"{fossil_refs} referenced blobs exist only as fossils (collected by a prune while "
                           "a save used them); the next prune moves them back")
        for bid, e in self._failed_reflist.items():  # read (and found wanting) by the walk
            name = self.blob_name(bid)
            if isinstance(e, ObjectNotFound):
                bad[bid] = self.problem(name, "reference list", MISSING, "missing (deleted during the check?)")
            elif isinstance(e, StorageError):
                self.problem(name, "reference list", UNVERIFIED, f"could not be read: {e}")
            else:
                bad[bid] = self.problem(name, "reference list", DAMAGED, _strip(str(e), bid))
        # Read: MAC (and type) for every key; full opening with read_data.
        verified: set[bytes] = set(b for b in reflists if b not in bad)  # read and opened by the walk
        # (a subset is a share of what the walk did not open already: reference
        # lists, read every run, would otherwise take places in it)
        todo = self._choose([b for b in present if b not in verified and b not in self._failed_reflist], refs)
        full = self.can_read and (self.read_data or self.subset is not None)
        if full and repo.codec.convergent:  # (--read-data and its subsets open data blobs: their keys)
            self._gather_keys(snaps)
        self._read_blobs(todo, refs, kinds, bad, verified, full=full)
        orphans = [b for b in blobs if b not in refs]
        r.orphans = len(orphans)
        if self.subset is None:
            self._read_blobs(orphans, None, {}, bad, set(), full=False)
        if self.empty_leftovers:
            r.notes.append(f"{len(self.empty_leftovers)} unreferenced empty objects, left by interrupted writes "
                           "(power loss), e.g. " + ", ".join(sorted(self.empty_leftovers)[:3]))
        # A damaged copy whose sibling is intact lost nothing (check --repair writes it again).
        self._copies(bad, verified, refs, kinds)
        # Parity groups (init --parity): verified, and a lost data blob rebuilt from them.
        self._parity(listing, blobs, bad, verified, refs, kinds)
        # Which snapshots each problem affects.
        self._attribute(refs, kinds, direct, reflists)
        # Read keys: every index, in full, against the reference lists; files per damaged blob.
        if self.can_read:
            self._read_indexes(snaps, by_id, bad, reflists, direct)
        self._drop_forgotten(by_id)
        self._remember(snaps, by_id)
        damaged = sorted({s for p in r.problems if p.damage and not p.recoverable_from for s in p.snapshots})
        r.damaged_snapshots = damaged
        r.degraded_snapshots = sorted({s for p in r.problems if p.damage and p.recoverable_from
                                       for s in p.snapshots} - set(damaged))
        for sid in damaged + r.degraded_snapshots:
            s = by_id.get(sid)
            if s is not None:
                r.snapshot_info[sid] = {"channel": s.channel, "time": s.to_json()["time"], "host": s.host}
        self._previous_damage(damaged, by_id)
        self._heal(bad, verified, refs)
        if self.cache is not None:
            if full or not self.can_read:
                self.cache.mark_verified(list(verified))
            self.cache.commit()
        r.duration = round(time.monotonic() - started, 3)
        return r

    # ---- keys, revocations, hints --------------------------------------------------------

    def _check_keys(self, listing: dict[str, int]):
        repo = self.repo
        certs = repo.certificates()
        if self.cache is not None:
            # Revocation is monotonic: one seen by an earlier check stands even
            # when the storage withholds it now.
            import json

            try:
                known = {k: int(v) for k, v in json.loads(self.cache.get_meta("revocations") or "{}").items()}
            except (ValueError, TypeError, AttributeError):
                known = {}
            stored = set(repo.revocations())
            for kid in sorted(set(known) - stored):
                self.problem(f"revoked/{kid}", "revocation", MISSING, "seen by an earlier check and gone now "
                             "(deleted by someone with storage access?); the key stays revoked from "
                             f"{_when(known[kid] / 1e9)}")
            self.cache.set_meta("revocations", json.dumps(repo.remember_revocations(known)))
        for name in listing:
            if name.startswith("keys/") and name[5:] not in certs:
                self.problem(name, "key certificate", DAMAGED, "damaged, forged or stored under another name "
                             "(not a certificate the master key signed for this key id)")
        revs = repo.revocations()
        for name in listing:
            if name.startswith("revoked/") and name[8:] not in revs:
                self.problem(name, "revocation", DAMAGED, "damaged, forged or stored under another name "
                             "(not a revocation the master key signed)")
        self.hints = repo.repair_hints(on_problem=lambda n, m: self.problem(n, "repair hint", DAMAGED, m))
        from .forget import forgotten_snapshots

        forgotten_snapshots(repo, on_problem=lambda n, m: self.problem(n, "forget log entry", DAMAGED, m))
        from .report import check_reports

        kinds = {"damaged": DAMAGED, "untrusted": UNTRUSTED, "unverified": UNVERIFIED}
        check_reports(repo, listing, lambda n, m, k: self.problem(n, "failure report", kinds[k], m))

    # ---- snapshot records --------------------------------------------------------------

    def _load_snapshots(self, listing: dict[str, int]) -> list[Snapshot]:
        repo = self.repo
        sids = [n.split("/", 1)[1] for n in listing if n.startswith("snapshots/")]
        out: list[Snapshot] = []
        seen = self.cache.seen_snapshots() if self.cache is not None else {}
        last_check = float(self.cache.get_meta("last_check_time") or 0) if self.cache is not None else 0
        certs = repo.certificates()

        def one(sid: str):
            try:
                snap = repo.load_snapshot(sid)
            except SnapshotNotFound:
                return  # forgotten since the listing
            except (IntegrityError, UnsupportedFormat) as e:
                if listing.get(f"snapshots/{sid}") == 0 and sid not in seen:
                    # An interrupted save's record that never reached the disk
                    # (power loss before its flush): the save did not report
                    # success, and no check has seen it.
                    with self.lock:
                        self.empty_leftovers.append(f"snapshots/{sid}")
                    return
                msg = str(e)
                prefix = f"snapshot {sid}: "
                self.problem(f"snapshots/{sid}", "snapshot record", DAMAGED,
                             msg[len(prefix):] if msg.startswith(prefix) else msg, [sid])
                return
            except StorageError as e:
                self.problem(f"snapshots/{sid}", "snapshot record", UNVERIFIED, f"could not be read: {e}", [sid])
                return
            problems = []
            for m in snap.problems:
                if "not certified" in m:
                    cname = f"keys/{snap.kid}"
                    state = "is missing" if cname not in listing else "is damaged or forged"
                    if snap.kid in certs:
                        m = f"signature by key {snap.kid} does not verify (record forged or altered)"
                    else:
                        m = f"signed by key {snap.kid}, whose certificate {cname} {state}"
                problems.append(m)
            rev = repo.revocations().get(snap.kid)
            if rev is not None and not any("revoked" in m for m in problems):
                # The record appeared after the last check that did not see it.
                not_before = seen[sid][2] if sid in seen else last_check
                revoked_at = rev.get("time_ns", 0) / 1e9
                if not_before > revoked_at:
                    problems.append(f"signed by key {snap.kid}, which was revoked on {_when(revoked_at)}; the record "
                                    f"claims {_when(snap.time)} but appeared after the revocation (backdated)")
            if problems:
                snap.signature_ok = False
                self.problem(f"snapshots/{sid}", "snapshot record", UNTRUSTED, "; ".join(problems), [sid])
            gone = seen.get(sid, (None, None, None))[1]
            if gone is not None:
                self.problem(f"snapshots/{sid}", "snapshot record", REPLAYED,
                             f"reappeared after it had been gone since {_when(gone)} (replayed or restored "
                             "by someone with storage access?)", [sid])
            with self.lock:
                out.append(snap)

        self._parallel(one, sids)
        out.sort(key=lambda s: (s.time_ns, s.id))
        return out

    # ---- the reference graph ---------------------------------------------------------------

    def _walk(self, snaps: list[Snapshot], blobs: dict[bytes, int]):
        """refs: id -> recorded size; kinds: id -> type for index blobs and
        reference lists; direct: id -> snapshots naming it in their record;
        reflists: reference-list id -> its plaintext (packed records)."""
        refs: dict[bytes, int] = {}
        kinds: dict[bytes, int] = {}
        direct: dict[bytes, set[str]] = {}
        size_conflicts: dict[bytes, set[int]] = {}

        def ref(bid: bytes, size: int, btype: int, sid: str | None):
            cur = refs.get(bid)
            if cur is None:
                refs[bid] = size
            elif cur != size:
                size_conflicts.setdefault(bid, {cur}).add(size)
            if btype != fmt.T_DATA:
                kinds[bid] = btype
            if sid is not None:
                direct.setdefault(bid, set()).add(sid)

        for snap in snaps:
            try:
                for what, btype in (("index", fmt.T_INDEX), ("reflist", fmt.T_REFLIST)):
                    for copies in snap.copies_of(what):
                        for bid, size in copies:
                            ref(bid, size, btype, snap.id)
                        if len(copies) > 1:
                            group = [b for b, _ in copies]
                            for b in group:
                                self.siblings.setdefault(b, group)
            except (KeyError, ValueError, TypeError):
                self.problem(f"snapshots/{snap.id}", "snapshot record", DAMAGED,
                             "names its blobs in a malformed way", [snap.id])
        reflists: dict[bytes, bytes] = {}
        codec = self.repo.codec

        def read_reflist(bid: bytes):
            size = refs[bid]
            name = fmt.blob_name(bid)
            if bid not in blobs and bid not in self.fossils:
                self._confirm(bid, blobs)
            if bid not in blobs and bid in self.fossils:
                name = self.fossils[bid]
                if self._fossil_sizes[bid] != size:
                    return
            elif blobs.get(bid) != size:
                return  # missing or wrong size: reported with the other blobs
            try:
                raw = self.repo.storage.read(name)
                self._count(raw)
                if len(raw) != size:
                    raise IntegrityError(f"blob {bid.hex()}: read {len(raw)} bytes where {size} were stored")
                data = codec.open(bid, raw, fmt.T_REFLIST)
                fmt.unpack_reflist(data)  # validates the length
            except (IntegrityError, UnsupportedFormat, ObjectNotFound, StorageError) as e:
                with self.lock:
                    self._failed_reflist[bid] = e
                return
            with self.lock:
                reflists[bid] = bytes(data)

        self._failed_reflist: dict[bytes, Exception] = {}
        self._parallel(read_reflist, [b for b, t in kinds.items() if t == fmt.T_REFLIST])
        for bid, data in reflists.items():
            for child, csize in fmt.unpack_reflist(data):
                ref(child, csize, fmt.T_DATA, None)
        self.size_conflicts = size_conflicts
        return refs, kinds, direct, reflists

    def _confirm(self, bid: bytes, blobs: dict[bytes, int]) -> int | None:
        """A blob the listing did not show, looked for once more before it is
        called missing: a save that finished while the check listed (its
        record came after its blobs) or a prune moving it to fossils."""
        try:
            size = self.repo.storage.stat(fmt.blob_name(bid))
            if size is None:
                from .gc import find_fossil

                name = find_fossil(self.repo.storage, bid)
                if name is not None:
                    fsize = self.repo.storage.stat(name)
                    if fsize is not None:
                        with self.lock:
                            self.fossils[bid], self._fossil_sizes[bid] = name, fsize
                return None
        except StorageError:
            return None
        with self.lock:
            blobs[bid] = size
        return size

    def _count(self, raw: bytes):
        with self.lock:
            self.report.blobs_read += 1
            self.report.bytes_read += len(raw)
        self._tick()

    # ---- reading blobs ---------------------------------------------------------------------

    def _choose(self, present: list[bytes], refs: dict[bytes, int]) -> list[bytes]:
        if self.subset is None:
            return present
        kind, amount = self.subset
        last = {}
        if self.cache is not None:
            for b in present:
                last[b] = self.cache.last_verified(b) or 0
        # Least recently verified first; ties in random order, so that runs differ.
        order = sorted(present, key=lambda b: (last.get(b, 0), os.urandom(4)))
        if kind == "fraction":
            return order[:math.ceil(len(order) * amount)]
        out, total = [], 0
        for b in order:
            if total + refs[b] > amount and out:
                break
            if refs[b] > amount:
                break
            out.append(b)
            total += refs[b]
        return out

    def _gather_keys(self, snaps: list[Snapshot]):
        """Format v2: the key of every data blob, from the indexes (read
        again, with the files, by _read_indexes)."""
        for snap in snaps:
            try:
                for e in iter_entries(self.repo, snap, on_damage=lambda *a: None, on_copy=_ignore):
                    for x in e.extents:
                        self.keys[x.blob] = x.key
            except RekkordError:
                continue  # (reported when the indexes are read)

    def _read_blobs(self, ids: list[bytes], refs: dict[bytes, int] | None, kinds: dict[bytes, int],
                    bad: dict[bytes, Problem], verified: set[bytes], *, full: bool):
        """Read and verify blobs; ``refs`` None for unreferenced ones."""
        codec = self.repo.codec
        orphan = refs is None

        def one(bid: bytes):
            name = self.blob_name(bid)
            btype = kinds.get(bid, fmt.T_DATA)
            what = "unreferenced blob" if orphan else WHAT_BLOB[btype]
            try:
                raw = self.repo.read_raw(name)
            except ObjectNotFound:
                from .gc import read_moved

                # Moved to or from fossils by a prune while the check ran?
                raw = None if orphan else read_moved(self.repo.storage, bid)
                if raw is None:
                    if not orphan:
                        bad[bid] = self.problem(name, what, MISSING, "missing (deleted during the check?)")
                    return
            except IntegrityError as e:  # larger than any blob: never read whole
                p = self.problem(name, what, DAMAGED, _strip(str(e), bid))
                if not orphan:
                    bad[bid] = p
                return
            except StorageError as e:
                self.problem(name, what, UNVERIFIED, f"could not be read: {e}")
                return
            self._count(raw)
            if orphan and not raw:
                # What a power loss leaves of a blob an interrupted save was
                # writing (its data never reached the disk): harmless, nothing
                # uses it; a save that needs the blob replaces it, prune removes it.
                with self.lock:
                    self.empty_leftovers.append(name)
                return
            recorded = self.size_conflicts.get(bid, {refs[bid]}) if not orphan else set()
            resized = not orphan and (len(raw) not in recorded or len(recorded) > 1)
            if resized and bid not in self.resized:
                bad[bid] = self.problem(name, what, WRONG_SIZE,
                                        f"read {len(raw)} bytes where {refs[bid]} were stored")
                return
            problem = codec.verify(bid, raw)
            if resized and problem:
                sizes = ", ".join(map(str, sorted(recorded)))
                bad[bid] = self.problem(name, what, WRONG_SIZE, f"has {len(raw)} bytes where {sizes} were "
                                        f"recorded (truncated or replaced): {problem}")
                return
            if problem:
                if orphan:
                    problem += "; nothing references it: a damaged leftover, a copy of another object or a forgery"
                p = self.problem(name, what, DAMAGED, problem)
                if not orphan:
                    bad[bid] = p
                return
            if not orphan and codec.blob_type(raw) != btype:
                bad[bid] = self.problem(name, what, DAMAGED, f"is a {WHAT_BLOB.get(codec.blob_type(raw), '?')}, "
                                        f"but is referenced as a {what}")
                return
            # Format v2 data blobs decrypt with a key only the indexes hold
            # (gathered first with --read-data); their bytes hashing to their
            # name is already proof that they are what their writer stored.
            needs_key = codec.convergent and btype == fmt.T_DATA
            if (full or (resized and self.can_read)) and not orphan and (not needs_key or bid in self.keys):
                try:
                    codec.open(bid, raw, btype, key=self.keys.get(bid, b""))
                except (IntegrityError, UnsupportedFormat) as e:
                    # A valid MAC (v1) or name (v2) over content that is not
                    # the id's: made by a key holder, not by a bit flip.
                    what_ok = "its name" if codec.convergent else "its MAC"
                    msg = _strip(str(e), bid) + f" ({what_ok} is valid: spoiled by a key holder)"
                    bad[bid] = self.problem(name, what, DAMAGED, msg)
                    with self.lock:
                        self.spoiled.add(bid)
                    return
                with self.lock:
                    self.report.blobs_decrypted += 1
            if resized:
                sizes = ", ".join(map(str, sorted(recorded)))
                how = "decrypts to its content" if self.can_read else "has a valid MAC (a decrypting check proves its content)"
                with self.lock:
                    self.report.notes.append(f"{name} has {len(raw)} bytes where snapshots recorded {sizes}, and "
                                             f"{how}: a spoiled or damaged object was replaced by a good copy")
            with self.lock:
                verified.add(bid)

        self._parallel(one, ids)

    # ---- copies of index blobs and reference lists ----------------------------------------------

    def _copies(self, bad: dict[bytes, Problem], verified: set[bytes], refs: dict[bytes, int],
                kinds: dict[bytes, int]):
        """A missing or damaged copy of an index blob or reference list whose
        sibling is intact: nothing is lost (readers use the sibling).  With
        ``repair``, its exact bytes are made again from the sibling (opened
        with the key of its sealing: an index blob needs the data key, a
        reference list only psk) and written under its name, once they hash
        to it."""
        codec = self.repo.codec
        for bid in sorted(b for b in bad if b in self.siblings):
            p = bad[bid]
            if p.kind not in (MISSING, DAMAGED, WRONG_SIZE):
                continue
            group = self.siblings[bid]
            good = next((s for s in group if s != bid and s not in bad and (s in verified or self._intact(s))), None)
            if good is None:
                continue
            p.recoverable_from = fmt.blob_name(good)
            p.message += f"; its copy {fmt.blob_name(good)} is intact, so nothing is lost"
            btype = kinds.get(bid, fmt.T_INDEX)
            if not self.repair:
                p.message += " (check --repair writes it again)"
                continue
            if btype == fmt.T_INDEX and not self.can_read:
                p.message += " (a check --repair with a read, full or master key writes it again)"
                continue
            try:
                raw = self.repo.read_raw(self.blob_name(good), btype)
                new = codec.rebuild_copy(good, raw, group.index(bid))
                if name_of(new) != bid:
                    p.message += ("; its bytes cannot be made again from that copy (the two were not sealed "
                                  "together: a faulty or hostile writer)")
                    continue
                self.repo.storage.write(fmt.blob_name(bid), bytes(new), exclusive=False)
            except (IntegrityError, UnsupportedFormat, StorageError) as e:
                p.message += f"; check --repair could not write it again ({e})"
                continue
            self._repaired(p, bad, bid, f"{p.what} {p.object}: written again from its copy {fmt.blob_name(good)}")
            verified.add(bid)

    # ---- parity groups (rekkord/parity.py) ---------------------------------------------------------

    def _parity(self, listing: dict[str, int], blobs: dict[bytes, int], bad: dict[bytes, Problem],
                verified: set[bytes], refs: dict[bytes, int], kinds: dict[bytes, int]):
        """Verify the parity objects (each must hash to its name and hold a
        well-formed manifest; a whole check reads them all), and rebuild from
        them every missing or damaged data blob they cover: the rebuilt bytes
        count only once they hash to the blob's name, so this needs no key
        and trusts no parity object.  With ``repair``, rebuilt blobs are
        written again, and data blobs without parity get some."""
        from . import parity as par

        names = {}
        for obj, size in listing.items():
            if not obj.startswith(par.PREFIX):
                continue
            name = par.name_from_object(obj)
            if name is None:
                self.problem(obj, "object", UNEXPECTED, "not a parity group name; not part of the repository format")
            else:
                names[name] = size
        ratio = par.ratio_of(self.repo.config)
        if not names and not ratio:
            return
        if (names or self.repair) and not par.available():
            self.report.notes.append(f"{len(names)} parity groups not checked: {par.install_hint_text()}")
            return
        idx = par.ParityIndex(self.repo.storage, threads=self.threads)
        groups = idx.groups(names)
        for name, msg in sorted(idx.problems.items()):
            self.problem(par.object_name(name), "parity group", DAMAGED, _strip_parity(msg, name))
        if self.subset is None:
            def whole(g):
                obj = par.object_name(g.name)
                h, got = par.hasher(), 0
                try:  # (hashed in pieces: a hostile manifest may claim up to 256 MiB)
                    while got <= g.object_size:
                        piece = self.repo.storage.read(obj, got, min(par.READ_PIECE, g.object_size + 1 - got))
                        h.update(piece)
                        got += len(piece)
                        if not piece or got == g.object_size:
                            break
                except ObjectNotFound:
                    self.problem(obj, "parity group", MISSING, "missing (deleted during the check?)")
                    return
                except StorageError as e:
                    self.problem(obj, "parity group", UNVERIFIED, f"could not be read: {e}")
                    return
                with self.lock:
                    self.report.blobs_read += 1
                    self.report.bytes_read += got
                if got != g.object_size or h.digest() != g.name:
                    with self.lock:
                        idx.drop(g.name)
                    self.problem(obj, "parity group", DAMAGED, "its bytes do not hash to its name (damaged or "
                                 "forged); the data blobs it covers have less protection (check --repair gives "
                                 "them parity again)")

            self._parallel(whole, list(groups.values()))
        covered = {m for g in idx.groups().values() for m, _ in g.members}
        self.report.parity_groups = len(idx.groups())
        # Rebuild what was lost.
        lost = sorted(b for b, p in bad.items() if kinds.get(b, fmt.T_DATA) == fmt.T_DATA and b in refs
                      and b in covered and p.kind in (MISSING, DAMAGED, WRONG_SIZE) and not p.recoverable_from)
        for bid in lost:
            p = bad[bid]
            got = idx.rebuild(bid)
            if got is None:
                p.message += "; its parity group cannot rebuild it (too much of the group is lost too)"
                continue
            raw, g = got
            with self.lock:
                self.report.parity_rebuilt += 1
            p.recoverable_from = par.object_name(g.name)
            p.message += f"; parity group {par.object_name(g.name)} rebuilds it, so nothing is lost"
            if not self.repair:
                p.message += " (check --repair writes it again)"
                continue
            try:
                self.repo.storage.write(self.blob_name(bid), raw, exclusive=False)
            except StorageError as e:
                p.message += f"; check --repair could not write it again ({e})"
                continue
            self._repaired(p, bad, bid, f"{p.what} {p.object}: rebuilt from parity group {par.object_name(g.name)}")
            verified.add(bid)
            blobs[bid] = len(raw)
        if not ratio:
            return
        # Data blobs without parity (a save that could not write its group, a
        # damaged group, blobs saved before parity was possible).
        data = [b for b in refs if kinds.get(b, fmt.T_DATA) == fmt.T_DATA and b in blobs and b not in bad]
        bare = sorted(b for b in data if b not in covered)
        if not bare:
            return
        if not self.repair:
            self.report.notes.append(f"{len(bare)} data blobs have no parity group (check --repair gives them "
                                     "parity)")
            return
        errors = []
        written = []
        builder = par.GroupBuilder(self.repo.storage, ratio, self.repo.limits[fmt.T_DATA],
                                   on_written=lambda obj, size: written.append(obj), on_error=errors.append)
        try:
            for bid in bare:
                try:
                    raw = self.repo.read_raw(self.blob_name(bid), fmt.T_DATA)
                except (IntegrityError, StorageError):
                    continue
                if par.blake3_name(raw) == bid:  # (only intact bytes get parity)
                    builder.add(bid, raw)
            builder.finish()
        finally:
            builder.close()
        self.report.notes.extend(errors)
        if written:
            self.report.repaired.append(f"parity for {len(bare)} data blobs that had none: "
                                        f"{len(written)} new parity groups")

    def _intact(self, bid: bytes) -> bool:
        """Whether a blob not read yet (a subset check) verifies."""
        try:
            raw = self.repo.read_raw(self.blob_name(bid))
        except (IntegrityError, StorageError):
            return False
        self._count(raw)
        return self.repo.codec.verify(bid, raw) is None

    def _repaired(self, p: Problem, bad: dict[bytes, Problem], bid: bytes, line: str) -> None:
        """``p`` is fixed: it leaves the problems (and the repair hint) for the repaired list."""
        with self.lock:
            if p in self.report.problems:
                self.report.problems.remove(p)
            self.report.repaired.append(line)
        bad.pop(bid, None)

    # ---- attribution -------------------------------------------------------------------------

    def _attribute(self, refs, kinds, direct, reflists: dict[bytes, bytes]):
        """Name, for each damaged (or unverified) blob, the snapshots that reference it."""
        bad: dict[bytes, list[Problem]] = {}
        for p in self.report.problems:
            if p.what in WHAT_BLOB.values():
                bid = bytes.fromhex(p.object.rsplit("/", 1)[-1])
                if bid in refs:
                    bad.setdefault(bid, []).append(p)
        if not bad:
            return
        users: dict[bytes, set[str]] = {}  # bad data blob -> snapshots
        data_bad = {b for b in bad if kinds.get(b, fmt.T_DATA) == fmt.T_DATA}
        if data_bad:
            rec = fmt.REFLIST_RECORD
            for rl, data in reflists.items():
                owners = direct.get(rl, set())
                for o in range(0, len(data), rec.size):
                    child = data[o:o + 32]
                    if child in data_bad:
                        users.setdefault(child, set()).update(owners)
        for bid, ps in bad.items():
            snaps = set(direct.get(bid, ())) | users.get(bid, set())
            for p in ps:
                p.snapshots = sorted(set(p.snapshots) | snaps)

    # ---- indexes (keys that can read) ----------------------------------------------------------

    def _read_indexes(self, snaps: list[Snapshot], by_id: dict[str, Snapshot], bad: dict[bytes, Problem],
                      reflists: dict[bytes, bytes], direct):
        """With --read-data: every index against the snapshot's reference
        list.  Otherwise only the damaged snapshots' indexes, to name files."""
        damaged = {s for p in bad.values() for s in p.snapshots}
        todo = snaps if self.read_data else [s for s in snaps if s.id in damaged]
        bad_data = {b: p for b, p in bad.items() if p.what == "data blob"}
        graph_problems: dict[bytes, Problem] = {}
        for snap in todo:
            if not snap.signature_ok and not self.read_data:
                continue
            members = None
            if self.read_data:
                members = set()
                complete = True
                for copies in snap.copies_of("reflist"):
                    data = next((reflists[c] for c, _ in copies if c in reflists), None)
                    if data is None:
                        complete = False
                        continue
                    for o in range(0, len(data), fmt.REFLIST_RECORD.size):
                        members.add(data[o:o + 32])
                if not complete:
                    members = None  # a reference list is damaged: reported already

            def on_damage(lost, before, after, snap=snap):
                for b, _m in lost:
                    p = bad.get(b)
                    line = describe_loss([(b, _m)], before, after)
                    if p is None:
                        p = bad[b] = self.problem(fmt.blob_name(b), "index blob", DAMAGED, _m, [snap.id])
                    if snap.id not in p.snapshots:
                        p.snapshots.append(snap.id)
                    note = line.split(": the entries ", 1)[-1]
                    p.paths.append(f"(snapshot {snap.id[:8]}: the entries {note})")

            refused: list[str] = []

            def on_refused(path, why, refused=refused):
                refused.append(f"/{os.fsdecode(path)}: {why}")

            flagged: dict[str, list[str]] = {}
            try:
                for e in iter_entries(self.repo, snap, on_damage=on_damage, on_refused=on_refused,
                                      on_copy=_ignore):
                    if e.flags:
                        for bit, label in ((F_CHANGED, "changed while they were read"),
                                           (F_PARTIAL, "read only in part (I/O error)"),
                                           (F_UNREADABLE, "unreadable")):
                            if e.flags & bit:
                                flagged.setdefault(label, []).append("/" + os.fsdecode(e.path))
                    for x in e.extents:
                        p = bad_data.get(x.blob)
                        if p is not None and len(p.paths) < 1000:
                            path = "/" + os.fsdecode(e.path)
                            if path not in p.paths:
                                p.paths.append(path)
                        if members is not None and x.blob not in members:
                            g = graph_problems.get(x.blob)
                            if g is None:
                                g = graph_problems[x.blob] = self.problem(
                                    fmt.blob_name(x.blob), "data blob", INCOMPLETE_GRAPH,
                                    "used by a file but missing from its snapshot's reference list (prune "
                                    "would not see it)")
                            if snap.id not in g.snapshots:
                                g.snapshots.append(snap.id)
                            if len(g.paths) < 1000:
                                g.paths.append("/" + os.fsdecode(e.path))
            except RekkordError as e:
                self.problem(f"snapshots/{snap.id}", "snapshot record", UNVERIFIED,
                             f"index could not be read: {e}", [snap.id])
            if refused:
                p = self.problem(f"snapshots/{snap.id}", "snapshot index", INVALID,
                                 f"{len(refused)} index entries no save writes (refused by restore, mount and "
                                 "listings): a forged or corrupted index", [snap.id])
                p.paths = refused[:1000]
            for label, paths in flagged.items():  # recorded by the save; not damage
                more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
                self.report.notes.append(f"snapshot {snap.id[:8]} ({snap.channel}): {len(paths)} files were "
                                         f"{label} when saved: {', '.join(paths[:5])}{more}")

    # ---- concurrent forget, memory, healing -----------------------------------------------------

    def _drop_forgotten(self, by_id: dict[str, Snapshot]):
        """A snapshot forgotten while the check ran (and its blobs pruned) is
        not damage: drop it from the problems when its record is gone."""
        involved = {s for p in self.report.problems for s in p.snapshots}
        gone = set()
        for sid in involved:
            try:
                if self.repo.storage.stat(f"snapshots/{sid}") is None:
                    gone.add(sid)
            except StorageError:
                pass
        if not gone:
            return
        keep = []
        for p in self.report.problems:
            if p.snapshots and set(p.snapshots) <= gone and p.kind in (MISSING, WRONG_SIZE, UNVERIFIED):
                continue
            p.snapshots = [s for s in p.snapshots if s not in gone]
            keep.append(p)
        self.report.problems = keep
        for sid in gone:
            by_id.pop(sid, None)

    def _remember(self, snaps: list[Snapshot], by_id):
        """Compare the records present with the previous check's and with the
        signed forget log (rekkord/forget.py): a record that vanished without
        a forget log entry was deleted by someone else; a forgotten record
        that is back was replayed."""
        from .forget import forgotten_snapshots
        from .gc import FORGET_LOG_KEEP, StorageClock

        r = self.report
        now = time.time()
        storage_now = None
        present_set = set(by_id) | {p.object.split("/", 1)[1] for p in r.problems
                                               if p.what == "snapshot record" and p.object.startswith("snapshots/")
                                               and p.kind != MISSING}
        forgotten = forgotten_snapshots(self.repo)  # (read again: a forget may have run meanwhile)
        for sid in sorted(present_set & forgotten.keys()):
            # How long ago the entry was written, by the storage's clock (the
            # body's time is the forgetting machine's, which may be days off).
            when = forgotten[sid]["time_ns"] / 1e9
            written = forgotten[sid].get("mtime")
            if written is not None:
                if storage_now is None:
                    storage_now = StorageClock(self.repo.storage, fallback=time.time).now()
                age = storage_now - written
            else:
                age = now - when
            if age > 3600:
                self.problem(f"snapshots/{sid}", "snapshot record", REPLAYED,
                             f"was forgotten on {_when(when)} (forget log {forgotten[sid]['entry']}) but is back "
                             "(replayed by someone with storage access?)", [sid])
            else:
                r.notes.append(f"snapshot {sid[:8]} is being forgotten (forget log {forgotten[sid]['entry']})")
        if self.cache is None:
            return
        seen = self.cache.seen_snapshots()
        last_check = float(self.cache.get_meta("last_check_time") or 0)
        r.vanished_snapshots = sorted(s for s, (_, gone, _) in seen.items() if gone is None and s not in present_set)
        unexplained = [s for s in r.vanished_snapshots if s not in forgotten]
        if unexplained and now - last_check < 0.9 * FORGET_LOG_KEEP:
            for sid in unexplained:
                self.problem(f"snapshots/{sid}", "snapshot record", MISSING,
                             f"deleted without a forget log entry (present at the check of {_when(last_check)}; "
                             "deleted by someone with storage access?)", [sid])
        elif unexplained:
            r.notes.append(f"{len(unexplained)} snapshot records seen by the check of {_when(last_check)} are gone; "
                           "the forget log does not reach back that far")
        self.cache.note_snapshots(present_set, now, last_check)
        self.cache.set_meta("last_check_time", now)

    def _previous_damage(self, damaged: list[str], by_id):
        if self.cache is None:
            return
        before = set(filter(None, (self.cache.get_meta("check_damaged") or "").split(",")))
        self.report.healed_snapshots = sorted(s for s in before - set(damaged) if s in by_id)
        if self.subset is None:
            self.cache.set_meta("check_damaged", ",".join(damaged))
        else:  # a partial run only adds what it found
            self.cache.set_meta("check_damaged", ",".join(sorted(set(damaged) | (before - set(
                self.report.healed_snapshots)))))
            self.report.healed_snapshots = []

    def _heal(self, bad: dict[bytes, Problem], verified: set[bytes], refs: dict[bytes, int]):
        damaged_ids = {b for b, p in bad.items() if p.kind in (MISSING, DAMAGED, WRONG_SIZE) and b in refs}
        if self.cache is not None and damaged_ids:
            self.cache.forget_blobs(damaged_ids, self.repo.index.extent_size)
        if not self.heal:
            return
        full = self.can_read and (self.read_data or self.subset is not None)
        try:
            self._contain(bad, damaged_ids)
            covered = set()
            for name, (ids, deep) in self.hints.items():
                ids = set(ids)
                if ids & damaged_ids:
                    covered |= ids
                elif (full or not deep) and all(b in verified or b not in refs for b in ids):
                    # Everything it named is intact again (or no longer used).
                    # A deep hint (spoiled content under a valid MAC) is only
                    # cleared by a check that decrypted what it names.
                    self.repo.storage.delete(name)
                    self.report.repairs_removed += 1
            new = damaged_ids - covered
            if new:
                self.report.repair_hint = self.repo.write_repair(sorted(new), deep=bool(new & self.spoiled))
        except StorageError as e:
            self.report.notes.append(f"could not update repair hints: {e}")

    def _contain(self, bad: dict[bytes, Problem], damaged_ids: set[bytes]):
        """Spoiled blobs (a valid MAC over the wrong content, which any key
        holder can make) go to quarantine/, so that the saves that still have
        the data can store it under its name again, even on storage that
        only lets them create; a copy in quarantine/ that verifies (set aside
        by a prune that could not tell two valid MACs apart) comes back."""
        from .gc import QUARANTINE, StorageClock, quarantine_name

        clock = StorageClock(self.repo.storage)
        spare: dict[bytes, list[str]] = {}
        if self.can_read:  # (only a decrypting key can tell a good copy from a forgery with a valid MAC)
            for name, _ in self.repo.storage.list(QUARANTINE):
                bid = fmt.blob_id_from_name("blobs/" + "/".join(name.split("/")[-2:]))  # (a blob's or a fossil's)
                if bid is not None and bid in damaged_ids and bad[bid].kind in (MISSING, DAMAGED):
                    spare.setdefault(bid, []).append(name)
        codec = self.repo.codec
        for bid in sorted(damaged_ids):
            name = fmt.blob_name(bid)
            good = None
            for q in spare.get(bid, ()):
                try:
                    raw = self.repo.read_raw(q)
                except (IntegrityError, StorageError):
                    continue
                if _good_copy_of(codec, bid, raw):
                    good = q
                    break
            if bid not in self.spoiled and good is None:
                continue  # (a missing or MAC-damaged blob: savers replace it by its name)
            where = quarantine_name(name, clock.now())  # (by the storage's clock, as prune judges it)
            try:
                if self.repo.storage.exists(name):
                    self.repo.storage.rename(name, where)
                    self.report.notes.append(f"{name} set aside as {where} (spoiled: a valid MAC over other "
                                             "content)" if bid in self.spoiled else f"{name} set aside as {where}")
                if good is not None:
                    self.repo.storage.rename(good, name)
                    bad[bid].message += f"; a good copy was found in {good} and put back"
                    damaged_ids.discard(bid)
            except StorageError as e:
                self.report.notes.append(f"could not set {name} aside ({e}); the next save that has the data "
                                         "replaces it")


def _strip_parity(msg: str, name: bytes) -> str:
    from .parity import object_name

    return msg.removeprefix(f"parity group {object_name(name)}: ")


def _ignore(_message: str) -> None:
    """(check reports damaged copies itself, as problems)"""


def _good_copy_of(codec, bid: bytes, raw: bytes) -> bool:
    """A copy that is what ``bid`` names: in format v2 its bytes hash to the
    name; in v1 it decrypts to content matching the id (a read key)."""
    if codec.convergent:
        return codec.verify(bid, raw) is None
    try:
        codec.open(bid, raw)
        return True
    except (IntegrityError, UnsupportedFormat):
        return False


def _strip(msg: str, bid: bytes) -> str:
    prefix = f"blob {bid.hex()}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

"""Verifying a repository.

Levels (docs/integrity.md):

* structure (default; audit key or better): config signature, certificates,
  every snapshot record opened and its signature checked against a certified,
  non-revoked key; the reference graph walked (index and reference-list blobs
  listed in each record; reference lists opened with the psk-derived list key);
  every referenced blob present with the recorded size and a valid MAC.
  Nothing is decrypted with the data key: no file content or name is seen.
* ``read_data`` (read, full or admin key): also decrypts, decompresses and
  re-hashes every blob against its id, and checks that each index references
  only blobs of its reference list (the graph prune relies on is complete).
* ``subset``: a fraction or a byte budget of the blobs, least recently
  verified first (remembered in the local cache), so that a nightly run covers
  the whole repository over time.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import format as fmt, keys as keymod
from .cache import Cache
from .errors import IntegrityError, ObjectNotFound, StorageError
from .repository import Repository, Snapshot


@dataclass
class Problem:
    object: str
    message: str
    snapshots: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"object": self.object, "message": self.message, "snapshots": self.snapshots, "paths": self.paths}

    def __str__(self) -> str:
        s = f"{self.object}: {self.message}"
        if self.snapshots:
            s += f" (snapshots: {', '.join(x[:8] for x in self.snapshots)})"
        if self.paths:
            more = f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else ""
            s += f" (files: {', '.join(self.paths[:5])}{more})"
        return s


@dataclass
class CheckReport:
    snapshots: int = 0
    blobs_referenced: int = 0
    blobs_checked: int = 0
    blobs_read: int = 0
    bytes_checked: int = 0
    orphans: int = 0
    problems: list[Problem] = field(default_factory=list)
    damaged_snapshots: list[str] = field(default_factory=list)
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {
            "ok": self.ok, "snapshots": self.snapshots, "blobs_referenced": self.blobs_referenced,
            "blobs_checked": self.blobs_checked, "blobs_read": self.blobs_read,
            "bytes_checked": self.bytes_checked, "orphans": self.orphans,
            "damaged_snapshots": self.damaged_snapshots,
            "problems": [p.to_json() for p in self.problems], "duration": self.duration,
        }


def parse_subset(spec: str | None) -> tuple[str, float] | None:
    """``"10%"`` → ("fraction", 0.1); ``"500M"`` → ("bytes", 500e6)."""
    if not spec:
        return None
    s = spec.strip().upper()
    if s.endswith("%"):
        return "fraction", max(0.0, min(1.0, float(s[:-1]) / 100))
    mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    if s[-1:] in mult:
        return "bytes", float(s[:-1]) * mult[s[-1]]
    if s.endswith("B"):
        s = s[:-1]
    return "bytes", float(s)


class Checker:
    def __init__(self, repo: Repository, cache: Cache | None = None, *, read_data: bool = False,
                 subset: str | None = None, threads: int | None = None, progress=None):
        repo.key.require("check", "check the repository")
        if (read_data or subset) and not repo.key.can("read"):
            from .errors import PermissionDenied

            raise PermissionDenied(f"a {repo.key.role} key cannot read data; use check without --read-data")
        self.repo = repo
        self.cache = cache
        self.read_data = read_data
        self.subset = parse_subset(subset)
        self.threads = threads or max(4, min(repo.storage.connections, 16))
        self.progress = progress
        self.report = CheckReport()
        self.lock = threading.Lock()

    def problem(self, obj: str, msg: str, snaps=()):
        with self.lock:
            self.report.problems.append(Problem(obj, msg, sorted(set(snaps))))

    def run(self) -> CheckReport:
        started = time.monotonic()
        repo = self.repo
        # Certificates: anything under keys/ that does not verify is suspicious.
        for name, _ in repo.storage.list("keys/"):
            kid = name.split("/", 1)[1]
            if kid not in repo.certificates():
                self.problem(name, "certificate is damaged or not signed by the master key")
        # Snapshot records.
        bad_records = []
        snaps = repo.snapshots(on_problem=lambda sid, msg: bad_records.append((sid, msg)))
        for sid, msg in bad_records:
            self.problem(f"snapshots/{sid}", msg, [sid])
        self.report.snapshots = len(snaps)
        listing = {}
        for name, size in repo.storage.list("blobs/"):
            bid = fmt.blob_id_from_name(name)
            if bid is None:
                self.problem(name, "unexpected object in blobs/")
                continue
            listing[bid] = size
        # Walk the graph.
        refs: dict[bytes, tuple[int, list[str]]] = {}
        reflist_of: dict[str, set[bytes]] = {}

        def ref(bid: bytes, size: int, sid: str):
            cur = refs.get(bid)
            if cur is None:
                refs[bid] = (size, [sid])
            else:
                if cur[0] != size:
                    self.problem(f"blob {bid.hex()}", f"recorded with two different sizes ({cur[0]} and {size})",
                                 [sid])
                if cur[1][-1] != sid:
                    cur[1].append(sid)

        for snap in snaps:
            members = set()
            for bid, size in snap.index:
                ref(bid, size, snap.id)
            for bid, size in snap.reflist:
                ref(bid, size, snap.id)
                try:
                    raw = self._read_raw(bid, size)
                    data = repo.codec.open(bid, raw, fmt.T_REFLIST)
                    for child, csize in fmt.unpack_reflist(data):
                        ref(child, csize, snap.id)
                        members.add(child)
                except (IntegrityError, StorageError) as e:
                    self.problem(f"blob {bid.hex()}", f"reference list unreadable: {e}", [snap.id])
            reflist_of[snap.id] = members
        self.report.blobs_referenced = len(refs)
        # Presence and size, from the listing (cheap).
        present = []
        for bid, (size, sids) in refs.items():
            actual = listing.get(bid)
            if actual is None:
                self.problem(f"blob {bid.hex()}", "missing", sids)
            elif actual != size:
                self.problem(f"blob {bid.hex()}", f"has size {actual}, expected {size} (truncated or replaced)",
                             sids)
            else:
                present.append(bid)
        orphans = [b for b in listing if b not in refs]
        self.report.orphans = len(orphans)
        # Read blobs: MAC (all keys) and, with read_data, full decryption.
        to_read = self._choose(present, refs)
        to_read_orphans = orphans if (not self.subset) else []
        self._read_all(to_read, refs, full=self.read_data or bool(self.subset))
        self._read_all(to_read_orphans, {b: (listing[b], []) for b in to_read_orphans}, full=False, orphan=True)
        self.report.blobs_checked = len(present)
        # With a key that reads the index: every extent must be in the reference list.
        if repo.key.can("read") and self.read_data:
            self._check_index_graph(snaps, reflist_of)
        damaged = set()
        for p in self.report.problems:
            damaged.update(p.snapshots)
        self.report.damaged_snapshots = sorted(damaged)
        if repo.key.can("read"):
            self._name_paths(snaps)
        if self.cache is not None:
            bad = [bytes.fromhex(p.object.split()[1]) for p in self.report.problems
                   if p.object.startswith("blob ")]
            self.cache.forget_blobs(bad)
            self.cache.commit()
        self.report.duration = round(time.monotonic() - started, 3)
        return self.report

    def _read_raw(self, bid: bytes, size: int | None = None) -> bytes:
        try:
            return self.repo.storage.read(fmt.blob_name(bid))
        except ObjectNotFound:
            raise IntegrityError(f"blob {bid.hex()} is missing") from None

    def _choose(self, present: list[bytes], refs) -> list[bytes]:
        if not self.subset:
            return present
        kind, amount = self.subset
        last = {}
        if self.cache is not None:
            for b in present:
                last[b] = self.cache.last_verified(b) or 0
        order = sorted(present, key=lambda b: (last.get(b, 0), os.urandom(2)))
        if kind == "fraction":
            n = max(1, round(len(order) * amount)) if order and amount > 0 else 0
            return order[:n]
        out, total = [], 0
        for b in order:
            if total >= amount:
                break
            out.append(b)
            total += refs[b][0]
        return out

    def _read_all(self, ids: list[bytes], refs, *, full: bool, orphan: bool = False):
        if not ids:
            return
        codec = self.repo.codec
        verified = []

        def one(bid: bytes):
            size, sids = refs[bid]
            try:
                raw = self._read_raw(bid)
            except (IntegrityError, StorageError) as e:
                self.problem(f"blob {bid.hex()}", str(e), sids)
                return
            with self.lock:
                self.report.blobs_read += 1
                self.report.bytes_checked += len(raw)
            problem = codec.verify_mac(bid, raw)
            if problem:
                what = "unreferenced object: " if orphan else ""
                self.problem(f"blob {bid.hex()}", what + problem, sids)
                return
            if full and codec.blob_type(raw) != fmt.T_REFLIST:
                try:
                    codec.open(bid, raw)
                except IntegrityError as e:
                    self.problem(f"blob {bid.hex()}", str(e).split(": ", 1)[-1], sids)
                    return
            with self.lock:
                verified.append(bid)
                n = self.report.blobs_read
            if self.progress and n % 64 == 0:
                self.progress(self.report)

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, ids))
        if self.cache is not None and full:
            self.cache.mark_verified(verified)

    def _check_index_graph(self, snaps: list[Snapshot], reflist_of):
        from .snapshot import iter_entries

        for snap in snaps:
            members = reflist_of.get(snap.id, set())
            try:
                for e in iter_entries(self.repo, snap):
                    for x in e.extents:
                        if x.blob not in members:
                            self.problem(f"blob {x.blob.hex()}", "used by the index but not in the snapshot's "
                                         f"reference list (file /{os.fsdecode(e.path)})", [snap.id])
            except IntegrityError as e:
                self.problem(f"snapshot {snap.id}", f"index unreadable: {e}", [snap.id])

    def _name_paths(self, snaps: list[Snapshot]):
        """For keys that can read names: list the files each damaged blob affects."""
        from .snapshot import iter_entries

        bad = {}
        for p in self.report.problems:
            if p.object.startswith("blob "):
                try:
                    bad[bytes.fromhex(p.object.split()[1])] = p
                except ValueError:
                    pass
        if not bad:
            return
        for snap in snaps:
            if snap.id not in self.report.damaged_snapshots:
                continue
            try:
                for e in iter_entries(self.repo, snap):
                    for x in e.extents:
                        p = bad.get(x.blob)
                        if p is not None and len(p.paths) < 1000:
                            path = "/" + os.fsdecode(e.path)
                            if path not in p.paths:
                                p.paths.append(path)
            except IntegrityError:
                continue  # reported by the index blob's own problem

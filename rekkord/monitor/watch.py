"""Watching one repository with an audit key: polls, checks, conditions.

* :meth:`Watcher.poll` lists the repository once (its size and object count
  come from that listing), opens the snapshot records and failure reports it
  has not seen yet (all of them again when certificates or revocations
  changed, since trust depends on them) and notes those that are gone.  Only
  public fields are kept: channel, host, key id, time, trust and the save's
  counters of a record; the audit part of a report.
* :meth:`Watcher.check` runs ``rekkord.check.Checker`` (structure level, the
  audit key's, optionally on a subset) without healing: the monitor never
  writes to a repository.
* :func:`conditions` turns the state into the alert conditions of the issue:
  unreachable, stale channel, failed save (and warnings), damage, untrusted
  snapshots (revoked or unknown key), unexpected host, size out of bounds.

Every string kept from a repository is hostile input: bounded and checked
here, escaped by the templates.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from .. import report as rp
from ..errors import IntegrityError, ObjectNotFound, RekkordError, SnapshotNotFound, UnsupportedFormat
from .alerts import Condition, span, when
from .config import MonitorConfig, RepoConfig

log = logging.getLogger("rekkord.monitor")

MAX_TEXT = 255
MAX_INT = 2**63 - 1
SIZE_SAMPLE_EVERY = 3600.0  # a size sample at least this often, and whenever it changes
STAT_FIELDS = ("files", "bytes_total", "bytes_new", "bytes_stored", "warnings")


def _text(v, default: str = "?") -> str:
    if not isinstance(v, str):
        return default
    v = "".join(c for c in v if ord(c) >= 32)[:MAX_TEXT]
    return v or default


def _int(v) -> int | None:
    return v if type(v) is int and 0 <= v <= MAX_INT else None


def _num(v) -> float | None:
    return float(v) if type(v) in (int, float) and 0 <= v < 1e12 else None


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class Watcher:
    def __init__(self, rc: RepoConfig, key, state, cache_dir: str, clock=time.time):
        self.rc = rc
        self.key = key
        self.state = state
        self.cache_dir = cache_dir
        self.clock = clock
        self._unopenable: dict[str, int] = {}  # name -> size: damaged objects, not read again each poll

    @property
    def name(self) -> str:
        return self.rc.name

    def open(self):
        from ..repository import Repository
        from ..storage import open_storage

        storage = open_storage(self.rc.url, self.rc.storage)
        try:
            return Repository.open(storage, self.key)
        except BaseException:
            storage.close()
            raise

    # ---- poll --------------------------------------------------------------------------------

    def poll(self) -> bool:
        """One poll; False when the repository could not be reached (or read)."""
        now = self.clock()
        try:
            repo = self.open()
        except RekkordError as e:
            self._failed(now, str(e))
            return False
        try:
            listing = dict(repo.storage.list(""))
            self._poll(repo, listing, now)
        except RekkordError as e:
            self._failed(now, str(e))
            return False
        finally:
            repo.storage.close()
        self.state.update_repository(self.name, repo_id=repo.id, last_poll=now, last_poll_ok=now, poll_error=None,
                                     failed_polls=0)
        return True

    def _failed(self, now: float, message: str):
        r = self.state.repository(self.name)
        self.state.update_repository(self.name, last_poll=now, poll_error=message[:1000],
                                     failed_polls=r["failed_polls"] + 1)
        log.warning("repository %s: %s", self.name, message)

    def _poll(self, repo, listing: dict[str, int], now: float):
        name = self.name
        digest = hashlib.sha256(repr(sorted((n, s) for n, s in listing.items()
                                            if n.startswith(("keys/", "revoked/")))).encode()).hexdigest()
        prev = self.state.repository(name)
        reload_all = prev["keys_digest"] != digest
        # Snapshot records.
        present = {n[len("snapshots/"):]: s for n, s in listing.items() if n.startswith("snapshots/")}
        known = {r["id"]: r for r in self.state.q("SELECT id, gone FROM snapshots WHERE repo = ?", (name,))}
        todo = [sid for sid in present if (reload_all or sid not in known)
                and (reload_all or self._unopenable.get(f"snapshots/{sid}") != present[sid])]

        def load(sid):
            try:
                return sid, repo.load_snapshot(sid)
            except (IntegrityError, UnsupportedFormat):
                return sid, None
            except SnapshotNotFound:
                return sid, False

        rows = []
        with ThreadPoolExecutor(max(1, min(16, repo.storage.connections))) as pool:
            loaded = list(pool.map(load, todo))  # (a StorageError ends the poll: the repository is unreachable)
        for sid, snap in loaded:
            if not snap:
                if snap is None:
                    self._unopenable[f"snapshots/{sid}"] = present[sid]  # damage: check reports it
                continue
            st = snap.stats if isinstance(snap.stats, dict) else {}
            rows.append((name, sid, _text(snap.channel), _text(snap.host, ""), _text(snap.kid, ""),
                         _int(snap.time_ns) or 0, int(bool(snap.signature_ok)),
                         "; ".join(map(str, snap.problems))[:1000] or None,
                         *[_int(st.get(k)) for k in STAT_FIELDS], _num(st.get("duration")), now))
        # Failure reports (the audit part).
        rpresent = {n: s for n, s in listing.items() if n.startswith(rp.PREFIX)}
        rknown = {r["id"] for r in self.state.q("SELECT id FROM reports WHERE repo = ? AND gone IS NULL", (name,))}
        rtodo = [(oname, size) for oname, size in rpresent.items() if reload_all or (
            oname[len(rp.PREFIX):] not in rknown and self._unopenable.get(oname) != size)]

        def load_report(item):
            oname, size = item
            try:
                if size > rp.MAX_SIZE:
                    raise IntegrityError("too large")
                return oname, rp.open_report(repo, oname[len(rp.PREFIX):], repo.storage.read(oname))
            except (IntegrityError, UnsupportedFormat):
                return oname, None
            except ObjectNotFound:
                return oname, False

        rrows = []
        with ThreadPoolExecutor(max(1, min(16, repo.storage.connections))) as pool:
            rloaded = list(pool.map(load_report, rtodo))
        for oname, rep in rloaded:
            if not rep:
                if rep is None:
                    self._unopenable[oname] = rpresent[oname]  # damage or forgery: check reports it
                continue
            rrows.append((name, rep.id, rep.channel, rep.host, rep.kid, rep.time_ns, rep.status, rep.exit_code,
                          rep.error, rep.files, rep.warnings, rep.bytes, int(rep.trusted),
                          "; ".join(rep.problems)[:1000] or None, now))
        total = sum(listing.values())
        with self.state.tx() as db:
            db.executemany(
                "INSERT INTO snapshots (repo, id, channel, host, kid, time_ns, trusted, problem, files, bytes_total, "
                "bytes_new, bytes_stored, warnings, duration, first_seen) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (repo, id) DO UPDATE SET "
                "trusted = excluded.trusted, problem = excluded.problem, gone = NULL", rows)
            gone = [sid for sid, r in known.items() if sid not in present and r["gone"] is None]
            back = [sid for sid, r in known.items() if sid in present and r["gone"] is not None]
            db.executemany("UPDATE snapshots SET gone = ? WHERE repo = ? AND id = ?", [(now, name, s) for s in gone])
            db.executemany("UPDATE snapshots SET gone = NULL WHERE repo = ? AND id = ?", [(name, s) for s in back])
            db.executemany(
                "INSERT INTO reports (repo, id, channel, host, kid, time_ns, status, exit_code, error, files, "
                "warnings, bytes, trusted, problem, first_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (repo, id) DO UPDATE SET trusted = excluded.trusted, problem = excluded.problem, "
                "gone = NULL", rrows)
            rgone = [rid for rid in rknown if rp.PREFIX + rid not in rpresent]
            db.executemany("UPDATE reports SET gone = ? WHERE repo = ? AND id = ?", [(now, name, r) for r in rgone])
            last = db.execute("SELECT * FROM sizes WHERE repo = ? ORDER BY time DESC LIMIT 1", (name,)).fetchone()
            nsnap = len(present)
            if last is None or (last["bytes"], last["objects"], last["snapshots"]) != (total, len(listing), nsnap) \
                    or now - last["time"] >= SIZE_SAMPLE_EVERY:
                db.execute("INSERT OR REPLACE INTO sizes (repo, time, bytes, objects, snapshots) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (name, now, total, len(listing), nsnap))
            db.execute("UPDATE repositories SET bytes = ?, objects = ?, keys_digest = ? WHERE name = ?",
                       (total, len(listing), digest, name))
            if prev["size_baseline"] is None:
                db.execute("UPDATE repositories SET size_baseline = ?, size_baseline_time = ? WHERE name = ?",
                           (total, now, name))
        for oname in list(self._unopenable):
            if oname not in listing:
                del self._unopenable[oname]

    # ---- check -----------------------------------------------------------------------------------

    def check(self) -> dict:
        """One audit-level check; returns the stored row."""
        from ..cache import Cache, cache_path
        from ..check import Checker

        started = self.clock()
        t0 = time.monotonic()
        self.state.update_repository(self.name, check_requested=None)
        try:
            repo = self.open()
        except RekkordError as e:
            self.state.add_check(self.name, started, round(time.monotonic() - t0, 3), "error", error=str(e)[:1000])
            log.warning("repository %s: check: %s", self.name, e)
            return self.state.last_check(self.name)
        try:
            cache = Cache(cache_path(self.cache_dir, repo.id, "audit"))
            try:
                r = Checker(repo, cache, subset=self.rc.check_subset, heal=False).run()
            finally:
                cache.close()
        except RekkordError as e:
            self.state.add_check(self.name, started, round(time.monotonic() - t0, 3), "error", error=str(e)[:1000])
            log.warning("repository %s: check: %s", self.name, e)
            return self.state.last_check(self.name)
        finally:
            repo.storage.close()
        problems = [{"object": p.object[:300], "what": p.what, "kind": p.kind, "message": p.message[:1000],
                     "snapshots": p.snapshots[:100]} for p in r.problems[:1000]]
        degraded = set(r.degraded_snapshots)
        damaged = [{"id": sid, "channel": _text(r.snapshot_info.get(sid, {}).get("channel")),
                    "host": _text(r.snapshot_info.get(sid, {}).get("host"), ""),
                    "time": r.snapshot_info.get(sid, {}).get("time", ""),
                    # (degraded: a copy of an index blob or reference list is bad, the other one intact)
                    **({"degraded": True} if sid in degraded else {})}
                   for sid in (r.damaged_snapshots + [s for s in degraded if s not in r.damaged_snapshots])[:1000]]
        self.state.add_check(self.name, started, r.duration, r.status, snapshots=r.snapshots, blobs=r.blobs_checked,
                             bytes_read=r.bytes_read, problems=problems, damaged=damaged)
        log.info("repository %s: check %s: %d snapshots, %d blobs, %d problems, %.1fs", self.name, r.status,
                 r.snapshots, r.blobs_checked, len(r.problems), r.duration)
        return self.state.last_check(self.name)

    def accept_size(self) -> None:
        """Make the current size the baseline (after a check, unless a size
        alert is open; or when an admin acknowledges one)."""
        r = self.state.repository(self.name)
        if r["bytes"] is not None:
            self.state.update_repository(self.name, size_baseline=r["bytes"], size_baseline_time=self.clock())


# --- conditions -----------------------------------------------------------------------------------


def check_due(state, cfg: MonitorConfig, rc: RepoConfig, now: float) -> bool:
    r = state.repository(rc.name)
    if r["check_requested"] is not None:
        return True
    last = state.last_check(rc.name)
    if last is None:
        return True
    if last["status"] in ("error", "incomplete"):  # try again soon
        return now - last["started"] >= min(rc.check_every, max(cfg.poll_every, 60.0))
    return now - last["started"] >= rc.check_every


def conditions(state, cfg: MonitorConfig, rc: RepoConfig, now: float) -> tuple[list[Condition], set[str]]:
    """The conditions that hold for ``rc`` now, and the alert kinds to leave
    as they are (everything but reachability while it cannot be reached)."""
    name = rc.name
    r = state.repository(name)
    out: list[Condition] = []
    if r["failed_polls"] >= cfg.unreachable_after:
        since = f" (last reached {when(r['last_poll_ok'])})" if r["last_poll_ok"] else " (never reached)"
        out.append(Condition(f"unreachable/{name}", "unreachable", f"{name}: the repository cannot be reached",
                             f"Repository {name} ({rc.url}) could not be read {r['failed_polls']} times in a "
                             f"row{since}:\n{r['poll_error']}"))
        return out, {"stale", "failed", "warnings", "damage", "untrusted", "unexpected-host", "size"}
    if r["last_poll_ok"] is None:
        return out, {"unreachable", "stale", "failed", "warnings", "damage", "untrusted", "unexpected-host",
                     "size"}  # nothing known yet
    last = state.last_check(name)
    if last is not None and last["status"] in ("error", "incomplete"):
        why = last["error"] or "; ".join(f"{p['what']} {p['object']}: {p['message']}" for p in last["problems"]
                                         if p["kind"] == "unverified")[:2000]
        out.append(Condition(f"unreachable/{name}", "unreachable", f"{name}: the check could not complete",
                             f"The audit check of repository {name} at {when(last['started'])} could not read "
                             f"everything:\n{why}"))
    snaps = state.q("SELECT * FROM snapshots WHERE repo = ? AND gone IS NULL ORDER BY time_ns", (name,))
    by_id = {s["id"]: s for s in snaps}
    latest: dict[str, object] = {}
    latest_host: dict[tuple[str, str], int] = {}
    untrusted: dict[str, list] = {}
    bad_host: dict[str, list] = {}
    for s in snaps:
        if s["trusted"]:
            latest[s["channel"]] = s
            latest_host[(s["channel"], s["host"])] = s["time_ns"]
            hosts = rc.rule(s["channel"]).hosts
            if hosts and s["host"] not in hosts:
                bad_host.setdefault(s["channel"], []).append(s)
        else:
            untrusted.setdefault(s["channel"], []).append((s, s["problem"] or "untrusted"))
    # Check-time findings on records (e.g. one that appeared after its key was revoked but claims an earlier time).
    if last is not None:
        for p in last["problems"]:
            if p["what"] == "snapshot record" and p["kind"] == "untrusted":
                for sid in p["snapshots"]:
                    s = by_id.get(sid)
                    if s is not None and s["trusted"]:
                        untrusted.setdefault(s["channel"], []).append((s, p["message"]))
    # Stale channels: configured ones and those with a trusted snapshot.
    for ch in sorted(set(latest) | set(rc.channels)):
        rule = rc.rule(ch)
        s = latest.get(ch)
        if s is None:
            out.append(Condition(f"stale/{name}/{ch}", "stale", f"{name}: channel {ch} is stale",
                                 f"Channel {ch} of repository {name} has no trusted snapshot (expected one at least "
                                 f"every {span(rule.max_age)})."))
            continue
        age = now - s["time_ns"] / 1e9
        if age > rule.max_age:
            out.append(Condition(f"stale/{name}/{ch}", "stale", f"{name}: channel {ch} is stale",
                                 f"The latest trusted snapshot of channel {ch} in repository {name} is {span(age)} old "
                                 f"(limit {span(rule.max_age)}): snapshot {s['id'][:8]} from host {s['host']} at "
                                 f"{when(s['time_ns'] / 1e9)}."))
    for ch, items in sorted(untrusted.items()):
        lines = [f"- snapshot {s['id']} at {when(s['time_ns'] / 1e9)}, host {s['host']}, key {s['kid']}: {why}"
                 for s, why in items[:20]]
        more = f"\n... and {len(items) - 20} more" if len(items) > 20 else ""
        out.append(Condition(f"untrusted/{name}/{ch}", "untrusted",
                             f"{name}: untrusted snapshots in channel {ch}",
                             f"{len(items)} snapshots of channel {ch} in repository {name} are signed by a revoked or "
                             f"unknown key (check the machine; forget them once understood):\n" + "\n".join(lines)
                             + more))
    for ch, items in sorted(bad_host.items()):
        hosts = ", ".join(rc.rule(ch).hosts)
        lines = [f"- snapshot {s['id']} at {when(s['time_ns'] / 1e9)} from host {s['host']} (key {s['kid']})"
                 for s in items[:20]]
        more = f"\n... and {len(items) - 20} more" if len(items) > 20 else ""
        out.append(Condition(f"unexpected-host/{name}/{ch}", "unexpected-host",
                             f"{name}: channel {ch} has snapshots from an unexpected host",
                             f"Channel {ch} of repository {name} is expected from {hosts} only:\n" + "\n".join(lines)
                             + more))
    # Failure reports newer than the channel's latest trusted snapshot from that host.
    reps = state.q("SELECT * FROM reports WHERE repo = ? AND gone IS NULL AND trusted = 1 ORDER BY time_ns", (name,))
    last_rep: dict[tuple[str, str], object] = {}
    for x in reps:
        last_rep[(x["channel"], x["host"])] = x
    for (ch, host), x in sorted(last_rep.items()):
        if x["time_ns"] <= latest_host.get((ch, host), -1):
            continue
        t = when(x["time_ns"] / 1e9)
        counts = f"{x['files']} files, {human_bytes(x['bytes'])}, {x['warnings']} warnings"
        if x["status"] == "failure":
            out.append(Condition(f"failed/{name}/{ch}/{host}", "failed",
                                 f"{name}: the save of channel {ch} on {host} failed",
                                 f"The save of channel {ch} on host {host} failed at {t} with exit code "
                                 f"{x['exit_code']} ({x['error']}); {counts} before it stopped. No snapshot since. "
                                 f"The details are sealed to the data key: `rekkord reports --details` with a read "
                                 f"key (report {x['id'][:8]})."))
        elif rc.rule(ch).warnings == "alert":
            out.append(Condition(f"warnings/{name}/{ch}/{host}", "warnings",
                                 f"{name}: the save of channel {ch} on {host} had warnings",
                                 f"The save of channel {ch} on host {host} at {t} completed with exit code "
                                 f"{x['exit_code']}: {counts}. The details are sealed to the data key: `rekkord "
                                 f"reports --details` with a read key (report {x['id'][:8]}).", "warning"))
    # Damage found by the latest check.
    if last is not None and last["status"] == "damaged":
        dmg = damage_problems(last)
        if dmg:
            lines = []
            for p in dmg[:30]:
                snaps_ = f" (snapshots {', '.join(x[:8] for x in p['snapshots'][:10])})" if p["snapshots"] else ""
                lines.append(f"- {p['what']} {p['object']}: {p['message']}{snaps_}")
            more = f"\n... and {len(dmg) - 30} more" if len(dmg) > 30 else ""
            hurt = {s for p in dmg for s in p["snapshots"]}
            info = {d["id"]: d for d in last["damaged"]}
            hl = [f"- {sid} channel {info.get(sid, {}).get('channel', '?')}, host {info.get(sid, {}).get('host', '?')}"
                  f", {info.get(sid, {}).get('time', '')}"
                  + (" (degraded: still restorable from the other copy; `rekkord check --repair` writes it again)"
                     if info.get(sid, {}).get("degraded") else "") for sid in sorted(hurt)[:50]]
            hmore = f"\n... and {len(hurt) - 50} more" if len(hurt) > 50 else ""
            out.append(Condition(f"damage/{name}", "damage", f"{name}: check found damage",
                                 f"The audit check of repository {name} at {when(last['started'])} found "
                                 f"{len(dmg)} problems:\n" + "\n".join(lines) + more +
                                 (f"\n\nSnapshots hurt ({len(hurt)}):\n" + "\n".join(hl) + hmore if hurt else
                                  "\n\nNo snapshot is hurt.")))
    # Size against the baseline (the size at the last check without a size alert).
    base, cur = r["size_baseline"], r["bytes"]
    if base and cur is not None:
        change = cur / base - 1
        if change < -rc.shrink_limit or change > rc.grow_limit:
            verb = "shrank" if change < 0 else "grew"
            limit = rc.shrink_limit if change < 0 else rc.grow_limit
            out.append(Condition(f"size/{name}", "size", f"{name}: the repository {verb} by {abs(change):.0%}",
                                 f"Repository {name} {verb} from {human_bytes(base)} "
                                 f"(at {when(r['size_baseline_time'])}) to {human_bytes(cur)}, by {abs(change):.0%} "
                                 f"(limit {limit:.0%}): "
                                 + ("mass deletion?" if change < 0 else "a runaway job?")
                                 + " Acknowledge the alert in the web UI to accept the new size."))
    return out, set()


def damage_problems(check: dict | None) -> list[dict]:
    """The problems of a check that are damage; a record signed by a revoked
    or unknown key is the untrusted-snapshot alert's, not damage."""
    if check is None:
        return []
    return [p for p in check["problems"] if p["kind"] != "unverified"
            and not (p["what"] == "snapshot record" and p["kind"] == "untrusted")]


# --- the overview ----------------------------------------------------------------------------------


def channel_overview(state, rc: RepoConfig, now: float) -> list[dict]:
    """Per channel: latest trusted snapshot, age, size, status and flags."""
    name = rc.name
    snaps = state.q("SELECT * FROM snapshots WHERE repo = ? AND gone IS NULL ORDER BY time_ns", (name,))
    reps = state.q("SELECT * FROM reports WHERE repo = ? AND gone IS NULL AND trusted = 1 ORDER BY time_ns", (name,))
    last = state.last_check(name)
    damaged = {sid for p in damage_problems(last) for sid in p["snapshots"]}
    chans: dict[str, dict] = {}
    for ch in rc.channels:
        chans[ch] = _chan(ch)
    for s in snaps:
        c = chans.setdefault(s["channel"], _chan(s["channel"]))
        if s["trusted"]:
            c["latest"] = dict(s)
            c["snapshots"] += 1
            c["hosts"].add(s["host"])
            c["last_host"][s["host"]] = s["time_ns"]
        else:
            c["untrusted"] += 1
        if s["id"] in damaged:
            c["damaged"] += 1
    for x in reps:
        c = chans.get(x["channel"])
        if c is None:
            c = chans[x["channel"]] = _chan(x["channel"])
        c["report"][x["host"]] = dict(x)
    out = []
    for ch, c in sorted(chans.items()):
        rule = rc.rule(ch)
        s = c["latest"]
        c["age"] = now - s["time_ns"] / 1e9 if s else None
        c["max_age"] = rule.max_age
        c["stale"] = (s is None and ch in rc.channels) or (c["age"] is not None and c["age"] > rule.max_age)
        fails = [x for h, x in c["report"].items() if x["time_ns"] > c["last_host"].get(h, -1)]
        c["failed"] = [x for x in fails if x["status"] == "failure"]
        c["warned"] = [x for x in fails if x["status"] == "warning"]
        c["status"] = ("damaged" if c["damaged"] else "failed" if c["failed"] else "stale" if c["stale"]
                       else "untrusted" if c["untrusted"] else "warning" if c["warned"] else "fresh")
        c["hosts"] = sorted(c["hosts"])
        out.append(c)
    return out


def _chan(ch: str) -> dict:
    return {"channel": ch, "latest": None, "snapshots": 0, "untrusted": 0, "damaged": 0, "hosts": set(),
            "last_host": {}, "report": {}}


def cache_dir(cfg: MonitorConfig) -> str:
    return os.path.join(cfg.state_dir, "cache")

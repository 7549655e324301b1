"""Retention policies: which snapshots ``forget`` removes.

The rules follow restic's documented semantics (``restic forget``, 0.17):
snapshots are grouped (by default by host, channel and saved paths, as
restic groups by host and paths), each group is sorted newest first, and a
snapshot is kept when any rule keeps it:

* ``last`` n: the n newest; ``hourly/daily/weekly/monthly/yearly`` n: the
  newest snapshot of each of the n most recent hours/days/ISO weeks/months/
  years that have snapshots (-1: unlimited).  While a counter has counts left
  when the oldest snapshot is reached, that oldest snapshot is kept too
  ("oldest daily snapshot").
* ``within`` d: every snapshot newer than the latest snapshot minus d
  (d = years, months, days, hours: ``1y2m3d4h``); ``within_daily`` d etc.:
  the daily/... bucket rule, applied only within d.  "Latest" ignores
  snapshots dated in the future, which are therefore always kept.
* ``keep_tags``: snapshots carrying every tag of one of the tag lists
  (``""`` matches untagged snapshots).

Differences from restic (docs/maintenance.md): groups default to host,
channel and paths, and paths are sealed with the data key: a key that cannot
read them (audit) groups by host and channel, unless it is asked for paths
by name (then it is refused); calendar buckets use the
time zone of the machine running forget (restic: the zone recorded in each
snapshot); snapshots whose signature or key is not trusted are never counted
nor removed by a policy (only by id); explicit ids and a policy cannot be
combined; an empty policy is an error rather than a no-op.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field

from . import crypto, keys as keymod
from .errors import IntegrityError, ObjectNotFound, PermissionDenied, SnapshotNotFound, UsageError

GROUP_FIELDS = ("host", "channel", "paths", "key", "tags")
#: restic's default (host, paths) with rekkord's channel: one machine's
#: snapshots, skewed or flooded, never push out another machine's.
DEFAULT_GROUP_BY = ("host", "channel", "paths")
#: The signed log of forgotten snapshots (kept 90 days; removed by prune).
FORGOTTEN = "gc/forgotten/"


# ---- durations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Duration:
    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        """``2y5m7d3h`` (any subset, in any order; restic's format)."""
        s = text.strip()
        if not s:
            raise UsageError("empty duration (use e.g. 7d, 1m, 2y5m7d3h)")
        parts = re.findall(r"(\d+)([ymdh])", s)
        if "".join(n + u for n, u in parts) != s:
            raise UsageError(f"invalid duration {text!r} (use numbers with y, m, d or h, e.g. 1y6m or 14d)")
        d = {"y": 0, "m": 0, "d": 0, "h": 0}
        for n, u in parts:
            d[u] = int(n)
        return cls(d["y"], d["m"], d["d"], d["h"])

    def zero(self) -> bool:
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        s = "".join(f"{v}{u}" for v, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"),
                                          (self.hours, "h")) if v)
        return s or "0h"

    def before(self, t: dt.datetime) -> dt.datetime:
        """``t`` minus this duration, calendar-wise (Go's AddDate, then hours)."""
        months = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        y, m = divmod(months, 12)
        day = dt.date(y, m + 1, 1) + dt.timedelta(days=t.day - 1 - self.days)  # normalises like Go
        out = t.replace(year=day.year, month=day.month, day=day.day)
        return out - dt.timedelta(hours=self.hours)


# ---- policy ----------------------------------------------------------------------------


@dataclass
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    within_hourly: Duration | None = None
    within_daily: Duration | None = None
    within_weekly: Duration | None = None
    within_monthly: Duration | None = None
    within_yearly: Duration | None = None
    keep_tags: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < -1:
                raise UsageError(f"--keep-{name} must be a count or 'unlimited'")

    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        withins = (self.within, self.within_hourly, self.within_daily, self.within_weekly,
                   self.within_monthly, self.within_yearly)
        return not any(counts) and all(w is None or w.zero() for w in withins) and not self.keep_tags

    def only_tags(self) -> bool:
        return bool(self.keep_tags) and dataclasses.replace(self, keep_tags=[]).empty()

    def describe(self) -> str:
        parts = []
        for n, word in ((self.last, "latest"), (self.hourly, "hourly"), (self.daily, "daily"),
                        (self.weekly, "weekly"), (self.monthly, "monthly"), (self.yearly, "yearly")):
            if n == -1:
                parts.append(f"all {word}")
            elif n:
                parts.append(f"{n} {word}")
        s = ", ".join(parts) + (" snapshots" if parts else "")
        for w, word in ((self.within_hourly, "hourly"), (self.within_daily, "daily"), (self.within_weekly, "weekly"),
                        (self.within_monthly, "monthly"), (self.within_yearly, "yearly")):
            if w is not None and not w.zero():
                s += (", " if s else "") + f"{word} snapshots within {w}"
        if self.keep_tags:
            s += (" and " if s else "") + "all snapshots with tags " + _tag_lists(self.keep_tags)
        if self.within is not None and not self.within.zero():
            s += (" and " if s else "") + f"all snapshots within {self.within} of the newest"
        return "keep " + s if s else "remove"


def _tag_lists(lists: list[list[str]]) -> str:
    return "[" + " ".join("[" + " ".join(lst) + "]" for lst in lists) + "]"


def has_tags(tags: list[str], wanted: list[str]) -> bool:
    """restic's HasTags: every tag of ``wanted``; ``""`` matches untagged."""
    for t in wanted:
        if t == "" and not tags:
            return True
        if t not in tags:
            return False
    return True


@dataclass
class Decision:
    snapshot: object  # anything with .id, .time_ns, .tags
    keep: bool
    reasons: list[str]


def _buckets(t: dt.datetime, nr: int):
    y, w, _ = t.isocalendar()
    return {
        "last": nr,
        "hourly": ((t.year * 100 + t.month) * 100 + t.day) * 100 + t.hour,
        "daily": (t.year * 100 + t.month) * 100 + t.day,
        "weekly": y * 100 + w,
        "monthly": t.year * 100 + t.month,
        "yearly": t.year,
    }


def to_datetime(time_ns: int, tz: dt.tzinfo | None) -> dt.datetime:
    """Local wall-clock time of a snapshot (``tz=None``: this machine's zone)."""
    if tz is None:
        return dt.datetime.fromtimestamp(time_ns / 1e9)
    return dt.datetime.fromtimestamp(time_ns / 1e9, tz)


def apply_policy(snapshots: list, policy: Policy, *, now_ns: int | None = None,
                 tz: dt.tzinfo | None = None) -> list[Decision]:
    """Decide for one group.  Returns decisions newest first (ties keep the
    input order, as restic's stable sort does)."""
    if policy.empty():
        raise UsageError("no retention policy given: nothing would be removed")
    items = sorted(enumerate(snapshots), key=lambda p: (-p[1].time_ns, p[0]))
    items = [s for _, s in items]
    if not items:
        return []
    now_ns = time.time_ns() if now_ns is None else now_ns
    times = [to_datetime(s.time_ns, tz) for s in items]
    past = [t for s, t in zip(items, times) if s.time_ns < now_ns]
    latest = max(past) if past else None  # future snapshots don't count
    counts = [("last", policy.last, "last snapshot"), ("hourly", policy.hourly, "hourly snapshot"),
              ("daily", policy.daily, "daily snapshot"), ("weekly", policy.weekly, "weekly snapshot"),
              ("monthly", policy.monthly, "monthly snapshot"), ("yearly", policy.yearly, "yearly snapshot")]
    counters = [[kind, n, None, reason] for kind, n, reason in counts]
    withins = [("hourly", policy.within_hourly, "hourly within"), ("daily", policy.within_daily, "daily within"),
               ("weekly", policy.within_weekly, "weekly within"), ("monthly", policy.within_monthly, "monthly within"),
               ("yearly", policy.within_yearly, "yearly within")]
    within_state = [[kind, d, None, reason] for kind, d, reason in withins if d is not None and not d.zero()]

    def threshold(d: Duration):
        return None if latest is None else d.before(latest)

    out = []
    last_nr = len(items) - 1
    for nr, (snap, t) in enumerate(zip(items, times)):
        keep = False
        reasons = []
        tags = list(getattr(snap, "tags", []) or [])
        for lst in policy.keep_tags:
            if has_tags(tags, lst):
                keep = True
                reasons.append("has tags [" + " ".join(lst) + "]")
        if policy.within is not None and not policy.within.zero():
            th = threshold(policy.within)
            if th is None or t > th:
                keep = True
                reasons.append(f"within {policy.within}")
        b = _buckets(t, nr)
        for c in counters:
            kind, n, last, reason = c
            if n > 0 or n == -1:
                val = b[kind]
                if val != last or nr == last_nr:
                    keep = True
                    reasons.append(f"oldest {reason}" if val == last and nr == last_nr else reason)
                    c[2] = val
                    if n > 0:
                        c[1] = n - 1
        for c in within_state:
            kind, d, last, reason = c
            th = threshold(d)
            if th is None or t > th:
                val = b[kind]
                if val != last or nr == last_nr:
                    keep = True
                    r = f"oldest {reason}" if val == last and nr == last_nr else reason
                    reasons.append(f"{r} {d}")
                    c[2] = val
        out.append(Decision(snap, keep, reasons))
    return out


# ---- forget ------------------------------------------------------------------------------


def group_key(snap, group_by: tuple[str, ...], paths=None) -> tuple:
    """The group of ``snap``: ``((field, value), ...)`` in ``group_by``
    order.  ``paths(snap)`` gives the saved paths for the ``paths`` field (a
    sorted tuple; None when the record's private part does not open: such
    snapshots form a group of their own)."""
    key = []
    for f in group_by:
        if f == "channel":
            key.append(("channel", snap.channel))
        elif f == "host":
            key.append(("host", snap.host))
        elif f == "paths":
            p = paths(snap) if paths is not None else None
            key.append(("paths", None if p is None else tuple(sorted(p))))
        elif f == "key":
            key.append(("key", snap.kid))
        elif f == "tags":
            key.append(("tags", ",".join(sorted(snap.tags))))
    return tuple(key)


def _group_order(key: tuple) -> str:
    return json.dumps([[k, list(v) if isinstance(v, tuple) else v] for k, v in key])


def describe_group(key: tuple) -> str:
    """``host web01, channel etc, paths /etc /srv`` (``all snapshots`` for
    one group; ``paths ?``: the saved paths could not be read)."""
    parts = []
    for k, v in key:
        if k == "paths":
            v = "?" if v is None else " ".join(v)
        parts.append(f"{k} {v}")
    return ", ".join(parts) or "all snapshots"


def parse_group_by(text: str | None) -> tuple[str, ...]:
    """``host,channel,paths`` -> a tuple of fields; None: the default."""
    if text is None:
        return DEFAULT_GROUP_BY
    fields = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    for f in fields:
        if f not in GROUP_FIELDS:
            raise UsageError(f"cannot group by {f!r} (choose from {', '.join(GROUP_FIELDS)}, or '' for one group)")
    return fields


@dataclass
class ForgetGroup:
    key: tuple
    decisions: list[Decision]

    def describe(self) -> str:
        return describe_group(self.key)

    def to_json(self, fmt_snap) -> dict:
        group = {k: list(v) if isinstance(v, tuple) else v for k, v in self.key}
        return {"group": group, "group_title": self.describe(), "snapshots": [
            {**fmt_snap(d.snapshot), "action": "keep" if d.keep else "remove", "reasons": d.reasons}
            for d in self.decisions]}


@dataclass
class ForgetReport:
    dry_run: bool
    policy: str
    groups: list[ForgetGroup] = field(default_factory=list)
    untrusted: list = field(default_factory=list)  # snapshots not evaluated (signature or key not trusted)
    removed: list[str] = field(default_factory=list)  # removed (or, in a dry run, to remove)
    explicit: bool = False
    group_by: tuple[str, ...] = ()  # the fields the groups were made by
    paths_unread: bool = False  # paths were left out of the default grouping (the key cannot read them)

    def to_json(self) -> dict:
        def snap(s):
            j = s.to_json()
            return {k: j[k] for k in ("id", "short_id", "channel", "time", "host", "key", "tags") if k in j}

        return {"dry_run": self.dry_run, "policy": self.policy, "group_by": list(self.group_by),
                "paths_unread": self.paths_unread,
                "groups": [g.to_json(snap) for g in self.groups],
                "untrusted": [{**snap(s), "problems": s.problems} for s in self.untrusted],
                "removed": self.removed}


def _resolve_ids(ids: list[str], all_ids: list[str]) -> list[str]:
    out = []
    for spec in ids:
        if spec in all_ids:
            out.append(spec)
            continue
        matches = [i for i in all_ids if i.startswith(spec)] if len(spec) >= 4 else []
        if len(matches) == 1:
            out.append(matches[0])
        elif len(matches) > 1:
            raise UsageError(f"snapshot prefix {spec!r} is ambiguous ({len(matches)} snapshots match)")
        else:
            raise SnapshotNotFound(f"snapshot {spec} not found (give an id or a unique prefix of 4+ characters)")
    return list(dict.fromkeys(out))


def split_ids_and_channels(repo, args) -> tuple[list[str], list[str]]:
    """Positional arguments of ``forget``: an argument that is a snapshot id
    or a unique prefix of one (4+ characters) is an id (restic's ``forget
    ID...``); any other is a channel name, which must have snapshots."""
    all_ids = repo.snapshot_ids()
    ids, names = [], []
    for a in args:
        if a in all_ids or (len(a) >= 4 and sum(i.startswith(a) for i in all_ids) == 1):
            ids.append(a)
        elif len(a) >= 4 and any(i.startswith(a) for i in all_ids):
            raise UsageError(f"snapshot prefix {a!r} is ambiguous "
                             f"({sum(i.startswith(a) for i in all_ids)} snapshots match)")
        else:
            names.append(a)
    if names:
        known = {s.channel for s in repo.snapshots()}
        for n in names:
            if n not in known:
                raise SnapshotNotFound(f"no snapshot or channel named {n!r}")
    return ids, names


class _WithoutSnapshots:
    """``repo`` as if the snapshots ``sids`` were gone (a dry run of
    ``forget --prune`` shows what prune would do once they are)."""

    def __init__(self, repo, sids):
        self._repo = repo
        self._gone = set(sids)

    def __getattr__(self, name):
        return getattr(self._repo, name)

    def snapshot_ids(self) -> list[str]:
        return [i for i in self._repo.snapshot_ids() if i not in self._gone]

    def load_snapshot(self, sid: str):
        if sid in self._gone:
            raise SnapshotNotFound(f"snapshot {sid} not found")
        return self._repo.load_snapshot(sid)

    def snapshots(self, **kw):
        return [x for x in self._repo.snapshots(**kw) if x.id not in self._gone]


def without_snapshots(repo, sids):
    return _WithoutSnapshots(repo, sids) if sids else repo


def forget(repo, policy: Policy | None = None, *, ids: list[str] | tuple = (), channels=(), hosts=(),
           keys=(), group_by: tuple[str, ...] | None = None, dry_run: bool = False,
           now_ns: int | None = None, tz: dt.tzinfo | None = None, on_problem=None) -> ForgetReport:
    """Remove snapshots by id, or by ``policy`` within each group of the
    selected snapshots.  Works with an audit, full or admin key (records are
    opened with the log key; only grouping by ``paths`` decrypts, the
    records' private parts, with the data key).

    ``group_by`` None: :data:`DEFAULT_GROUP_BY` (host, channel, paths), where
    a key that cannot read saved paths (audit) leaves paths out; ``paths``
    asked for by name with such a key raises PermissionDenied."""
    repo.key.require("forget", "forget snapshots")
    paths_unread = False
    if group_by is None:
        group_by = DEFAULT_GROUP_BY
        if not repo.key.can("read"):
            group_by = tuple(f for f in group_by if f != "paths")
            paths_unread = True
    group_by = tuple(group_by)
    if "paths" in group_by and not ids and not repo.key.can("read"):
        raise PermissionDenied(f"{repo.key.role} keys cannot group by paths (saved paths are sealed with the "
                               "data key; use a full or admin key, or group by host,channel)")
    if ids and policy is not None and not policy.empty():
        raise UsageError("give snapshot ids or a retention policy, not both")
    report = ForgetReport(dry_run=dry_run, policy="explicit ids" if ids else
                          (policy.describe() if policy else "remove"), explicit=bool(ids),
                          group_by=() if ids else group_by, paths_unread=paths_unread and not ids)
    if ids:
        report.removed = _resolve_ids(list(ids), repo.snapshot_ids())
    else:
        if policy is None or policy.empty():
            raise UsageError("no retention policy given (--keep-*) and no snapshot ids: nothing to do")
        snaps = repo.snapshots(on_problem=on_problem)
        if channels:
            snaps = [s for s in snaps if s.channel in channels]
        if hosts:
            snaps = [s for s in snaps if s.host in hosts]
        if keys:
            snaps = [s for s in snaps if any(s.kid.startswith(k) for k in keys)]
        report.untrusted = [s for s in snaps if not s.signature_ok]
        groups: dict[tuple, list] = {}
        paths = None
        if "paths" in group_by:
            from .selection import saved_paths

            def paths(snap):
                return saved_paths(repo, snap)

        for s in snaps:
            if s.signature_ok:
                groups.setdefault(group_key(s, group_by, paths), []).append(s)
        for key in sorted(groups, key=_group_order):
            decisions = apply_policy(groups[key], policy, now_ns=now_ns, tz=tz)
            if policy.only_tags() and not any(d.keep for d in decisions):
                what = describe_group(key)
                raise UsageError(f"refusing to remove every snapshot of group {what}: none has the tags "
                                 f"given with --keep-tag")
            report.groups.append(ForgetGroup(key, decisions))
            report.removed.extend(d.snapshot.id for d in decisions if not d.keep)
    if not dry_run and report.removed:
        _log_forgotten(repo, report.removed)
        for sid in report.removed:
            repo.storage.delete(f"snapshots/{sid}")
    return report


# ---- the signed log of forgotten snapshots --------------------------------------------------


def _log_forgotten(repo, sids: list[str]) -> str:
    """Before removing records, publish which ones and by which key, signed
    (``gc/forgotten/<time>-<rand>``): check can then tell a forgotten snapshot from one
    that vanished (deleted by someone holding only the storage)."""
    body = {"v": 1, "repo": repo.id, "kid": repo.key.kid, "time_ns": time.time_ns(), "snapshots": sorted(sids)}
    sig = crypto.sign(repo.key.sign_seed, b"rekkord forgotten v1\0" + keymod.canonical(body))
    name = FORGOTTEN + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + crypto.random_bytes(4).hex()
    repo.storage.write(name, json.dumps({"body": body, "sig": sig.hex()}, sort_keys=True).encode())
    return name


def forgotten_snapshots(repo, on_problem=None) -> dict[str, dict]:
    """Snapshot id -> {kid, time_ns, entry, mtime} from valid forget log
    entries, signed by the master key or a certified key whose role may
    forget.  ``mtime``: when the entry was written, by the storage's clock
    (None where the storage cannot tell); ``time_ns`` is the forgetting
    machine's clock."""
    from .gc import StorageClock

    out: dict[str, dict] = {}
    for name, _, mtime in StorageClock(repo.storage).list_times(FORGOTTEN):
        try:
            d = json.loads(repo.storage.read(name))
            body, sig = d["body"], bytes.fromhex(d["sig"])
            kid = body["kid"]
            pk = repo.signer_pk(kid)
            cert = repo.certificates().get(kid)
            role = "admin" if cert is None else cert.get("role")
            if (pk is None or body.get("repo") != repo.id or "forget" not in keymod.CAPABILITIES.get(role, ())
                    or not crypto.verify(pk, b"rekkord forgotten v1\0" + keymod.canonical(body), sig)):
                raise ValueError("bad signature")
            for sid in body["snapshots"]:
                out[sid] = {"kid": kid, "time_ns": body["time_ns"], "entry": name, "mtime": mtime}
        except ObjectNotFound:
            continue
        except (ValueError, KeyError, TypeError, AttributeError, IntegrityError):
            if on_problem:
                on_problem(name, "forget log entry is damaged or not signed by a key that may forget")
    return out

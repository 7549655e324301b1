"""Retention policies (restic's documented semantics) and forget on a real repository."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from types import SimpleNamespace

import pytest

from rekkord.cache import Cache
from rekkord.errors import PermissionDenied, SnapshotNotFound, UsageError
from rekkord.forget import (
    DEFAULT_GROUP_BY,
    Duration,
    Policy,
    apply_policy,
    forget,
    forgotten_snapshots,
    parse_group_by,
)
from rekkord.save import SaveOptions, Saver

UTC = dt.timezone.utc
FAR_FUTURE = int(dt.datetime(2200, 1, 1, tzinfo=UTC).timestamp() * 1e9)


def ts(s: str) -> int:
    fmt = "%Y-%m-%d %H:%M:%S" if " " in s else "%Y-%m-%d"
    return int(dt.datetime.strptime(s, fmt).replace(tzinfo=UTC).timestamp() * 1e9)


def snaps(*specs) -> list:
    """("2019-09-01 11:00:00", tags...) -> fake snapshot objects, ids in order."""
    out = []
    for i, spec in enumerate(specs):
        when, *tags = spec if isinstance(spec, tuple) else (spec,)
        out.append(SimpleNamespace(id=f"s{i:03d}", time_ns=ts(when), tags=list(tags)))
    return out


def decide(items, policy, now="2200-01-01"):
    return apply_policy(items, policy, now_ns=ts(now), tz=UTC)


def kept(decisions) -> list[str]:
    return [d.snapshot.id for d in decisions if d.keep]


def when(d) -> str:
    return dt.datetime.fromtimestamp(d.snapshot.time_ns / 1e9, UTC).strftime("%Y-%m-%d")


# ---- restic's documented examples (doc/060_forget.rst) ----------------------------------

SUNDAYS = [f"{d} 11:00:00" for d in ("2019-09-01", "2019-09-08", "2019-09-15", "2019-09-22", "2019-09-29",
                                      "2019-10-06", "2019-10-13", "2019-10-20", "2019-10-27", "2019-11-03",
                                      "2019-11-10", "2019-11-17")]

# (name, snapshots, policy, expected kept dates (newest first), expected reasons of the newest kept)
DOC_CASES = [
    ("one backup every Sunday, --keep-daily 4 keeps the last four Sundays",
     snaps(*SUNDAYS), Policy(daily=4),
     ["2019-11-17", "2019-11-10", "2019-11-03", "2019-10-27"], ["daily snapshot"]),
    ("--keep-weekly 2 on Sundays: one per ISO week (Monday..Sunday)",
     snaps(*SUNDAYS), Policy(weekly=2),
     ["2019-11-17", "2019-11-10"], ["weekly snapshot"]),
    ("--keep-last 1 keeps the most recent snapshot",
     snaps("2017-02-21 10:48:33", "2017-02-21 10:49:18"), Policy(last=1),
     ["2017-02-21"], ["last snapshot"]),
    ("--keep-monthly 3: the newest snapshot of each of the last three months with snapshots",
     snaps(*SUNDAYS), Policy(monthly=3),
     ["2019-11-17", "2019-10-27", "2019-09-29"], ["monthly snapshot"]),
    ("rules are ORed: --keep-last 2 --keep-monthly 2",
     snaps(*SUNDAYS), Policy(last=2, monthly=2),
     ["2019-11-17", "2019-11-10", "2019-10-27"], ["last snapshot", "monthly snapshot"]),
    ("--keep-within 2y5m7d3h keeps what was made in that span before the latest",
     snaps("2015-01-01 00:00:00", "2016-11-01 00:00:00", "2016-11-10 21:00:00", "2019-04-17 23:59:59"),
     Policy(within=Duration.parse("2y5m7d3h")),
     ["2019-04-17", "2016-11-10"], ["within 2y5m7d3h"]),
    ("--keep-within-daily 7d: one per day, only within 7 days of the latest",
     snaps("2019-11-01 10:00:00", "2019-11-12 09:00:00", "2019-11-12 18:00:00", "2019-11-17 08:00:00"),
     Policy(within_daily=Duration.parse("7d")),
     ["2019-11-17", "2019-11-12"], ["daily within 7d"]),
    ("--keep-daily unlimited keeps one per day (and the oldest: the count never runs out)",
     snaps("2019-11-01 10:00:00", "2019-11-01 12:00:00", "2019-11-02 09:00:00", "2019-11-02 10:00:00"),
     Policy(daily=-1), ["2019-11-02", "2019-11-01", "2019-11-01"], ["daily snapshot"]),
    ("--keep-tag keeps snapshots with all tags of one list (lists are ORed)",
     snaps(("2019-01-01", "foo"), ("2019-01-02", "foo", "bar"), ("2019-01-03", "bar"), ("2019-01-04",)),
     Policy(keep_tags=[["foo", "bar"], ["baz"]]),
     ["2019-01-02"], ["has tags [foo bar]"]),
    ("--keep-tag '' matches untagged snapshots only",
     snaps(("2019-01-01", "foo"), ("2019-01-02",), ("2019-01-03", "bar")), Policy(keep_tags=[[""]]),
     ["2019-01-02"], ["has tags []"]),
]


@pytest.mark.parametrize("name,items,policy,expected,reasons", DOC_CASES, ids=[c[0] for c in DOC_CASES])
def test_documented_examples(name, items, policy, expected, reasons):
    ds = decide(items, policy)
    assert [when(d) for d in ds if d.keep] == expected
    first = next(d for d in ds if d.keep)
    assert first.reasons == reasons
    assert all(d.reasons == [] for d in ds if not d.keep)
    assert len(ds) == len(items)


def test_hundred_years_of_dailies():
    """restic's text: one snapshot every day for 100 years with --keep-daily 7
    --keep-weekly 5 --keep-monthly 12 --keep-yearly 75 keeps the 7 dailies, 4
    more weeklies (the dailies hold one), 11 or 12 monthlies and 74 or 75
    yearlies.  Ending on Sunday 2023-12-31, the newest snapshot is daily,
    weekly, monthly and yearly at once: 7 + 4 + 11 + 74."""
    d = dt.datetime(1924, 1, 1, 12, tzinfo=UTC)
    items = []
    while d.year < 2024:
        items.append(SimpleNamespace(id=d.isoformat(), time_ns=int(d.timestamp() * 1e9), tags=[]))
        d += dt.timedelta(days=1)
    ds = decide(items, Policy(daily=7, weekly=5, monthly=12, yearly=75))
    reasons = Counter(r for x in ds for r in x.reasons)
    assert reasons == {"daily snapshot": 7, "weekly snapshot": 5, "monthly snapshot": 12, "yearly snapshot": 75}
    assert len(kept(ds)) == 7 + 4 + 11 + 74
    assert ds[0].reasons == ["daily snapshot", "weekly snapshot", "monthly snapshot", "yearly snapshot"]
    years = [x for x in ds if "yearly snapshot" in x.reasons]
    assert all(when(x).endswith("12-31") for x in years)  # the newest of each year
    assert when(years[-1]) == "1949-12-31"


def test_oldest_snapshot_kept_while_counts_remain():
    """restic's note: if there are not enough snapshots to fill a rule, the
    oldest is kept additionally and marked 'oldest'."""
    items = snaps("2019-11-01 09:00:00", "2019-11-01 10:00:00", "2019-11-03 10:00:00")
    ds = decide(items, Policy(daily=5))
    assert kept(ds) == ["s002", "s001", "s000"]
    assert ds[-1].reasons == ["oldest daily snapshot"]
    ds = decide(items, Policy(daily=2))  # counts exhausted: no extra oldest
    assert kept(ds) == ["s002", "s001"]


def test_duration_options_ignore_future_snapshots():
    """restic's note: --keep-within* ignore snapshots dated in the future
    (relative to now), which are therefore never removed by them."""
    items = snaps("2019-11-01", "2019-11-09", "2019-11-10", "2031-01-01")
    ds = decide(items, Policy(within=Duration.parse("2d")), now="2019-11-12")
    assert [when(d) for d in ds if d.keep] == ["2031-01-01", "2019-11-10", "2019-11-09"]


def test_ties_keep_input_order():
    # restic sorts stably: of two snapshots at the same time, the first listed wins a bucket.
    items = snaps("2019-01-01 10:00:00", ("2019-01-01 10:00:00", "x"))
    assert kept(decide(items, Policy(daily=1))) == ["s000"]


def test_flood_of_newer_snapshots_and_keep_within():
    """restic's security example: an attacker adds one snapshot in each of the
    last three weeks, slightly newer than the real ones; --keep-weekly 3 then
    keeps only the attacker's, --keep-within keeps both."""
    good = ["2019-10-29 02:00:00", "2019-11-05 02:00:00", "2019-11-12 02:00:00"]
    bad = ["2019-10-29 03:00:00", "2019-11-05 03:00:00", "2019-11-12 03:00:00"]
    items = snaps(*good, *bad)
    assert kept(decide(items, Policy(weekly=3))) == ["s005", "s004", "s003"]
    within = kept(decide(items, Policy(weekly=3, within=Duration.parse("21d"))))
    assert set(within) == {"s000", "s001", "s002", "s003", "s004", "s005"}


@pytest.mark.parametrize("text,expected", [
    ("2y5m7d3h", Duration(2, 5, 7, 3)), ("1m14d", Duration(0, 1, 14, 0)), ("13d23h", Duration(0, 0, 13, 23)),
    ("9999y", Duration(9999, 0, 0, 0)), ("7d", Duration(0, 0, 7, 0)), (" 1h ", Duration(0, 0, 0, 1)),
])
def test_duration_parse(text, expected):
    assert Duration.parse(text) == expected


@pytest.mark.parametrize("text", ["", "1w", "5", "d3", "1.5d", "-1d", "1y x"])
def test_duration_parse_rejects(text):
    with pytest.raises(UsageError):
        Duration.parse(text)


@pytest.mark.parametrize("start,duration,expected", [
    ("2016-03-31 12:00:00", "1m", "2016-03-02 12:00:00"),  # Feb 31 normalises to Mar 2 (Go's AddDate)
    ("2016-01-18 12:02:03", "13d23h", "2016-01-04 13:02:03"),
    ("2016-01-18 12:02:03", "1y1m1d", "2014-12-17 12:02:03"),
    ("2020-02-29 00:00:00", "1y", "2019-03-01 00:00:00"),
])
def test_duration_calendar_arithmetic(start, duration, expected):
    t = dt.datetime.fromtimestamp(ts(start) / 1e9, UTC)
    assert Duration.parse(duration).before(t) == dt.datetime.fromtimestamp(ts(expected) / 1e9, UTC)


def test_policy_validation_and_description():
    assert Policy().empty()
    assert not Policy(within=Duration.parse("1d")).empty()
    assert Policy(keep_tags=[["a"]]).only_tags() and not Policy(last=1, keep_tags=[["a"]]).only_tags()
    with pytest.raises(UsageError):
        Policy(last=-2)
    with pytest.raises(UsageError):
        apply_policy([], Policy())
    assert Policy(daily=4).describe() == "keep 4 daily snapshots"
    assert Policy(last=-1, within=Duration.parse("7d")).describe() == \
        "keep all latest snapshots and all snapshots within 7d of the newest"
    assert parse_group_by("") == () and parse_group_by("channel,key") == ("channel", "key")
    assert parse_group_by(None) == DEFAULT_GROUP_BY == ("host", "channel", "paths")
    assert parse_group_by("host, paths,host") == ("host", "paths")
    with pytest.raises(UsageError, match="cannot group by 'path'"):
        parse_group_by("path")


# ---- forget on a real repository ---------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"content\n")
    return src


def save(repo, channel, src, when_, *, tags=(), host="h1"):
    saver = Saver(repo, Cache(None), SaveOptions(tags=list(tags), host=host))
    return saver.save(channel, [str(src)], time_ns=ts(when_)).snapshot_id


def test_forget_policy_per_channel_with_audit_key(local_repo, tree):
    w = local_repo.repo("write")
    a1 = save(w, "a", tree, "2024-01-01")
    a2 = save(w, "a", tree, "2024-01-02")
    b1 = save(w, "b", tree, "2023-06-01")
    audit = local_repo.repo("audit")
    dry = forget(audit, Policy(last=1), dry_run=True)
    assert dry.removed == [a1] and set(audit.snapshot_ids()) == {a1, a2, b1}
    rep = forget(audit, Policy(last=1))
    assert rep.removed == [a1]
    assert set(audit.snapshot_ids()) == {a2, b1}  # b keeps its only snapshot: groups are per channel
    groups = {dict(g.key)["channel"]: g for g in rep.groups}
    assert [d.reasons for d in groups["a"].decisions] == [["last snapshot"], []]
    # The removal is logged, signed by the audit key: check can tell it from a deletion.
    log = forgotten_snapshots(local_repo.repo("read"))
    assert set(log) == {a1} and log[a1]["kid"] == audit.key.kid
    j = rep.to_json()
    assert json.dumps(j) and j["removed"] == [a1] and j["groups"][0]["snapshots"][0]["action"] == "keep"


def test_forget_by_id_and_errors(local_repo, tree):
    w = local_repo.repo("write")
    s1 = save(w, "a", tree, "2024-01-01")
    s2 = save(w, "a", tree, "2024-01-02")
    full = local_repo.repo("full")
    with pytest.raises(SnapshotNotFound):
        forget(full, ids=[s1, "ffffffff"])
    assert set(full.snapshot_ids()) == {s1, s2}  # nothing removed on error
    with pytest.raises(UsageError):
        forget(full, Policy(last=1), ids=[s1])
    with pytest.raises(UsageError):
        forget(full, Policy())
    rep = forget(full, ids=[s1[:6]])
    assert rep.removed == [s1] and full.snapshot_ids() == [s2]
    for role in ("write", "read"):
        with pytest.raises(PermissionDenied):
            forget(local_repo.repo(role), Policy(last=1))


def test_forget_selection_and_keep_tag_refusal(local_repo, tree):
    w = local_repo.repo("write")
    x1 = save(w, "a", tree, "2024-01-01", host="x")
    x2 = save(w, "a", tree, "2024-01-02", host="x")
    y1 = save(w, "a", tree, "2024-01-03", host="y", tags=["keep"])
    y2 = save(w, "a", tree, "2024-01-04", host="y")
    admin = local_repo.repo("admin")
    rep = forget(admin, Policy(last=1), hosts=["x"], dry_run=True)
    assert rep.removed == [x1]
    rep = forget(admin, Policy(last=1), group_by=("channel", "host"), dry_run=True)
    assert sorted(rep.removed) == sorted([x1, y1])
    rep = forget(admin, Policy(keep_tags=[["keep"]]), channels=["a"], group_by=("channel",), dry_run=True)
    assert sorted(rep.removed) == sorted([x1, x2, y2])
    with pytest.raises(UsageError, match="refusing to remove every snapshot of group host x, channel a"):
        forget(admin, Policy(keep_tags=[["keep"]]), channels=["a"], dry_run=True)  # (by host: x has none)
    with pytest.raises(UsageError, match="refusing"):
        forget(admin, Policy(keep_tags=[["keep"]]), hosts=["x"])
    assert len(admin.snapshot_ids()) == 4


def test_flood_from_a_stolen_write_key(local_repo, tree):
    """A stolen write key floods channel 'db' with newer snapshots: the
    default grouping lets it push the real ones out of --keep-last; grouping by
    key, or --keep-within, keeps them."""
    good = local_repo.repo("write")
    good_ids = [save(good, "db", tree, f"2024-03-0{d}") for d in (1, 2, 3)]
    thief = local_repo.master.derive("write", "stolen")
    local_repo.repo("admin").publish_cert(thief.cert)
    from rekkord.repository import Repository
    from rekkord.storage.local import LocalStorage

    bad = Repository.open(LocalStorage(local_repo.url, sync=False), thief)
    for h in range(6):
        save(bad, "db", tree, f"2024-03-03 {10 + h}:00:00")
    audit = local_repo.repo("audit")
    naive = forget(audit, Policy(last=3), dry_run=True)
    assert set(good_ids) <= set(naive.removed)
    per_key = forget(audit, Policy(last=3), group_by=("channel", "key"), dry_run=True)
    assert not set(good_ids) & set(per_key.removed)
    within = forget(audit, Policy(last=3, within=Duration.parse("7d")), dry_run=True)
    assert within.removed == []
    # Once the key is revoked, what it signs later is untrusted: never counted nor removed.
    local_repo.repo("admin").revoke(thief.kid)
    for _ in range(3):
        Saver(bad, Cache(None), SaveOptions()).save("db", [str(tree)])
    audit = local_repo.repo("audit")
    after = forget(audit, Policy(last=3), group_by=("channel", "key"), dry_run=True)
    assert not set(good_ids) & set(after.removed) and len(after.untrusted) == 3
    assert not {s.id for s in after.untrusted} & set(after.removed)


# ---- groups: host, channel and paths by default (issue 12 #5) -------------------------------------


def test_a_host_days_ahead_cannot_push_out_another_hosts_snapshots(local_repo, tree):
    """Two machines share channel db; one's clock is 3 days ahead, so its
    snapshots are always the newest.  Grouped by channel only (the old
    default), --keep-last 2 removes every snapshot of the correctly clocked
    machine; by default (host, channel, paths) each machine keeps its own 2."""
    w = local_repo.repo("write")
    good = [save(w, "db", tree, f"2024-03-0{d} 02:00:00", host="good") for d in range(1, 6)]
    ahead = [save(w, "db", tree, f"2024-03-0{d + 3} 02:30:00", host="ahead") for d in range(1, 6)]
    audit = local_repo.repo("audit")
    naive = forget(audit, Policy(last=2), group_by=("channel",), dry_run=True)
    assert set(good) <= set(naive.removed)  # what the issue saw
    for repo in (audit, local_repo.repo("full")):
        rep = forget(repo, Policy(last=2), dry_run=True)
        assert sorted(rep.removed) == sorted(good[:3] + ahead[:3])
        by_host = {dict(g.key)["host"]: g for g in rep.groups}
        assert set(by_host) == {"good", "ahead"}
        assert [d.snapshot.id for d in by_host["good"].decisions if d.keep] == good[:2:-1]
        assert all(dict(g.key)["channel"] == "db" for g in rep.groups)
    # An audit key cannot read paths: its groups are host and channel, and it says so.
    rep = forget(audit, Policy(last=2), dry_run=True)
    assert rep.group_by == ("host", "channel") and rep.paths_unread
    j = rep.to_json()
    assert j["group_by"] == ["host", "channel"] and j["paths_unread"]
    assert {g["group_title"] for g in j["groups"]} == {"host good, channel db", "host ahead, channel db"}
    rep = forget(audit, Policy(within=Duration.parse("1d1h")))  # "newest" is per group too
    assert sorted(rep.removed) == sorted(good[:3] + ahead[:3])
    assert set(audit.snapshot_ids()) == set(good[3:] + ahead[3:])


def test_paths_split_groups_for_keys_that_can_read_them(local_repo, tmp_path):
    """One host and channel saving two different path sets: a full key keeps
    the newest of each (restic's host,paths); an audit key cannot tell them
    apart and is refused when it asks for paths by name."""
    etc, srv = tmp_path / "etc", tmp_path / "srv"
    for d in (etc, srv):
        d.mkdir()
        (d / "f").write_bytes(d.name.encode())
    w = local_repo.repo("write")
    e1 = save(w, "sys", etc, "2024-01-01")
    s1 = save(w, "sys", srv, "2024-01-02")
    e2 = save(w, "sys", etc, "2024-01-03")
    s2 = save(w, "sys", srv, "2024-01-04")
    full = local_repo.repo("full")
    rep = forget(full, Policy(last=1), dry_run=True)
    assert rep.group_by == DEFAULT_GROUP_BY and not rep.paths_unread
    assert sorted(rep.removed) == sorted([e1, s1])
    groups = {dict(g.key)["paths"]: [d.snapshot.id for d in g.decisions] for g in rep.groups}
    assert groups == {(str(etc),): [e2, e1], (str(srv),): [s2, s1]}
    j = rep.to_json()
    assert sorted(g["group"]["paths"] for g in j["groups"]) == [[str(etc)], [str(srv)]]
    assert {g["group_title"] for g in j["groups"]} == {f"host h1, channel sys, paths {etc}",
                                                       f"host h1, channel sys, paths {srv}"}
    audit = local_repo.repo("audit")
    assert sorted(forget(audit, Policy(last=1), dry_run=True).removed) == sorted([e1, s1, e2])
    with pytest.raises(PermissionDenied, match="cannot group by paths"):
        forget(audit, Policy(last=1), group_by=("host", "paths"), dry_run=True)
    assert forget(audit, ids=[e1]).removed == [e1]  # (ids need no grouping)
    rep = forget(full, Policy(last=1), group_by=("channel",))
    assert sorted(rep.removed) == sorted([e2, s1]) and full.snapshot_ids() == [s2]

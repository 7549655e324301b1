"""rekkord.selection: restic's tag lists and --latest per channel (pure logic;
--path and the CLI: tests/test_cli_snapshots.py)."""

from rekkord.repository import Snapshot
from rekkord.selection import has_tags, latest_per_channel, parse_tags


def snap(sid, channel, t, tags):
    return Snapshot(sid, channel, t, "h", "k", {"tags": tags})


def test_tag_lists_are_anded_within_and_ored_between():
    a, b, c = snap("a", "x", 1, ["daily", "db"]), snap("b", "x", 2, ["daily"]), snap("c", "x", 3, [])
    pick = lambda *specs: [s.id for s in (a, b, c) if has_tags(s, parse_tags(specs))]  # noqa: E731
    assert pick("daily") == ["a", "b"]
    assert pick("daily,db") == ["a"]
    assert pick("db", "") == ["a", "c"]
    assert pick("nope") == []
    assert has_tags(snap("d", "x", 4, "not-a-list"), parse_tags([""]))  # a hostile record's tags


def test_latest_n_per_channel_keeps_time_order():
    snaps = [snap("a1", "a", 1, []), snap("b1", "b", 2, []), snap("a2", "a", 3, []), snap("a3", "a", 4, [])]
    assert [s.id for s in latest_per_channel(snaps, 1)] == ["b1", "a3"]
    assert [s.id for s in latest_per_channel(snaps, 2)] == ["b1", "a2", "a3"]

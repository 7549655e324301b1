"""rekkord tag: restic's --add/--remove/--set on existing snapshots, through
signed annotations (rekkord/tags.py); who may tag; hostile annotations named."""

from __future__ import annotations

import json

import pytest

from attacker import Attacker


@pytest.fixture
def world(local_repo, run_cli, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    ids = []
    for args in (("--tag", "daily"), ("--tag", "daily", "--tag", "db"), ()):
        (etc / "hosts").write_text(str(len(ids)))
        ids.append(json.loads(run_cli("save", "etc", etc, "--json", *args, env=env, check=0).stdout)["id"])

    def run(role, *args):
        return run_cli("-r", local_repo.url, "-k", local_repo.key_files[role], *args)

    def tags_now():
        p = run("audit", "snapshots", "--json")
        assert p.returncode == 0, p.stderr
        return {s["id"]: s["tags"] for s in json.loads(p.stdout)}

    local_repo.ids, local_repo.run, local_repo.tags_now = ids, run, tags_now
    return local_repo


def test_add_remove_set_and_restics_json(world):
    a, b, c = world.ids
    p = world.run("read", "tag", "--add", "legal-hold", a[:8], "etc")  # an id prefix and a channel
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines()[-1] == "changed the tags of 3 of 3 snapshots"
    assert world.tags_now() == {a: ["daily", "legal-hold"], b: ["daily", "db", "legal-hold"], c: ["legal-hold"]}
    # restic's filters, and its JSON lines (a snapshot's id stays: the record is not rewritten).
    p = world.run("full", "tag", "--tag", "db", "--remove", "daily,db", "--json")
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert lines == [{"message_type": "changed", "old_snapshot_id": b, "new_snapshot_id": b, "tags": ["legal-hold"]},
                     {"message_type": "summary", "changed_snapshot_count": 1}]
    p = world.run("admin", "tag", "--set", "", c)
    assert p.returncode == 0 and world.tags_now()[c] == []
    p = world.run("read", "tag", "--add", "legal-hold", a)
    assert b"changed the tags of 0 of 1 snapshots" in p.stdout  # already there: nothing written
    # The tags as they are now are what snapshots --tag selects.
    p = world.run("read", "snapshots", "--tag", "legal-hold", "--json")
    assert sorted(s["id"] for s in json.loads(p.stdout)) == sorted([a, b])
    # A check with the audit key finds nothing wrong.
    assert world.run("audit", "check").returncode == 0


def test_write_and_audit_keys_may_not_tag_and_their_annotations_are_ignored(world):
    a = world.ids[0]
    for role in ("write", "audit"):
        p = world.run(role, "tag", "--remove", "daily", a)
        assert p.returncode == 5 and b"rekkord: error:" in p.stderr, p.stderr
        # Made by hand, with only that key file: ignored, named, exit 3 where it is listed.
        name = Attacker(world.url, world.key_files[role]).annotation(a, remove=["daily"])
        p = world.run("read", "snapshots")
        assert p.returncode == 0 and f"rekkord: warning: {name}: ignored: signed by key".encode() in p.stderr
        assert world.tags_now()[a] == ["daily"]
    p = world.run("read", "tag", "--add", "x", a)
    assert p.returncode == 3 and world.tags_now()[a] == ["daily", "x"]
    p = world.run("audit", "check")
    assert p.returncode == 4 and p.stdout.count(b"annotations/") + p.stderr.count(b"annotations/") >= 2


def test_bad_usage(world):
    a = world.ids[0]
    p = world.run("read", "tag", "--set", "a", "--add", "b", a)
    assert p.returncode == 2 and b"--set" in p.stderr
    p = world.run("read", "tag", a)
    assert p.returncode == 2 and b"nothing to do" in p.stderr
    p = world.run("read", "tag", "--add", "x", "nosuchchannel")
    assert p.returncode == 6

"""rekkord forget: policies, --dry-run with the rule per snapshot, --json, keys."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def repo3(local_repo, run_cli, tmp_path):
    """Three snapshots in channel a, one in b (saved by the write key)."""
    src = tmp_path / "src"
    src.mkdir()
    env = {"REKKORD_REPOSITORY": local_repo.url}
    ids = {"a": [], "b": []}
    for ch, n in (("a", 3), ("b", 1)):
        for i in range(n):
            (src / "f").write_text(f"{ch}{i}")
            p = run_cli("-k", local_repo.key_files["write"], "save", ch, src, "--json", env=env, check=0)
            ids[ch].append(json.loads(p.stdout)["id"])
    local_repo.env = env
    local_repo.ids = ids
    return local_repo


def test_dry_run_shows_decision_and_rule(repo3, run_cli):
    env, ids = repo3.env, repo3.ids
    p = run_cli("-k", repo3.key_files["audit"], "forget", "--keep-last", "2", "--dry-run", env=env, check=0)
    out = p.stdout.decode()
    assert "channel a:" in out and "channel b:" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines[ids["a"][0][:8]].split()[0] == "remove" and "no rule keeps it" in lines[ids["a"][0][:8]]
    assert lines[ids["a"][2][:8]].split()[0] == "keep" and "last snapshot" in lines[ids["a"][2][:8]]
    assert lines[ids["b"][0][:8]].split()[0] == "keep"
    assert "would remove 1 snapshots" in out
    p = run_cli("-k", repo3.key_files["audit"], "snapshots", "--json", env=env, check=0)
    assert len(json.loads(p.stdout)) == 4  # nothing removed


def test_json_and_removal_with_audit_key(repo3, run_cli):
    env, ids = repo3.env, repo3.ids
    p = run_cli("-k", repo3.key_files["audit"], "forget", "--keep-last", "1", "--json", env=env, check=0)
    j = json.loads(p.stdout)
    assert sorted(j["removed"]) == sorted(ids["a"][:2]) and not j["dry_run"]
    acts = {s["id"]: (s["action"], s["reasons"]) for g in j["groups"] for s in g["snapshots"]}
    assert acts[ids["a"][2]] == ("keep", ["last snapshot"]) and acts[ids["a"][0]] == ("remove", [])
    assert {g["group"]["channel"] for g in j["groups"]} == {"a", "b"}
    p = run_cli("-k", repo3.key_files["read"], "snapshots", "--json", env=env, check=0)
    assert sorted(s["id"] for s in json.loads(p.stdout)) == sorted([ids["a"][2], ids["b"][0]])


def test_explicit_ids_selection_and_keys(repo3, run_cli):
    env, ids = repo3.env, repo3.ids
    p = run_cli("-k", repo3.key_files["full"], "forget", ids["a"][0][:8], env=env, check=0)
    assert b"removed 1 snapshots" in p.stdout
    p = run_cli("-k", repo3.key_files["admin"], "forget", "--keep-last", "1", "--channel", "a", env=env, check=0)
    assert b"removed 1 snapshots" in p.stdout
    p = run_cli("-k", repo3.key_files["write"], "forget", "--keep-last", "1", env=env)
    assert p.returncode == 5 and b"write key cannot forget" in p.stderr
    p = run_cli("-k", repo3.key_files["read"], "forget", ids["b"][0], env=env)
    assert p.returncode == 5
    p = run_cli("-k", repo3.key_files["audit"], "forget", "deadbeef", env=env)
    assert p.returncode == 6 and p.stderr.decode().startswith("rekkord: error: no snapshot or channel named 'deadbeef'")


@pytest.mark.parametrize("args,message", [
    ((), "no retention policy"),
    (("--keep-last", "-1"), "unlimited"),
    (("--keep-within", "1w"), "invalid duration"),
    (("--keep-last", "1", "--group-by", "path"), "cannot group by 'path'"),
])
def test_usage_errors(repo3, run_cli, args, message):
    p = run_cli("-k", repo3.key_files["audit"], "forget", *args, env=repo3.env)
    assert p.returncode == 2 and message.encode() in p.stderr
    assert b"Traceback" not in p.stderr


def test_groups_are_host_channel_paths_and_dry_run_names_them(local_repo, run_cli, tmp_path):
    """Two machines (--host) in one channel, one of them days ahead: by
    default each keeps its own --keep-last; --dry-run (text and JSON) shows
    the group of every decision.  Paths split groups for a full key; an
    audit key says it cannot read them, and is refused --group-by paths."""
    env = {"REKKORD_REPOSITORY": local_repo.url}
    src = tmp_path / "src"
    src.mkdir()
    ids = {"web1": [], "web2": []}
    for i in range(3):
        for host, saved in ids.items():
            (src / "f").write_text(f"{host}{i}")
            args = ["save", "www", src, "--host", host, "--json"]
            p = run_cli("-k", local_repo.key_files["write"], *args, env=env, check=0)
            saved.append(json.loads(p.stdout)["id"])
    audit, full = local_repo.key_files["audit"], local_repo.key_files["full"]
    out = run_cli("-k", audit, "forget", "--keep-last", "1", "--dry-run", env=env, check=0).stdout.decode()
    assert "(grouped by host, channel: audit keys cannot read saved paths)" in out
    assert "host web1, channel www:" in out and "host web2, channel www:" in out
    blocks = out.split("host web2, channel www:")
    assert ids["web2"][2][:8] in blocks[1] and ids["web1"][2][:8] not in blocks[1]
    assert "would remove 4 snapshots, kept 2" in out
    j = json.loads(run_cli("-k", full, "forget", "--keep-last", "1", "--dry-run", "--json", env=env,
                           check=0).stdout)
    assert j["group_by"] == ["host", "channel", "paths"] and not j["paths_unread"]
    groups = {g["group"]["host"]: g for g in j["groups"]}
    assert groups["web1"]["group"] == {"host": "web1", "channel": "www", "paths": [str(src)]}
    assert groups["web2"]["group_title"] == f"host web2, channel www, paths {src}"
    assert [s["id"] for s in groups["web2"]["snapshots"] if s["action"] == "keep"] == [ids["web2"][2]]
    assert sorted(j["removed"]) == sorted(ids["web1"][:2] + ids["web2"][:2])
    out = run_cli("-k", full, "forget", "--keep-last", "1", "--group-by", "channel", "-n", env=env,
                  check=0).stdout.decode()
    assert "channel www:" in out and "would remove 5 snapshots, kept 1" in out
    p = run_cli("-k", audit, "forget", "--keep-last", "1", "--group-by", "host,paths", env=env)
    assert p.returncode == 5 and b"cannot group by paths" in p.stderr


def test_unlimited_within_and_tags(repo3, run_cli):
    env = repo3.env
    p = run_cli("-k", repo3.key_files["audit"], "forget", "--keep-last", "unlimited", "-n", env=env, check=0)
    assert b"would remove 0 snapshots, kept 4" in p.stdout
    p = run_cli("-k", repo3.key_files["audit"], "forget", "--keep-within", "1d", "-n", env=env, check=0)
    assert b"within 1d" in p.stdout and b"would remove 0" in p.stdout
    p = run_cli("-k", repo3.key_files["audit"], "forget", "--keep-tag", "nope", env=env)
    assert p.returncode == 2 and b"refusing to remove every snapshot" in p.stderr


# ---- channel arguments and --prune (issue 14) -----------------------------------------------------


def test_channel_arguments_select_like_channel_and_ids_still_work(repo3, run_cli):
    env, ids, audit = repo3.env, repo3.ids, repo3.key_files["audit"]
    j = json.loads(run_cli("-k", audit, "forget", "a", "--keep-last", "1", "--dry-run", "--json", env=env,
                           check=0).stdout)
    assert sorted(j["removed"]) == sorted(ids["a"][:2]) and {g["group"]["channel"] for g in j["groups"]} == {"a"}
    # An id (or unique prefix) is an id, as before.
    j = json.loads(run_cli("-k", audit, "forget", ids["b"][0][:10], "--json", env=env, check=0).stdout)
    assert j["removed"] == [ids["b"][0]]
    p = run_cli("-k", audit, "forget", "no-such-channel", "--keep-last", "1", env=env)
    assert p.returncode == 6 and b"no snapshot or channel named 'no-such-channel'" in p.stderr
    p = run_cli("-k", audit, "forget", "a", ids["a"][0], env=env)
    assert p.returncode == 2 and b"not both" in p.stderr
    p = run_cli("-k", audit, "forget", "--keep-last", "1", ids["a"][0], env=env)
    assert p.returncode == 2 and b"not both" in p.stderr


def test_forget_prune_reclaims_the_space_and_its_dry_run_shows_what_it_would(repo3, run_cli):
    import os

    env, audit = repo3.env, repo3.key_files["audit"]

    def blobs():
        return sum(len(f) for _, _, f in os.walk(os.path.join(repo3.url, "blobs")))

    before = blobs()
    j = json.loads(run_cli("-k", audit, "forget", "a", "--keep-last", "1", "--prune", "--dry-run", "--json",
                           env=env, check=0).stdout)
    assert j["dry_run"] and j["prune"]["dry_run"] and j["prune"]["fossilised"] > 0
    assert j["prune"]["snapshots"] == 2  # as if the two forgotten ones were gone
    assert blobs() == before and len(json.loads(run_cli("-k", audit, "snapshots", "--json", env=env,
                                                        check=0).stdout)) == 4
    p = run_cli("-k", audit, "forget", "a", "--keep-last", "1", "--prune", env=env, check=0)
    out = p.stdout.decode()
    assert "removed 2 snapshots, kept 1" in out and "run `rekkord prune`" not in out and "reclaimed" in out
    assert blobs() < before
    run_cli("-k", repo3.key_files["read"], "check", "--read-data", env=env, check=0)

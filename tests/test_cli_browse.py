"""rekkord diff | find | cat through the real CLI."""

import json
import os
import random

import pytest


@pytest.fixture
def env(local_repo):
    return {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["read"]}


def save(run_cli, local_repo, env, channel, *paths):
    p = run_cli("save", channel, *paths, "--json", env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]},
                check=0)
    return json.loads(p.stdout)["id"]


@pytest.fixture
def two_snapshots(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "same.txt").write_text("same\n")
    (src / "d" / "changed.txt").write_text("before\n")
    (src / "removed.txt").write_text("bye\n")
    (src / "mode.txt").write_text("m\n")
    s1 = save(run_cli, local_repo, env, "web", src)
    (src / "d" / "changed.txt").write_text("after, longer\n")
    (src / "removed.txt").unlink()
    (src / "added.txt").write_text("hello\n")
    os.chmod(src / "mode.txt", 0o600)
    s2 = save(run_cli, local_repo, env, "web", src)
    return src, s1, s2


def test_diff_shows_added_removed_modified_and_metadata(run_cli, env, two_snapshots):
    src, s1, s2 = two_snapshots
    p = run_cli("diff", s1, s2, env=env, check=0)
    lines = p.stdout.decode().splitlines()
    assert f"+  {src}/added.txt" in lines
    assert f"-  {src}/removed.txt" in lines
    assert any(line.startswith(f"M  {src}/d/changed.txt") and "content" in line for line in lines)
    assert f"m  {src}/mode.txt  (mode)" in lines
    assert not any("same.txt" in line for line in lines)
    assert b"1 added, 1 removed" in p.stderr
    assert b"\x1b[" not in p.stdout  # no colour codes when not on a terminal


def test_diff_json_and_filters(run_cli, env, two_snapshots):
    src, s1, s2 = two_snapshots
    d = json.loads(run_cli("diff", s1[:8], "web", "--json", env=env, check=0).stdout)
    assert d["from"] == s1 and d["to"] == s2
    by = {c["path"]: c for c in d["changes"]}
    assert by[f"{src}/added.txt"]["status"] == "added"
    assert by[f"{src}/removed.txt"]["status"] == "removed"
    assert by[f"{src}/d/changed.txt"]["status"] == "modified"
    assert by[f"{src}/mode.txt"]["changed"] == ["mode"]
    assert d["summary"]["added"] == 1
    d = json.loads(run_cli("diff", s1, s2, "--json", "--no-metadata", "--path", f"{src}/d", env=env,
                           check=0).stdout)
    assert [c["path"] for c in d["changes"]] == [f"{src}/d/changed.txt"]


def test_find_by_name_and_path_across_channels(run_cli, local_repo, env, two_snapshots, tmp_path):
    src, s1, s2 = two_snapshots
    other = tmp_path / "other"
    other.mkdir()
    (other / "added.txt").write_text("x")
    s3 = save(run_cli, local_repo, env, "db", other)
    rows = json.loads(run_cli("find", "added.txt", "--json", env=env, check=0).stdout)
    assert [(r["snapshot"], r["path"]) for r in rows] == [(s2, f"{src}/added.txt"), (s3, f"{other}/added.txt")]
    assert rows[0]["size"] == 6 and rows[0]["channel"] == "web" and rows[0]["mtime"].endswith("Z")
    rows = json.loads(run_cli("find", "added.txt", "--channel", "db", "--json", env=env, check=0).stdout)
    assert [r["snapshot"] for r in rows] == [s3]
    rows = json.loads(run_cli("find", "d/*.txt", "--json", env=env, check=0).stdout)
    assert sorted((r["snapshot"], os.path.basename(r["path"])) for r in rows) == sorted(
        [(s1, "changed.txt"), (s1, "same.txt"), (s2, "changed.txt"), (s2, "same.txt")])
    p = run_cli("find", "*.txt", "--latest", "--channel", "web", env=env, check=0)
    out = p.stdout.decode().splitlines()
    assert all(line.startswith(s2[:8]) for line in out) and any(f"{src}/added.txt  6  " in line for line in out)
    assert b"matches in 1 snapshots" in p.stderr
    p = run_cli("find", "*.txt", "--channel", "nosuch", env=env)
    assert p.returncode == 6 and p.stderr.decode().strip() == "rekkord: error: no snapshot in channel nosuch"


def test_cat_streams_binary_content(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(2).randbytes(5 << 20) + bytes(range(256)) * 3
    (src / "blob.bin").write_bytes(data)
    (src / "small").write_bytes(b"\x00\xff\r\n")
    os.symlink("small", src / "ln")
    sid = save(run_cli, local_repo, env, "c", src)
    assert run_cli("cat", f"{sid}:{src}/blob.bin", env=env, check=0).stdout == data
    assert run_cli("cat", f"c:{src}/small", env=env, check=0).stdout == b"\x00\xff\r\n"
    for spec, code, msg in [(f"c:{src}", 2, "is a directory"), (f"c:{src}/ln", 2, "is a symbolic link to small"),
                            (f"c:{src}/none", 6, "is not in snapshot"), ("c", 2, "give a path")]:
        p = run_cli("cat", spec, env=env)
        assert p.returncode == code and msg in p.stderr.decode() and len(p.stderr.splitlines()) == 1, spec
        assert p.stdout == b""

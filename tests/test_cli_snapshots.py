"""rekkord snapshots: restic's --tag, --host, --path, --latest, tags and paths
in the table (paths only with a key that can read them), restic's JSON names."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def world(local_repo, run_cli, tmp_path):
    """Snapshots: etc x3 (tags daily / daily,db / none), www x1 from host web2."""
    etc, www = tmp_path / "etc", tmp_path / "www"
    etc.mkdir()
    www.mkdir()
    (etc / "hosts").write_text("h")
    (www / "index.html").write_text("i")
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    ids = []
    for args in (("--tag", "daily"), ("--tag", "daily", "--tag", "db"), ()):
        (etc / "hosts").write_text(str(len(ids)))
        ids.append(json.loads(run_cli("save", "etc", etc, "--json", *args, env=env, check=0).stdout)["id"])
    ids.append(json.loads(run_cli("save", "www", www, "--host", "web2", "--json", env=env, check=0).stdout)["id"])
    local_repo.ids, local_repo.etc, local_repo.www = ids, etc, www

    def snaps(role, *args):
        p = run_cli("-r", local_repo.url, "-k", local_repo.key_files[role], "snapshots", *args)
        return p

    local_repo.snaps = snaps
    return local_repo


def ids_of(p):
    assert p.returncode == 0, p.stderr
    return [s["id"] for s in json.loads(p.stdout)]


def test_filters_tag_host_path_latest(world):
    i = world.ids
    s = world.snaps
    assert ids_of(s("read", "--json", "--tag", "daily")) == i[:2]
    assert ids_of(s("read", "--json", "--tag", "daily,db")) == [i[1]]
    assert ids_of(s("read", "--json", "--tag", "db", "--tag", "")) == i[1:]  # ORed; '' is untagged
    assert ids_of(s("audit", "--json", "--host", "web2")) == [i[3]]
    assert ids_of(s("read", "--json", "--path", str(world.www))) == [i[3]]
    assert ids_of(s("read", "--json", "--path", str(world.etc) + "/")) == i[:3]
    assert ids_of(s("audit", "--json", "--latest", "1")) == [i[2], i[3]]
    assert ids_of(s("audit", "--json", "--latest", "2", "--channel", "etc")) == i[1:3]
    assert ids_of(s("audit", "--json", "www", i[0][:8])) == [i[0], i[3]]  # channels and ids as arguments
    p = s("audit", "--path", str(world.www))
    assert p.returncode == 5 and b"audit keys cannot read saved paths" in p.stderr


def test_table_shows_tags_and_paths_when_the_key_can_read_them(world):
    text = world.snaps("read").stdout.decode()
    head, _, *rows = text.splitlines()
    assert head.split()[:6] == ["ID", "CHANNEL", "TIME", "HOST", "TAGS", "PATHS"]
    row = next(r for r in rows if r.startswith(world.ids[1][:8]))
    assert "daily,db" in row and str(world.etc) in row
    text = world.snaps("audit").stdout.decode()
    assert "PATHS" not in text and "daily,db" in text and str(world.etc) not in text


def test_json_uses_restics_names_where_they_exist(world):
    read = json.loads(world.snaps("read", "--json").stdout)[3]
    assert read["hostname"] == "web2" == read["host"] and read["paths"] == [str(world.www)]
    assert read["tags"] == [] and read["short_id"] == read["id"][:8] and read["username"]
    assert read["summary"]["total_files_processed"] == 1 and read["summary"]["data_added"] > 0
    audit = json.loads(world.snaps("audit", "--json").stdout)[3]
    assert "paths" not in audit and audit["summary"] == read["summary"]


def test_hostile_paths_and_tags_reach_the_terminal_escaped(local_repo, run_cli, tmp_path):
    """A saved path is any bytes a file name holds (terminal escapes, a
    newline that would forge a row); tags are checked printable when a
    record is read, and a record whose tags are not is refused. The table
    shows every cell escaped, one row per snapshot; --json stays exact."""
    from attacker import Attacker

    evil = tmp_path / "x\x1b]0;owned\x07\x1b[2J\nfake1234  etc  2030-01-01"
    evil.mkdir()
    (evil / "f").write_text("f")
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    sid = json.loads(run_cli("save", "etc", evil, "--tag", "back\\slash", "--json", env=env, check=0).stdout)["id"]
    # A write key's record whose tag holds an escape: never listed, never printed.
    Attacker(local_repo.url, local_repo.key_files["write"]).record("etc", tags=["ok", "\x1b[31mred"])
    p = run_cli("-r", local_repo.url, "-k", local_repo.key_files["read"], "snapshots", check=0)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert "\x1b" not in out + err and "\x07" not in out + err
    head, sep, *rows = out.splitlines()
    assert len(rows) == 1 and rows[0].startswith(sid[:8]), out
    assert "x\\x1b]0;owned\\x07\\x1b[2J\\nfake1234" in rows[0] and "back\\\\slash" in rows[0]
    assert "holds control characters" in err
    snap = json.loads(run_cli("-r", local_repo.url, "-k", local_repo.key_files["read"], "snapshots", "--json",
                              check=0).stdout)
    assert [s["paths"] for s in snap] == [[str(evil)]] and snap[0]["tags"] == ["back\\slash"]

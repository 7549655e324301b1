"""The command-line contract of issue 2 (init, key, save, snapshots, ls,
restore, check) through the real `rekkord` CLI in a subprocess, and bad input:
each gives one clear line on stderr, its documented exit code
(docs/exit-codes.md), no traceback and no partial file under a final name."""

import json
import os

import pytest

from rekkord import keys as keymod
from treeutil import assert_same_tree


def fails(p, code: int, *needles: str) -> str:
    """Assert the one-clear-line error contract; returns the line."""
    err = p.stderr.decode(errors="replace")
    assert p.returncode == code, (p.returncode, err, p.stdout.decode(errors="replace"))
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("rekkord: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello.txt").write_text("hello\n")
    (src / "sub" / "data.bin").write_bytes(os.urandom(400_000))
    os.symlink("hello.txt", src / "link")
    return src


@pytest.fixture
def cli(local_repo, run_cli):
    """run_cli with the repository in the environment and -k ROLE."""

    def run(role, *args, env=None, **kw):
        e = {"REKKORD_REPOSITORY": local_repo.url, **(env or {})}
        return run_cli("-k", local_repo.key_files[role], *args, env=e, **kw)

    return run


@pytest.fixture
def saved(cli, tree):
    p = cli("write", "save", "--json", "docs", tree, check=0)
    return json.loads(p.stdout)["id"]


# ---- init --------------------------------------------------------------------------------


def test_init_creates_repository_and_unprotected_master_key(run_cli, tmp_path):
    repo, key = tmp_path / "repo", tmp_path / "m.key"
    p = run_cli("-r", repo, "-k", key, "init", check=0)
    out = p.stdout.decode()
    rid = json.loads((repo / "config").read_bytes())["body"]["repo"]
    assert rid in out and str(key) in out
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert not keymod.is_protected(key.read_text())
    assert keymod.load(str(key)).role == "admin"


def test_init_refuses_an_existing_key_file(run_cli, tmp_path):
    key = tmp_path / "m.key"
    key.write_text("precious")
    fails(run_cli("-r", tmp_path / "repo", "-k", key, "init"), 9, str(key), "already exists")
    assert key.read_text() == "precious"
    assert not (tmp_path / "repo").exists()


def test_init_refuses_an_existing_repository_and_keeps_no_orphan_key(local_repo, run_cli, tmp_path):
    key = tmp_path / "new.key"
    fails(run_cli("-r", local_repo.url, "-k", key, "init"), 9, "already exists")
    assert not key.exists()


def _file_blobs(repo, key, sid: str) -> dict:
    """name -> the lengths of its extents (a file of many chunks) or its one
    blob's reference (a file that is one chunk or part of a pack)."""
    from rekkord.repository import Repository
    from rekkord.snapshot import iter_entries
    from rekkord.storage import open_storage

    r = Repository.open(open_storage(str(repo)), keymod.load(str(key)))
    out = {}
    for e in iter_entries(r, r.resolve(sid)):
        name = e.path.rsplit(b"/", 1)[-1].decode()
        out[name] = [x.length for x in e.extents] if len(e.extents) > 1 else [x.blob for x in e.extents]
    return out


def test_init_chunk_size_sets_the_chunker_and_a_database_dedups_finer(run_cli, tmp_path):
    """--chunk-size 256k: the config holds min/avg/max 64k/256k/1M, the saves
    use them (an 8 MiB file is cut into chunks no larger than 1 MiB; a 100 KiB
    file, at least the new min, is its own chunk instead of packed with a
    small file), and changing a few bytes in six places of the big file
    stores less than with the default 1 MiB chunks."""
    import random

    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    big = bytearray(rng.randbytes(8 << 20))
    (src / "db").write_bytes(big)
    (src / "mid").write_bytes(rng.randbytes(100 << 10))
    (src / "note").write_bytes(b"a small file")
    stored = {}
    for label, extra in (("small", ["--chunk-size", "256k"]), ("default", [])):
        repo, key = tmp_path / f"repo-{label}", tmp_path / f"{label}.key"
        run_cli("-r", repo, "-k", key, "init", *extra, check=0)
        chunker = json.loads((repo / "config").read_bytes())["body"]["chunker"]
        if label == "small":
            assert (chunker["min"], chunker["avg"], chunker["max"]) == (64 << 10, 256 << 10, 1 << 20)
        else:
            assert (chunker["min"], chunker["avg"], chunker["max"]) == (256 << 10, 1 << 20, 4 << 20)
        (src / "db").write_bytes(big)
        run_cli("-r", repo, "-k", key, "save", "c", src, check=0)
        changed = bytearray(big)
        for k in range(1, 7):  # six changes, far apart: each re-stores the chunk it falls in
            changed[k * len(big) // 7:k * len(big) // 7 + 8] = b"CHANGED!"
        (src / "db").write_bytes(changed)
        second = json.loads(run_cli("-r", repo, "-k", key, "save", "--json", "c", src, check=0).stdout)
        stored[label] = second["bytes_new"]
        blobs = _file_blobs(repo, key, second["id"])
        if label == "small":
            assert all(n <= 1 << 20 for n in blobs["db"]) and len(blobs["db"]) >= 8
            assert blobs["mid"] != blobs["note"]  # cut on its own, not packed with the small file
            out = tmp_path / "out"
            run_cli("-r", repo, "-k", key, "restore", second["id"], out, check=0)
            assert_same_tree(src, out / src.relative_to("/"))
        else:
            assert blobs["mid"] == blobs["note"]  # both in one pack
    assert stored["small"] < stored["default"]


def test_init_refuses_a_bad_chunk_size_and_keeps_no_key(run_cli, tmp_path):
    key = tmp_path / "m.key"
    for bad, needle in (("64k", "between 256 KiB and 8 MiB"), ("1G", "between 256 KiB and 8 MiB"),
                        ("lots", "invalid size")):
        fails(run_cli("-r", tmp_path / "repo", "-k", key, "init", "--chunk-size", bad), 2, needle)
        assert not key.exists() and not (tmp_path / "repo").exists()
    other, okey = tmp_path / "other", tmp_path / "o.key"
    run_cli("-r", other, "-k", okey, "init", check=0)
    fails(run_cli("-r", tmp_path / "repo", "-k", key, "init", "--chunk-size", "512k", "--from-repo", other,
                  "--from-key", okey), 2, "exclude each other")
    assert not key.exists()


def test_configuration_precedence_flag_env_file(local_repo, run_cli, saved, tmp_path):
    cfg = tmp_path / "rekkord.toml"
    cfg.write_text(f'repository = "{tmp_path}/nowhere"\nkey_file = "{local_repo.key_files["read"]}"\n')
    # File only: its (missing) repository is used.
    fails(run_cli("-c", cfg, "snapshots"), 6, "nowhere")
    # The environment beats the file (REKKORD_CONFIG works like -c).
    p = run_cli("snapshots", "--json", env={"REKKORD_CONFIG": str(cfg), "REKKORD_REPOSITORY": local_repo.url},
                check=0)
    assert [s["id"] for s in json.loads(p.stdout)] == [saved]
    # A flag beats the environment.
    fails(run_cli("-c", cfg, "-r", tmp_path / "elsewhere", "snapshots", env={"REKKORD_REPOSITORY": local_repo.url}),
          6, "elsewhere")
    p = run_cli("-c", cfg, "-k", local_repo.key_files["write"], "snapshots", env={"REKKORD_REPOSITORY": local_repo.url})
    fails(p, 5, "write key")


# ---- key ---------------------------------------------------------------------------------


def test_key_derive_list_info_passwd(local_repo, cli, run_cli, tmp_path):
    out = tmp_path / "web01.key"
    p = cli("admin", "key", "derive", "--role", "write", "--label", "web01", "--output", out, check=0)
    k = keymod.load(str(out))
    assert k.role == "write" and k.label == "web01" and k.kid in p.stdout.decode()
    assert oct(os.stat(out).st_mode & 0o777) == "0o600"
    listed = json.loads(cli("admin", "key", "list", "--json", check=0).stdout)
    assert {"kid": k.kid, "role": "write", "label": "web01"}.items() <= next(
        x for x in listed if x["kid"] == k.kid).items()
    assert len(listed) == 5
    # info works offline: no repository anywhere.
    info = json.loads(run_cli("key", "info", "--json", out, check=0).stdout)
    assert info["role"] == "write" and info["repository"] == local_repo.master.repo and info["can"] == ["save"]
    # The output file is never overwritten; only the master key derives.
    fails(cli("admin", "key", "derive", "--role", "read", "--label", "x", "--output", out), 9, str(out))
    fails(cli("full", "key", "derive", "--role", "read", "--label", "x", "--output", tmp_path / "x.key"), 5,
          "master key")
    assert not (tmp_path / "x.key").exists()
    # passwd protects, then unprotects.
    run_cli("key", "passwd", out, env={"REKKORD_NEW_PASSPHRASE": "pw"}, check=0)
    assert keymod.is_protected(out.read_text())
    # Its public facts still show without the passphrase; --verify needs it.
    info = json.loads(run_cli("key", "info", "--json", out, check=0).stdout)
    assert (info["kid"], info["protection"], info["verified"]) == (k.kid, "passphrase", False)
    fails(run_cli("key", "info", "--verify", out), 5, "passphrase")
    run_cli("key", "passwd", out, env={"REKKORD_PASSPHRASE": "pw", "REKKORD_NEW_PASSPHRASE": ""}, check=0)
    assert keymod.load(str(out)).kid == k.kid


# ---- save / snapshots / ls / restore / check -------------------------------------------------


def test_save_prints_id_and_summary(cli, tree):
    p = cli("write", "save", "docs", tree, check=0)
    out = p.stdout.decode()
    assert out.startswith("snapshot ") and "saved in channel docs" in out
    for word in ("files:", "total", "read", "new", "stored", "time:"):
        assert word in out
    sid = out.split()[1]
    j = json.loads(cli("write", "save", "--json", "docs", tree, check=0).stdout)
    for field in ("id", "channel", "files", "bytes_total", "bytes_read", "bytes_new", "bytes_stored", "duration"):
        assert field in j, field
    assert j["files"] == 2 and j["bytes_read"] == 0 and j["id"] != sid  # unchanged: served by the cache
    assert p.stderr == b""  # quiet when all is well (no terminal: no progress)


def test_snapshots_listing(cli, tree, saved):
    other = json.loads(cli("write", "save", "--json", "etc", tree / "sub", check=0).stdout)["id"]
    for role in ("admin", "full", "read", "audit"):
        snaps = json.loads(cli(role, "snapshots", "--json", check=0).stdout)
        assert [s["id"] for s in snaps] == [saved, other]
        assert all({"id", "channel", "time"} <= set(s) for s in snaps)
    only = json.loads(cli("read", "snapshots", "--channel", "etc", "--json", check=0).stdout)
    assert [s["id"] for s in only] == [other]
    text = cli("read", "snapshots", check=0).stdout.decode()
    assert saved[:8] in text and "docs" in text and "etc" in text


def test_ls(cli, tree, saved):
    top = cli("read", "ls", saved, check=0).stdout.decode().split()
    assert top == ["/" + str(tree).lstrip("/").split("/")[0]]
    sub = cli("read", "ls", f"{saved}:{tree}", check=0).stdout.decode().split()
    assert sorted(sub) == sorted([f"{tree}", f"{tree}/hello.txt", f"{tree}/link", f"{tree}/sub"])
    rec = json.loads(cli("read", "ls", "--recursive", "--json", f"docs:{tree}", check=0).stdout)
    by = {e["path"]: e for e in rec}
    assert by[f"{tree}/sub/data.bin"]["size"] == 400_000 and by[f"{tree}/sub/data.bin"]["type"] == "file"
    assert by[f"{tree}/link"]["target"] == "hello.txt"
    single = cli("read", "ls", f"{saved[:6]}:{tree}/hello.txt", check=0).stdout.decode().split()
    assert single == [f"{tree}/hello.txt"]


def test_restore_forms(cli, tree, saved, tmp_path):
    # restore ID DEST: the saved absolute paths under DEST.
    cli("read", "restore", saved, tmp_path / "all", check=0)
    assert_same_tree(tree, str(tmp_path / "all") + str(tree))
    # restore ID:/dir DEST: the directory's content in DEST (by channel name).
    cli("admin", "restore", f"docs:{tree}/sub", tmp_path / "sub", check=0)
    assert sorted(os.listdir(tmp_path / "sub")) == ["data.bin"]
    # A single file lands at DEST/<name> (by id prefix).
    cli("full", "restore", f"{saved[:8]}:{tree}/hello.txt", tmp_path / "one", check=0)
    assert os.listdir(tmp_path / "one") == ["hello.txt"]
    # --dry-run writes nothing; --overwrite never keeps what DEST has, quietly;
    # the default (always, also plain --overwrite before SNAPSHOT, as scripts
    # wrote it) replaces what differs.
    cli("read", "restore", "--dry-run", saved, tmp_path / "dry", check=0)
    assert not (tmp_path / "dry").exists()
    (tmp_path / "one" / "hello.txt").write_text("changed")
    p = cli("read", "restore", "--overwrite", "never", f"{saved}:{tree}/hello.txt", tmp_path / "one", check=0)
    assert b"kept by --overwrite never" in p.stdout and p.stderr == b""
    assert (tmp_path / "one" / "hello.txt").read_text() == "changed"
    cli("read", "restore", "--overwrite", f"{saved}:{tree}/hello.txt", tmp_path / "one", check=0)
    assert (tmp_path / "one" / "hello.txt").read_text() == "hello\n"
    (tmp_path / "one" / "hello.txt").write_text("changed")
    cli("read", "restore", f"{saved}:{tree}/hello.txt", tmp_path / "one", check=0)
    assert (tmp_path / "one" / "hello.txt").read_text() == "hello\n"


def test_check(local_repo, cli, saved):
    cli("audit", "check", check=0)
    cli("read", "check", "--read-data", check=0)
    fails(cli("audit", "check", "--read-data"), 5, "audit key")
    # Damage: check reports it and exits 4.
    blobs = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(local_repo.url, "blobs")) for f in fs]
    blobs.sort(key=os.path.getsize, reverse=True)  # (a v2 reference list of a tiny tree has < 100 bytes)
    raw = bytearray(open(blobs[0], "rb").read())
    raw[100] ^= 1
    open(blobs[0], "wb").write(raw)
    p = cli("audit", "check")
    assert p.returncode == 4 and os.path.basename(blobs[0]).encode() in p.stderr
    assert b"Traceback" not in p.stderr


# ---- bad input -----------------------------------------------------------------------------


def test_wrong_key_for_the_repository(local_repo, run_cli, tmp_path):
    other = tmp_path / "other.key"
    run_cli("-r", tmp_path / "other-repo", "-k", other, "init", check=0)
    fails(run_cli("-r", local_repo.url, "-k", other, "snapshots"), 5, "belongs to repository")


def test_wrong_or_missing_passphrase(local_repo, run_cli, tmp_path):
    key = tmp_path / "p.key"
    local_repo.keys["read"].save(str(key), "secret words")
    env = {"REKKORD_REPOSITORY": local_repo.url}
    fails(run_cli("-k", key, "snapshots", env={**env, "REKKORD_PASSPHRASE": "nope"}), 5, "wrong passphrase")
    fails(run_cli("-k", key, "snapshots", env=env), 5, "passphrase")
    run_cli("-k", key, "snapshots", env={**env, "REKKORD_PASSPHRASE": "secret words"}, check=0)


@pytest.mark.parametrize("args", [["snapshots"], ["ls", "docs"], ["restore", "docs", "DEST"]],
                         ids=["snapshots", "ls", "restore"])
def test_write_key_cannot_list_or_restore(cli, saved, tmp_path, args):
    args = [str(tmp_path / "dest") if a == "DEST" else a for a in args]
    fails(cli("write", *args), 5, "a write key cannot")
    assert not (tmp_path / "dest").exists()


def test_missing_or_non_repository_path(local_repo, run_cli, tmp_path):
    key = local_repo.key_files["read"]
    fails(run_cli("-r", tmp_path / "missing", "-k", key, "snapshots"), 6, str(tmp_path / "missing"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("not a repository")
    fails(run_cli("-r", tmp_path / "plain", "-k", key, "snapshots"), 6, str(tmp_path / "plain"))
    fails(run_cli("-k", key, "snapshots"), 2, "no repository given")
    fails(run_cli("-r", local_repo.url, "snapshots"), 2, "no key file given")
    fails(run_cli("-r", local_repo.url, "-k", tmp_path / "nokey", "snapshots"), 5, "does not exist")


def test_unknown_snapshot_and_path_not_in_snapshot(cli, tree, saved, tmp_path):
    fails(cli("read", "restore", "deadbeef", tmp_path / "o"), 6, "deadbeef")
    fails(cli("read", "ls", "nochannel"), 6, "nochannel")
    fails(cli("read", "restore", f"{saved}:{tree}/nope", tmp_path / "o"), 6, f"{tree}/nope", "not in the snapshot")
    fails(cli("read", "ls", f"{saved}:/nope"), 6, "/nope")
    assert not (tmp_path / "o").exists()


def test_save_of_a_missing_path(cli, tmp_path):
    fails(cli("write", "save", "docs", tmp_path / "missing"), 2, str(tmp_path / "missing"))


def test_full_disk_on_restore(cli, tmp_path, tiny_disk):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("small")
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    sid = json.loads(cli("write", "save", "--json", "c", src, check=0).stdout)["id"]
    line = fails(cli("read", "restore", f"{sid}:{src}", tiny_disk / "out"), 8, "no space")
    # The error names the file being written when the disk ran out: big.bin,
    # or a.txt when the other writer filled the disk with big.bin first.
    assert f"{tiny_disk / 'out' / 'big.bin'}" in line or f"{tiny_disk / 'out' / 'a.txt'}" in line, line
    left = [os.path.join(dp, f) for dp, _, fs in os.walk(tiny_disk) for f in fs]
    assert str(tiny_disk / "out" / "big.bin") not in left
    assert not [f for f in left if ".rekkord-tmp-" in f], left


def test_full_disk_on_save(run_cli, tmp_path, tiny_disk):
    env = {"REKKORD_REPOSITORY": str(tiny_disk / "repo")}
    run_cli("-k", tmp_path / "m.key", "init", env=env, check=0)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    fails(run_cli("-k", tmp_path / "m.key", "save", "c", src, env=env), 8, "no space")
    # No snapshot record: the interrupted save left only unreferenced blobs.
    assert not os.path.exists(tiny_disk / "repo" / "snapshots") or not os.listdir(tiny_disk / "repo" / "snapshots")


def test_docs_exit_codes_table_matches_the_code():
    import re

    from rekkord.errors import ExitCode

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "exit-codes.md"), encoding="utf-8").read()
    rows = dict((name, int(code)) for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", doc, re.M))
    codes = {k: v for k, v in vars(ExitCode).items() if k.isupper()}
    assert rows == codes

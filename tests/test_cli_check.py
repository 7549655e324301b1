"""`rekkord check` through the real CLI: output, --json, exit codes (clean 0,
damaged 4, could not run 2/5/6/7), names never shown to an audit key,
revocation, and healing across keys and processes."""

import json
import os
import subprocess
import sys

import pytest

from faulty_storage import blob_path, blob_roles, flip_bit

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def repo_with_snapshot(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    (src / "secret-names").mkdir(parents=True)
    with open(src / "secret-names" / "patient-record.pdf", "wb") as f:
        f.write(os.urandom(700_000))
    for i in range(20):
        with open(src / "secret-names" / f"note-{i}.txt", "wb") as f:
            f.write(os.urandom(3000))
    env = {"REKKORD_REPOSITORY": local_repo.url}
    p = run_cli("-k", local_repo.key_files["write"], "save", "--json", "docs", src, env=env, check=0)
    sid = json.loads(p.stdout)["id"]

    def cli(role, *args, **kw):
        return run_cli("-k", local_repo.key_files[role], *args, env=env, **kw)

    return src, sid, cli


def test_a_healthy_repository_checks_clean_with_exit_0(repo_with_snapshot):
    src, sid, cli = repo_with_snapshot
    p = cli("audit", "check", check=0)
    assert b"checked (structure) 1 snapshots" in p.stderr + p.stdout and b"no problems found" in p.stdout
    p = cli("read", "check", "--read-data", check=0)
    assert b"checked (read-data)" in p.stdout and b"decrypted" in p.stdout
    assert cli("audit", "-q", "check", check=0).stdout == b""


def test_damage_exits_4_naming_objects_and_snapshots_but_never_names_for_an_audit_key(repo_with_snapshot,
                                                                                       local_repo):
    src, sid, cli = repo_with_snapshot
    roles = blob_roles(local_repo, sid)
    big = roles["files"][f"{src}/secret-names/patient-record.pdf"][0]
    pack = roles["pack"][0]
    os.unlink(blob_path(local_repo.url, big))
    flip_bit(blob_path(local_repo.url, pack))
    p = cli("audit", "check", check=4)
    err = p.stderr.decode()
    assert f"rekkord: damage: data blob blobs/{big.hex()[:2]}/{big.hex()}: missing (snapshots: {sid[:8]})" in err
    assert any(f"data blob blobs/{pack.hex()[:2]}/{pack.hex()}: {t}" in err for t in ("MAC mismatch", "its bytes do "
                                                                                  "not hash to its name"))
    assert "damaged snapshots:" in err and sid in err and "docs" in err
    assert "published repair hint repairs/" in err
    out = p.stdout + p.stderr + cli("audit", "check", "--json", check=4).stdout
    assert b"secret-names" not in out and b"patient-record" not in out and b"note-1" not in out
    # A read key names the files each damaged blob affects.
    err = cli("read", "check", check=4).stderr.decode()
    assert f"(files: {src}/secret-names/patient-record.pdf)" in err
    assert f"{src}/secret-names/note-0.txt" in err


def test_json_report(repo_with_snapshot, local_repo):
    src, sid, cli = repo_with_snapshot
    d = json.loads(cli("audit", "check", "--json", check=0).stdout)
    assert d["ok"] is True and d["status"] == "clean" and d["level"] == "structure" and d["snapshots"] == 1
    assert d["blobs_referenced"] == d["blobs_checked"] == d["blobs_read"] > 2 and d["problems"] == []
    victim = blob_roles(local_repo, sid)["index"][0]
    os.truncate(blob_path(local_repo.url, victim), 100)
    d = json.loads(cli("read", "check", "--json", "--no-heal", check=4).stdout)
    assert d["status"] == "damaged" and d["repair_hint"] is None
    [p] = d["problems"]
    assert p["object"] == f"blobs/{victim.hex()[:2]}/{victim.hex()}" and p["what"] == "index blob"
    assert p["kind"] == "wrong-size" and "truncated" in p["message"] and p["snapshots"] == [sid]
    # (format 2 keeps a second copy of every index blob: the snapshot lost redundancy, not data)
    assert p["recoverable_from"] and d["damaged_snapshots"] == []
    assert d["degraded_snapshots"] == [{"id": sid, "channel": "docs", "time": d["degraded_snapshots"][0]["time"],
                                        "host": d["degraded_snapshots"][0]["host"]}]


def test_subset_levels(repo_with_snapshot):
    src, sid, cli = repo_with_snapshot
    d = json.loads(cli("read", "check", "--json", "--read-data-subset", "50%", check=0).stdout)
    assert d["level"] == "subset" and d["blobs_decrypted"] >= 1
    d = json.loads(cli("audit", "check", "--json", "--read-data-subset", "1M", check=0).stdout)
    assert d["level"] == "subset" and d["blobs_decrypted"] == 0 and d["blobs_read"] >= 1


def test_exit_codes_when_check_cannot_run(repo_with_snapshot, run_cli, tmp_path, local_repo):
    src, sid, cli = repo_with_snapshot
    p = cli("write", "check", check=5)
    assert p.stderr.decode().strip() == "rekkord: error: a write key cannot check the repository"
    p = cli("audit", "check", "--read-data", check=5)
    assert b"audit key cannot decrypt data" in p.stderr
    p = cli("audit", "check", "--read-data-subset", "lots", check=2)
    assert b"neither a percentage" in p.stderr
    p = run_cli("-k", local_repo.key_files["audit"], "-r", tmp_path / "nowhere", "check", check=6)
    assert b"no rekkord repository" in p.stderr
    # The storage fails to answer for some blobs: incomplete, exit 7, named.
    spec = json.dumps({"faults": [{"op": "read", "action": "error", "match": "blobs/", "times": 1}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    env["REKKORD_CACHE_DIR"] = str(tmp_path / "c7")
    p = subprocess.run([sys.executable, os.path.join(HERE, "faulty_storage.py"), spec, "-r", local_repo.url,
                        "-k", local_repo.key_files["audit"], "check"], env=env, capture_output=True, timeout=120)
    assert p.returncode == 7, p.stderr
    assert b"rekkord: could not verify: " in p.stderr and b"injected failure" in p.stderr
    assert b"objects could not be verified" in p.stderr


def test_config_damage_is_named(repo_with_snapshot, local_repo):
    src, sid, cli = repo_with_snapshot
    path = os.path.join(local_repo.url, "config")
    orig = open(path, "rb").read()
    flip_bit(path, orig.index(b'"compression"') + 2)
    p = cli("audit", "check", check=4)
    assert b"config" in p.stderr and (b"bad signature" in p.stderr or b"damaged" in p.stderr)
    os.unlink(path)
    p = cli("audit", "check", check=4)
    assert b"rekkord: error: config is missing from" in p.stderr
    open(path, "wb").write(orig)
    cli("audit", "check", check=0)


def test_revoked_key_then_check_flags_its_later_snapshots(repo_with_snapshot, local_repo):
    src, sid, cli = repo_with_snapshot
    kid = local_repo.keys["write"].kid
    p = cli("admin", "key", "revoke", kid[:10], check=0)
    assert f"revoked key {kid}".encode() in p.stdout
    cli("audit", "check", check=0)  # the earlier snapshot is still trusted
    p = cli("write", "save", "--json", "docs", src, check=0)
    later = json.loads(p.stdout)["id"]
    p = cli("audit", "check", check=4)
    err = p.stderr.decode()
    assert f"snapshot record snapshots/{later}: signed by key {kid} after it was revoked" in err
    assert sid not in err.split("damaged snapshots:")[1], err


def test_healing_across_keys_and_processes(repo_with_snapshot, local_repo):
    src, sid, cli = repo_with_snapshot
    roles = blob_roles(local_repo, sid)
    for b in roles["data"] + roles["pack"]:
        os.unlink(blob_path(local_repo.url, b))
    p = cli("audit", "check", check=4)
    assert b"published repair hint" in p.stderr
    out = json.loads(cli("write", "save", "--json", "docs", src, check=0).stdout)
    assert out["blobs_new"] >= len(roles["data"]) + len(roles["pack"])
    p = cli("audit", "check", check=0)
    assert f"healed since the previous check: {sid[:8]}".encode() in p.stdout
    assert b"removed 1 repair hints" in p.stdout
    cli("read", "check", "--read-data", check=0)

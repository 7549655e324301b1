"""rekkord stats through the CLI: selection by id, channel or nothing (the
whole repository), the text and JSON output, and the audit key's limits."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def world(local_repo, run_cli, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_bytes(b"a" * 10000)
    (b / "g").write_bytes(b"b" * 3000)
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    ids = {"a": [json.loads(run_cli("save", "a", a, "--json", env=env, check=0).stdout)["id"] for _ in range(2)],
           "b": [json.loads(run_cli("save", "b", b, "--tag", "x", "--json", env=env, check=0).stdout)["id"]]}
    local_repo.ids = ids

    def stats(role, *args, **kw):
        return run_cli("-r", local_repo.url, "-k", local_repo.key_files[role], "stats", *args, **kw)

    local_repo.stats = stats
    return local_repo


def j(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_scope_a_snapshot_a_channel_or_everything(world):
    s = world.stats
    assert j(s("read", world.ids["a"][0][:8], "--json"))["total_size"] == 10000
    assert j(s("read", "a", "--json")) == {"mode": "restore-size", "snapshots_count": 2, "total_size": 20000,
                                           "total_file_count": 2, "source": "index"}
    assert j(s("read", "--json"))["total_size"] == 23000
    assert j(s("read", "--tag", "x", "--json"))["total_size"] == 3000
    assert j(s("read", "--mode", "files-by-contents", "--json"))["total_file_count"] == 2
    p = s("read", "nothing-like-this")
    assert p.returncode == 6 and b"no snapshot or channel named" in p.stderr


def test_text_output_and_raw_data_with_an_audit_key(world):
    out = world.stats("read", "--mode", "raw-data", check=0).stdout.decode()
    assert out.startswith("Stats in raw-data mode:\n")
    for label in ("Snapshots processed:  3", "Total Blob Count:", "Total Uncompressed Size:", "Compression Ratio:",
                  "Deduplication Ratio:", "Storage Ratio:"):
        assert label in out, (label, out)
    audit = j(world.stats("audit", "--mode", "raw-data", "--json"))
    assert audit["logical_size"] == 23000 and audit["total_size"] > 0 and "compression_ratio" not in audit
    assert audit["source"] == "records and reference lists"
    p = world.stats("audit")
    err = p.stderr.decode()
    assert p.returncode == 5 and "audit keys cannot compute stats --mode restore-size" in err and "raw-data" in err
    assert world.stats("write", "--mode", "raw-data").returncode == 5


def test_untrusted_snapshots_count_only_when_named(world, run_cli, tmp_path):
    kid = world.keys["write"].kid
    run_cli("-r", world.url, "-k", world.key_files["admin"], "key", "revoke", kid, check=0)
    src = tmp_path / "late"
    src.mkdir()
    (src / "x").write_bytes(b"x" * 777)
    late = json.loads(run_cli("-r", world.url, "-k", world.key_files["write"], "save", "late", src, "--json",
                              check=0).stdout)["id"]
    p = world.stats("read", "--json")
    assert j(p)["total_size"] == 23000 and b"1 untrusted snapshots not counted" in p.stderr
    assert j(world.stats("read", late, "--json"))["total_size"] == 777

"""rekkord prune: audit key, --dry-run, --json, what it reclaims; the issue's
judging scenario (two writers saving in loops while forget + prune loop)."""

from __future__ import annotations

import json
import os

import pytest
from test_gc import content, local_scenario, names, write_tree


@pytest.fixture
def garbage_repo(local_repo, run_cli, tmp_path):
    """Two versions saved, the first forgotten: its blobs are garbage."""
    env = {"REKKORD_REPOSITORY": local_repo.url}
    src = tmp_path / "src"
    ids = []
    for v in (1, 2):
        write_tree(src, content(9, v))
        p = run_cli("-k", local_repo.key_files["write"], "save", "c", src, "--json", env=env, check=0)
        ids.append(json.loads(p.stdout)["id"])
    run_cli("-k", local_repo.key_files["audit"], "forget", ids[0], env=env, check=0)
    local_repo.env, local_repo.ids, local_repo.src = env, ids, src
    return local_repo


def repo_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_prune_dry_run_then_reclaim_with_audit_key(garbage_repo, run_cli):
    r = garbage_repo
    before = repo_bytes(r.url)
    p = run_cli("-k", r.key_files["audit"], "prune", "--dry-run", "--json", env=r.env, check=0)
    dry = json.loads(p.stdout)
    assert dry["dry_run"] and dry["fossilised"] > 0 and dry["deleted"] == dry["fossilised"]
    assert repo_bytes(r.url) == before
    p = run_cli("-k", r.key_files["audit"], "prune", env=r.env, check=0)
    out = p.stdout.decode()
    assert f"collect {dry['fossilised']} unreferenced blobs" in out and "reclaimed" in out
    assert repo_bytes(r.url) < before - dry["deleted_bytes"] * 0.9
    p = run_cli("-k", r.key_files["audit"], "prune", "--json", env=r.env, check=0)
    again = json.loads(p.stdout)
    assert again["fossilised"] == 0 and again["deleted"] == 0 and again["snapshots"] == 1
    run_cli("-k", r.key_files["audit"], "check", env=r.env, check=0)
    run_cli("-k", r.key_files["full"], "check", "--read-data", env=r.env, check=0)
    # The audit key pruned, yet it cannot read what it kept.
    p = run_cli("-k", r.key_files["audit"], "restore", r.ids[1], str(r.tmp / "out"), env=r.env)
    assert p.returncode == 5


def test_prune_removes_what_killed_writes_left_behind(garbage_repo, run_cli):
    """A save killed in the middle of writing a blob leaves a temporary file no
    listing shows; prune removes it once it is a day old, and keeps a fresh one
    (a save may be writing it)."""
    import time

    r = garbage_repo
    blobs = os.path.join(r.url, "blobs")
    sub = os.path.join(blobs, sorted(os.listdir(blobs))[0])
    dead, live = os.path.join(sub, ".tmp-00000000deadbeef"), os.path.join(sub, ".tmp-00000000f00dcafe")
    for path, age in ((dead, 2 * 86400), (live, 60)):
        with open(path, "wb") as f:
            f.write(os.urandom(5000))
        os.utime(path, (time.time() - age, time.time() - age))
    p = run_cli("-k", r.key_files["audit"], "prune", "--dry-run", "--json", env=r.env, check=0)
    assert json.loads(p.stdout)["temporaries_removed"] == 0 and os.path.exists(dead)
    p = run_cli("-k", r.key_files["audit"], "prune", env=r.env, check=0)
    assert "removed 1 temporary files of interrupted writes (4.9 KiB)" in p.stdout.decode()
    assert not os.path.exists(dead) and os.path.exists(live)
    run_cli("-k", r.key_files["audit"], "check", env=r.env, check=0)


def test_prune_refused_to_write_and_read_keys(garbage_repo, run_cli):
    r = garbage_repo
    for role in ("write", "read"):
        p = run_cli("-k", r.key_files[role], "prune", env=r.env)
        assert p.returncode == 5 and f"a {role} key cannot prune".encode() in p.stderr


def test_prune_waits_for_a_running_save(garbage_repo, run_cli):
    """A save session present when the blobs were collected: the fossils stay
    until it is gone (here: dead, after --session-timeout)."""
    from rekkord.gc import SaveSession

    r = garbage_repo
    session = SaveSession(r.repo("write"), refresh_interval=None).begin()
    p = run_cli("-k", r.key_files["audit"], "prune", "--json", env=r.env, check=0)
    first = json.loads(p.stdout)
    assert first["fossilised"] > 0 and first["deleted"] == 0 and first["waiting_for_sessions"] == 1
    p = run_cli("-k", r.key_files["audit"], "prune", env=r.env, check=0)
    assert b"wait for 1 running saves" in p.stdout
    p = run_cli("-k", r.key_files["audit"], "prune", "--session-timeout", "0s", "--json", env=r.env, check=0)
    last = json.loads(p.stdout)
    assert last["deleted"] == first["fossilised"] and last["sessions_declared_dead"] == 1
    session.end()
    assert names(r.repo("audit").storage, "fossils/") == []


def test_bad_session_timeout(garbage_repo, run_cli):
    p = run_cli("-k", garbage_repo.key_files["audit"], "prune", "--session-timeout", "soon", env=garbage_repo.env)
    assert p.returncode == 2 and b"not a duration" in p.stderr


@pytest.mark.slow
def test_judging_scenario(tmp_path, run_cli):
    """The issue's judgement: two writers save in loops for a minute while an
    audit key runs `forget --keep-last 2` and `prune` in a loop.  No save
    fails; every remaining snapshot checks and restores identically; after a
    few final rounds of forget --keep-last 1, prune and a save from each
    writer, the repository is smaller."""
    sc = local_scenario(tmp_path, run_cli, writers=2)
    sc.run(60, forget_args=("--keep-last", "2"))
    assert not sc.failures, sc.failures
    remaining = sc.verify()
    peak = sc.size()
    saves = len(sc.saved)
    for _ in range(3):
        sc.maintain_once(("--keep-last", "1"))
        for i in range(2):
            assert sc.save_once(i, same=True)
    assert not sc.failures, sc.failures
    final = sc.verify()
    after = sc.size()
    print(f"\njudging scenario: {saves} saves, {sc.maintenance_runs} forget+prune rounds, "
          f"{len(remaining)} snapshots kept after the loop; repository {peak / 1e6:.1f} MB -> "
          f"{after / 1e6:.1f} MB after the final rounds ({len(final)} snapshots)")
    assert after < peak
    assert names(sc.storage, "fossils/") == []


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MiB tmpfs of our own (root only), unmounted afterwards."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    d = tmp_path / "disk"
    d.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(d)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_prune_frees_a_full_disk(small_disk, tmp_path, run_cli):
    """A repository whose disk filled up (a save failed with "no space"): forget
    and prune free the space -- fossilising moves blob names (no copy, no free
    space needed), then deletes them."""
    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.storage.local import LocalStorage

    url = str(small_disk / "repo")
    master = Key.generate_master()
    Repository.init(LocalStorage(url), master)
    admin = Repository.open(LocalStorage(url), master)
    key_files = {}
    for role in ("write", "audit", "read"):
        k = master.derive(role, f"t-{role}")
        admin.publish_cert(k.cert)
        key_files[role] = str(tmp_path / f"{role}.key")
        k.save(key_files[role])
    env = {"REKKORD_REPOSITORY": url}
    # (held back while the saves fill the disk: the failed one may leave less
    # than the room the top-up below leaves for prune's bookkeeping)
    reserve = small_disk / "reserve"
    reserve.write_bytes(b"\0" * (256 << 10))
    ids = []
    for i in range(10):  # 3 MiB of fresh random data each: a few fit
        src = tmp_path / f"src{i}"
        write_tree(src, {"a": os.urandom(1_500_000), "b": os.urandom(1_500_000)})
        p = run_cli("-k", key_files["write"], "save", "--json", f"c{i}", src, env=env)
        if p.returncode != 0:
            assert p.returncode == 8, p.stderr  # NO_SPACE
            break
        ids.append(json.loads(p.stdout)["id"])
    assert 2 <= len(ids) < 10, (len(ids), p.stderr)
    # Top the disk up, as whatever else filled it would: room for prune's
    # bookkeeping (a few small objects), none for a copy of any blob.
    reserve.unlink()
    free = free_bytes(small_disk)
    if free > 128 << 10:
        with open(small_disk / "filler", "wb") as f:
            f.write(b"\0" * (free - (128 << 10)))
    before = free_bytes(small_disk)
    run_cli("-k", key_files["audit"], "forget", ids[0], ids[1], env=env, check=0)
    p = run_cli("-k", key_files["audit"], "prune", "--json", env=env, check=0)
    rep = json.loads(p.stdout)
    assert rep["deleted"] > 0, (rep, p.stderr)
    assert free_bytes(small_disk) - before > 5_000_000, (before, free_bytes(small_disk), rep, p.stderr)  # both forgotten snapshots' data (and the failed save's)
    run_cli("-k", key_files["audit"], "check", env=env, check=0)
    out = tmp_path / "out"
    run_cli("-k", key_files["read"], "restore", ids[-1], out, env=env, check=0)
    src = tmp_path / f"src{len(ids) - 1}"
    for n in ("a", "b"):
        assert (out / str(src).lstrip("/") / n).read_bytes() == (src / n).read_bytes()
    # and the disk takes saves again
    run_cli("-k", key_files["write"], "save", "again", tmp_path / "src0", env=env, check=0)

"""Fault injection: every kind of stored object × every kind of damage.

Object types: data blob (a chunk of a large file), pack (a data blob holding
small files), index blob, reference list, snapshot record, key certificate,
config.  Faults: a flipped bit, truncation, deletion, duplication under
another name, a swap of two objects of the type, an object forged by
someone holding only the storage and the public keys; for snapshot records
also a replayed record (a copy under a new name) and a record moved to
another channel (re-sealed by an insider holding the audit key, who cannot
sign as the writer).

Each is detected by ``check`` with an audit key and by ``restore`` with a
read key, with a message naming the object (and, for restore, the files).
Tampering goes through the storage interface, so the same matrix runs on
the local, S3 (SeaweedFS) and SFTP (sshd) backends.  Pipeline tests then
inject storage faults (errors, short reads, bit flips on read) into save,
restore and check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

import craft
from craft import tampered
from faulty_storage import Fault, FaultyStorage, blob_roles, forge_blob, forge_record, obj_path
from rekkord import crypto, format as fmt
from rekkord.cache import Cache
from rekkord.check import DAMAGED, MISSING, UNEXPECTED, UNTRUSTED, WRONG_SIZE, Checker
from rekkord.errors import IntegrityError, RekkordError, SnapshotNotFound, StorageError
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.restore import RestoreOptions, Restorer
from rekkord.save import Saver
from rekkord.storage import open_storage
from rekkord.storage.local import LocalStorage
from treeutil import assert_same_tree, snapshot_tree

OBJECTS = ("data", "pack", "index", "reflist", "snapshot", "certificate", "config")
FAULTS = ("flip", "truncate", "delete", "duplicate", "swap", "forge")
SNAPSHOT_ONLY = ("replay", "channel")
MATRIX = [(o, f) for o in OBJECTS for f in FAULTS] + [("snapshot", f) for f in SNAPSHOT_ONLY]


# --- a repository with two snapshots, on any backend ------------------------------------------


def make_sources(root):
    for name, big in (("src1", 8_500_000), ("src2", 900_000)):
        d = root / name
        (d / "docs" / "deep").mkdir(parents=True)
        with open(d / "big.bin", "wb") as f:
            f.write(os.urandom(big))
        for i in range(24):
            with open(d / "docs" / ("deep" if i % 2 else "") / f"n{i:02}.txt", "wb") as f:
                f.write(os.urandom(500 + 60 * i))
        os.link(d / "docs" / "n00.txt", d / "docs" / "hard-n00")
    return root / "src1", root / "src2"


def build(storage, src1, src2, cache_dir):
    """init, keys of every role, a snapshot of src1 (channel docs) and of
    src2 (channel mail), both by the write key."""
    master = Key.generate_master()
    Repository.init(storage, master)
    admin = Repository.open(storage, master)
    keys = {"admin": master}
    for role in ("full", "read", "write", "audit"):
        keys[role] = master.derive(role, f"t-{role}")
        admin.publish_cert(keys[role].cert)
    sids = []
    for src, channel in ((src1, "docs"), (src2, "mail")):
        w = Repository.open(storage, keys["write"])
        cache = Cache(os.path.join(cache_dir, f"w-{channel}.sqlite"))
        sids.append(Saver(w, cache).save(channel, [str(src)]).snapshot_id)
        cache.close()
    return keys, sids


class World:
    """One repository under test: keys, storage, the two snapshots, the
    blobs by role, and check / restore the way an auditor and an operator
    run them."""

    def __init__(self, storage, keys, sids, src1, src2, tmp, roles=None):
        self.storage = storage
        self.keys = keys
        self.s1, self.s2 = sids
        self.src1, self.src2 = src1, src2
        self.tmp = tmp
        ns = SimpleNamespace(master=keys["admin"], repo=lambda role="admin": self.repo(role))
        self.roles1, self.roles2 = roles or (blob_roles(ns, self.s1, storage), blob_roles(ns, self.s2, storage))
        self.config = json.loads(storage.read("config"))["body"]

    def repo(self, role):
        return Repository.open(self.storage, self.keys[role])

    def check(self, role="audit", **kw):
        cache = Cache(str(self.tmp / f"check-{role}.sqlite"))
        try:
            return Checker(self.repo(role), cache, **kw).run()
        finally:
            cache.close()

    def restore(self, sid, dest, **opts):
        repo = self.repo("read")
        r = Restorer(repo, repo.load_snapshot(sid), RestoreOptions(**opts))
        r.restore(None, str(dest))
        return r

    # the objects under test: (name, name of another object of the type)
    def names(self, obj):
        r1, r2 = self.roles1, self.roles2
        big1 = r1["files"][f"{self.src1}/big.bin"][0]
        big2 = r2["files"][f"{self.src2}/big.bin"][0]
        pick = {
            "data": (big1, big2), "pack": (r1["pack"][0], r2["pack"][0]),
            "index": (r1["index"][0], r2["index"][0]), "reflist": (r1["reflist"][0], r2["reflist"][0]),
        }
        if obj in pick:
            a, b = pick[obj]
            return fmt.blob_name(a), fmt.blob_name(b)
        if obj == "snapshot":
            return f"snapshots/{self.s1}", f"snapshots/{self.s2}"
        if obj == "certificate":
            return f"keys/{self.keys['write'].kid}", f"keys/{self.keys['read'].kid}"
        return "config", f"keys/{self.keys['audit'].kid}"


@pytest.fixture(scope="module")
def local_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    src1, src2 = make_sources(root)
    keys, sids = build(LocalStorage(str(root / "repo"), sync=False), src1, src2, str(root / "cache"))
    return root, keys, sids, src1, src2


@pytest.fixture
def world(local_template, tmp_path):
    root, keys, sids, src1, src2 = local_template
    shutil.copytree(root / "repo", tmp_path / "repo")
    return World(LocalStorage(str(tmp_path / "repo"), sync=False), keys, sids, src1, src2, tmp_path)


def remote_world(url, options, tmp_path):
    storage = open_storage(url, options)
    storage.create()
    src1, src2 = make_sources(tmp_path)
    keys, sids = build(storage, src1, src2, str(tmp_path / "cache"))
    return World(storage, keys, sids, src1, src2, tmp_path)


# --- the faults, through the storage interface ----------------------------------------------


def put(storage, name, data):
    storage.delete(name)
    storage.write(name, data)


def same_size_forgery(w: World, name: str) -> bytes:
    """What someone with only the storage and the public keys can make in
    place of ``name`` (of the same size where the format allows it)."""
    old = w.storage.read(name)
    if name.startswith("blobs/"):
        bid = fmt.blob_id_from_name(name)
        btype = old[4]
        from rekkord.format_v2 import OVERHEAD_V2

        overhead = OVERHEAD_V2 if w.config.get("format", 1) >= 2 else fmt.BLOB_OVERHEAD
        n = len(old) - overhead - 9  # incompressible plaintext of this length pads to the same size
        return forge_blob(w.config, bid, btype, os.urandom(n))
    if name.startswith("snapshots/"):
        sid = name.split("/")[1]
        return forge_record(w.config, sid, {"channel": "docs", "time_ns": 1, "host": "h",
                                            "kid": w.keys["write"].kid, "index": [], "reflist": []})
    if name.startswith("keys/"):
        fake = Key.from_master(os.urandom(32), w.config["repo"])  # the storage's own "master"
        cert = fake.certify("write", "t-write", w.keys["write"].sign_pk)
        return json.dumps(cert).encode()
    # config: same repository id and public keys, signed by the forger's own master key
    fake = Key.from_master(os.urandom(32), w.config["repo"])
    from rekkord.repository import signed_json

    return signed_json({**w.config, "master_sign_pk": fake.sign_pk.hex(), "compression": 0}, fake.sign_seed,
                       b"rekkord config v1\0")


def apply_fault(w: World, obj: str, fault: str) -> dict:
    """Damage the repository; returns what the detectors must name."""
    st = w.storage
    name, other = w.names(obj)
    out = {"name": name, "other": other}
    if fault == "flip":
        data = bytearray(st.read(name))
        data[len(data) // 2] ^= 0x04
        put(st, name, bytes(data))
    elif fault == "truncate":
        data = st.read(name)
        put(st, name, data[: len(data) // 2])
    elif fault == "delete":
        st.delete(name)
    elif fault == "duplicate":
        data = st.read(name)
        if name.startswith("blobs/"):
            new = fmt.blob_name(os.urandom(32))
        elif name.startswith("snapshots/"):
            new = f"snapshots/{os.urandom(16).hex()}"
        elif name.startswith("keys/"):
            new = f"keys/{os.urandom(12).hex()}"
        else:
            new = "config.orig"
        st.write(new, data)
        out["copy"] = new
    elif fault == "swap":
        a, b = st.read(name), st.read(other)
        put(st, name, b)
        put(st, other, a)
    elif fault == "forge":
        put(st, name, same_size_forgery(w, name))
    elif fault == "replay":
        new = f"snapshots/{os.urandom(16).hex()}"
        st.write(new, st.read(name))
        out["copy"] = new
    elif fault == "channel":
        # An insider with the audit key opens the record, changes its channel
        # and seals it again; it cannot sign as the writer.
        audit = w.keys["audit"]
        sid = name.split("/")[1]
        log_mix = crypto.derive(crypto.CTX_LOG, audit.psk)
        record, _, _ = fmt.open_record(sid, st.read(name), audit.log_sk, log_mix)
        record["channel"] = "mail"
        put(st, name, fmt.seal_record(sid, record, audit.sign_seed, audit.log_pk, log_mix))
    return out


# --- what check (audit key) must report ------------------------------------------------------


def expect_check(w: World, obj: str, fault: str, info: dict):
    name, other = info["name"], info["other"]
    if obj == "config" and fault != "duplicate":
        with pytest.raises(IntegrityError, match="config") as e:
            w.check("audit")
        if fault == "delete":
            assert "config is missing" in str(e.value)
        return
    r = w.check("audit")
    assert r.status == "damaged" and r.exit_code == 4
    by = {p.object: p for p in r.problems}
    text = "\n".join(map(str, r.problems))
    if fault in ("duplicate", "replay"):
        p = by[info["copy"]]
        if obj == "config":
            assert p.kind == UNEXPECTED
        elif obj == "snapshot":
            assert p.what == "snapshot record" and "cannot be opened" in p.message and "renamed" in p.message
        elif obj == "certificate":
            assert p.what == "key certificate" and "stored under another name" in p.message
        else:
            assert p.what == "unreferenced blob" and tampered(p.message)
        return
    if obj in ("data", "pack", "index", "reflist"):
        what = {"data": "data blob", "pack": "data blob", "index": "index blob", "reflist": "reference list"}[obj]
        p = by[name]
        assert p.what == what, text
        want = {"flip": (DAMAGED,), "truncate": (WRONG_SIZE,), "delete": (MISSING,), "swap": (DAMAGED, WRONG_SIZE),
                "forge": (DAMAGED,)}[fault]
        assert p.kind in want, text
        if fault in ("flip", "forge"):
            assert tampered(p.message)
        assert w.s1 in p.snapshots
        if obj in ("index", "reflist") and w.repo("audit").copies > 1:
            # (format v2 keeps two copies of each: the snapshot is degraded,
            # not damaged, and check names the intact copy)
            assert p.recoverable_from and p.recoverable_from != name, text
            assert w.storage.exists(p.recoverable_from), text
            assert w.s1 in r.degraded_snapshots and w.s1 not in r.damaged_snapshots, text
        else:
            assert w.s1 in r.damaged_snapshots
        if fault == "swap":
            assert other in by and w.s2 in by[other].snapshots
        assert p.paths == []  # an audit key never sees names
        return
    if obj == "snapshot":
        p = by[name]
        assert p.what == "snapshot record" and p.snapshots == [w.s1], text
        if fault == "delete":
            assert p.kind == MISSING and "without a forget log entry" in p.message
        elif fault == "channel":
            assert p.kind == UNTRUSTED and "does not verify" in p.message
        else:
            assert "cannot be opened" in p.message or "not a snapshot record" in p.message, text
        if fault == "swap":
            assert other in by
        return
    if obj == "certificate":
        kid = name.split("/")[1]
        if fault != "delete":
            assert by[name].what == "key certificate" and by[name].kind == DAMAGED, text
        for sid in (w.s1, w.s2):
            p = by[f"snapshots/{sid}"]
            assert p.kind == UNTRUSTED and f"certificate {name}" in p.message, text
            assert ("is missing" in p.message) == (fault == "delete")
        if fault == "swap":
            assert other in by
        assert kid
        return
    raise AssertionError((obj, fault))


# --- what restore (read key) must report -------------------------------------------------------


def expect_restore(w: World, obj: str, fault: str, info: dict):
    name = info["name"]
    dest = w.tmp / "out"
    if obj == "config" and fault != "duplicate":
        with pytest.raises(IntegrityError, match="config"):
            w.repo("read")
        return
    if fault in ("duplicate", "replay"):
        if obj == "snapshot":
            with pytest.raises(IntegrityError, match=info["copy"].split("/")[1]):
                w.restore(info["copy"].split("/")[1], dest)
        # The referenced objects are untouched: the original restores whole.
        r = w.restore(w.s1, dest / "s1")
        assert r.stats.damaged == 0 and r.problems == []
        assert_same_tree(w.src1, str(dest / "s1") + str(w.src1))
        return
    if obj == "snapshot":
        if fault == "delete":
            with pytest.raises(SnapshotNotFound, match=w.s1):
                w.restore(w.s1, dest)
        else:
            with pytest.raises(IntegrityError, match=w.s1) as e:
                w.restore(w.s1, dest)
            if fault == "channel":
                assert "not trusted" in str(e.value) and "does not verify" in str(e.value)
        assert not dest.exists() or not os.listdir(dest)
        return
    if obj == "certificate":
        with pytest.raises(IntegrityError, match=f"not trusted.*keys/{w.keys['write'].kid}"):
            w.restore(w.s1, dest)
        return
    r = w.restore(w.s1, dest)
    text = "\n".join(f"{p}: {m}" for p, m in r.problems)
    root = str(dest) + str(w.src1)
    bid = name.split("/")[-1]
    if obj in ("index", "reflist") and w.repo("read").copies > 1:
        # read from the other copy: every file back, nothing damaged
        assert r.stats.damaged == 0, text
        assert_same_tree(w.src1, root)
        return
    if obj == "reflist":
        # Restore does not need it, but says that prune cannot rely on it.
        assert r.stats.damaged == 0 and f"reference list blob {bid} is damaged" in text
        assert_same_tree(w.src1, root)
        return
    if obj == "index":
        assert r.stats.damaged >= 1 and f"index blob {bid}" in text and "lost" in text
        return
    damaged = sorted(f for f, ids in w.roles1["files"].items() if bytes.fromhex(bid) in ids)
    assert damaged
    if obj == "pack":
        assert len(damaged) > 5  # a pack holds many small files
    reported = {p for p, m in r.problems if "DAMAGED" in m}
    want = {str(dest) + f for f in damaged}
    if f"{w.src1}/docs/n00.txt" in damaged:
        want.add(str(dest) + f"{w.src1}/docs/hard-n00")  # its hard link
    assert reported == want, text
    assert r.stats.damaged == len(want)
    for f in want:
        assert not os.path.lexists(f), f"damaged file left under its final name: {f}"
    assert all(bid in m for p, m in r.problems if "DAMAGED" in m and "hard link" not in m)
    # Everything else is restored exactly.
    got, src = snapshot_tree(root), snapshot_tree(w.src1)
    for rel, info_ in src.items():
        if rel == "__hardlinks__":
            continue
        if str(dest) + f"{w.src1}/{os.fsdecode(rel)}" in want:
            assert rel not in got
        elif info_["type"] != 0o040000:
            assert got[rel] == info_, rel
    assert not [f for f in os.listdir(root) if f.startswith(".rekkord-tmp")]


@pytest.mark.parametrize("obj,fault", MATRIX, ids=[f"{o}-{f}" for o, f in MATRIX])
def test_fault_matrix_local(world, obj, fault):
    run_case(world, obj, fault)  # (the nightly check runs once before the damage)


REMOTE_SUBSET = [("data", "flip"), ("pack", "truncate"), ("index", "delete"), ("reflist", "swap"),
                 ("data", "forge"), ("snapshot", "replay"), ("snapshot", "channel"), ("certificate", "delete"),
                 ("config", "flip")]


REMOTE_FULL = [c for c in MATRIX if c not in REMOTE_SUBSET]


def run_case(w: World, obj: str, fault: str):
    assert w.check("audit").ok
    info = apply_fault(w, obj, fault)
    expect_check(w, obj, fault, info)
    expect_restore(w, obj, fault, info)


@pytest.mark.s3
@pytest.mark.parametrize("obj,fault", REMOTE_SUBSET, ids=[f"{o}-{f}" for o, f in REMOTE_SUBSET])
def test_fault_matrix_s3(s3_location, tmp_path, obj, fault):
    run_case(remote_world(*s3_location, tmp_path), obj, fault)


@pytest.mark.sftp
@pytest.mark.parametrize("obj,fault", REMOTE_SUBSET, ids=[f"{o}-{f}" for o, f in REMOTE_SUBSET])
def test_fault_matrix_sftp(sftp_location, tmp_path, obj, fault):
    run_case(remote_world(*sftp_location, tmp_path), obj, fault)


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize("obj,fault", REMOTE_FULL, ids=[f"{o}-{f}" for o, f in REMOTE_FULL])
def test_fault_matrix_s3_rest(s3_location, tmp_path, obj, fault):
    run_case(remote_world(*s3_location, tmp_path), obj, fault)


@pytest.mark.sftp
@pytest.mark.slow
@pytest.mark.parametrize("obj,fault", REMOTE_FULL, ids=[f"{o}-{f}" for o, f in REMOTE_FULL])
def test_fault_matrix_sftp_rest(sftp_location, tmp_path, obj, fault):
    run_case(remote_world(*sftp_location, tmp_path), obj, fault)


# --- the keep-damaged option and the CLI --------------------------------------------------------


def test_keep_damaged_keeps_every_intact_byte_around_the_hole(world):
    big = f"{world.src1}/big.bin"
    ids = world.roles1["files"][big]
    assert len(ids) >= 2, "big.bin should span several chunks"
    world.storage.delete(fmt.blob_name(ids[0]))
    dest = world.tmp / "out"
    r = world.restore(world.s1, dest, keep_damaged=True)
    got = str(dest) + big
    assert r.stats.damaged == 1 and any("kept, with holes" in m for _, m in r.problems)
    data, orig = open(got, "rb").read(), open(big, "rb").read()
    assert len(data) == len(orig) and os.stat(got).st_mtime_ns == os.stat(big).st_mtime_ns
    # The damaged first chunk is a hole of zeros; every other byte is the original.
    k = len(world.repo("admin").read_blob(ids[1], fmt.T_DATA, world.roles1["keys"][ids[1]])) and \
        len(orig) - len(data.lstrip(b"\0"))
    assert k > 0 and data[:k] == bytes(k) and data[k:] == orig[k:]


def test_cli_audit_check_and_read_restore_report_each_damage_and_restore_the_rest(world, run_cli, tmp_path):
    """How the issue is judged: bit flip, truncation, deletion and swap of
    stored objects, caught by an audit key; a read key restores the rest."""
    url = world.storage.root
    keyfiles = {}
    for role in ("audit", "read"):
        keyfiles[role] = str(tmp_path / f"{role}.key")
        world.keys[role].save(keyfiles[role])
    env = {"REKKORD_REPOSITORY": url}
    run_cli("-k", keyfiles["audit"], "check", env=env, check=0)
    files = world.roles1["files"]
    src = str(world.src1)
    pack_files = [f for f, ids in files.items() if world.roles1["pack"][0] in ids]
    big = files[f"{src}/big.bin"]
    flip = fmt.blob_name(big[0])
    trunc = fmt.blob_name(world.roles1["pack"][0])
    delete = fmt.blob_name(big[1]) if len(big) > 1 else fmt.blob_name(world.roles2["pack"][0])
    swap_a, swap_b = fmt.blob_name(world.roles2["files"][f"{world.src2}/big.bin"][0]), \
        fmt.blob_name(world.roles2["index"][0])
    data = bytearray(open(obj_path(url, flip), "rb").read())
    data[77] ^= 1
    open(obj_path(url, flip), "wb").write(data)
    os.truncate(obj_path(url, trunc), 1000)
    os.unlink(obj_path(url, delete))
    os.rename(obj_path(url, swap_a), obj_path(url, swap_a) + ".x")
    os.rename(obj_path(url, swap_b), obj_path(url, swap_a))
    os.rename(obj_path(url, swap_a) + ".x", obj_path(url, swap_b))
    p = run_cli("-k", keyfiles["audit"], "check", env=env, check=4)
    err = p.stderr.decode()
    for n in (flip, trunc, delete, swap_a, swap_b):
        assert f" {n}: " in err, (n, err)
    assert tampered(err) and "truncated" in err and "missing" in err
    assert world.s1 in err and world.s2 in err
    assert "big.bin" not in err and "n00" not in err  # no names for an audit key
    # The audit key cannot restore anything.
    p = run_cli("-k", keyfiles["audit"], "restore", world.s1, tmp_path / "a", env=env, check=5)
    # A read key restores every intact file and names each damaged one.
    p = run_cli("-k", keyfiles["read"], "restore", world.s1, tmp_path / "out", env=env, check=4)
    err = p.stderr.decode()
    damaged = {f"{src}/big.bin"} | set(pack_files) | {f"{src}/docs/hard-n00"}
    for f in damaged:
        assert f"rekkord: warning: {tmp_path}/out{f}: DAMAGED, not restored" in err, (f, err)
        assert not os.path.lexists(f"{tmp_path}/out{f}")
    assert f"{len(damaged)} damaged" in (p.stdout + p.stderr).decode()
    restored = snapshot_tree(f"{tmp_path}/out{src}")
    for rel, info in snapshot_tree(src).items():
        if rel != "__hardlinks__" and f"{src}/{os.fsdecode(rel)}" not in damaged and info["type"] != 0o040000:
            assert restored[rel] == info


# --- storage faults during save, restore and check (FaultyStorage) -----------------------------


def wrapped_world(world, faults, seed=0):
    return World(FaultyStorage(world.storage, faults, seed=seed), world.keys, [world.s1, world.s2],
                 world.src1, world.src2, world.tmp, roles=(world.roles1, world.roles2))


def test_bit_flips_and_short_reads_during_restore_are_caught_and_nothing_bad_is_written(world):
    src = str(world.src1)
    files = world.roles1["files"]
    pack, big = world.roles1["pack"][0], files[f"{src}/big.bin"][0]
    fw = wrapped_world(world, [Fault("read", "flip", match=fmt.blob_name(pack)),
                               Fault("read", "short", match=fmt.blob_name(big))], seed=3)
    dest = world.tmp / "out"
    r = fw.restore(world.s1, dest)
    root = str(dest) + src
    want = {f"{str(dest)}{f}" for f, ids in files.items() if pack in ids or big in ids}
    want.add(f"{root}/docs/hard-n00")
    damaged = {p for p, m in r.problems if "DAMAGED" in m}
    assert damaged == want and r.stats.damaged == len(want) > 5
    # What was restored is exactly right; what was not is named, never half-written.
    srct = snapshot_tree(src)
    got = snapshot_tree(root)
    for rel, info in srct.items():
        if rel == "__hardlinks__" or info["type"] == 0o040000:
            continue
        full = f"{root}/{os.fsdecode(rel)}"
        assert (got[rel] == info) if full not in want else (rel not in got), rel
    # The storage itself was never damaged: a clean restore is complete.
    r = world.restore(world.s1, world.tmp / "again")
    assert r.stats.damaged == 0
    assert_same_tree(world.src1, str(world.tmp / "again") + str(world.src1))


def test_bit_flips_and_short_reads_during_check_are_reported_as_damage(world):
    fw = wrapped_world(world, [Fault("read", "flip", match="blobs/", after=2, times=1),
                               Fault("read", "short", match="blobs/", after=5, times=1)])
    r = fw.check("audit", heal=False)
    assert r.status == "damaged" and len([p for p in r.problems if p.kind in (DAMAGED, WRONG_SIZE)]) == 2
    assert all(p.object.startswith("blobs/") and p.snapshots for p in r.problems)
    assert world.check("audit").ok  # it was the reading, not the repository


def test_storage_errors_during_save_fail_it_cleanly_and_the_next_save_completes(world, tmp_path):
    src = tmp_path / "new"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        with open(src / "d" / f"f{i}", "wb") as f:
            f.write(os.urandom(40_000 if i % 5 else 400_000))
    repo_blobs = lambda: {n for n, _ in world.storage.list("blobs/")}  # noqa: E731
    for action in ("error", "transient"):
        before = repo_blobs()
        fw = wrapped_world(world, [Fault("write", action, match="blobs/", after=3, times=1)])
        cache = Cache(str(tmp_path / "w.sqlite"))
        with pytest.raises(StorageError, match="injected"):
            Saver(fw.repo("write"), cache).save("new", [str(src)])
        cache.close()
        assert len(repo_blobs()) > len(before)  # it had stored some
        assert world.check("audit").ok  # nothing referenced is damaged: only unreferenced blobs were added
    # The next save completes, uploading only what is missing.
    counting = FaultyStorage(world.storage)
    cache = Cache(str(tmp_path / "w.sqlite"))
    present = repo_blobs()
    res = Saver(Repository.open(counting, world.keys["write"]), cache).save("new", [str(src)])
    cache.close()
    uploaded = [n for n in counting.written if n.startswith("blobs/")]
    assert uploaded and not set(uploaded) & present
    assert res.stats.blobs_new == len(uploaded)
    assert world.check("audit").ok
    r = world.restore(res.snapshot_id, tmp_path / "out")
    assert r.stats.damaged == 0
    assert_same_tree(src, str(tmp_path / "out") + str(src))


def test_a_storage_that_loses_acknowledged_writes_is_caught_and_healed(world, tmp_path):
    """A storage that says yes and keeps nothing (or keeps a prefix) for a
    few blobs: the snapshot is damaged, check names it, the next save heals."""
    src = tmp_path / "new"
    src.mkdir()
    for i in range(8):
        with open(src / f"f{i}", "wb") as f:
            f.write(os.urandom(350_000))
    fw = wrapped_world(world, [Fault("write", "drop", match="blobs/", after=1, times=2),
                               Fault("write", "truncate", match="blobs/", after=4, times=1)])
    cache_path = str(tmp_path / "w.sqlite")
    cache = Cache(cache_path)
    sid = Saver(fw.repo("write"), cache).save("new", [str(src)]).snapshot_id
    cache.close()
    r = world.check("audit")
    assert sid in r.damaged_snapshots and r.repair_hint
    assert {p.kind for p in r.problems} <= {MISSING, WRONG_SIZE} and len(r.problems) == 3
    cache = Cache(cache_path)
    res = Saver(world.repo("write"), cache).save("new", [str(src)])
    cache.close()
    assert res.stats.blobs_new >= 3
    r = world.check("audit")
    assert r.ok and sid in r.healed_snapshots
    out = world.restore(sid, tmp_path / "out")
    assert out.stats.damaged == 0
    assert_same_tree(src, str(tmp_path / "out") + str(src))


def test_faulty_storage_runs_the_real_cli(world, tmp_path):
    """The CLI over a storage that fails every blob read: check exits 7 (incomplete), naming blobs."""
    keyfile = str(tmp_path / "audit.key")
    world.keys["audit"].save(keyfile)
    spec = json.dumps({"faults": [{"op": "read", "action": "transient", "match": "blobs/"}]})
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    env["REKKORD_CACHE_DIR"] = str(tmp_path / "c")
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "faulty_storage.py"), spec,
                        "-r", world.storage.root, "-k", keyfile, "check", "--json"], env=env,
                       capture_output=True, timeout=120)
    assert p.returncode == 7, p.stderr
    d = json.loads(p.stdout)
    assert d["status"] == "incomplete" and all(x["kind"] == "unverified" for x in d["problems"])
    assert RekkordError  # (the CLI mapped every error to a line; none escaped as a traceback)
    assert b"Traceback" not in p.stderr


def test_restore_survives_a_damaged_index_blob(local_repo, tmp_path):
    """An index cut in several blobs, one of them damaged: restore names the
    blob and the entries lost between two paths, and restores every file
    before and after them (in directories it recreates)."""
    from rekkord.index import K_DIR, K_FILE, Entry

    repo = local_repo.repo("full")
    content = {}
    entries = []
    for d in range(30):
        entries.append(Entry(K_DIR, b"top/d%02d" % d, mode=0o755))
        for i in range(100):
            data = b"%d-%d " % (d, i) * 7
            path = b"top/d%02d/file-%03d-%s" % (d, i, b"n" * 40)
            entries.append(Entry(K_FILE, path, mode=0o640, size=len(data), mtime_ns=10**18,
                                 extents=[craft.data_extent(repo, data)]))
            content[path] = data
    entries.insert(0, Entry(K_DIR, b"top", mode=0o755))
    stream = b"".join(repo.index.encode(e) for e in entries)
    step = -(-len(stream) // 6)
    index = []
    for k in range(0, len(stream), step):
        ref, size, _ = craft.store(repo, fmt.T_INDEX, stream[k:k + step])
        index.append([ref.hex(), size])
    sid = repo.write_snapshot({"channel": "c", "time_ns": 1, "host": "h", "index": index, "reflist": []})
    victim = bytes.fromhex(index[2][0])
    os.unlink(os.path.join(local_repo.url, *fmt.blob_name(victim).split("/")))
    reader = local_repo.repo("read")
    r = Restorer(reader, reader.load_snapshot(sid))
    r.restore(None, str(tmp_path / "out"))
    [(where, msg)] = [(p, m) for p, m in r.problems if "index" in p]
    assert f"index blob {victim.hex()}: " in msg and "missing" in msg and "the entries between /top/d" in msg
    restored = {os.path.relpath(os.path.join(dp, f), tmp_path / "out").encode()
                for dp, _, fs in os.walk(tmp_path / "out") for f in fs}
    assert r.stats.damaged == 1
    lost = set(content) - restored
    assert 0 < len(lost) < len(content) / 4  # about one blob's worth of entries out of six
    for p in restored:
        assert open(os.path.join(tmp_path / "out", os.fsdecode(p)), "rb").read() == content[p]
    later = max(content)  # files after the damaged blob are back, in recreated directories
    assert later in restored

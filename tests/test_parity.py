"""rekkord.parity: Reed-Solomon parity groups over data blobs (init --parity).

The coder on its own (any one member of a group, whatever its size, lost or
bit-flipped, is rebuilt exactly), parity objects as hostile input (bounded
parsing, fuzzed), and the repository: init and config, saves writing groups,
check verifying them and rebuilding a lost data blob (with an audit key, from
stored bytes only), check --repair writing it back and giving parity to blobs
that have none, and prune deleting groups whose members are all gone."""

from __future__ import annotations

import os
import struct

import blake3
import pytest
from faulty_storage import blob_path, blob_roles, flip_bit, run_check, save_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rekkord import format as fmt
from rekkord import parity as par
from rekkord.check import DAMAGED, MISSING
from rekkord.errors import IntegrityError, UsageError
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.storage.local import LocalStorage
from rekkord.storage.memory import MemoryStorage

zfec = pytest.importorskip("zfec")


def _name(raw: bytes) -> bytes:
    return blake3.blake3(raw).digest()


def _group(storage, sizes, ratio=0.05, seed=0):
    """Store members of ``sizes`` (random bytes under their hash) and their group."""
    rnd = __import__("random").Random(seed)
    members, stream = [], bytearray()
    for size in sizes:
        raw = rnd.randbytes(size)
        name = _name(raw)
        storage.write(fmt.blob_name(name), raw)
        members.append((name, raw))
        stream += raw
    gname, obj = par.encode([(n, len(r)) for n, r in members], bytes(stream), ratio)
    par.write_group(storage, gname, obj)
    return members, gname, bytes(obj)


# --- the coder -------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[1000], [70_000, 3, 200_000, 65_536], [4_300_000, 1000, 900_000],
                                   [300] * 50])
@pytest.mark.parametrize("how", ["delete", "flip", "truncate"])
def test_any_one_member_is_rebuilt_exactly(sizes, how):
    s = MemoryStorage()
    members, gname, obj = _group(s, sizes)
    assert _name(obj) == gname and par.name_from_object(par.object_name(gname)) == gname
    g = par.parse_manifest(obj, gname, size=len(obj))
    idx = par.ParityIndex(s, threads=2)
    for name, raw in members:
        blob = fmt.blob_name(name)
        if how == "delete":
            s.delete(blob)
        elif how == "flip":
            bad = bytearray(raw)
            bad[len(bad) // 2] ^= 0x10
            s.write(blob, bytes(bad), exclusive=False)
        else:
            s.write(blob, raw[: len(raw) // 2], exclusive=False)
        got = idx.rebuild(name)
        assert got is not None and got[0] == raw and got[1].name == g.name
        s.write(blob, raw, exclusive=False)


def test_shape_costs_about_the_share_chosen_in_full_groups():
    for ratio in (0.01, 0.05, 0.1, 0.25, 0.5):
        n, m = par.shape(ratio)
        assert n + m <= 256 and abs(m / n - ratio) <= ratio * 0.1 + 0.01
    # A full group of chunk-sized members: parity about 5 % of the data.
    sizes = [1_048_576 + 777 * i for i in range(80)]
    n, m, stripe, rows = par.plan(sizes, 0.05)
    assert m * stripe * rows / sum(sizes) < 0.07


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 300_000), min_size=1, max_size=12), st.sampled_from([0.02, 0.05, 0.2]),
       st.data())
def test_plan_lets_any_one_member_be_lost(sizes, ratio, data):
    """Property: whatever the sizes, one member lost whole erases at most
    ``m`` stripes of any row -- and decoding really rebuilds it."""
    n, m, stripe, rows = par.plan(sizes, ratio)
    assert 1 <= n and 1 <= m and n + m <= 256 and n * stripe * rows >= sum(sizes)
    assert m >= ratio * n - 1e-9
    s = MemoryStorage()
    members, _, _ = _group(s, sizes, ratio, seed=len(sizes))
    k = data.draw(st.integers(0, len(members) - 1))
    name, raw = members[k]
    s.delete(fmt.blob_name(name))
    got = par.ParityIndex(s, threads=1).rebuild(name)
    assert got is not None and got[0] == raw


def test_two_members_lost_in_one_row_are_not_invented():
    s = MemoryStorage()
    members, _, _ = _group(s, [100_000] * 30)
    for name, _ in members[:8]:
        s.delete(fmt.blob_name(name))
    idx = par.ParityIndex(s, threads=1)
    assert idx.rebuild(members[0][0]) is None  # never wrong bytes: nothing


def test_write_group_keeps_an_identical_object_and_replaces_a_spoiled_one():
    s = MemoryStorage()
    _, gname, obj = _group(s, [5000, 7000])
    par.write_group(s, gname, obj)  # already there, identical: kept
    s.write(par.object_name(gname), b"squatted", exclusive=False)
    par.write_group(s, gname, obj)
    assert s.read(par.object_name(gname)) == obj


# --- hostile parity objects ------------------------------------------------------------------


def test_the_head_is_bounded_before_anything_is_allocated():
    def head(n=20, m=1, stripe=65536, rows=1, k=1, magic=par.MAGIC, version=par.VERSION):
        return par.HEAD.pack(magic, version, n, m, 0, stripe, rows, k, 0)

    assert par.parse_head(head(), "x") == (20, 1, 65536, 1, 1)
    for bad in (head(magic=b"XXXX"), head(version=9), head(n=0), head(m=0), head(n=200, m=100),
                head(stripe=0), head(stripe=par.MAX_STRIPE + 1), head(rows=0), head(rows=1 << 30),
                head(stripe=1 << 20, rows=65, m=1), head(m=5, stripe=1 << 20, rows=60), head(k=0),
                head(k=par.MAX_MEMBERS + 1), head()[:10]):
        with pytest.raises(IntegrityError):
            par.parse_head(bad, "x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_parsing_random_bytes(raw):
    try:
        g = par.parse_manifest(raw, _name(raw), size=len(raw))
    except IntegrityError:
        return
    assert g.object_size == len(raw)


_FUZZ = {}


def _fuzz_base():
    if not _FUZZ:
        s = MemoryStorage()
        members, _, obj = _group(s, [3000, 150_000, 9000], ratio=0.2, seed=7)
        _FUZZ.update(s=s, members=members, obj=obj)
    return _FUZZ


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
       st.booleans(), st.integers(0, 2))
def test_fuzz_rebuilding_from_a_tampered_group_gives_the_blob_or_nothing(edits, head_only, lost):
    """A parity object changed anywhere (manifest, hashes, parity, sizes)
    rebuilds the true bytes or nothing, and fails only in the ways callers
    expect: a forged group can cost redundancy, never data."""
    base = _fuzz_base()
    obj = bytearray(base["obj"])
    limit = par.HEAD.size + 8 if head_only else len(obj)
    for pos, val in edits:
        obj[pos % limit] = val
    s = MemoryStorage()
    for name, raw in base["members"]:
        s.write(fmt.blob_name(name), raw)
    gname = _name(bytes(obj))
    s.write(par.object_name(gname), bytes(obj))
    victim, raw = base["members"][lost]
    s.delete(fmt.blob_name(victim))
    idx = par.ParityIndex(s, threads=1)
    groups = idx.groups()
    assert set(groups) | set(idx.problems) == {gname}
    got = idx.rebuild(victim)
    assert got is None or got[0] == raw


# --- in a repository -----------------------------------------------------------------------


@pytest.fixture
def parity_repo(local_repo):
    """local_repo, re-created with parity 5 %."""
    import shutil

    shutil.rmtree(local_repo.url)
    master = local_repo.master
    Repository.init(LocalStorage(local_repo.url, sync=False), master, parity=0.05)
    repo = Repository.open(LocalStorage(local_repo.url, sync=False), master)
    for role in ("full", "read", "write", "audit"):
        repo.publish_cert(local_repo.keys[role].cert)
    return local_repo


def _tree(root, big=3_000_000, small=60):
    os.makedirs(root / "d", exist_ok=True)
    (root / "big.bin").write_bytes(os.urandom(big))
    for i in range(small):
        (root / "d" / f"f{i:03}").write_bytes(os.urandom(300 + 50 * i))
    return root


def _parity_objects(url):
    out = []
    for d, _, fs in os.walk(os.path.join(url, "parity")):
        out += [os.path.join(d, f) for f in fs]
    return out


def test_init_records_parity_in_the_config_of_format_2_only(tmp_path):
    s = LocalStorage(str(tmp_path / "a"), sync=False)
    Repository.init(s, Key.generate_master(), parity=0.05)
    import json

    body = json.loads(s.read("config"))["body"]
    assert body["parity"] == {"scheme": par.SCHEME, "percent": 5.0} and body["format"] == 2
    with pytest.raises(UsageError, match="format 2"):
        Repository.init(LocalStorage(str(tmp_path / "b"), sync=False), Key.generate_master(), version=1,
                        parity=0.05)
    for bad in ("0.5%", "60%", "five"):
        with pytest.raises(UsageError):
            par.parse_percent(bad)
    assert par.parse_percent(" 5 % ") == 0.05


def test_a_config_with_a_bad_parity_field_is_refused():
    from rekkord.repository import validate_config

    good = {"format": 2, "repo": "ab" * 16, "master_sign_pk": "00" * 32, "data_pk": "00" * 32,
            "log_pk": "00" * 32, "chunker": {"min": 262144, "avg": 1048576, "max": 4194304}}
    validate_config({**good, "parity": {"scheme": par.SCHEME, "percent": 5}})
    for bad in ({"scheme": par.SCHEME, "percent": 0}, {"scheme": par.SCHEME, "percent": "5"},
                {"scheme": par.SCHEME}, {"percent": 5}, "5%"):
        with pytest.raises(Exception):  # noqa: B017 (IntegrityError or UnsupportedFormat)
            validate_config({**good, "parity": bad})
    with pytest.raises(IntegrityError):
        validate_config({**good, "format": 1, "parity": {"scheme": par.SCHEME, "percent": 5}})


def test_save_writes_parity_and_check_verifies_it(parity_repo, tmp_path):
    src = _tree(tmp_path / "src")
    res = save_tree(parity_repo, [src])
    assert res.stats.parity_groups >= 1 and res.stats.parity_bytes > 0
    objs = _parity_objects(parity_repo.url)
    assert len(objs) == res.stats.parity_groups
    data = blob_roles(parity_repo, res.snapshot_id)
    covered = set()
    for p in objs:
        raw = open(p, "rb").read()  # noqa: SIM115
        g = par.parse_manifest(raw, _name(raw), size=len(raw))
        assert par.object_name(g.name).endswith(os.path.basename(p))
        covered |= {m for m, _ in g.members}
    assert set(data["data"]) | set(data["pack"]) <= covered
    r = run_check(parity_repo, "audit")
    assert r.ok and r.parity_groups == len(objs), r.problems


@pytest.mark.parametrize("how", ["delete", "flip"])
@pytest.mark.parametrize("kind", ["data", "pack"])
def test_check_rebuilds_a_lost_data_blob_from_parity_with_an_audit_key(parity_repo, tmp_path, how, kind):
    src = _tree(tmp_path / "src")
    sid = save_tree(parity_repo, [src]).snapshot_id
    victim = blob_roles(parity_repo, sid)[kind][0]
    path = blob_path(parity_repo.url, victim)
    with open(path, "rb") as f:
        before = f.read()
    if how == "delete":
        os.unlink(path)
    else:
        flip_bit(path)
    r = run_check(parity_repo, "audit", heal=False)
    [p] = r.problems
    assert p.object == fmt.blob_name(victim) and p.kind in (MISSING, DAMAGED)
    assert p.recoverable_from and p.recoverable_from.startswith("parity/") and "check --repair" in p.message
    assert r.damaged_snapshots == [] and r.degraded_snapshots == [sid] and r.parity_rebuilt == 1
    r = run_check(parity_repo, "audit", repair=True, heal=False)
    assert r.ok and len(r.repaired) == 1 and "rebuilt from parity group" in r.repaired[0]
    with open(path, "rb") as f:
        assert f.read() == before
    r = run_check(parity_repo, "read", read_data=True)
    assert r.ok, r.problems


@pytest.mark.parametrize("kind", ["data", "pack"])
def test_restore_rebuilds_a_lost_data_blob_from_parity_and_names_it_in_a_hint(parity_repo, tmp_path, kind):
    from treeutil import assert_same_tree

    from rekkord.restore import Restorer

    src = _tree(tmp_path / "src")
    sid = save_tree(parity_repo, [src]).snapshot_id
    roles = blob_roles(parity_repo, sid)
    victim = roles[kind][0]  # (one per group: m = 1 parity column rebuilds one member per row)
    if kind == "data":
        os.unlink(blob_path(parity_repo.url, victim))
    else:
        flip_bit(blob_path(parity_repo.url, victim))
    repo = parity_repo.repo("read")
    said = []
    repo.notice = said.append
    st = Restorer(repo, repo.load_snapshot(sid)).restore(None, str(tmp_path / "out"))
    assert st.damaged == 0
    assert_same_tree(src, tmp_path / "out" / os.path.relpath(src, "/"))
    assert len(said) == 1 and "rebuilt it from parity group" in said[0] and victim.hex() in said[0]
    assert st.repair_hint and repo.degraded == {victim}


def test_a_damaged_parity_group_is_reported_and_repair_gives_its_blobs_parity_again(parity_repo, tmp_path):
    src = _tree(tmp_path / "src")
    save_tree(parity_repo, [src])
    [obj] = _parity_objects(parity_repo.url)
    flip_bit(obj, os.path.getsize(obj) - 10)  # in the parity columns: the manifest still reads
    r = run_check(parity_repo, "audit", heal=False)
    [p] = r.problems
    assert p.what == "parity group" and p.kind == DAMAGED and "hash to its name" in p.message
    assert any("have no parity group" in n for n in r.notes)
    r = run_check(parity_repo, "audit", repair=True, heal=False)
    assert any("new parity groups" in x for x in r.repaired)
    with open(obj, "rb") as f:
        rewritten = blake3.blake3(f.read()).hexdigest() == os.path.basename(obj)
    if not rewritten:  # (a group of the same members in the save's order has the damaged one's name: rewritten)
        os.unlink(obj)
    r = run_check(parity_repo, "audit")
    assert r.ok and not any("no parity" in n for n in r.notes), (r.problems, r.notes)


def test_an_unexpected_name_under_parity_is_reported(parity_repo, tmp_path):
    save_tree(parity_repo, [_tree(tmp_path / "src", small=2)])
    os.makedirs(os.path.join(parity_repo.url, "parity", "zz"), exist_ok=True)
    with open(os.path.join(parity_repo.url, "parity", "zz", "planted"), "wb") as f:
        f.write(b"x")
    r = run_check(parity_repo, "audit")
    [p] = r.problems
    assert p.object == "parity/zz/planted" and "not a parity group name" in p.message


def test_a_repository_without_parity_writes_none(local_repo, tmp_path):
    res = save_tree(local_repo, [_tree(tmp_path / "src", small=2)])
    assert res.stats.parity_groups == 0 and not _parity_objects(local_repo.url)


def test_prune_deletes_groups_whose_members_are_all_gone(parity_repo, tmp_path):
    from rekkord.forget import forget
    from rekkord.gc import prune

    a = save_tree(parity_repo, [_tree(tmp_path / "a")], channel="a").snapshot_id
    before = set(_parity_objects(parity_repo.url))
    b = save_tree(parity_repo, [_tree(tmp_path / "b")], channel="b").snapshot_id
    mine_b = set(_parity_objects(parity_repo.url)) - before
    assert before and mine_b
    forget(parity_repo.repo("audit"), ids=[a])
    rep = prune(parity_repo.repo("audit"), dry_run=True)
    assert rep.parity_deleted == 0  # (the blobs are not gone yet)
    rep = prune(parity_repo.repo("audit"))
    assert rep.deleted > 0 and rep.parity_deleted == len(before)
    assert set(_parity_objects(parity_repo.url)) == mine_b
    r = run_check(parity_repo, "audit")
    assert r.ok and r.snapshots == 1, r.problems
    assert b


def test_the_cli_creates_a_repository_with_parity(run_cli, tmp_path):
    repo, key = tmp_path / "r", tmp_path / "k"
    env = {"REKKORD_PASSPHRASE": ""}
    p = run_cli("-r", repo, "-k", key, "init", "--parity", "5%", env=env, check=0)
    assert b"parity 5%" in p.stdout
    p = run_cli("-r", tmp_path / "r1", "-k", tmp_path / "k1", "init", "--format", "1", "--parity", "5%",
                env=env)
    assert p.returncode == 2 and b"format 2" in p.stderr
    src = _tree(tmp_path / "src", big=600_000, small=3)
    run_cli("-r", repo, "-k", key, "save", "c", src, env=env, check=0)
    assert _parity_objects(str(repo))
    run_cli("-r", repo, "-k", key, "check", env=env, check=0)


def test_limits_are_within_struct_ranges():
    assert par.MAX_STRIPE * 1 <= 2**32 and par.MAX_MEMBERS < 2**32
    assert struct.calcsize("<4sBBBBIIII") == par.HEAD.size

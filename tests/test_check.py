"""rekkord.check on real local repositories: levels, subsets remembered in
the cache, problems naming objects/snapshots/paths, healing through repair
hints, revoked keys, snapshot records that vanish or reappear, storage
errors, and the index reader that survives a damaged index blob."""

import json
import os
import shutil
from pathlib import Path

import pytest

from faulty_storage import (
    Fault,
    FaultyStorage,
    blob_path,
    blob_roles,
    copy_to,
    flip_bit,
    run_check,
    save_tree,
)
from rekkord import format as fmt
from rekkord.cache import Cache, cache_path
from rekkord.check import (
    DAMAGED,
    INCOMPLETE_GRAPH,
    MISSING,
    REPLAYED,
    UNEXPECTED,
    UNTRUSTED,
    UNVERIFIED,
    Checker,
    parse_subset,
)
from rekkord.errors import ExitCode, PermissionDenied, UsageError
from rekkord.index import F_CHANGED, K_DIR, K_FILE, Entry, Extent, encode
from rekkord.restore import Restorer
from rekkord.snapshot import F_IMPLICIT, iter_entries
from rekkord.storage.local import LocalStorage
from craft import data_extent, store, tampered
from treeutil import assert_same_tree


def make_tree(root, *, files=40, big=1_500_000):
    os.makedirs(root / "docs" / "sub", exist_ok=True)
    with open(root / "big.bin", "wb") as f:
        f.write(os.urandom(big))
    for i in range(files):
        d = root / "docs" / ("sub" if i % 3 else "")
        with open(d / f"note-{i:03}.txt", "wb") as f:
            f.write(os.urandom(200 + 97 * i))
    return root


@pytest.fixture
def saved(local_repo, tmp_path):
    src = make_tree(tmp_path / "src")
    res = save_tree(local_repo, [src])
    return src, res.snapshot_id


def n_blob_files(url):
    return sum(len(fs) for _, _, fs in os.walk(os.path.join(url, "blobs")))


# --- levels and roles -----------------------------------------------------------


def test_clean_repository_passes_at_every_level_with_every_checking_key(local_repo, saved):
    total = n_blob_files(local_repo.url)
    for role in ("audit", "read", "full", "admin"):
        r = run_check(local_repo, role)
        assert r.ok and r.status == "clean" and r.exit_code == 0, r.problems
        assert (r.level, r.snapshots, r.blobs_referenced, r.blobs_checked) == ("structure", 1, total, total)
        assert r.blobs_read == total and r.orphans == 0 and r.blobs_decrypted == 0
    r = run_check(local_repo, "read", read_data=True)
    assert r.ok and r.level == "read-data"
    reflists = len(blob_roles(local_repo, saved[1])["reflist_all"])
    assert r.blobs_decrypted == total - reflists  # reference lists were opened by the walk
    r = run_check(local_repo, "audit", subset="100%")
    assert r.ok and r.level == "subset" and r.blobs_decrypted == 0  # an audit key only MACs


def test_who_may_check(local_repo, saved):
    with pytest.raises(PermissionDenied, match="write key cannot check"):
        Checker(local_repo.repo("write"))
    with pytest.raises(PermissionDenied, match="audit key cannot decrypt"):
        Checker(local_repo.repo("audit"), read_data=True)


def test_parse_subset():
    assert parse_subset("10%") == ("fraction", 0.1)
    assert parse_subset(" 2.5% ") == ("fraction", 0.025)
    assert parse_subset("500M") == ("bytes", 500e6)
    assert parse_subset("2GiB") == ("bytes", 2 * 2**30)
    assert parse_subset("4096") == ("bytes", 4096)
    assert parse_subset(None) is None
    for bad in ("abc", "150%", "-5%", "%", "M"):
        with pytest.raises(UsageError, match="read-data-subset"):
            parse_subset(bad)


def test_subsets_differ_between_runs_and_cover_everything_over_time(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):  # 12 large files: at least 12 data blobs
        with open(src / f"f{i}", "wb") as f:
            f.write(os.urandom(300_000))
    save_tree(local_repo, [src])
    repo = local_repo.repo("read")
    cache = Cache(cache_path(local_repo.cache_dir, repo.id, "check-read"))
    seen = []
    try:
        for _ in range(4):
            r = Checker(repo, cache, subset="25%").run()
            assert r.ok and r.level == "subset"
            chosen = {bid for bid in _verified(cache)} - set().union(*seen) if seen else set(_verified(cache))
            seen.append(chosen)
        # Each run verified new blobs, never one verified by an earlier run, and
        # together they cover every blob the walk did not already open.
        assert all(seen)
        assert len(set().union(*seen)) == sum(len(s) for s in seen)
        everything = {fmt.blob_id_from_name(f"blobs/{d}/{f}") for d in os.listdir(os.path.join(local_repo.url,
                                                                                              "blobs"))
                      for f in os.listdir(os.path.join(local_repo.url, "blobs", d))}
        assert set(_verified(cache)) == everything
        # A size budget reads about that many bytes.
        r = Checker(repo, cache, subset="700K").run()
        assert 0 < r.bytes_read - _reflist_bytes(local_repo) <= 700_000
    finally:
        cache.close()


def _verified(cache):
    # (what check marked may still be buffered: a commit that met a busy
    # database, on a loaded machine, leaves it for the next one)
    assert cache.commit()
    return [r[0] for r in cache.db.execute("SELECT id FROM verified")]


def _reflist_bytes(local_repo):
    repo = local_repo.repo("audit")
    return sum(s for snap in repo.snapshots() for _, s in snap.reflist)


# --- problems name objects, snapshots, and paths only for keys that read names --------


def test_a_missing_blob_names_snapshots_always_and_paths_only_for_keys_that_read_names(local_repo, saved):
    src, sid = saved
    roles = blob_roles(local_repo, sid)
    victim = roles["files"][f"{src}/big.bin"][0]
    os.unlink(blob_path(local_repo.url, victim))
    sid2 = save_tree(local_repo, [src / "docs"], cache_name="other").snapshot_id  # does not use big.bin
    a = run_check(local_repo, "audit", heal=False)
    assert a.status == "damaged" and a.exit_code == ExitCode.DAMAGED
    [p] = a.problems
    assert (p.object, p.what, p.kind, p.snapshots, p.paths) == (fmt.blob_name(victim), "data blob", MISSING,
                                                                [sid], [])
    assert a.damaged_snapshots == [sid] and sid2 not in a.damaged_snapshots
    assert "big.bin" not in json.dumps(a.to_json())  # an audit key never sees names
    r = run_check(local_repo, "read", heal=False)
    [p] = r.problems
    assert p.paths == [f"{src}/big.bin"]
    # A damaged pack names every small file in it.
    pack = roles["pack"][0]
    flip_bit(blob_path(local_repo.url, pack))
    r = run_check(local_repo, "full", heal=False)
    p = next(p for p in r.problems if p.object == fmt.blob_name(pack))
    assert p.kind == DAMAGED and tampered(p.message)
    users = sorted(f for f, ids in roles["files"].items() if pack in ids)
    assert len(users) > 10 and sorted(p.paths) == users


def test_unexpected_objects_and_forged_orphans_are_reported_valid_orphans_are_not(local_repo, saved):
    src, sid = saved
    url = local_repo.url
    roles = blob_roles(local_repo, sid)
    copy_to(os.path.join(url, "config"), os.path.join(url, "config.bak"))
    copy_to(os.path.join(url, "config"), os.path.join(url, "stray", "thing"))
    copy_to(blob_path(url, roles["data"][0]), os.path.join(url, "blobs", "ab", "not-a-blob-name"))
    fake = bytes.fromhex("ab" * 32)
    copy_to(blob_path(url, roles["data"][0]), blob_path(url, fake))  # a copy under another id
    # A valid blob nothing references (what an interrupted save leaves): fine.
    store(local_repo.repo("write"), fmt.T_DATA, b"left by an interrupted save")
    r = run_check(local_repo, "audit")
    by = {p.object: p for p in r.problems}
    assert set(by) == {"config.bak", "stray/thing", "blobs/ab/not-a-blob-name", fmt.blob_name(fake)}
    assert all(by[n].kind == UNEXPECTED for n in ("config.bak", "stray/thing", "blobs/ab/not-a-blob-name"))
    assert by[fmt.blob_name(fake)].kind == DAMAGED and "nothing references it" in by[fmt.blob_name(fake)].message
    assert r.orphans == 2 and r.damaged_snapshots == [] and r.status == "damaged"
    assert r.repair_hint is None  # nothing referenced is damaged


def test_storage_errors_make_the_check_incomplete_not_damaged(local_repo, saved):
    storage = FaultyStorage(LocalStorage(local_repo.url), [Fault("read", "error", match="blobs/", after=1,
                                                                 times=2)])
    r = run_check(local_repo, "audit", storage=storage)
    assert r.status == "incomplete" and r.exit_code == ExitCode.STORAGE
    assert len(r.problems) == 2 and all(p.kind == UNVERIFIED and "injected failure" in p.message
                                        and p.snapshots == [saved[1]] for p in r.problems)
    assert r.repair_hint is None
    assert not os.path.isdir(os.path.join(local_repo.url, "repairs"))


@pytest.mark.repo_format(1)
def test_read_data_catches_damage_only_decryption_sees(local_repo, saved):
    """A blob whose MAC is valid but whose content does not match its id
    (written by a buggy or malicious key holder) passes the audit level and
    fails --read-data."""
    src, sid = saved
    roles = blob_roles(local_repo, sid)
    victim = roles["data"][0]
    path = blob_path(local_repo.url, victim)
    size = os.path.getsize(path)
    repo = local_repo.repo("full")
    # Other (random, like the original) content of the same length, sealed
    # under the victim's id by a key holder: same stored size, valid MAC.
    raw = repo.codec.seal(fmt.T_DATA, victim, os.urandom(len(repo.read_blob(victim))))
    assert len(raw) == size
    os.unlink(path)
    repo.storage.write(fmt.blob_name(victim), raw)
    assert run_check(local_repo, "audit").ok
    r = run_check(local_repo, "read", read_data=True)
    [p] = r.problems
    assert p.object == fmt.blob_name(victim) and "does not match its id" in p.message
    assert p.paths == [f"{src}/big.bin"]


@pytest.mark.repo_format(2)
def test_read_data_catches_an_index_pointing_at_content_other_than_its_key_says(local_repo):
    """Format v2: a key holder seals other content with the key of a pid
    its index claims.  The bytes hash to their name (an audit check, which
    proves integrity without a key, passes: the snapshot is the crafter's own
    and restores what it says); --read-data decrypts and finds the lie."""
    from rekkord import crypto
    from rekkord.format_v2 import BLOB_MAGIC_V2, SEAL_CONVERGENT, name_of

    repo = local_repo.repo("full")
    claimed = repo.codec.plain_id(fmt.T_DATA, b"what the index says")
    header = BLOB_MAGIC_V2 + bytes([fmt.T_DATA, SEAL_CONVERGENT, 0, 0]) + bytes(32) + os.urandom(24)
    raw = header + crypto.aead_encrypt(crypto.keyed_hash(repo.codec._conv, claimed), header[40:64],
                                       repo.codec._inner(b"something else"), header)
    repo.storage.write(fmt.blob_name(name_of(raw)), raw)
    crafted_snapshot(local_repo, [Entry(K_FILE, b"f", mode=0o644, size=14,
                                        extents=[Extent(name_of(raw), 0, 14, claimed)])])
    assert run_check(local_repo, "audit").ok
    r = run_check(local_repo, "read", read_data=True)
    [p] = r.problems
    assert p.object == fmt.blob_name(name_of(raw)) and "does not match its plaintext id" in p.message


# --- healing ---------------------------------------------------------------------------


def test_check_with_an_audit_key_makes_the_write_keys_next_save_heal(local_repo, saved, tmp_path):
    src, sid = saved
    url = local_repo.url
    roles = blob_roles(local_repo, sid)
    big = roles["files"][f"{src}/big.bin"][0]
    pack = roles["pack"][0]
    os.unlink(blob_path(url, big))
    flip_bit(blob_path(url, pack))
    r = run_check(local_repo, "audit")
    assert r.damaged_snapshots == [sid] and r.repair_hint and r.repair_hint.startswith("repairs/")
    # The hint is MACed: the storage cannot read more than ids, nor forge one.
    hint = json.loads(open(os.path.join(url, *r.repair_hint.split("/"))).read())
    assert sorted(hint["body"]["ids"]) == sorted([big.hex(), pack.hex()])
    # A second check does not publish the same ids again.
    assert run_check(local_repo, "audit").repair_hint is None
    # The write key's next save (its own cache believes everything is stored)
    # uploads the missing blob and replaces the damaged one, and reads only
    # the files that used them.
    res = save_tree(local_repo, [src])
    assert res.stats.blobs_repaired == 2 and res.stats.blobs_new >= 2  # both named by the hint
    assert res.stats.bytes_read < os.path.getsize(src / "big.bin") + 200_000
    r = run_check(local_repo, "audit")
    assert r.ok and r.healed_snapshots == [sid] and r.repairs_removed == 1
    assert not os.listdir(os.path.join(url, "repairs"))
    # The old snapshot restores whole again.
    repo = local_repo.repo("read")
    Restorer(repo, repo.load_snapshot(sid)).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")


def test_a_snapshot_stays_damaged_when_its_data_no_longer_exists(local_repo, saved):
    src, sid = saved
    roles = blob_roles(local_repo, sid)
    victim = roles["files"][f"{src}/big.bin"][0]
    os.unlink(blob_path(local_repo.url, victim))
    assert run_check(local_repo, "audit").repair_hint
    os.unlink(src / "big.bin")  # the data is gone from the machine too
    sid2 = save_tree(local_repo, [src]).snapshot_id
    r = run_check(local_repo, "audit")
    assert r.damaged_snapshots == [sid] and r.healed_snapshots == []
    assert r.repair_hint is None and len(os.listdir(os.path.join(local_repo.url, "repairs"))) == 1
    assert sid2 not in r.damaged_snapshots


def test_a_forged_repair_hint_is_reported_and_ignored_by_savers(local_repo, saved):
    src, sid = saved
    url = local_repo.url
    os.makedirs(os.path.join(url, "repairs"))
    body = {"v": 1, "repo": local_repo.master.repo, "time_ns": 1, "kid": "x",
            "ids": [b.hex() for b in blob_roles(local_repo, sid)["data"]]}
    with open(os.path.join(url, "repairs", "forged"), "w") as f:
        json.dump({"body": body, "mac": "00" * 32}, f)
    r = run_check(local_repo, "audit")
    [p] = r.problems
    assert (p.object, p.what) == ("repairs/forged", "repair hint") and "forged" in p.message
    res = save_tree(local_repo, [src])
    assert res.stats.bytes_read == 0 and res.stats.blobs_repaired == 0


# --- snapshot records: revocation, vanishing, reappearing ---------------------------------------


def test_snapshots_signed_by_a_revoked_key_after_its_revocation_are_flagged(local_repo, tmp_path):
    src = make_tree(tmp_path / "src", files=3, big=1000)
    before = save_tree(local_repo, [src]).snapshot_id
    assert run_check(local_repo, "audit").ok  # the check cache now remembers `before`
    admin = local_repo.repo("admin")
    rev = admin.revoke(local_repo.keys["write"].kid)
    after = save_tree(local_repo, [src]).snapshot_id
    r = run_check(local_repo, "audit")
    assert r.damaged_snapshots == [after]
    # A stolen key backdating its record to before the revocation: the record
    # claims an earlier time, but the previous check (after the revocation) did
    # not see it.
    backdated = save_tree(local_repo, [src], time_ns=rev["time_ns"] - 10**9).snapshot_id
    r = run_check(local_repo, "audit")
    by = {p.object: p for p in r.problems}
    assert set(by) == {f"snapshots/{after}", f"snapshots/{backdated}"}
    assert by[f"snapshots/{after}"].kind == UNTRUSTED
    assert "after it was revoked" in by[f"snapshots/{after}"].message
    assert "backdated" in by[f"snapshots/{backdated}"].message
    assert before not in r.damaged_snapshots and set(r.damaged_snapshots) == {after, backdated}


def test_records_deleted_without_the_forget_log_or_reappearing_are_flagged(local_repo, tmp_path):
    from rekkord.forget import forget

    src = make_tree(tmp_path / "src", files=3, big=1000)
    s1 = save_tree(local_repo, [src]).snapshot_id
    s2 = save_tree(local_repo, [src]).snapshot_id
    s3 = save_tree(local_repo, [src]).snapshot_id
    assert run_check(local_repo, "audit").ok  # the check cache remembers the three
    # Forgotten with an audit key: signed in the forget log, not damage.
    forget(local_repo.repo("audit"), ids=[s3])
    r = run_check(local_repo, "audit")
    assert r.ok and r.vanished_snapshots == [s3]
    # Deleted by someone holding only the storage: damage, named.
    rec = os.path.join(local_repo.url, "snapshots", s2)
    shutil.move(rec, tmp_path / "kept")
    r = run_check(local_repo, "audit")
    [p] = r.problems
    assert (p.object, p.what, p.kind, p.snapshots) == (f"snapshots/{s2}", "snapshot record", MISSING, [s2])
    assert "without a forget log entry" in p.message and r.vanished_snapshots == [s2]
    assert run_check(local_repo, "audit").ok  # reported once: the cache now knows it is gone
    # The storage puts the old record back: a replay.
    shutil.move(tmp_path / "kept", rec)
    r = run_check(local_repo, "audit")
    [p] = r.problems
    assert (p.object, p.kind, p.snapshots) == (f"snapshots/{s2}", REPLAYED, [s2])
    assert s1 not in r.damaged_snapshots


def test_a_snapshot_forgotten_during_the_check_is_not_damage(local_repo, tmp_path):
    src = make_tree(tmp_path / "src", files=3)
    keep = save_tree(local_repo, [src / "docs"]).snapshot_id
    gone = save_tree(local_repo, [src]).snapshot_id
    only_gone = blob_roles(local_repo, gone)["files"][f"{src}/big.bin"]

    class ForgetDuringCheck(FaultyStorage):
        done = False

        def read(self, name, offset=0, length=None):
            if name.startswith("blobs/") and not self.done:  # after the records were read
                self.done = True
                self.inner.delete(f"snapshots/{gone}")
                for b in only_gone:
                    self.inner.delete(fmt.blob_name(b))
            return super().read(name, offset, length)

    r = run_check(local_repo, "audit", storage=ForgetDuringCheck(LocalStorage(local_repo.url)))
    assert r.ok, [str(p) for p in r.problems]
    assert run_check(local_repo, "audit").ok and keep


# --- the index graph and flags (keys that read) --------------------------------------------------


def crafted_snapshot(local_repo, entries, *, omit_from_reflist=(), pieces=1, channel="crafted"):
    """Write an index of ``entries`` cut in ``pieces`` blobs and a record, with the full key."""
    repo = local_repo.repo("full")
    stream = b"".join(repo.index.encode(e) for e in entries)
    step = -(-len(stream) // pieces)
    index = []
    for i in range(0, len(stream), step):
        bid, size, _ = store(repo, fmt.T_INDEX, stream[i:i + step])
        index.append([bid.hex(), size])
    refs = []
    for e in entries:
        for x in e.extents:
            if x.blob not in omit_from_reflist and x.blob not in [r[0] for r in refs]:
                refs.append((x.blob, repo.storage.stat(fmt.blob_name(x.blob))))
    rid, size, _ = store(repo, fmt.T_REFLIST, fmt.pack_reflist(refs))
    return repo.write_snapshot({"channel": channel, "time_ns": 10**18, "host": "h", "index": index,
                                "reflist": [[rid.hex(), size]]})


def data_blob(local_repo, data: bytes) -> Extent:
    return data_extent(local_repo.repo("full"), data)


def test_read_data_proves_every_file_blob_is_in_the_reference_list(local_repo):
    a, b = data_blob(local_repo, b"a" * 100), data_blob(local_repo, b"b" * 100)
    entries = [Entry(K_DIR, b"d", mode=0o755), Entry(K_FILE, b"d/a", mode=0o644, size=100, extents=[a]),
               Entry(K_FILE, b"d/b", mode=0o644, size=100, extents=[b])]
    b = b.blob
    sid = crafted_snapshot(local_repo, entries, omit_from_reflist=[b])
    assert run_check(local_repo, "audit").orphans == 1  # what an audit key can see: b looks unused
    r = run_check(local_repo, "read", read_data=True)
    [p] = r.problems
    assert (p.object, p.kind, p.snapshots, p.paths) == (fmt.blob_name(b), INCOMPLETE_GRAPH, [sid], ["/d/b"])
    assert "prune would not see it" in p.message


def test_files_recorded_as_changed_while_read_are_noted_for_keys_that_read(local_repo):
    a = data_blob(local_repo, b"x" * 10)
    sid = crafted_snapshot(local_repo, [Entry(K_FILE, b"log", mode=0o644, size=10, flags=F_CHANGED,
                                              extents=[a])])
    r = run_check(local_repo, "read", read_data=True)
    assert r.ok and any(f"snapshot {sid[:8]}" in n and "changed while they were read" in n and "/log" in n
                        for n in r.notes)
    assert not any("/log" in n for n in run_check(local_repo, "audit").notes)


def many_entries(n):
    out = [Entry(K_DIR, b"top", mode=0o755)]
    for i in range(n):
        out.append(Entry(K_FILE, b"top/file-%06d-%s" % (i, b"x" * (i % 50)), mode=0o644, mtime_ns=i))
    return out


@pytest.mark.parametrize("damaged", [[0], [3], [3, 4], [7]])
def test_the_salvaging_reader_resumes_after_a_damaged_index_blob(local_repo, damaged):
    entries = many_entries(3000)
    sid = crafted_snapshot(local_repo, entries, pieces=8)
    repo = local_repo.repo("read")
    snap = repo.load_snapshot(sid)
    assert len(snap.index) == 8
    for k in damaged:
        if k == 3:
            os.unlink(blob_path(local_repo.url, snap.index[k][0]))
        else:
            flip_bit(blob_path(local_repo.url, snap.index[k][0]))
    losses = []
    got = [e.path for e in iter_entries(repo, snap, on_damage=lambda *a: losses.append(a))
           if not e.flags & F_IMPLICIT]
    want = [e.path for e in entries]
    [(blobs, before, after)] = losses
    assert [b for b, _ in blobs] == [snap.index[k][0] for k in damaged]
    assert all(("missing" in m) or tampered(m) for _, m in blobs)
    # Only records that touched a damaged blob are lost, in one contiguous run.
    assert set(got) <= set(want) and got == sorted(got, key=want.index)
    lost = [p for p in want if p not in set(got)]
    i0, i1 = want.index(lost[0]), want.index(lost[-1])
    assert lost == want[i0:i1 + 1]  # one contiguous run
    assert before == (want[i0 - 1] if i0 else None) and after == (want[i1 + 1] if i1 + 1 < len(want) else None)
    stream = b"".join(encode(e) for e in entries)
    piece = -(-len(stream) // 8)
    assert len(lost) < (len(damaged) + 1) * piece / 60  # about the records in the damaged blobs


def test_the_salvaging_reader_equals_the_plain_one_on_an_intact_index(local_repo, saved):
    repo = local_repo.repo("read")
    snap = repo.load_snapshot(saved[1])
    assert [e.path for e in iter_entries(repo, snap, on_damage=lambda *a: pytest.fail(str(a)))] == \
        [e.path for e in iter_entries(repo, snap)]


def test_a_forgotten_record_that_comes_back_is_a_replay(local_repo, tmp_path, monkeypatch):
    import time as _time

    from rekkord.forget import forget

    src = make_tree(tmp_path / "src", files=2, big=1000)
    sid = save_tree(local_repo, [src]).snapshot_id
    rec = os.path.join(local_repo.url, "snapshots", sid)
    kept = open(rec, "rb").read()
    forget(local_repo.repo("audit"), ids=[sid])
    assert not os.path.exists(rec)
    open(rec, "wb").write(kept)  # the storage restores the record it was told to delete
    r = run_check(local_repo, "audit")
    assert r.ok and any("being forgotten" in n for n in r.notes)  # a forget may still be running
    # Two hours later by the storage's clock (the entry's modification time),
    # whatever this machine's clock says.
    [entry] = os.listdir(os.path.join(local_repo.url, "gc", "forgotten"))
    t = _time.time() - 7200
    os.utime(os.path.join(local_repo.url, "gc", "forgotten", entry), (t, t))
    r = run_check(local_repo, "audit")
    [p] = r.problems
    assert (p.object, p.kind) == (f"snapshots/{sid}", REPLAYED) and "forget log gc/forgotten/" in p.message


def test_a_record_being_forgotten_by_a_machine_days_behind_is_no_replay(local_repo, tmp_path, monkeypatch):
    """The forget log entry's own time is the forgetting machine's clock: 3
    days behind, a check beside that forget would take the records not yet
    deleted for replays.  The entry's time on the storage decides."""
    import time as _time

    from rekkord.forget import forget

    src = make_tree(tmp_path / "src", files=2, big=1000)
    sid = save_tree(local_repo, [src]).snapshot_id
    rec = Path(local_repo.url) / "snapshots" / sid
    kept = rec.read_bytes()
    real = _time.time_ns
    monkeypatch.setattr("rekkord.forget.time.time_ns", lambda: real() - 3 * 86400 * 10**9)
    forget(local_repo.repo("audit"), ids=[sid])
    rec.write_bytes(kept)  # (as if the forget had not deleted it yet)
    r = run_check(local_repo, "audit")
    assert r.ok and any("being forgotten" in n for n in r.notes), [str(p) for p in r.problems]


def test_a_save_finishing_while_check_lists_is_not_damage(local_repo, tmp_path):
    """The storage lists blobs/ before snapshots/ (S3, SFTP): a save that
    finishes in between shows a record whose blobs the listing missed.
    Check looks for them once more before it calls them missing."""
    from rekkord.repository import Repository

    src = tmp_path / "src"
    write_tree_for_check(src)
    save_tree(local_repo, [src])
    base = LocalStorage(local_repo.url)
    before = list(base.list("blobs/"))
    (src / "new.bin").write_bytes(os.urandom(300_000))
    save_tree(local_repo, [src])  # finishes "during" the check's listing

    class Racing(LocalStorage):
        def list(self, prefix=""):
            if prefix == "":
                yield from before
                yield from (x for x in super().list("") if not x[0].startswith("blobs/"))
            else:
                yield from super().list(prefix)

    audit = local_repo.repo("audit")
    r = Checker(Repository(Racing(local_repo.url), audit.config, audit.key), Cache(None), heal=True).run()
    assert r.ok, [str(p) for p in r.problems]
    assert r.repair_hint is None


def write_tree_for_check(src):
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(2000 + i))


# --- format v2: two copies of every index blob and reference list ---------------------------------


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _damage(url, bid, how):
    if how == "delete":
        os.unlink(blob_path(url, bid))
    else:
        flip_bit(blob_path(url, bid))


@pytest.mark.parametrize("what", ["index", "reflist"])
@pytest.mark.parametrize("how", ["delete", "flip"])
@pytest.mark.parametrize("which", [0, 1])
def test_one_damaged_copy_loses_nothing_and_check_repair_writes_it_again(local_repo, saved, tmp_path, what, how,
                                                                           which):
    """Issue 12 item 6: one bad index blob or reference list must not cost a
    snapshot.  Either copy may be the damaged one; restore reads the other,
    check names the damaged copy (and its intact sibling), counts the
    snapshot degraded, not damaged, and check --repair makes the exact bytes
    again (a reference list with an audit key, an index blob with a read key)."""
    src, sid = saved
    roles = blob_roles(local_repo, sid)
    group = roles["copies"][roles[what][0]]
    assert len(group) == 2 and group[0] != group[1]
    bad, good = group[which], group[1 - which]
    before = _read(blob_path(local_repo.url, bad))
    _damage(local_repo.url, bad, how)

    # restore with a read key: every file, the same tree, and a notice naming the copy.
    repo = local_repo.repo("read")
    restorer = Restorer(repo, repo.load_snapshot(sid))
    st = restorer.restore(None, str(tmp_path / "out"))
    assert st.damaged == 0
    assert_same_tree(src, tmp_path / "out" / os.path.relpath(src, "/"))
    notices = [m for _, m in restorer.problems]
    if which == 0:  # (a damaged second copy is never read)
        assert any(bad.hex() in n and good.hex() in n and "nothing is lost" in n for n in notices), notices
    else:
        assert not notices

    # check (audit and read) names the damaged copy, its intact sibling, and no damaged snapshot.
    for role in ("audit", "read"):
        r = run_check(local_repo, role, heal=False)
        [p] = r.problems
        assert p.object == fmt.blob_name(bad) and p.kind in (MISSING, DAMAGED)
        assert p.recoverable_from == fmt.blob_name(good) and "check --repair" in p.message
        assert r.damaged_snapshots == [] and r.degraded_snapshots == [sid]

    # check --repair: a reference list with an audit key; an index blob needs the data key.
    if what == "index":
        r = run_check(local_repo, "audit", repair=True, heal=False)
        [p] = r.problems
        assert "read, full or master key" in p.message and not r.repaired
        assert not os.path.exists(blob_path(local_repo.url, bad)) or \
            _read(blob_path(local_repo.url, bad)) != before
    r = run_check(local_repo, "audit" if what == "reflist" else "read", repair=True, heal=False)
    assert r.ok and r.degraded_snapshots == [] and len(r.repaired) == 1 and fmt.blob_name(bad) in r.repaired[0]
    assert _read(blob_path(local_repo.url, bad)) == before  # the exact bytes, under their name
    r = run_check(local_repo, "audit")
    assert r.ok and r.status == "clean"


def test_both_copies_damaged_is_damage_and_repair_cannot_help(local_repo, saved):
    _src, sid = saved
    roles = blob_roles(local_repo, sid)
    a, b = roles["copies"][roles["reflist"][0]]
    _damage(local_repo.url, a, "delete")
    _damage(local_repo.url, b, "flip")
    r = run_check(local_repo, "read", repair=True, heal=False)
    assert {p.object for p in r.problems} == {fmt.blob_name(a), fmt.blob_name(b)}
    assert all(p.recoverable_from is None for p in r.problems)
    assert r.damaged_snapshots == [sid] and not r.repaired


def test_a_copy_is_made_again_exactly_from_its_sibling_and_only_from_it(local_repo, saved):
    """rebuild_copy gives the exact bytes of the other copy (either way
    round) from an intact one, refuses a damaged one, and a separate sealing
    of the same plaintext is no sibling (check --repair compares the result
    with the name the record gives, so it never writes those)."""
    from rekkord.errors import IntegrityError
    from rekkord.format_v2 import name_of

    _src, sid = saved
    roles = blob_roles(local_repo, sid)
    repo = local_repo.repo("full")
    for what in ("index", "reflist"):
        first, second = roles["copies"][roles[what][0]]
        raw0 = _read(blob_path(local_repo.url, first))
        raw1 = _read(blob_path(local_repo.url, second))
        assert bytes(repo.codec.rebuild_copy(first, raw0, 1)) == raw1
        assert bytes(repo.codec.rebuild_copy(second, raw1, 0)) == raw0
        bad = bytearray(raw0)
        bad[100] ^= 1
        with pytest.raises(IntegrityError):
            repo.codec.rebuild_copy(first, bytes(bad), 1)
        btype = fmt.T_INDEX if what == "index" else fmt.T_REFLIST
        [(n0, other0), (n1, _)] = repo.codec.seal_copies(btype, repo.read_blob(first, btype), 2)
        assert {n0, n1}.isdisjoint({first, second})
        assert name_of(repo.codec.rebuild_copy(n0, bytes(other0), 1)) == n1 != second

"""The security properties P1–P5 of DESIGN.md §3, each shown by tests that
fail if the property breaks (docs/security.md maps each to its tests).

P1 a write key cannot decrypt any blob, name or snapshot record, nor list snapshots;
P2 someone holding only the storage (and the public keys in it) cannot make a
   blob or snapshot that check or restore accepts;
P3 a flipped bit, truncation, deletion or swap of stored objects is detected by
   check with an audit key and by restore with a read key;
P4 an audit key verifies the whole repository but cannot recover file content or names;
P5 key files can be passphrase-protected; a wrong passphrase gives a clear error.
"""

import json
import os
import shutil
import socket

import pytest

from rekkord import crypto, format as fmt, keys as keymod
from rekkord.cache import Cache
from rekkord.check import Checker
from rekkord.errors import IntegrityError, PermissionDenied, RekkordError
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.restore import Restorer
from rekkord.save import Saver
from rekkord.snapshot import iter_entries

NAMES = ["patient-zyxwv-record.txt", "confidential-qwerty-dir", "élève-ñame-ø.txt", "tiny-secret-marker",
         "big-random-marker.bin"]
CONTENTS = [b"MARKER-CONTENT-small-4711", b"MARKER-CONTENT-text-0815", b"MARKER-CONTENT-big-1337",
            b"xattr-secret-value-8642", b"/secret/target-path-qpwoe"]


def make_secret_tree(root):
    d = root / "confidential-qwerty-dir"
    d.mkdir(parents=True)
    (root / "patient-zyxwv-record.txt").write_bytes(b"Name: Jane Doe\n" + CONTENTS[0])
    (d / "élève-ñame-ø.txt").write_bytes((CONTENTS[1] + b" blah blah\n") * 5000)  # compressible
    (d / "tiny-secret-marker").write_bytes(CONTENTS[0][:20])
    r = os.urandom(1 << 20)
    (root / "big-random-marker.bin").write_bytes(r[:500_000] + CONTENTS[2] + r[500_000:])  # stored raw
    os.symlink(CONTENTS[4], root / "link")
    os.setxattr(root / "patient-zyxwv-record.txt", "user.note", CONTENTS[3])


def all_stored_bytes(url) -> dict[str, bytes]:
    out = {}
    for dp, _, fs in os.walk(url):
        for f in fs:
            p = os.path.join(dp, f)
            out[os.path.relpath(p, url)] = open(p, "rb").read()
    return out


def blobs_by_type(url) -> dict[int, list[tuple[bytes, bytes]]]:
    """type -> [(blob id, raw bytes)] (the type byte is in the clear header)."""
    out: dict[int, list] = {}
    for name, raw in all_stored_bytes(url).items():
        bid = fmt.blob_id_from_name(name)
        if bid is not None:
            out.setdefault(raw[4], []).append((bid, raw))
    return out


@pytest.fixture
def saved(local_repo, tmp_path):
    """A secret tree saved with the write key only."""
    src = tmp_path / "src"
    make_secret_tree(src)
    saver = Saver(local_repo.repo("write"), Cache(None))
    res = saver.save("nightly", [str(src)])
    assert res.warnings == []
    return src, res.snapshot_id, saver


def candidate_secrets(key: Key) -> list[bytes]:
    """Every secret a key holds, and everything derivable from it with the
    format's context strings: what an attacker with the key file could try."""
    base = [v for v in (key.id_key, key.psk, key.data_sk, key.log_sk, key.sign_seed, key.master) if v]
    out = list(base)
    for v in base:
        for ctx in (crypto.CTX_ID_KEY, crypto.CTX_PSK, crypto.CTX_DATA_SK, crypto.CTX_LOG_SK, crypto.CTX_MAC,
                    crypto.CTX_LIST, crypto.CTX_SESSION, crypto.CTX_LOG, crypto.CTX_MASTER_SIGN):
            out.append(crypto.derive(ctx, v))
    return out


def codec_with_data_sk(repo: Repository, data_sk: bytes) -> fmt.BlobCodec:
    k = repo.key
    return fmt.BlobCodec(fmt.BlobKeys(
        id_key=k.id_key, mac_key=crypto.derive(crypto.CTX_MAC, k.psk), list_key=crypto.derive(crypto.CTX_LIST, k.psk),
        session_mix=crypto.derive(crypto.CTX_SESSION, k.psk), data_pk=bytes.fromhex(repo.config["data_pk"]),
        data_sk=data_sk))


def restore_detects(local_repo, sid, src, dest) -> bool:
    """True when a read-key restore refuses or reports damage."""
    repo = local_repo.repo("read")
    try:
        snap = repo.load_snapshot(sid)
    except IntegrityError:
        return True
    if not snap.signature_ok:
        return True
    r = Restorer(repo, snap)
    try:
        st = r.restore(str(src), str(dest))
    except IntegrityError:
        return True
    except RekkordError:
        # e.g. the restored path was in a lost index blob: the damage must
        # have been reported before the restore gave up.
        return r.stats.damaged > 0
    return st.damaged > 0


def check_problems(local_repo, role="audit") -> list[str]:
    report = Checker(local_repo.repo(role), Cache(None)).run()
    return [str(p) for p in report.problems]


# ---- P1 ------------------------------------------------------------------------------------


def test_p1_no_name_or_content_in_clear_anywhere_in_the_repository(local_repo, saved):
    src, sid, _ = saved
    stored = all_stored_bytes(local_repo.url)
    blob = b"".join(stored.values()) + b"\0".join(n.encode() for n in stored)
    needles = [n.encode() for n in NAMES] + CONTENTS + [str(src).encode(), b"Jane Doe"]
    needles += [n.encode().hex().encode() for n in NAMES]  # not even hex-encoded
    host = socket.gethostname().encode()
    if len(host) >= 6:
        needles.append(host)
    for needle in needles:
        assert needle not in blob, f"{needle!r} appears in clear in the repository"
    assert len(stored) > 5


def test_p1_write_key_cannot_list_read_or_restore(local_repo, saved, tmp_path):
    src, sid, _ = saved
    w = local_repo.repo("write")
    for call in (w.snapshots, lambda: w.load_snapshot(sid), lambda: w.resolve("nightly")):
        with pytest.raises(PermissionDenied, match="write key cannot"):
            call()
    with pytest.raises(PermissionDenied):
        Restorer(w, local_repo.repo("read").load_snapshot(sid))
    with pytest.raises(PermissionDenied):
        list(iter_entries(w, local_repo.repo("read").load_snapshot(sid)))


def test_p1_write_key_cannot_decrypt_blobs_or_records_even_with_internals(local_repo, saved):
    src, sid, saver = saved
    w = local_repo.repo("write")
    by_type = blobs_by_type(local_repo.url)
    assert by_type[fmt.T_DATA] and by_type[fmt.T_INDEX]
    candidates = candidate_secrets(w.key)
    for btype in (fmt.T_DATA, fmt.T_INDEX):
        for bid, raw in by_type[btype]:
            with pytest.raises(IntegrityError, match="cannot decrypt"):
                w.codec.open(bid, raw)
            for c in candidates:
                with pytest.raises(IntegrityError):
                    codec_with_data_sk(w, c).open(bid, raw)
    # Snapshot records: sealed to the log key, which a write key lacks.
    raw = open(os.path.join(local_repo.url, "snapshots", sid), "rb").read()
    for c in candidates:
        for mix in candidates:
            with pytest.raises(IntegrityError):
                fmt.open_record(sid, raw, c, mix)
    # The session's ephemeral secret lived only in the saving process.
    assert saver.codec._eph_sk not in b"".join(all_stored_bytes(local_repo.url).values())
    # Reference lists are the one thing a psk holder opens: they hold only blob
    # ids and stored sizes (docs/security.md, known limits), no names or content.
    for bid, raw in by_type[fmt.T_REFLIST]:
        body = w.codec.open(bid, raw, fmt.T_REFLIST)
        ids = {fmt.blob_id_from_name(n) for n in all_stored_bytes(local_repo.url)}
        assert all(i in ids for i, _ in fmt.unpack_reflist(body))


def test_p1_write_key_cannot_read_through_the_cli(local_repo, saved, run_cli, tmp_path):
    src, sid, _ = saved
    env = {"REKKORD_REPOSITORY": local_repo.url}
    for args in (["snapshots"], ["ls", sid], ["restore", sid, tmp_path / "out"], ["check", "--read-data"]):
        p = run_cli("-k", local_repo.key_files["write"], *args, env=env)
        assert p.returncode == 5, (args, p.stderr)
        assert p.stderr.decode().startswith("rekkord: error: a write key cannot")
    assert not (tmp_path / "out").exists()


# ---- P2 ------------------------------------------------------------------------------------


def attacker_codec(config: dict) -> fmt.BlobCodec:
    """The best the storage can do: the public data key, guesses for the rest."""
    r = os.urandom
    return fmt.BlobCodec(fmt.BlobKeys(id_key=r(32), mac_key=r(32), list_key=r(32), session_mix=r(32),
                                      data_pk=bytes.fromhex(config["data_pk"]), data_sk=None))


def test_p2_storage_cannot_forge_a_blob(local_repo, saved, tmp_path):
    src, sid, _ = saved
    config = json.loads(open(os.path.join(local_repo.url, "config"), "rb").read())["body"]
    evil = attacker_codec(config)
    # Replace the blob holding big-random-marker.bin with the attacker's content.
    repo = local_repo.repo("read")
    entries = {e.name: e for e in iter_entries(repo, repo.load_snapshot(sid))}
    victim = entries[b"big-random-marker.bin"].extents[0].blob
    path = os.path.join(local_repo.url, fmt.blob_name(victim))
    os.unlink(path)
    open(path, "wb").write(evil.seal(fmt.T_DATA, victim, b"EVIL" * 1000))
    # An extra, unreferenced forged blob, too.
    extra = os.urandom(32)
    os.makedirs(os.path.dirname(os.path.join(local_repo.url, fmt.blob_name(extra))), exist_ok=True)
    open(os.path.join(local_repo.url, fmt.blob_name(extra)), "wb").write(evil.seal(fmt.T_DATA, extra, b"x"))
    problems = check_problems(local_repo)
    assert any(victim.hex() in p for p in problems)
    assert any(extra.hex() in p for p in problems)
    assert restore_detects(local_repo, sid, src, tmp_path / "out")
    assert not (tmp_path / "out" / "big-random-marker.bin").exists()
    with pytest.raises(IntegrityError):
        repo.read_blob(victim)


def test_p2_storage_cannot_forge_or_replay_a_snapshot_record(local_repo, saved, tmp_path):
    src, sid, _ = saved
    config = json.loads(open(os.path.join(local_repo.url, "config"), "rb").read())["body"]
    snaps = os.path.join(local_repo.url, "snapshots")
    # 1. A record the attacker made: its own signing key and a certificate it
    #    wrote itself, sealed to the public log key with a guessed psk mix.
    evil = Key.from_master(os.urandom(32), config["repo"])
    cert = evil.certify("full", "evil", evil.sign_pk)
    open(os.path.join(local_repo.url, "keys", cert["kid"]), "w").write(json.dumps(cert))
    forged_sid = "e" * 32
    rec = {"channel": "nightly", "time_ns": 2**62, "id": forged_sid, "kid": evil.kid, "repo": config["repo"],
           "index": [], "reflist": []}
    open(os.path.join(snaps, forged_sid), "wb").write(
        fmt.seal_record(forged_sid, rec, evil.sign_seed, bytes.fromhex(config["log_pk"]), os.urandom(32)))
    # 2. A copy of the genuine record under another name (a replay).
    shutil.copy(os.path.join(snaps, sid), os.path.join(snaps, "f" * 32))
    problems = check_problems(local_repo)
    assert any(forged_sid in p for p in problems)
    assert any("f" * 32 in p for p in problems)
    assert any(cert["kid"] in p for p in problems)  # the self-made certificate is flagged
    read = local_repo.repo("read")
    assert read.resolve("nightly").id == sid  # the forged "latest" is not taken
    for bad in (forged_sid, "f" * 32):
        with pytest.raises(IntegrityError):
            read.load_snapshot(bad)
    assert cert["kid"] not in read.certificates()


def test_p2_storage_cannot_substitute_its_own_config(local_repo, saved):
    raw = open(os.path.join(local_repo.url, "config"), "rb").read()
    body = json.loads(raw)["body"]
    evil = Key.from_master(os.urandom(32), body["repo"])
    from rekkord.repository import signed_json

    forged = {**body, "master_sign_pk": evil.sign_pk.hex(), "data_pk": evil.data_pk.hex(), "log_pk": evil.log_pk.hex()}
    open(os.path.join(local_repo.url, "config"), "wb").write(signed_json(forged, evil.sign_seed,
                                                                          b"rekkord config v1\0"))
    for role in ("admin", "read", "write", "audit"):
        with pytest.raises(RekkordError) as e:
            local_repo.repo(role)
        assert e.value.exit_code in (4, 5)


# ---- P3 ------------------------------------------------------------------------------------


def _pick(url, btype):
    items = blobs_by_type(url)[btype]
    items.sort(key=lambda x: -len(x[1]))
    return os.path.join(url, fmt.blob_name(items[0][0]))


def _flip(path):
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x01
    open(path, "wb").write(raw)


def _truncate(path):
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:-1])


def _swap(a, b):
    tmp = a + ".swap"
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)


def damage(url, sid, what):
    kind, target = what.split("-", 1)
    types = {"data": fmt.T_DATA, "index": fmt.T_INDEX, "reflist": fmt.T_REFLIST}
    if target == "record":
        path = os.path.join(url, "snapshots", sid)
    elif target in types:
        path = _pick(url, types[target])
    if kind == "flip":
        _flip(path)
    elif kind == "truncate":
        _truncate(path)
    elif kind == "delete":
        os.unlink(path)
    elif kind == "swap":
        if target == "data":
            items = sorted(blobs_by_type(url)[fmt.T_DATA], key=lambda x: len(x[1]))
            _swap(*(os.path.join(url, fmt.blob_name(b)) for b, _ in (items[0], items[-1])))
        elif target == "data+index":
            _swap(_pick(url, fmt.T_DATA), _pick(url, fmt.T_INDEX))
        elif target == "record":
            _swap(path, os.path.join(url, "snapshots", [s for s in os.listdir(os.path.join(url, "snapshots"))
                                                        if s != sid][0]))


P3_CASES = ["flip-data", "flip-index", "flip-reflist", "flip-record", "truncate-data", "truncate-index",
            "truncate-reflist", "truncate-record", "delete-data", "delete-index", "delete-reflist", "swap-data",
            "swap-data+index", "swap-record"]


@pytest.mark.parametrize("what", P3_CASES)
def test_p3_damage_is_detected_by_check_and_restore(local_repo, tmp_path, what):
    src = tmp_path / "src"
    make_secret_tree(src)
    res = Saver(local_repo.repo("write"), Cache(None)).save("nightly", [str(src)])
    (src / "second").write_bytes(os.urandom(3000))
    other = Saver(local_repo.repo("write"), Cache(None)).save("other", [str(src / "second")])
    assert check_problems(local_repo) == []
    damage(local_repo.url, res.snapshot_id, what)
    problems = check_problems(local_repo)
    assert problems, f"check (audit key) missed {what}"
    assert check_problems(local_repo, "read") or what.endswith("reflist")
    if what.endswith("-index") and local_repo.repo("read").copies > 1:
        # Format v2 keeps two copies of every index blob: restore reads the
        # intact one and restores every byte (check, above, named the damaged
        # copy; when restore is the one to find it, it leaves a repair hint).
        repo = local_repo.repo("read")
        r = Restorer(repo, repo.load_snapshot(res.snapshot_id))
        st = r.restore(str(src), str(tmp_path / "out"))
        from treeutil import assert_same_tree

        assert st.damaged == 0
        assert_same_tree(src / "confidential-qwerty-dir", tmp_path / "out" / "confidential-qwerty-dir")
        assert (tmp_path / "out" / "big-random-marker.bin").read_bytes() == (src / "big-random-marker.bin").read_bytes()
    elif what.endswith("reflist"):
        # Restore never reads reference lists (they exist for check and prune),
        # so such damage cannot change a restored byte: it restores correctly.
        restore_detects(local_repo, res.snapshot_id, src, tmp_path / "out")
        from treeutil import assert_same_tree

        assert_same_tree(src / "confidential-qwerty-dir", tmp_path / "out" / "confidential-qwerty-dir")
    else:
        detected = restore_detects(local_repo, res.snapshot_id, src, tmp_path / "out")
        if what == "swap-record":
            detected = detected and restore_detects(local_repo, other.snapshot_id, src / "second", tmp_path / "o2")
        assert detected, f"restore (read key) missed {what}"


# ---- P4 ------------------------------------------------------------------------------------


def test_p4_audit_key_verifies_everything(local_repo, saved):
    Saver(local_repo.repo("write"), Cache(None)).save("second", [str(saved[0] / "confidential-qwerty-dir")])
    report = Checker(local_repo.repo("audit"), Cache(None)).run()
    assert report.ok, [str(p) for p in report.problems]
    assert report.snapshots == 2
    n_blobs = sum(len(v) for v in blobs_by_type(local_repo.url).values())
    assert report.blobs_read == n_blobs  # every stored blob read and its MAC verified


def test_p4_audit_key_cannot_recover_content_or_names(local_repo, saved, tmp_path):
    src, sid, _ = saved
    a = local_repo.repo("audit")
    snap = a.load_snapshot(sid)  # records: yes (channel, time, host, sizes)
    record_text = json.dumps(snap.record).encode()
    for needle in [n.encode() for n in NAMES] + CONTENTS + [str(src).encode()]:
        assert needle not in record_text
    with pytest.raises(PermissionDenied):
        Restorer(a, snap)
    with pytest.raises(PermissionDenied):
        list(iter_entries(a, snap))
    with pytest.raises(IntegrityError):
        a.private(snap)
    with pytest.raises(PermissionDenied):
        Checker(a, Cache(None), read_data=True)
    by_type = blobs_by_type(local_repo.url)
    candidates = candidate_secrets(a.key)
    for btype in (fmt.T_DATA, fmt.T_INDEX):
        for bid, raw in by_type[btype]:
            with pytest.raises(IntegrityError, match="cannot decrypt"):
                a.codec.open(bid, raw)
            for c in candidates:
                with pytest.raises(IntegrityError):
                    codec_with_data_sk(a, c).open(bid, raw)
    # What it can open (reference lists) names no file and holds no content.
    for bid, raw in by_type[fmt.T_REFLIST]:
        body = a.codec.open(bid, raw, fmt.T_REFLIST)
        for needle in [n.encode() for n in NAMES] + CONTENTS:
            assert needle not in body
    # Without id_key it cannot even test a guess of a file's content against blob ids.
    assert a.key.id_key is None
    with pytest.raises(IntegrityError):
        a.codec.blob_id(fmt.T_DATA, b"guess")


# ---- P5 ------------------------------------------------------------------------------------


def test_p5_passphrase_protected_key_files(run_cli, tmp_path):
    repo, key = tmp_path / "repo", tmp_path / "master.key"
    env = {"REKKORD_REPOSITORY": str(repo), "REKKORD_PASSPHRASE": "correct horse battery"}
    run_cli("-k", key, "init", env=env, check=0)
    text = key.read_text()
    assert keymod.is_protected(text) and '"master"' not in text
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    run_cli("-k", key, "snapshots", env=env, check=0)
    for bad in ({"REKKORD_PASSPHRASE": "wrong"}, {}):
        p = run_cli("-k", key, "snapshots", env={"REKKORD_REPOSITORY": str(repo), **bad})
        err = p.stderr.decode()
        assert p.returncode == 5 and err.count("\n") == 1 and "Traceback" not in err
        assert "passphrase" in err
    # Changing the passphrase: the old one stops working.
    run_cli("-k", key, "key", "passwd", key, env={**env, "REKKORD_NEW_PASSPHRASE": "new one"}, check=0)
    assert run_cli("-k", key, "snapshots", env=env).returncode == 5
    run_cli("-k", key, "snapshots", env={**env, "REKKORD_PASSPHRASE": "new one"}, check=0)


# ---- P6 (format v2) -------------------------------------------------------------------------


@pytest.mark.repo_format(2)
@pytest.mark.parametrize("who", ["write", "audit", "read", "storage"])
def test_p6_nobody_makes_another_writers_snapshot_restore_wrong_content_unseen(local_repo, saved, tmp_path, who):
    """P6: no key holder and no storage can make another writer's snapshot
    restore wrong content without the audit check saying so.  The attacker
    replaces the victim's data blobs -- with bytes of other content it sealed
    itself (a key holder), or with other stored objects (the storage) -- and
    adds a blob of its own under every name it can compute for the victim's
    files: restore refuses the damaged files, and the audit check names each
    object and the victim's snapshot."""
    from attacker import Attacker

    src, sid, _ = saved
    a = Attacker(local_repo.url, None if who == "storage" else local_repo.key_files[who])
    repo = local_repo.repo("read")
    victims = []
    for e in iter_entries(repo, repo.load_snapshot(sid)):
        victims += [x.blob for x in e.extents]
    others = [fmt.blob_id_from_name(n) for n in a.names("blobs/") if fmt.blob_id_from_name(n) not in victims]
    for i, v in enumerate(dict.fromkeys(victims)):
        name = fmt.blob_name(v)
        if i % 2 and others:
            raw = a.storage.read(fmt.blob_name(others[i % len(others)]))  # another genuine object
        else:
            raw = a.seal(fmt.T_DATA, os.urandom(a.storage.stat(name) or 100))[1]  # sealed by the attacker
        a.put(name, raw)
    report = Checker(local_repo.repo("audit"), Cache(None)).run()
    named = {p.object for p in report.problems if sid in p.snapshots}
    assert named >= {fmt.blob_name(v) for v in victims} and report.damaged_snapshots == [sid]
    assert restore_detects(local_repo, sid, src, tmp_path / "out")
    for v in victims:
        with pytest.raises(IntegrityError):
            local_repo.repo("read").read_blob(v, fmt.T_DATA, b"\0" * 32)

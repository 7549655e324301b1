"""rekkord.repository: config, certificates, revocations, snapshot records,
resolving snapshot names (on a real local directory)."""

import json
import os

import pytest

from rekkord import crypto, keys as keymod
from rekkord.errors import (
    IntegrityError,
    PermissionDenied,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsupportedFormat,
    UsageError,
    WrongKey,
)
from rekkord.keys import Key
from rekkord.repository import Repository, signed_json
from rekkord.storage.local import LocalStorage


def record(channel="c", t=1):
    return {"channel": channel, "time_ns": t, "host": "h", "index": [], "reflist": []}


def test_init_writes_a_signed_config_and_no_secret(local_repo):
    raw = open(os.path.join(local_repo.url, "config"), "rb").read()
    d = json.loads(raw)
    body = d["body"]
    m = local_repo.master
    assert body["format"] == local_repo.version and body["repo"] == m.repo
    assert body["master_sign_pk"] == m.sign_pk.hex()
    assert body["data_pk"] == m.data_pk.hex() and body["log_pk"] == m.log_pk.hex()
    assert body["chunker"] == {"algorithm": "fastcdc2020-nc1", "min": 262144, "avg": 1048576, "max": 4194304}
    assert body["compression"] == 3
    assert crypto.verify(m.sign_pk, b"rekkord config v1\0" + keymod.canonical(body), bytes.fromhex(d["sig"]))
    # No secret of any role is stored in the repository.
    everything = b"".join(open(os.path.join(dp, f), "rb").read()
                          for dp, _, fs in os.walk(local_repo.url) for f in fs)
    for secret in (m.master, m.id_key, m.psk, m.data_sk, m.log_sk, m.sign_seed):
        assert secret not in everything and secret.hex().encode() not in everything
    assert sorted(os.listdir(local_repo.url)) == ["config", "keys"]
    assert len(os.listdir(os.path.join(local_repo.url, "keys"))) == 4


def test_init_refuses_existing_or_non_empty(local_repo, tmp_path):
    with pytest.raises(RepositoryExists, match="already exists"):
        Repository.init(LocalStorage(local_repo.url), Key.generate_master())
    other = tmp_path / "nonempty"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(RepositoryExists, match="not empty"):
        Repository.init(LocalStorage(str(other)), Key.generate_master())
    assert os.listdir(other) == ["file"]


def test_open_missing_or_not_a_repository(tmp_path):
    with pytest.raises(RepositoryNotFound, match="no rekkord repository"):
        Repository.open(LocalStorage(str(tmp_path / "nothing")), Key.generate_master())
    (tmp_path / "plain").mkdir()
    with pytest.raises(RepositoryNotFound):
        Repository.open(LocalStorage(str(tmp_path / "plain")), Key.generate_master())


def test_open_with_a_key_of_another_repository(local_repo, tmp_path):
    other = Key.generate_master()
    with pytest.raises(WrongKey, match="belongs to repository"):
        Repository.open(LocalStorage(local_repo.url), other)
    # A derived key of another repository, too.
    Repository.init(LocalStorage(str(tmp_path / "r2")), other)
    with pytest.raises(WrongKey):
        Repository.open(LocalStorage(local_repo.url), other.derive("write", "w"))


def test_tampered_or_replaced_config_is_refused(local_repo):
    path = os.path.join(local_repo.url, "config")
    orig = open(path, "rb").read()
    d = json.loads(orig)
    # 1. Edited body, old signature.
    d["body"]["compression"] = 19
    open(path, "wb").write(json.dumps(d).encode())
    for role in ("admin", "write", "audit"):
        with pytest.raises(IntegrityError, match="bad signature"):
            local_repo.repo(role)
    # 2. A config the storage signed itself, with its own keys, same repository id.
    evil = Key.from_master(os.urandom(32), local_repo.master.repo)
    body = {**json.loads(orig)["body"], "master_sign_pk": evil.sign_pk.hex(), "data_pk": evil.data_pk.hex(),
            "log_pk": evil.log_pk.hex()}
    open(path, "wb").write(signed_json(body, evil.sign_seed, b"rekkord config v1\0"))
    for role in ("admin", "full", "write", "audit"):
        with pytest.raises(WrongKey):
            local_repo.repo(role)
    # 3. Garbage.
    open(path, "wb").write(b"not json")
    with pytest.raises(IntegrityError, match="damaged"):
        local_repo.repo("admin")
    open(path, "wb").write(orig)
    local_repo.repo("write")


def test_unsupported_format_version(local_repo):
    path = os.path.join(local_repo.url, "config")
    d = json.loads(open(path, "rb").read())
    d["body"]["format"] = 99
    open(path, "wb").write(json.dumps(d).encode())
    with pytest.raises(UnsupportedFormat, match="format 99 is not supported"):
        local_repo.repo("admin")


def test_certificates_only_valid_ones_count(local_repo):
    repo = local_repo.repo("admin")
    certs = repo.certificates()
    assert {c["role"] for c in certs.values()} == {"full", "read", "write", "audit"}
    store = repo.storage
    # Junk, a certificate under the wrong name, and one signed by a stranger.
    store.write("keys/junk", b"{")
    w = local_repo.keys["write"]
    store.write("keys/" + "0" * 24, json.dumps(w.cert).encode())
    evil = Key.from_master(os.urandom(32), repo.id)
    forged = evil.certify("full", "evil", crypto.sign_public(os.urandom(32)))
    store.write(f"keys/{forged['kid']}", json.dumps(forged).encode())
    fresh = local_repo.repo("audit")
    assert set(fresh.certificates()) == set(certs)
    assert fresh.signer_pk(forged["kid"]) is None
    assert fresh.signer_pk(w.kid) == w.sign_pk
    assert fresh.signer_pk(local_repo.master.kid) == local_repo.master.sign_pk


def test_snapshots_write_list_load_and_roles(local_repo):
    w = local_repo.repo("write")
    sid1 = w.write_snapshot(record("docs", 100))
    sid2 = w.write_snapshot(record("docs", 300))
    sid3 = local_repo.repo("full").write_snapshot(record("home", 200))
    assert len(sid1) == 32 and len({sid1, sid2, sid3}) == 3
    assert os.path.exists(os.path.join(local_repo.url, "snapshots", sid1))
    for role in ("admin", "full", "read", "audit"):
        snaps = local_repo.repo(role).snapshots()
        assert [s.id for s in snaps] == [sid1, sid3, sid2]  # oldest first
        assert all(s.signature_ok for s in snaps)
        assert snaps[0].kid == local_repo.keys["write"].kid and snaps[0].channel == "docs"
    with pytest.raises(PermissionDenied, match="write key cannot list snapshots"):
        w.snapshots()
    with pytest.raises(PermissionDenied):
        w.load_snapshot(sid1)
    with pytest.raises(PermissionDenied, match="cannot save"):
        local_repo.repo("audit").write_snapshot(record())
    with pytest.raises(PermissionDenied):
        local_repo.repo("read").write_snapshot(record())


def test_resolve(local_repo):
    w = local_repo.repo("write")
    a = w.write_snapshot(record("docs", 1))
    b = w.write_snapshot(record("docs", 2))
    r = local_repo.repo("read")
    assert r.resolve(a).id == a
    assert r.resolve(b[:8]).id == b
    assert r.resolve("docs").id == b  # a channel means its latest snapshot
    with pytest.raises(SnapshotNotFound, match="no snapshot or channel named 'nope'"):
        r.resolve("nope")
    with pytest.raises(SnapshotNotFound):
        r.resolve(a[:3])  # prefixes need at least 4 characters
    with pytest.raises(SnapshotNotFound):
        r.load_snapshot("f" * 32)
    with pytest.raises(UsageError):
        r.resolve("")
    # Force an ambiguous prefix by copying a record under a similar name.
    os.link(os.path.join(local_repo.url, "snapshots", a), os.path.join(local_repo.url, "snapshots", a[:6] + "x"))
    with pytest.raises(UsageError, match="ambiguous"):
        r.resolve(a[:6])


def test_renamed_forged_and_uncertified_records_are_reported(local_repo):
    w = local_repo.repo("write")
    sid = w.write_snapshot(record("docs", 1))
    d = os.path.join(local_repo.url, "snapshots")
    os.rename(os.path.join(d, sid), os.path.join(d, "ab" * 16))
    # A key the master never certified signs a record (only the storage has it).
    stranger = Key.from_master(os.urandom(32), local_repo.master.repo)
    stranger.psk, stranger.log_pk = local_repo.master.psk, local_repo.master.log_pk
    Repository(w.storage, w.config, stranger).write_snapshot(record("docs", 2))
    problems = []
    snaps = local_repo.repo("audit").snapshots(on_problem=lambda s, m: problems.append((s, m)))
    assert any(s == "ab" * 16 and "cannot be opened" in m for s, m in problems)
    assert len(snaps) == 1 and not snaps[0].signature_ok
    assert "invalid or the key is not certified" in snaps[0].problems[0]
    with pytest.raises(IntegrityError):
        local_repo.repo("audit").snapshots(strict=True)


def test_revoked_keys_later_snapshots_are_flagged(local_repo):
    w = local_repo.repo("write")
    before = w.write_snapshot(record("c", 1))
    admin = local_repo.repo("admin")
    with pytest.raises(PermissionDenied):
        local_repo.repo("full").revoke(local_repo.keys["write"].kid)
    admin.revoke(local_repo.keys["write"].kid)
    import time

    after = w.write_snapshot(record("c", time.time_ns() + 10**9))
    snaps = {s.id: s for s in local_repo.repo("read").snapshots()}
    assert snaps[before].signature_ok
    assert not snaps[after].signature_ok and "after it was revoked" in snaps[after].problems[0]
    # A revocation the storage forged (not signed by the master) is ignored.
    full_kid = local_repo.keys["full"].kid
    evil = Key.from_master(os.urandom(32), admin.id)
    admin.storage.write(f"revoked/{full_kid}", signed_json({"v": 1, "repo": admin.id, "kid": full_kid, "time_ns": 0},
                                                           evil.sign_seed, b"rekkord revocation v1\0"))
    assert full_kid not in local_repo.repo("read").revocations()


def test_private_part_needs_the_data_key(local_repo):
    w = local_repo.repo("write")
    pbody = json.dumps({"paths": ["/secret/path"]}).encode()
    from rekkord import format as fmt

    pid, sealed = w.codec.seal_for_store(fmt.T_INDEX, pbody)
    sid = w.write_snapshot({**record(), "private": {"id": pid.hex(), "sealed": bytes(sealed).hex()}})
    assert local_repo.repo("read").private(local_repo.repo("read").load_snapshot(sid)) == {"paths": ["/secret/path"]}
    audit = local_repo.repo("audit")
    with pytest.raises(IntegrityError, match="cannot decrypt"):
        audit.private(audit.load_snapshot(sid))


def test_generation_is_the_highest_number(local_repo):
    repo = local_repo.repo("audit")
    assert repo.generation() == 0
    for n in ("3", "12", "junk"):
        repo.storage.write(f"generations/{n}", b"")
    assert repo.generation() == 12


def test_a_channel_resolves_to_its_latest_trusted_snapshot(local_repo):
    """A stolen write key, revoked, keeps writing: its newer records never
    become the channel's latest (a 3 a.m. `restore web01` gets the good one)."""
    import time

    w = local_repo.repo("write")
    good = w.write_snapshot(record("web01", 1))
    local_repo.repo("admin").revoke(local_repo.keys["write"].kid)
    bad = w.write_snapshot(record("web01", time.time_ns() + 10**9))
    reader = local_repo.repo("read")
    assert reader.resolve("web01").id == good
    assert reader.resolve(bad).id == bad and not reader.resolve(bad).signature_ok
    only_bad = w.write_snapshot(record("other", time.time_ns() + 10**9))
    assert reader.resolve("other").id == only_bad  # the caller refuses it, saying why


# ---- hostile input: the bookkeeping the library reads ----------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from rekkord.storage.memory import MemoryStorage  # noqa: E402

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda k: st.lists(k, max_size=4) | st.dictionaries(st.text(max_size=10), k, max_size=4),
                     max_leaves=20)
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FUZZ
@given(field=st.sampled_from(["format", "repo", "created", "master_sign_pk", "data_pk", "log_pk", "chunker",
                              "compression"]), value=_json)
def test_fuzz_a_config_field_signed_by_the_master_key(local_repo, field, value):
    """Even a master-signed config is checked field by field: a typed error, never another."""
    from rekkord.errors import RekkordError
    from rekkord.repository import signed_json

    m = local_repo.master
    body = json.loads(open(os.path.join(local_repo.url, "config"), "rb").read())["body"]
    forged = {**body, field: value}
    storage = MemoryStorage()
    storage.write("config", signed_json(forged, m.sign_seed, b"rekkord config v1\0"))
    try:
        Repository.open(storage, m)
    except RekkordError:
        pass


@_FUZZ
@given(raw=st.binary(max_size=400) | _json.map(lambda v: json.dumps(v).encode()))
def test_fuzz_certificates_revocations_and_hints(local_repo, raw):
    repo = local_repo.repo("audit")
    for name in ("keys/" + "ab" * 12, "revoked/" + "ab" * 12, "repairs/" + "cd" * 12):
        repo.storage.write(name, raw, exclusive=False)
    repo._certs = repo._revoked = None
    assert "ab" * 12 not in repo.certificates()
    assert "ab" * 12 not in repo.revocations()
    problems = []
    assert "repairs/" + "cd" * 12 not in repo.repairs(on_problem=lambda n, m: problems.append(n))
    for name in ("keys/" + "ab" * 12, "revoked/" + "ab" * 12, "repairs/" + "cd" * 12):
        repo.storage.delete(name)


def test_index_copies_are_chosen_at_init_in_format_2_only(tmp_path):
    for copies, want in ((None, 2), (1, 1), (2, 2)):
        url = str(tmp_path / f"r{copies}")
        master = Key.generate_master()
        Repository.init(LocalStorage(url, sync=False), master, index_copies=copies)
        assert Repository.open(LocalStorage(url, sync=False), master).copies == want
    master = Key.generate_master()
    Repository.init(LocalStorage(str(tmp_path / "v1"), sync=False), master, version=1)
    assert Repository.open(LocalStorage(str(tmp_path / "v1"), sync=False), master).copies == 1
    for bad in ({"version": 1, "index_copies": 2}, {"index_copies": 3}):
        with pytest.raises(UsageError):
            Repository.init(LocalStorage(str(tmp_path / "bad"), sync=False), Key.generate_master(), **bad)

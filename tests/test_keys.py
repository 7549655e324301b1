"""rekkord.keys: roles, derivation, certificates, key files (armour, Argon2id)."""

import base64
import os
import stat

import pytest

from rekkord import crypto, keys
from rekkord.errors import KeyError_, KeyFileExists, PermissionDenied, WrongKey, WrongPassphrase
from rekkord.keys import CAPABILITIES, Key

SECRETS = ("id_key", "psk", "data_sk", "log_sk")


@pytest.fixture(scope="module")
def master():
    return Key.from_master(bytes(range(32)), "00" * 16)


def config_of(m: Key) -> dict:
    return {"repo": m.repo, "data_pk": m.data_pk.hex(), "log_pk": m.log_pk.hex(),
            "master_sign_pk": m.sign_pk.hex()}


def test_master_key_derivations_are_deterministic_and_distinct(master):
    again = Key.from_master(bytes(range(32)), "00" * 16)
    for name in ("id_key", "psk", "data_sk", "log_sk", "sign_seed", "data_pk", "log_pk"):
        assert getattr(master, name) == getattr(again, name)
    assert master.id_key == crypto.derive(crypto.CTX_ID_KEY, master.master)
    assert master.data_pk == crypto.x25519_public(master.data_sk)
    values = [master.id_key, master.psk, master.data_sk, master.log_sk, master.sign_seed, master.master]
    assert len(set(values)) == len(values)
    other = Key.generate_master()
    assert other.master != master.master and len(other.repo) == 32


# Which secrets each role holds (docs/security.md).
HOLDS = {
    "full": {"id_key", "psk", "data_sk", "log_sk"},
    "read": {"id_key", "psk", "data_sk", "log_sk"},
    "write": {"id_key", "psk"},
    "audit": {"psk", "log_sk"},
}


@pytest.mark.parametrize("role", ["full", "read", "write", "audit"])
def test_derived_roles_hold_exactly_their_secrets(master, role):
    k = master.derive(role, f"label-{role}")
    assert k.role == role and k.master is None
    for name in SECRETS:
        held = getattr(k, name) is not None
        assert held == (name in HOLDS[role]), (role, name)
        if held:
            assert getattr(k, name) == getattr(master, name)
    assert k.data_pk == master.data_pk and k.log_pk == master.log_pk
    assert k.sign_seed != master.sign_seed  # each derived key signs with its own key
    assert k.cert["role"] == role and k.cert["kid"] == k.kid
    assert keys.verify_cert(k.cert, master.sign_pk, master.repo)
    keys.check_belongs(k, config_of(master))


def test_capabilities_table_and_require(master):
    assert CAPABILITIES["write"] == {"save"}
    assert "read" not in CAPABILITIES["audit"] and "save" not in CAPABILITIES["audit"]
    assert "derive" not in CAPABILITIES["full"] and "save" not in CAPABILITIES["read"]
    w = master.derive("write", "w")
    w.require("save", "save")
    with pytest.raises(PermissionDenied, match="a write key cannot list snapshots"):
        w.require("list", "list snapshots")


def test_only_master_derives_and_roles_are_checked(master):
    full = master.derive("full", "f")
    with pytest.raises(PermissionDenied):
        full.derive("read", "r")
    with pytest.raises(KeyError_, match="unknown role"):
        master.derive("admin", "x")


def test_forged_or_foreign_certificates_are_rejected(master):
    k = master.derive("read", "r")
    pk = master.sign_pk
    assert not keys.verify_cert({**k.cert, "role": "full"}, pk, master.repo)
    assert not keys.verify_cert({**k.cert, "label": "other"}, pk, master.repo)
    assert not keys.verify_cert(k.cert, pk, "11" * 16)
    assert not keys.verify_cert({**k.cert, "sig": "00" * 64}, pk, master.repo)
    assert not keys.verify_cert({k: v for k, v in k.cert.items() if k != "sig"}, pk, master.repo)
    # A certificate signed by someone else's key (e.g. the storage's own) is refused.
    evil = Key.from_master(os.urandom(32), master.repo)
    forged = evil.certify("full", "evil", k.sign_pk)
    assert not keys.verify_cert(forged, pk, master.repo)
    # A key whose certificate names another key's kid does not belong.
    k2 = master.derive("read", "r2")
    k2.cert = k.cert
    with pytest.raises(WrongKey):
        keys.check_belongs(k2, config_of(master))


def test_check_belongs_rejects_keys_of_other_repositories(master):
    other = Key.generate_master()
    with pytest.raises(WrongKey, match="belongs to repository"):
        keys.check_belongs(other, config_of(master))
    same_id = Key.from_master(os.urandom(32), master.repo)
    with pytest.raises(WrongKey):
        keys.check_belongs(same_id, config_of(master))
    audit = other.derive("audit", "a")
    audit.repo = master.repo
    with pytest.raises(WrongKey):
        keys.check_belongs(audit, config_of(master))


@pytest.mark.parametrize("role", ["admin", "write", "audit"])
def test_key_file_round_trip_unprotected(master, role, tmp_path):
    k = master if role == "admin" else master.derive(role, "lbl")
    path = str(tmp_path / "k.key")
    k.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert text.splitlines()[0].startswith(f"rekkord key file: role {role}")
    assert keys.ARMOUR_BEGIN in text and keys.ARMOUR_END in text
    assert not keys.is_protected(text)
    loaded = keys.load(path)
    assert loaded.to_json() == k.to_json()
    assert loaded.kid == k.kid


def test_passphrase_protected_key_file(master, tmp_path):
    k = master.derive("read", "r")
    path = str(tmp_path / "p.key")
    k.save(path, "correct horse")
    text = open(path).read()
    assert keys.is_protected(text)
    body = keys.parse_armour(text)
    assert body[:5] == b"RKK1\x02"
    # Secrets never appear at rest in clear (hex or raw).
    assert k.data_sk.hex() not in text and k.data_sk not in body and k.psk not in body
    assert keys.load(path, "correct horse").to_json() == k.to_json()
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        keys.load(path, "wrong horse")
    with pytest.raises(WrongPassphrase, match="none was given"):
        keys.load(path)


def test_damaged_and_foreign_key_files(tmp_path):
    with pytest.raises(KeyError_, match="no valid armour"):
        keys.loads("hello")
    bad_magic = base64.b64encode(b"XXXX\x00{}").decode()
    with pytest.raises(KeyError_, match="bad magic"):
        keys.loads(f"{keys.ARMOUR_BEGIN}\n{bad_magic}\n{keys.ARMOUR_END}\n")
    unknown = base64.b64encode(b"RKK1\x07" + bytes(40)).decode()
    with pytest.raises(KeyError_, match="unknown protection"):
        keys.loads(f"{keys.ARMOUR_BEGIN}\n{unknown}\n{keys.ARMOUR_END}\n")
    garbage = base64.b64encode(b"RKK1\x00not json").decode()
    with pytest.raises(KeyError_, match="damaged key file"):
        keys.loads(f"{keys.ARMOUR_BEGIN}\n{garbage}\n{keys.ARMOUR_END}\n")
    with pytest.raises(KeyError_, match="does not exist"):
        keys.load(str(tmp_path / "missing.key"))


def test_save_refuses_to_overwrite_but_passwd_replaces_atomically(master, tmp_path):
    path = tmp_path / "k.key"
    path.write_text("precious")
    with pytest.raises(KeyFileExists, match="already exists"):
        master.save(str(path))
    assert path.read_text() == "precious"
    master.save(str(path), "pw", overwrite=True)
    assert keys.load(str(path), "pw").master == master.master
    assert sorted(os.listdir(tmp_path)) == ["k.key"]  # no temporary left behind
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_kid_is_stable_short_name_of_the_signing_key(master):
    assert keys.kid_of(master.sign_pk) == master.kid and len(master.kid) == 24
    assert master.derive("write", "a").kid != master.derive("write", "a").kid


# ---- protection 2: public facts in clear, authenticated ------------------------------------------


def _armour(body: bytes) -> str:
    return f"{keys.ARMOUR_BEGIN}\n{base64.b64encode(body).decode()}\n{keys.ARMOUR_END}\n"


def test_protected_key_shows_its_public_facts_without_the_passphrase(master, tmp_path):
    k = master.derive("write", "web01")
    path = str(tmp_path / "w.key")
    k.save(path, "pw")
    info = keys.inspect(open(path).read())
    assert info.protection == "passphrase" and not info.verified
    assert info.facts == {"format": 1, "role": "write", "label": "web01", "repo": master.repo, "kid": k.kid,
                          "created": int(k.created)}
    # The facts are all the clear part says: no secret in it.
    body = keys.parse_armour(open(path).read())
    (n,) = __import__("struct").unpack_from("<H", body, 5)
    assert b"psk" not in body[7:7 + n] and k.psk.hex().encode() not in body
    unprotected = keys.inspect(k.dumps())
    assert unprotected.protection == "none" and unprotected.verified and unprotected.facts == info.facts
    assert keys.inspect(master.dumps("pw")).facts["kid"] == master.kid


def test_a_tampered_public_header_is_detected_once_the_passphrase_is_given(master):
    k = master.derive("read", "restore-station")
    body = keys.parse_armour(k.dumps("pw"))
    forged = body.replace(b'"role":"read"', b'"role":"full"')
    assert forged != body
    text = _armour(forged)
    assert keys.inspect(text).facts["role"] == "full"  # shown, but not verified ...
    with pytest.raises(WrongPassphrase, match="header was altered"):
        keys.loads(text, "pw")  # ... and refused once the passphrase opens the seal
    # A header that keeps its length but is not JSON, or lies about its size.
    with pytest.raises(KeyError_, match="public header"):
        keys.inspect(_armour(body[:7] + b"\xff" * (len(body) - 7)))
    with pytest.raises(KeyError_, match="truncated"):
        keys.inspect(_armour(body[:5] + b"\xff\xff" + body[7:]))


def test_key_files_of_the_old_protection_still_load():
    path = os.path.join(os.path.dirname(__file__), "fixtures", "keyfile-v1-argon2id-write.key")
    text = open(path).read()
    assert keys.parse_armour(text)[4] == keys.KDF_ARGON2ID
    info = keys.inspect(text)
    assert info.facts is None and info.protection == "passphrase (old format)"
    k = keys.loads(text, "old horse")
    assert k.role == "write" and k.label == "old-web1"
    with pytest.raises(WrongPassphrase):
        keys.loads(text, "new horse")


# ---- hostile key files -----------------------------------------------------------------------------


@pytest.mark.parametrize("ops,mem", [(17, keys.ARGON2_MEM), (0, keys.ARGON2_MEM), (3, (1 << 30) + 1),
                                     (3, 1 << 50), (2**32 - 1, 2**64 - 1), (3, 10)])
def test_kdf_parameters_outside_sane_bounds_are_refused_before_the_kdf_runs(master, ops, mem, monkeypatch):
    import struct

    import nacl.pwhash

    v2 = master.derive("audit", "a").dumps("pw")
    monkeypatch.setattr(nacl.pwhash.argon2id, "kdf", lambda *a, **k: pytest.fail("the KDF ran"))
    v1 = keys.KEYFILE_MAGIC + bytes([keys.KDF_ARGON2ID]) + bytes(16) + struct.pack("<IQ", ops, mem) + bytes(60)
    with pytest.raises(KeyError_, match="outside the accepted bounds"):
        keys.loads(_armour(v1), "pw")
    body = bytearray(keys.parse_armour(v2))
    (n,) = struct.unpack_from("<H", body, 5)
    struct.pack_into("<IQ", body, 7 + n + 16, ops, mem)
    with pytest.raises(KeyError_, match="outside the accepted bounds"):
        keys.loads(_armour(bytes(body)), "pw")


def test_oversized_key_files_are_refused_without_reading_them_whole(tmp_path):
    path = tmp_path / "huge.key"
    with open(path, "wb") as f:
        f.truncate(keys.MAX_KEY_FILE + 1)
    with pytest.raises(KeyError_, match="larger than 1 MiB"):
        keys.load(str(path))
    with pytest.raises(KeyError_, match="larger than 1 MiB"):
        keys.loads("x" * (keys.MAX_KEY_FILE + 1))
    with pytest.raises(KeyError_, match="is a directory"):
        keys.load(str(tmp_path))


def _mutations(master):
    w = master.derive("write", "w").to_json()
    a = master.to_json()
    yield "payload a list", []
    yield "repo a number", {**w, "repo": 123}
    yield "repo too short", {**w, "repo": "ab"}
    yield "repo upper case", {**w, "repo": "AB" * 16}
    yield "label a list", {**w, "label": ["x"]}
    yield "label too long", {**w, "label": "x" * 5000}
    yield "created a string", {**w, "created": "yesterday"}
    yield "created negative", {**w, "created": -1}
    yield "created a bool", {**w, "created": True}
    yield "format a string", {**w, "format": "1"}
    yield "format true", {**w, "format": True}
    yield "no sign_seed", {k: v for k, v in w.items() if k != "sign_seed"}
    yield "sign_seed a dict", {**w, "sign_seed": {}}
    yield "psk not hex", {**w, "psk": "zz" * 32}
    yield "a write key lacking id_key", {k: v for k, v in w.items() if k != "id_key"}
    yield "a write key holding data_sk", {**w, "data_sk": "00" * 32}
    yield "cert a string", {**w, "cert": "signed"}
    yield "cert of another role", {**w, "cert": {**w["cert"], "role": "full"}}
    yield "cert kid a number", {**w, "cert": {**w["cert"], "kid": 5}}
    yield "master a number", {**a, "master": 5}
    yield "master too short", {**a, "master": "00"}


def test_every_payload_field_is_type_checked(master):
    for what, payload in _mutations(master):
        text = _armour(keys.KEYFILE_MAGIC + bytes([keys.KDF_NONE]) + keys.canonical(payload)
                       if isinstance(payload, dict) else keys.KEYFILE_MAGIC + b"\x00[]")
        with pytest.raises(KeyError_) as e:
            keys.loads(text)
        assert "damaged key file" in str(e.value) or "not a rekkord key file" in str(e.value), what


def test_loading_warns_when_group_or_others_may_read_the_key_file(master, tmp_path):
    path = tmp_path / "k.key"
    master.save(str(path))
    warnings = []
    keys.load(str(path), warn=warnings.append)
    assert warnings == []
    os.chmod(path, 0o640)
    keys.load(str(path), warn=warnings.append)
    os.chmod(path, 0o606)
    keys.load(str(path), warn=warnings.append)
    assert len(warnings) == 2
    assert "can be read or written by its group (mode 0640)" in warnings[0] and "chmod 600" in warnings[0]
    assert "by others (mode 0606)" in warnings[1]


def test_passwd_rewrite_uses_an_unpredictable_exclusive_temporary(master, tmp_path, monkeypatch):
    path = tmp_path / "k.key"
    master.save(str(path))
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    # The name the old code used: a planted symlink there must not be followed.
    os.symlink(victim, f"{path}.tmp-{os.getpid()}")
    created = []
    real_mkstemp = keys.tempfile.mkstemp

    def spy(*a, **kw):
        fd, name = real_mkstemp(*a, **kw)
        created.append((name, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd, name

    monkeypatch.setattr(keys.tempfile, "mkstemp", spy)
    master.save(str(path), "pw", overwrite=True)
    assert victim.read_text() == "untouched"
    (tmp, mode), = created
    assert os.path.dirname(tmp) == str(tmp_path) and mode == 0o600 and not os.path.exists(tmp)
    assert keys.load(str(path), "pw").master == master.master
    # A failed rename leaves the old file and no temporary behind.
    monkeypatch.setattr(keys.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        master.save(str(path), None, overwrite=True)
    assert keys.is_protected(path.read_text())
    assert sorted(os.listdir(tmp_path)) == sorted(["k.key", "victim", f"k.key.tmp-{os.getpid()}"])

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
    assert body[:5] == b"RKK1\x01"
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

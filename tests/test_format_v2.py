"""rekkord.format_v2: blobs named by the hash of their bytes, convergent data blobs.

Pure logic on an in-memory repository of format 2."""

import os
import struct

import blake3
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rekkord import format as fmt
from rekkord.errors import IntegrityError, RekkordError
from rekkord.format_v2 import BLOB_MAGIC_V2, SEAL_CONVERGENT, VARIANTS, CodecV2, name_of
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.storage.memory import MemoryStorage


@pytest.fixture(scope="module")
def repos():
    master = Key.generate_master()
    storage = MemoryStorage()
    Repository.init(storage, master, version=2)
    out = {"admin": Repository.open(storage, master)}
    for role in ("full", "read", "write", "audit"):
        k = master.derive(role, role)
        out["admin"].publish_cert(k.cert)
        out[role] = Repository.open(storage, k)
    assert all(isinstance(r.codec, CodecV2) for r in out.values())
    return out


def test_a_blob_is_named_by_the_hash_of_its_bytes_and_data_is_convergent(repos):
    w, other = repos["write"], repos["full"]
    data = os.urandom(5000)
    pid = w.codec.plain_id(fmt.T_DATA, data)
    name, raw = w.codec.seal_for_store(fmt.T_DATA, data, pid)
    assert name == blake3.blake3(raw).digest() == name_of(raw)
    assert raw[:4] == BLOB_MAGIC_V2 and raw[4] == fmt.T_DATA and raw[5] == SEAL_CONVERGENT
    assert raw[8:40] == bytes(32)  # no session key: anyone with the plaintext makes the same bytes
    # Another writer (another save session) makes the very same bytes.
    assert other.codec.seal_for_store(fmt.T_DATA, data, pid) == (name, raw)
    # Each variant is another name; None is a random nonce.
    names = {w.codec.seal_for_store(fmt.T_DATA, data, pid, v)[0] for v in range(VARIANTS)}
    assert len(names) == VARIANTS
    assert w.codec.seal_for_store(fmt.T_DATA, data, pid, None)[0] not in names
    assert repos["read"].codec.open(name, raw, fmt.T_DATA, key=pid) == data


def test_index_blobs_and_reference_lists_stay_randomised(repos):
    w = repos["write"]
    for btype in (fmt.T_INDEX, fmt.T_REFLIST):
        a = w.codec.seal_for_store(btype, b"same content" * 10)
        b = w.codec.seal_for_store(btype, b"same content" * 10)
        assert a[0] != b[0]
    name, raw = w.codec.seal_for_store(fmt.T_REFLIST, fmt.pack_reflist([(os.urandom(32), 5)]))
    assert repos["audit"].codec.open(name, raw, fmt.T_REFLIST)  # audit keys open reference lists


def test_anyone_verifies_integrity_without_a_key(repos):
    w = repos["write"]
    name, raw = w.codec.seal_for_store(fmt.T_DATA, os.urandom(3000))
    audit = repos["audit"].codec
    assert audit.verify(name, raw) is None
    for bad in (raw[:-1], raw[:40], bytes([raw[0] ^ 1]) + raw[1:], raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]):
        assert audit.verify(name, bad)
        with pytest.raises(IntegrityError):
            repos["read"].codec.open(name, bad, fmt.T_DATA, key=os.urandom(32))


def test_only_a_data_key_with_the_index_key_decrypts(repos):
    w = repos["write"]
    data = os.urandom(4000)
    pid = w.codec.plain_id(fmt.T_DATA, data)
    name, raw = w.codec.seal_for_store(fmt.T_DATA, data, pid)
    for role in ("write", "audit"):
        with pytest.raises(IntegrityError, match="cannot decrypt"):
            repos[role].codec.open(name, raw, fmt.T_DATA, key=pid)
    with pytest.raises(IntegrityError, match="no key"):
        repos["read"].codec.open(name, raw, fmt.T_DATA)
    with pytest.raises(IntegrityError, match="decryption failed"):
        repos["read"].codec.open(name, raw, fmt.T_DATA, key=os.urandom(32))
    # Index blobs need the data key too.
    iname, iraw = w.codec.seal_for_store(fmt.T_INDEX, b"index")
    with pytest.raises(IntegrityError, match="cannot decrypt"):
        repos["audit"].codec.open(iname, iraw, fmt.T_INDEX)


def test_content_must_match_its_plaintext_id(repos):
    """A key holder seals other content with a key derived from a victim's
    pid: the bytes hash to their own name, decrypt, and are still refused."""
    w = repos["write"]
    victim = w.codec.plain_id(fmt.T_DATA, b"the victim's content")
    inner = w.codec._inner(b"other content")
    from rekkord import crypto

    key = crypto.keyed_hash(w.codec._conv, victim)
    header = BLOB_MAGIC_V2 + bytes([fmt.T_DATA, SEAL_CONVERGENT, 0, 0]) + bytes(32) + os.urandom(24)
    raw = header + crypto.aead_encrypt(key, header[40:64], inner, header)
    with pytest.raises(IntegrityError, match="does not match its plaintext id"):
        repos["read"].codec.open(name_of(raw), raw, fmt.T_DATA, key=victim)


def test_type_and_sealing_confusion_are_refused(repos):
    w = repos["write"]
    name, raw = w.codec.seal_for_store(fmt.T_INDEX, b"x" * 100)
    with pytest.raises(IntegrityError, match="expected data"):
        repos["read"].codec.open(name, raw, fmt.T_DATA)
    forged = bytearray(raw)
    forged[5] = SEAL_CONVERGENT  # an index blob claiming convergent sealing
    with pytest.raises(RekkordError):
        repos["read"].codec.open(name_of(forged), bytes(forged), fmt.T_INDEX)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=3000), btype=st.sampled_from([None, 1, 2, 3]))
def test_fuzz_opening_random_bytes_under_their_own_name(repos, raw, btype):
    try:
        repos["read"].codec.open(name_of(raw), raw, btype, key=os.urandom(32))
    except RekkordError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(btype=st.sampled_from([1, 2, 3]), comp=st.integers(0, 3), body=st.binary(max_size=1500),
       claim=st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_fuzz_any_inner_plaintext_under_a_valid_name(repos, btype, comp, body, claim):
    from attacker import Attacker

    w = repos["write"]
    a = Attacker(None, storage=w.storage, key=w.key)
    pid = os.urandom(32)
    inner = bytes([comp]) + struct.pack("<Q", len(body) if claim is None else claim) + body
    raw = a.seal_inner(btype, pid, inner)
    try:
        repos["read"].codec.open(name_of(raw), raw, btype, key=pid)
    except RekkordError:
        pass

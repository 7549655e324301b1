"""rekkord.format: format v1's blob byte format (and the codec interface),
reference lists, snapshot records.

Pure logic: repositories live in memory here; everything touching files is in
test_repository.py / test_save.py / test_restore.py."""

import json
import os
import struct

import pytest
import zstandard

from rekkord import crypto, format as fmt
from rekkord.errors import IntegrityError, UnsupportedFormat
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.storage.memory import MemoryStorage


@pytest.fixture(scope="module")
def repos():
    """role -> Repository on one in-memory repository."""
    master = Key.generate_master()
    storage = MemoryStorage()
    Repository.init(storage, master, version=1)  # (format v2's blobs: tests/test_format_v2.py)
    out = {"admin": Repository.open(storage, master)}
    for role in ("full", "read", "write", "audit"):
        k = master.derive(role, role)
        out["admin"].publish_cert(k.cert)
        out[role] = Repository.open(storage, k)
    return out


def seal(repo, btype, data):
    bid = repo.codec.blob_id(btype, data)
    return bid, bytes(repo.codec.seal(btype, bid, data))


def test_header_layout(repos):
    w = repos["write"]
    data = os.urandom(5000)
    bid, raw = seal(w, fmt.T_DATA, data)
    assert raw[:4] == b"RKB1" and raw[4] == fmt.T_DATA and raw[5] == fmt.SEAL_SESSION
    assert raw[6:8] == b"\0\0"
    assert raw[8:40] == w.codec._eph_pk and raw[8:40] != bytes(32)
    # Random data is stored raw: 9-byte inner header, Padmé padding, tag and MAC.
    assert len(raw) == fmt.HEADER_SIZE + crypto.padme(9 + 5000) + crypto.TAG_SIZE + crypto.MAC_SIZE
    assert raw[-32:] == crypto.keyed_hash(crypto.derive(crypto.CTX_MAC, w.key.psk), bid, raw[:64], raw[64:-32])
    assert bid == crypto.keyed_hash(w.key.id_key, bytes([fmt.T_DATA]), data)
    # Each save session uses one ephemeral key for all its blobs; nonces are fresh.
    _, raw2 = seal(w, fmt.T_DATA, data)
    assert raw2[8:40] == raw[8:40] and raw2[40:64] != raw[40:64]


def test_inner_layout_compression_and_padding(repos):
    """Decrypt by hand with the documented derivations (docs/format.md)."""
    admin = repos["admin"]
    k = admin.key
    text = b"the same line again and again\n" * 2000
    bid, raw = seal(repos["write"], fmt.T_DATA, text)
    eph = raw[8:40]
    shared = crypto.x25519(k.data_sk, eph)
    skey = crypto.session_key(crypto.derive(crypto.CTX_SESSION, k.psk), shared, eph, k.data_pk)
    inner = crypto.aead_decrypt(skey, bytes(raw[40:64]), bytes(raw[64:-32]), bytes(raw[:64]) + bid)
    assert inner is not None
    inner = bytes(inner)
    assert inner[0] == fmt.COMP_ZSTD
    (n,) = struct.unpack_from("<Q", inner, 1)
    assert len(inner) == crypto.padme(9 + n) and inner[9 + n:] == bytes(len(inner) - 9 - n)
    assert zstandard.ZstdDecompressor().decompress(inner[9:9 + n]) == text
    assert n < len(text) // 10
    assert admin.codec.open(bid, raw, fmt.T_DATA) == text


@pytest.mark.parametrize("data", [b"", b"x", os.urandom(63), os.urandom(300_000), b"a" * 300_000],
                         ids=["empty", "one", "63", "random-big", "compressible-big"])
def test_round_trip_all_types(repos, data):
    admin = repos["admin"]
    for btype in (fmt.T_DATA, fmt.T_INDEX, fmt.T_REFLIST):
        bid, raw = seal(repos["write"], btype, data)
        assert admin.codec.open(bid, raw, btype) == data
        assert repos["read"].codec.open(bid, raw) == data
        assert admin.codec.verify_mac(bid, raw) is None


def test_incompressible_data_is_stored_raw(repos):
    data = os.urandom(400_000)
    bid, raw = seal(repos["write"], fmt.T_DATA, data)
    assert len(raw) == fmt.HEADER_SIZE + crypto.padme(9 + len(data)) + fmt.crypto.TAG_SIZE + 32


def test_a_chunk_that_starts_random_and_ends_in_text_is_compressed(repos):
    """The incompressibility probe samples the whole blob, not only its start
    (a start-only probe stored such chunks raw: +7.6 % repository size on the
    half-random big-file benchmark)."""
    text = bytes(b % 16 + 65 for b in os.urandom(700_000))  # 4 bits per byte
    data = os.urandom(300_000) + text
    bid, raw = seal(repos["write"], fmt.T_DATA, data)
    assert len(raw) < 300_000 + 0.7 * len(text)
    assert repos["admin"].codec.open(bid, raw, fmt.T_DATA) == data
    # ... and a blob compressible only in its start is compressed too.
    bid, raw = seal(repos["write"], fmt.T_DATA, text + os.urandom(300_000))
    assert len(raw) < 300_000 + 0.7 * len(text)


def test_reference_lists_are_sealed_with_the_list_key(repos):
    recs = [(os.urandom(32), 1234), (os.urandom(32), 99)]
    body = fmt.pack_reflist(recs)
    assert len(body) == 72 and body[32:36] == struct.pack("<I", 1234)
    bid, raw = seal(repos["write"], fmt.T_REFLIST, body)
    assert raw[5] == fmt.SEAL_LIST and raw[8:40] == bytes(32)
    # The audit key (no data key, no id key) opens it; it cannot re-hash the id.
    assert fmt.unpack_reflist(repos["audit"].codec.open(bid, raw, fmt.T_REFLIST)) == recs
    with pytest.raises(IntegrityError, match="bad length"):
        fmt.unpack_reflist(body[:-1])


def test_audit_key_cannot_open_data_or_index_blobs(repos):
    audit = repos["audit"].codec
    for btype in (fmt.T_DATA, fmt.T_INDEX):
        bid, raw = seal(repos["write"], btype, b"secret file content")
        assert audit.verify_mac(bid, raw) is None  # but it can verify integrity
        with pytest.raises(IntegrityError, match="cannot decrypt"):
            audit.open(bid, raw)
    with pytest.raises(IntegrityError, match="cannot compute blob ids"):
        audit.blob_id(fmt.T_DATA, b"x")


def test_every_damage_is_detected(repos):
    admin = repos["admin"].codec
    bid, raw = seal(repos["write"], fmt.T_DATA, os.urandom(3000))
    for i in list(range(0, 80)) + list(range(len(raw) - 40, len(raw))) + [len(raw) // 2]:
        bad = bytearray(raw)
        bad[i] ^= 0x10
        assert admin.verify_mac(bid, bytes(bad)) is not None, i
        with pytest.raises(IntegrityError):
            admin.open(bid, bytes(bad))
    assert "truncated" in admin.verify_mac(bid, raw[:50])
    assert admin.verify_mac(bid, raw[:-1]) is not None
    assert admin.verify_mac(bid, raw + b"\0") is not None
    # Stored under another name (swap): the MAC binds the id.
    other = os.urandom(32)
    assert "another name" in admin.verify_mac(other, raw)
    with pytest.raises(IntegrityError, match=other.hex()):
        admin.open(other, raw)


def test_type_confusion_is_detected(repos):
    admin = repos["admin"].codec
    bid, raw = seal(repos["write"], fmt.T_INDEX, b"index bytes")
    with pytest.raises(IntegrityError, match="is a index blob, expected data"):
        admin.open(bid, raw, fmt.T_DATA)


def test_content_must_match_id_even_with_valid_mac_and_aead(repos):
    """A key holder with psk but a wrong id (a buggy or hostile writer) cannot
    make readers accept content under an id that is not its hash."""
    w = repos["write"].codec
    wrong_id = os.urandom(32)
    raw = w.seal(fmt.T_DATA, wrong_id, b"content")
    assert w.verify_mac(wrong_id, raw) is None
    with pytest.raises(IntegrityError, match="does not match its id"):
        repos["admin"].codec.open(wrong_id, raw)


def test_unknown_sealing_and_compression(repos):
    codec = repos["admin"].codec
    k = repos["admin"].key
    mac_key = crypto.derive(crypto.CTX_MAC, k.psk)
    bid = os.urandom(32)
    header = b"RKB1" + bytes([1, 9, 0, 0]) + bytes(56)
    ct = b"x" * 40
    raw = header + ct + crypto.keyed_hash(mac_key, bid, header, ct)
    with pytest.raises(UnsupportedFormat, match="unknown sealing 9"):
        codec.open(bid, raw)
    # Compression byte 7 inside a valid list-sealed blob.
    list_key = crypto.derive(crypto.CTX_LIST, k.psk)
    header = b"RKB1" + bytes([3, 2, 0, 0]) + bytes(32) + os.urandom(24)
    inner = bytes([7]) + struct.pack("<Q", 0)
    ct = crypto.aead_encrypt(list_key, header[40:64], inner, header + bid)
    raw = header + ct + crypto.keyed_hash(mac_key, bid, header, ct)
    with pytest.raises(UnsupportedFormat, match="unknown compression 7"):
        codec.open(bid, raw)


def test_blob_names():
    bid = bytes(range(32))
    name = fmt.blob_name(bid)
    assert name == "blobs/00/" + bid.hex()
    assert fmt.blob_id_from_name(name) == bid
    for bad in ("blobs/01/" + bid.hex(), "blobs/00/" + bid.hex()[:-2], "keys/x", "blobs/00/" + "zz" * 32,
                "blobs/00/" + bid.hex() + "/x"):
        assert fmt.blob_id_from_name(bad) is None


# ---- snapshot records ----------------------------------------------------------------


def test_snapshot_record_seal_and_open(repos):
    admin = repos["admin"]
    k = admin.key
    log_mix = crypto.derive(crypto.CTX_LOG, k.psk)
    record = {"channel": "c", "b": [1, 2], "a": "é"}
    raw = fmt.seal_record("sid1", record, k.sign_seed, k.log_pk, log_mix)
    assert raw[:4] == b"RKS1"
    got, msg, sig = fmt.open_record("sid1", raw, k.log_sk, log_mix)
    assert got == record
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    assert msg == b"rekkord snapshot v1\0sid1\0" + body
    assert crypto.verify(k.sign_pk, msg, sig)
    # Renamed (replayed under another id), damaged, truncated: all refused.
    with pytest.raises(IntegrityError, match="snapshot sid2: cannot be opened"):
        fmt.open_record("sid2", raw, k.log_sk, log_mix)
    for i in (0, 5, 40, 70, len(raw) - 1):
        bad = bytearray(raw)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            fmt.open_record("sid1", bytes(bad), k.log_sk, log_mix)
    with pytest.raises(IntegrityError, match="truncated or bad magic"):
        fmt.open_record("sid1", raw[:70], k.log_sk, log_mix)
    # The log key alone (X25519) is not enough: the psk mix is needed too.
    with pytest.raises(IntegrityError):
        fmt.open_record("sid1", raw, k.log_sk, bytes(32))


# ---- hostile input: fuzzing the decoders ---------------------------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def _typed_only(fn):
    """``fn()`` either returns or raises one of rekkord's own errors."""
    from rekkord.errors import RekkordError

    try:
        return fn()
    except RekkordError:
        return None


def _seal_inner(repos, btype, bid, inner_plain):
    from attacker import Attacker

    w = repos["write"]
    return Attacker(None, storage=w.storage, key=w.key).seal_inner(btype, bid, inner_plain)


@_FUZZ
@given(raw=st.binary(max_size=4000), btype=st.sampled_from([None, 1, 2, 3]))
def test_fuzz_opening_random_bytes(repos, raw, btype):
    _typed_only(lambda: repos["read"].codec.open(os.urandom(32), raw, btype))


@_FUZZ
@given(data=st.binary(max_size=3000), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                                      max_size=4), cut=st.integers(0, 10**6))
def test_fuzz_opening_mutated_blobs(repos, data, flips, cut):
    bid, raw = seal(repos["write"], fmt.T_DATA, data)
    b = bytearray(raw)
    for pos, x in flips:
        b[pos % len(b)] ^= x
    b = b[: max(0, len(b) - cut % 80)] if cut % 3 == 0 else b
    out = _typed_only(lambda: repos["read"].codec.open(bid, bytes(b), fmt.T_DATA))
    assert out is None or out == data


@_FUZZ
@given(btype=st.sampled_from([1, 2, 3]), comp=st.integers(0, 3), body=st.binary(max_size=2000),
       claim=st.one_of(st.none(), st.integers(0, 2**64 - 1)), pad=st.integers(0, 64))
def test_fuzz_a_valid_mac_over_any_inner_plaintext(repos, btype, comp, body, claim, pad):
    """A key holder seals an INNER no honest writer makes (any compression
    byte, any claimed length, any zstd): a typed error, never another."""
    bid = os.urandom(32)
    raw = _seal_inner(repos, btype, bid, bytes([comp]) + struct.pack("<Q", len(body) if claim is None else claim)
                      + body + bytes(pad))
    _typed_only(lambda: repos["read"].codec.open(bid, raw, btype))


@_FUZZ
@given(frame=st.binary(max_size=500))
def test_fuzz_zstd_frames_under_a_valid_mac(repos, frame):
    bid = os.urandom(32)
    for body in (frame, b"\x28\xb5\x2f\xfd" + frame):  # with and without the zstd magic
        raw = _seal_inner(repos, fmt.T_INDEX, bid, bytes([fmt.COMP_ZSTD]) + struct.pack("<Q", len(body)) + body)
        _typed_only(lambda: repos["read"].codec.open(bid, raw, fmt.T_INDEX))


@_FUZZ
@given(raw=st.binary(max_size=600))
def test_fuzz_opening_random_records(repos, raw):
    r = repos["read"]
    _typed_only(lambda: fmt.open_record("a" * 32, b"RKS1" + raw, r.key.log_sk, r.log_mix))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
                     max_leaves=20)
_fields = ["v", "id", "repo", "kid", "channel", "time_ns", "host", "user", "tags", "index", "reflist", "stats",
           "linked_flag", "private"]


@_FUZZ
@given(values=st.dictionaries(st.sampled_from(_fields), _json, max_size=8), drop=st.sets(st.sampled_from(_fields)))
def test_fuzz_sealed_and_signed_records_with_any_fields(repos, values, drop):
    """A write key seals and signs a record with any JSON in any field: the
    record opens as a trusted snapshot, or is refused with a typed error."""
    from attacker import Attacker

    w = repos["write"]
    a = Attacker(None, storage=w.storage, key=w.key)
    sid = os.urandom(16).hex()
    rec = {"v": 1, "id": sid, "repo": w.id, "kid": w.key.kid, "channel": "c", "time_ns": 1, "index": [],
           "reflist": []}
    rec.update(values)
    for k in drop:
        rec.pop(k, None)
    a.put_record(sid, json.dumps(rec).encode())
    snap = _typed_only(lambda: repos["read"].load_snapshot(sid))
    if snap is not None:  # whatever opened is usable without surprises
        assert isinstance(snap.channel, str) and isinstance(snap.time_ns, int)
        snap.to_json(), snap.index, snap.reflist, snap.tags, snap.stats
    w.storage.delete(f"snapshots/{sid}")

"""rekkord.crypto: derivations, keyed hashing, X25519, AEAD, signatures, Padmé."""

import blake3
from hypothesis import given, settings, strategies as st

from rekkord import crypto

# The context strings are part of format v1: changing one makes every existing
# repository unreadable.  They are pinned here and in docs/format.md.
V1_CONTEXTS = {
    "CTX_ID_KEY": "rekkord v1 2026-11 blob id key",
    "CTX_PSK": "rekkord v1 2026-11 pre-shared key",
    "CTX_DATA_SK": "rekkord v1 2026-11 data x25519 key",
    "CTX_LOG_SK": "rekkord v1 2026-11 log x25519 key",
    "CTX_MASTER_SIGN": "rekkord v1 2026-11 master ed25519 seed",
    "CTX_MAC": "rekkord v1 2026-11 blob mac key",
    "CTX_LIST": "rekkord v1 2026-11 reference list key",
    "CTX_SESSION": "rekkord v1 2026-11 session key",
    "CTX_LOG": "rekkord v1 2026-11 log session key",
    "CTX_CHUNKER_SEED": "rekkord v1 2026-11 chunker seed",
    "CTX_PACK_CUT": "rekkord v1 2026-11 pack cut key",
}


def test_context_strings_are_pinned_and_distinct():
    for name, value in V1_CONTEXTS.items():
        assert getattr(crypto, name) == value, name
    assert len(set(V1_CONTEXTS.values())) == len(V1_CONTEXTS)


def test_derive_is_blake3_derive_key_and_separates_contexts():
    master = bytes(range(32))
    a = crypto.derive(crypto.CTX_ID_KEY, master)
    assert a == blake3.blake3(master, derive_key_context=crypto.CTX_ID_KEY).digest(32)
    assert len(a) == 32 and len(crypto.derive(crypto.CTX_ID_KEY, master, 8)) == 8
    assert crypto.derive(crypto.CTX_ID_KEY, master, 8) == a[:8]  # XOF prefix
    outs = {crypto.derive(c, master) for c in V1_CONTEXTS.values()}
    assert len(outs) == len(V1_CONTEXTS)
    assert crypto.derive(crypto.CTX_ID_KEY, bytes(32)) != a


def test_keyed_hash_parts_are_concatenated_and_key_matters():
    k1, k2 = b"k" * 32, b"K" * 32
    assert crypto.keyed_hash(k1, b"ab", b"cd") == crypto.keyed_hash(k1, b"abcd")
    assert crypto.keyed_hash(k1, b"abcd") == blake3.blake3(b"abcd", key=k1).digest()
    assert crypto.keyed_hash(k1, b"abcd") != crypto.keyed_hash(k2, b"abcd")
    assert len(crypto.keyed_hash(k1, b"x", length=1)) == 1


def test_x25519_agreement_and_session_key():
    a_sk, a_pk = crypto.new_ephemeral()
    b_sk = crypto.random_bytes(32)
    b_pk = crypto.x25519_public(b_sk)
    shared = crypto.x25519(a_sk, b_pk)
    assert shared == crypto.x25519(b_sk, a_pk)
    mix = crypto.random_bytes(32)
    k = crypto.session_key(mix, shared, a_pk, b_pk)
    assert k == crypto.session_key(mix, crypto.x25519(b_sk, a_pk), a_pk, b_pk)
    # Without the psk-derived mix key, the X25519 secret alone gives another key.
    assert k != crypto.session_key(bytes(32), shared, a_pk, b_pk)


def test_aead_round_trip_and_every_tamper_fails():
    key, nonce = crypto.random_bytes(32), crypto.random_bytes(24)
    ct = crypto.aead_encrypt(key, nonce, b"plaintext", b"ad")
    assert len(ct) == len(b"plaintext") + crypto.TAG_SIZE
    assert crypto.aead_decrypt(key, nonce, ct, b"ad") == b"plaintext"
    assert crypto.aead_decrypt(key, nonce, ct, b"aD") is None
    assert crypto.aead_decrypt(crypto.random_bytes(32), nonce, ct, b"ad") is None
    assert crypto.aead_decrypt(key, crypto.random_bytes(24), ct, b"ad") is None
    for i in range(len(ct)):
        bad = bytearray(ct)
        bad[i] ^= 0x01
        assert crypto.aead_decrypt(key, nonce, bytes(bad), b"ad") is None
    assert crypto.aead_decrypt(key, nonce, ct[:-1], b"ad") is None


def test_signatures():
    seed = crypto.random_bytes(32)
    pk = crypto.sign_public(seed)
    sig = crypto.sign(seed, b"message")
    assert len(sig) == crypto.SIG_SIZE
    assert crypto.verify(pk, b"message", sig)
    assert crypto.sign(crypto.signing_key(seed), b"message") == sig  # Ed25519 is deterministic
    assert not crypto.verify(pk, b"messagE", sig)
    assert not crypto.verify(crypto.sign_public(crypto.random_bytes(32)), b"message", sig)
    assert not crypto.verify(pk, b"message", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not crypto.verify(pk[:5], b"message", sig)  # malformed key: False, not an exception


def test_padme_known_values():
    assert [crypto.padme(n) for n in (0, 1, 2, 3, 9, 33)] == [0, 1, 2, 3, 10, 36]
    assert crypto.padme(1_000_000) == 62 * 16384


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 40))
def test_padme_properties(n):
    p = crypto.padme(n)
    assert p >= n
    assert crypto.padme(p) == p
    if n >= 100:
        assert p - n <= 0.12 * n
    assert crypto.padme(n + 1) >= p  # monotone


def test_docs_format_lists_every_context_string():
    import os

    doc = open(os.path.join(os.path.dirname(__file__), "..", "docs", "format.md"), encoding="utf-8").read()
    for value in V1_CONTEXTS.values():
        assert f"`{value}`" in doc, value

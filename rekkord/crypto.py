"""Cryptographic primitives and derivations (libsodium via PyNaCl, BLAKE3).

Nothing in here knows about storage.  The construction is described in
``docs/format.md`` and ``docs/security.md``; every context string below is part
of the on-storage format and must never change for format version 1.
"""

from __future__ import annotations

import os

import blake3
from nacl import bindings as sodium
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey
from nacl.exceptions import BadSignatureError

KEY_SIZE = 32
NONCE_SIZE = 24  # XChaCha20-Poly1305
TAG_SIZE = 16
MAC_SIZE = 32
SIG_SIZE = 64

# Domain-separation contexts (format v1).
CTX_ID_KEY = "rekkord v1 2026-11 blob id key"
CTX_PSK = "rekkord v1 2026-11 pre-shared key"
CTX_DATA_SK = "rekkord v1 2026-11 data x25519 key"
CTX_LOG_SK = "rekkord v1 2026-11 log x25519 key"
CTX_MASTER_SIGN = "rekkord v1 2026-11 master ed25519 seed"
CTX_MAC = "rekkord v1 2026-11 blob mac key"
CTX_LIST = "rekkord v1 2026-11 reference list key"
CTX_SESSION = "rekkord v1 2026-11 session key"
CTX_LOG = "rekkord v1 2026-11 log session key"
CTX_CHUNKER_SEED = "rekkord v1 2026-11 chunker seed"
CTX_PACK_CUT = "rekkord v1 2026-11 pack cut key"


def derive(context: str, material: bytes, length: int = KEY_SIZE) -> bytes:
    return blake3.blake3(material, derive_key_context=context).digest(length)


def keyed_hash(key: bytes, *parts: bytes, length: int = 32) -> bytes:
    h = blake3.blake3(key=key)
    for p in parts:
        h.update(p)
    return h.digest(length)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


# --- X25519 -----------------------------------------------------------------


def x25519_public(sk: bytes) -> bytes:
    return sodium.crypto_scalarmult_base(sk)


def x25519(sk: bytes, pk: bytes) -> bytes:
    """Shared secret; a low-order public key (e.g. all zeros, planted by
    someone forging an object) raises IntegrityError instead of libsodium's error."""
    try:
        return sodium.crypto_scalarmult(sk, bytes(pk))
    except Exception as e:  # nacl.exceptions.RuntimeError / TypeError
        from .errors import IntegrityError

        raise IntegrityError(f"invalid X25519 public key ({e})") from None


def new_ephemeral() -> tuple[bytes, bytes]:
    sk = random_bytes(KEY_SIZE)
    return sk, x25519_public(sk)


def session_key(mix_key: bytes, shared: bytes, eph_pk: bytes, recipient_pk: bytes) -> bytes:
    """Key for one save session: X25519 secret mixed with a psk-derived key,
    so that the storage (which has every public key) can never compute it."""
    return keyed_hash(mix_key, shared, eph_pk, recipient_pk)


# --- AEAD -------------------------------------------------------------------


# PyNaCl's wrappers zero-fill and then copy every output buffer while holding
# the GIL; calling libsodium through PyNaCl's own cffi module with our buffers
# is 2.4x faster and leaves the GIL free for the other pipeline threads.
try:
    from nacl._sodium import ffi as _ffi, lib as _lib

    _lib.crypto_aead_xchacha20poly1305_ietf_encrypt  # noqa: B018 (probe)
except (ImportError, AttributeError):  # pragma: no cover - older PyNaCl layouts
    _ffi = _lib = None


def aead_encrypt_into(out, key: bytes, nonce: bytes, plaintext, ad: bytes) -> None:
    """Encrypt ``plaintext`` into the writable buffer ``out`` (len + 16 bytes)."""
    n = len(plaintext)
    if len(out) != n + TAG_SIZE:
        raise ValueError("output buffer has the wrong size")
    if _lib is None:
        out[:] = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), ad, nonce, key)
        return
    rc = _lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
        _ffi.from_buffer(out, require_writable=True), _ffi.NULL, _ffi.from_buffer(plaintext), n,
        ad, len(ad), _ffi.NULL, nonce, key)
    if rc != 0:
        raise ValueError("encryption failed")


def aead_encrypt(key: bytes, nonce: bytes, plaintext, ad: bytes) -> bytes:
    out = bytearray(len(plaintext) + TAG_SIZE)
    aead_encrypt_into(out, key, nonce, plaintext, ad)
    return bytes(out)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext, ad: bytes):
    """Plaintext (a bytearray), or None when the ciphertext is not authentic."""
    n = len(ciphertext) - TAG_SIZE
    if n < 0:
        return None
    if _lib is None:
        try:
            return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(bytes(ciphertext), ad, nonce, key)
        except CryptoError:
            return None
    out = bytearray(n)
    rc = _lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
        _ffi.from_buffer(out, require_writable=True), _ffi.NULL, _ffi.NULL, _ffi.from_buffer(ciphertext),
        len(ciphertext), ad, len(ad), nonce, key)
    return out if rc == 0 else None


# --- signatures ---------------------------------------------------------------


def signing_key(seed: bytes) -> SigningKey:
    return SigningKey(seed)


def sign(seed_or_key: bytes | SigningKey, message: bytes) -> bytes:
    key = seed_or_key if isinstance(seed_or_key, SigningKey) else SigningKey(seed_or_key)
    return key.sign(message).signature


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(message, signature)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def sign_public(seed: bytes) -> bytes:
    return bytes(SigningKey(seed).verify_key)


# --- padding ------------------------------------------------------------------


def padme(length: int) -> int:
    """Padmé padding (Nikitin et al., PURBs): at most ~12 % overhead, leaks
    O(log log n) bits of the length."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (length + mask) & ~mask

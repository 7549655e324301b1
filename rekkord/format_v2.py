"""Blobs of format version 2: named by the hash of their bytes, data convergent.

Every key holder has ``psk``, so in version 1 any write key can make an
object whose MAC verifies under the id of content others will save later,
and the audit check cannot tell.  Version 2 closes that by construction
(docs/format.md §12, docs/security.md P6):

* every blob is stored under the **plain BLAKE3 hash of its stored bytes**:
  an object whose bytes do not hash to its name is invalid, and anyone can
  tell, with no key at all;
* **data blobs are convergent**: the key is ``khash(conv_key; pid)`` and the
  nonce ``khash(nonce_key; pid || variant)`` (``pid``: the keyed plaintext
  id, ``conv_key`` and ``nonce_key`` derived from ``id_key``), compression and
  padding are deterministic, so the same plaintext gives the same bytes and
  the same name in every writer; the pid (hence the key) lives only in the
  index, which is sealed to the data key.  A write key cannot decrypt a blob
  whose plaintext it does not already have;
* index blobs, reference lists and records stay randomised.

A writer reuses an object it finds under a name only once it has proven it:
the bytes there hash to the name, so they are exactly the bytes it would have
written (rekkord/save.py).  Where an invalid object squats a name, it stores
its copy under another *variant* (the nonce changes), and after a few under a
random nonce, so no attacker can occupy every name it would use.

Layout (64-byte header, then the AEAD ciphertext; associated data: the header)::

    0   4  magic b"RKB2"
    4   1  type      1 data, 2 index, 3 reference list
    5   1  sealing   1 session key (index), 2 list key (reference lists),
                     3 convergent (data)
    6   1  copy      0, or 1 for the second copy of an index blob or a
                     reference list (docs/format.md §13.8)
    7   1  reserved, zero
    8  32  the save session's ephemeral X25519 key (sealing 1), else zero
   40  24  nonce
   64   n  XChaCha20-Poly1305(INNER) || tag      (INNER as in version 1)
"""

from __future__ import annotations

import blake3

from . import crypto
from .errors import IntegrityError, UnsupportedFormat
from .format import (
    HEADER_SIZE,
    SEAL_LIST,
    SEAL_SESSION,
    T_DATA,
    T_REFLIST,
    TYPE_NAMES,
    BlobCodec,
    BlobKeys,
    opening_limit,
)

BLOB_MAGIC_V2 = b"RKB2"
SEAL_CONVERGENT = 3
OVERHEAD_V2 = HEADER_SIZE + crypto.TAG_SIZE
#: Name variants a writer tries (derived nonces) before a random nonce.
VARIANTS = 4

#: Copies of an index blob or reference list a record may name (the copy
#: number is header byte 6; docs/format.md §13.8).
MAX_COPIES = 2
#: Copy ``k`` of a blob is sealed with nonce ``nonce_0 XOR COPY_MASKS[k]``
#: (same key, same header otherwise): whoever can open one copy can make the
#: exact bytes of the other again (check --repair), and nobody else can.
COPY_MASKS = (bytes(24), blake3.blake3(b"rekkord v2 2027-01 second copy nonce mask").digest(24))

CTX_CONVERGENT = "rekkord v2 2026-12 convergent blob key"
CTX_NONCE = "rekkord v2 2026-12 convergent nonce key"

_ZERO32 = bytes(32)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def name_of(raw) -> bytes:
    """A v2 blob's name: the plain BLAKE3 hash of its stored bytes."""
    return blake3.blake3(raw).digest()


class CodecV2(BlobCodec):
    version = 2
    convergent = True

    def __init__(self, keys: BlobKeys, compression_level: int = 3, limits: dict[int, int] | None = None):
        super().__init__(keys, compression_level, limits)
        id_key = keys.id_key
        self._conv = crypto.derive(CTX_CONVERGENT, id_key) if id_key else None
        self._nonce = crypto.derive(CTX_NONCE, id_key) if id_key else None

    @property
    def index(self):
        from .index import V2

        return V2

    # ---- writing ---------------------------------------------------------------

    def seal_for_store(self, btype: int, plaintext, pid: bytes | None = None, variant: int | None = 0, *,
                       inner=None):
        """(name, stored bytes).  Data: convergent (``variant`` picks the
        derived nonce; None: a random one); index and reference lists:
        randomised.  ``inner``: the compressed and padded plaintext, when the
        caller already made it (trying another variant costs no compression)."""
        if inner is None:
            inner = self._inner(plaintext)
        if btype == T_DATA:
            pid = pid or self.plain_id(btype, plaintext)
            key = crypto.keyed_hash(self._conv, pid)
            nonce = (crypto.keyed_hash(self._nonce, pid, bytes([variant]), length=crypto.NONCE_SIZE)
                     if variant is not None else crypto.random_bytes(crypto.NONCE_SIZE))
            sealing, eph = SEAL_CONVERGENT, _ZERO32
        elif btype == T_REFLIST:
            key, sealing, eph = self.keys.list_key, SEAL_LIST, _ZERO32
            nonce = crypto.random_bytes(crypto.NONCE_SIZE)
        else:
            key, sealing, eph = self._session_key, SEAL_SESSION, self._eph_pk
            nonce = crypto.random_bytes(crypto.NONCE_SIZE)
        return self._seal_inner(btype, sealing, 0, eph, nonce, key, inner)

    def seal_copies(self, btype: int, plaintext, copies: int, *, inner=None) -> list[tuple[bytes, bytearray]]:
        """``copies`` sealings of an index blob or reference list, [(name,
        stored bytes)], copy ``k`` with header byte 6 = ``k`` and nonce
        ``nonce_0 XOR COPY_MASKS[k]``: different bytes, so different names,
        and each one can be made again from any other (:meth:`rebuild_copy`)."""
        if btype == T_DATA or not 1 <= copies <= MAX_COPIES:
            raise ValueError("only index blobs and reference lists have copies")
        if inner is None:
            inner = self._inner(plaintext)
        if btype == T_REFLIST:
            key, sealing, eph = self.keys.list_key, SEAL_LIST, _ZERO32
        else:
            key, sealing, eph = self._session_key, SEAL_SESSION, self._eph_pk
        nonce0 = crypto.random_bytes(crypto.NONCE_SIZE)
        return [self._seal_inner(btype, sealing, k, eph, _xor(nonce0, COPY_MASKS[k]), key, inner)
                for k in range(copies)]

    @staticmethod
    def _seal_inner(btype, sealing, copy, eph, nonce, key, inner) -> tuple[bytes, bytearray]:
        header = BLOB_MAGIC_V2 + bytes([btype, sealing, copy, 0]) + eph + nonce
        out = bytearray(HEADER_SIZE + len(inner) + crypto.TAG_SIZE)
        out[:HEADER_SIZE] = header
        view = memoryview(out)
        crypto.aead_encrypt_into(view[HEADER_SIZE:], key, nonce, inner, header)
        view.release()
        return name_of(out), out

    def rebuild_copy(self, ref: bytes, raw, copy: int) -> bytearray:
        """The exact bytes of copy ``copy`` of the blob whose (intact) copy
        ``raw`` is named ``ref``: opened with the key of its sealing (an index
        blob needs the data key, a reference list only psk), sealed again
        with the other copy's header.  The caller checks the result against
        the name the record gives it."""
        name = ref.hex()
        problem = self.verify(ref, raw)
        if problem:
            raise IntegrityError(f"blob {name}: {problem}")
        btype, sealing, have = raw[4], raw[5], raw[6]
        if btype == T_DATA or have >= MAX_COPIES or not 0 <= copy < MAX_COPIES or len(raw) > self.max_stored:
            raise IntegrityError(f"blob {name}: not a copy of an index blob or a reference list")
        header = bytes(raw[:HEADER_SIZE])
        if sealing == SEAL_LIST and btype == T_REFLIST:
            key = self.keys.list_key
        elif sealing == SEAL_SESSION:
            key = self._session_open_key(header[8:40], name)
        else:
            raise UnsupportedFormat(f"blob {name}: unknown sealing {sealing}")
        inner = crypto.aead_decrypt(key, header[40:64], memoryview(raw)[HEADER_SIZE:], header)
        if inner is None:
            raise IntegrityError(f"blob {name}: decryption failed (damaged or forged)")
        nonce = _xor(_xor(header[40:64], COPY_MASKS[have]), COPY_MASKS[copy])
        return self._seal_inner(btype, sealing, copy, header[8:40], nonce, key, inner)[1]

    def seal(self, btype: int, blob_id: bytes, plaintext, *, pad: bool = True) -> bytes:
        """Version 1's signature, for callers that name blobs themselves
        (the name of a v2 blob is the hash of what this returns)."""
        return self.seal_for_store(btype, plaintext, blob_id if btype == T_DATA else None)[1]

    # ---- reading ---------------------------------------------------------------

    def verify(self, ref: bytes, raw) -> str | None:
        """What anyone can check, without a key: the bytes hash to the name."""
        if len(raw) < OVERHEAD_V2:
            return f"truncated ({len(raw)} bytes)"
        if bytes(raw[:4]) != BLOB_MAGIC_V2:
            return "not a rekkord v2 blob (bad magic)"
        if name_of(raw) != ref:
            return "its bytes do not hash to its name (damaged, truncated, forged or stored under another name)"
        return None

    verify_mac = verify  # (what version 1's callers ask for)

    def open(self, blob_id: bytes, raw, expected_type: int | None = None, *, key: bytes = b"",
             max_plaintext: int | None = None) -> bytes:
        name = blob_id.hex()
        problem = self.verify(blob_id, raw)
        if problem:
            raise IntegrityError(f"blob {name}: {problem}")
        btype, sealing = raw[4], raw[5]
        if raw[7] or raw[6] >= (1 if btype == T_DATA else MAX_COPIES):
            raise UnsupportedFormat(f"blob {name}: unknown header flags {raw[6]}, {raw[7]}")
        limit = opening_limit(name, raw, btype, expected_type, self.limits, max_plaintext)
        header = bytes(raw[:HEADER_SIZE])
        nonce = header[40:64]
        if sealing == SEAL_LIST and btype == T_REFLIST:
            k = self.keys.list_key
        elif sealing == SEAL_SESSION and btype != T_DATA:
            k = self._session_open_key(header[8:40], name)
        elif sealing == SEAL_CONVERGENT and btype == T_DATA:
            if self.keys.data_sk is None:
                raise IntegrityError(f"blob {name}: this key cannot decrypt file data")
            if len(key) != 32 or self._conv is None:
                raise IntegrityError(f"blob {name}: no key for this blob (its index names none)")
            k = crypto.keyed_hash(self._conv, key)
        else:
            raise UnsupportedFormat(f"blob {name}: unknown sealing {sealing} for a {TYPE_NAMES[btype]} blob")
        inner = crypto.aead_decrypt(k, nonce, memoryview(raw)[HEADER_SIZE:], header)
        if inner is None:
            raise IntegrityError(f"blob {name}: decryption failed (damaged, forged, or named with the wrong key)")
        plaintext = self._plaintext(inner, limit, name)
        if sealing == SEAL_CONVERGENT and self.keys.id_key is not None \
                and self.plain_id(btype, plaintext) != key:
            raise IntegrityError(f"blob {name}: content does not match its plaintext id")
        return plaintext

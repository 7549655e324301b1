"""Byte formats of stored objects (format version 1; see docs/format.md).

Blob::

    0   4  magic  b"RKB1"
    4   1  type   1 data, 2 index, 3 reference list
    5   1  sealing 1 = session key (X25519 to the data key, mixed with psk)
                   2 = list key (derived from psk; audit keys can open it)
    6   2  reserved, zero
    8  32  ephemeral X25519 public key (zero for sealing 2)
   40  24  nonce
   64   n  XChaCha20-Poly1305(ciphertext || tag), AD = bytes 0..63 || blob id
  -32  32  MAC = keyed BLAKE3(mac_key, blob id || all preceding bytes)

The sealed plaintext is ``compression (1) | body length (u64 LE) | body |
zero padding`` padded with Padmé.  The blob id is keyed BLAKE3(id_key,
type || plaintext) of the *uncompressed* content.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import zstandard

from . import crypto, schema
from .errors import IntegrityError, UnsupportedFormat

BLOB_MAGIC = b"RKB1"
SNAP_MAGIC = b"RKS1"
SNAP_DOMAIN = b"rekkord snapshot v1\0"
ANNOTATION_MAGIC = b"RKA1"
ANNOTATION_DOMAIN = b"rekkord annotation v1\0"
MAX_ANNOTATION = 64 * 1024
HEADER_SIZE = 64
BLOB_OVERHEAD = HEADER_SIZE + crypto.TAG_SIZE + crypto.MAC_SIZE

T_DATA = 1
T_INDEX = 2
T_REFLIST = 3
TYPE_NAMES = {T_DATA: "data", T_INDEX: "index", T_REFLIST: "reference list"}

SEAL_SESSION = 1
SEAL_LIST = 2

COMP_NONE = 0
COMP_ZSTD = 1

REFLIST_RECORD = struct.Struct("<32sI")  # child id, stored size

_zero_pk = bytes(32)


def blob_name(blob_id: bytes) -> str:
    h = blob_id.hex()
    return f"blobs/{h[:2]}/{h}"


def blob_id_from_name(name: str) -> bytes | None:
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs" or len(parts[2]) != 64 or parts[2][:2] != parts[1]:
        return None
    try:
        return bytes.fromhex(parts[2])
    except ValueError:
        return None


class _Compressors:
    """zstd contexts are not thread-safe; keep one per thread."""

    def __init__(self, level: int):
        import threading

        self.level = level
        self.local = threading.local()

    def compressor(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def decompressor(self):
        d = getattr(self.local, "d", None)
        if d is None:
            d = self.local.d = zstandard.ZstdDecompressor()
        return d


@dataclass
class BlobKeys:
    """The key material a role has for blobs (any may be None)."""

    id_key: bytes | None
    mac_key: bytes
    list_key: bytes
    session_mix: bytes
    data_pk: bytes
    data_sk: bytes | None


PROBES, PROBE_SIZE = 4, 16 * 1024


def looks_incompressible(compressor, data) -> bool:
    """True when samples spread over ``data`` do not compress.

    Compressing four 16 KiB samples costs about 1/16 of compressing a 1 MiB
    chunk.  The samples are spread out because a chunk that starts in random
    bytes may end in text (a single probe at the start stored such chunks
    raw: +7.6 % repository size on the 1 GiB half-random file benchmark); the first
    sample that compresses ends the probe.
    """
    step = len(data) // PROBES
    for i in range(PROBES):
        sample = data[i * step: i * step + PROBE_SIZE]
        if len(compressor.compress(sample)) < 0.97 * len(sample):
            return False
    return True


def stored_size(plaintext_limit: int) -> int:
    """The largest stored blob for a plaintext of at most ``plaintext_limit``
    bytes (a body is never larger than its plaintext: see ``_compress``)."""
    return HEADER_SIZE + crypto.padme(9 + plaintext_limit) + crypto.TAG_SIZE + crypto.MAC_SIZE


def opening_limit(name: str, raw, btype: int, expected_type: int | None, limits: dict,
                  max_plaintext: int | None) -> int:
    """The plaintext limit a blob of type ``btype`` is opened under, once
    its type is the one expected and known, and its stored size within it
    (both formats' check before anything is decrypted)."""
    if expected_type is not None and btype != expected_type:
        raise IntegrityError(f"blob {name}: is a {TYPE_NAMES.get(btype, btype)} blob, "
                             f"expected {TYPE_NAMES.get(expected_type)}")
    limit = max_plaintext if max_plaintext is not None else limits.get(btype)
    if limit is None:
        raise IntegrityError(f"blob {name}: unknown blob type {btype}")
    if len(raw) > stored_size(limit):
        raise IntegrityError(f"blob {name}: too large for a {TYPE_NAMES[btype]} blob ({len(raw)} bytes)")
    return limit


#: Plaintext limits by blob type, for a repository with the default chunker.
DEFAULT_LIMITS = {T_DATA: schema.data_blob_limit(256 << 10, 4 << 20), T_INDEX: schema.MAX_INDEX_BLOB,
                  T_REFLIST: schema.MAX_REFLIST_BLOB}


class BlobCodec:
    """Format version 1's blobs, and the interface every version's codec
    offers save, restore, check and gc (format_v2.CodecV2 is version 2's):

    * ``plain_id(type, plaintext)``: the keyed plaintext id a writer's cache
      knows a blob by (in v1 it is also the blob's name);
    * ``seal_for_store(type, plaintext, pid, variant)`` -> (ref, stored
      bytes): ``ref`` names the object (``blob_name(ref)``);
    * ``open(ref, raw, type, key=...)``: verify, decrypt, decompress, check;
      ``key`` is what an index extent holds beside the ref (v2: the pid);
    * ``verify(ref, raw)``: what a key without the data key can check
      (v1: the MAC; v2: that the bytes hash to their name, no key at all);
    * ``index``: the index record layout of the version (rekkord.index).
    """

    version = 1
    #: Whether equal plaintext makes equal stored bytes (v2's data blobs):
    #: a writer then proves an object it finds under its name before reusing it.
    convergent = False

    def __init__(self, keys: BlobKeys, compression_level: int = 3, limits: dict[int, int] | None = None):
        self.keys = keys
        #: The largest plaintext of each blob type (docs/format.md, "Limits"):
        #: a blob claiming more is refused before anything is allocated for it.
        self.limits = dict(limits or DEFAULT_LIMITS)
        self.max_stored = stored_size(max(self.limits.values()))
        self.comp = _Compressors(compression_level)
        self.compression_level = compression_level
        self._eph_sk, self._eph_pk = crypto.new_ephemeral()
        shared = crypto.x25519(self._eph_sk, keys.data_pk)
        self._session_key = crypto.session_key(keys.session_mix, shared, self._eph_pk, keys.data_pk)
        self._open_cache: dict[bytes, bytes] = {self._eph_pk: self._session_key} if keys.data_sk else {}

    # ---- ids ---------------------------------------------------------------

    def blob_id(self, btype: int, plaintext) -> bytes:
        if self.keys.id_key is None:
            raise IntegrityError("this key cannot compute blob ids")
        return crypto.keyed_hash(self.keys.id_key, bytes([btype]), plaintext)

    plain_id = blob_id

    def seal_for_store(self, btype: int, plaintext, pid: bytes | None = None, variant: int | None = 0, *,
                       inner=None):
        """(ref, stored bytes) of a new blob: in v1 the ref is the plaintext id."""
        pid = pid or self.blob_id(btype, plaintext)
        return pid, self.seal(btype, pid, plaintext)

    def verify(self, ref: bytes, raw) -> str | None:
        return self.verify_mac(ref, raw)

    @property
    def index(self):
        from .index import V1

        return V1

    def _inner(self, plaintext, pad: bool = True) -> bytearray:
        comp, body = self._compress(plaintext)
        inner_len = 9 + len(body)
        total = crypto.padme(inner_len) if pad else inner_len
        inner = bytearray(total)
        inner[0] = comp
        struct.pack_into("<Q", inner, 1, len(body))
        inner[9:9 + len(body)] = body
        return inner

    def _plaintext(self, inner, limit: int, name: str) -> bytes:
        if len(inner) < 9:
            raise IntegrityError(f"blob {name}: bad body length")
        comp = inner[0]
        (n,) = struct.unpack_from("<Q", inner, 1)
        if 9 + n > len(inner) or n > limit:
            raise IntegrityError(f"blob {name}: bad body length")
        body = memoryview(inner)[9:9 + n]
        if comp == COMP_ZSTD:
            return _decompress(self.comp.decompressor(), body, limit, name)
        if comp == COMP_NONE:
            return body.tobytes()
        raise UnsupportedFormat(f"blob {name}: unknown compression {comp}")

    def _session_open_key(self, eph: bytes, name: str) -> bytes:
        if self.keys.data_sk is None:
            raise IntegrityError(f"blob {name}: this key cannot decrypt file data")
        key = self._open_cache.get(eph)
        if key is None:
            shared = crypto.x25519(self.keys.data_sk, eph)
            key = crypto.session_key(self.keys.session_mix, shared, eph, self.keys.data_pk)
            if len(self._open_cache) > 4096:
                self._open_cache.clear()
            self._open_cache[eph] = key
        return key

    # ---- sealing -------------------------------------------------------------

    def _compress(self, plaintext) -> tuple[int, bytes]:
        n = len(plaintext)
        if self.compression_level <= 0 or n < 64:
            return COMP_NONE, bytes(plaintext)
        c = self.comp.compressor()
        if n > 256 * 1024 and looks_incompressible(c, plaintext):
            return COMP_NONE, bytes(plaintext)
        out = c.compress(plaintext)
        if len(out) >= n * 0.97:
            return COMP_NONE, bytes(plaintext)
        return COMP_ZSTD, out

    def seal(self, btype: int, blob_id: bytes, plaintext, *, pad: bool = True) -> bytes:
        inner = self._inner(plaintext, pad)
        total = len(inner)
        if btype == T_REFLIST:
            sealing, eph, key = SEAL_LIST, _zero_pk, self.keys.list_key
        else:
            sealing, eph, key = SEAL_SESSION, self._eph_pk, self._session_key
        nonce = crypto.random_bytes(crypto.NONCE_SIZE)
        header = BLOB_MAGIC + bytes([btype, sealing, 0, 0]) + eph + nonce
        # One output buffer: header | ciphertext+tag | MAC, no intermediate copies.
        out = bytearray(HEADER_SIZE + total + crypto.TAG_SIZE + crypto.MAC_SIZE)
        out[:HEADER_SIZE] = header
        view = memoryview(out)
        ct = view[HEADER_SIZE:-crypto.MAC_SIZE]
        crypto.aead_encrypt_into(ct, key, nonce, inner, header + blob_id)
        out[-crypto.MAC_SIZE:] = crypto.keyed_hash(self.keys.mac_key, blob_id, header, ct)
        ct.release()
        view.release()
        return out

    # ---- opening ---------------------------------------------------------------

    def verify_mac(self, blob_id: bytes, raw: bytes) -> str | None:
        """Structural check any key holding psk can do.  Returns a problem or None."""
        if len(raw) < BLOB_OVERHEAD:
            return f"truncated ({len(raw)} bytes)"
        if raw[:4] != BLOB_MAGIC:
            return "not a rekkord blob (bad magic)"
        view = memoryview(raw)
        expected = crypto.keyed_hash(self.keys.mac_key, blob_id, view[:HEADER_SIZE], view[HEADER_SIZE:-32])
        if expected != raw[-32:]:
            return "MAC mismatch (damaged, truncated, forged or stored under another name)"
        return None

    def blob_type(self, raw: bytes) -> int:
        return raw[4]

    def open(self, blob_id: bytes, raw: bytes, expected_type: int | None = None, *, key: bytes = b"",
             max_plaintext: int | None = None) -> bytes:
        """Verify, decrypt, decompress and (when the key can) re-hash a blob.
        ``max_plaintext`` overrides the type's limit (a record's inline part)."""
        name = blob_id.hex()
        problem = self.verify_mac(blob_id, raw)
        if problem:
            raise IntegrityError(f"blob {name}: {problem}")
        btype, sealing = raw[4], raw[5]
        limit = opening_limit(name, raw, btype, expected_type, self.limits, max_plaintext)
        header = bytes(raw[:HEADER_SIZE])
        nonce = bytes(raw[40:64])
        if sealing == SEAL_LIST:
            key = self.keys.list_key
        elif sealing == SEAL_SESSION:
            key = self._session_open_key(bytes(raw[8:40]), name)
        else:
            raise UnsupportedFormat(f"blob {name}: unknown sealing {sealing}")
        inner = crypto.aead_decrypt(key, nonce, memoryview(raw)[HEADER_SIZE:-32], bytes(header) + blob_id)
        if inner is None:
            raise IntegrityError(f"blob {name}: decryption failed (damaged or forged)")
        plaintext = self._plaintext(inner, limit, name)
        if self.keys.id_key is not None and self.blob_id(btype, plaintext) != blob_id:
            raise IntegrityError(f"blob {name}: content does not match its id")
        return plaintext


def _decompress(d, body, limit: int, name: str) -> bytes:
    """One zstd frame, at most ``limit`` bytes of output, nothing after it.
    A frame header may claim any content size: zstandard would allocate it
    whole, so a claim beyond the limit is refused first."""
    try:
        size = zstandard.frame_content_size(body)
        if size > limit:
            raise IntegrityError(f"blob {name}: claims {size} bytes of content, more than a blob may hold")
        return d.decompress(body, max_output_size=limit, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise IntegrityError(f"blob {name}: cannot decompress ({e})") from None


# --- reference lists ----------------------------------------------------------


def pack_reflist(records: list[tuple[bytes, int]]) -> bytes:
    return b"".join(REFLIST_RECORD.pack(i, s) for i, s in records)


def unpack_reflist(data: bytes) -> list[tuple[bytes, int]]:
    if len(data) % REFLIST_RECORD.size:
        raise IntegrityError("reference list has a bad length")
    return [REFLIST_RECORD.unpack_from(data, o) for o in range(0, len(data), REFLIST_RECORD.size)]


# --- snapshot records ---------------------------------------------------------


def seal_record(sid: str, record: dict, sign_seed: bytes, log_pk: bytes, log_mix: bytes) -> bytes:
    """Sign then seal a snapshot record to the repository's log key."""
    return _seal_signed(SNAP_MAGIC, SNAP_DOMAIN, sid, record, sign_seed, log_pk, log_mix)


def open_record(sid: str, raw: bytes, log_sk: bytes, log_mix: bytes) -> tuple[dict, bytes, bytes]:
    """Returns (record, signed message, signature); the caller checks the
    signature against the certificate of ``record['kid']``."""
    return _open_signed(SNAP_MAGIC, SNAP_DOMAIN, f"snapshot {sid}", ("a snapshot record", "record"), schema.MAX_RECORD,
                        sid, raw, log_sk, log_mix)


def seal_annotation(aid: str, body: dict, sign_seed: bytes, log_pk: bytes, log_mix: bytes) -> bytes:
    """An annotation (tags changed after the fact, rekkord/tags.py): sealed
    and signed as a record, with its own magic and signing context, so that
    neither can pass for the other."""
    return _seal_signed(ANNOTATION_MAGIC, ANNOTATION_DOMAIN, aid, body, sign_seed, log_pk, log_mix)


def open_annotation(aid: str, raw: bytes, log_sk: bytes, log_mix: bytes) -> tuple[dict, bytes, bytes]:
    return _open_signed(ANNOTATION_MAGIC, ANNOTATION_DOMAIN, f"annotations/{aid}", ("an annotation", "annotation"),
                        MAX_ANNOTATION, aid, raw, log_sk, log_mix)


def _seal_signed(magic: bytes, domain: bytes, sid: str, record: dict, sign_seed: bytes, log_pk: bytes,
                 log_mix: bytes) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    sig = crypto.sign(sign_seed, domain + sid.encode() + b"\0" + body)
    plaintext = struct.pack("<I", len(body)) + body + sig
    eph_sk, eph_pk = crypto.new_ephemeral()
    key = crypto.session_key(log_mix, crypto.x25519(eph_sk, log_pk), eph_pk, log_pk)
    nonce = crypto.random_bytes(crypto.NONCE_SIZE)
    header = magic + eph_pk + nonce
    return header + crypto.aead_encrypt(key, nonce, plaintext, header + sid.encode())


def _open_signed(magic: bytes, domain: bytes, what: str, nouns: tuple[str, str], limit: int, sid: str, raw: bytes,
                 log_sk: bytes, log_mix: bytes) -> tuple[dict, bytes, bytes]:
    if len(raw) < 60 + crypto.TAG_SIZE or raw[:4] != magic:
        raise IntegrityError(f"{what}: not {nouns[0]} (truncated or bad magic)")
    if len(raw) > limit:
        raise IntegrityError(f"{what}: too large for {nouns[0]} ({len(raw)} bytes)")
    eph_pk, nonce = bytes(raw[4:36]), bytes(raw[36:60])
    log_pk = crypto.x25519_public(log_sk)
    key = crypto.session_key(log_mix, crypto.x25519(log_sk, eph_pk), eph_pk, log_pk)
    plaintext = crypto.aead_decrypt(key, nonce, raw[60:], bytes(raw[:60]) + sid.encode())
    if plaintext is None:
        raise IntegrityError(f"{what}: cannot be opened (damaged, forged or renamed)")
    if len(plaintext) < 4:
        raise IntegrityError(f"{what}: damaged {nouns[1]} (truncated)")
    (n,) = struct.unpack_from("<I", plaintext, 0)
    if len(plaintext) != 4 + n + crypto.SIG_SIZE:
        raise IntegrityError(f"{what}: damaged {nouns[1]} (bad length)")
    body = bytes(plaintext[4:4 + n])
    sig = bytes(plaintext[4 + n:])  # (aead_decrypt returns a bytearray; PyNaCl wants bytes)
    record = schema.loads_object(body, what, limit=limit)
    return record, domain + sid.encode() + b"\0" + body, sig

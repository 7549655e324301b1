"""The attacker of the hostile-input tests: builds repository objects with only
what ONE key file holds (a write, audit or read key), or with only what the
storage holds (``key_file=None``: every stored object, public keys included).

It uses the format's code for encoding (an attacker has the source) but never
the library's checks, and never a secret its key file does not hold: the
secrets come from the key file on disk, the public values from the stored
config.  Everything it makes is written straight to the storage.
"""

from __future__ import annotations

import json
import os
import struct

from rekkord import crypto, format as fmt, keys as keymod
from rekkord.chunker import INDEX_PARAMS, Chunker, ChunkerParams, PackCutter, chunker_seed
from rekkord.index import Entry
from rekkord.storage.local import LocalStorage


class Attacker:
    def __init__(self, url: str | None, key_file: str | None = None, storage=None, key=None):
        self.storage = storage or LocalStorage(url, sync=False)
        self.config = json.loads(self.storage.read("config"))["body"]  # public: anyone with storage access
        self.key = keymod.load(key_file) if key_file else key
        k = self.key
        r = os.urandom
        psk = k.psk if k else None
        self.id_key = k.id_key if k and k.id_key else r(32)  # the storage can only guess secrets
        self.psk = psk or r(32)
        self.mac_key = crypto.derive(crypto.CTX_MAC, self.psk)
        self.list_key = crypto.derive(crypto.CTX_LIST, self.psk)
        self.session_mix = crypto.derive(crypto.CTX_SESSION, self.psk)
        self.log_mix = crypto.derive(crypto.CTX_LOG, self.psk)
        self.data_pk = bytes.fromhex(self.config["data_pk"])
        self.log_pk = bytes.fromhex(self.config["log_pk"])
        self.sign_seed = k.sign_seed if k else r(32)
        self.kid = keymod.kid_of(crypto.sign_public(self.sign_seed))
        from rekkord.format_v2 import CodecV2

        self.version = self.config.get("format", 1)
        self.v2 = self.version >= 2
        codec_class = CodecV2 if self.v2 else fmt.BlobCodec
        self.codec = codec_class(fmt.BlobKeys(id_key=self.id_key, mac_key=self.mac_key, list_key=self.list_key,
                                              session_mix=self.session_mix, data_pk=self.data_pk,
                                              data_sk=k.data_sk if k else None))
        from rekkord.index import index_format

        self.ix = index_format(self.version)
        ch = self.config["chunker"]
        self.params = ChunkerParams(ch["min"], ch["avg"], ch["max"])

    # ---- blobs -----------------------------------------------------------------

    def blob_id(self, btype: int, plaintext: bytes) -> bytes:
        return self.codec.blob_id(btype, plaintext)

    def seal(self, btype: int, plaintext: bytes, *, claim_id: bytes | None = None,
             variant: int | None = 0) -> tuple[bytes, bytes]:
        """(name, stored bytes) of a blob holding ``plaintext`` -- under the
        name of other content with ``claim_id`` (v1: the MAC still verifies,
        psk suffices; v2: its bytes do not hash to that name)."""
        ref, raw = self.codec.seal_for_store(btype, plaintext, variant=variant)
        if claim_id is not None and not self.v2:
            return claim_id, bytes(self.codec.seal(btype, claim_id, plaintext))
        return claim_id or ref, bytes(raw)

    def key_of(self, btype: int, plaintext: bytes) -> bytes:
        """What an index extent holds beside the name (v2: the plaintext id)."""
        return self.blob_id(btype, plaintext) if self.v2 and btype == fmt.T_DATA else b""

    def predicted_names(self, btype: int, plaintext: bytes) -> list[bytes]:
        """Every name an honest writer would try for ``plaintext`` before a
        random one (v1: its id; v2: the variants of the convergent seal)."""
        if not self.v2:
            return [self.blob_id(btype, plaintext)]
        from rekkord.format_v2 import VARIANTS

        return [self.codec.seal_for_store(btype, plaintext, variant=v)[0] for v in range(VARIANTS)]

    def seal_inner(self, btype: int, blob_id: bytes, inner: bytes) -> bytes:
        """A blob whose sealed INNER part (compression byte, body length,
        body, padding) is ``inner`` exactly: for bodies no honest writer makes.
        (v2: ``blob_id`` is the plaintext id a data blob's key comes from;
        store it under :func:`rekkord.format_v2.name_of` of the result.)"""
        if self.v2:
            return self._seal_inner_v2(btype, blob_id, inner)
        if btype == fmt.T_REFLIST:
            sealing, eph, key = fmt.SEAL_LIST, bytes(32), self.list_key
        else:
            eph_sk, eph = crypto.new_ephemeral()
            shared = crypto.x25519(eph_sk, self.data_pk)
            sealing, key = fmt.SEAL_SESSION, crypto.session_key(self.session_mix, shared, eph, self.data_pk)
        nonce = os.urandom(24)
        header = fmt.BLOB_MAGIC + bytes([btype, sealing, 0, 0]) + eph + nonce
        ct = crypto.aead_encrypt(key, nonce, inner, header + blob_id)
        return header + ct + crypto.keyed_hash(self.mac_key, blob_id, header, ct)

    def _seal_inner_v2(self, btype: int, pid: bytes, inner: bytes) -> bytes:
        from rekkord.format_v2 import BLOB_MAGIC_V2, SEAL_CONVERGENT

        codec = self.codec
        if btype == fmt.T_DATA:
            key, sealing, eph = crypto.keyed_hash(codec._conv, pid), SEAL_CONVERGENT, bytes(32)
        elif btype == fmt.T_REFLIST:
            key, sealing, eph = self.list_key, fmt.SEAL_LIST, bytes(32)
        else:
            key, sealing, eph = codec._session_key, fmt.SEAL_SESSION, codec._eph_pk
        nonce = os.urandom(24)
        header = BLOB_MAGIC_V2 + bytes([btype, sealing, 0, 0]) + eph + nonce
        return header + crypto.aead_encrypt(key, nonce, inner, header)

    def put_inner(self, btype: int, inner: bytes) -> tuple[bytes, bytes, int]:
        """Store a blob with this exact INNER: (name, key for extents, size)."""
        pid = os.urandom(32)
        raw = self.seal_inner(btype, pid, inner)
        if self.v2:
            from rekkord.format_v2 import name_of

            name = name_of(raw)
        else:
            name = pid
        self.put_blob(name, raw, overwrite=True)
        return name, (pid if self.v2 and btype == fmt.T_DATA else b""), len(raw)

    def put_blob(self, blob_id: bytes, raw: bytes, *, overwrite: bool = False) -> int:
        self.storage.write(fmt.blob_name(blob_id), raw, exclusive=not overwrite)
        return len(raw)

    def blob(self, btype: int, plaintext: bytes, **kw) -> tuple[bytes, int]:
        bid, raw = self.seal(btype, plaintext, **kw)
        self.put_blob(bid, raw, overwrite=True)
        return bid, len(raw)

    def data(self, content: bytes) -> list:
        """Data blobs for ``content`` cut like a save would; returns extents."""
        from rekkord.index import Extent

        out = []
        if len(content) < self.params.min_size:
            bid, _ = self.blob(fmt.T_DATA, content)
            return [Extent(bid, 0, len(content), self.key_of(fmt.T_DATA, content))] if content else []
        for ch in Chunker(self.params, chunker_seed(self.id_key)).cut(content):
            bid, _ = self.blob(fmt.T_DATA, bytes(ch))
            out.append(Extent(bid, 0, len(ch), self.key_of(fmt.T_DATA, bytes(ch))))
        return out

    def chunks(self, content: bytes) -> list[bytes]:
        """The data blob plaintexts an honest save of a file holding ``content`` makes."""
        if len(content) < self.params.min_size:
            return [content]
        return [bytes(c) for c in Chunker(self.params, chunker_seed(self.id_key)).cut(content)]

    def chunk_ids(self, content: bytes) -> list[bytes]:
        """The names an honest save of a file holding ``content`` will use
        first (what a write key can predict for content it knows)."""
        return [self.predicted_names(fmt.T_DATA, c)[0] for c in self.chunks(content)]

    def index(self, entries: list[Entry] | bytes, pieces: int = 1) -> list[list]:
        """Index blobs holding ``entries`` (or a raw index stream)."""
        stream = entries if isinstance(entries, (bytes, bytearray)) else b"".join(self.ix.encode(e) for e in entries)
        if not stream:
            bid, size = self.blob(fmt.T_INDEX, b"")
            return [[bid.hex(), size]]
        step = -(-len(stream) // pieces)
        out = []
        for i in range(0, len(stream), step):
            bid, size = self.blob(fmt.T_INDEX, bytes(stream[i:i + step]))
            out.append([bid.hex(), size])
        return out

    def reflist(self, blob_ids) -> list[list]:
        recs = [(b, self.storage.stat(fmt.blob_name(b)) or 1) for b in dict.fromkeys(blob_ids)]
        bid, size = self.blob(fmt.T_REFLIST, fmt.pack_reflist(recs))
        return [[bid.hex(), size]]

    # ---- records -----------------------------------------------------------------

    def record(self, channel: str = "nightly", index: list | None = None, reflist: list | None = None, *,
               time_ns: int | None = None, host: str = "victim", sid: str | None = None, override: dict | None = None,
               **extra) -> str:
        """A snapshot record sealed to the public log key with this key's
        psk mix and signed by this key's own signing key."""
        sid = sid or os.urandom(16).hex()
        rec = {"v": 1, "id": sid, "repo": self.config["repo"], "kid": self.kid, "channel": channel,
               "time_ns": time_ns if time_ns is not None else 2_000_000_000 * 10**9, "host": host, "user": "root",
               "tags": [], "index": index or [], "reflist": reflist or [], "stats": {}, "linked_flag": True}
        rec.update(extra)
        rec.update(override or {})
        self.put_record(sid, json.dumps(rec, sort_keys=True, separators=(",", ":")).encode())
        return sid

    def put_record(self, sid: str, body: bytes) -> None:
        """Seal and sign any body (bytes, not necessarily JSON)."""
        sig = crypto.sign(self.sign_seed, b"rekkord snapshot v1\0" + sid.encode() + b"\0" + body)
        plaintext = struct.pack("<I", len(body)) + body + sig
        eph_sk, eph_pk = crypto.new_ephemeral()
        key = crypto.session_key(self.log_mix, crypto.x25519(eph_sk, self.log_pk), eph_pk, self.log_pk)
        nonce = os.urandom(24)
        header = fmt.SNAP_MAGIC + eph_pk + nonce
        self.storage.write(f"snapshots/{sid}", header + crypto.aead_encrypt(key, nonce, plaintext,
                                                                            header + sid.encode()), exclusive=False)

    def annotation(self, sid: str, *, aid: str | None = None, name: str | None = None, **change) -> str:
        """A tag annotation (``add``/``remove`` or ``set``) for snapshot
        ``sid``, sealed to the public log key with this key's psk mix and
        signed by this key; stored under ``name`` (default: its own)."""
        aid = aid or os.urandom(16).hex()
        body = json.dumps({"v": 1, "id": aid, "repo": self.config["repo"], "kid": self.kid, "snapshot": sid,
                           "time_ns": 2_000_000_000 * 10**9, **change}, sort_keys=True, separators=(",", ":")).encode()
        sig = crypto.sign(self.sign_seed, b"rekkord annotation v1\0" + aid.encode() + b"\0" + body)
        plaintext = struct.pack("<I", len(body)) + body + sig
        eph_sk, eph_pk = crypto.new_ephemeral()
        key = crypto.session_key(self.log_mix, crypto.x25519(eph_sk, self.log_pk), eph_pk, self.log_pk)
        nonce = os.urandom(24)
        header = b"RKA1" + eph_pk + nonce
        name = name or f"annotations/{aid}"
        self.storage.write(name, header + crypto.aead_encrypt(key, nonce, plaintext, header + aid.encode()),
                           exclusive=False)
        return name

    def snapshot(self, entries: list[Entry], channel: str = "nightly", *, pieces: int = 1, **kw) -> str:
        """A whole snapshot: index, reference list and record."""
        ids = [x.blob for e in entries for x in e.extents]
        return self.record(channel, self.index(entries, pieces), self.reflist(ids) if ids else [], **kw)

    # ---- anything else ----------------------------------------------------------------

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        self.storage.write(name, data, exclusive=not overwrite)

    def delete(self, name: str) -> None:
        self.storage.delete(name)

    def names(self, prefix: str = "") -> list[str]:
        return sorted(n for n, _ in self.storage.list(prefix))

    def pack_cutter(self) -> PackCutter:
        return PackCutter(self.id_key)

    def index_chunker(self) -> Chunker:
        return Chunker(INDEX_PARAMS, chunker_seed(self.id_key))


def zstd_claiming(size: int) -> bytes:
    """A valid zstd frame of ``size`` zero bytes: a few kilobytes that
    decompress (or claim to) to ``size``."""
    import zstandard

    out = bytearray()

    class Sink:
        def write(self, b):
            out.extend(b)
            return len(b)

    w = zstandard.ZstdCompressor(level=1).stream_writer(Sink(), size=size, closefd=False)
    block = bytes(1 << 22)
    left = size
    while left:
        n = min(left, len(block))
        w.write(block[:n])
        left -= n
    w.flush(zstandard.FLUSH_FRAME)
    return bytes(out)


def inner(comp: int, body: bytes, *, claim_len: int | None = None, pad: int = 0) -> bytes:
    """INNER of a blob: compression byte, u64 body length (or a claimed one), body, padding."""
    return bytes([comp]) + struct.pack("<Q", len(body) if claim_len is None else claim_len) + body + bytes(pad)


def tree_state(root) -> dict:
    """Everything about a directory tree that an escape from DEST could change:
    names, types, modes, owners, times, link targets and contents."""
    out = {}
    root = os.fsencode(root)
    for dp, ds, fs in os.walk(root):
        for n in ds + fs:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            rec = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size)
            if os.path.islink(p):
                rec += (os.readlink(p),)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    rec += (f.read(),)
            out[os.path.relpath(p, root)] = rec
    st = os.lstat(root)
    out[b"."] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out

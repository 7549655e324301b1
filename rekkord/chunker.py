"""Content-defined chunking.

Large files are cut with FastCDC 2020 (the ``pyfastcdc`` Cython code; its gear
table XOR-ed with a 64-bit seed derived from the secret ``id_key``, so the
storage cannot predict boundaries).  ``tests/test_chunker.py`` cross-checks it
against a small pure-Python reference so that an upstream change can never
move boundaries silently.

Small files are not cut at all: they are packed whole into pack chunks whose
boundaries are content-defined *at file granularity* (see :class:`PackCutter`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pyfastcdc import FastCDC

from . import crypto, readworker
from .errors import UsageError

MiB = 1024 * 1024


@dataclass(frozen=True)
class ChunkerParams:
    min_size: int = 256 * 1024
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB

    def to_json(self) -> dict:
        return {"algorithm": "fastcdc2020-nc1", "min": self.min_size, "avg": self.avg_size, "max": self.max_size}

    @classmethod
    def from_json(cls, d: dict) -> "ChunkerParams":
        if d.get("algorithm", "fastcdc2020-nc1") != "fastcdc2020-nc1":
            raise ValueError(f"unknown chunker {d.get('algorithm')!r}")
        return cls(d["min"], d["avg"], d["max"])

    @classmethod
    def around(cls, avg: int) -> "ChunkerParams":
        """Parameters for an average chunk of ``avg`` bytes (``init
        --chunk-size``), shaped like the default's: min a quarter, max four
        times.  The min is also the size from which a file is cut instead of
        packed, so it stays at 64 KiB or more: smaller files are never one
        storage object each."""
        if not MIN_AVERAGE <= avg <= MAX_AVERAGE:
            raise UsageError(f"chunk size {avg} bytes: give an average between 256 KiB and 8 MiB (e.g. 512k, 2M)")
        return cls(avg // 4, avg, avg * 4)


#: The range of ``ChunkerParams.around`` (init --chunk-size).
MIN_AVERAGE = 256 * 1024
MAX_AVERAGE = 8 * MiB


#: The index stream (file metadata) is cut finer than file data so that a
#: small change re-uploads little of it.
INDEX_PARAMS = ChunkerParams(64 * 1024, 256 * 1024, 1 * MiB)


def pack_cut_key(id_key: bytes) -> bytes:
    return crypto.derive(crypto.CTX_PACK_CUT, id_key)


CTX_CHUNKER_SECRETS = "rekkord v2 2026-12 chunker secrets key"


def seal_chunker_secrets(id_key: bytes, seed: int, cut_key: bytes) -> str:
    """Another repository's chunker seed and pack cut key, for a config
    (``init --from-repo``): sealed with a key derived from this repository's
    ``id_key``, so that only the keys that chunk (write, read, full, admin)
    read them -- not the storage, not an audit key."""
    import json

    key = crypto.derive(CTX_CHUNKER_SECRETS, id_key)
    nonce = crypto.random_bytes(crypto.NONCE_SIZE)
    body = json.dumps({"seed": seed, "pack_cut_key": cut_key.hex()}).encode()
    return (nonce + crypto.aead_encrypt(key, nonce, body, b"rekkord chunker secrets")).hex()


def open_chunker_secrets(id_key: bytes, sealed: str) -> tuple[int, bytes]:
    import json

    from .errors import IntegrityError

    try:
        raw = bytes.fromhex(sealed)
        key = crypto.derive(CTX_CHUNKER_SECRETS, id_key)
        body = crypto.aead_decrypt(key, raw[:crypto.NONCE_SIZE], raw[crypto.NONCE_SIZE:], b"rekkord chunker secrets")
        if body is None:
            raise ValueError
        d = json.loads(bytes(body))
        seed, cut = d["seed"], bytes.fromhex(d["pack_cut_key"])
        if type(seed) is not int or not 0 < seed < 1 << 63 or len(cut) != 32:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("config: the shared chunker secrets cannot be opened (damaged, or another "
                             "repository's)") from None
    return seed, cut


def chunker_seed(id_key: bytes) -> int:
    # 63 bits: pyfastcdc shifts the seed left by one inside a uint64.
    seed = int.from_bytes(crypto.derive(crypto.CTX_CHUNKER_SEED, id_key, 8), "little") & ((1 << 63) - 1)
    return seed or 1


class Chunker:
    def __init__(self, params: ChunkerParams, seed: int):
        self.params = params
        self.seed = seed
        self._cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                            normalized_chunking=1, seed=seed)

    def cut(self, data) -> Iterator[memoryview]:
        """Cut a whole buffer; yields views into it."""
        for c in self._cdc.cut_buf(data):
            yield c.data

    def cut_stream(self, readinto_obj) -> Iterator[bytes]:
        """Cut a stream (an object with ``readinto``); yields fresh ``bytes``."""
        for c in self._cdc.cut_stream(readinto_obj):
            yield bytes(c.data)

    def cut_file(self, f, size: int) -> Iterator[bytes]:
        """Cut an unbuffered file whose size is about ``size``: the same
        chunks as :meth:`cut_stream`.  pyfastcdc's stream chunker allocates
        and zero-fills a window of twice the maximum chunk size (8 MiB by
        default) for every stream, which for the many files of a few
        hundred KiB cost more than reading them: a file up to that size is
        read whole (no zero-filling) and cut in place, and a file of one
        chunk is handed on as read, without a copy."""
        limit = 2 * self.params.max_size
        if size > limit:
            yield from self.cut_stream(f)
            return
        parts = []
        n = 0
        while n <= limit:
            # (the size and one byte more; past it, a small read to see the end)
            b = f.read(size + 1 - n if n < size else min(1 << 16, limit + 1 - n))
            if not b:
                break
            parts.append(b)
            n += len(b)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if n > limit:  # (it grew while it was read: the rest as a stream)
            yield from self.cut_stream(_Prefixed(data, f))
            return
        views = self._cdc.cut_buf(data)
        for c in views:
            v = c.data
            yield data if len(v) == len(data) else bytes(v)


class _Prefixed:
    """``readinto`` from ``head``, then from ``f``."""

    def __init__(self, head: bytes, f):
        self.head = memoryview(head)
        self.f = f

    def readinto(self, b) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.f.readinto(b)


class StreamCutter:
    """Incremental CDC over a stream that arrives in pieces (the index).

    ``feed`` returns the chunks that are certainly complete; ``finish`` returns
    the rest.  The result equals cutting the concatenation in one go.
    """

    def __init__(self, chunker: Chunker):
        self.chunker = chunker
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        if len(self.buf) < 2 * self.chunker.params.max_size:
            return []
        data = bytes(self.buf)
        out = []
        pos = 0
        limit = len(data) - self.chunker.params.max_size
        for view in self.chunker.cut(data):
            if pos > limit:  # this cut could still move with more input
                break
            out.append(bytes(view))
            pos += len(view)
        del self.buf[:pos]
        return out

    def finish(self) -> list[bytes]:
        out = [bytes(v) for v in self.chunker.cut(bytes(self.buf))]
        self.buf = bytearray()
        return out


class RecordCutter:
    """Cuts the index stream into index blobs that start and end at record
    boundaries wherever it can, so that after a lost blob a reader takes up
    the next one at its first byte (rekkord/snapshot.py): CDC picks a point
    (the same as :class:`StreamCutter`'s first cut), and the cut moves to the
    end of the record holding it, unless that passes the maximum; then it
    goes to the last record end before the point (at least the minimum
    size), else it stays where CDC put it (inside a record larger than a
    blob).  The cuts depend only on the content, so unchanged parts of an
    index make the same blobs in every save."""

    def __init__(self, chunker: Chunker):
        self.chunker = chunker
        self.buf = bytearray()
        self.ends: list[int] = []  # record ends in buf

    def feed(self, record) -> list[bytes]:
        self.buf += record
        self.ends.append(len(self.buf))
        out = []
        while len(self.buf) >= 2 * self.chunker.params.max_size:
            out.append(self._cut())
        return out

    def finish(self) -> list[bytes]:
        out = []
        while self.buf:
            out.append(self._cut())
        return out

    def _cut(self) -> bytes:
        p = self.chunker.params
        window = bytes(self.buf[:p.max_size])
        point = len(next(iter(self.chunker.cut(window))))
        import bisect

        ends = self.ends
        i = bisect.bisect_left(ends, point)
        if i < len(ends) and ends[i] <= p.max_size:
            cut = ends[i]
        elif i > 0 and ends[i - 1] >= p.min_size:
            cut = ends[i - 1]
        else:
            cut = point
        chunk = bytes(self.buf[:cut])
        del self.buf[:cut]
        j = bisect.bisect_right(ends, cut)
        self.ends = [e - cut for e in ends[j:]]
        return chunk


class PackCutter:
    """Decides where pack chunks of small files end.

    After a file is appended, the pack is closed when it holds at least
    ``min_size`` bytes and a keyed hash of the file's content has its low
    ``bits`` bits zero, or when it reaches ``max_size`` bytes or
    ``max_files`` files.  The rule depends only on content, so the same run
    of files packs the same way in every save (dedup without a cache), and a
    changed file disturbs only its own pack.
    """

    def __init__(self, id_key: bytes | None, *, min_size: int = 512 * 1024, max_size: int = 4 * MiB,
                 bits: int = 3, max_files: int = 4096, key: bytes | None = None):
        """``key``: the pack cut key itself (a repository sharing another's
        chunking, ``init --from-repo``); else derived from ``id_key``."""
        self.key = key if key is not None else crypto.derive(crypto.CTX_PACK_CUT, id_key)
        self.min_size = min_size
        self.max_size = max_size
        self.mask = (1 << bits) - 1
        self.max_files = max_files

    def cut_mark(self, file_data) -> bool:
        """The content half of the rule: whether this file may end a pack.
        (The saver's readers compute it, rekkord/readworker.py.)"""
        return readworker.cut_mark(self.key, self.mask, file_data)

    def should_cut_marked(self, pack_size: int, pack_files: int, mark: bool) -> bool:
        if pack_size >= self.max_size or pack_files >= self.max_files:
            return True
        return pack_size >= self.min_size and mark

    def should_cut(self, pack_size: int, pack_files: int, file_data: bytes) -> bool:
        return self.should_cut_marked(pack_size, pack_files, self.cut_mark(file_data))

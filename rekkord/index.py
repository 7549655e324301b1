"""The snapshot index: one record per file system entry, in depth-first order.

Record layout (format v1, little endian)::

    u32  length of the rest of the record
    u8   kind (see K_*)
    u8   flags (F_*)
    u16  path length, then the path: bytes, relative, '/'-separated
    u32 mode, u32 uid, u32 gid
    i64 mtime_ns, i64 atime_ns
    u64 size, u64 rdev
    u8  user name length, name; u8 group name length, name
    u16 target length, target (symlink target, or hardlink's first path)
    u16 xattr count, each: u16 name length, name, u32 value length, value
    u32 extent count, each: 32-byte blob id, u32 offset, u32 length

A file's content is the concatenation of its extents' byte ranges.
"""

from __future__ import annotations

import stat as statmod
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import IntegrityError
from .schema import MAX_INDEX_RECORD

K_FILE = 1
K_DIR = 2
K_SYMLINK = 3
K_HARDLINK = 4
K_FIFO = 5
K_CHAR = 6
K_BLOCK = 7
K_SOCKET = 8
KIND_NAMES = {K_FILE: "file", K_DIR: "dir", K_SYMLINK: "symlink", K_HARDLINK: "hardlink",
              K_FIFO: "fifo", K_CHAR: "chardev", K_BLOCK: "blockdev", K_SOCKET: "socket"}

F_UNREADABLE = 1  # content could not be read; size is what stat said
F_CHANGED = 2  # the file changed while it was read; content may be inconsistent
F_PARTIAL = 4  # reading stopped part-way through (I/O error)
F_LINKED = 8  # a regular file with other hard links later in the index (restore keeps its path)
F_PROBLEMS = F_UNREADABLE | F_CHANGED | F_PARTIAL

_HEAD = struct.Struct("<BBH")
_META = struct.Struct("<IIIqqQQ")
_EXT = struct.Struct("<32sII")
_EXT2 = struct.Struct("<32s32sII")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_NO_XATTRS = struct.Struct("<HI")  # an xattr count and the extent count after it
EXTENT_SIZE = _EXT.size


@dataclass(slots=True)
class Extent:
    blob: bytes  # the blob's reference: its name (v1: its keyed plaintext id; v2: the hash of its bytes)
    offset: int
    length: int
    key: bytes = b""  # v2: the blob's keyed plaintext id, from which its key is derived (b"" in v1)


@dataclass(slots=True)
class Entry:
    kind: int
    path: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    atime_ns: int = 0
    size: int = 0
    rdev: int = 0
    user: bytes = b""
    group: bytes = b""
    target: bytes = b""
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)
    extents: list[Extent] = field(default_factory=list)
    flags: int = 0

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]

    @property
    def parent(self) -> bytes:
        return self.path.rsplit(b"/", 1)[0] if b"/" in self.path else b""

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, "?")

    @property
    def has_content(self) -> bool:
        return self.kind in (K_FILE, K_HARDLINK)

    def type_char(self) -> str:
        return {K_DIR: "d", K_SYMLINK: "l", K_FIFO: "p", K_CHAR: "c", K_BLOCK: "b", K_SOCKET: "s"}.get(self.kind, "-")

    def mode_string(self) -> str:
        return self.type_char() + statmod.filemode(self.mode)[1:]


def kind_from_mode(mode: int) -> int:
    if statmod.S_ISREG(mode):
        return K_FILE
    if statmod.S_ISDIR(mode):
        return K_DIR
    if statmod.S_ISLNK(mode):
        return K_SYMLINK
    if statmod.S_ISFIFO(mode):
        return K_FIFO
    if statmod.S_ISCHR(mode):
        return K_CHAR
    if statmod.S_ISBLK(mode):
        return K_BLOCK
    if statmod.S_ISSOCK(mode):
        return K_SOCKET
    raise ValueError(f"unknown file type {mode:o}")


class IndexFormat:
    """The index record layout of one format version: v1 extents are
    (blob id 32, offset u32, length u32), 40 bytes; v2 extents are (name 32,
    plaintext id 32, offset u32, length u32), 72 bytes."""

    def __init__(self, version: int):
        self.version = version
        self.wide = version >= 2
        self.ext = _EXT2 if self.wide else _EXT
        self.extent_size = self.ext.size

    def _unpack_extent(self, buf, o: int) -> Extent:
        if self.wide:
            b, k, off, n = self.ext.unpack_from(buf, o)
            return Extent(b, off, n, k)
        return Extent(*self.ext.unpack_from(buf, o))

    def encode(self, e: Entry, extents: bytes | None = None) -> bytes:
        """The record of ``e``; ``extents``, if given, is
        ``encode_extents(e.extents)`` already made (a save keeps it for the
        stat cache too)."""
        if extents is None:
            extents = self.encode_extents(e.extents)
        parts = [
            _HEAD.pack(e.kind, e.flags, len(e.path)), e.path,
            _META.pack(e.mode, e.uid, e.gid, e.mtime_ns, e.atime_ns, e.size, e.rdev),
            _U8.pack(len(e.user)), e.user, _U8.pack(len(e.group)), e.group,
            _U16.pack(len(e.target)), e.target,
        ]
        if e.xattrs:
            parts.append(_U16.pack(len(e.xattrs)))
            for k, v in e.xattrs:
                parts += (_U16.pack(len(k)), k, _U32.pack(len(v)), v)
            parts.append(_U32.pack(len(e.extents)))
        else:
            parts.append(_NO_XATTRS.pack(0, len(e.extents)))
        parts.append(extents)
        body = b"".join(parts)
        return _U32.pack(len(body)) + body

    def decode_one(self, buf, pos: int) -> tuple[Entry, int]:
        """The record at ``pos`` and the offset after it.  Lengths and counts are
        checked against the record's own length (and the format's limits) before
        anything is allocated for them."""
        try:
            (n,) = struct.unpack_from("<I", buf, pos)
            end = pos + 4 + n
            if n > MAX_INDEX_RECORD:
                raise IntegrityError(f"index record is too large ({n} bytes)")
            if end > len(buf):
                raise IntegrityError("index record runs past the end of the index")
            p = pos + 4
            kind, flags, plen = _HEAD.unpack_from(buf, p)
            p += 4
            if p + plen > end:
                raise IntegrityError("index record has a bad path length")
            path = bytes(buf[p:p + plen])
            p += plen
            mode, uid, gid, mtime, atime, size, rdev = _META.unpack_from(buf, p)
            p += _META.size
            ul = buf[p]
            user = bytes(buf[p + 1:p + 1 + ul])
            p += 1 + ul
            gl = buf[p]
            group = bytes(buf[p + 1:p + 1 + gl])
            p += 1 + gl
            (tl,) = struct.unpack_from("<H", buf, p)
            target = bytes(buf[p + 2:p + 2 + tl])
            p += 2 + tl
            (nx,) = struct.unpack_from("<H", buf, p)
            p += 2
            if p + 6 * nx > end:
                raise IntegrityError("index record has a bad xattr count")
            xattrs = []
            for _ in range(nx):
                (kl,) = struct.unpack_from("<H", buf, p)
                k = bytes(buf[p + 2:p + 2 + kl])
                p += 2 + kl
                (vl,) = struct.unpack_from("<I", buf, p)
                if p + 4 + vl > end:
                    raise IntegrityError("index record has a bad xattr length")
                v = bytes(buf[p + 4:p + 4 + vl])
                p += 4 + vl
                xattrs.append((k, v))
            (ne,) = struct.unpack_from("<I", buf, p)
            p += 4
            es = self.ext.size
            if p + ne * es != end:
                raise IntegrityError("index record has a bad length")
            extents = [self._unpack_extent(buf, p + i * es) for i in range(ne)]
        except (struct.error, IndexError):
            raise IntegrityError("damaged index record") from None
        return Entry(kind, path, mode, uid, gid, mtime, atime, size, rdev, user, group, target,
                     xattrs, extents, flags), end

    def encode_extents(self, extents: list[Extent]) -> bytes:
        pack = self.ext.pack
        if self.wide:
            return b"".join([pack(x.blob, x.key, x.offset, x.length) for x in extents])
        return b"".join([pack(x.blob, x.offset, x.length) for x in extents])

    def decode_extents(self, data: bytes) -> list[Extent]:
        es = self.ext.size
        if len(data) % es:
            raise IntegrityError("damaged extent list")
        return [self._unpack_extent(data, o) for o in range(0, len(data), es)]


V1 = IndexFormat(1)
V2 = IndexFormat(2)
#: Format version 1's layout as plain functions (and for code that predates v2).
encode = V1.encode
decode_one = V1.decode_one
encode_extents = V1.encode_extents
decode_extents = V1.decode_extents


def index_format(version: int) -> IndexFormat:
    return V2 if version >= 2 else V1


def decode_all(buf) -> Iterator[Entry]:
    pos = 0
    n = len(buf)
    while pos < n:
        e, pos = decode_one(buf, pos)
        yield e

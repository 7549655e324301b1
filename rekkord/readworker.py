"""What a reader process runs: ``python -S -E -c`` with this module alone
(rekkord/readers.py starts it), so that each worker costs ~9 MiB, not the
~17 of an interpreter with site-packages, rekkord.index and friends.

It reads requests from stdin and answers on stdout, in order: a 4-byte
little-endian length, then a marshal-ed value (only bytes, ints, strings,
lists and tuples pass, between our own processes).  The first request is
BatchReader.args(); each next one a batch of files, each answered with one
(data, flags, message, xattrs, pack-cut mark, bytes read) per file.  The
save's read threads use the same BatchReader when there are few files.
"""

from __future__ import annotations

import marshal
import os
import struct
import sys

import blake3

# The entry flags of rekkord.index (a test checks that they are the same),
# not imported: the worker does without rekkord.index and its imports.
F_UNREADABLE = 1
F_CHANGED = 2
F_PARTIAL = 4

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)


def open_nofollow(path: bytes) -> int:
    try:
        return os.open(path, _OPEN_FLAGS | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        return os.open(path, _OPEN_FLAGS)  # O_NOATIME needs ownership


def xattrs_of(target: bytes | int) -> list[tuple[bytes, bytes]]:
    """Extended attributes of a path (not following symlinks) or an open fd."""
    follow = isinstance(target, int)  # fds take no follow_symlinks=False
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return []
    out = []
    for n in sorted(names):
        try:
            out.append((n.encode(), os.getxattr(target, n, follow_symlinks=follow)))
        except OSError:
            continue
    return out


def cut_mark(key: bytes, mask: int, data) -> bool:
    """The content half of the pack cutter's rule (docs/format.md: khash of
    the file under the pack cut key, its first byte under the mask, zero):
    whether this file may end a pack.  chunker.PackCutter uses it too."""
    return blake3.blake3(data, key=key).digest(1)[0] & mask == 0


def request(path: bytes, st) -> tuple[bytes, int, int, int, int]:
    """What a reader needs of a file the walk saw: its path and the stat
    fields that tell whether it changed while it was read."""
    return path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def changed(size: int, mtime_ns: int, ctime_ns: int, ino: int, after) -> bool:
    return (size != after.st_size or mtime_ns != after.st_mtime_ns or ctime_ns != after.st_ctime_ns
            or ino != after.st_ino)


def read_small(path: bytes, size: int, mtime_ns: int, ctime_ns: int, ino: int, limit: int,
               xattrs: list | None) -> tuple[bytes | None, int, str | None, int]:
    """A whole small file: (data, flags, message, bytes read).  With
    ``xattrs`` (a list), its extended attributes are appended, read through
    the open descriptor (no second path lookup).  At most ``limit`` bytes
    and a little more are read, whatever the file grew to."""
    try:
        fd = open_nofollow(path)
    except OSError as e:
        if xattrs is not None:
            xattrs.extend(xattrs_of(path))
        return None, F_UNREADABLE, f"cannot open: {e.strerror}", 0
    try:
        if xattrs is not None:
            xattrs.extend(xattrs_of(fd))
        parts = []
        total = 0
        flags = 0
        msg = None
        try:
            while True:
                want = max(size - total + 1, 65536)
                b = os.read(fd, want)
                if not b:
                    break
                parts.append(b)
                total += len(b)
                if total > limit or (total == size and len(b) < want):
                    # (at the size the walk saw, a read that came back short:
                    # no second read to see the end, the fstat below tells
                    # whether the file grew; one system call a file fewer)
                    break
        except OSError as e:
            flags |= F_PARTIAL
            msg = f"read error after {total} bytes: {e.strerror}"
        if changed(size, mtime_ns, ctime_ns, ino, os.fstat(fd)) or total != size:
            flags |= F_CHANGED
            msg = msg or "file changed while it was being read"
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data, flags, msg, total
    finally:
        os.close(fd)


class BatchReader:
    """Reads a batch of small files: for each, (data, flags, message,
    xattrs, pack-cut mark, bytes read)."""

    def __init__(self, limit: int, cut_key: bytes, cut_mask: int, xattrs: bool):
        self.limit = limit
        self.cut_key = cut_key
        self.cut_mask = cut_mask
        self.xattrs = xattrs

    def args(self) -> tuple:
        return self.limit, self.cut_key, self.cut_mask, self.xattrs

    def mark(self, data: bytes) -> bool:
        return cut_mark(self.cut_key, self.cut_mask, data)

    def read(self, files: list[tuple[bytes, int, int, int, int]]) -> list[tuple]:
        out = []
        for path, size, mtime_ns, ctime_ns, ino in files:
            xattrs: list | None = [] if self.xattrs else None
            data, flags, msg, total = read_small(path, size, mtime_ns, ctime_ns, ino, self.limit, xattrs)
            out.append((data, flags, msg, xattrs or [], bool(data) and self.mark(data), total))
        return out


def _send(f, value) -> None:
    data = marshal.dumps(value)
    f.write(struct.pack("<I", len(data)) + data)
    f.flush()


def _recv(f):
    head = f.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack("<I", head)
    data = f.read(n)
    if len(data) < n:
        return None
    return marshal.loads(data)


def serve(rfile, wfile) -> None:
    args = _recv(rfile)
    if args is None:
        return
    reader = BatchReader(*args)
    while True:
        files = _recv(rfile)
        if files is None:
            return
        _send(wfile, reader.read(files))


def main() -> None:
    import signal

    # Ctrl-C reaches the whole process group: the save handles it and closes
    # our stdin. A save that died closes it too (or leaves us writing to a
    # closed pipe): end quietly either way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, ConnectionResetError):
        pass
    os._exit(0)  # (no flush of a stdout whose reader is gone)


if __name__ == "__main__":
    main()

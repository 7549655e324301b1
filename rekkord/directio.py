"""Writing a file front to back without going through the page cache.

A buffered ``write`` copies every byte into page-cache pages the kernel must
first find (and, in a virtual machine, the host must first back), then writes
them out from a flusher thread.  ``O_DIRECT`` hands the device the writer's own
buffer instead: no copy into the cache, no new pages, and the data written does
not push the running system's working set out of memory -- what a large
restore onto a live server wants.  The price is that each write waits for the
device, so :class:`DirectWriter` writes whole aligned buffers of
:data:`BUFFER` bytes, and the caller keeps several files in flight.

``O_DIRECT`` wants the buffer's address, the file offset and the length
aligned to the device's block; a Python ``bytes`` is not, so data is copied
into a page-aligned ``mmap`` buffer (one per thread, reused), written from
there in multiples of :data:`ALIGN`, and the file's last partial block goes
through the page cache after ``O_DIRECT`` is cleared.  Aligned all-zero
blocks of ``hole`` bytes are left as holes.  A file system that refuses
``O_DIRECT`` (or its alignment) is written the ordinary way.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading

from . import libc

MIN_SIZE = 256 * 1024  # files (restore) and objects (local storage) this large are written past the cache
ALIGN = 4096  # covers 512- and 4096-byte logical blocks
BUFFER = 1 << 20  # bytes per direct write (4 MiB: no faster)
_O_DIRECT = getattr(os, "O_DIRECT", 0)

_local = threading.local()


# File systems on a block device whose O_DIRECT writes go to the device
# (statfs f_type): ext2/3/4, XFS, btrfs, f2fs.  Elsewhere -- NFS and SMB (each
# write a synchronous round trip), FUSE, tmpfs, overlay, ZFS (which may take the
# flag and buffer anyway) -- the page cache does the job.
FS_TYPES = frozenset({0xEF53, 0x58465342, 0x9123683E, 0xF2F52010})


def fs_type(fd: int) -> int | None:
    """The ``f_type`` of the file system holding ``fd`` (Linux), else None."""
    fstatfs = libc.function("fstatfs", (ctypes.c_int, ctypes.c_void_p))
    if fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct statfs: f_type (a long) comes first
    if fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def supported(fd: int) -> bool:
    """Whether files on ``fd``'s file system are worth writing with O_DIRECT."""
    return bool(_O_DIRECT) and fs_type(fd) in FS_TYPES


def _buffer() -> mmap.mmap:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = mmap.mmap(-1, BUFFER)  # page-aligned
    return buf


class Choice:
    """Whether to write with O_DIRECT, for one restore or one storage: settled
    by the file system of the first file asked about, and off from the first
    file that refuses the flag."""

    def __init__(self, enabled: bool = True):
        self._on: bool | None = None if enabled else False  # (None: not yet known)

    def writer(self, fd: int, hole: int) -> DirectWriter | None:
        """A :class:`DirectWriter` for ``fd``, or None: write it buffered."""
        if self._on is None:
            self._on = supported(fd)
        if not self._on:
            return None
        try:
            return DirectWriter(fd, hole)
        except DirectUnsupported:
            self._on = False
            return None


class DirectUnsupported(Exception):
    """This file (system) does not take ``O_DIRECT``: write it buffered."""


class DirectWriter:
    """Writes ``fd`` (open for writing, empty) front to back through ``O_DIRECT``.

    ``write(data, pos)`` writes at ``pos``, at or after the end of what was
    written before (what lies between is zeros: a hole where aligned, as a
    damaged extent leaves), ``finish`` writes what remains and returns the
    end of the last byte written (less than the file's length when it ends
    in a hole: the caller then sets the size with ``ftruncate``).  Raises
    :class:`DirectUnsupported` from the constructor when the file cannot be
    switched to ``O_DIRECT``; a later refusal of a direct write (``EINVAL``)
    switches the rest of the file to buffered writes.  Other ``OSError`` pass
    through."""

    def __init__(self, fd: int, hole: int):
        if not _O_DIRECT:
            raise DirectUnsupported("no O_DIRECT on this platform")
        self.fd = fd
        self.hole = hole
        self.zero = bytes(hole)  # (hole 0: no holes)
        self._flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, self._flags | _O_DIRECT)
        except OSError as e:
            raise DirectUnsupported(e.strerror) from None
        self.direct = True
        self.buf = _buffer()
        self.view = memoryview(self.buf)
        self.fill = 0  # bytes in the buffer
        self.base = 0  # file offset of the buffer's first byte
        self.end = 0  # end of the last byte written

    def write(self, data, pos: int) -> None:
        gap = pos - (self.base + self.fill)
        if gap < 0:
            raise ValueError(f"DirectWriter writes front to back: {pos} is before {self.base + self.fill}")
        if gap:
            self._zeros(gap)
        mv = memoryview(data).cast("B")
        while mv:
            k = min(len(mv), BUFFER - self.fill)
            self.view[self.fill:self.fill + k] = mv[:k]
            self.fill += k
            mv = mv[k:]
            if self.fill == BUFFER:
                self._flush(BUFFER)

    def _zeros(self, n: int) -> None:
        while n > 0:
            k = min(n, BUFFER - self.fill)
            self.view[self.fill:self.fill + k] = bytes(k)
            self.fill += k
            n -= k
            if self.fill == BUFFER:
                self._flush(BUFFER)

    def finish(self) -> int:
        whole = self.fill & ~(ALIGN - 1)
        if whole:
            self._flush(whole)
        self._buffered()
        if self.fill:
            self._pwrite(self.view[:self.fill], self.base)
            self.end = self.base + self.fill
            self.base += self.fill
            self.fill = 0
        self.view.release()
        return self.end

    def _buffered(self) -> None:
        if self.direct:
            self.direct = False
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)

    def _flush(self, n: int) -> None:
        """Writes the buffer's first ``n`` bytes (a multiple of ALIGN)."""
        buf, hole, zero = self.buf, self.hole, self.zero
        # Quick path, as nearly always for real data: no zero block at the
        # start, middle or end.
        if not hole or n < hole or (buf[:hole] != zero and buf[n - hole:n] != zero
                        and buf[(n // 2) & -hole:((n // 2) & -hole) + hole] != zero):
            self._pwrite(self.view[:n], self.base)
            self.end = self.base + n
        else:
            # Blocks aligned to the file's offsets (BUFFER is a multiple of hole).
            start = 0
            i = 0
            while i < n:
                j = min(i + hole, n)
                if j - i == hole and (self.base + i) % hole == 0 and buf[i:j] == zero:
                    if start < i:
                        self._pwrite(self.view[start:i], self.base + start)
                        self.end = self.base + i
                    start = j
                i = j
            if start < n:
                self._pwrite(self.view[start:n], self.base + start)
                self.end = self.base + n
        rest = self.fill - n
        if rest:
            self.view[:rest] = self.view[n:self.fill]
        self.fill = rest
        self.base += n

    def _pwrite(self, mv: memoryview, off: int) -> None:
        while mv:
            try:
                k = os.pwrite(self.fd, mv, off)
            except OSError as e:
                if e.errno != errno.EINVAL or not self.direct:
                    raise
                self._buffered()  # the file system refuses this alignment
                continue
            if k <= 0:
                raise OSError(errno.EIO, "short write")
            mv = mv[k:]
            off += k

"""``rekkord dump``: a directory of a snapshot as a tar or zip stream.

Like restic's ``dump``: directories, files, symbolic links, hard links
(tar), devices and FIFOs (tar) with their modes, owners (numeric and by
name), times and extended attributes (tar: PAX ``SCHILY.xattr.*`` records,
as GNU tar writes them).  The archive is written as a stream: nothing is
held in memory beyond the blobs in flight.

Every name comes from a snapshot index, which is hostile input: a name in
the archive is relative, never absolute, never holds a ``.`` or ``..``
component, an empty component or a NUL.  An entry whose path breaks these
rules is left out, with a warning (and ``DumpStats.skipped``); so is a hard
link whose target does.  A file whose content cannot be read back is dumped
with zeros where the damage is, with a warning (``DumpStats.damaged``): the
archive stays well-formed and the rest of it intact.
"""

from __future__ import annotations

import io
import os
import stat as statmod
import struct
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from .diff import ContentReader
from .errors import IntegrityError, UsageError
from .index import F_UNREADABLE, K_BLOCK, K_CHAR, K_DIR, K_FIFO, K_FILE, K_HARDLINK, K_SYMLINK, Entry
from .repository import Repository, Snapshot
from .snapshot import BlobFetcher, iter_entries, normalize_subpath, select

ARCHIVES = ("tar", "zip")


@dataclass
class DumpStats:
    files: int = 0
    dirs: int = 0
    links: int = 0  # symbolic and hard links
    others: int = 0
    bytes: int = 0
    skipped: int = 0  # entries left out: an invalid name in the index (hostile or damaged)
    unsupported: int = 0  # entries the format cannot hold (zip: devices, FIFOs; tar, zip: sockets)
    damaged: int = 0  # files whose content could not be read in full


def safe_name(path: bytes) -> bytes | None:
    """``path`` if it is a safe relative archive name, else None."""
    if not path or b"\0" in path or path.startswith(b"/"):
        return None
    parts = path.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        return None
    return path


class _Content(io.RawIOBase):
    """A file's content for tarfile/zipfile: exactly ``size`` bytes, zeros
    where a blob cannot be read (reported once through ``on_damage``)."""

    def __init__(self, reader: ContentReader, size: int, on_damage: Callable[[str], None]):
        self.reader = reader
        self.size = size
        self.pos = 0
        self.on_damage = on_damage
        self.damaged = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.size - self.pos, 1 << 20)
        if n <= 0:
            return 0
        data = b""
        if not self.damaged:
            try:
                data = self.reader.read(self.pos, n)
            except IntegrityError as e:
                self.damaged = True
                self.on_damage(str(e))
        data = data[:n] + bytes(n - len(data[:n]))
        b[:n] = data
        self.pos += n
        return n


class _Writer:
    def __init__(self, out, stats: DumpStats, warn):
        self.out = out
        self.stats = stats
        self.warn = warn

    def add(self, e: Entry, name: bytes, link_to: bytes | None, content: Callable[[], _Content] | None):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class _Tar(_Writer):
    def __init__(self, out, stats, warn):
        super().__init__(out, stats, warn)
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                                errors="surrogateescape")

    def add(self, e, name, link_to, content):
        ti = tarfile.TarInfo(_text(name) + ("/" if e.kind == K_DIR else ""))
        ti.mode = e.mode & 0o7777
        ti.uid, ti.gid = e.uid, e.gid
        ti.uname, ti.gname = _text(e.user), _text(e.group)
        ti.mtime = e.mtime_ns // 1_000_000_000
        pax = {"mtime": f"{e.mtime_ns // 1_000_000_000}.{e.mtime_ns % 1_000_000_000:09d}"}
        for k, v in e.xattrs:
            pax["SCHILY.xattr." + _text(k)] = _text(v)
        ti.pax_headers = pax
        fileobj = None
        if e.kind == K_DIR:
            ti.type = tarfile.DIRTYPE
        elif e.kind == K_SYMLINK:
            ti.type = tarfile.SYMTYPE
            ti.linkname = _text(e.target)
        elif link_to is not None:
            ti.type = tarfile.LNKTYPE
            ti.linkname = _text(link_to)
        elif e.kind in (K_FILE, K_HARDLINK):
            ti.type = tarfile.REGTYPE
            fileobj = content()
            ti.size = fileobj.size
        elif e.kind in (K_CHAR, K_BLOCK):
            ti.type = tarfile.CHRTYPE if e.kind == K_CHAR else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(e.rdev), os.minor(e.rdev)
        elif e.kind == K_FIFO:
            ti.type = tarfile.FIFOTYPE
        else:
            return False
        self.tar.addfile(ti, fileobj)
        return True

    def close(self):
        self.tar.close()


def _zip_time(mtime_ns: int) -> tuple:
    t = time.localtime(max(mtime_ns // 1_000_000_000, 315532800 + 86400))  # zip's epoch is 1980
    return (max(t.tm_year, 1980),) + tuple(t[1:6])


class _Zip(_Writer):
    def __init__(self, out, stats, warn):
        super().__init__(out, stats, warn)
        self.zip = zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    def add(self, e, name, link_to, content):
        if e.kind not in (K_DIR, K_SYMLINK, K_FILE, K_HARDLINK):
            return False  # zip holds no device, FIFO or socket
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            text = name.decode("utf-8", "backslashreplace")
            self.warn(_text(name), f"name is not UTF-8: stored in the zip archive as {text!r}")
        ftype = {K_DIR: statmod.S_IFDIR, K_SYMLINK: statmod.S_IFLNK}.get(e.kind, statmod.S_IFREG)
        zi = zipfile.ZipInfo(text + ("/" if e.kind == K_DIR else ""), date_time=_zip_time(e.mtime_ns))
        zi.external_attr = ((ftype | (e.mode & 0o7777)) << 16) | (0x10 if e.kind == K_DIR else 0)
        zi.create_system = 3  # Unix: external_attr holds st_mode
        # Info-ZIP extra fields: extended timestamp (0x5455) and owner ids (0x7875).
        secs = max(0, min(e.mtime_ns // 1_000_000_000, 2**31 - 1))
        zi.extra = (struct.pack("<HHBl", 0x5455, 5, 1, secs)
                    + struct.pack("<HHBBIBI", 0x7875, 11, 1, 4, e.uid & 0xFFFFFFFF, 4, e.gid & 0xFFFFFFFF))
        if e.kind == K_DIR:
            zi.compress_type = zipfile.ZIP_STORED
            self.zip.writestr(zi, b"")
        elif e.kind == K_SYMLINK:
            zi.compress_type = zipfile.ZIP_STORED
            self.zip.writestr(zi, e.target)
        else:  # hard links become copies: zip has no links
            src = content()
            zi.file_size = src.size
            with self.zip.open(zi, "w", force_zip64=src.size >= 1 << 31) as dst:
                while True:
                    b = src.read(1 << 20)
                    if not b:
                        break
                    dst.write(b)
        return True

    def close(self):
        self.zip.close()


def dump(repo: Repository, snap: Snapshot, path: str | bytes | None, out, *, archive: str = "tar",
         rooted: bool = True, threads: int = 8, warn: Callable[[str, str], None] | None = None,
         before_archive: Callable[[], None] | None = None) -> DumpStats:
    """Write ``path`` of ``snap`` to the binary stream ``out``: a directory
    (the whole snapshot for ``None`` or ``/``) as a tar or zip archive, a
    file as its plain content (like restic).  ``before_archive()`` is called
    before the first byte of an archive (the CLI refuses a terminal there).

    ``rooted``: names are relative to ``path`` (``SNAPSHOT:PATH``, like
    restic's ``snapshot:subfolder``); otherwise they are the full paths in
    the snapshot, without the leading ``/`` (restic's ``dump SNAPSHOT PATH``)."""
    repo.key.require("read", "read files")
    if archive not in ARCHIVES:
        raise UsageError(f"unknown archive format {archive!r} (choose tar or zip)")
    warn = warn or (lambda p, m: None)
    sub = normalize_subpath(path)
    stats = DumpStats()
    writer = None
    fetcher = BlobFetcher(repo, threads, max_bytes=64 << 20)
    names: dict[bytes, bytes] = {}  # snapshot path of a hard link's target -> its archive name
    def refused(p: bytes, reason: str):  # by the validating entry stream, where there is one
        stats.skipped += 1
        warn("/" + os.fsdecode(p), f"{reason}: left out")

    try:
        for e, rel in select(_entries(repo, snap, refused), sub):
            shown = "/" + os.fsdecode(e.path)
            if not rel and sub and e.kind != K_DIR:  # one file: its content, no archive
                _plain(fetcher, e, shown, out, stats, warn)
                break
            if writer is None:
                if before_archive is not None:
                    before_archive()
                writer = (_Tar if archive == "tar" else _Zip)(out, stats, warn)
            if not rel and sub and rooted:
                continue  # the directory itself is the archive's root
            name = safe_name(rel if rooted else e.path)
            if name is None:
                stats.skipped += 1
                warn(shown, "invalid path in the snapshot index (absolute, empty, '.' or '..' component): "
                            "left out")
                continue
            link_to = None
            if e.kind == K_HARDLINK:
                if safe_name(e.target) is None:
                    stats.skipped += 1
                    warn(shown, "hard link to an invalid path in the snapshot index: left out")
                    continue
                if archive == "tar":
                    link_to = names.get(e.target)
            content = None
            if e.kind in (K_FILE, K_HARDLINK):
                if e.flags & F_UNREADABLE:
                    warn(shown, "was unreadable when it was saved: dumped empty")
                    stats.damaged += 1
                    e.size, e.extents = 0, []
                content = _content_of(fetcher, e, shown, stats, warn)
            if not writer.add(e, name, link_to, content):
                stats.unsupported += 1
                warn(shown, f"a {e.kind_name} cannot be stored in a {archive} archive: left out")
                continue
            if e.kind in (K_FILE, K_HARDLINK):
                names.setdefault(e.target if e.kind == K_HARDLINK else e.path, name)
                if link_to is not None:
                    stats.links += 1
                else:
                    stats.files += 1
                    stats.bytes += e.size
            elif e.kind == K_DIR:
                stats.dirs += 1
            elif e.kind == K_SYMLINK:
                stats.links += 1
            else:
                stats.others += 1
        if writer is None and stats.files == 0:  # an empty snapshot: still an (empty) archive
            if before_archive is not None:
                before_archive()
            writer = (_Tar if archive == "tar" else _Zip)(out, stats, warn)
        if writer is not None:
            writer.close()
    finally:
        fetcher.close()
    return stats


def _entries(repo: Repository, snap: Snapshot, on_refused):
    """The snapshot's entries, validated (what is refused goes to ``on_refused``)."""
    return iter_entries(repo, snap, on_refused=on_refused)


def _content_of(fetcher, e: Entry, shown: str, stats: DumpStats, warn):
    def content():
        def damaged(msg):
            stats.damaged += 1
            warn(shown, f"damaged ({msg}): zeros where its content is missing")

        return _Content(ContentReader(fetcher, e.extents, e.size, readahead=4), e.size, damaged)

    return content


def _plain(fetcher, e: Entry, shown: str, out, stats: DumpStats, warn) -> None:
    from .diff import file_entry

    file_entry(e, shown)  # a symlink, a device...: a clear error
    src = _content_of(fetcher, e, shown, stats, warn)()
    while True:
        b = src.read(1 << 20)
        if not b:
            break
        out.write(b)
    stats.files += 1
    stats.bytes += e.size

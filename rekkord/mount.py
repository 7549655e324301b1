"""A read-only FUSE file system over one snapshot or all of them.

Layouts::

    rekkord mount SNAPSHOT M    M/<the snapshot's paths, e.g. etc/hostname>
    rekkord mount all M         M/<channel>/<local time>_<short id>/<paths>
                                M/<channel>/latest -> <newest snapshot dir>

* The snapshot list is read at mount time (and again, at most every
  ``refresh`` seconds, when the top or a channel directory is listed).
* A snapshot's index is read only when its directory is first entered, into
  a compact in-memory tree (one slotted :class:`Node` per entry; a file keeps
  its extents as one packed ``bytes``).
* Files are read lazily: a read fetches only the blobs whose extents cover
  the requested range, plus a little read-ahead on sequential reads; decrypted
  blobs stay in a small LRU (:class:`~rekkord.snapshot.BlobFetcher`).  The
  kernel keeps pages cached (the content never changes).
* Hard links appear as independent files; symlinks, modes, owners, times,
  device numbers and xattrs are as saved.
* Unmount: Ctrl-C / SIGTERM (libfuse handles both and unmounts), or
  ``fusermount3 -u M`` / ``umount M``.

mfusepy (and libfuse3) are imported only here, only when mounting.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat as statmod
import threading
import time
from collections.abc import Callable

from .diff import ContentReader
from .errors import IntegrityError, NotFound, RekkordError, StorageError, UsageError
from .index import (
    F_UNREADABLE,
    K_BLOCK,
    K_CHAR,
    K_DIR,
    K_FIFO,
    K_FILE,
    K_HARDLINK,
    K_SOCKET,
    K_SYMLINK,
)
from .repository import Repository, Snapshot
from .snapshot import BlobFetcher, iter_entries

_IFMT = {K_FILE: statmod.S_IFREG, K_HARDLINK: statmod.S_IFREG, K_DIR: statmod.S_IFDIR,
         K_SYMLINK: statmod.S_IFLNK, K_FIFO: statmod.S_IFIFO, K_CHAR: statmod.S_IFCHR,
         K_BLOCK: statmod.S_IFBLK, K_SOCKET: statmod.S_IFSOCK}


class MountError(RekkordError):
    pass


class Node:
    """One entry of a mounted tree.  ``data``: a symlink's target, or a file's
    extents (packed, 40 bytes each); ``children``: name -> Node for
    directories (None otherwise)."""

    __slots__ = ("kind", "mode", "uid", "gid", "mtime_ns", "size", "rdev", "data", "xattrs", "children",
                 "flags")

    def __init__(self, kind: int, mode: int, uid: int = 0, gid: int = 0, mtime_ns: int = 0, size: int = 0,
                 rdev: int = 0, data: bytes = b"", xattrs=None, flags: int = 0):
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.size = size
        self.rdev = rdev
        self.data = data
        self.xattrs = xattrs
        self.flags = flags
        self.children: dict[bytes, object] | None = {} if kind == K_DIR else None

    @classmethod
    def virtual_dir(cls, mtime_ns: int) -> "Node":
        return cls(K_DIR, 0o555, os.getuid(), os.getgid(), mtime_ns)

    def attrs(self) -> dict:
        size = len(self.data) if self.kind == K_SYMLINK else self.size
        t = self.mtime_ns
        return {
            "st_mode": _IFMT.get(self.kind, statmod.S_IFREG) | self.mode,
            "st_nlink": 2 if self.kind == K_DIR else 1,
            "st_size": size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_rdev": self.rdev,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 65536,
            "st_atime": t, "st_mtime": t, "st_ctime": t,
        }


class SnapshotTree:
    """A snapshot's entries as a tree of nodes, built on first access."""

    def __init__(self, repo: Repository, snap: Snapshot):
        self.repo = repo
        self.snap = snap
        self._lock = threading.Lock()
        self._root: Node | None = None
        self.entries = 0

    def stub_attrs(self) -> dict:
        """Attributes of the snapshot's root directory, without loading."""
        return Node.virtual_dir(self.snap.time_ns).attrs()

    def root(self) -> Node:
        r = self._root
        if r is not None:
            return r
        with self._lock:
            if self._root is None:
                self._root = self._load()
            return self._root

    def _load(self) -> Node:
        root = Node.virtual_dir(self.snap.time_ns)
        root.mode = 0o755
        dirs: dict[bytes, Node] = {b"": root}
        n = 0
        for e in iter_entries(self.repo, self.snap):
            parent_path, _, name = e.path.rpartition(b"/")
            parent = dirs.get(parent_path)
            if parent is None:  # not expected (parents come first); be forgiving
                parent = self._implicit_dirs(dirs, parent_path)
            if e.kind == K_DIR:
                node = Node(K_DIR, e.mode, e.uid, e.gid, e.mtime_ns, xattrs=_xa(e.xattrs))
                old = parent.children.get(name)
                if isinstance(old, Node) and old.kind == K_DIR:  # keep children of an implicit dir
                    node.children = old.children
                dirs[e.path] = node
            elif e.kind == K_SYMLINK:
                node = Node(K_SYMLINK, e.mode or 0o777, e.uid, e.gid, e.mtime_ns, data=e.target,
                            xattrs=_xa(e.xattrs))
            elif e.kind in (K_FILE, K_HARDLINK):
                node = Node(K_FILE, e.mode, e.uid, e.gid, e.mtime_ns, e.size, data=self.repo.index.encode_extents(e.extents),
                            xattrs=_xa(e.xattrs), flags=e.flags)
            else:
                node = Node(e.kind, e.mode, e.uid, e.gid, e.mtime_ns, rdev=e.rdev, xattrs=_xa(e.xattrs))
            parent.children[name] = node
            n += 1
        self.entries = n
        return root

    def _implicit_dirs(self, dirs: dict[bytes, Node], path: bytes) -> Node:
        node = dirs[b""]
        cur = b""
        for comp in path.split(b"/"):
            cur = cur + b"/" + comp if cur else comp
            nxt = dirs.get(cur)
            if nxt is None:
                nxt = Node(K_DIR, 0o755, mtime_ns=self.snap.time_ns)
                node.children[comp] = nxt
                dirs[cur] = nxt
            node = nxt
        return node


def _xa(xattrs):
    return tuple(xattrs) if xattrs else None


def snapshot_dir_name(snap: Snapshot) -> str:
    """``2024-05-01T020000_ab12cd34`` (local time; no ':' so the name is easy
    to copy and to pass to scp)."""
    return time.strftime("%Y-%m-%dT%H%M%S", time.localtime(snap.time)) + "_" + snap.id[:8]


class SnapshotFS:
    """The file system operations (an mfusepy ``Operations``-compatible object).

    ``snaps`` is one snapshot (its tree at the mount's root) or ``None`` for
    every snapshot by channel and time."""

    use_ns = True  # times are integers in nanoseconds

    def __init__(self, repo: Repository, snap: Snapshot | None, *, cache_bytes: int = 64 << 20,
                 threads: int = 8, refresh: float = 60.0, warn: Callable[[str, str], None] | None = None):
        repo.key.require("read", "mount snapshots")
        if snap is not None and not snap.signature_ok:
            raise IntegrityError(f"snapshot {snap.id} is not trusted ({'; '.join(snap.problems)}); refusing to "
                                 "mount it")
        self.repo = repo
        self.single = snap
        self.refresh_interval = refresh
        self.warn = warn
        self.fetcher = BlobFetcher(repo, threads, max_bytes=cache_bytes)
        self._lock = threading.Lock()
        self.handles: dict[int, ContentReader] = {}
        self.fh_counter = itertools.count(1)
        self.trees: dict[str, SnapshotTree] = {}
        self.mounted_at = time.time_ns()
        self.ready = threading.Event()
        self.on_ready: Callable[[], None] | None = None
        self._last_refresh = 0.0
        if snap is not None:
            self.top: object = self._tree(snap)
        else:
            self.top = Node.virtual_dir(self.mounted_at)
            self._refresh(force=True)

    # ---- the snapshot list ----------------------------------------------------

    def _tree(self, snap: Snapshot) -> SnapshotTree:
        t = self.trees.get(snap.id)
        if t is None:
            t = self.trees[snap.id] = SnapshotTree(self.repo, snap)
        return t

    def _refresh(self, force: bool = False):
        if self.single is not None:
            return
        now = time.monotonic()
        if not force and now - self._last_refresh < self.refresh_interval:
            return
        with self._lock:
            if not force and now - self._last_refresh < self.refresh_interval:
                return
            self._last_refresh = now
            problems = []
            snaps = self.repo.snapshots(on_problem=lambda sid, msg: problems.append((sid, msg)))
            for sid, msg in problems:
                if self.warn:
                    self.warn(sid if "/" in sid else f"snapshot {sid}", msg + ("" if "/" in sid else "; not shown"))
            # Only trusted snapshots are shown (one forged, or signed by a
            # revoked key or a role that may not save, is named above).
            snaps = [s for s in snaps if s.signature_ok]
            top = Node.virtual_dir(self.mounted_at)
            for s in snaps:  # oldest first
                ch = top.children.get(s.channel.encode())
                if ch is None:
                    ch = top.children[s.channel.encode()] = Node.virtual_dir(s.time_ns)
                ch.children[snapshot_dir_name(s).encode()] = self._tree(s)
                ch.mtime_ns = max(ch.mtime_ns, s.time_ns)
            for ch in top.children.values():
                newest = max((t for t in ch.children.values()), key=lambda t: (t.snap.time_ns, t.snap.id))
                ch.children[b"latest"] = Node(K_SYMLINK, 0o777, os.getuid(), os.getgid(), newest.snap.time_ns,
                                              data=snapshot_dir_name(newest.snap).encode())
            self.top = top

    # ---- path resolution ---------------------------------------------------------

    def _resolve(self, path: str):
        node = self.top
        for comp in path.split("/"):
            if not comp:
                continue
            if isinstance(node, SnapshotTree):
                node = self._load(node)
            if node.children is None:
                raise _oserror(errno.ENOTDIR)
            node = node.children.get(os.fsencode(comp))
            if node is None:
                raise _oserror(errno.ENOENT)
        return node

    def _load(self, tree: SnapshotTree) -> Node:
        try:
            return tree.root()
        except (IntegrityError, StorageError) as e:
            if self.warn:
                self.warn(f"snapshot {tree.snap.id}", f"cannot read its index: {e}")
            raise _oserror(errno.EIO) from None

    def _node(self, path: str) -> Node:
        n = self._resolve(path)
        return self._load(n) if isinstance(n, SnapshotTree) else n

    # ---- FUSE operations ------------------------------------------------------------

    def init(self, path=None):
        self.ready.set()
        if self.on_ready:
            self.on_ready()

    def getattr(self, path: str, fh=None) -> dict:
        n = self._resolve(path)
        if isinstance(n, SnapshotTree):
            return n.root().attrs() if n._root is not None else n.stub_attrs()
        return n.attrs()

    def readdir(self, path: str, fh=None):
        if len([c for c in path.split("/") if c]) <= 1:
            self._refresh()  # the top or a channel directory: pick up new snapshots
        n = self._node(path)
        if n.children is None:
            raise _oserror(errno.ENOTDIR)
        out = [".", ".."]
        for name, child in list(n.children.items()):
            mode = statmod.S_IFDIR if isinstance(child, SnapshotTree) else _IFMT.get(child.kind, 0)
            out.append((os.fsdecode(name), {"st_mode": mode}, 0))
        return out

    def readlink(self, path: str) -> str:
        n = self._node(path)
        if n.kind != K_SYMLINK:
            raise _oserror(errno.EINVAL)
        return os.fsdecode(n.data)

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise _oserror(errno.EROFS)
        n = self._node(path)
        if n.kind == K_DIR:
            raise _oserror(errno.EISDIR)
        if n.kind != K_FILE:
            raise _oserror(errno.EACCES)
        if n.flags & F_UNREADABLE:
            if self.warn:
                self.warn(path, "was unreadable when saved; no content")
            raise _oserror(errno.EIO)
        reader = ContentReader(self.fetcher, self.repo.index.decode_extents(n.data), n.size)
        fh = next(self.fh_counter)
        self.handles[fh] = reader
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        reader = self.handles.get(fh)
        if reader is None:
            raise _oserror(errno.EBADF)
        try:
            return reader.read(offset, size)
        except (IntegrityError, StorageError) as e:
            if self.warn:
                self.warn(path, f"DAMAGED: {e}")
            raise _oserror(errno.EIO) from None

    def release(self, path: str, fh: int) -> int:
        self.handles.pop(fh, None)
        return 0

    def opendir(self, path: str) -> int:
        self._node(path)  # ENOENT/ENOTDIR early; loads a snapshot when entered
        return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def listxattr(self, path: str):
        n = self._node(path)
        return [os.fsdecode(k) for k, _ in (n.xattrs or ())]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        n = self._node(path)
        key = os.fsencode(name)
        for k, v in n.xattrs or ():
            if k == key:
                return v
        raise _oserror(getattr(errno, "ENODATA", errno.ENOENT))

    def access(self, path: str, amode: int) -> int:
        self._resolve(path)
        if amode & os.W_OK:
            raise _oserror(errno.EROFS)
        return 0

    def statfs(self, path: str) -> dict:
        return {"f_bsize": 65536, "f_frsize": 65536, "f_blocks": 0, "f_bfree": 0, "f_bavail": 0,
                "f_files": 0, "f_ffree": 0, "f_favail": 0, "f_namemax": 255}

    def destroy(self, path=None):
        pass

    def close(self):
        self.handles.clear()
        self.fetcher.close()


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def is_mountpoint(path: str) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def mount(repo: Repository, snap: Snapshot | None, mountpoint: str, *, allow_other: bool = False,
          cache_bytes: int = 64 << 20, threads: int = 8, on_ready: Callable[[], None] | None = None,
          warn: Callable[[str, str], None] | None = None, debug: bool = False) -> None:
    """Mount ``snap`` (or every snapshot when None) at ``mountpoint`` and serve
    it until unmounted (Ctrl-C, SIGTERM, ``fusermount3 -u``).  Blocks."""
    repo.key.require("read", "mount snapshots")
    mp = os.path.abspath(mountpoint)
    if not os.path.exists(mp):
        raise NotFound(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mp):
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if is_mountpoint(mp):
        raise MountError(f"{mountpoint} is already a mount point")
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available on this machine (/dev/fuse is missing)")
    mfusepy = _import_fuse()
    fs = SnapshotFS(repo, snap, cache_bytes=cache_bytes, threads=threads, warn=warn)
    fs.on_ready = on_ready
    options = dict(foreground=True, ro=True, default_permissions=True, fsname="rekkord", subtype="rekkord",
                   kernel_cache=True, attr_timeout=300, entry_timeout=300, negative_timeout=60)
    if allow_other:
        options["allow_other"] = True
    if debug:
        options["debug"] = True
    try:
        mfusepy.FUSE(fs, mp, **options)
    except RuntimeError as e:
        # libfuse 3.14's fuse_main returns 8 ("event loop failed") when its
        # SIGINT/SIGTERM handler ended the loop; it has unmounted by then.
        if e.args and e.args[0] == 8 and not is_mountpoint(mp):
            return
        raise MountError(f"cannot mount at {mountpoint} (libfuse error {e}; see the message above)") from None
    finally:
        fs.close()


def _import_fuse():
    try:
        import mfusepy
    except ImportError:
        from .extras import install_hint

        raise MountError(f"mounting needs the mfusepy package: {install_hint('mount')}") from None
    except OSError as e:  # mfusepy found no libfuse
        raise MountError(f"mounting needs libfuse3 (Debian: apt install fuse3): {e}") from None
    return mfusepy

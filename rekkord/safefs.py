"""File system operations below one directory that never leave it.

Restore writes what a snapshot says, and a snapshot is hostile input (a
compromised machine's write key can make one); DEST may hold symlinks, and a
local user may swap a directory for a symlink while a restore runs.  So
nothing here opens a path string: every directory is an open descriptor
reached from DEST's descriptor one component at a time with
``O_NOFOLLOW | O_DIRECTORY``, and every file is created, renamed, linked and
given its metadata relative to its directory's descriptor, without following
a symlink.  Names passed in are single path components (the index entries are
validated before they get here, :class:`rekkord.snapshot.EntryValidator`);
``_name`` refuses anything else once more.
"""

from __future__ import annotations

import errno
import os
import stat as statmod
import threading

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _name(name: bytes) -> bytes:
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise OSError(errno.EINVAL, "invalid file name")
    return name


def open_root(path: bytes) -> int:
    """A descriptor of DEST (a directory the user named: following a symlink
    *to* DEST is their choice, nothing below it is followed)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(parent_fd: int, name: bytes) -> int:
    """Open the directory ``name`` in ``parent_fd``; ``ELOOP``/``ENOTDIR``
    when it is a symlink or not a directory."""
    return os.open(_name(name), _DIR_FLAGS, dir_fd=parent_fd)


def open_path(root_fd: int, comps) -> int:
    """Walk from ``root_fd`` through the directory components ``comps``
    without following a symlink; the caller closes the result."""
    fd = os.dup(root_fd)
    try:
        for c in comps:
            nfd = open_dir(fd, c)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat(parent_fd: int, name: bytes):
    """``lstat`` of ``name`` in ``parent_fd``, or None when nothing is there."""
    try:
        return os.stat(_name(name), dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def create(parent_fd: int, name: bytes, mode: int = 0o600) -> int:
    """Create and open a new file (never an existing one, never through a symlink)."""
    return os.open(_name(name), _CREATE_FLAGS, mode, dir_fd=parent_fd)


_TMPFILE_FLAGS = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC
_PROC_FD = "/proc/self/fd"


def unnamed_supported() -> bool:
    """Whether :func:`create_unnamed` can work at all here (Linux with
    ``/proc``); a file system may still refuse it (:func:`create_unnamed`
    raises, the caller falls back to a temporary name)."""
    return hasattr(os, "O_TMPFILE") and os.path.isdir(_PROC_FD)


def create_unnamed(parent_fd: int, mode: int) -> int:
    """A new file in ``parent_fd`` that has no name yet (``O_TMPFILE``): no
    one else can open it, and if the process dies it vanishes instead of
    leaving a partial file.  :func:`link_unnamed` gives it its name.  One
    directory insertion per file instead of a create and a rename; raises
    OSError (``EOPNOTSUPP``, ``EISDIR``, ``EINVAL``) where the file system
    cannot do it."""
    return os.open(".", _TMPFILE_FLAGS, mode, dir_fd=parent_fd)


def link_unnamed(fd: int, parent_fd: int, name: bytes) -> None:
    """Give the file of :func:`create_unnamed` the name ``name`` in
    ``parent_fd``; ``FileExistsError`` when something (a symlink included:
    never followed) is there already."""
    os.link(f"{_PROC_FD}/{fd}", _name(name), dst_dir_fd=parent_fd, follow_symlinks=True)


def has_default_acl(fd: int) -> bool:
    """Whether the directory ``fd`` passes a default ACL down to what is
    created in it (then a new file's mode is not its mode less the umask);
    True when that cannot be told."""
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError as e:
        return e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def umask() -> int | None:
    """The process's umask, read without changing it (``/proc/self/status``),
    or None where that cannot be read."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def rename(parent_fd: int, src: bytes, dst: bytes) -> None:
    """Atomically replace ``dst`` (a symlink there is replaced, not followed)."""
    os.rename(_name(src), _name(dst), src_dir_fd=parent_fd, dst_dir_fd=parent_fd)


def unlink(parent_fd: int, name: bytes) -> None:
    try:
        os.unlink(_name(name), dir_fd=parent_fd)
    except FileNotFoundError:
        pass


def remove_tree(parent_fd: int, name: bytes) -> None:
    """Remove the directory ``name`` and all it holds (symlinks inside are
    removed, never followed; shutil's descriptor-based walk)."""
    import shutil

    shutil.rmtree(_name(name), dir_fd=parent_fd)


def link(src_fd: int, src: bytes, dst_fd: int, dst: bytes) -> None:
    """Hard link ``src`` (not followed if it is a symlink) as ``dst``."""
    os.link(_name(src), _name(dst), src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)


def proc_path(parent_fd: int, name: bytes) -> bytes:
    """A path to ``name`` in ``parent_fd`` for the few calls without a
    ``dir_fd`` form (``lsetxattr`` on a symlink): the kernel resolves the
    ``/proc/self/fd`` link to the directory itself, and only ``name`` is
    looked up in it."""
    return b"/proc/self/fd/%d/%s" % (parent_fd, _name(name))


def is_dir(st) -> bool:
    return st is not None and statmod.S_ISDIR(st.st_mode)


class DirHandle:
    """An open directory descriptor shared by the tasks writing into it;
    closed when the walk has left it and the last task released it."""

    __slots__ = ("fd", "refs", "registry", "made", "default_acl", "on_close")

    def __init__(self, fd: int, registry: "DirRegistry", made: bool, default_acl: bool | None = None):
        self.fd = fd
        self.refs = 1  # the walk's own reference
        self.registry = registry
        self.made = made  # created by this restore (so no setgid bit passes a group down yet)
        #: whether it has a default ACL, when known (a directory made in it inherits the answer)
        self.default_acl = default_acl
        #: called with the descriptor once nobody writes into it any more (the
        #: directory's metadata), by whichever thread lets it go last
        self.on_close = None

    @property
    def plain(self) -> bool:
        """Known to have no default ACL: a file created in it gets exactly
        its mode less the umask."""
        return self.default_acl is False

    def acquire(self) -> "DirHandle":
        with self.registry.cond:
            self.refs += 1
        return self

    def release(self) -> None:
        reg = self.registry
        with reg.cond:
            self.refs -= 1
            if self.refs:
                return
        try:
            if self.on_close is not None:
                self.on_close(self.fd)
        finally:
            os.close(self.fd)
            with reg.cond:
                reg.open -= 1
                reg.cond.notify_all()


class DirRegistry:
    """Bounds the directories held open: the walk waits (``wait_below``)
    while more than ``limit`` are open, until tasks finish with theirs."""

    def __init__(self, limit: int = 512):
        self.limit = limit
        self.open = 0
        self.cond = threading.Condition()

    def handle(self, fd: int, made: bool = False, default_acl: bool | None = None) -> DirHandle:
        with self.cond:
            self.open += 1
        return DirHandle(fd, self, made, default_acl)

    def wait_below(self, n: int) -> None:
        with self.cond:
            while self.open > n:
                self.cond.wait(0.5)


def raise_fd_limit() -> None:
    """Let the process hold as many descriptors as the hard limit allows
    (directories stay open while their files are written)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 16
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 1 << 20), hard))
    except (ImportError, ValueError, OSError):
        pass


class node:
    """``with node(dir_fd, name) as path``: a ``/proc/self/fd`` path to the
    FIFO or device node ``name`` itself (an ``O_PATH`` descriptor: nothing is
    opened for real, and a symlink swapped in its place is refused)."""

    def __init__(self, parent_fd: int, name: bytes):
        self.fd = os.open(_name(name), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        st = os.fstat(self.fd)
        if statmod.S_ISLNK(st.st_mode) or statmod.S_ISDIR(st.st_mode) or statmod.S_ISREG(st.st_mode):
            os.close(self.fd)
            raise OSError(errno.ELOOP, "not the node that was created")

    def __enter__(self) -> bytes:
        return b"/proc/self/fd/%d" % self.fd

    def __exit__(self, *exc):
        os.close(self.fd)

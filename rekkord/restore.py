"""Restoring a snapshot (or part of it) into a directory.

Files are written under a temporary name in their final directory, with
positional writes (holes for all-zero extents and the tail, so sparse files
stay sparse), then given their metadata and renamed into place.  A file whose
data is damaged is never left under its final name (unless ``keep_damaged``);
every other file still restores.

The snapshot is hostile input (a compromised machine's write key can make
one) and DEST may hold symlinks: entries come through
:class:`rekkord.snapshot.EntryValidator`, and everything is created through
directory descriptors reached from DEST without following a symlink
(:mod:`rekkord.safefs`), so nothing outside DEST is ever created, changed or
opened.  Privileges follow one policy (docs/guide-restore.md, "What restore
recreates"): owners only as root (or ``--owner``); setuid and setgid bits only
together with the owner they were saved with (``--no-setuid`` drops them
always); device nodes and FIFOs unless ``--no-special``; sockets never.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fnmatch
import hmac
import itertools
import os
import re
import signal
import stat as statmod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import directio, libc, safefs
from .errors import IntegrityError, NoSpace, RekkordError, StorageError, UsageError
from .format import T_DATA
from .index import (
    F_LINKED,
    F_UNREADABLE,
    K_BLOCK,
    K_CHAR,
    K_DIR,
    K_FIFO,
    K_FILE,
    K_HARDLINK,
    K_SOCKET,
    K_SYMLINK,
    Entry,
)
from .repository import Repository, Snapshot
from .snapshot import F_IMPLICIT, BlobFetcher, describe_loss, iter_entries, normalize_subpath, select

#: What ``--overwrite`` does with an entry DEST already has (restic's choices):
#: always -- compare the content with the snapshot (reading DEST's file, hashing
#: it against the extents' ids, fetching only what a hash cannot settle) and
#: rewrite it when it differs; if-changed -- the same, but a file whose size and
#: mtime match is taken as unchanged without reading it; if-newer -- only
#: replace what is older (mtime) than the snapshot's entry; never -- leave
#: every existing entry as it is.  Identical files are skipped quietly, their
#: metadata set again (always, if-changed).
OVERWRITE_MODES = ("always", "if-changed", "if-newer", "never")
#: A temporary name of restore (``.rekkord-tmp-<12 hex>-<n>``): what an
#: interrupted restore leaves behind, removed by the next one into that directory.
TMP_NAME = re.compile(rb"\.rekkord-tmp-[0-9a-f]{12}-[0-9]+\Z")
HOLE_BLOCK = 64 * 1024
BATCH_FILE_MAX = 1024 * 1024  # files up to this size, in one extent, are restored in batches
ZERO_BLOCK = bytes(HOLE_BLOCK)


@dataclass
class RestoreOptions:
    overwrite: str | bool = "always"  # one of OVERWRITE_MODES (True: always, False: never)
    dry_run: bool = False
    owner: bool | None = None  # None: restore owners when running as root
    keep_damaged: bool = False
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    threads: int | None = None
    verify: bool = False
    delete: bool = False  # remove what DEST has beyond the selection
    setuid: bool = True  # keep setuid/setgid bits where the saved owner is restored too
    special: bool = True  # create device nodes and FIFOs
    # Processes that share the restore (None: one per core, up to 4, for a
    # snapshot of SHARE_MIN_ENTRIES or more; one where it cannot be shared:
    # dry runs, --delete, --include/--exclude, storage that is not
    # fork-safe, snapshots without F_LINKED, a DEST that is not empty).
    processes: int | None = None
    # Large files bypass the page cache (O_DIRECT) where the file system allows.
    direct_io: bool = True

    def __post_init__(self):
        if self.overwrite is True or self.overwrite is False:  # the library's earlier boolean
            self.overwrite = "always" if self.overwrite else "never"
        if self.overwrite not in OVERWRITE_MODES:
            raise UsageError(f"unknown overwrite mode {self.overwrite!r} (choose from {', '.join(OVERWRITE_MODES)})")
        if self.delete and self.overwrite == "never":
            raise UsageError("--delete makes DEST match the snapshot: it cannot be combined with --overwrite never")
        if self.processes is not None and self.processes < 1:
            raise UsageError("a restore needs at least one process")


@dataclass
class RestoreStats:
    files: int = 0  # regular files (and hard links) of the selection
    dirs: int = 0
    others: int = 0  # symlinks, FIFOs, devices
    bytes: int = 0  # the files' bytes
    restored: int = 0  # files and others written by this run
    bytes_restored: int = 0
    skipped: int = 0  # files and others not written: unchanged + kept
    bytes_skipped: int = 0
    unchanged: int = 0  # already in DEST as the snapshot has them (metadata set again)
    kept: int = 0  # in DEST, left as they are by --overwrite never / if-newer
    temporaries_removed: int = 0  # leftovers of an interrupted restore into DEST
    unmatched: list[str] = field(default_factory=list)  # --include patterns that matched nothing
    unmatched_excludes: list[str] = field(default_factory=list)  # --exclude patterns that removed nothing
    damaged: int = 0
    warnings: int = 0
    deleted: int = 0
    verified: int = 0
    refused: int = 0  # entries the snapshot should not hold (forged or corrupted), not restored
    not_created: int = 0  # device nodes, FIFOs and sockets left out by the policy
    setuid_dropped: int = 0  # setuid/setgid bits not applied (owner not restored, or --no-setuid)
    repair_hint: str | None = None  # published for the damaged blobs found (so saves upload them again)
    duration: float = 0.0


#: The counts of RestoreStats, added up over the processes of a shared restore.
_SUMMED = tuple(f.name for f in dataclasses.fields(RestoreStats) if f.type == "int")


class PathFilter:
    """--include / --exclude.  A pattern without '/' matches the name of an
    entry or of any directory above it (``--exclude cache`` drops the cache
    directories and all they hold; ``--include '*.conf'`` keeps every .conf
    file).  A pattern with '/' matches the absolute path in the snapshot, or
    a directory above it; ``*`` and ``?`` stay in one component, ``**``
    crosses them; a pattern not starting with '/' or '**' matches at any
    depth (``nginx/*.conf``).  Excludes win over includes.  With includes,
    only included entries are restored, plus the directories that lead to
    them."""

    YES, NO, MAYBE = 1, 0, 2  # MAYBE: a directory that may hold included entries

    def __init__(self, includes: list[str], excludes: list[str]):
        self.inc_patterns = [p for p in includes if p.strip()]
        self.inc = [self._compile(p) for p in self.inc_patterns]
        self.exc_patterns = [p for p in excludes if p.strip()]
        self.exc = [self._compile(p) for p in self.exc_patterns]
        self.matched: set[int] = set()  # includes that selected an entry (not excluded)
        self.exc_matched: set[int] = set()  # excludes that removed an entry

    @staticmethod
    def _compile(p: str):
        from .diff import glob_regex

        p = p.strip().rstrip("/") or "/"
        if "/" not in p:
            return p, None
        if not p.startswith("/") and not p.startswith("**"):
            p = "**/" + p
        return None, glob_regex(p if p.startswith("**") else p)

    @staticmethod
    def _hit(pat, comps: list[str]) -> bool:
        name, rx = pat
        if name is not None:
            return any(fnmatch.fnmatchcase(c, name) for c in comps)
        return any(rx.fullmatch("/" + "/".join(comps[:i + 1])) for i in range(len(comps)))

    @classmethod
    def _hits(cls, pats, path: bytes) -> bool:
        comps = os.fsdecode(path).split("/")
        return any(cls._hit(p, comps) for p in pats)

    def active(self) -> bool:
        return bool(self.inc or self.exc)

    def select(self, path: bytes, is_dir: bool, *, mark: bool = True) -> int:
        """``mark``: the path is a snapshot entry (a path of DEST, looked at
        by --delete, does not make a pattern "match")."""
        comps = os.fsdecode(path).split("/")
        if self.exc:
            if mark and len(self.exc_matched) < len(self.exc):
                hits = [i for i, p in enumerate(self.exc) if self._hit(p, comps)]
                self.exc_matched.update(hits)
            else:
                hits = any(self._hit(p, comps) for p in self.exc)
            if hits:
                return self.NO
        if not self.inc:
            return self.YES
        hit = False
        for i, p in enumerate(self.inc):
            if self._hit(p, comps):
                hit = True
                if not mark:
                    break
                self.matched.add(i)
                if len(self.matched) == len(self.inc):
                    break  # (no need to look further once every pattern matched once)
        if hit:
            return self.YES
        return self.MAYBE if is_dir else self.NO

    def unmatched(self) -> list[str]:
        """The --include patterns that selected nothing (so far)."""
        return [p for i, p in enumerate(self.inc_patterns) if i not in self.matched]

    def unmatched_excludes(self) -> list[str]:
        """The --exclude patterns that removed nothing (so far)."""
        return [p for i, p in enumerate(self.exc_patterns) if i not in self.exc_matched]


class _Stopped(BaseException):
    """A process of a shared restore was told to stop (SIGTERM from its
    coordinator): its threads end their files, removing what they began."""


@dataclass
class _Kid:
    """A child of a shared restore, as its coordinator knows it."""
    pid: int | None
    conn: object
    thread: threading.Thread | None = None
    stats: dict = field(default_factory=dict)  # its counts so far
    damaged: set = field(default_factory=set)
    done: bool = False
    error: BaseException | None = None


def _stop_when_parent_dies(parent: int) -> None:  # pragma: no cover - in a child
    """SIGTERM to this process when the thread that forked it ends
    (``PR_SET_PDEATHSIG``; Linux): a coordinator killed outright (SIGKILL,
    the OOM killer) leaves no process writing into DEST."""
    prctl = libc.function("prctl", (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong))
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # (it died before that took effect)
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _empty_or_missing(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _counts(st: RestoreStats) -> dict:
    return {k: getattr(st, k) for k in _SUMMED}


#: The work in a block of a restore shared by processes, in entries (each
#: walks the whole index and restores its blocks): a file counts one entry
#: more per SHARE_ENTRY_BYTES of content.
SHARE_BLOCK = 1024
#: (what writing a small file costs, in bytes of a large one: ~120 us a file
#: against ~3 us a KiB on these machines)
SHARE_ENTRY_BYTES = 40 << 10
#: A restore of fewer entries than this stays in one process.
SHARE_MIN_ENTRIES = 4000
#: Seconds a stopped process of a shared restore has to end its files
#: before it is killed.
STOP_WAIT = 10.0


class Shares:
    """Which of ``n`` restore processes restores each entry of the walk, so
    that they can share one restore without talking to each other: every
    process walks the same validated entries in the same order and works
    out the same answer for each.

    Entries go in blocks of ``block`` units of work (an entry, and one more
    per SHARE_ENTRY_BYTES of a file), each to the process with the least
    work so far (so a large file's process gets the next blocks less
    often); a hard link goes with its first link (``F_LINKED``), which came
    before it.  A directory is made by its owner (the process of its own
    entry) and by any other that restores something below it (``take``
    gives such directories first, unowned).  A directory whose entries
    belong to more than one process is *mixed*: none of them may set its
    metadata (its times would change with the others' entries), which the
    coordinator does once every process is done.  ``on_mixed(comps, e)``
    says so as soon as the walk knows, always before the walk leaves the
    directory (so before its handle can close).  Memory: the directories
    enclosing the walk, and the first links' paths (as restore already
    remembers them)."""

    def __init__(self, n: int, me: int, place, on_mixed, block: int | None = None):
        self.n, self.me, self.block = n, me, block or SHARE_BLOCK
        self.place = place
        self.on_mixed = on_mixed
        self.load = [0] * n  # the work given to each process so far
        self.cur = 0  # the current block's process
        self.left = 0  # the work left in the current block
        # the directories enclosing the walk: [rel, comps, owner, mixed, made here, entry]
        self.stack: list[list] = []
        self.links: dict[bytes, int] = {}  # first link's snapshot path -> its process

    def owner(self, e: Entry) -> int:
        cost = 1 + e.size // SHARE_ENTRY_BYTES if e.kind in (K_FILE, K_HARDLINK) else 1
        if e.kind == K_HARDLINK:
            w = self.links.get(e.target)
            if w is not None:
                self.load[w] += 1  # (a link: no content written)
                return w
        if self.left <= 0:
            load = self.load
            self.cur = load.index(min(load))
            self.left = self.block
        w = self.cur
        self.left -= cost
        self.load[w] += cost
        if e.flags & F_LINKED:
            self.links[e.path] = w
        return w

    def take(self, e: Entry, rel: bytes) -> list[tuple[Entry, bytes, bool]]:
        """What this process does for ``e``: nothing, or the directories
        above it that it has not made yet (unowned) and then ``e`` (owned)."""
        w = self.owner(e)
        stack = self.stack
        while stack and stack[-1][0] and not rel.startswith(stack[-1][0] + b"/"):
            stack.pop()
        # (a mixed directory's parent is mixed too: the walk marks upwards
        # until it meets one that already is)
        for d in reversed(stack):
            if d[3]:
                break
            if d[2] != w:
                d[3] = True
                self.on_mixed(d[1], d[5])
        mine = w == self.me
        out = []
        if mine:
            for d in stack:
                if not d[4]:
                    d[4] = True
                    out.append((d[5], d[0], False))
            out.append((e, rel, True))
        if e.kind == K_DIR:
            stack.append([rel, self.place(rel), w, False, mine, e])
        return out


class Restorer:
    def __init__(self, repo: Repository, snap: Snapshot, options: RestoreOptions | None = None,
                 progress=None, warn=None):
        repo.key.require("read", "restore files")
        if not snap.signature_ok:
            # Forged, altered, or signed by a revoked or uncertified key, or by
            # a role that may not save: its files could be anyone's choice
            # (docs/integrity.md).
            raise IntegrityError(f"snapshot {snap.id} is not trusted ({'; '.join(snap.problems)}); "
                                 "refusing to restore it")
        self.repo = repo
        self.snap = snap
        self.opts = options or RestoreOptions()
        self.mode = self.opts.overwrite
        # Whether something in DEST of another type (a symlink or a file where
        # a directory goes) may be replaced: never followed either way.
        self.replaces = self.mode != "never"
        self.filter = PathFilter(self.opts.includes, self.opts.excludes)
        self.progress = progress
        self.warn_cb = warn
        self.stats = RestoreStats()
        self.problems: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.owner = self.opts.owner if self.opts.owner is not None else (os.geteuid() == 0)
        cores = os.cpu_count() or 2
        # Threads that create and write files (decryption and decompression
        # run on the fetch pool, sized separately). File creation serialises in
        # the kernel: on 2 cores a second writer doubled the system time of a
        # 10k-file restore for the same wall time, but the 300k-file benchmark
        # took 55.8 s with two writers and 82.5 s with one, so two it is.
        self.threads = self.opts.threads or max(2, min(cores, 4))
        self._last_progress = 0.0
        self._tmp_prefix = b".rekkord-tmp-" + os.urandom(6).hex().encode() + b"-"
        self._tmp_counter = itertools.count()
        self._creator = (os.geteuid(), os.getegid())  # owner of the files we create
        self._root_user = os.geteuid() == 0  # (enters any directory, whatever its mode)
        # Files go into directories this restore made without a name until
        # they are complete (O_TMPFILE, then one link): a killed restore
        # leaves no partial file, and a file costs one directory insertion
        # instead of a create and a rename.  Elsewhere (DEST's own
        # directories, whose files may be replaced), and where the file
        # system cannot, a temporary name and a rename.
        self._unnamed = safefs.unnamed_supported()
        # Files of directio.MIN_SIZE bytes and more are written past the page
        # cache: no copy into it, and a large restore does not push the
        # running system's working set out of memory.
        self._direct = directio.Choice(self.opts.direct_io)
        # Known: then a new file created with its saved mode in a directory
        # without a default ACL needs no fchmod.
        self._umask = safefs.umask()
        self._damaged_paths: set[bytes] = set()  # snapshot paths of files restored damaged or not at all
        self._kids: list[_Kid] = []  # a shared restore's other processes (in the coordinator)
        self._sharing = False  # this process restores a share (Shares)
        self._child_damaged: set[bytes] = set()  # (in a child: the blobs it found damaged)
        self._stop = 0  # (in a child: the signal that stops it, seen between entries, files and extents)
        self._dest_s = ""

    def warn(self, path: str, message: str, *, damaged: bool = False):
        with self.lock:
            self.problems.append((path, message))
            self.stats.warnings += 1
            if damaged:
                self.stats.damaged += 1
        if self.warn_cb:
            self.warn_cb(path, message)

    def _tick(self, force=False):
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_progress > 0.2:
            self._last_progress = now
            self.progress(self._with_children(self.stats) if self._kids else self.stats)

    def _show(self, comps: tuple) -> str:
        """A DEST path for messages."""
        return self._dest_s + ("/" + os.fsdecode(b"/".join(comps)) if comps else "")

    # ---- the walk -------------------------------------------------------------------

    def restore(self, subpath: str | bytes | None, dest: str) -> RestoreStats:
        n = self._processes()
        if n > 1 and _empty_or_missing(dest):
            # (only into an empty DEST: what DEST already has -- a symlink to
            # replace, a file to compare -- is for one process to settle;
            # two replacing one symlink at once would race)
            return self._restore_shared(subpath, dest, n)
        return self._restore(subpath, dest)

    def _restore_shared(self, subpath: str | bytes | None, dest: str, n: int) -> RestoreStats:
        """The restore shared by ``n`` processes: this one (the coordinator)
        and ``n - 1`` forked before anything of the restore runs (so no
        thread of it is forked mid-work, and only with fork-safe storage),
        each walking the index and restoring its share (:class:`Shares`).
        A child tells its progress, warnings and end over a pipe; once all
        are done the coordinator sets the mixed directories' metadata and
        adds their counts; a failure of any one is the restore's."""
        from multiprocessing import Pipe

        self._parent_pid = os.getpid()
        try:
            for k in range(1, n):
                r, w = Pipe(duplex=False)
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child (its coverage is not collected)
                    r.close()
                    for kid in self._kids:
                        kid.conn.close()
                    self._child_main(k, n, w, subpath, dest)
                w.close()
                self._kids.append(_Kid(pid, r))
        except OSError:  # (cannot fork: no memory, no process slots) one process restores
            self._kill_children()
            return self._restore(subpath, dest)
        except BaseException:
            self._kill_children()
            raise
        self._tmp_counter = itertools.count(0, n)  # (the children count from 1, 2...: one prefix, no clash)
        for kid in self._kids:
            kid.thread = threading.Thread(target=self._read_kid, args=(kid,), name="rekkord-restore-share",
                                          daemon=True)
            kid.thread.start()
        try:
            return self._restore(subpath, dest, (0, n))
        finally:
            self._kill_children()  # (those still running: after a failure here)

    def _child_main(self, k: int, n: int, conn, subpath, dest) -> None:  # pragma: no cover - forked
        """A child of a shared restore: its share, then ``os._exit`` (never
        back into the caller's code, nor its atexit handlers)."""
        code = 1
        lock = threading.Lock()
        # (its coordinator's SIGTERM, a Ctrl-C at the terminal, the
        # coordinator's death: stop at the next entry, file or extent,
        # removing what was begun, rather than die with a temporary name
        # left, or go on writing into DEST for no one)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        _stop_when_parent_dies(self._parent_pid)

        def send(msg):
            with lock:
                conn.send(msg)

        try:
            self._tmp_counter = itertools.count(k, n)
            if self.progress is not None:
                self.progress = lambda st: send(("p", _counts(st)))

            def warn(path: str, message: str, *, damaged: bool = False):
                send(("w", path, message, damaged))

            self.warn = warn  # (counted by the coordinator, which says them)
            st = self._restore(subpath, dest, (k, n))
            send(("done", _counts(st), self._child_damaged))
            code = 0
        except BaseException as exc:  # noqa: BLE001 - told to the coordinator
            if isinstance(exc, _Stopped):
                exc = (KeyboardInterrupt() if self._stop == signal.SIGINT else
                       RekkordError(f"a restore process was stopped ({signal.Signals(self._stop).name})"))
            try:
                send(("error", exc))
            except BaseException:  # noqa: BLE001 - (an exception that does not pickle)
                try:
                    send(("error", RekkordError(f"{type(exc).__name__}: {exc}")))
                except BaseException:  # noqa: BLE001
                    pass
        finally:
            os._exit(code)

    def _on_stop(self, signum, frame) -> None:  # pragma: no cover - in a child
        self._stop = signum

    def _check_stop(self) -> None:
        if self._stop:
            raise _Stopped

    def _read_kid(self, kid: _Kid) -> None:
        """The coordinator's reader of one child's pipe."""
        try:
            while True:
                msg = kid.conn.recv()
                if msg[0] == "p":
                    kid.stats = msg[1]
                elif msg[0] == "w":
                    self.warn(msg[1], msg[2], damaged=msg[3])
                elif msg[0] == "done":
                    kid.stats, kid.damaged, kid.done = msg[1], msg[2], True
                    return
                elif msg[0] == "error":
                    kid.error = msg[1]
                    self._failed = True
                    return
        except (EOFError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - e.g. what did not unpickle
            kid.error = RekkordError(f"a restore process could not say how it ended: {exc}")
            self._failed = True

    def _join_children(self) -> set[bytes]:
        """Wait for the children; their failure is raised, else their counts
        are added.  The blobs they found damaged."""
        for kid in self._kids:
            kid.thread.join()
            _, status = os.waitpid(kid.pid, 0)
            kid.pid = None
            if kid.error is None and not kid.done:
                how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                       else f"exit status {os.waitstatus_to_exitcode(status)}")
                kid.error = RekkordError(f"a restore process ended before its share was done ({how})")
        for kid in self._kids:
            if kid.error is not None:
                self._failed = True
                raise kid.error
        # (the restore's own tasks are all done: nothing else counts now)
        self.stats = self._with_children(self.stats)
        damaged = set().union(*(kid.damaged for kid in self._kids))
        self._kids = []
        return damaged

    def _kill_children(self) -> None:
        """Stop the children still running: SIGTERM, after which each ends
        the files it is writing and removes their temporary names; those not
        gone within STOP_WAIT seconds (e.g. a fetch hanging) get SIGKILL."""
        running = []
        for kid in self._kids:
            if kid.pid is not None:
                try:
                    os.kill(kid.pid, signal.SIGTERM)
                    running.append(kid)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_WAIT
        for kid in running:
            try:
                while not os.waitpid(kid.pid, os.WNOHANG)[0]:
                    if time.monotonic() > deadline:
                        os.kill(kid.pid, signal.SIGKILL)
                        os.waitpid(kid.pid, 0)
                        break
                    time.sleep(0.005)
            except (ProcessLookupError, ChildProcessError):
                pass
        for kid in self._kids:
            kid.pid = None
            if kid.thread is not None:
                kid.thread.join(5)
            kid.conn.close()
        self._kids = []

    def _with_children(self, st: RestoreStats) -> RestoreStats:
        out = dataclasses.replace(st)
        for kid in self._kids:
            for k in _SUMMED:
                setattr(out, k, getattr(out, k) + kid.stats.get(k, 0))
        return out

    def _processes(self) -> int:
        """How many processes restore (RestoreOptions.processes)."""
        o = self.opts
        if o.processes is not None:
            n = o.processes
        else:
            try:
                cores = len(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                cores = os.cpu_count() or 1
            st = self.snap.stats
            entries = sum(st.get(k, 0) for k in ("files", "dirs", "others") if isinstance(st.get(k), int))
            n = min(cores, 4) if entries >= SHARE_MIN_ENTRIES else 1
        if n > 1 and (o.dry_run or o.delete or self.filter.active() or not hasattr(os, "fork")
                      or not getattr(self.repo.storage, "fork_safe", False)
                      or not self.snap.record.get("linked_flag")):
            n = 1
        return n

    def _restore(self, subpath: str | bytes | None, dest: str, share: tuple[int, int] | None = None
                 ) -> RestoreStats:
        """The restore, or with ``share`` (this process, processes) this
        process's share of it (see :class:`Shares` and _restore_shared)."""
        started = time.monotonic()
        sub = normalize_subpath(subpath)
        me = share[0] if share else 0
        self._sharing = share is not None
        self._sub = sub
        dest_b = os.path.abspath(os.fsencode(dest))
        self._dest_s = os.fsdecode(dest_b)

        def index_damage(blobs, before, after):
            # Records in damaged index blobs are lost; every other entry restores.
            # (what every process of a shared restore reads, said by the first)
            if me:
                return
            self.warn(f"(snapshot {self.snap.id[:8]} index)", "DAMAGED: " + describe_loss(blobs, before, after),
                      damaged=True)

        def refused(path: bytes, why: str):
            if me:
                return
            with self.lock:
                self.stats.refused += 1
            self.warn(f"(snapshot {self.snap.id[:8]}) /{os.fsdecode(path)}",
                      f"REFUSED: {why}; not restored, nor anything below it", damaged=True)

        if not me:
            self._check_reflists(whole=not sub)

        def index_copy(message: str):
            if me:
                return
            self.warn(f"(snapshot {self.snap.id[:8]} index)", message)

        entries = select(iter_entries(self.repo, self.snap, on_damage=index_damage, on_refused=refused,
                                      on_copy=index_copy), sub)
        first = next(entries, None)
        if first is None:
            self._report_unmatched()
            return self.stats
        entry0, _ = first
        # Where an entry lands, as components below DEST: a single file at
        # DEST/<name>; a directory's content in DEST; a whole snapshot at its
        # saved absolute paths.
        if sub and entry0.kind != K_DIR:
            def place(rel: bytes) -> tuple:
                return (entry0.name,)
        else:
            def place(rel: bytes) -> tuple:
                return tuple(rel.split(b"/")) if rel else ()

        dry = self.opts.dry_run
        root = None
        if not dry:
            try:
                os.makedirs(dest_b, exist_ok=True)
                safefs.raise_fd_limit()
                self._registry = safefs.DirRegistry()
                root = self._registry.handle(safefs.open_root(dest_b))
                self._remove_leftovers(root.fd, ())
            except OSError as e:
                raise UsageError(f"cannot create {self._dest_s}: {e.strerror}") from None
        self._root = root
        # (12 MiB of finished blobs kept for reuse: a pack is reused by the
        # batches of its files, which come together.  32 filled whenever the
        # writers lagged: peak RSS of a source-tree restore 81-87 MiB instead
        # of 66-69, of a system tree 116-119 instead of 99-103, no faster.
        # 16 held the nightly data set's restore at 75-81 MiB against 71 with
        # 12 (restic: 73); the system tree fetches 1059 blobs with 12, 1052
        # with 16, 1092 with 8.)
        # (a shared restore splits 8 MiB: each process fetches the packs of
        # its own blocks.  A process's own memory is ~28 MiB, 10 of it the
        # pages of the coordinator's that it changes: with two and 12 MiB,
        # the source tree's restore was 73-77 MiB of PSS against restic's
        # 73 MiB, with 8 69-72, as fast)
        fetcher = BlobFetcher(self.repo, max(4, self.threads * 2, min(self.repo.storage.connections, 32)),
                              max_bytes=(8 << 20) // share[1] if share else 12 << 20)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rekkord-restore")
        inflight = threading.BoundedSemaphore(64)
        # Directories whose metadata is to be set, in walk order (DEST
        # components and the entry).  Most get it as soon as nothing is
        # written into them any more (when their handle closes: _dir_closed);
        # the rest, children first, at the end (_apply_dir_meta).
        # (a dict in walk order: a directory leaves it when its metadata is
        # on, so what it holds is bounded by the open directories and those
        # left for the end, not by the tree: every directory kept until the
        # end was 15 MiB of a 14k-directory restore)
        dirs: dict[tuple, Entry] = {}
        self._dirs_todo = dirs
        self._shared: set[tuple] = set()  # mixed directories (Shares): the coordinator sets their metadata
        mixed: list[tuple[tuple, Entry]] = []  # (the coordinator's list of them)
        self._dirs_late: set[tuple] = set()  # hard links go into them at the end
        self._failed = False
        # Memory must not grow with the number of files: only possible hard
        # link targets are remembered (F_LINKED marks them; snapshots made
        # before the flag existed remember every file), and finished tasks
        # are dropped from ``pending``.
        all_linkable = not self.snap.record.get("linked_flag")
        restored: dict[bytes, Future] = {}  # snapshot path of a link target -> future of its DEST components
        pending: list[Future] = []
        failures: list[BaseException] = []
        links: list[tuple[tuple, Entry]] = []
        held: list[tuple[Entry, bytes]] = []  # directories waiting for an included entry below them
        # The directories enclosing the next entry: (DEST components, handle);
        # a handle of None: not restored (failed, or a non-directory in DEST
        # is in the way): nothing below it is either.
        stack: list[tuple[tuple, safefs.DirHandle | None]] = [((), root)]
        expected: set[tuple] | None = set() if self.opts.delete else None  # what DEST keeps (--delete)

        def run_file(parent, name, comps, e, existing):
            try:
                self._check_stop()
                return self._place_file(parent, name, comps, e, fetcher, existing)
            except BaseException as exc:
                self._failed = True  # (before the release below: no metadata on what stays incomplete)
                failures.append(exc)  # (before the future is done: see track)
                raise
            finally:
                parent.release()
                inflight.release()

        # Small files that share a pack are restored by one task, in order:
        # one fetch of the pack, no per-file hand-off between threads.
        batch: dict = {"items": [], "blob": None, "fut": None}

        def run_batch(items: list, fut: Future):
            out, failed = {}, None
            try:
                for parent, name, comps, e, existing in items:
                    self._check_stop()
                    final = self._place_file(parent, name, comps, e, fetcher, existing)
                    if all_linkable or e.flags & F_LINKED:
                        out[e.path] = final
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                self._failed = True
                failed = exc
            # (released before the result is told: a last release sets the
            # directory's metadata, which the walk waits for)
            try:
                for parent, *_ in items:
                    parent.release()
                inflight.release()
            except BaseException as exc:  # noqa: BLE001
                failed = failed or exc
            if failed is not None:
                failures.append(failed)  # (before the future is done: see track)
                fut.set_exception(failed)
            else:
                fut.set_result(out)

        def track(fut: Future):
            # (a task puts its exception in ``failures`` itself, before its
            # future is done: a done callback runs after the waiters wake, so
            # the walk could end "successfully" before it had run)
            pending.append(fut)
            if len(pending) > 512:
                pending[:] = [f for f in pending if not f.done()]

        def flush_batch():
            items, fut = batch["items"], batch["fut"]
            if not items:
                return
            batch["items"], batch["blob"], batch["fut"] = [], None, None
            inflight.acquire()
            track(fut)
            pool.submit(run_batch, items, fut)

        def submit(parent, name: bytes, comps: tuple, e: Entry, existing):
            """``existing``: (lstat of what DEST has under the name, verdict), or None."""
            linkable = all_linkable or e.flags & F_LINKED
            parent.acquire()
            if len(e.extents) == 1 and e.size <= BATCH_FILE_MAX:
                blob = e.extents[0].blob
                if batch["items"] and (blob != batch["blob"] or len(batch["items"]) >= 512):
                    flush_batch()
                if not batch["items"]:
                    batch["blob"], batch["fut"] = blob, Future()
                batch["items"].append((parent, name, comps, e, existing))
                if linkable:
                    restored[e.path] = batch["fut"]
                return
            inflight.acquire()
            fut = pool.submit(run_file, parent, name, comps, e, existing)
            track(fut)
            if linkable:
                restored[e.path] = fut

        def leave_to(comps: tuple):
            """Pop the directories that do not enclose ``comps``."""
            while len(stack) > 1 and stack[-1][0] != comps[:len(stack[-1][0])]:
                _, h = stack.pop()
                if h is not None:
                    h.release()

        def parent_of(comps: tuple):
            """The handle of the directory ``comps`` goes into, or None."""
            leave_to(comps[:-1])
            top, h = stack[-1]
            if top != comps[:-1]:
                return None  # its directory was not restored (nor anything in it)
            return h

        def keeps_meta(comps: tuple, e: Entry) -> bool:
            """Whether the restore sets this directory's metadata."""
            return not dry and (bool(comps) and not e.flags & F_IMPLICIT or not comps and not sub)

        def make_dir(e: Entry, rel: bytes, owned: bool = True) -> bool:
            """``owned``: False for a directory another process of a shared
            restore owns, made here for what this one restores below it."""
            comps = place(rel)
            if owned:
                if expected is not None:
                    expected.add(comps)
                self.stats.dirs += 1
            if not comps:  # DEST itself (a whole snapshot of '/', or the chosen directory)
                if owned and keeps_meta(comps, e) and comps not in self._shared:
                    dirs[comps] = e
                return True
            if dry:
                leave_to(comps[:-1])
                stack.append((comps, None))
                return True
            parent = parent_of(comps)
            if parent is None:
                stack.append((comps, None))
                return False
            h = self._open_or_make_dir(parent, comps, e)
            stack.append((comps, h))
            if h is None:
                return False
            if owned and keeps_meta(comps, e) and comps not in self._shared:
                dirs[comps] = e
                if self._meta_early(e):
                    h.on_close = lambda fd, comps=comps, e=e: self._dir_closed(fd, comps, e)
            if len(stack) + self._registry.limit // 2 < self._registry.open:
                flush_batch()
                self._registry.wait_below(len(stack) + self._registry.limit // 2)
            return True

        def handle(e: Entry, rel: bytes):
            if self.filter.active():
                while held and not e.path.startswith(held[-1][0].path + b"/"):
                    held.pop()
                sel = self.filter.select(e.path, e.kind == K_DIR)
                if sel == PathFilter.NO:
                    return
                if sel == PathFilter.MAYBE:
                    held.append((e, rel))
                    return
                for he, hrel in held:  # an included entry: create the directories above it
                    make_dir(he, hrel)
                held.clear()
            if e.kind == K_DIR:
                make_dir(e, rel)
                return
            comps = place(rel)
            if dry:
                parent = None
            else:
                parent = parent_of(comps)
                if parent is None:
                    return  # below a directory that was not restored (named there)
            name = comps[-1]
            if expected is not None:
                expected.add(comps)
                if not dry:
                    try:
                        _clear_conflict(parent.fd, name, want_dir=False)
                    except OSError as err:
                        self.warn(self._show(comps), f"cannot remove what is in the way: {err.strerror}")
                        return
            if e.kind == K_HARDLINK and e.target in restored:
                links.append((comps, e))
                self._dirs_late.add(comps[:-1])
                return
            if e.kind in (K_FILE, K_HARDLINK):
                if e.flags & F_UNREADABLE:
                    self.warn(self._show(comps), "was unreadable when saved; not restored")
                    return
                self.stats.files += 1
                self.stats.bytes += e.size
                if dry:
                    self._count(e, restored=True)
                    return
                # (a directory this restore made holds only what it wrote:
                # nothing to compare, no lstat per file)
                st = None if parent.made else safefs.lstat(parent.fd, name)
                existing = None
                if st is not None:
                    verdict = self._verdict(st, e)
                    if verdict == "keep":
                        self._count(e, kept=True)
                        return
                    existing = (st, verdict)
                submit(parent, name, comps, e, existing)
                return
            if not self._policy_allows(e):
                self.stats.not_created += 1
                return
            self.stats.others += 1
            if dry:
                self._count(e, restored=True)
                return
            st = None if parent.made else safefs.lstat(parent.fd, name)
            if st is not None:
                verdict = self._verdict(st, e)
                if verdict == "keep":
                    self._count(e, kept=True)
                    return
                if self._same_special(parent.fd, name, st, e):
                    self._count(e, unchanged=True)
                    return
            self._restore_special(parent.fd, name, comps, e, made=parent.made)

        step = handle
        if share:
            def on_mixed(comps: tuple, e: Entry):
                self._shared.add(comps)
                dirs.pop(comps, None)
                if not me and keeps_meta(comps, e):
                    mixed.append((comps, e))

            shares = Shares(share[1], me, place, on_mixed)

            def step(e: Entry, rel: bytes):
                for x, xrel, owned in shares.take(e, rel):
                    if owned:
                        handle(x, xrel)
                    else:
                        make_dir(x, xrel, owned=False)

        try:
            step(*first)
            for e, rel in entries:
                self._check_stop()
                step(e, rel)
                self._tick()
            flush_batch()
            for fut in pending:
                fut.exception()  # wait
            if failures:
                raise failures[0]  # e.g. NoSpace: never end "successfully" with files missing
            leave_to(())
            for comps, e in links:
                self._restore_hardlink(comps, e, restored)
            if expected is not None:
                self._delete_extra(self._delete_scopes(sub, entry0), expected)
            if not dry:
                self._apply_dir_meta(list(dirs.items()))
            damaged = fetcher.damaged | self.repo.degraded
            if share and me:
                self._child_damaged = damaged
            elif share:
                # The mixed directories, once every process is done with them.
                damaged |= self._join_children()
                self._apply_dir_meta(sorted(mixed, key=lambda d: d[0]))
            if damaged and not dry and not me:
                # (also what was read from a copy or rebuilt from parity: the
                # saves that have it store it again, check --repair rewrites it)
                self._publish_hint(damaged)
            self._report_unmatched()
        except BaseException:
            self._failed = True  # (the directories still open keep 0700: they may lack entries)
            raise
        finally:
            pool.shutdown(wait=True)
            fetcher.close()
            for _, h in stack:
                if h is not None:
                    h.release()
        self.stats.duration = round(time.monotonic() - started, 3)
        self._tick(force=True)
        return self.stats

    def _publish_hint(self, damaged: set[bytes]):
        """A damaged blob is named in a repair hint, so that every save that
        still has the data uploads it again (best effort: a restore host may
        hold read-only credentials)."""
        from .errors import RekkordError

        try:
            self.stats.repair_hint = self.repo.write_repair(sorted(damaged))
        except RekkordError:
            pass

    def _policy_allows(self, e: Entry) -> bool:
        """Device nodes and FIFOs unless --no-special; sockets never (they
        belong to running programs)."""
        if e.kind == K_SOCKET:
            return False
        if e.kind in (K_CHAR, K_BLOCK, K_FIFO):
            return self.opts.special
        return True

    def _open_or_make_dir(self, parent: safefs.DirHandle, comps: tuple, e: Entry) -> safefs.DirHandle | None:
        """Create (0700 until its metadata is set at the end) or open the
        directory ``comps[-1]`` in ``parent``; a symlink or a file where it
        goes is never followed: without --overwrite nothing is restored below
        it, with it the link (or file) is replaced."""
        name = comps[-1]
        made = False
        try:
            if self.opts.delete:
                _clear_conflict(parent.fd, name, want_dir=True)
            try:
                os.mkdir(name, 0o700, dir_fd=parent.fd)
                made = True
            except FileExistsError:
                # In a directory this restore made, only its own processes
                # create entries: another process of a shared restore made
                # this one (and it holds only what they write).
                made = self._sharing and parent.made
            try:
                fd = safefs.open_dir(parent.fd, name)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # A symlink (or a file) where a directory goes: never
                # restore through it (it may point outside DEST).
                if not self.replaces:
                    self.warn(self._show(comps), "exists and is not a directory (symlinks in DEST are never "
                              "followed); nothing restored below it (--overwrite never)")
                    return None
                safefs.unlink(parent.fd, name)
                os.mkdir(name, 0o700, dir_fd=parent.fd)
                made = True
                fd = safefs.open_dir(parent.fd, name)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left creating {self._show(comps)}") from None
            self.warn(self._show(comps), f"cannot create directory: {err.strerror}")
            return None
        if not made:
            self._remove_leftovers(fd, comps)
        # (only unnamed files are created with their mode: without them, no
        # getxattr per directory.  A directory made in one this restore made
        # -- the only ones whose answer is known -- has a default ACL if and
        # only if its parent has: the kernel copies it down, and the parent's
        # own is set only once it is done.)
        acl = None
        if made and self._unnamed and self._umask is not None:
            acl = parent.default_acl if parent.default_acl is not None else safefs.has_default_acl(fd)
        return self._registry.handle(fd, made, acl)

    def _remove_leftovers(self, dfd: int, comps: tuple):
        """An interrupted restore (killed, power lost) leaves its temporary
        files (``.rekkord-tmp-<12 hex>-<n>``) in the directories it was
        writing: the next restore into the directory removes them (never a
        directory, never this run's own).  Two restores into one DEST at
        once are not supported: each would take the other's for leftovers."""
        try:
            with os.scandir(dfd) as it:
                names = [os.fsencode(d.name) for d in it if TMP_NAME.match(os.fsencode(d.name))]
        except OSError:
            return
        for nb in names:
            if nb.startswith(self._tmp_prefix):
                continue
            st = safefs.lstat(dfd, nb)
            if st is None or statmod.S_ISDIR(st.st_mode):
                continue
            try:
                os.unlink(nb, dir_fd=dfd)
            except OSError:
                continue
            with self.lock:
                self.stats.temporaries_removed += 1

    def _meta_early(self, e: Entry) -> bool:
        """Whether a directory's metadata may be set as soon as its handle
        closes, instead of in the pass at the end: not with --delete (which
        removes entries at the end), and only where its mode still lets us
        through it to the targets of hard links made at the end (its owner
        may enter and write it, or we are root)."""
        return not self.opts.delete and (self._root_user or e.mode & 0o700 == 0o700)

    def _dir_closed(self, fd: int, comps: tuple, e: Entry):
        """A directory handle's last release: every entry of it is written
        (the walk has left it and its files are done), so its metadata goes
        on now, on whichever thread was last, unless hard links still go
        into it or the restore failed (then it keeps 0700: it may lack
        entries)."""
        if self._failed or comps in self._dirs_late or comps in self._shared:
            return
        self._set_dir_meta(fd, comps, e)
        self._dirs_todo.pop(comps, None)

    def _apply_dir_meta(self, dirs: list[tuple[tuple, Entry]]):
        """Directory modes, owners and times, children before parents (their
        creation changed the parents' times; a parent made read-only first
        could not be entered), each reached again from DEST without
        following a symlink."""
        root = self._root.fd
        chain: list[tuple[tuple, int | None, Entry]] = []  # open directories enclosing the current one

        def pop():
            comps, fd, e = chain.pop()
            if fd is not None:
                try:
                    self._set_dir_meta(fd, comps, e)
                finally:
                    os.close(fd)

        try:
            for comps, e in dirs:
                if not comps:
                    continue
                while chain and chain[-1][0] != comps[:len(chain[-1][0])]:
                    pop()
                fd = None
                try:
                    if chain and chain[-1][0] == comps[:-1] and chain[-1][1] is not None:
                        fd = safefs.open_dir(chain[-1][1], comps[-1])
                    else:  # its parent is not in the list (DEST, or a directory DEST had)
                        fd = safefs.open_path(root, comps)
                except OSError as err:
                    self.warn(self._show(comps), f"cannot set metadata: {err.strerror}")
                chain.append((comps, fd, e))
            while chain:
                pop()
            for comps, e in dirs:
                if not comps:
                    self._set_dir_meta(root, comps, e)
        finally:
            for _, fd, _ in chain:
                if fd is not None:
                    os.close(fd)

    def _set_dir_meta(self, fd: int, comps: tuple, e: Entry):
        try:
            self._meta_fd(fd, comps, e)
            os.utime(fd, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns))
        except OSError as err:
            self.warn(self._show(comps), f"cannot set metadata: {err.strerror}")

    # ---- --delete ----------------------------------------------------------------

    def _delete_scopes(self, sub: bytes, entry0: Entry) -> list[tuple[tuple, bytes]]:
        """(DEST components, snapshot path) of the trees --delete cleans: DEST
        for a directory, the saved paths for a whole snapshot (never the
        directories above them), nothing for a single file."""
        if sub:
            return [((), sub)] if entry0.kind == K_DIR else []
        out = []
        for p in self.repo.private(self.snap).get("paths", []):
            rel = normalize_subpath(p)
            out.append((tuple(rel.split(b"/")) if rel else (), rel))
        return out

    def _delete_extra(self, scopes: list[tuple[tuple, bytes]], expected: set[tuple]):
        if self._root is not None:
            root = os.dup(self._root.fd)
        else:  # a dry run counts what DEST (if it exists) has
            try:
                root = safefs.open_root(os.fsencode(self._dest_s))
            except OSError:
                return
        try:
            for top, snap_top in scopes:
                try:
                    fd = safefs.open_path(root, top)
                except OSError:
                    continue  # not there, or not a directory (never followed)
                try:
                    self._delete_below(fd, top, snap_top, expected)
                finally:
                    os.close(fd)
        finally:
            os.close(root)

    def _delete_below(self, fd: int, top: tuple, snap_top: bytes, expected: set[tuple]):
        top_dev = os.fstat(fd).st_dev
        # os.fwalk works on descriptors and never follows a symlink (one is
        # deleted as a file, its target untouched).
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", topdown=False, follow_symlinks=False, dir_fd=fd):
            base = tuple(c for c in os.fsencode(dirpath).split(b"/") if c not in (b"", b"."))
            for name in dirnames + filenames:
                nb = os.fsencode(name)
                comps = top + base + (nb,)
                if comps in expected:
                    continue
                sp = b"/".join(((snap_top,) if snap_top else ()) + base + (nb,))
                st = safefs.lstat(dfd, nb)
                if st is None:
                    continue
                is_dir = statmod.S_ISDIR(st.st_mode)
                if is_dir and st.st_dev != top_dev:
                    continue  # another file system mounted here: not ours to clean
                if self.filter.select(sp, is_dir, mark=False) != PathFilter.YES:
                    continue  # outside the selection (excluded / not included): kept
                if self.opts.dry_run:
                    self.stats.deleted += 1
                    continue
                try:
                    if is_dir:
                        os.rmdir(nb, dir_fd=dfd)
                    else:
                        os.unlink(nb, dir_fd=dfd)
                    self.stats.deleted += 1
                except OSError as err:
                    if is_dir and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        continue  # holds entries the patterns protect
                    self.warn(self._show(comps), f"cannot delete: {err.strerror}")

    def _check_reflists(self, *, whole: bool):
        """Restore does not need the reference lists, but prune does: say so
        when one is damaged (read whole for a whole snapshot, else only
        looked up), and when only a copy of one is intact."""
        from . import format as fmt

        where = f"(snapshot {self.snap.id[:8]} reference list)"
        for copies in self.snap.copies_of("reflist"):
            bid = copies[0][0]
            try:
                if whole:
                    self.repo.read_copies(copies, fmt.T_REFLIST, on_copy=lambda m: self.warn(where, m))
                    continue
                problems = []
                for cid, size in copies:
                    actual = self.repo.storage.stat(fmt.blob_name(cid))
                    if actual is None:
                        problems.append((cid, "missing"))
                    elif actual != size:
                        problems.append((cid, f"has {actual} bytes where {size} were stored"))
                if len(problems) == len(copies):
                    raise IntegrityError("; its copy ".join(f"{c.hex()}: {m}" if i else m
                                                            for i, (c, m) in enumerate(problems)))
                for cid, m in problems:
                    self.warn(where, f"reference list {cid.hex()} is {m}; another copy is intact, nothing is lost "
                              "(rekkord check --repair writes it again)")
            except (IntegrityError, StorageError) as err:
                msg = str(err).replace(f"blob {bid.hex()}: ", "")
                self.warn(where, f"reference list blob {bid.hex()} is damaged ({msg}); the files are not affected, "
                          "but prune cannot see which blobs this snapshot uses: run rekkord check")

    def _report_unmatched(self):
        """An --include pattern that selected nothing is a warning naming it
        (a typo must not look like a restore of nothing that went well).  An
        --exclude that removed nothing is not: all that was asked for is
        restored, and a standing exclude list (``*.tmp``) must not fail every
        restore; it is only recorded (``unmatched_excludes``), for a note."""
        self.stats.unmatched = self.filter.unmatched()
        self.stats.unmatched_excludes = self.filter.unmatched_excludes()
        for pat in self.stats.unmatched:
            self.warn(f"--include {pat}", f"matches nothing in snapshot {self.snap.id[:8]}"
                      + (" below the path given" if self._sub else ""))

    # ---- what DEST already has (--overwrite) ---------------------------------------

    def _count(self, e: Entry, *, restored: bool = False, unchanged: bool = False, kept: bool = False,
               link: bool = False):
        """``link``: a hard link made to a file of this restore (its bytes are the first link's)."""
        size = e.size if e.kind in (K_FILE, K_HARDLINK) and not link else 0
        with self.lock:
            st = self.stats
            if restored:
                st.restored += 1
                st.bytes_restored += size
                return
            st.skipped += 1
            st.bytes_skipped += size
            if unchanged:
                st.unchanged += 1
            if kept:
                st.kept += 1

    def _verdict(self, st, e: Entry) -> str:
        """What to do with ``st`` (an lstat of what DEST has where ``e``
        goes): "keep" it as it is, "same" (if-changed: size and mtime match,
        take it as unchanged), or "compare" (the content decides)."""
        mode = self.mode
        if mode == "never":
            return "keep"
        if mode == "if-newer" and st.st_mtime_ns >= e.mtime_ns:
            return "keep"
        if mode == "if-changed" and e.kind in (K_FILE, K_HARDLINK) and statmod.S_ISREG(st.st_mode) \
                and st.st_size == e.size and st.st_mtime_ns == e.mtime_ns:
            return "same"
        return "compare"

    def _same_special(self, dfd: int, name: bytes, st, e: Entry) -> bool:
        """A symlink with the same target, a FIFO, a device with the same
        number, with the snapshot's mtime: nothing to do (anything else is
        replaced, through a temporary name, never followed)."""
        if st.st_mtime_ns != e.mtime_ns:
            return False
        if e.kind == K_SYMLINK:
            if not statmod.S_ISLNK(st.st_mode):
                return False
            try:
                return os.readlink(name, dir_fd=dfd) == e.target
            except OSError:
                return False
        if e.kind == K_FIFO:
            return statmod.S_ISFIFO(st.st_mode)
        if e.kind in (K_CHAR, K_BLOCK):
            want = statmod.S_ISCHR if e.kind == K_CHAR else statmod.S_ISBLK
            return want(st.st_mode) and st.st_rdev == e.rdev
        return False

    def _place_file(self, parent: safefs.DirHandle, name: bytes, comps: tuple, e: Entry, fetcher: BlobFetcher,
                    existing) -> tuple | None:
        """A file where DEST may have one already: kept when it is the
        snapshot's (its metadata set again), else written."""
        if existing is not None:
            st, verdict = existing
            if self._reuse(parent, name, comps, e, fetcher, st, compare=verdict == "compare"):
                self._count(e, unchanged=True)
                return comps
        return self._restore_file(parent, name, comps, e, fetcher)

    def _reuse(self, parent: safefs.DirHandle, name: bytes, comps: tuple, e: Entry, fetcher: BlobFetcher, st, *,
               compare: bool) -> bool:
        """Whether the file DEST has under ``name`` is the snapshot's file
        (``compare``: read it and check; else size and mtime said so), and if
        so set its metadata.  Only a regular file with one link is ever
        reused: one with more may share its inode with a file outside DEST,
        whose mode or owner must never change.  It is opened without
        following a symlink and must be the very inode that was looked at."""
        if not statmod.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != e.size \
                or sum(x.length for x in e.extents) != e.size:
            return False
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent.fd)
        except OSError:
            return False
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) or not statmod.S_ISREG(fst.st_mode) \
                    or fst.st_nlink != 1 or fst.st_size != e.size:
                return False
            if compare and not self._same_content(fd, e, fetcher):
                return False
            self._meta_fd(fd, comps, e, parent, existing=fst)
            os.utime(fd, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns))
            return True
        except OSError:
            return False  # unreadable, or its metadata cannot be set: written anew
        finally:
            os.close(fd)

    def _same_content(self, fd: int, e: Entry, fetcher: BlobFetcher) -> bool:
        """Whether the open file holds exactly ``e``'s content.  Each extent
        is hashed with the blob id key: a whole blob (every chunk of a large
        file) is settled by its plaintext id without a download; a range of
        a pack (small files) by fetching the pack, as a restore would."""
        codec = self.repo.codec
        whole = e.size >= self.repo.chunker_params.min_size  # cut into chunks: extents are whole blobs
        pos = 0
        for x in e.extents:
            local = _pread_all(fd, x.length, pos)
            pos += x.length
            if len(local) != x.length:
                return False
            pid = x.key if codec.convergent else x.blob
            if x.offset == 0 and pid and hmac.compare_digest(codec.plain_id(T_DATA, local), pid):
                continue
            if whole and x.offset == 0:
                return False
            try:
                blob = fetcher.get(x.blob, x.key).result()
            except (IntegrityError, StorageError):
                return False  # written anew: the restore then names the damage
            if blob[x.offset:x.offset + x.length] != local:
                return False
        return True

    # ---- files -----------------------------------------------------------------

    def _tmp_name(self) -> bytes:
        # A random prefix per restore and a counter: unique without a
        # getrandom() per file.
        return self._tmp_prefix + b"%d" % next(self._tmp_counter)

    def _restore_file(self, parent: safefs.DirHandle, name: bytes, comps: tuple, e: Entry,
                      fetcher: BlobFetcher) -> tuple | None:
        """Returns the file's DEST components once it is in place, else None."""
        dfd = parent.fd
        tmp = None  # the temporary name, or None: the file has no name until it is complete
        created = None  # the mode it was created with, when known
        fd = None
        try:
            if parent.made and self._unnamed:
                mode = e.mode & 0o777
                try:
                    fd = safefs.create_unnamed(dfd, mode)
                    if parent.plain:
                        created = mode & ~self._umask
                except OSError as err:
                    if err.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise
                    if err.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                        self._unnamed = False  # this file system cannot: temporary names from now on
            if fd is None:
                tmp = self._tmp_name()
                fd = safefs.create(dfd, tmp)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left writing {self._show(comps)}") from None
            self.warn(self._show(comps), f"cannot create: {err.strerror}")
            return None
        damaged = None
        written_end = 0
        writer = self._direct.writer(fd, HOLE_BLOCK) if e.size >= directio.MIN_SIZE else None
        try:
            pos = 0
            window = 4
            futs = [fetcher.get(x.blob, x.key) for x in e.extents[:window]]
            for i, x in enumerate(e.extents):
                self._check_stop()
                if i + window < len(e.extents):
                    futs.append(fetcher.get(e.extents[i + window].blob, e.extents[i + window].key))
                try:
                    blob = futs[i].result()
                except (IntegrityError, StorageError) as err:
                    damaged = damaged or str(err)
                    futs[i] = None
                    pos += x.length  # leave a hole
                    if not self.opts.keep_damaged:
                        break
                    continue
                futs[i] = None
                data = blob[x.offset:x.offset + x.length]
                if len(data) != x.length:
                    damaged = damaged or f"blob {x.blob.hex()} is shorter than the index says"
                    if not self.opts.keep_damaged:
                        break
                if writer is not None:
                    writer.write(data, pos)
                else:
                    written_end = _write_sparse(fd, data, pos)
                pos += x.length
            if writer is not None:
                written_end = writer.finish()
                writer = None
            if damaged is None or self.opts.keep_damaged:
                if written_end != e.size:  # a trailing hole, an empty or a short file
                    os.ftruncate(fd, e.size if pos == e.size else pos)
                self._meta_fd(fd, comps, e, parent, created=created)
                os.utime(fd, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns))
        except BaseException as err:  # (also stopped, interrupted, a failed fetch: nothing half-written left)
            os.close(fd)
            if tmp is not None:
                safefs.unlink(dfd, tmp)
            if not isinstance(err, OSError):
                raise
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left writing {self._show(comps)}") from None
            self.warn(self._show(comps), f"cannot write: {err.strerror}")
            return None
        if damaged is not None and not self.opts.keep_damaged:
            os.close(fd)
            if tmp is not None:
                safefs.unlink(dfd, tmp)
            with self.lock:
                self._damaged_paths.add(e.path)
            self.warn(self._show(comps), f"DAMAGED, not restored: {damaged}", damaged=True)
            return None
        try:
            self._put_in_place(fd, dfd, tmp, name)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left writing {self._show(comps)}") from None
            what = "DAMAGED, and cannot rename into place" if damaged is not None else "cannot rename into place"
            self.warn(self._show(comps), f"{what}: {err.strerror}", damaged=damaged is not None)
            return None
        finally:
            os.close(fd)
        if damaged is not None:
            with self.lock:
                self._damaged_paths.add(e.path)
            self.warn(self._show(comps), f"DAMAGED (kept, with holes where data is missing): {damaged}", damaged=True)
            self._count(e, restored=True)
            return comps
        self._count(e, restored=True)
        if self.opts.verify:
            self._verify(dfd, name, comps, e, fetcher)
        return comps

    def _put_in_place(self, fd: int, dfd: int, tmp: bytes | None, name: bytes) -> None:
        """Give the complete file its name: link the unnamed file (``tmp``
        None), else rename the temporary one over whatever is there (never
        followed).  Something that appeared under the name meanwhile is
        replaced the same way; nothing is left behind on failure."""
        if tmp is None:
            try:
                safefs.link_unnamed(fd, dfd, name)
                return
            except FileExistsError:
                pass
            tmp = self._tmp_name()
            safefs.link_unnamed(fd, dfd, tmp)
        try:
            safefs.rename(dfd, tmp, name)
        except OSError:
            safefs.unlink(dfd, tmp)
            raise

    def _verify(self, dfd: int, name: bytes, comps: tuple, e: Entry, fetcher: BlobFetcher):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as err:
            self.warn(self._show(comps), f"verification failed: cannot open: {err.strerror}", damaged=True)
            return
        with os.fdopen(fd, "rb") as f:
            for x in e.extents:
                expect = fetcher.get(x.blob, x.key).result()[x.offset:x.offset + x.length]
                if f.read(x.length) != expect:
                    self.warn(self._show(comps), "verification failed: content differs after writing", damaged=True)
                    return
            if f.read(1):
                self.warn(self._show(comps), "verification failed: file is longer than saved", damaged=True)
                return
        with self.lock:
            self.stats.verified += 1

    def _mode(self, e: Entry, owned: bool) -> int:
        """The mode to apply: setuid/setgid only with the owner they were
        saved with (a setuid file owned by whoever restores it is not what
        was saved, and may be a hole), never with --no-setuid."""
        mode = e.mode & 0o7777
        if mode & 0o6000 and not (self.opts.setuid and owned):
            with self.lock:
                self.stats.setuid_dropped += 1
            mode &= ~0o6000
        return mode

    def _meta_fd(self, fd: int, comps: tuple, e: Entry, parent: safefs.DirHandle | None = None, existing=None,
                 created: int | None = None):
        """Owner, mode and xattrs through an open descriptor (times are the
        caller's: they must come after the last write).  ``existing``: the
        fstat of a file DEST had (its owner is its own, not ours);
        ``created``: the mode a new file is known to have (no fchmod if it
        is the one to apply)."""
        owned = (e.uid, e.gid) == ((existing.st_uid, existing.st_gid) if existing is not None else self._creator)
        if self.owner:
            # A file we create belongs to us, unless its directory (one we did
            # not make) passes its group down with the setgid bit: then always chown.
            if not owned or parent is None or not parent.made or existing is not None:
                try:
                    os.fchown(fd, e.uid, e.gid)
                    owned = True
                except OSError as err:
                    self.warn(self._show(comps), f"cannot set owner: {err.strerror}")
                    owned = False
            else:
                owned = True
        elif parent is not None and not parent.made:
            owned = owned and os.fstat(fd).st_gid == e.gid
        mode = self._mode(e, owned)
        if mode != created:
            os.fchmod(fd, mode)
        self._xattrs(fd, comps, e)

    def _xattrs(self, target, comps: tuple, e: Entry, follow=True):
        for k, v in e.xattrs:
            name = k.decode(errors="surrogateescape")
            if not (name.startswith("user.") or self.owner):
                continue
            try:
                os.setxattr(target, name, v, follow_symlinks=follow)
            except OSError as err:
                if name.startswith("user."):
                    self.warn(self._show(comps), f"cannot set xattr {name}: {err.strerror}")

    # ---- links and special files ------------------------------------------------------

    def _restore_hardlink(self, comps: tuple, e: Entry, restored: dict[bytes, Future]):
        spath = self._show(comps)
        fut = restored.get(e.target)
        first = fut.result() if fut is not None and fut.exception() is None else None
        if isinstance(first, dict):  # restored in a batch of small files
            first = first.get(e.target)
        target_damaged = e.target in self._damaged_paths
        if first is None:
            if target_damaged:
                self.warn(spath, f"DAMAGED, not restored: hard link to /{os.fsdecode(e.target)}, whose data is "
                          "damaged", damaged=True)
            else:
                self.warn(spath, "hard link target was not restored; link skipped")
            return
        if target_damaged:
            self.warn(spath, f"DAMAGED (kept, with holes): hard link to /{os.fsdecode(e.target)}", damaged=True)
        root = self._root.fd
        src_fd = dst_fd = None
        tmp = self._tmp_name()
        try:
            src_fd = safefs.open_path(root, first[:-1])
            dst_fd = safefs.open_path(root, comps[:-1])
            st = safefs.lstat(dst_fd, comps[-1])
            if st is not None:
                verdict = self._verdict(st, e)
                src = safefs.lstat(src_fd, first[-1])
                same = src is not None and (src.st_dev, src.st_ino) == (st.st_dev, st.st_ino)
                if verdict == "keep" or same:  # (already this link: nothing to do)
                    self.stats.files += 1
                    self._count(e, unchanged=verdict != "keep", kept=verdict == "keep", link=True)
                    return
            safefs.link(src_fd, first[-1], dst_fd, tmp)
            safefs.rename(dst_fd, tmp, comps[-1])
            self.stats.files += 1
            self._count(e, restored=True, link=True)
        except OSError as err:
            if dst_fd is not None:
                safefs.unlink(dst_fd, tmp)
            self.warn(spath, f"cannot create hard link: {err.strerror}")
        finally:
            for fd in (src_fd, dst_fd):
                if fd is not None:
                    os.close(fd)

    def _restore_special(self, dfd: int, name: bytes, comps: tuple, e: Entry, *, made: bool = False):
        """``made``: ``dfd`` is a directory this restore made, which holds
        nothing but what it wrote: a symlink goes straight under its name
        (one system call less), unless something took the name meanwhile."""
        tmp = self._tmp_name()
        try:
            if e.kind == K_SYMLINK:
                if made and _symlink_if_free(e.target, dfd, name):
                    tmp = name
                else:
                    os.symlink(e.target, tmp, dir_fd=dfd)
            elif e.kind == K_FIFO:
                os.mkfifo(tmp, 0o600, dir_fd=dfd)
            elif e.kind in (K_CHAR, K_BLOCK):
                kind = statmod.S_IFCHR if e.kind == K_CHAR else statmod.S_IFBLK
                try:
                    os.mknod(tmp, 0o600 | kind, e.rdev, dir_fd=dfd)
                except PermissionError:
                    self.warn(self._show(comps), "device node not recreated (needs root)")
                    return
            else:
                return
        except (OSError, OverflowError, ValueError) as err:
            safefs.unlink(dfd, tmp)
            self.warn(self._show(comps), f"cannot create {e.kind_name}: {getattr(err, 'strerror', None) or err}")
            return
        try:
            times = (e.atime_ns or e.mtime_ns, e.mtime_ns)
            if e.kind == K_SYMLINK:
                if self.owner:
                    os.chown(tmp, e.uid, e.gid, dir_fd=dfd, follow_symlinks=False)
                if e.xattrs:
                    self._xattrs(safefs.proc_path(dfd, tmp), comps, e, follow=False)
                os.utime(tmp, ns=times, dir_fd=dfd, follow_symlinks=False)
            else:
                # A FIFO or a device node: opening it for real could block or
                # touch a device, so its metadata goes through an O_PATH
                # descriptor of the node itself (never a symlink in its place).
                with safefs.node(dfd, tmp) as path:
                    owned = (e.uid, e.gid) == self._creator
                    if self.owner:
                        try:
                            os.chown(path, e.uid, e.gid)
                            owned = True
                        except OSError as err:
                            self.warn(self._show(comps), f"cannot set owner: {err.strerror}")
                            owned = False
                    os.chmod(path, self._mode(e, owned))
                    if e.xattrs:
                        self._xattrs(path, comps, e)
                    os.utime(path, ns=times)
            if tmp != name:
                safefs.rename(dfd, tmp, name)
            self._count(e, restored=True)
        except OSError as err:
            safefs.unlink(dfd, tmp)
            self.warn(self._show(comps), f"cannot restore {e.kind_name}: {err.strerror}")


def _symlink_if_free(target: bytes, dfd: int, name: bytes) -> bool:
    try:
        os.symlink(target, name, dir_fd=dfd)
    except FileExistsError:
        return False
    return True


def _clear_conflict(parent_fd: int, name: bytes, *, want_dir: bool) -> None:
    """--delete: remove what stands where an entry of another type goes (a
    symlink where a directory goes is removed too, never followed)."""
    st = safefs.lstat(parent_fd, name)
    if st is None:
        return
    if statmod.S_ISDIR(st.st_mode):
        if not want_dir:
            safefs.remove_tree(parent_fd, name)
    elif want_dir:
        safefs.unlink(parent_fd, name)


def _write_sparse(fd: int, data: bytes, pos: int) -> int:
    """Write ``data`` at ``pos``, leaving aligned all-zero blocks as holes.
    Returns the end of the last byte written (less than pos + len for a
    trailing hole; then the file needs an ftruncate to reach its size)."""
    mv = memoryview(data)
    n = len(mv)
    if n < HOLE_BLOCK or data[:HOLE_BLOCK] != ZERO_BLOCK and data[-HOLE_BLOCK:] != ZERO_BLOCK and \
            data[n // 2:n // 2 + HOLE_BLOCK] != ZERO_BLOCK:
        # Quick path: no zero block at the start, middle or end (nearly always
        # true for real data); write it whole.
        _pwrite_all(fd, mv, pos)
        return pos + n
    start = 0  # beginning of the pending non-zero run
    i = 0
    while i < n:
        end = min(i + HOLE_BLOCK, n)
        if end - i == HOLE_BLOCK and data[i:end] == ZERO_BLOCK:
            if start < i:
                _pwrite_all(fd, mv[start:i], pos + start)
            start = end
        i = end
    if start < n:
        _pwrite_all(fd, mv[start:], pos + start)
        return pos + n
    return pos  # ends in a hole: the caller's ftruncate sets the size


def _pread_all(fd: int, n: int, off: int) -> bytes:
    parts = []
    while n > 0:
        b = os.pread(fd, min(n, 8 << 20), off)
        if not b:
            break
        parts.append(b)
        n -= len(b)
        off += len(b)
    return b"".join(parts)


def _pwrite_all(fd: int, mv: memoryview, off: int) -> None:
    while mv:
        k = os.pwrite(fd, mv, off)
        mv = mv[k:]
        off += k


def _unlink(path: bytes):
    try:
        os.unlink(path)
    except OSError:
        pass

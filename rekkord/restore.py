"""Restoring a snapshot (or part of it) into a directory.

Files are written under a temporary name in their final directory, with
positional writes (holes for all-zero extents and the tail, so sparse files
stay sparse), then given their metadata and renamed into place.  A file whose
data is damaged is never left under its final name (unless ``keep_damaged``);
every other file still restores.
"""

from __future__ import annotations

import errno
import fnmatch
import itertools
import os
import stat as statmod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import IntegrityError, NoSpace, StorageError, UsageError
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
from .snapshot import BlobFetcher, normalize_subpath, select

HOLE_BLOCK = 64 * 1024
BATCH_FILE_MAX = 1024 * 1024  # files up to this size, in one extent, are restored in batches
ZERO_BLOCK = bytes(HOLE_BLOCK)


@dataclass
class RestoreOptions:
    overwrite: bool = False
    dry_run: bool = False
    owner: bool | None = None  # None: restore owners when running as root
    keep_damaged: bool = False
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    threads: int | None = None
    verify: bool = False
    delete: bool = False  # remove what DEST has beyond the selection (implies overwrite)


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes: int = 0
    skipped: int = 0
    damaged: int = 0
    warnings: int = 0
    deleted: int = 0
    verified: int = 0
    duration: float = 0.0


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
        self.inc = [self._compile(p) for p in includes if p.strip()]
        self.exc = [self._compile(p) for p in excludes if p.strip()]

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
    def _hits(pats, path: bytes) -> bool:
        comps = os.fsdecode(path).split("/")
        for name, rx in pats:
            if name is not None:
                if any(fnmatch.fnmatchcase(c, name) for c in comps):
                    return True
            else:
                for i in range(len(comps)):
                    if rx.fullmatch("/" + "/".join(comps[:i + 1])):
                        return True
        return False

    def active(self) -> bool:
        return bool(self.inc or self.exc)

    def select(self, path: bytes, is_dir: bool) -> int:
        if self.exc and self._hits(self.exc, path):
            return self.NO
        if not self.inc or self._hits(self.inc, path):
            return self.YES
        return self.MAYBE if is_dir else self.NO


class Restorer:
    def __init__(self, repo: Repository, snap: Snapshot, options: RestoreOptions | None = None,
                 progress=None, warn=None):
        repo.key.require("read", "restore files")
        if not snap.signature_ok:
            # Forged, altered, or signed by a revoked or uncertified key: its
            # files could be anyone's choice (docs/integrity.md).
            raise IntegrityError(f"snapshot {snap.id} is not trusted ({'; '.join(snap.problems)}); "
                                 "refusing to restore it")
        self.repo = repo
        self.snap = snap
        self.opts = options or RestoreOptions()
        if self.opts.delete:
            from dataclasses import replace

            self.opts = replace(self.opts, overwrite=True)
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
        self._tmp_prefix = os.urandom(6).hex().encode() + b"-"
        self._tmp_counter = itertools.count()
        self._creator = (os.geteuid(), os.getegid())  # owner of the files we create
        self._made_dirs: set[bytes] = set()
        self._salvaged = False  # part of the index was lost: parents may be missing
        self._damaged_paths: set[bytes] = set()  # snapshot paths of files restored damaged or not at all

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
            self.progress(self.stats)

    def restore(self, subpath: str | bytes | None, dest: str) -> RestoreStats:
        started = time.monotonic()
        sub = normalize_subpath(subpath)
        dest_b = os.path.abspath(os.fsencode(dest))
        from .check import describe_loss, iter_entries_salvaging

        def index_damage(blobs, before, after):
            # Records in damaged index blobs are lost; every other entry restores.
            self._salvaged = True
            self.warn(f"(snapshot {self.snap.id[:8]} index)", "DAMAGED: " + describe_loss(blobs, before, after),
                      damaged=True)

        self._check_reflists(whole=not sub)
        entries = select(iter_entries_salvaging(self.repo, self.snap, index_damage), sub)
        first = None
        try:
            first = next(entries)
        except StopIteration:
            pass
        if first is None:
            return self.stats
        entry0, rel0 = first
        # A single file lands at DEST/<name>; a directory's content lands in DEST.
        if sub and entry0.kind != K_DIR:
            def target(rel: bytes) -> bytes:
                return dest_b + b"/" + entry0.name
        elif sub:
            def target(rel: bytes) -> bytes:
                return dest_b + b"/" + rel if rel else dest_b
        else:
            def target(rel: bytes) -> bytes:
                return dest_b + b"/" + rel

        if not self.opts.dry_run:
            try:
                os.makedirs(dest_b, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create {os.fsdecode(dest_b)}: {e.strerror}") from None
        fetcher = BlobFetcher(self.repo, max(4, self.threads * 2, min(self.repo.storage.connections, 32)))
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rekkord-restore")
        inflight = threading.BoundedSemaphore(64)
        dirs: list[tuple[bytes, Entry]] = []
        # Memory must not grow with the number of files: only possible hard
        # link targets are remembered (F_LINKED marks them; snapshots made
        # before the flag existed remember every file), and finished tasks
        # are dropped from ``pending``.
        all_linkable = not self.snap.record.get("linked_flag")
        restored: dict[bytes, Future] = {}  # snapshot path of a link target -> future of final path
        pending: list[Future] = []
        failures: list[BaseException] = []
        links: list[tuple[bytes, Entry]] = []
        held: list[tuple[Entry, bytes]] = []  # directories waiting for an included entry below them
        blocked: list[bytes] = []  # directories DEST has a non-directory for: their content is skipped
        expected: set[bytes] | None = set() if self.opts.delete else None  # what DEST keeps (--delete)

        def run_file(path: bytes, e: Entry) -> bytes | None:
            try:
                return self._restore_file(path, e, fetcher)
            finally:
                inflight.release()

        # Small files that share a pack are restored by one task, in order:
        # one fetch of the pack, no per-file hand-off between threads.
        batch: dict = {"items": [], "blob": None, "fut": None}

        def run_batch(items: list[tuple[bytes, Entry]], fut: Future):
            out = {}
            try:
                for path, e in items:
                    final = self._restore_file(path, e, fetcher)
                    if all_linkable or e.flags & F_LINKED:
                        out[e.path] = final
                fut.set_result(out)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                fut.set_exception(exc)
            finally:
                inflight.release()

        def track(fut: Future):
            fut.add_done_callback(lambda f: f.exception() is None or failures.append(f.exception()))
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

        def submit(path: bytes, e: Entry):
            linkable = all_linkable or e.flags & F_LINKED
            if len(e.extents) == 1 and e.size <= BATCH_FILE_MAX:
                blob = e.extents[0].blob
                if batch["items"] and (blob != batch["blob"] or len(batch["items"]) >= 512):
                    flush_batch()
                if not batch["items"]:
                    batch["blob"], batch["fut"] = blob, Future()
                batch["items"].append((path, e))
                if linkable:
                    restored[e.path] = batch["fut"]
                return
            inflight.acquire()
            fut = pool.submit(run_file, path, e)
            track(fut)
            if linkable:
                restored[e.path] = fut

        def make_dir(e: Entry, rel: bytes):
            path = target(rel)
            if expected is not None:
                expected.add(path)
            if not self.opts.dry_run:
                try:
                    if self.opts.delete:
                        _clear_conflict(path, want_dir=True)
                    try:
                        os.mkdir(path)
                        self._made_dirs.add(path)  # ours: no setgid bit until the end
                    except FileExistsError:
                        if not statmod.S_ISDIR(os.lstat(path).st_mode):
                            # A symlink (or a file) where a directory goes: never
                            # restore through it (it may point outside DEST).
                            if not self.opts.overwrite:
                                self.warn(os.fsdecode(path), "exists and is not a directory (symlinks in DEST "
                                          "are never followed); nothing restored below it (use --overwrite)")
                                blocked.append(e.path)
                                return False
                            os.unlink(path)
                            os.mkdir(path)
                            self._made_dirs.add(path)
                    except FileNotFoundError:
                        os.makedirs(path, exist_ok=True)
                except OSError as err:
                    self.warn(os.fsdecode(path), f"cannot create directory: {err.strerror}")
            self.stats.dirs += 1
            if rel or not sub:
                dirs.append((path, e))  # its metadata is set at the end
            return True

        def handle(e: Entry, rel: bytes):
            while blocked and not e.path.startswith(blocked[-1] + b"/"):
                blocked.pop()
            if blocked:
                return  # below a directory DEST has a symlink for (named once, at the directory)
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
                    if not make_dir(he, hrel):
                        held.clear()
                        return
                held.clear()
            path = target(rel)
            if e.kind == K_DIR:
                make_dir(e, rel)
                return
            if self._salvaged and not self.opts.dry_run:
                os.makedirs(os.path.dirname(path), exist_ok=True)  # its directory's entry may be lost
            if expected is not None:
                expected.add(path)
                if not self.opts.dry_run:
                    try:
                        _clear_conflict(path, want_dir=False)
                    except OSError as err:
                        self.warn(os.fsdecode(path), f"cannot remove what is in the way: {err.strerror}")
                        return
            if e.kind == K_HARDLINK and e.target in restored:
                links.append((path, e))
                return
            if e.kind in (K_FILE, K_HARDLINK):
                if e.flags & F_UNREADABLE:
                    self.warn(os.fsdecode(path), "was unreadable when saved; not restored")
                    return
                self.stats.files += 1
                self.stats.bytes += e.size
                if self.opts.dry_run:
                    return
                if not self.opts.overwrite and os.path.lexists(path):
                    self._skip(path)
                    return
                submit(path, e)
                return
            self.stats.others += 1
            if self.opts.dry_run:
                return
            if not self.opts.overwrite and os.path.lexists(path):
                self._skip(path)
                return
            self._restore_special(path, e)

        try:
            handle(entry0, rel0)
            for e, rel in entries:
                handle(e, rel)
                self._tick()
            flush_batch()
            for fut in pending:
                fut.exception()  # wait
            if failures:
                raise failures[0]  # e.g. NoSpace: never end "successfully" with files missing
            for path, e in links:
                self._restore_hardlink(path, e, restored)
            if expected is not None:
                self._delete_extra(self._delete_scopes(sub, entry0, dest_b), expected)
            if not self.opts.dry_run:
                for path, e in reversed(dirs):
                    self._apply_meta(path, e, is_dir=True)
        finally:
            pool.shutdown(wait=True)
            fetcher.close()
        self.stats.duration = round(time.monotonic() - started, 3)
        self._tick(force=True)
        return self.stats

    # ---- --delete ----------------------------------------------------------------

    def _delete_scopes(self, sub: bytes, entry0: Entry, dest_b: bytes) -> list[tuple[bytes, bytes]]:
        """(directory in DEST, its path in the snapshot) trees that --delete cleans:
        DEST for a directory, the saved paths for a whole snapshot (never the
        directories above them), nothing for a single file."""
        if sub:
            return [(dest_b, sub)] if entry0.kind == K_DIR else []
        out = []
        for p in self.repo.private(self.snap).get("paths", []):
            rel = normalize_subpath(p)
            out.append((dest_b + b"/" + rel if rel else dest_b, rel))
        return out

    def _delete_extra(self, scopes: list[tuple[bytes, bytes]], expected: set[bytes]):
        for top, snap_top in scopes:
            try:
                top_dev = os.lstat(top).st_dev
            except OSError:
                continue
            if not statmod.S_ISDIR(os.lstat(top).st_mode):
                continue
            for dirpath, dirnames, filenames in os.walk(top, topdown=False):
                for name in dirnames + filenames:
                    path = os.path.join(dirpath, name)
                    if path in expected:
                        continue
                    sp = (snap_top + b"/" if snap_top else b"") + path[len(top) + 1:]
                    try:
                        st = os.lstat(path)
                    except FileNotFoundError:
                        continue
                    is_dir = statmod.S_ISDIR(st.st_mode)
                    if is_dir and st.st_dev != top_dev:
                        continue  # another file system mounted here: not ours to clean
                    if self.filter.select(sp, is_dir) != PathFilter.YES:
                        continue  # outside the selection (excluded / not included): kept
                    if self.opts.dry_run:
                        self.stats.deleted += 1
                        continue
                    try:
                        os.rmdir(path) if is_dir else os.unlink(path)
                        self.stats.deleted += 1
                    except OSError as err:
                        if is_dir and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                            continue  # holds entries the patterns protect
                        self.warn(os.fsdecode(path), f"cannot delete: {err.strerror}")

    def _check_reflists(self, *, whole: bool):
        """Restore does not need the reference lists, but prune does: say so
        when one is damaged (read whole for a whole snapshot, else only
        looked up)."""
        from . import format as fmt

        for bid, size in self.snap.reflist:
            try:
                if whole:
                    self.repo.read_blob(bid, fmt.T_REFLIST)
                    continue
                actual = self.repo.storage.stat(fmt.blob_name(bid))
                if actual is None:
                    raise IntegrityError("missing")
                if actual != size:
                    raise IntegrityError(f"has {actual} bytes where {size} were stored")
            except (IntegrityError, StorageError) as err:
                msg = str(err).replace(f"blob {bid.hex()}: ", "")
                self.warn(f"(snapshot {self.snap.id[:8]} reference list)",
                          f"reference list blob {bid.hex()} is damaged ({msg}); the files are not affected, "
                          "but prune cannot see which blobs this snapshot uses: run rekkord check")

    def _skip(self, path: bytes):
        with self.lock:
            self.stats.skipped += 1
        self.warn(os.fsdecode(path), "exists; not overwritten (use --overwrite)")

    # ---- files -----------------------------------------------------------------

    def _tmp_name(self, path: bytes) -> bytes:
        # A random prefix per restore and a counter: unique without a
        # getrandom() per file.
        d = os.path.dirname(path)
        return d + b"/.rekkord-tmp-" + self._tmp_prefix + b"%d" % next(self._tmp_counter)

    def _restore_file(self, path: bytes, e: Entry, fetcher: BlobFetcher) -> bytes | None:
        tmp = self._tmp_name(path)
        spath = os.fsdecode(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left writing {spath}") from None
            self.warn(spath, f"cannot create: {err.strerror}")
            return None
        damaged = None
        written_end = 0
        try:
            pos = 0
            window = 4
            futs = [fetcher.get(x.blob) for x in e.extents[:window]]
            for i, x in enumerate(e.extents):
                if i + window < len(e.extents):
                    futs.append(fetcher.get(e.extents[i + window].blob))
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
                written_end = _write_sparse(fd, data, pos)
                pos += x.length
            if damaged is None or self.opts.keep_damaged:
                if written_end != e.size:  # a trailing hole, an empty or a short file
                    os.ftruncate(fd, e.size if pos == e.size else pos)
                self._apply_meta_fd(fd, spath, e)
        except OSError as err:
            os.close(fd)
            _unlink(tmp)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left writing {spath}") from None
            self.warn(spath, f"cannot write: {err.strerror}")
            return None
        os.close(fd)
        if damaged is not None:
            with self.lock:
                self._damaged_paths.add(e.path)
            if self.opts.keep_damaged:
                try:
                    os.utime(tmp, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns), follow_symlinks=False)
                    os.replace(tmp, path)
                except OSError as err:
                    _unlink(tmp)
                    self.warn(spath, f"DAMAGED, and cannot rename into place: {err.strerror}", damaged=True)
                    return None
                self.warn(spath, f"DAMAGED (kept, with holes where data is missing): {damaged}", damaged=True)
                return path
            _unlink(tmp)
            self.warn(spath, f"DAMAGED, not restored: {damaged}", damaged=True)
            return None
        try:
            os.utime(tmp, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns), follow_symlinks=False)
            os.replace(tmp, path)
        except OSError as err:
            _unlink(tmp)
            self.warn(spath, f"cannot rename into place: {err.strerror}")
            return None
        if self.opts.verify:
            self._verify(path, e, fetcher)
        return path

    def _verify(self, path: bytes, e: Entry, fetcher: BlobFetcher):
        with open(path, "rb") as f:
            for x in e.extents:
                expect = fetcher.get(x.blob).result()[x.offset:x.offset + x.length]
                if f.read(x.length) != expect:
                    self.warn(os.fsdecode(path), "verification failed: content differs after writing",
                              damaged=True)
                    return
            if f.read(1):
                self.warn(os.fsdecode(path), "verification failed: file is longer than saved", damaged=True)
                return
        with self.lock:
            self.stats.verified += 1

    def _apply_meta_fd(self, fd: int, spath: str, e: Entry):
        # A file we create belongs to us, unless its directory (one we did not
        # make) passes its group down with the setgid bit: then always chown.
        if self.owner and ((e.uid, e.gid) != self._creator
                           or os.path.dirname(os.fsencode(spath)) not in self._made_dirs):
            try:
                os.fchown(fd, e.uid, e.gid)
            except OSError as err:
                self.warn(spath, f"cannot set owner: {err.strerror}")
        os.fchmod(fd, e.mode)
        self._xattrs(fd, spath, e)

    def _xattrs(self, target, spath: str, e: Entry, follow=True):
        for k, v in e.xattrs:
            name = k.decode(errors="surrogateescape")
            if not (name.startswith("user.") or self.owner):
                continue
            try:
                os.setxattr(target, name, v, follow_symlinks=follow)
            except OSError as err:
                if name.startswith("user."):
                    self.warn(spath, f"cannot set xattr {name}: {err.strerror}")

    def _apply_meta(self, path: bytes, e: Entry, is_dir=False):
        spath = os.fsdecode(path)
        try:
            if self.owner:
                os.chown(path, e.uid, e.gid, follow_symlinks=False)
            os.chmod(path, e.mode)
            self._xattrs(path, spath, e)
            os.utime(path, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns), follow_symlinks=False)
        except OSError as err:
            self.warn(spath, f"cannot set metadata: {err.strerror}")

    # ---- links and special files ------------------------------------------------------

    def _restore_hardlink(self, path: bytes, e: Entry, restored: dict[bytes, Future]):
        spath = os.fsdecode(path)
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
        if not self.opts.overwrite and os.path.lexists(path):
            self._skip(path)
            return
        tmp = self._tmp_name(path)
        try:
            os.link(first, tmp)
            os.replace(tmp, path)
            self.stats.files += 1
        except OSError as err:
            _unlink(tmp)
            self.warn(spath, f"cannot create hard link: {err.strerror}")

    def _restore_special(self, path: bytes, e: Entry):
        spath = os.fsdecode(path)
        tmp = self._tmp_name(path)
        try:
            if e.kind == K_SYMLINK:
                os.symlink(e.target, tmp)
            elif e.kind == K_FIFO:
                os.mkfifo(tmp, 0o600)
            elif e.kind in (K_CHAR, K_BLOCK):
                kind = statmod.S_IFCHR if e.kind == K_CHAR else statmod.S_IFBLK
                try:
                    os.mknod(tmp, 0o600 | kind, e.rdev)
                except PermissionError:
                    self.warn(spath, "device node not recreated (needs root)")
                    return
            elif e.kind == K_SOCKET:
                return  # sockets belong to running programs; nothing to restore
            else:
                return
        except OSError as err:
            _unlink(tmp)
            self.warn(spath, f"cannot create {e.kind_name}: {err.strerror}")
            return
        try:
            if e.kind == K_SYMLINK:
                if self.owner:
                    os.chown(tmp, e.uid, e.gid, follow_symlinks=False)
                self._xattrs(tmp, spath, e, follow=False)
                os.utime(tmp, ns=(e.atime_ns or e.mtime_ns, e.mtime_ns), follow_symlinks=False)
            else:
                self._apply_meta(tmp, e)
            os.replace(tmp, path)
        except OSError as err:
            _unlink(tmp)
            self.warn(spath, f"cannot restore {e.kind_name}: {err.strerror}")


def _clear_conflict(path: bytes, *, want_dir: bool) -> None:
    """--delete: remove what stands where an entry of another type goes (a
    symlink where a directory goes is removed too, never followed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if statmod.S_ISDIR(st.st_mode):
        if not want_dir:
            import shutil

            shutil.rmtree(path)
    elif want_dir:
        os.unlink(path)


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

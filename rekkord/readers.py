"""Reading the small files of a save: in worker processes, off the GIL.

A first save of many small files is bound by the main thread's per-file
Python (walk, index records, packs).  Threads that read the files compete
with it for the GIL at every system call of every file (open, flistxattr,
read, fstat, close): on 10k files that was 137k futex calls and the main
thread waiting for its own readers.  So once a save has many small files to
read, it reads them in a few worker processes, a batch (up to 64 files or
1 MiB) per task, and gets back their bytes, xattrs and pack-cut marks.

This module is all a worker runs (``python -m rekkord.readers``): the
reading itself, with no repository, cache or key beyond the pack-cut key.
The save's threads use the same functions when there are few files to read
or no processes can be started.
"""

from __future__ import annotations

import collections
import marshal
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future

import blake3

from .index import F_CHANGED, F_PARTIAL, F_UNREADABLE

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
                b = os.read(fd, max(size - total + 1, 65536))
                if not b:
                    break
                parts.append(b)
                total += len(b)
                if total > limit:
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
        """The content half of the pack cutter's rule (chunker.PackCutter.cut_mark)."""
        return blake3.blake3(data, key=self.cut_key).digest(1)[0] & self.cut_mask == 0

    def read(self, files: list[tuple[bytes, int, int, int, int]]) -> list[tuple]:
        out = []
        for path, size, mtime_ns, ctime_ns, ino in files:
            xattrs: list | None = [] if self.xattrs else None
            data, flags, msg, total = read_small(path, size, mtime_ns, ctime_ns, ino, self.limit, xattrs)
            out.append((data, flags, msg, xattrs or [], bool(data) and self.mark(data), total))
        return out


# ---- the worker processes ---------------------------------------------------------------
#
# Each worker is `python -m rekkord.readers`, started by the save itself (not by
# multiprocessing, whose forkserver and spawn methods import the caller's main
# module again in every worker).  It reads requests from stdin and answers on
# stdout, in order: 4-byte little-endian length, then a marshal-ed value (only
# bytes, ints, strings, lists and tuples pass, between our own processes).
# The first request is BatchReader.args(); each next one a batch of files.

class ReaderDied(Exception):
    """A reader process ended (killed, out of memory) with batches unanswered."""


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


class _Worker:
    def __init__(self, env: dict, args: tuple):
        self.proc = subprocess.Popen([sys.executable, "-m", "rekkord.readers"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True)
        self.pending: collections.deque[Future] = collections.deque()
        self.lock = threading.Lock()  # pending and dead (the answer thread takes only this one)
        self.send_lock = threading.Lock()  # one request at a time on the pipe, in the order of pending
        self.dead = False
        _send(self.proc.stdin, args)
        self.thread = threading.Thread(target=self._answers, name="rekkord-reader-answers", daemon=True)
        self.thread.start()

    def _answers(self) -> None:
        out = self.proc.stdout
        while True:
            try:
                value = _recv(out)
            except (OSError, ValueError, EOFError):
                value = None
            with self.lock:
                if value is None:
                    self.dead = True
                    pending, self.pending = list(self.pending), collections.deque()
                else:
                    fut = self.pending.popleft()
            if value is None:
                for fut in pending:
                    fut.set_exception(ReaderDied(f"reader process {self.proc.pid} ended"))
                return
            fut.set_result(value)

    def submit(self, value) -> Future:
        fut: Future = Future()
        with self.send_lock:
            with self.lock:
                if self.dead:
                    raise ReaderDied(f"reader process {self.proc.pid} ended")
                self.pending.append(fut)
            try:
                _send(self.proc.stdin, value)
            except (OSError, ValueError):
                # (the answer thread fails the pending futures when it sees the end)
                with self.lock:
                    self.dead = True
                raise ReaderDied(f"reader process {self.proc.pid} ended") from None
        return fut


class ReaderPool:
    """``n`` reader processes; :meth:`submit` hands a batch to the one with
    the fewest unanswered and returns a Future of its answer (which fails
    with :class:`ReaderDied` if that process dies first)."""

    def __init__(self, n: int, reader: BatchReader):
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `rekkord` is importable
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.workers: list[_Worker] = []
        try:
            for _ in range(n):
                self.workers.append(_Worker(env, reader.args()))
        except BaseException:
            self.shutdown()
            raise

    def submit(self, files: list) -> Future:
        alive = [w for w in self.workers if not w.dead]
        if not alive:
            raise ReaderDied("every reader process ended")
        return min(alive, key=lambda w: len(w.pending)).submit(files)

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                w.proc.stdin.close()
            except OSError:
                pass
        for w in self.workers:
            try:
                w.proc.wait(10)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.thread.join(10)
            w.proc.stdout.close()
        self.workers = []


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

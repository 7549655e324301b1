"""Reading the small files of a save: in worker processes, off the GIL.

A first save of many small files is bound by the main thread's per-file
Python (walk, index records, packs).  Threads that read the files compete
with it for the GIL at every system call of every file (open, flistxattr,
read, fstat, close): on 10k files that was 137k futex calls and the main
thread waiting for its own readers.  So once a save has many small files to
read, it reads them in a few worker processes, a batch (up to 64 files or
1 MiB) per task, and gets back their bytes, xattrs and pack-cut marks.

The workers run rekkord/readworker.py alone; this module starts them and
hands them batches.
"""

from __future__ import annotations

import collections
import fcntl
import os
import subprocess
import sys
import threading
from concurrent.futures import Future

from .readworker import BatchReader, _recv, _send

__all__ = ["BatchReader", "ReaderDied", "ReaderPool"]

# What a worker runs: no site-packages processing (-S), no PYTHON* variables
# (-E); the parent's sys.path (for rekkord and blake3) comes in the environment.
_BOOT = ("import os, sys; sys.path[:0] = os.environ['REKKORD_READER_PATH'].split(os.pathsep); "
         "import rekkord.readworker as w; w.main()")
_PIPE_SIZE = 1 << 20  # (of each pipe to and from a worker)


class ReaderDied(Exception):
    """A reader process ended (killed, out of memory) with batches unanswered."""


class _Worker:
    def __init__(self, env: dict, args: tuple):
        self.proc = subprocess.Popen([sys.executable, "-S", "-E", "-c", _BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True)
        for f in (self.proc.stdin, self.proc.stdout):
            # A batch (up to ~1.5 MiB) in one read instead of 24 of the default 64 KiB: each
            # read on the answer thread takes the GIL from the main thread.
            try:
                fcntl.fcntl(f.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
            except OSError:
                pass  # (above /proc/sys/fs/pipe-max-size: the default stays)
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
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `rekkord` is importable
        env = {**os.environ, "REKKORD_READER_PATH": os.pathsep.join([root] + [p for p in sys.path if p])}
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



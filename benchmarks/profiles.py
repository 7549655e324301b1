#!/usr/bin/env python3
"""What bounds an operation: a py-spy profile, summed up.

    python benchmarks/profiles.py PROFILE.txt [...]     # summarise raw py-spy profiles
    python benchmarks/run.py --profile ...              # records one per rekkord operation

``benchmarks/run.py --profile`` runs every rekkord operation of every data set
once more after the timed rounds (so the profiler does not disturb them) under
``py-spy record --native --threads --idle --format raw``.  This module turns
such a profile into the table docs/performance.md keeps: for every thread
group (the main thread, the save's readers, the blob workers, the restore
writers, the fetchers, ...), the share of its samples spent

* **C** -- in the libraries that do the real work (FastCDC, BLAKE3, zstd,
  libsodium, SQLite, Argon2id);
* **kernel** -- in a system call (file creation, reads and writes, fsync,
  rename, stat...);
* **Python** -- running interpreted code, i.e. holding the GIL;
* **GC** -- in Python's cyclic garbage collector;
* **waiting** -- blocked on a lock, a condition or a queue (an idle worker or
  one waiting for the GIL is here too),

plus the hottest leaf frames.  A row whose threads are mostly "Python" is
bound by the GIL; mostly "kernel", by the system calls; mostly "C", by the
compute the limit column measures.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

CATEGORIES = ("C", "kernel", "Python", "GC", "waiting")

_C_LEAF = re.compile(r"ZSTD|zstd|HUF_|FSE_|blake3|_mm\d*_|avx|sse|crypto_|sodium|chacha|poly1305|argon2|"
                     r"fill_block|sqlite3|fastcdc|memcpy|memmove|memset|__memcpy|__memmove", re.IGNORECASE)
_SYSCALL = re.compile(r"^(__libc_|__GI_|__)?(open|openat|read|pread|write|pwrite|close|fsync|fdatasync|"
                      r"rename|renameat|mkdir|mkdirat|unlink|unlinkat|stat|fstat|lstat|fstatat|newfstatat|statx|"
                      r"utime|futimens|utimensat|fchmod|fchown|fchownat|fchmodat|symlink|symlinkat|link|linkat|"
                      r"getdents|readdir|lseek|ftruncate|fallocate|mknod|mknodat|listxattr|flistxattr|getxattr|"
                      r"fgetxattr|setxattr|fsetxattr|readlink|readlinkat|ioctl|syscall|sendfile|copy_file_range|"
                      r"mmap|munmap|madvise|brk|send|recv|connect|accept)\w*$")
_WAIT_LEAF = re.compile(r"pthread_cond|sem_wait|sem_timedwait|futex|__lll_lock|epoll_wait|poll|select|nanosleep|"
                        r"take_gil|drop_gil|PyThread_acquire_lock", re.IGNORECASE)
_WAIT_PY = re.compile(r"\((threading|queue|concurrent/futures/\w+|selectors|multiprocessing/\w+)\.py:")
# A reader process's pipe, read by the save's answer thread or by the worker
# itself, and a shared restore's pipes from its other processes, read by the
# coordinator (multiprocessing's Connection): a read there is blocked until
# the other side writes.
_PIPE_WAIT = re.compile(r"^(_recv \(rekkord/readworker\.py:|Connection\._recv \(multiprocessing/connection\.py:)")


def record_argv(out: Path, rate: int = 100) -> list[str]:
    """The py-spy command line that profiles the command appended to it into ``out``."""
    return ["py-spy", "record", "--native", "--threads", "--idle", "--subprocesses", "--rate", str(rate),
            "--format", "raw", "--output", str(out), "--"]


def _func(frame: str) -> str:
    return frame.split(" (", 1)[0]


def classify(frames: list[str]) -> str:
    """The category of one sample, from its leaf frames (innermost last)."""
    leaf = frames[-1]
    func = _func(leaf)
    if "gc_collect" in func or func.startswith("collect") and "libpython" in leaf:
        return "GC"
    if _C_LEAF.search(func):
        return "C"
    if _WAIT_LEAF.search(func):
        return "waiting"
    py = [f for f in frames if ".py:" in f or "<frozen" in f]
    if "libpython" in leaf or ".py:" in leaf or "<frozen" in leaf:
        # interpreted code; a Python-level wait (a Condition in threading.py) is idle
        if py and _WAIT_PY.search(py[-1]) and ("libpython" in leaf):
            return "waiting"
        return "Python"
    # a native leaf in libc (or an unresolved address in it)
    if py and _PIPE_WAIT.search(py[-1]):
        return "waiting"
    if _SYSCALL.match(func):
        return "kernel"
    if py and _WAIT_PY.search(py[-1]):
        return "waiting"
    if "libc.so" in leaf or "libpthread" in leaf or leaf.startswith("0x"):
        return "kernel"
    return "C"


def _group(thread: str) -> str:
    """'thread (123): rekkord-restore_1' -> 'rekkord-restore'."""
    name = thread.split(":", 1)[1].strip() if ":" in thread else "(unnamed)"
    return re.sub(r"[_-]?\d+$", "", name) or name


def summarize(path: Path, top: int = 8) -> dict:
    groups: dict[str, Counter] = defaultdict(Counter)
    leaves: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        count = int(n)
        if frames[0].startswith("process "):  # --subprocesses: 'process PID:"command line"' first
            frames = frames[1:]
        if not frames:
            continue
        cat = classify(frames[1:] or frames)
        groups[_group(frames[0])][cat] += count
        if cat != "waiting":
            leaves[(cat, _func(frames[-1]), next((f for f in reversed(frames) if "rekkord/" in f), ""))] += count
        total += count
    return {"total": total, "groups": {g: dict(c) for g, c in groups.items()},
            "top": [(cat, fn, where, n) for (cat, fn, where), n in leaves.most_common(top)]}


def bound_of(summary: dict) -> str:
    """One line: what the busy samples of all threads are, largest share first."""
    busy = Counter()
    for c in summary["groups"].values():
        for cat, n in c.items():
            if cat != "waiting":
                busy[cat] += n
    total = sum(busy.values())
    if not total:
        return "idle"
    return ", ".join(f"{cat} {n / total:.0%}" for cat, n in busy.most_common())


def render(path: Path, summary: dict) -> str:
    out = [f"{path.name}: {summary['total']} samples; busy time: {bound_of(summary)}"]
    for g, c in sorted(summary["groups"].items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(c.values())
        shares = "  ".join(f"{cat} {c.get(cat, 0) / n:4.0%}" for cat in CATEGORIES)
        out.append(f"  {g:<24} {n:>7} samples  {shares}")
    for cat, fn, where, n in summary["top"]:
        out.append(f"    {n:>6}  {cat:<7} {fn[:48]:<48} {where[:70]}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    for p in args.profiles:
        print(render(p, summarize(p, args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

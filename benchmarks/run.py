#!/usr/bin/env python3
"""Benchmark harness: rekkord against restic and borg, same data, one run.

    python benchmarks/run.py [--quick] [--rounds N] [--datasets a,b,...]
                             [--tools rekkord,restic,borg] [--workdir DIR]
                             [--markdown OUT]

It prepares the data sets under the work directory (reused between runs), then
for every round and data set runs each operation for every tool, interleaved
(operation by operation, tool order rotated every round), on a fresh
repository per round, and prints the median of the rounds: wall time, CPU time
(user + sys), peak RSS and repository size, plus rekkord's ratio to each peer.

See benchmarks/README.md.  Only the standard library is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import profiles  # noqa: E402  (benchmarks/profiles.py)

GEN_VERSION = 1  # bump to invalidate previously generated data sets
PAGE = os.sysconf("SC_PAGE_SIZE")
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

OPS_LABEL = {
    "first": "first save",
    "unchanged": "unchanged save",
    "changed": "save after change",
    "restore": "full restore",
    "help": "--help",
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        # restored trees may contain read-only directories
        def onerror(func, p, exc):
            try:
                os.chmod(os.path.dirname(p), 0o700)
                os.chmod(p, 0o700)
            except OSError:
                pass
            func(p)

        shutil.rmtree(path, onerror=onerror)


class Trash:
    """Restored trees and repositories are set aside by a rename, and deleted
    only at the end of the run (or when the space is needed).  Why: this
    machine's ext4 has no journal, and then the kernel's inode allocator skips
    every inode freed in the last 60-360 s (``recently_deleted()`` in
    fs/ext4/ialloc.c), scanning inode tables to do so -- a restore right after
    an ``rm -rf`` of the previous one spent 60 % of its time there (perf), and
    whichever tool came after a deletion paid for it."""

    def __init__(self, root: Path):
        self.root = root
        self.n = 0

    def discard(self, path: Path) -> None:
        if not (path.exists() or path.is_symlink()):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.n += 1
        try:
            path.rename(self.root / f"{os.getpid()}-{self.n}")
        except OSError:  # (another file system)
            rmtree(path)

    def empty(self) -> None:
        rmtree(self.root)


def tree_stats(path: Path) -> dict:
    """Regular files, bytes (apparent) and bytes on disk of a tree, and the
    newest mtime of what is in it."""
    files = dirs = links = 0
    size = disk = newest = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirs += 1
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            newest = max(newest, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
                disk += st.st_blocks * 512
            elif stat.S_ISLNK(st.st_mode):
                links += 1
    return {"files": files, "dirs": dirs, "symlinks": links, "bytes": size, "disk_bytes": disk,
            "newest_mtime_ns": newest}


def dir_size(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of everything under path."""
    size = disk = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            size += st.st_size
            disk += st.st_blocks * 512
    return size, disk


def free_bytes(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def read_tree(path: Path) -> None:
    """Read every file once so that all tools start with the data in the page cache."""
    buf = bytearray(4 * MiB)
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
            except OSError:
                pass


# --------------------------------------------------------------------------------------
# deterministic content

def _table(alphabet: bytes) -> bytes:
    return bytes(alphabet[i % len(alphabet)] for i in range(256))


TEXT_TABLE = _table(b"etaoinshrdlucmfwypvbgkqjxz \n.,;")  # 32 symbols: ~5 bits/byte
HEX_TABLE = _table(b"0123456789abcdef")  # 16 symbols: ~4 bits/byte


def stream(key: str, n: int) -> bytes:
    return hashlib.shake_128(key.encode()).digest(n)


# --------------------------------------------------------------------------------------
# data sets

class Dataset:
    """A tree under <workdir>/data/<name>/tree that every tool saves and restores."""

    name = ""
    ops: tuple[str, ...] = ("first", "unchanged", "restore")
    repo_factor = 1.0  # pessimistic repository size / data size, for the free-space check
    description = ""

    def __init__(self, work: Path):
        self.base = work / "data" / self.name
        self.tree = self.base / "tree"
        self.info: dict = {}

    # -- preparation
    def params(self) -> dict:
        return {}

    def estimate_bytes(self) -> int:
        raise NotImplementedError

    def _marker(self) -> Path:
        return self.base / "READY.json"

    def ready(self) -> bool:
        try:
            info = json.loads(self._marker().read_text())
        except (OSError, ValueError):
            return False
        if info.get("params") != self.params() or info.get("gen") != GEN_VERSION:
            return False
        self.info = info
        return True

    def prepare(self) -> None:
        if self.ready():
            return
        need = self.estimate_bytes() + GiB
        free = free_bytes(self.base.parent)
        if free < need:
            raise SkipDataset(f"needs about {fmt_bytes(need)} free to generate, {fmt_bytes(free)} free")
        log(f"preparing data set {self.name} under {self.base} ...")
        t0 = time.monotonic()
        rmtree(self.base)
        self.base.mkdir(parents=True)
        self.generate()
        self.info = {"gen": GEN_VERSION, "params": self.params(), "stats": tree_stats(self.tree)}
        self.info.update(self.extra_info())
        self._marker().write_text(json.dumps(self.info, indent=1))
        st = self.info["stats"]
        log(f"  {self.name}: {st['files']} files, {fmt_bytes(st['bytes'])} in {time.monotonic() - t0:.0f} s")

    def generate(self) -> None:
        raise NotImplementedError

    def extra_info(self) -> dict:
        return {}

    # -- states (only the sources set has more than one)
    def state_for(self, op: str) -> str:
        return "A"

    def ensure_state(self, state: str) -> None:
        pass

    @property
    def data_bytes(self) -> int:
        return self.info["stats"]["disk_bytes"]

    def row_groups(self) -> list[tuple[str, list[str]]]:
        """Table rows: (label, operations whose per-round median the row shows)."""
        return [(OPS_LABEL[op], [op]) for op in self.ops]

    def per_night(self) -> list[str]:
        """Operations that also get a wall-time row each (the nightly set)."""
        return []

    def summary(self) -> str:
        st = self.info.get("stats", {})
        s = f"{st.get('files', 0)} files, {fmt_bytes(st.get('bytes', 0))}"
        return f"{s}; {self.description}" if self.description else s


class SkipDataset(Exception):
    pass


class StartupDataset(Dataset):
    """Not data: the time to run `TOOL --help` (start-up cost, lazy imports)."""

    name = "startup"
    ops = ("help",)
    description = "`--help` of each tool (start-up time)"

    def ready(self) -> bool:
        self.info = {"stats": {"files": 0, "bytes": 0, "disk_bytes": 0}}
        return True

    def estimate_bytes(self) -> int:
        return 0

    def summary(self) -> str:
        return self.description


class SystemDataset(Dataset):
    """All of /usr/share/doc plus a deterministic sample of /usr/lib, about 1.1 GB in total."""

    name = "system"
    sources = ("/usr/share/doc", "/usr/lib")
    cap = 1_100_000_000
    repo_factor = 1.0

    def params(self) -> dict:
        return {"sources": list(self.sources), "cap": self.cap}

    def estimate_bytes(self) -> int:
        return int(self.cap * 1.15)

    def generate(self) -> None:
        # Candidates: (key, path, size).  /usr/share/doc entirely (key 0), then /usr/lib
        # files in the order of a hash of their path, so that the selection is a spread
        # over the whole tree, and the same for the same /usr content.
        cands = []
        for prio, src in enumerate(self.sources):
            for dirpath, dirnames, filenames in os.walk(src):
                dirnames.sort()
                for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                    p = os.path.join(dirpath, name)
                    try:
                        st = os.lstat(p)
                    except OSError:
                        continue
                    if stat.S_ISLNK(st.st_mode):
                        size = 0
                    elif stat.S_ISREG(st.st_mode):
                        size = st.st_size
                    else:
                        continue
                    key = 0 if prio == 0 else hashlib.blake2b(p.encode(), digest_size=8).digest()
                    cands.append((prio, key, p, size))
        cands.sort(key=lambda c: (c[0], c[1]))
        total = 0
        chosen = []
        for _prio, _key, p, size in cands:
            if total + size > self.cap:
                continue
            total += size
            chosen.append(p)
        chosen.sort()
        for p in chosen:
            dst = self.tree / p.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                if os.path.islink(p):
                    os.symlink(os.readlink(p), dst)
                else:
                    shutil.copy2(p, dst)
            except OSError as e:
                log(f"  skipped {p}: {e}")
        self.description = "copy of /usr/share/doc + a path-hash sample of /usr/lib"

    def summary(self) -> str:
        st = self.info.get("stats", {})
        return (f"{st.get('files', 0)} files, {st.get('symlinks', 0)} symlinks, {fmt_bytes(st.get('bytes', 0))}: "
                f"copy of /usr/share/doc and a deterministic (path-hash) sample of /usr/lib")


class SourcesDataset(Dataset):
    """Source distributions from PyPI, unpacked; state A = older releases, B = next releases.

    Going from A to B rewrites only the files whose content changed (and deletes /
    adds files), like `git checkout` of the next tag would.
    """

    name = "sources"
    ops = ("first", "unchanged", "changed", "restore")
    repo_factor = 1.0
    packages = (
        ("Django", "5.0.7", "5.1"),
        ("sympy", "1.12", "1.13.0"),
        ("botocore", "1.34.100", "1.34.101"),
    )

    def __init__(self, work: Path):
        super().__init__(work)
        self.downloads = work / "downloads"
        self.current: str | None = None

    def params(self) -> dict:
        return {"packages": [list(p) for p in self.packages]}

    def estimate_bytes(self) -> int:
        return 1 * GiB

    def version_dir(self, state: str) -> Path:
        return self.base / "versions" / state

    def generate(self) -> None:
        self.downloads.mkdir(parents=True, exist_ok=True)
        for name, *versions in self.packages:
            for state, version in zip("AB", versions):
                archive = fetch_sdist(name, version, self.downloads)
                unpack_sdist(archive, self.version_dir(state) / name.lower())
        self.current = None
        self.ensure_state("A")

    def extra_info(self) -> dict:
        return {"states": {s: tree_stats(self.version_dir(s)) for s in "AB"}}

    def state_for(self, op: str) -> str:
        return "B" if op in ("changed", "restore") else "A"

    def ensure_state(self, state: str) -> None:
        if self.current == state:
            return
        changed = sync_tree(self.version_dir(state), self.tree)
        if self.current is not None:
            log(f"  sources: tree now at state {state} ({changed} entries written or removed)")
        self.current = state

    def summary(self) -> str:
        states = self.info.get("states", {})
        a, b = states.get("A", {}), states.get("B", {})
        pk = ", ".join(f"{n} {va} → {vb}" for n, va, vb in self.packages)
        return (f"unpacked sdists {pk}; A: {a.get('files', 0)} files, {fmt_bytes(a.get('bytes', 0))}; "
                f"B: {b.get('files', 0)} files, {fmt_bytes(b.get('bytes', 0))}")

    @property
    def data_bytes(self) -> int:
        return max(v["disk_bytes"] for v in self.info["states"].values())


class SmallFilesDataset(Dataset):
    """N unique, compressible small files (64 B .. 16 KiB, log-uniform), 1000 per directory."""

    repo_factor = 0.9

    def __init__(self, work: Path, count: int, label: str):
        self.count = count
        self.name = f"files-{label}"
        super().__init__(work)

    def params(self) -> dict:
        return {"count": self.count}

    def estimate_bytes(self) -> int:
        return self.count * 8 * KiB

    @staticmethod
    def size_of(i: int) -> int:
        u = int.from_bytes(hashlib.blake2b(b"size%d" % i, digest_size=8).digest(), "little") / 2**64
        return int(64 * 256**u)

    def generate(self) -> None:
        for i in range(self.count):
            d = self.tree / f"{i // 1000:04d}"
            if i % 1000 == 0:
                d.mkdir(parents=True)
            data = stream(f"small-{i}", self.size_of(i)).translate(TEXT_TABLE)
            with open(d / f"{i:07d}.txt", "wb") as f:
                f.write(data)

    def summary(self) -> str:
        st = self.info.get("stats", {})
        return (f"{st.get('files', 0)} unique generated text-like files (64 B – 16 KiB), "
                f"{fmt_bytes(st.get('bytes', 0))}")


class BigFileDataset(Dataset):
    """One file of SIZE bytes: per 4 MiB block, half incompressible, half ~4 bits/byte."""

    repo_factor = 0.85
    block = 4 * MiB

    def __init__(self, work: Path, size: int, label: str):
        self.size = size
        self.name = f"file-{label}"
        super().__init__(work)

    def params(self) -> dict:
        return {"size": self.size}

    def estimate_bytes(self) -> int:
        return self.size

    def generate(self) -> None:
        self.tree.mkdir(parents=True)
        half = self.block // 2
        with open(self.tree / "big.bin", "wb") as f:
            for j in range(self.size // self.block):
                f.write(stream(f"big-{j}-r", half))
                f.write(stream(f"big-{j}-t", half).translate(HEX_TABLE))

    def summary(self) -> str:
        return (f"one {fmt_bytes(self.size)} file, unique content, each 4 MiB block half random, "
                f"half 16-symbol text (compressible to ~75 %)")


class NightlyDataset(Dataset):
    """A week of nightly backups: successive releases of a project plus a database file.

    Night k holds release k of the project (unpacked sdists from PyPI, one
    after the other, as a `git checkout` of each tag would leave them) and
    night k's state of a SQLite database in which a few percent of the pages
    change each night (clustered updates, appended rows, a deleted range).
    Each tool saves every night into one repository; the last night is restored.
    """

    name = "nightly"
    repo_factor = 1.2
    project = ("Django", ("5.0.1", "5.0.2", "5.0.3", "5.0.4", "5.0.5", "5.0.6", "5.0.7"))
    db_rows = 1_000_000
    row_bytes = 200

    def __init__(self, work: Path, project: str | None = None, rows: int | None = None):
        if project:  # --nightly-project NAME=V1,V2,...
            name, _, versions = project.partition("=")
            vs = tuple(v.strip() for v in versions.split(",") if v.strip())
            if not name.strip() or len(vs) < 2:
                raise SystemExit(f"--nightly-project {project!r}: give NAME=V1,V2[,...] (two or more releases "
                                 f"of a package on the package index, oldest first)")
            self.project = (name.strip(), vs)
        if rows is not None:
            if rows < 1000:
                raise SystemExit(f"--nightly-db-rows {rows}: give 1000 or more")
            self.db_rows = rows
        super().__init__(work)
        self.downloads = work / "downloads"
        self.current: str | None = None
        self.nights = len(self.project[1])
        self.ops = tuple(f"night{k}" for k in range(1, self.nights + 1)) + ("restore",)
        for k in range(1, self.nights + 1):
            OPS_LABEL[f"night{k}"] = f"night {k} save"

    def params(self) -> dict:
        return {"project": [self.project[0], list(self.project[1])], "rows": self.db_rows, "row": self.row_bytes}

    def estimate_bytes(self) -> int:
        return self.nights * (self.db_rows * (self.row_bytes + 60) + 80 * MiB) + self.db_rows * 300

    def night_dir(self, k: int) -> Path:
        return self.base / "versions" / f"night{k}"

    def _row(self, rid: int, rev: int) -> bytes:
        return stream(f"row-{rid}-{rev}", self.row_bytes).translate(TEXT_TABLE)

    def generate(self) -> None:
        import random
        import sqlite3

        self.downloads.mkdir(parents=True, exist_ok=True)
        name, versions = self.project
        db = self.base / "work.db"
        for k, version in enumerate(versions, 1):
            nd = self.night_dir(k)
            archive = fetch_sdist(name, version, self.downloads)
            unpack_sdist(archive, nd / "src" / name.lower())
            con = sqlite3.connect(db)
            with con:
                if k == 1:
                    con.execute("create table records (id integer primary key, rev integer, body blob)")
                    con.execute("create index records_rev on records (rev)")
                    con.executemany("insert into records values (?, 1, ?)",
                                    ((i, self._row(i, 1)) for i in range(self.db_rows)))
                else:
                    rng = random.Random(k)
                    top = con.execute("select max(id) from records").fetchone()[0]
                    span = self.db_rows // 200  # 0.5 % of the rows per updated range
                    for _ in range(3):
                        lo = rng.randrange(0, top - span)
                        con.executemany("update records set rev = ?, body = ? where id = ?",
                                        ((k, self._row(i, k), i) for i in range(lo, lo + span)))
                    lo = rng.randrange(0, top - span)
                    con.execute("delete from records where id >= ? and id < ?", (lo, lo + span * 3 // 5))
                    con.executemany("insert into records values (?, ?, ?)",
                                    ((i, k, self._row(i, k)) for i in range(top + 1, top + 1 + self.db_rows // 100)))
            con.close()
            (nd / "db").mkdir(parents=True, exist_ok=True)
            shutil.copy2(db, nd / "db" / "app.db")
        db.unlink()
        self.current = None
        self.ensure_state("night1")

    def extra_info(self) -> dict:
        info = {"states": {f"night{k}": tree_stats(self.night_dir(k)) for k in range(1, self.nights + 1)}}
        # how much of the database changes from one night to the next (4 KiB pages)
        changed = []
        for k in range(2, self.nights + 1):
            a, b = self.night_dir(k - 1) / "db" / "app.db", self.night_dir(k) / "db" / "app.db"
            n = same = 0
            with open(a, "rb") as fa, open(b, "rb") as fb:
                while True:
                    pa, pb = fa.read(4096), fb.read(4096)
                    if not pb:
                        break
                    n += 1
                    same += pa == pb
            changed.append(round(100 * (n - same) / max(n, 1), 1))
        info["db_pages_changed_percent"] = changed
        return info

    def state_for(self, op: str) -> str:
        return f"night{self.nights}" if op == "restore" else op

    def ensure_state(self, state: str) -> None:
        if self.current == state:
            return
        k = int(state.removeprefix("night"))
        changed = sync_tree(self.night_dir(k), self.tree)
        if self.current is not None:
            log(f"  nightly: tree now at {state} ({changed} entries written or removed)")
        self.current = state

    def row_groups(self) -> list[tuple[str, list[str]]]:
        later = [f"night{k}" for k in range(2, self.nights + 1)]
        return [("night 1 save (first)", ["night1"]), (f"nights 2–{self.nights} save, median", later),
                ("last night's restore", ["restore"])]

    def per_night(self) -> list[str]:
        return [f"night{k}" for k in range(2, self.nights + 1)]

    def summary(self) -> str:
        st = self.info.get("states", {})
        first, last = st.get("night1", {}), st.get(f"night{self.nights}", {})
        name, versions = self.project
        pages = self.info.get("db_pages_changed_percent", [])
        return (f"{self.nights} nights: {name} {versions[0]} … {versions[-1]} (unpacked sdists) and a SQLite "
                f"database ({self.db_rows} rows at first; {min(pages, default=0)}–{max(pages, default=0)} % of its "
                f"pages change each night); night 1: {first.get('files', 0)} files, "
                f"{fmt_bytes(first.get('bytes', 0))}; last night: {last.get('files', 0)} files, "
                f"{fmt_bytes(last.get('bytes', 0))}")

    @property
    def data_bytes(self) -> int:
        return max(v["disk_bytes"] for v in self.info["states"].values())


class NightsFromDirDataset(NightlyDataset):
    """Your own nights (--nightly-dir DIR): each subdirectory of DIR, in natural name order, is one night's tree."""

    name = "nightly-dir"

    def __init__(self, work: Path, source: Path):
        self.source = source.resolve()
        try:
            names = [e.name for e in os.scandir(self.source) if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            raise SystemExit(f"--nightly-dir {source}: {e.strerror}") from None
        self.states = sorted(names, key=natural_key)
        if len(self.states) < 2:
            raise SystemExit(f"--nightly-dir {source}: needs two or more subdirectories (one per night), "
                             f"has {len(self.states)}")
        self.project = (str(self.source), tuple(self.states))
        super().__init__(work)

    def params(self) -> dict:
        # (the states' sizes and times too: a DIR whose content changed is measured afresh)
        return {"dir": str(self.source), "states": [[n, tree_stats(self.source / n)] for n in self.states]}

    def estimate_bytes(self) -> int:
        return 0  # (the nights stay where they are; only the working tree is made here)

    def night_dir(self, k: int) -> Path:
        return self.source / self.states[k - 1]

    def generate(self) -> None:
        self.current = None
        self.ensure_state("night1")

    def extra_info(self) -> dict:
        return {"states": {f"night{k}": tree_stats(self.night_dir(k)) for k in range(1, self.nights + 1)}}

    def summary(self) -> str:
        st = self.info.get("states", {})
        first, last = st.get("night1", {}), st.get(f"night{self.nights}", {})
        return (f"{self.nights} nights from {self.source} ({self.states[0]} … {self.states[-1]}); night 1: "
                f"{first.get('files', 0)} files, {fmt_bytes(first.get('bytes', 0))}; last night: "
                f"{last.get('files', 0)} files, {fmt_bytes(last.get('bytes', 0))}")


def natural_key(name: str) -> list:
    """night2 before night10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def make_datasets(work: Path, nightly_project: str | None = None, nightly_rows: int | None = None,
                  nightly_dir: Path | None = None) -> dict[str, Dataset]:
    sets: list[Dataset] = [
        StartupDataset(work),
        SystemDataset(work),
        SourcesDataset(work),
        NightlyDataset(work, nightly_project, nightly_rows),
        SmallFilesDataset(work, 10_000, "10k"),
        SmallFilesDataset(work, 100_000, "100k"),
        SmallFilesDataset(work, 300_000, "300k"),
        BigFileDataset(work, 1 * GiB, "1g"),
        BigFileDataset(work, 4 * GiB, "4g"),
        BigFileDataset(work, 16 * GiB, "16g"),
    ]
    if nightly_dir is not None:
        sets.insert(4, NightsFromDirDataset(work, nightly_dir))
    return {d.name: d for d in sets}


QUICK_DATASETS = ["startup", "system", "sources", "nightly", "files-10k", "files-100k", "files-300k"]


def fetch_sdist(name: str, version: str, dest: Path) -> Path:
    """The sdist of NAME==VERSION in dest: `pip download`, else PyPI's JSON API."""
    norm = name.lower().replace("-", "_").replace(".", "_")

    def find() -> Path | None:
        for p in dest.iterdir():
            n = p.name.lower().replace("-", "_")
            for ext in (".tar.gz", ".zip", ".tar.bz2", ".tgz"):
                if n == f"{norm}_{version}{ext}":
                    return p
        return None

    found = find()
    if found:
        return found
    log(f"  downloading {name}=={version} (sdist) ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           f"{name}=={version}", "-d", str(dest), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    found = find()
    if found:
        return found
    # pip prepares metadata, which needs the build backend; some sdists (meson-python...)
    # cannot be prepared here.  The file itself is all we need.
    log(f"  pip download failed ({r.stderr.strip().splitlines()[-1:] or r.returncode}); using PyPI's JSON API")
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/{version}/json", timeout=60) as resp:
        meta = json.load(resp)
    sdists = [u for u in meta["urls"] if u["packagetype"] == "sdist"]
    if not sdists:
        raise RuntimeError(f"{name}=={version} has no sdist on PyPI")
    u = sdists[0]
    target = dest / u["filename"]
    tmp = target.with_suffix(".part")
    h = hashlib.sha256()
    with urllib.request.urlopen(u["url"], timeout=120) as resp, open(tmp, "wb") as f:
        while chunk := resp.read(MiB):
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != u["digests"]["sha256"]:
        tmp.unlink()
        raise RuntimeError(f"sha256 mismatch for {u['filename']}")
    tmp.rename(target)
    return target


def unpack_sdist(archive: Path, dest: Path) -> None:
    """Unpack archive's single top-level directory as dest."""
    tmp = dest.parent / (dest.name + ".unpack")
    rmtree(tmp)
    tmp.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        shutil.unpack_archive(str(archive), str(tmp))
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
    entries = list(tmp.iterdir())
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    rmtree(dest)
    top.rename(dest)
    rmtree(tmp)


def sync_tree(src: Path, dst: Path) -> int:
    """Make dst identical in content to src, touching only what differs."""
    n = 0
    dst.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        ddir = dst / rel if rel != "." else dst
        # remove what src no longer has
        if ddir.is_dir():
            wanted = set(dirnames) | set(filenames)
            for e in os.listdir(ddir):
                if e not in wanted:
                    rmtree(ddir / e)
                    n += 1
        for d in dirnames:
            sp, dp = os.path.join(dirpath, d), ddir / d
            if os.path.islink(sp):
                filenames.append(d)
            elif dp.is_symlink() or (dp.exists() and not dp.is_dir()):
                dp.unlink()
                n += 1
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for d in dirnames:
            (ddir / d).mkdir(exist_ok=True)
        for name in filenames:
            sp, dp = os.path.join(dirpath, name), ddir / name
            sst = os.lstat(sp)
            try:
                dst_st = os.lstat(dp)
            except FileNotFoundError:
                dst_st = None
            if stat.S_ISLNK(sst.st_mode):
                target = os.readlink(sp)
                if dst_st and stat.S_ISLNK(dst_st.st_mode) and os.readlink(dp) == target:
                    continue
                if dst_st:
                    rmtree(dp)
                os.symlink(target, dp)
                n += 1
                continue
            if dst_st and stat.S_ISREG(dst_st.st_mode) and dst_st.st_size == sst.st_size and same_content(sp, dp):
                continue
            if dst_st:
                rmtree(dp)
            shutil.copy2(sp, dp)
            n += 1
    return n


def same_content(a, b) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


def verify_restore(src: Path, restored: Path, mode: str) -> str | None:
    """None when restored matches src (types, sizes, symlink targets, and content)."""
    if mode == "none":
        return None
    if not restored.exists():
        return f"{restored} does not exist after restore"
    problems: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        rdir = restored / rel if rel != "." else restored
        try:
            got = set(os.listdir(rdir))
        except OSError as e:
            problems.append(f"{rel}: {e}")
            dirnames[:] = []
            continue
        want = set(dirnames) | set(filenames)
        if got != want:
            miss, extra = sorted(want - got), sorted(got - want)
            problems.append(f"{rel}: missing {miss[:3]}{'...' if len(miss) > 3 else ''} "
                            f"extra {extra[:3]}{'...' if len(extra) > 3 else ''}")
        for name in sorted(want & got):
            sp, rp = os.path.join(dirpath, name), rdir / name
            a, b = os.lstat(sp), os.lstat(rp)
            if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
                problems.append(f"{rel}/{name}: type differs")
            elif stat.S_ISLNK(a.st_mode):
                if os.readlink(sp) != os.readlink(rp):
                    problems.append(f"{rel}/{name}: symlink target differs")
            elif stat.S_ISREG(a.st_mode):
                seen += 1
                if a.st_size != b.st_size:
                    problems.append(f"{rel}/{name}: size {b.st_size} != {a.st_size}")
                elif mode == "content" and not content_matches(sp, rp, a.st_size):
                    problems.append(f"{rel}/{name}: content differs")
            if len(problems) >= 10:
                return "; ".join(problems)
    return "; ".join(problems) or None


def content_matches(a, b, size: int) -> bool:
    if size <= 256 * MiB:
        return same_content(a, b)
    # big files: 64 windows of 1 MiB spread over the file, plus the tail
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offsets = [size * k // 64 for k in range(64)] + [max(0, size - MiB)]
        for off in offsets:
            fa.seek(off)
            fb.seek(off)
            if fa.read(MiB) != fb.read(MiB):
                return False
    return True


# --------------------------------------------------------------------------------------
# measuring one command

@dataclasses.dataclass
class Cmd:
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None


@dataclasses.dataclass
class Measure:
    rc: int
    wall: float
    user: float
    sys: float
    maxrss: int  # bytes: largest single process (getrusage of the waited tree)
    tree_rss: int  # bytes: peak of the sum of PSS over the live process tree (sampled)
    timed_out: bool = False

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def rss(self) -> int:
        return max(self.maxrss, self.tree_rss)


def _proc_memory(p: int) -> int:
    """A process's PSS (its own pages, and its share of the pages it shares:
    a forked child's untouched pages count once over the tree, not once per
    process), or its RSS where smaps_rollup cannot be read."""
    try:
        with open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{p}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _tree_rss(pid: int, skip_root: bool = False) -> int:
    """The memory of the live process tree: the sum of its PSS (_proc_memory)."""
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            if not (skip_root and p == pid):
                total += _proc_memory(p)
            for t in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{t}/children") as f:
                        stack.extend(int(x) for x in f.read().split())
                except OSError:
                    pass
        except (OSError, ValueError, IndexError):
            pass
    return total


# Peak RSS must be per operation and must not include the harness: a child forked
# from this (big) Python process inherits its RSS high-water mark across exec().  So
# every operation runs under a small wrapper that forks the tool from its own small
# address space and reports the tool's ru_maxrss: GNU time (~1 MiB floor) when
# installed, else a minimal Python wrapper (~14 MiB floor).
TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
PY_WRAPPER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    try:\n"
    "        os.execvp(sys.argv[2], sys.argv[2:])\n"
    "    finally:\n"
    "        os._exit(127)\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write('%d\\n' % ru.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status) & 0xff)\n"
)


def rss_method() -> str:
    return ("GNU time (`/usr/bin/time -f %M`, ~1 MiB floor)" if TIME_BIN
            else "a Python fork/exec wrapper (~14 MiB floor)")


def run_measured(cmd: Cmd, out: Path, err: Path, timeout: float, sample: float = 0.05) -> Measure:
    """Run cmd through the RSS wrapper as a fresh child.  wait4() on the wrapper gives the
    CPU time of the operation (the wrapper's own is negligible); the wrapper reports the
    tool's ru_maxrss (largest process of the tree); a sampler adds the peak of the summed
    RSS of the live tree (for tools that run several processes)."""
    env = dict(os.environ)
    env.update(cmd.env)
    rssfile = out.with_suffix(".maxrss")
    if TIME_BIN:
        argv = [TIME_BIN, "-f", "%M", "-o", str(rssfile)] + cmd.argv
    else:
        argv = [sys.executable, "-c", PY_WRAPPER, str(rssfile)] + cmd.argv
    with open(out, "wb") as fo, open(err, "wb") as fe:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env,
                                cwd=cmd.cwd, start_new_session=True)
        peak = 0
        done = threading.Event()
        timed_out = False

        def sampler():
            nonlocal peak, timed_out
            while not done.wait(sample):
                peak = max(peak, _tree_rss(proc.pid, skip_root=True))
                if time.monotonic() - t0 > timeout and not timed_out:
                    timed_out = True
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        try:
            _pid, status, ru = os.wait4(proc.pid, 0)
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        wall = time.monotonic() - t0
        done.set()
        th.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    maxrss = 0
    try:
        lines = rssfile.read_text().split()
        maxrss = int(lines[-1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return Measure(rc=proc.returncode, wall=wall, user=ru.ru_utime, sys=ru.ru_stime,
                   maxrss=maxrss, tree_rss=peak, timed_out=timed_out)


def cpu_stall_us() -> int | None:
    """Total µs during which some runnable task waited for a CPU (Linux PSI), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_checked(cmd: Cmd, what: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(cmd.env)
    r = subprocess.run(cmd.argv, env=env, cwd=cmd.cwd, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise ToolError(f"{what} failed (rc {r.returncode}): {shlex.join(cmd.argv)}\n{tail(r.stderr + r.stdout)}")
    return r


class ToolError(Exception):
    pass


def tail(text: str, lines: int = 15) -> str:
    return "\n".join("    " + ln for ln in text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# tools

class Tool:
    """One backup tool.  A ToolState holds one fresh repository (one round of one data set)."""

    name = ""
    verifies = True  # its restores are checked against the source, its repository measured

    def adjust(self, res: "Result", stdout: str) -> None:
        """Correct a measured result from what the command printed (the limit)."""

    def missing(self) -> str | None:
        return None

    def version(self) -> str:
        return "?"

    def base_env(self, st: "ToolState") -> dict[str, str]:
        # keep every tool's caches/config per repository, so that rounds are independent
        return {
            "XDG_CACHE_HOME": str(st.home / "cache"),
            "XDG_CONFIG_HOME": str(st.home / "config"),
            "XDG_DATA_HOME": str(st.home / "data"),
            "XDG_STATE_HOME": str(st.home / "state"),
        }

    def init(self, st: "ToolState") -> None:
        raise NotImplementedError

    def save(self, st: "ToolState", label: str, path: Path) -> Cmd:
        raise NotImplementedError

    def saved(self, st: "ToolState", label: str, stdout: str) -> None:
        st.saves.append(label)

    def restore(self, st: "ToolState", dest: Path) -> Cmd:
        raise NotImplementedError

    def help(self) -> Cmd:
        raise NotImplementedError

    def check(self, st: "ToolState") -> str | None:
        return None


@dataclasses.dataclass
class ToolState:
    tool: Tool
    dir: Path
    channel: str
    saves: list = dataclasses.field(default_factory=list)
    ids: list = dataclasses.field(default_factory=list)
    source: Path | None = None  # the tree saved (duplicity and the limit restore it by name)
    fpr: str = ""  # duplicity's GPG key

    @property
    def repo(self) -> Path:
        return self.dir / "repo"

    @property
    def home(self) -> Path:
        return self.dir / "home"


class Restic(Tool):
    name = "restic"
    password = "rekkord-bench"

    def missing(self):
        return None if shutil.which("restic") else "restic not installed"

    def version(self):
        r = subprocess.run(["restic", "version"], capture_output=True, text=True)
        return r.stdout.strip()

    def env(self, st):
        return {**self.base_env(st), "RESTIC_PASSWORD": self.password, "RESTIC_REPOSITORY": str(st.repo),
                "RESTIC_CACHE_DIR": str(st.home / "cache" / "restic")}

    def init(self, st):
        run_checked(Cmd(["restic", "init", "--repository-version", "2"], self.env(st)), "restic init")

    def save(self, st, label, path):
        return Cmd(["restic", "backup", "--compression", "auto", "--host", "bench", "--tag", label, str(path)],
                   self.env(st))

    def restore(self, st, dest):
        return Cmd(["restic", "restore", "latest", "--host", "bench", "--target", str(dest)], self.env(st))

    def help(self):
        return Cmd(["restic", "--help"])


class Borg(Tool):
    name = "borg"
    password = "rekkord-bench"
    exe = "borg"

    def missing(self):
        return None if shutil.which(self.exe) else f"{self.exe} not installed"

    def version(self):
        r = subprocess.run([self.exe, "--version"], capture_output=True, text=True)
        return r.stdout.strip()

    def major(self) -> int:
        try:
            return int(self.version().split()[1].split(".")[0])
        except (IndexError, ValueError):
            return 1

    def env(self, st):
        return {**self.base_env(st), "BORG_PASSPHRASE": self.password, "BORG_REPO": str(st.repo),
                "BORG_BASE_DIR": str(st.home), "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}

    def init(self, st):
        if self.major() >= 2:
            for sub in ("repo-create", "rcreate"):
                try:
                    run_checked(Cmd([self.exe, sub, "-e", "repokey-blake2-chacha20-poly1305"], self.env(st)),
                                f"borg {sub}")
                    return
                except ToolError:
                    if sub == "rcreate":
                        raise
        run_checked(Cmd([self.exe, "init", "-e", "repokey-blake2"], self.env(st)), "borg init")

    def save(self, st, label, path):
        target = label if self.major() >= 2 else f"::{label}"
        return Cmd([self.exe, "create", "--compression", "zstd,3", target, str(path)], self.env(st))

    def restore(self, st, dest):
        label = st.saves[-1] if st.saves else "first"
        target = label if self.major() >= 2 else f"::{label}"
        return Cmd([self.exe, "extract", target], self.env(st), cwd=dest)

    def help(self):
        return Cmd([self.exe, "--help"])


class Borg14(Borg):
    """borg 1.4 from the package index, in a virtual environment of its own
    (<workdir>/tools/borg14, made by setup.sh --borg14)."""

    name = "borg14"

    def __init__(self, work: Path):
        self.venv = work / "tools" / "borg14"
        self.exe = str(self.venv / "bin" / "borg")

    def missing(self):
        return None if os.access(self.exe, os.X_OK) else f"borg 1.4 not installed in {self.venv}"


class Duplicity(Tool):
    """duplicity with a GPG public key: the machine that saves holds only the
    public key (as a rekkord write key holds only public halves); restores use
    the keyring with the secret key.  Full save first, incremental after."""

    name = "duplicity"

    def missing(self):
        for exe in ("duplicity", "gpg"):
            if not shutil.which(exe):
                return f"{exe} not installed"
        return None

    def version(self):
        r = subprocess.run(["duplicity", "--version"], capture_output=True, text=True)
        return r.stdout.strip()

    def env(self, st, keyring: str):
        tmp = st.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return {**self.base_env(st), "GNUPGHOME": str(st.dir / keyring), "PASSPHRASE": "", "TMPDIR": str(tmp)}

    def init(self, st):
        st.dir.mkdir(parents=True, exist_ok=True)
        for ring in ("gnupg-full", "gnupg-public"):
            (st.dir / ring).mkdir(mode=0o700)
        full = {"GNUPGHOME": str(st.dir / "gnupg-full")}
        run_checked(Cmd(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "rekkord bench <bench@localhost>",
                         "default", "default", "never"], full), "gpg --quick-gen-key")
        r = run_checked(Cmd(["gpg", "--batch", "--with-colons", "--list-keys"], full), "gpg --list-keys")
        st.fpr = next(ln.split(":")[9] for ln in r.stdout.splitlines() if ln.startswith("fpr:"))
        pub = st.dir / "public.asc"
        run_checked(Cmd(["gpg", "--batch", "--armor", "--output", str(pub), "--export", st.fpr], full), "gpg --export")
        run_checked(Cmd(["gpg", "--batch", "--import", str(pub)], {"GNUPGHOME": str(st.dir / "gnupg-public")}),
                    "gpg --import")
        st.repo.mkdir()

    def common(self, st):
        return ["--archive-dir", str(st.home / "duplicity-cache"), "--name", "bench"]

    def save(self, st, label, path):
        kind = "full" if not st.saves else "incremental"
        return Cmd(["duplicity", kind, "--encrypt-key", st.fpr, "--gpg-options", "--trust-model always",
                    *self.common(st), str(path), f"file://{st.repo}"], self.env(st, "gnupg-public"))

    def restore(self, st, dest):
        target = dest / str(st.source).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        return Cmd(["duplicity", "restore", "--gpg-options", "--pinentry-mode loopback", *self.common(st),
                    f"file://{st.repo}", str(target)], self.env(st, "gnupg-full"))

    def saved(self, st, label, stdout):
        super().saved(st, label, stdout)

    def help(self):
        return Cmd(["duplicity", "--help"])


class Limit(Tool):
    """Not a tool: the time the C code alone needs (benchmarks/limit.py)."""

    name = "limit"
    verifies = False

    def missing(self):
        r = subprocess.run([sys.executable, "-c", "import pyfastcdc, blake3, zstandard, nacl"], capture_output=True)
        return None if r.returncode == 0 else "rekkord's dependencies (pyfastcdc, blake3, zstandard, pynacl) missing"

    def version(self):
        return "C code alone: pyfastcdc, keyed BLAKE3, zstd 3, XChaCha20-Poly1305, BLAKE3 name (benchmarks/limit.py)"

    def init(self, st):
        st.dir.mkdir(parents=True, exist_ok=True)

    def save(self, st, label, path):
        return Cmd([sys.executable, str(HERE / "limit.py"), "save", str(st.dir), str(path)])

    def restore(self, st, dest):
        return Cmd([sys.executable, str(HERE / "limit.py"), "restore", str(st.dir), str(st.source)])

    def help(self):
        return Cmd([sys.executable, "-c", "pass"])

    def adjust(self, res, stdout: str) -> None:
        try:
            out = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            res.ok, res.error = False, "limit.py printed no result"
            return
        res.wall, res.cpu, res.user, res.sys = out["wall"], out["cpu"], out["cpu"], 0.0
        res.rss = res.maxrss = res.tree_rss = None


class Rekkord(Tool):
    name = "rekkord"

    def __init__(self, cmd: str | None = None, init_args: str | None = None):
        self.init_args = shlex.split(init_args) if init_args else []
        # The console script installed next to this interpreter (not a `rekkord` found on PATH:
        # that may be a pyenv shim, which adds a bash + pyenv start-up to every call), with
        # this checkout first on PYTHONPATH; else the same thing through python -c.
        script = Path(sys.executable).parent / "rekkord"
        if cmd:
            self.prefix = shlex.split(cmd)
        elif script.is_file() and os.access(script, os.X_OK) and self._importable():
            self.prefix = [str(script)]
        else:
            # this checkout, without installing it
            self.prefix = [sys.executable, "-c",
                           "import sys; from rekkord.cli.main import main; sys.argv[0] = 'rekkord'; sys.exit(main())"]
        self.pythonpath = str(ROOT)

    def _importable(self) -> bool:
        r = subprocess.run([sys.executable, "-c", "import rekkord.cli.main"], capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        return r.returncode == 0

    def _env(self) -> dict[str, str]:
        pp = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": self.pythonpath + (os.pathsep + pp if pp else "")}

    def missing(self):
        if not self._importable():
            return "rekkord.cli.main is not importable (the CLI is not there yet?)"
        env = {**os.environ, **self._env()}
        r = subprocess.run(self.prefix + ["--help"], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return f"`rekkord --help` fails (rc {r.returncode}):\n{tail(r.stderr)}"
        return None

    def version(self):
        env = {**os.environ, **self._env()}
        r = subprocess.run(self.prefix + ["--version"], capture_output=True, text=True, env=env)
        v = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else ""
        if not v:
            try:
                import tomllib
                v = "rekkord " + tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
            except Exception:
                v = "rekkord ?"
        g = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if g.returncode == 0:
            v += f" (git {g.stdout.strip()})"
        if self.init_args:
            v += f" (init {shlex.join(self.init_args)})"
        return v

    def env(self, st, key: str):
        return {**self.base_env(st), **self._env(), "REKKORD_REPOSITORY": str(st.repo),
                "REKKORD_KEY_FILE": str(st.dir / key), "REKKORD_PASSPHRASE": "",
                "REKKORD_CACHE_DIR": str(st.home / "cache" / "rekkord")}

    def init(self, st):
        st.dir.mkdir(parents=True, exist_ok=True)
        run_checked(Cmd(self.prefix + ["init", *self.init_args], self.env(st, "master.key")), "rekkord init")
        run_checked(Cmd(self.prefix + ["-k", str(st.dir / "master.key"), "key", "derive", "--role", "write",
                                       "--label", "bench", "--output", str(st.dir / "write.key")],
                        self.env(st, "master.key")), "rekkord key derive")
        if not (st.dir / "write.key").exists():
            raise ToolError("rekkord key derive did not write write.key")

    def save(self, st, label, path):
        return Cmd(self.prefix + ["save", st.channel, str(path), "--json"], self.env(st, "write.key"))

    def saved(self, st, label, stdout):
        super().saved(st, label, stdout)
        st.ids.append(parse_json_id(stdout))

    def restore(self, st, dest):
        snap = st.ids[-1] if st.ids and st.ids[-1] else st.channel
        return Cmd(self.prefix + ["restore", str(snap), str(dest)], self.env(st, "master.key"))

    def help(self):
        return Cmd(self.prefix + ["--help"], self._env())

    def check(self, st):
        try:
            r = run_checked(Cmd(self.prefix + ["snapshots", "--json"], self.env(st, "master.key")),
                            "rekkord snapshots --json")
            snaps = json.loads(r.stdout)
        except (ToolError, ValueError) as e:
            return f"snapshots --json: {e}"
        mine = [s for s in snaps if s.get("channel") == st.channel]
        if len(mine) != len(st.saves):
            return f"snapshots --json lists {len(mine)} snapshots in channel {st.channel}, expected {len(st.saves)}"
        return None


def parse_json_id(stdout: str) -> str | None:
    """The "id" of the JSON object printed by `save --json` (pretty-printed or one line, maybe
    after other output), or None."""
    text = stdout.strip()
    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n" and text[i + 1:i + 2] == "{"]
    for start in reversed(starts):
        try:
            obj = json.loads(text[start:])
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("id"):
            return str(obj["id"])
    return None


TOOL_ORDER = ["rekkord", "restic", "borg", "borg14", "duplicity", "limit"]


# --------------------------------------------------------------------------------------
# the run

@dataclasses.dataclass
class Result:
    round: int
    dataset: str
    tool: str
    op: str
    ok: bool
    wall: float = 0.0
    cpu: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    rss: int = 0
    maxrss: int = 0
    tree_rss: int = 0
    repo_bytes: int = 0
    repo_disk: int = 0
    error: str = ""
    load1: float = 0.0  # 1-minute load average when the operation ended (noise indicator)
    cpu_pressure: float = -1.0  # share of the wall time some task waited for a CPU (PSI), -1 unknown


class Runner:
    def __init__(self, args, tools: list[Tool], datasets: list[Dataset]):
        self.args = args
        self.tools = tools
        self.datasets = datasets
        self.work: Path = args.workdir
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.logdir = self.work / "logs" / stamp
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.results: list[Result] = []
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.trash = Trash(self.work / "trash")
        rmtree(self.trash.root)  # (what an interrupted run left)
        self.profiling = False  # --profile: the extra, untimed round under py-spy
        self.profiles: list[tuple[str, str, Path]] = []  # (data set, operation, raw py-spy profile)

    def note(self, msg: str) -> None:
        log(f"NOTE: {msg}")
        self.notes.append(msg)

    def measure(self, rnd: int, ds: Dataset, tool: Tool, op: str, cmd: Cmd) -> tuple[Result, str]:
        base = self.logdir / f"r{rnd}-{ds.name}-{tool.name}-{op}"
        out, err = base.with_suffix(".out"), base.with_suffix(".err")
        with open(base.with_suffix(".cmd"), "w") as f:
            f.write(f"cd {cmd.cwd or os.getcwd()}\n{' '.join(f'{k}={shlex.quote(v)}' for k, v in cmd.env.items())} "
                    f"{shlex.join(cmd.argv)}\n")
        if self.profiling:
            prof = self.logdir / f"profile-{ds.name}-{op}.txt"
            cmd = dataclasses.replace(cmd, argv=profiles.record_argv(prof) + cmd.argv)
            self.profiles.append((ds.name, op, prof))
        psi0 = cpu_stall_us()
        m = run_measured(cmd, out, err, self.args.timeout)
        psi1 = cpu_stall_us()
        ok = m.rc == 0 and not m.timed_out
        pressure = (psi1 - psi0) / 1e6 / m.wall if psi0 is not None and psi1 is not None and m.wall else -1.0
        res = Result(rnd, ds.name, tool.name, op, ok, m.wall, m.cpu, m.user, m.sys, m.rss, m.maxrss, m.tree_rss,
                     load1=os.getloadavg()[0], cpu_pressure=pressure)
        status = "" if ok else ("  TIMED OUT" if m.timed_out else f"  FAILED rc={m.rc}")
        psi = f"  cpu-wait {pressure:4.0%}" if pressure >= 0 else ""
        log(f"  r{rnd} {ds.name:<11} {tool.name:<8} {OPS_LABEL[op]:<18} wall {m.wall:8.2f} s  "
            f"cpu {m.cpu:8.2f} s  rss {m.rss / MiB:8.1f} MiB{psi}{status}")
        if not ok:
            res.error = f"rc={m.rc}{' (timeout)' if m.timed_out else ''}; see {err}"
            log(tail(err.read_text(errors="replace")))
        stdout = out.read_text(errors="replace")
        if ok:
            tool.adjust(res, stdout)
            if res.rss is None:
                log(f"  r{rnd} {ds.name:<11} {tool.name:<8} {OPS_LABEL[op]:<18} compute {res.wall:5.2f} s  "
                    f"cpu {res.cpu:8.2f} s")
        if not self.profiling:  # a profiled run is slower: it is not a measurement
            self.results.append(res)
        return res, stdout

    def run(self) -> None:
        # warm the binaries / Python modules, so that the first timed call is not a cold start
        for tool in self.tools:
            subprocess.run(tool.help().argv, capture_output=True, env={**os.environ, **tool.help().env})
        for rnd in range(1, self.args.rounds + 1):
            order = self.tools[(rnd - 1) % len(self.tools):] + self.tools[:(rnd - 1) % len(self.tools)]
            log(f"== round {rnd}/{self.args.rounds}, tool order: {', '.join(t.name for t in order)}")
            for ds in self.datasets:
                if ds.name in self.skipped:
                    continue
                try:
                    self.run_dataset(rnd, ds, order)
                except SkipDataset as e:
                    self.skipped[ds.name] = str(e)
                    self.note(f"data set {ds.name} skipped: {e}")
        rekkord = [t for t in self.tools if t.name == "rekkord"]
        if self.args.profile and rekkord:
            log("== profile round (rekkord under py-spy; not timed)")
            self.profiling = True
            for ds in self.datasets:
                if ds.name not in self.skipped and not isinstance(ds, StartupDataset):
                    try:
                        self.run_dataset(0, ds, rekkord)
                    except SkipDataset:
                        pass
            self.profiling = False

    def run_dataset(self, rnd: int, ds: Dataset, order: list[Tool]) -> None:
        if isinstance(ds, StartupDataset):
            for tool in order:
                self.measure(rnd, ds, tool, "help", tool.help())
            return
        runs = self.work / "runs"
        free = free_bytes(self.work)
        if free < int(ds.data_bytes * (ds.repo_factor * len(order) + 1)) + GiB:
            self.trash.empty()  # (the space is needed: the next restores may pay for it, see Trash)
            free = free_bytes(self.work)
        margin = GiB
        need_all = int(ds.data_bytes * (ds.repo_factor * len(order) + 1)) + margin
        need_one = int(ds.data_bytes * (ds.repo_factor + 1)) + margin
        if free >= need_all:
            schedule = [(op, t) for op in ds.ops for t in order]  # interleaved operation by operation
        elif free >= need_one:
            if rnd == 1:
                self.note(f"{ds.name}: not enough free space for {len(order)} repositories at once "
                          f"({fmt_bytes(free)} free, {fmt_bytes(need_all)} needed); tools run one after the other")
            schedule = [(op, t) for t in order for op in ds.ops]
        else:
            raise SkipDataset(f"needs about {fmt_bytes(need_one)} free, {fmt_bytes(free)} free")

        ds.ensure_state(ds.state_for(ds.ops[0]))  # (the nightly set starts at night1)
        # What an operation reads is read once just before it, so that every tool
        # finds it warm: a kernel that pages out memory left idle (DAMON here:
        # after 60 s) would otherwise give whichever tool comes later a cold data
        # set or repository.
        warm = ds.data_bytes < self.args.mem_bytes // 2
        if not warm and rnd == 1:
            self.note(f"{ds.name} is larger than half the memory: data is read from disk (cold or partly warm)")

        states: dict[str, ToolState] = {}
        failed: set[str] = set()
        for op, tool in schedule:
            if tool.name in failed:
                continue
            st = states.get(tool.name)
            if st is None:
                st = ToolState(tool, runs / tool.name, channel=ds.name)
                rmtree(st.dir)
                st.dir.mkdir(parents=True)
                try:
                    tool.init(st)
                except ToolError as e:
                    self.note(f"r{rnd} {ds.name}: {tool.name} init failed: {e}")
                    self.results.append(Result(rnd, ds.name, tool.name, "first", False, error="init failed"))
                    failed.add(tool.name)
                    rmtree(st.dir)
                    continue
                states[tool.name] = st
            ds.ensure_state(ds.state_for(op))
            if op == "restore":
                if tool.verifies:
                    self.record_repo_size(rnd, ds, st)
                if warm:
                    read_tree(st.dir)
                dest = self.work / "restore"
                self.trash.discard(dest)
                dest.mkdir(parents=True)
                res, _ = self.measure(rnd, ds, tool, op, tool.restore(st, dest))
                if res.ok and tool.verifies:
                    problem = verify_restore(ds.tree, dest / str(ds.tree).lstrip("/"), self.args.verify)
                    if problem:
                        res.ok = False
                        res.error = f"restore differs: {problem}"
                        self.note(f"r{rnd} {ds.name}: {tool.name} restore is wrong: {problem}")
                self.trash.discard(dest)
                problem = tool.check(st)
                if problem:
                    self.note(f"r{rnd} {ds.name}: {tool.name}: {problem}")
                self.trash.discard(st.dir)
                del states[tool.name]
            else:
                st.source = ds.tree
                if warm:
                    read_tree(ds.tree)
                res, out = self.measure(rnd, ds, tool, op, tool.save(st, op, ds.tree))
                if res.ok:
                    tool.saved(st, op, out)
        for st in states.values():  # only when a tool never reached its restore
            self.trash.discard(st.dir)

    def record_repo_size(self, rnd: int, ds: Dataset, st: ToolState) -> None:
        if self.profiling:
            return
        size, disk = dir_size(st.repo)
        self.results.append(Result(rnd, ds.name, st.tool.name, "repo", True, repo_bytes=size, repo_disk=disk))
        log(f"  r{rnd} {ds.name:<11} {st.tool.name:<8} {'repository size':<18} {fmt_bytes(size)}")


# --------------------------------------------------------------------------------------
# report

def machine_description(tools: list[Tool], work: Path) -> dict:
    def read(path):
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    cpu = next((ln.split(":", 1)[1].strip() for ln in read("/proc/cpuinfo").splitlines()
                if ln.startswith("model name")), platform.processor() or "?")
    mem = next((int(ln.split()[1]) * KiB for ln in read("/proc/meminfo").splitlines()
                if ln.startswith("MemTotal:")), 0)
    osname = next((ln.split("=", 1)[1].strip('"') for ln in read("/etc/os-release").splitlines()
                   if ln.startswith("PRETTY_NAME=")), platform.system())
    fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout.splitlines()[-1:]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory": fmt_bytes(mem),
        "kernel": platform.release(),
        "os": osname,
        "python": sys.version.split()[0],
        "workdir filesystem": " ".join(fs[0].split()[:2]) if fs else "?",
        "proactive reclaim": damon_reclaim(),
        "tools": {t.name: t.version() for t in tools},
        "rss": rss_method(),
    }


def damon_reclaim(root: Path = Path("/sys/kernel/mm/damon/admin/kdamonds")) -> str:
    """Whether the kernel pages out memory nobody touched for a while (DAMON's
    ``pageout`` scheme): then the page cache of a data set or a repository
    left alone for that long is gone, and the next tool to read it reads the
    disk; on a VM whose host takes freed pages back, writing into them is
    slower too.  "" when no such scheme runs (or it cannot be read)."""
    out = []
    for kd in sorted(root.glob("[0-9]*")):
        try:
            if (kd / "state").read_text().strip() != "on":
                continue
            for ctx in sorted(kd.glob("contexts/[0-9]*")):
                aggr_us = int((ctx / "monitoring_attrs/intervals/aggr_us").read_text())
                for sc in sorted(ctx.glob("schemes/[0-9]*")):
                    if (sc / "action").read_text().strip() != "pageout":
                        continue
                    age = int((sc / "access_pattern/age/min").read_text())
                    out.append(f"DAMON pages out memory idle for {age * aggr_us / 1e6:g} s or more")
        except (OSError, ValueError):
            continue
    return "; ".join(out)


def median_or_none(values):
    return statistics.median(values) if values else None


def group_value(results: list[Result], ds: str, tool: str, ops: list[str], attr: str, div: float = 1.0):
    """Median over the rounds of (the median over OPS within the round); 'FAIL' when
    the tool ran them and never succeeded; None when it never ran them."""
    rs = [r for r in results if r.dataset == ds and r.tool == tool and r.op in ops]
    per_round = []
    for rnd in sorted({r.round for r in rs}):
        good = [getattr(r, attr) / div for r in rs if r.round == rnd and r.ok and getattr(r, attr) is not None]
        if good:
            per_round.append(statistics.median(good))
    if per_round:
        return statistics.median(per_round)
    return "FAIL" if any(not r.ok for r in rs) else None


def summarize(results: list[Result], tools: list[str], ds: Dataset) -> list[tuple[str, str, dict]]:
    """Rows of (operation label, metric label, {tool: value or None or 'FAIL'})."""
    rows = []
    metrics = [("wall s", "wall", 1.0), ("CPU s", "cpu", 1.0), ("peak RSS MiB", "rss", MiB)]
    for label, ops in ds.row_groups():
        for mlabel, attr, div in metrics:
            rows.append((label, mlabel, {t: group_value(results, ds.name, t, ops, attr, div) for t in tools}))
    for op in ds.per_night():
        rows.append((OPS_LABEL[op], "wall s", {t: group_value(results, ds.name, t, [op], "wall") for t in tools}))
    if "restore" in ds.ops:
        vals = {}
        for t in tools:
            rs = [r.repo_bytes / MiB for r in results if r.dataset == ds.name and r.tool == t and r.op == "repo"]
            vals[t] = median_or_none(rs)
        rows.append(("repository size after all saves", "MiB", vals))
    return rows


def fmt_val(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(results, names: list[str], datasets: list[Dataset], markdown: bool) -> str:
    peers = [n for n in names if n != "rekkord"] if "rekkord" in names else []
    header = ["operation", "metric"] + names + [f"rekkord/{p}" for p in peers]
    out = []
    for ds in datasets:
        rows = summarize(results, names, ds)
        if not any(isinstance(v, (int, float)) or v == "FAIL" for _, _, vals in rows for v in vals.values()):
            continue
        body = []
        prev = None
        for oplabel, mlabel, vals in rows:
            cells = [oplabel if (markdown or oplabel != prev) else "", mlabel] + [fmt_val(vals[n]) for n in names]
            prev = oplabel
            for p in peers:
                a, b = vals.get("rekkord"), vals.get(p)
                cells.append(f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
                             else "–")
            body.append(cells)
        if markdown:
            out.append(f"### {ds.name}\n\n{ds.summary()}\n")
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|")
            out.extend("| " + " | ".join(c) + " |" for c in body)
            out.append("")
        else:
            widths = [max(len(str(r[i])) for r in [header] + body) for i in range(len(header))]
            out.append(f"== {ds.name}: {ds.summary()}")
            line = lambda cells: "  ".join(  # noqa: E731
                (c.ljust(w) if i < 2 else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths)))
            out.append(line(header))
            out.extend(line(c) for c in body)
            out.append("")
    return "\n".join(out)


#: issue 15's targets (rekkord / restic 0.14, wall time), by data set and operation;
#: peak RSS ≤ 1.0 and repository size ≤ 1.05 everywhere.
WALL_GOALS = {
    ("system", "first"): 0.5, ("system", "restore"): 0.5,
    ("sources", "changed"): 0.4, ("sources", "restore"): 0.5,
    ("files-100k", "first"): 0.8, ("files-300k", "first"): 0.8,
    ("files-100k", "restore"): 0.9, ("files-300k", "restore"): 0.9,
}
GOALS = {"rss": 1.0, "repo": 1.05}


def goal_table(results, names: list[str], datasets: list[Dataset], markdown: bool) -> str:
    """rekkord/restic ratios against the targets, one row per data set and operation, with
    the distance to the limit (the C code alone) where it was measured."""
    if "rekkord" not in names or "restic" not in names:
        return ""
    header = ["data set", "operation", "wall ratio (goal)", "peak RSS ratio (≤ 1.0)"]
    if "limit" in names:
        header.append("rekkord / limit")
    body = []

    def med(ds, tool, ops, attr):
        v = group_value(results, ds, tool, ops, attr)
        return v if isinstance(v, (int, float)) else None

    def ratio(ds, ops, attr, limit, vs="restic"):
        a, b = med(ds, "rekkord", ops, attr), med(ds, vs, ops, attr)
        if a is None or not b:
            return "FAIL" if group_value(results, ds, "rekkord", ops, attr) == "FAIL" else "–"
        x = a / b
        if limit is None:
            return f"{x:.2f}"
        return f"{x:.2f} {'ok' if x <= limit else 'MISSED'} (≤ {limit})"

    for ds in datasets:
        if isinstance(ds, StartupDataset):
            continue
        for label, ops in ds.row_groups():
            goal = WALL_GOALS.get((ds.name, ops[0])) if len(ops) == 1 else None
            row = [ds.name, label, ratio(ds.name, ops, "wall", goal), ratio(ds.name, ops, "rss", GOALS["rss"])]
            if "limit" in names:
                row.append(ratio(ds.name, ops, "wall", None, vs="limit"))
            body.append(row)
        if "restore" in ds.ops:
            a, b = med(ds.name, "rekkord", ["repo"], "repo_bytes"), med(ds.name, "restic", ["repo"], "repo_bytes")
            cell = (f"{a / b:.2f} {'ok' if a / b <= GOALS['repo'] else 'MISSED'} (≤ {GOALS['repo']})"
                    if a is not None and b else "–")
            body.append([ds.name, "repository size", cell, ""] + ([""] if "limit" in names else []))
    if not body:
        return ""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        lines += ["| " + " | ".join(c) + " |" for c in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["== rekkord / restic against the targets"]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in [header] + body]
    return "\n".join(lines) + "\n"


def markdown_report(args, machine, results, names, datasets, notes, started, finished, load) -> str:
    lines = [
        "# rekkord benchmark results",
        "",
        f"Run {started:%Y-%m-%d %H:%M} – {finished:%H:%M}, {args.rounds} round(s), medians of the rounds; "
        f"command: `{args.command}`",
        "",
        "## Machine",
        "",
        f"- CPUs: {machine['nproc']} × {machine['cpu']}",
        f"- memory: {machine['memory']}",
        f"- kernel: {machine['kernel']} ({machine['os']})",
        f"- Python: {machine['python']}",
        f"- work directory: `{args.workdir}` on {machine['workdir filesystem']}",
        *([f"- proactive reclaim: {machine['proactive reclaim']} (page cache left alone that long is "
           "read from disk again)"] if machine.get("proactive reclaim") else []),
        f"- load average at start / end: {load[0]} / {load[1]}",
    ]
    for name, v in machine["tools"].items():
        lines.append(f"- {name}: {v}")
    lines += [
        "",
        "## Method",
        "",
        "- restic: `restic backup --compression auto` on a repository format 2; borg (1.2 from Debian, 1.4 "
        "from PyPI): `borg create --compression zstd,3` on `repokey-blake2`; duplicity: `full` then "
        "`incremental` with `--encrypt-key` of a GPG key whose public half alone is in the saving keyring, "
        "`restore` with the secret keyring; rekkord: `rekkord save` with a derived write key, "
        "`rekkord restore` with the master key; all on local repositories.",
        "- limit: the time the C code alone needs (FastCDC, keyed BLAKE3, zstd 3, XChaCha20-Poly1305, "
        "BLAKE3 of the ciphertext; for restores hash check, decryption, decompression) for the bytes the "
        "operation must process, on all cores, without file I/O (benchmarks/limit.py); for an unchanged "
        "save it is the walk with one lstat per file.",
        "- Every round starts from fresh repositories and fresh caches; operations are interleaved "
        "(each operation for every tool before the next operation) and the tool order rotates every round.",
        "- The data set is read before each save, and the tool's repository and cache before its restore "
        "(warm page cache for every tool, also where the kernel pages out idle memory); the page cache is "
        "not dropped.",
        "- wall: elapsed time of the command; CPU: user + system time of the command and its children "
        f"(`wait4`); peak RSS: the larger of the largest process's `ru_maxrss`, measured with {rss_method()}, "
        "and the sampled (every 50 ms) sum of PSS over the command's process tree (pages that processes "
        "share divided among them).",
        "- Repository size: apparent bytes of the repository directory after all saves.",
        "- Restores are checked against the source tree (types, sizes, symlink targets, content).",
        "",
        "## Results",
        "",
    ]
    goals = goal_table(results, names, datasets, markdown=True)
    if goals:
        lines += ["### rekkord / restic against the targets", "", goals]
    lines += [table(results, names, datasets, markdown=True)]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# main

def ensure_peer_tools(names: list[str], install: bool, work: Path) -> None:
    """Install restic, borg, duplicity (and GNU time, for peak RSS) from Debian's packages
    and borg 1.4 from the package index, through setup.sh, where missing."""
    global TIME_BIN
    exes = {"restic": "restic", "borg": "borg", "duplicity": "duplicity"}
    missing = [n for n in names if n in exes and not shutil.which(exes[n])]
    borg14 = work / "tools" / "borg14"
    if "borg14" in names and not os.access(borg14 / "bin" / "borg", os.X_OK):
        missing.append("borg14")
    no_time = not os.access("/usr/bin/time", os.X_OK)
    if not missing and not no_time:
        return
    if not install:
        if missing:
            raise SystemExit(f"missing: {', '.join(missing)} (run benchmarks/setup.sh)")
        return
    log(f"installing {', '.join(missing + ['time'] * no_time)} with benchmarks/setup.sh ...")
    argv = ["sh", str(HERE / "setup.sh")] + (["--borg14", str(borg14)] if "borg14" in missing else [])
    r = subprocess.run(argv)
    if r.returncode != 0 and missing:
        log("NOTE: benchmarks/setup.sh failed; the tools it could not install are skipped")
    TIME_BIN = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def report(args, machine, results, names, datasets, notes, started, finished, load, profiled=None) -> None:
    log("")
    log(f"medians of {args.rounds} round(s); wall/CPU in seconds, RSS and sizes in MiB")
    log(table(results, names, datasets, markdown=False))
    goals = goal_table(results, names, datasets, markdown=False)
    if goals:
        log(goals)
    for n in notes:
        log(f"NOTE: {n}")
    prof = profile_section(profiled or [])
    if prof:
        log(prof)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown_report(args, machine, results, names, datasets, notes, started,
                                                 finished, load) + ("\n" + prof + "\n" if prof else ""))
        log(f"markdown: {args.markdown}")


def profile_section(profiled: list[tuple[str, str, Path]]) -> str:
    """What bounds each profiled rekkord operation (--profile), as Markdown."""
    rows = []
    for ds, op, path in profiled:
        if not path.exists():
            continue
        rows.append((ds, op, path, profiles.summarize(path)))
    if not rows:
        return ""
    out = ["## Profiles (rekkord, py-spy, untimed round)", "",
           "Busy samples of all threads by kind (waiting left out); then, per operation, each thread group's "
           "share of C libraries / kernel / Python / GC / waiting and the hottest frames.", "",
           "| data set | operation | busy time | raw profile |", "|---|---|---|---|"]
    out += [f"| {ds} | {OPS_LABEL.get(op, op)} | {profiles.bound_of(s)} | `{path}` |" for ds, op, path, s in rows]
    out += ["", "```"] + [profiles.render(path, s) for _ds, _op, path, s in rows] + ["```"]
    return "\n".join(out)


def report_from_json(args) -> int:
    """--report RAW.json: print (and --markdown) the tables of an earlier run."""
    data = json.loads(args.report.read_text())
    results = [Result(**r) for r in data["results"]]
    all_sets = make_datasets(args.workdir, args.nightly_project, args.nightly_db_rows, args.nightly_dir)
    datasets = []
    for name, info in data["datasets"].items():
        ds = all_sets.get(name)
        if ds is not None:
            ds.info = {k: v for k, v in info.items() if k != "summary"}
            datasets.append(ds)
    names = [n for n in TOOL_ORDER if n in data["machine"]["tools"]]
    args.rounds, args.command = data["rounds"], data["command"]
    report(args, data["machine"], results, names, datasets, data["notes"],
           dt.datetime.fromisoformat(data["started"]), dt.datetime.fromisoformat(data["finished"]),
           tuple(data["load"]))
    return 1 if any(not r.ok for r in results) else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark rekkord against restic and borg.")
    ap.add_argument("--quick", action="store_true",
                    help="1 round, and no big-file data sets unless named in --datasets")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, --quick 1)")
    ap.add_argument("--datasets", help="comma-separated data sets, or 'all' (see --list)")
    ap.add_argument("--tools", default=",".join(TOOL_ORDER), help="comma-separated (default %(default)s)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rekkord-bench"),
                    help="data sets, repositories and logs (default %(default)s; data sets are reused)")
    ap.add_argument("--markdown", type=Path, help="also write the results as Markdown to this file")
    ap.add_argument("--profile", action="store_true",
                    help="after the timed rounds, run rekkord's operations once more under py-spy and "
                         "say what bounds each (benchmarks/profiles.py)")
    ap.add_argument("--json", type=Path, help="raw results (default: <workdir>/results/<time>.json)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per operation (default %(default)s)")
    ap.add_argument("--verify", choices=("content", "sizes", "none"), default="content",
                    help="check each restore against the source tree (default %(default)s)")
    ap.add_argument("--rekkord-cmd", help="command to run rekkord (default: the `rekkord` script next to "
                                          "this Python if installed, else python -c; this checkout first on "
                                          "PYTHONPATH either way)")
    ap.add_argument("--rekkord-init", metavar="ARGS",
                    help="extra arguments for `rekkord init`, e.g. '--chunk-size 512k'")
    ap.add_argument("--nightly-project", metavar="NAME=V1,V2,...",
                    help="the nightly data set's project: releases of a package on the package index, oldest "
                         "first, one per night (default: Django 5.0.1 ... 5.0.7)")
    ap.add_argument("--nightly-db-rows", type=int, metavar="N",
                    help="rows of the nightly data set's database on night 1 (default 1000000, ~210 MiB)")
    ap.add_argument("--nightly-dir", type=Path, metavar="DIR",
                    help="also measure your own nights, as the data set 'nightly-dir': each subdirectory of DIR "
                         "(in natural name order) is one night's tree, saved one after the other into one "
                         "repository, then the last one restored")
    ap.add_argument("--no-install", action="store_true",
                    help="do not install missing peers (restic, borg, duplicity from Debian; borg 1.4 from PyPI)")
    ap.add_argument("--prepare-only", action="store_true", help="prepare the data sets and stop")
    ap.add_argument("--list", action="store_true", help="list the data sets and stop")
    ap.add_argument("--report", type=Path, metavar="RAW.json",
                    help="only print (and --markdown) the tables of an earlier run's raw results")
    args = ap.parse_args(argv)
    args.command = "python benchmarks/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.workdir = args.workdir.resolve()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.mem_bytes = os.sysconf("SC_PHYS_PAGES") * PAGE

    if args.report:
        return report_from_json(args)
    # SIGTERM: stop like Ctrl-C (the running tool is killed, what was measured is reported)
    def on_term(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    all_sets = make_datasets(args.workdir, args.nightly_project, args.nightly_db_rows, args.nightly_dir)
    if args.list:
        for name, ds in all_sets.items():
            log(f"{name:<12} {type(ds).__doc__.strip().splitlines()[0]}")
        return 0
    if args.datasets and args.datasets != "all":
        names = [n.strip() for n in args.datasets.split(",") if n.strip()]
        unknown = [n for n in names if n not in all_sets]
        if unknown:
            ap.error(f"unknown data sets {unknown}; known: {', '.join(all_sets)}")
    elif args.quick and not args.datasets:
        names = QUICK_DATASETS
    else:
        names = list(all_sets)
    datasets = [all_sets[n] for n in names]

    tool_names = [n.strip() for n in args.tools.split(",") if n.strip()]
    bad = [n for n in tool_names if n not in TOOL_ORDER]
    if bad:
        ap.error(f"unknown tools {bad}; known: {', '.join(TOOL_ORDER)}")
    tool_names = [n for n in TOOL_ORDER if n in tool_names]  # rekkord first: ratios read left to right
    ensure_peer_tools(tool_names, not args.no_install, args.workdir)
    if args.profile and not shutil.which("py-spy"):
        ap.error("--profile needs py-spy (python3 -m pip install py-spy)")
    if "rekkord" in tool_names:
        # Byte-compile the checkout as `pip install` does for an installed
        # package: where PYTHONDONTWRITEBYTECODE is set (this machine's
        # environment sets it), every run of a source checkout would
        # otherwise compile its modules again (0.17-0.2 s per command).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "rekkord")], check=False,
                       stdout=subprocess.DEVNULL)
    makers = {"rekkord": lambda: Rekkord(args.rekkord_cmd, args.rekkord_init), "restic": Restic, "borg": Borg,
              "borg14": lambda: Borg14(args.workdir), "duplicity": Duplicity, "limit": Limit}
    tools: list[Tool] = []
    for n in tool_names:
        t = makers[n]()
        why = t.missing()
        if why:
            log(f"NOTE: skipping {n}: {why}")
        else:
            tools.append(t)
    if not tools:
        log("no tool available")
        return 1

    args.workdir.mkdir(parents=True, exist_ok=True)
    prepared: list[Dataset] = []
    prep_notes = []
    for ds in datasets:
        try:
            ds.prepare()
            prepared.append(ds)
        except SkipDataset as e:
            prep_notes.append(f"data set {ds.name} skipped: {e}")
            log(f"NOTE: {prep_notes[-1]}")
    if args.prepare_only:
        return 0

    machine = machine_description(tools, args.workdir)
    log(f"machine: {machine['nproc']} × {machine['cpu']}, {machine['memory']}, kernel {machine['kernel']}")
    for n, v in machine["tools"].items():
        log(f"  {n}: {v}")
    started, load0 = dt.datetime.now(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    runner = Runner(args, tools, prepared)
    runner.notes.extend(prep_notes)
    try:
        runner.run()
    except KeyboardInterrupt:
        log("interrupted; reporting what was measured")
        runner.notes.append("run interrupted")
    finally:
        runner.trash.empty()
    finished, load1 = dt.datetime.now(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    ncpu = len(os.sched_getaffinity(0))
    peak_load = max([r.load1 for r in runner.results] + [os.getloadavg()[0]])
    pressures = [r.cpu_pressure for r in runner.results if r.cpu_pressure >= 0 and r.wall >= 1]
    busy = statistics.median(pressures) if pressures else 0.0
    if peak_load > ncpu + 1 or busy > 0.2:
        runner.note(f"the machine was busy: 1-minute load average up to {peak_load:.1f} on {ncpu} CPUs, "
                    f"CPU pressure (share of wall time some task waited for a CPU) median {busy:.0%} over "
                    f"operations of 1 s or more; other processes competed with the tools, so wall times are "
                    f"noisy (per-operation load and pressure are in the raw results)")

    raw = args.json or (args.workdir / "results" / f"{started:%Y%m%d-%H%M%S}.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({
        "command": args.command, "started": started.isoformat(), "finished": finished.isoformat(),
        "machine": machine, "load": [load0, load1], "rounds": args.rounds, "notes": runner.notes,
        "datasets": {d.name: {"summary": d.summary(), **d.info} for d in prepared},
        "results": [dataclasses.asdict(r) for r in runner.results],
    }, indent=1))
    report(args, machine, runner.results, [t.name for t in tools], prepared, runner.notes, started, finished,
           (load0, load1), runner.profiles)
    log(f"raw results: {raw}; logs: {runner.logdir}")
    failures = [r for r in runner.results if not r.ok]
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

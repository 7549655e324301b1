#!/usr/bin/env python3
"""Save and restore throughput on remote storage, as a ratio to a local repository.

    python benchmarks/remote.py [--size-mb 400] [--rounds 3] [--backends local,s3,sftp]
                                [--workdir DIR] [--profile] [--json OUT]

Starts its own SeaweedFS (S3) and OpenSSH (SFTP) on loopback with
tests/servers.py, prepares a deterministic sample of /usr/lib (the files in
the order of a hash of their path, up to --size-mb), then in every round, for
each backend in turn (the order rotates every round): a fresh repository and
cache, `rekkord init`, a write key, a first save with the write key, and a full
restore with the master key into an empty directory (checked against the
source).  Each operation is the real CLI in its own process; its wall time
includes the process start-up (Python, boto3 or paramiko) as a user sees it.
Prints the median MB/s of the rounds (MB = 10^6 bytes of file content) and
remote/local ratios.

Every operation also records its CPU seconds, the CPU seconds each server
process used meanwhile, and the machine's CPU pressure (/proc/pressure/cpu:
the share of the time some task waited for a CPU; other jobs on a shared
machine show up there).  --pin runs the servers on the last CPU and rekkord
(every backend, local included) on the others, so that the servers do not
take CPU time from the client: the ratio then shows what remote storage costs
the client alone, as when the server is another machine.

--profile also records each remote operation of the last round with py-spy
(`<workdir>/profiles/*.txt`, collapsed stacks; the top functions by own time
are printed).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402  (tests/servers.py)
from run import Trash, rmtree  # noqa: E402  (benchmarks/run.py, next to this script)

MB = 1_000_000
MiB = 1 << 20
GEN_VERSION = 1


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --- the data set -----------------------------------------------------------------------


def prepare_data(work: Path, size_mb: int, source: str) -> tuple[Path, dict]:
    """A copy of a deterministic sample of ``source`` (files in the order of
    a hash of their path until ``size_mb``); reused while the parameters match."""
    base = work / "data"
    tree = base / "tree"
    marker = base / "READY.json"
    params = {"version": GEN_VERSION, "source": source, "size_mb": size_mb}
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("params") == params and tree.is_dir():
            return tree, info
    log(f"preparing the data set: a {size_mb} MB path-hash sample of {source} ...")
    rmtree(base)
    tree.mkdir(parents=True)
    cands = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size <= 64 * MiB:
                cands.append((hashlib.blake2b(p.encode(), digest_size=8).digest(), p, st.st_size))
            elif stat.S_ISLNK(st.st_mode):
                cands.append((hashlib.blake2b(p.encode(), digest_size=8).digest(), p, 0))
    cands.sort()
    cap = size_mb * MB
    total = files = links = 0
    for _key, p, size in cands:
        if total + size > cap:
            if total > cap * 0.98:
                break
            continue
        dst = tree / os.path.relpath(p, "/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            if size == 0 and os.path.islink(p):
                os.symlink(os.readlink(p), dst)
                links += 1
                continue
            shutil.copy2(p, dst)
        except OSError as e:
            log(f"  skipped {p}: {e}")
            continue
        total += size
        files += 1
    info = {"params": params, "files": files, "symlinks": links, "bytes": total}
    marker.write_text(json.dumps(info))
    return tree, info


def tree_digest(root: Path) -> str:
    """Names, types, sizes and contents of a tree (what a restore must give back)."""
    h = hashlib.blake2b()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + os.readlink(p).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                h.update(b"F%d:" % st.st_size)
                with open(p, "rb") as f:
                    while b := f.read(MiB):
                        h.update(b)
    return h.hexdigest()


def warm(root: Path) -> None:
    """Read the tree once so that every backend starts from the page cache."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    while f.read(4 * MiB):
                        pass


# --- servers ----------------------------------------------------------------------------


class Backend:
    name = ""

    def url(self) -> str:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def procs(self) -> dict[str, int]:
        return {}


class Local(Backend):
    name = "local"

    def __init__(self, work: Path):
        self.base = work / "repos"

    def url(self) -> str:
        return str(self.base / ("local-" + uuid.uuid4().hex[:8]))


class S3(Backend):
    name = "s3"

    def __init__(self, srv: servers.SeaweedFS):
        self.srv = srv

    def url(self) -> str:
        return self.srv.url("bench-" + uuid.uuid4().hex[:8])

    def env(self) -> dict[str, str]:
        return self.srv.env()

    def procs(self) -> dict[str, int]:
        return {f"weed {n}": p.pid for n, p in self.srv.procs.items()}


class SFTP(Backend):
    name = "sftp"

    def __init__(self, srv: servers.SSHServer):
        self.srv = srv

    def url(self) -> str:
        return self.srv.url()

    def env(self) -> dict[str, str]:
        return self.srv.env()

    def procs(self) -> dict[str, int]:
        return {"sshd": self.srv.proc.pid} if self.srv.proc else {}


def cpu_pressure() -> float | None:
    """Seconds some task waited for a CPU, machine-wide, since boot."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return None


def pin(pid: int, cpus: set[int]) -> None:
    """Move a process, every thread of it and every descendant to ``cpus``
    (new threads and children inherit it)."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for t in tids:
            try:
                os.sched_setaffinity(t, cpus)
            except OSError:
                pass
        todo.extend(servers._children(p))


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped children, plus its live
    descendants (sshd serves each connection in a child)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick
        todo.extend(servers._children(p))
    return total


# --- running rekkord --------------------------------------------------------------------


class Runner:
    def __init__(self, work: Path, profile: bool, cpus: set[int] | None = None, code: Path = ROOT):
        self.work = work
        self.code = code
        self.profile = profile
        self.cpus = cpus
        # (restored trees and local repositories are put aside until the end
        # of the run: a restore right after the deletion of the last one pays
        # for ext4's scan of recently freed inodes, see run.Trash)
        self.trash = Trash(work / "trash")
        rmtree(self.trash.root)
        self.py_spy = shutil.which("py-spy") if profile else None
        if profile and not self.py_spy:
            log("py-spy not found: --profile records nothing")
        (work / "profiles").mkdir(parents=True, exist_ok=True)

    def run(self, args: list[str], env: dict[str, str], *,
            profile_as: str | None = None) -> tuple[float, float, float | None, str]:
        """Run the CLI; returns (wall seconds, CPU seconds, CPU pressure share, stdout)."""
        cmd = [sys.executable, "-m", "rekkord", *args]
        if profile_as and self.py_spy:
            out = self.work / "profiles" / f"{profile_as}.txt"
            cmd = [self.py_spy, "record", "--format", "raw", "--rate", "200", "--threads", "--nonblocking",
                   "-o", str(out), "--", *cmd]
        e = {k: v for k, v in os.environ.items() if not k.startswith(("REKKORD_", "AWS_"))}
        e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code), os.environ.get("PYTHONPATH")]))
        e.update(env)
        cpus = self.cpus
        before = os.times()
        psi0 = cpu_pressure()
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=e, capture_output=True, stdin=subprocess.DEVNULL,
                           preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        wall = time.perf_counter() - t0
        psi1 = cpu_pressure()
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        if p.returncode != 0:
            raise RuntimeError(f"rekkord {' '.join(args)} failed ({p.returncode}):\n{p.stderr.decode()[-2000:]}")
        pressure = (psi1 - psi0) / wall if psi0 is not None and psi1 is not None else None
        out = "\n".join(line for line in p.stdout.decode().splitlines() if not line.startswith("py-spy>"))
        return wall, cpu, pressure, out


def one_round(runner: Runner, backend: Backend, tree: Path, expect: str | None, rnd: int,
              profile: bool, threads: int | None, connections: int | None = None) -> dict:
    work = runner.work
    url = backend.url()
    tag = f"{backend.name}-r{rnd}"
    keys = work / "keys" / tag
    rmtree(keys)
    keys.mkdir(parents=True)
    cache = work / "cache" / tag
    rmtree(cache)
    base = {"REKKORD_REPOSITORY": url, "REKKORD_CACHE_DIR": str(cache), **backend.env()}
    if connections and backend.name != "local":
        conf = keys / "rekkord.toml"
        conf.write_text(f"[storage]\nconnections = {connections}\n")
        base["REKKORD_CONFIG"] = str(conf)
    master = {**base, "REKKORD_KEY_FILE": str(keys / "master.key")}
    writer = {**base, "REKKORD_KEY_FILE": str(keys / "write.key")}
    jflag = ["-j", str(threads)] if threads else []
    runner.run(["init"], master)
    runner.run(["key", "derive", "--role", "write", "--label", "bench", "-o", str(keys / "write.key")], master)
    res: dict = {"backend": backend.name, "round": rnd, "url": url}
    pids = backend.procs()
    srv0 = {n: cpu_seconds(p) for n, p in pids.items()}
    wall, cpu, pressure, out = runner.run([*jflag, "save", "bench", str(tree), "--json"], writer,
                                          profile_as=f"{backend.name}-save" if profile else None)
    srv1 = {n: cpu_seconds(p) for n, p in pids.items()}
    st = json.loads(out)
    res["save"] = {"wall": wall, "cpu": cpu, "pressure": pressure, "pipeline": st.get("duration"),
                   "bytes_stored": st.get("bytes_stored"), "blobs": st.get("blobs_new"),
                   "server_cpu": {n: srv1[n] - srv0[n] for n in pids}}
    dest = work / "restore" / tag
    rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu, pressure, out = runner.run([*jflag, "restore", f"{st['id']}:{tree}", str(dest), "--json"], master,
                                          profile_as=f"{backend.name}-restore" if profile else None)
    srv2 = {n: cpu_seconds(p) for n, p in pids.items()}
    rst = json.loads(out)
    res["restore"] = {"wall": wall, "cpu": cpu, "pressure": pressure, "pipeline": rst.get("duration"),
                      "server_cpu": {n: srv2[n] - srv1[n] for n in pids}}
    if expect is not None and tree_digest(dest) != expect:
        raise RuntimeError(f"{backend.name}: the restored tree differs from the source ({dest})")
    runner.trash.discard(dest)
    if backend.name == "local":
        runner.trash.discard(Path(url))
    return res


def describe(op: str, r: dict) -> str:
    srv = sum(r["server_cpu"].values())
    pressure = f", CPU pressure {r['pressure'] * 100:.0f} %" if r.get("pressure") is not None else ""
    return (f"{op} {r['wall']:.2f}s (pipeline {r['pipeline']:.2f}s, {r['cpu']:.1f} CPU-s"
            + (f" + server {srv:.1f}" if r["server_cpu"] else "") + pressure + ")")


def top_functions(path: Path, n: int = 15) -> list[tuple[str, float]]:
    """Own-time share of the hottest functions in a py-spy raw (collapsed) profile,
    idle threads (waiting on a lock, a queue, a socket) left out."""
    own: collections.Counter = collections.Counter()
    total = 0
    idle = ("wait (threading.py", "Condition.wait", "_worker (concurrent/futures/thread.py", "get (queue.py",
            "select (selectors.py", "thread (", "Packetizer.read_all", "SocketIO.readinto")  # blocked, not busy
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        try:
            c = int(count)
        except ValueError:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        if any(leaf.startswith(i) for i in idle):
            continue
        total += c
        own[leaf] += c
    return [(f, c / total) for f, c in own.most_common(n)] if total else []


def start_backends(work: Path, wanted: list[str], stack: list) -> list:
    """The backends named in ``wanted`` (local, s3, sftp), the servers
    started on loopback under ``work``/servers; their context managers are
    appended to ``stack`` for the caller to close."""
    srv_root = work / "servers"
    rmtree(srv_root)
    out = []
    if "local" in wanted:
        out.append(Local(work))
    if "s3" in wanted:
        cm = servers.seaweedfs_server(srv_root / "seaweedfs")
        out.append(S3(cm.__enter__()))
        stack.append(cm)
    if "sftp" in wanted:
        cm = servers.sshd_server(srv_root / "sshd")
        out.append(SFTP(cm.__enter__()))
        stack.append(cm)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=400, help="size of the data set (default 400)")
    ap.add_argument("--source", default="/usr/lib", help="where the sample comes from (default /usr/lib)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the median is shown (default 3)")
    ap.add_argument("--backends", default="local,s3,sftp")
    ap.add_argument("--threads", "-j", type=int, help="pass -j N to rekkord (default: its own choice)")
    ap.add_argument("--connections", type=int,
                    help="[storage] connections for the remote backends (default: the backend's own)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rekkord-bench-remote"))
    ap.add_argument("--no-verify", action="store_true", help="do not compare each restore with the source")
    ap.add_argument("--profile", action="store_true", help="py-spy the remote operations of the last round")
    ap.add_argument("--pin", action="store_true",
                    help="servers on the last CPU, rekkord on the others (needs 2 CPUs or more)")
    ap.add_argument("--json", metavar="OUT", help="write the raw results")
    ap.add_argument("--code", metavar="DIR", default=str(ROOT),
                    help="run the rekkord package found in DIR (e.g. an export of another revision; "
                         "default: this checkout)")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    tree, info = prepare_data(work, args.size_mb, args.source)
    data_bytes = info["bytes"]
    log(f"data: {info['files']} files, {info['symlinks']} symlinks, {data_bytes / MB:.0f} MB "
        f"(path-hash sample of {args.source})")
    warm(tree)
    expect = None if args.no_verify else tree_digest(tree)

    backends: list[Backend] = []
    stack = []
    runner = None
    try:
        backends.extend(start_backends(work, wanted, stack))
        client_cpus = None
        if args.pin:
            allowed = sorted(os.sched_getaffinity(0))
            if len(allowed) < 2:
                raise SystemExit("--pin needs at least 2 CPUs")
            client_cpus = set(allowed[:-1])
            for b in backends:
                for pid in b.procs().values():
                    pin(pid, {allowed[-1]})
            log(f"pinned: servers on CPU {allowed[-1]}, rekkord on CPU {','.join(map(str, sorted(client_cpus)))}")
        runner = Runner(work, args.profile, client_cpus, Path(args.code))
        if Path(args.code).resolve() != ROOT:
            log(f"rekkord from {args.code}")
        results = []
        for rnd in range(args.rounds):
            order = backends[rnd % len(backends):] + backends[:rnd % len(backends)]
            for b in order:
                prof = args.profile and rnd == args.rounds - 1 and b.name != "local"
                r = one_round(runner, b, tree, expect, rnd, prof, args.threads, args.connections)
                results.append(r)
                log(f"round {rnd + 1} {b.name:5}: " + "; ".join(describe(op, r[op]) for op in ("save", "restore")))
    finally:
        for cm in reversed(stack):
            cm.__exit__(None, None, None)
        if runner is not None:
            runner.trash.empty()

    def med(name, op, key="wall"):
        vals = [r[op][key] for r in results if r["backend"] == name and r[op].get(key) is not None]
        return statistics.median(vals) if vals else None

    def med_server(name, op):
        vals = [sum(r[op]["server_cpu"].values()) for r in results if r["backend"] == name]
        return statistics.median(vals) if vals else 0.0

    log("")
    log(f"{data_bytes / MB:.0f} MB, {info['files']} files, median of {args.rounds} rounds, {os.cpu_count()} CPUs"
        + (" (servers pinned to one, rekkord on the others)" if args.pin else "")
        + "; MB/s from the command's wall time, pipeline time in parentheses;")
    log("ratio: local time / this backend's time; CPU-s: rekkord + server processes")
    log(f"{'backend':8} {'save MB/s':>16} {'ratio':>6} {'CPU-s':>10}   {'restore MB/s':>16} {'ratio':>6} {'CPU-s':>10}"
        f" {'pressure':>9}")
    local = {op: med("local", op) for op in ("save", "restore")}
    summary = {}
    for b in backends:
        row = [f"{b.name:8}"]
        summary[b.name] = {}
        pressures = []
        for op in ("save", "restore"):
            w, pl = med(b.name, op), med(b.name, op, "pipeline")
            rate = data_bytes / MB / w
            prate = data_bytes / MB / pl if pl else 0
            ratio = local[op] / w if local.get(op) else None
            cpu, srv = med(b.name, op, "cpu"), med_server(b.name, op)
            pr = med(b.name, op, "pressure")
            if pr is not None:
                pressures.append(pr)
            summary[b.name][op] = {"mb_s": rate, "pipeline_mb_s": prate, "ratio": ratio, "cpu_s": cpu,
                                   "server_cpu_s": srv, "wall_s": w, "cpu_pressure": pr}
            row.append(f"{rate:7.1f} ({prate:6.1f})")
            row.append(f"{ratio:6.2f}" if ratio is not None else f"{'-':>6}")
            row.append(f"{cpu:4.1f}+{srv:<4.1f}" + ("  " if op == "save" else ""))
        row.append(f"{max(pressures) * 100:8.0f}%" if pressures else "")
        log(" ".join(row))
    if args.profile:
        for f in sorted((work / "profiles").glob("*.txt")):
            log(f"\n{f.stem}: top functions by own time (busy threads)")
            for fn, share in top_functions(f):
                log(f"  {share * 100:5.1f} %  {fn}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": info, "results": results, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

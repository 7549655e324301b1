#!/usr/bin/env python3
"""What the hostile-input defences and format v2 cost, side by side in one run.

    python benchmarks/formats.py [--baseline 204bf93] [--size-mb 300] [--rounds 3]
                                 [--backends local,s3,sftp] [--workdir DIR] [--json OUT]

Variants, each on a fresh repository and cache every round, interleaved
operation by operation (the order rotates every round):

* ``old``: the code of ``--baseline`` (a revision before the hostile-input
  work; exported with ``git archive`` into the work directory), format 1;
* ``v1``: this checkout, ``init --format 1``;
* ``v2``: this checkout, ``init --format 2`` (the default).

Operations: first save (write key), unchanged save, a second machine's first
save of the same data (another write key, an empty cache: in v2 it proves
every object it reuses by reading it back), full restore (master key), check
(audit key) and check --read-data (master key).  Remote backends (SeaweedFS
for S3, OpenSSH for SFTP, started on loopback by tests/servers.py) run the
saves of v1 and v2 only: what proving another writer's objects costs there.

Prints medians and the ratios new/old and v2/v1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from remote import Runner, log, prepare_data, start_backends, tree_digest, warm  # noqa: E402
from run import Trash, rmtree  # noqa: E402

OPS = ["first", "unchanged", "second", "restore", "check", "read-data"]
LABEL = {"first": "first save", "unchanged": "unchanged save", "second": "second machine's save",
         "restore": "full restore", "check": "check (audit)", "read-data": "check --read-data"}
REMOTE_OPS = ["first", "second", "restore"]


def export(rev: str, dest: Path) -> Path:
    """The package of revision REV under dest (git archive; reused)."""
    out = dest / rev
    if (out / "rekkord" / "__init__.py").exists():
        return out
    rmtree(out)
    out.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "rekkord"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


class Variant:
    def __init__(self, name: str, runner: Runner, fmt: int | None):
        self.name, self.runner, self.fmt = name, runner, fmt


def one_round(v: Variant, backend, tree: Path, expect: str | None, rnd: int, ops: list[str],
              trash: Trash) -> dict:
    """One variant's operations on a fresh repository; what it deletes goes
    to ``trash`` (emptied at the end: see run.Trash)."""
    work = v.runner.work
    url = backend.url()
    tag = f"{v.name}-{backend.name}-r{rnd}"
    keys = work / "keys" / tag
    rmtree(keys)
    keys.mkdir(parents=True)
    base = {"REKKORD_REPOSITORY": url, **backend.env()}

    def as_(key: str, cache: str) -> dict:
        return {**base, "REKKORD_KEY_FILE": str(keys / key), "REKKORD_CACHE_DIR": str(work / "cache" / tag / cache)}

    rmtree(work / "cache" / tag)
    master = as_("master.key", "master")
    v.runner.run(["init"] + (["--format", str(v.fmt)] if v.fmt else []), master)
    for role, name in (("write", "write.key"), ("write", "write2.key"), ("audit", "audit.key")):
        v.runner.run(["key", "derive", "--role", role, "--label", name.split(".")[0], "-o", str(keys / name)], master)
    res = {}

    def timed(op, args, env):
        wall, cpu, _pressure, out = v.runner.run(args, env)
        res[op] = {"wall": wall, "cpu": cpu}
        return out

    out = timed("first", ["save", "bench", str(tree), "--json"], as_("write.key", "a"))
    sid = json.loads(out)["id"]
    if "unchanged" in ops:
        timed("unchanged", ["save", "bench", str(tree), "--json"], as_("write.key", "a"))
    if "second" in ops:
        timed("second", ["save", "other", str(tree), "--json"], as_("write2.key", "b"))
    if "restore" in ops:
        dest = work / "restore" / tag
        trash.discard(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        timed("restore", ["restore", f"{sid}:{tree}", str(dest)], master)
        if expect is not None and tree_digest(dest) != expect:
            raise RuntimeError(f"{tag}: the restored tree differs from the source ({dest})")
        trash.discard(dest)
    if "check" in ops:
        timed("check", ["check"], as_("audit.key", "audit"))
    if "read-data" in ops:
        timed("read-data", ["check", "--read-data"], master)
    if backend.name == "local":
        trash.discard(Path(url))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="204bf93", help="revision before the hostile-input work")
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--source", default="/usr/lib")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default="local,s3,sftp")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rekkord-bench-formats"))
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tree, info = prepare_data(work, args.size_mb, args.source)
    log(f"data: {info['files']} files, {info['symlinks']} symlinks, {info['bytes'] / 1e6:.0f} MB "
        f"(path-hash sample of {args.source})")
    warm(tree)
    expect = tree_digest(tree)
    old_code = export(args.baseline, work / "code")
    variants = [Variant("old", Runner(work, False, None, old_code), None),
                Variant("v1", Runner(work, False, None, ROOT), 1),
                Variant("v2", Runner(work, False, None, ROOT), 2)]
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    backends, stack = [], []
    results: list[dict] = []
    trash = Trash(work / "trash")
    trash.empty()
    try:
        backends.extend(start_backends(work, ["local"] + wanted, stack))
        for rnd in range(args.rounds):
            order = variants[rnd % 3:] + variants[:rnd % 3]
            for b in backends:
                for v in order:
                    if b.name != "local" and v.name == "old":
                        continue
                    ops = OPS if b.name == "local" else REMOTE_OPS
                    r = one_round(v, b, tree, expect, rnd, ops, trash)
                    results.append({"variant": v.name, "backend": b.name, "round": rnd, **r})
                    log(f"  r{rnd} {b.name:<5} {v.name:<3} " + "  ".join(
                        f"{op} {r[op]['wall']:.2f}s" for op in ops if op in r))
    finally:
        for cm in reversed(stack):
            cm.__exit__(None, None, None)
        trash.empty()

    def med(variant, backend, op, key="wall"):
        xs = [r[op][key] for r in results if r["variant"] == variant and r["backend"] == backend and op in r]
        return statistics.median(xs) if xs else None

    log("")
    log(f"medians of {args.rounds} round(s), wall seconds (CPU seconds); data {info['bytes'] / 1e6:.0f} MB, "
        f"{info['files']} files; old = {args.baseline}")
    log(f"{'backend':<7} {'operation':<22} {'old':>14} {'v1':>14} {'v2':>14} {'v1/old':>7} {'v2/old':>7} {'v2/v1':>7}")
    for b in backends:
        for op in OPS if b.name == "local" else REMOTE_OPS:
            cells = []
            for v in ("old", "v1", "v2"):
                w, c = med(v, b.name, op), med(v, b.name, op, "cpu")
                cells.append(f"{w:.2f} ({c:.2f})" if w is not None else "–")
            o, a, n = med("old", b.name, op), med("v1", b.name, op), med("v2", b.name, op)
            ratio = lambda x, y: f"{x / y:.2f}" if x is not None and y else "–"  # noqa: E731
            log(f"{b.name:<7} {LABEL[op]:<22} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14} "
                f"{ratio(a, o):>7} {ratio(n, o):>7} {ratio(n, a):>7}")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "baseline": args.baseline, "results": results},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

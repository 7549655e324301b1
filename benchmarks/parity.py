"""Cost of Reed-Solomon parity (init --parity): repository size and first-save
time with and without it, on one tree saved into fresh local repositories.

    python benchmarks/parity.py [--size-mb 200] [--percent 5] [--rounds 2] [--tree DIR]

The tree (unless --tree): half real files (/usr/lib/python3*, /usr/share/doc,
compressible), half random files of 64 KiB to 8 MiB (incompressible).  Each
round saves it once into a repository without parity and once into one with
parity, alternating which goes first; prints one line per save and the medians.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rekkord.cache import Cache, cache_path
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.save import Saver
from rekkord.storage.local import LocalStorage


def make_tree(root: str, size: int) -> int:
    os.makedirs(root)
    total = 0
    real = os.path.join(root, "real")
    for src in ("/usr/lib/python3", "/usr/lib/python3.11", "/usr/share/doc"):
        for d, _, fs in os.walk(src):
            for f in fs:
                p = os.path.join(d, f)
                if total >= size // 2 or not os.path.isfile(p) or os.path.islink(p):
                    continue
                dst = os.path.join(real, os.path.relpath(p, "/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(p, dst)
                total += os.path.getsize(dst)
    rnd = random.Random(1)
    os.makedirs(os.path.join(root, "random"))
    i = 0
    while total < size:
        n = min(size - total, int(2 ** rnd.uniform(16, 23)))
        with open(os.path.join(root, "random", f"r{i:04}"), "wb") as f:
            f.write(os.urandom(n))
        total += n
        i += 1
    return total


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def one(work: str, tree: str, ratio: float | None, tag: str) -> tuple[float, float, int, int]:
    url = os.path.join(work, f"repo-{tag}")
    master = Key.generate_master()
    Repository.init(LocalStorage(url), master, parity=ratio)
    repo = Repository.open(LocalStorage(url), master)
    cache = Cache(cache_path(os.path.join(work, f"cache-{tag}"), repo.id, "admin"))
    t = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        Saver(repo, cache).save("bench", [tree])
    finally:
        cache.close()
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    blobs, parity = du(os.path.join(url, "blobs")), du(os.path.join(url, "parity"))
    shutil.rmtree(url)
    shutil.rmtree(os.path.join(work, f"cache-{tag}"))
    return wall, cpu, blobs, parity


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--percent", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tree")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="rekkord-parity-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        tree = a.tree or os.path.join(work, "tree")
        if not a.tree:
            size = make_tree(tree, a.size_mb << 20)
            print(f"tree: {size / 2**20:.1f} MiB")
        results: dict[str, list] = {"none": [], "parity": []}
        for r in range(a.rounds):
            order = [("none", None), ("parity", a.percent / 100)]
            if r % 2:
                order.reverse()
            for tag, ratio in order:
                wall, cpu, blobs, parity = one(work, tree, ratio, tag)
                results[tag].append((wall, cpu, blobs, parity))
                print(f"round {r + 1} {tag:6}: save {wall:6.2f} s ({cpu:6.2f} s CPU), blobs {blobs / 2**20:7.1f} MiB, "
                      f"parity {parity / 2**20:6.2f} MiB")
        w0 = statistics.median(x[0] for x in results["none"])
        w1 = statistics.median(x[0] for x in results["parity"])
        c0 = statistics.median(x[1] for x in results["none"])
        c1 = statistics.median(x[1] for x in results["parity"])
        b = statistics.median(x[2] for x in results["parity"])
        p = statistics.median(x[3] for x in results["parity"])
        print(f"median save: {w0:.2f} s without parity, {w1:.2f} s with {a.percent:g}% "
              f"({(w1 / w0 - 1) * 100:+.0f}%); CPU {c0:.2f} s vs {c1:.2f} s ({(c1 / c0 - 1) * 100:+.0f}%); parity {p / 2**20:.2f} MiB = {p / b * 100:.2f}% of "
              f"{b / 2**20:.1f} MiB of blobs")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

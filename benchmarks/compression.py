"""Measure zstd levels and the incompressible-data probe on real blobs.

    python benchmarks/compression.py [DIR ...] [--levels 1,2,3,6,9] [--limit-mb 400]

The directories (default: the benchmark harness's `system` and `sources`
trees under /tmp/rekkord-bench/data, else /usr/share/doc) are cut into blobs
the way a save cuts them -- files of 256 KiB or more with the content-defined
chunker, smaller files appended into ~1 MiB packs -- and each blob is
compressed at each level on one thread.  For each level the table gives the
stored size as a share of the input and the compression speed (MB/s of input
per core); the last line shows what the probe that rekkord runs before
compressing a blob of more than 256 KiB (four 16 KiB samples spread over it)
saves on incompressible data, what it costs, and what it gets wrong.

Only rekkord (this checkout) and zstandard are needed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zstandard  # noqa: E402

from rekkord.chunker import Chunker, ChunkerParams, chunker_seed  # noqa: E402
from rekkord.format import looks_incompressible  # noqa: E402

SMALL = 256 * 1024
PACK = 1024 * 1024


def blobs(dirs: list[Path], limit: int):
    """Yield (kind, bytes) blobs cut as a save would, up to `limit` input bytes."""
    chunker = Chunker(ChunkerParams(), chunker_seed(os.urandom(32)))
    pack, total = bytearray(), 0
    for top in dirs:
        for root, dnames, fnames in os.walk(top):
            dnames.sort()
            for name in sorted(fnames):
                path = os.path.join(root, name)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                try:
                    data = Path(path).read_bytes()
                except OSError:
                    continue
                if len(data) >= SMALL:
                    for chunk in chunker.cut(data):
                        yield "chunk", bytes(chunk)
                else:
                    pack += data
                    if len(pack) >= PACK:
                        yield "pack", bytes(pack)
                        pack = bytearray()
                total += len(data)
                if total >= limit:
                    if pack:
                        yield "pack", bytes(pack)
                    return
    if pack:
        yield "pack", bytes(pack)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--levels", default="1,2,3,4,6,9,15")
    ap.add_argument("--limit-mb", type=int, default=400, help="input bytes to sample per directory")
    a = ap.parse_args()
    dirs = a.dirs or [p for p in (Path("/tmp/rekkord-bench/data/system/tree"),
                                  Path("/tmp/rekkord-bench/data/sources/tree")) if p.is_dir()] \
        or [Path("/usr/share/doc")]
    levels = [int(x) for x in a.levels.split(",")]
    for d in dirs:
        data = list(blobs([d], a.limit_mb * 1024 * 1024))
        n = sum(len(b) for _, b in data)
        print(f"\n{d}: {len(data)} blobs ({sum(k == 'chunk' for k, _ in data)} chunks, "
              f"{sum(k == 'pack' for k, _ in data)} packs), {n / 1e6:.0f} MB")
        print(f"{'level':>6} {'stored %':>9} {'MB/s/core':>10} {'decompress MB/s':>16}")
        for level in levels:
            c, dz = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
            t0 = time.perf_counter()
            outs = [c.compress(b) for _, b in data]
            t1 = time.perf_counter()
            for o, (_, b) in zip(outs, data):
                dz.decompress(o, max_output_size=len(b))
            t2 = time.perf_counter()
            stored = sum(min(len(o), len(b)) for o, (_, b) in zip(outs, data))
            print(f"{level:>6} {100 * stored / n:>8.1f}% {n / (t1 - t0) / 1e6:>10.0f} {n / (t2 - t1) / 1e6:>16.0f}")
        # The probe (format.looks_incompressible) at level 3: what it costs
        # and saves, and what it gets wrong.
        c = zstandard.ZstdCompressor(level=3)
        big = [b for _, b in data if len(b) > SMALL]
        if not big:
            continue
        t0 = time.perf_counter()
        skip = [looks_incompressible(c, b) for b in big]
        t_probe = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = [len(c.compress(b)) for b in big]
        t_full = time.perf_counter() - t0
        t_skipped = t_full * sum(len(b) for b, s in zip(big, skip) if s) / sum(len(b) for b in big)
        missed = sum(len(b) - f for b, f, s in zip(big, full, skip) if s and f < 0.97 * len(b))
        print(f"probe (level 3): {sum(skip)}/{len(big)} blobs > 256 KiB stored raw; "
              f"{t_probe:.2f} s of probing, ~{t_skipped:.2f} s of compression avoided; "
              f"{missed / 1e6:.1f} MB of savings missed on {n / 1e6:.0f} MB")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The "limit" column of the benchmarks: what the C code alone needs.

For a save, every byte that has to be stored goes through the same C
routines rekkord calls -- FastCDC (pyfastcdc), keyed BLAKE3 (the plaintext id),
zstd level 3, XChaCha20-Poly1305 (libsodium) and BLAKE3 of the ciphertext (the
format v2 name) -- in as many processes as there are cores, files spread over
them by size.  Small files are concatenated into 1 MiB packs, as rekkord packs
them.  Only those calls are timed: reading the files, walking the tree and
starting the processes are not, so the number is a floor no implementation of
this design can go under on this machine, whatever its language.

    limit.py save STATE_DIR TREE       # JSON on stdout: {"wall": s, "cpu": s, "bytes": n, ...}
    limit.py restore STATE_DIR TREE    # verify, decrypt and decompress the blobs of TREE

``save`` processes the files that are new or changed since the previous save
into STATE_DIR (by size and mtime, as a cache would tell); with none, its
floor is the walk with one ``lstat`` per file, and that is what it reports.
``restore`` seals TREE's blobs untimed, then times what a restore must do to
each (hash check, decryption, decompression); writing files is not counted.

Needs rekkord's dependencies (pyfastcdc, blake3, zstandard, pynacl).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import sys
import time
from pathlib import Path

MiB = 1 << 20
SMALL = 256 * 1024  # files below rekkord's chunker minimum go into packs
PACK = 1 * MiB
BLOCK = 64 * MiB  # big files are read and cut in blocks (bounded memory)
KEY = bytes(range(32))
HEADER = b"RKB2" + bytes(60)


def walk(tree: Path) -> list[tuple[str, int, int]]:
    out = []
    stack = [os.fsencode(tree)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    out.append((os.fsdecode(e.path), st.st_size, st.st_mtime_ns))
    return out


def split(files: list[tuple[str, int, int]], n: int) -> list[list[str]]:
    """Spread files over n workers, biggest first onto the least loaded."""
    loads = [0] * n
    parts: list[list[str]] = [[] for _ in range(n)]
    for path, size, _ in sorted(files, key=lambda f: -f[1]):
        i = loads.index(min(loads))
        parts[i].append(path)
        loads[i] += size + 4096  # a file costs something even when empty
    return parts


class Work:
    def __init__(self):
        import blake3
        import zstandard
        from nacl.bindings import (crypto_aead_xchacha20poly1305_ietf_decrypt,
                                   crypto_aead_xchacha20poly1305_ietf_encrypt)
        from pyfastcdc import FastCDC

        self.blake3 = blake3.blake3
        self.cdc = FastCDC(1 * MiB, min_size=256 * 1024, max_size=4 * MiB, normalized_chunking=1, seed=12345)
        self.comp = zstandard.ZstdCompressor(level=3)
        self.decomp = zstandard.ZstdDecompressor()
        self.enc = crypto_aead_xchacha20poly1305_ietf_encrypt
        self.dec = crypto_aead_xchacha20poly1305_ietf_decrypt
        self.busy = 0.0
        self.bytes = 0
        self.chunks = 0

    def seal(self, chunk) -> tuple[bytes, bytes, bytes]:
        pid = self.blake3(chunk, key=KEY).digest()
        key = self.blake3(pid, key=KEY).digest()
        nonce = self.blake3(pid + b"\0", key=KEY).digest(length=24)
        ct = self.enc(self.comp.compress(chunk), HEADER, nonce, key)
        name = self.blake3(ct).digest()
        return name, nonce + key, ct

    def open(self, name: bytes, nk: bytes, ct: bytes, size: int) -> None:
        if self.blake3(ct).digest() != name:
            raise SystemExit("limit.py: hash mismatch")
        plain = self.decomp.decompress(self.dec(ct, HEADER, nk[:24], nk[24:]), max_output_size=size)
        if len(plain) != size:
            raise SystemExit("limit.py: size mismatch")

    def chunks_of(self, paths: list[str], timed: bool = True):
        """Yields the chunks a save cuts (packs of small files, CDC chunks of big ones)."""
        pack = bytearray()
        for path in paths:
            try:
                f = open(path, "rb")
            except OSError:
                continue
            with f:
                size = os.fstat(f.fileno()).st_size
                if size < SMALL:
                    pack += f.read()
                    if len(pack) >= PACK:
                        yield bytes(pack)
                        pack = bytearray()
                    continue
                while True:
                    block = f.read(BLOCK)
                    if not block:
                        break
                    t0 = time.perf_counter()
                    cuts = [bytes(c.data) for c in self.cdc.cut_buf(block)]
                    if timed:
                        self.busy += time.perf_counter() - t0
                    yield from cuts
        if pack:
            yield bytes(pack)


def save_worker(paths: list[str]) -> dict:
    w = Work()
    for chunk in w.chunks_of(paths):
        t0 = time.perf_counter()
        w.seal(chunk)
        w.busy += time.perf_counter() - t0
        w.bytes += len(chunk)
        w.chunks += 1
    return {"busy": w.busy, "bytes": w.bytes, "chunks": w.chunks}


def restore_worker(paths: list[str]) -> dict:
    w = Work()
    for chunk in w.chunks_of(paths, timed=False):
        sealed = w.seal(chunk)  # untimed: what the repository holds
        t0 = time.perf_counter()
        w.open(*sealed, len(chunk))
        w.busy += time.perf_counter() - t0
        w.bytes += len(chunk)
        w.chunks += 1
    return {"busy": w.busy, "bytes": w.bytes, "chunks": w.chunks}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("save", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, state, tree = argv[0], Path(argv[1]), Path(argv[2])
    state.mkdir(parents=True, exist_ok=True)
    manifest_path = state / "limit-manifest.json"
    t0 = time.perf_counter()
    files = walk(tree)
    walk_s = time.perf_counter() - t0
    todo = files
    if mode == "save":
        try:
            before = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            before = {}
        todo = [f for f in files if before.get(f[0]) != [f[1], f[2]]]
        manifest_path.write_text(json.dumps({p: [s, m] for p, s, m in files}))
    n = len(os.sched_getaffinity(0))
    parts = [p for p in split(todo, n) if p]
    results = []
    if parts:
        worker = save_worker if mode == "save" else restore_worker
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(len(parts)) as pool:
            results = pool.map(worker, parts, chunksize=1)
    busy = [r["busy"] for r in results]
    out = {"mode": mode, "files": len(files), "processed_files": len(todo), "processes": len(parts),
           "bytes": sum(r["bytes"] for r in results), "chunks": sum(r["chunks"] for r in results),
           "walk": walk_s}
    if busy:
        out.update(wall=max(busy), cpu=sum(busy))
    else:  # nothing to store: the floor is the walk (one lstat per file)
        out.update(wall=walk_s, cpu=walk_s)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

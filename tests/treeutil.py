"""Build awkward directory trees and compare trees byte for byte and by metadata."""

from __future__ import annotations

import os
import stat


def make_awkward_tree(root: str | bytes, *, big: int = 3 * 1024 * 1024) -> None:
    """Every case a restore must keep exactly (see issue 2)."""
    r = os.fsencode(root)
    os.makedirs(r, exist_ok=True)

    def w(rel: bytes, data: bytes, mode: int = 0o644):
        p = os.path.join(r, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        return p

    w(b"plain.txt", b"hello world\n" * 100)
    w(b"empty", b"")
    w(b"big.bin", os.urandom(big) + b"\0" * 100000 + os.urandom(big // 3))
    w(b"setuid-bin", b"#!/bin/sh\n", 0o4755)
    w(b"private", b"secret", 0o600)
    # Sparse: a 20 MiB hole between two small pieces of data, and a trailing hole.
    sp = os.path.join(r, b"sparse.img")
    with open(sp, "wb") as f:
        f.write(b"head")
        f.seek(20 * 1024 * 1024)
        f.write(b"tail")
        f.truncate(30 * 1024 * 1024)
    # Links.
    os.symlink(b"plain.txt", os.path.join(r, b"link-rel"))
    os.symlink(b"/nonexistent/target", os.path.join(r, b"link-dangling"))
    os.makedirs(os.path.join(r, b"d1/d2"), exist_ok=True)
    w(b"d1/hard-a", b"shared content\n" * 10)
    os.link(os.path.join(r, b"d1/hard-a"), os.path.join(r, b"d1/d2/hard-b"))
    os.link(os.path.join(r, b"d1/hard-a"), os.path.join(r, b"hard-c"))
    # Special files.
    os.mkfifo(os.path.join(r, b"fifo"))
    if os.geteuid() == 0:
        os.mknod(os.path.join(r, b"null-dev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        owned = w(b"owned-by-other", b"x", 0o640)
        os.chown(owned, 1234, 5678)
        os.lchown(os.path.join(r, b"link-rel"), 1234, 5678)
    # Names that are not UTF-8, with spaces, newlines, very long ones.
    w(b"not-utf8-\xff\xfe.txt", b"bytes name")
    w(b"with space and\nnewline", b"odd name")
    w(b"n" * 255, b"long name")
    deep = b"/".join([b"deep%02d" % i for i in range(40)])
    w(deep + b"/leaf", b"deep leaf")
    # xattrs.
    p = w(b"xattr-file", b"has xattrs")
    try:
        os.setxattr(p, "user.comment", b"a value \x00 with nul")
        os.setxattr(p, "user.empty", b"")
    except OSError:
        pass
    os.makedirs(os.path.join(r, b"emptydir"), exist_ok=True)
    os.chmod(os.path.join(r, b"emptydir"), 0o1777)
    os.makedirs(os.path.join(r, b"closed"), exist_ok=True)
    w(b"closed/inside", b"in a 0700 dir")
    os.chmod(os.path.join(r, b"closed"), 0o700)
    # Nanosecond times, set last (children first so parents keep theirs).
    t = 1_600_000_000_123_456_789
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), ns=(t, t + len(n)), follow_symlinks=False)
        t += 1_000_001
    os.utime(r, ns=(t, t))


def snapshot_tree(root: str | bytes, *, owners: bool = True, atime: bool = False) -> dict:
    """Everything about a tree that a restore must reproduce."""
    r = os.fsencode(root)
    out = {}
    inodes: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(r):
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, r)
            st = os.lstat(p)
            info = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                    "mtime": st.st_mtime_ns}
            if owners:
                info["owner"] = (st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    info["content"] = f.read()
                info["size"] = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = st.st_rdev
            if not stat.S_ISLNK(st.st_mode):
                try:
                    info["xattrs"] = {k: os.getxattr(p, k) for k in os.listxattr(p) if k.startswith("user.")}
                except OSError:
                    info["xattrs"] = {}
            out[rel] = info
    out["__hardlinks__"] = sorted(sorted(v) for v in inodes.values())
    return out


def assert_same_tree(a, b, **kw) -> None:
    sa, sb = snapshot_tree(a, **kw), snapshot_tree(b, **kw)
    missing = set(sa) - set(sb)
    extra = set(sb) - set(sa)
    assert not missing, f"missing after restore: {sorted(missing)[:10]}"
    assert not extra, f"unexpected after restore: {sorted(extra)[:10]}"
    for k in sa:
        assert sa[k] == sb[k], f"{k!r} differs: {_diff(sa[k], sb[k])}"


def _diff(x, y):
    if isinstance(x, dict) and isinstance(y, dict):
        return {k: (x.get(k) if k != "content" else len(x.get(k, b"")),
                    y.get(k) if k != "content" else len(y.get(k, b"")))
                for k in set(x) | set(y) if x.get(k) != y.get(k)}
    return (x, y)

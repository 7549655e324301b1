"""Hostile input: every byte read from a repository is hostile.

Each test plays an attacker (tests/attacker.py) holding only one key file --
a compromised machine's write key, a rogue auditor's audit key, a read key --
or only the storage, and shows the defence: restore, mount, ls, find, diff,
cat, check, forget and prune never write outside their target, never follow
a symlink, stay within bounded memory, raise only rekkord's typed errors,
never trust a snapshot signed by a role that may not save, and never delete
on the word of a name.  docs/security.md ("What a compromised writer, a rogue
auditor and the storage can do") names these tests line by line.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from attacker import Attacker, inner, tree_state, zstd_claiming
from rekkord import format as fmt
from rekkord.cache import Cache
from rekkord.check import Checker
from rekkord.errors import IntegrityError
from rekkord.index import (
    F_LINKED,
    K_BLOCK,
    K_CHAR,
    K_DIR,
    K_FIFO,
    K_FILE,
    K_HARDLINK,
    K_SOCKET,
    K_SYMLINK,
    Entry,
    Extent,
    encode,
)
from rekkord.restore import RestoreOptions, Restorer
from rekkord.save import Saver
from rekkord.snapshot import iter_entries

ROOT = os.geteuid() == 0
EVIL = b"EVIL CONTENT planted by a compromised machine\n"


@pytest.fixture
def box(local_repo, tmp_path):
    """A repository, a write-key attacker, a DEST and, beside it, an
    'outside' tree whose every byte and inode property must survive."""
    from types import SimpleNamespace

    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "victim.txt").write_bytes(b"the victim's data\n")
    (outside / "dir" / "inner.txt").write_bytes(b"inner\n")
    os.chmod(outside / "victim.txt", 0o644)
    os.utime(outside, ns=(10**18, 10**18))
    dest = tmp_path / "dest"
    ns = SimpleNamespace(repo=local_repo, url=local_repo.url, tmp=tmp_path, outside=outside, dest=dest,
                         w=Attacker(local_repo.url, local_repo.key_files["write"]))
    ns.before = tree_state(outside)
    ns.unchanged = lambda: tree_state(outside) == ns.before
    return ns


def restore(box, sid, sub=None, dest=None, **opts):
    repo = box.repo.repo("read")
    r = Restorer(repo, repo.load_snapshot(sid), RestoreOptions(**opts))
    st = r.restore(sub, str(dest or box.dest))
    return st, r.problems


def f(path: bytes, content: bytes = b"x", w: Attacker | None = None, **kw) -> Entry:
    ext = w.data(content) if w is not None else []
    return Entry(K_FILE, path, mode=kw.pop("mode", 0o644), size=len(content), extents=ext, **kw)


def d(path: bytes, **kw) -> Entry:
    return Entry(K_DIR, path, mode=kw.pop("mode", 0o755), **kw)


def rel_outside(box) -> bytes:
    """The outside tree, as a path relative to DEST (for '..' attacks)."""
    return os.fsencode(os.path.relpath(box.outside, box.dest))


# ---- 1. paths ------------------------------------------------------------------------------

PATH_ATTACKS = {
    "dotdot": lambda b: [f(rel_outside(b) + b"/victim.txt", EVIL, b.w)],
    "dotdot-inside": lambda b: [d(b"a"), f(b"a/../" + rel_outside(b) + b"/victim.txt", EVIL, b.w)],
    "absolute": lambda b: [f(os.fsencode(b.outside) + b"/victim.txt", EVIL, b.w)],
    "empty-component": lambda b: [d(b"a"), f(b"a//x", EVIL, b.w)],
    "dot": lambda b: [d(b"a"), f(b"a/./x", EVIL, b.w)],
    "nul": lambda b: [f(b"x\0" + os.fsencode(b.outside), EVIL, b.w)],
    "too-long": lambda b: [f(b"/".join([b"d" * 200] * 25), EVIL, b.w)],
    "long-name": lambda b: [f(b"n" * 300, EVIL, b.w)],
    "repeated": lambda b: [f(b"same", b"first", b.w), f(b"same", EVIL, b.w)],
    "out-of-order": lambda b: [f(b"b", b"b", b.w), f(b"a", EVIL, b.w)],
    "below-symlink": lambda b: [Entry(K_SYMLINK, b"lnk", mode=0o777, target=os.fsencode(b.outside)),
                                f(b"lnk/victim.txt", EVIL, b.w)],
    "below-file": lambda b: [f(b"plain", b"x", b.w), f(b"plain/child", EVIL, b.w)],
    "no-parent": lambda b: [f(b"nodir/child", EVIL, b.w)],
    "symlink-then-dir": lambda b: [Entry(K_SYMLINK, b"s", mode=0o777, target=os.fsencode(b.outside)),
                                   d(b"s"), f(b"s/victim.txt", EVIL, b.w)],
    "root-not-first": lambda b: [d(b"a"), d(b""), f(b"x", EVIL, b.w)],
    "hardlink-dotdot": lambda b: [Entry(K_HARDLINK, b"h", mode=0o644, target=rel_outside(b) + b"/victim.txt")],
    "hardlink-absolute": lambda b: [Entry(K_HARDLINK, b"h", mode=0o644,
                                          target=os.fsencode(b.outside) + b"/victim.txt")],
    "file-with-target": lambda b: [Entry(K_FILE, b"t", mode=0o644, target=os.fsencode(b.outside))],
    "dir-with-content": lambda b: [Entry(K_DIR, b"dc", mode=0o755, extents=b.w.data(EVIL))],
    "bad-mode": lambda b: [f(b"m", EVIL, b.w, mode=0o170777)],
    "bad-kind": lambda b: [Entry(99, b"k", mode=0o644)],
    "bad-flags": lambda b: [f(b"fl", EVIL, b.w, flags=0x80)],
    "symlink-nul": lambda b: [Entry(K_SYMLINK, b"sn", mode=0o777, target=b"a\0b")],
}


@pytest.fixture(params=[1, 2], ids=["one-process", "shared"])
def processes(request, monkeypatch):
    """A restore in one process, and one shared by two with a block of one
    entry (every entry goes to the other process than the one before)."""
    import rekkord.restore as restore_mod

    monkeypatch.setattr(restore_mod, "SHARE_BLOCK", 1)
    return request.param


@pytest.mark.parametrize("attack", sorted(PATH_ATTACKS))
def test_a_crafted_path_never_reaches_outside_dest(box, attack, processes):
    """A write key's snapshot with a path no save writes: the entry is
    refused by name (exit code 4), the rest restores, nothing outside DEST
    is created, changed or opened."""
    entries = PATH_ATTACKS[attack](box) + [f(b"zz-good", b"good", box.w)]
    sid = box.w.snapshot(entries)
    st, problems = restore(box, sid, processes=processes)
    assert box.unchanged(), attack
    assert st.refused >= 1 and st.damaged >= 1, (attack, problems)
    assert any("REFUSED" in m for _, m in problems)
    assert (box.dest / "zz-good").read_bytes() == b"good"
    # Nothing appeared beside DEST either.
    assert sorted(os.listdir(box.tmp)) == sorted(["repo", "outside", "dest", *[
        n for n in os.listdir(box.tmp) if n.endswith(".key") or n == "cache"]])


def test_the_first_of_two_entries_under_one_name_wins_and_the_repeat_is_refused(box):
    sid = box.w.snapshot([d(b"a"), f(b"a/x", b"first", box.w), f(b"a/x", EVIL, box.w)])
    st, problems = restore(box, sid)
    assert (box.dest / "a" / "x").read_bytes() == b"first"
    assert [p for p, m in problems if "out of order or repeated" in m] == [f"(snapshot {sid[:8]}) /a/x"]


@pytest.mark.parametrize("mode", ["default", "if-changed", "if-newer", "never", "delete", "salvage", "include",
                                  "subpath"])
def test_symlinks_already_in_dest_are_never_followed(box, mode, processes):
    """DEST holds symlinks to the outside where the snapshot has a
    directory and a file, in every restore mode (the default --overwrite
    always, and the other three)."""
    good = [d(b"home"), d(b"home/user"), f(b"home/user/file.txt", EVIL, box.w), d(b"top"),
            f(b"top/victim.txt", EVIL, box.w)]
    good += [f(b"top/pad-%04d" % i, b"%d" % i * 200, box.w) for i in range(400)]  # several index blobs
    sid = box.w.snapshot(good, pieces=6 if mode == "salvage" else 1)
    box.dest.mkdir()
    os.symlink(box.outside, box.dest / "home")  # where a directory goes
    (box.dest / "top").mkdir()
    os.symlink(box.outside / "victim.txt", box.dest / "top" / "victim.txt")  # where a file goes
    opts = {"default": {}, "if-changed": {"overwrite": "if-changed"}, "if-newer": {"overwrite": "if-newer"},
            "never": {"overwrite": "never"}, "delete": {"delete": True}, "salvage": {},
            "include": {"includes": ["*.txt"]}, "subpath": {}}[mode]
    if mode == "salvage":  # lose the records of 'home' and 'home/user': they come back as implicit directories
        repo = box.repo.repo("read")
        first = repo.load_snapshot(sid).index[0][0]
        os.unlink(os.path.join(box.url, fmt.blob_name(first)))
    if mode == "subpath":  # /home's content lands in DEST, where 'user' is a symlink to the outside
        os.symlink(box.outside, box.dest / "user")
        st, problems = restore(box, sid, sub="/home", processes=processes)
    else:
        st, problems = restore(box, sid, processes=processes, **opts)
    assert box.unchanged(), (mode, problems)
    assert os.listdir(box.outside / "dir") == ["inner.txt"]
    if mode in ("default", "if-changed", "delete"):
        assert not os.path.islink(box.dest / "home") and not os.path.islink(box.dest / "top" / "victim.txt")
        assert (box.dest / "home" / "user" / "file.txt").read_bytes() == EVIL  # in DEST: the snapshot's data
    if mode == "never":  # left as they are, not followed
        assert os.path.islink(box.dest / "home") and os.path.islink(box.dest / "top" / "victim.txt")


def test_a_directory_swapped_for_a_symlink_during_the_restore_is_not_followed(box, monkeypatch):
    """A local user replaces a restored directory by a symlink to the
    outside before restore sets the directories' modes and times.  One
    that hard links go into gets them in the pass at the end, which walks
    from DEST with O_NOFOLLOW and refuses the symlink."""
    content = box.w.data(b"x")
    sid = box.w.snapshot([d(b"a", mode=0o777, mtime_ns=5 * 10**9),
                          Entry(K_FILE, b"a/x", mode=0o644, size=1, extents=content, flags=F_LINKED),
                          Entry(K_HARDLINK, b"a/y", mode=0o644, size=1, extents=content, target=b"a/x")])
    real = Restorer._apply_dir_meta

    def swap_first(self, dirs):
        os.rename(box.dest / "a", box.tmp / "moved-away")
        os.symlink(box.outside, box.dest / "a")
        return real(self, dirs)

    monkeypatch.setattr(Restorer, "_apply_dir_meta", swap_first)
    st, problems = restore(box, sid)
    assert box.unchanged()
    assert any("cannot set metadata" in m for _, m in problems)


def test_a_directory_swapped_once_written_keeps_its_metadata_on_what_was_made(box, monkeypatch):
    """Any other directory gets its modes and times through the descriptor
    the restore made it with, once its last entry is written: swapping its
    name for a symlink afterwards sends nothing outside DEST."""
    sid = box.w.snapshot([d(b"a", mode=0o777, mtime_ns=5 * 10**9), f(b"a/x", b"x", box.w), d(b"b")])
    real = Restorer._dir_closed

    def then_swap(self, fd, comps, e):
        real(self, fd, comps, e)
        if comps == (b"a",):
            os.rename(box.dest / "a", box.tmp / "moved-away")
            os.symlink(box.outside, box.dest / "a")

    monkeypatch.setattr(Restorer, "_dir_closed", then_swap)
    st, problems = restore(box, sid)
    assert box.unchanged() and problems == []
    moved = os.stat(box.tmp / "moved-away")
    assert stat.S_IMODE(moved.st_mode) == 0o777 and moved.st_mtime_ns == 5 * 10**9


def test_hard_links_only_ever_link_files_this_restore_wrote(box, processes):
    """Hard link targets outside the restored subtree, not regular files, or
    later in the stream: each is restored as its own file (its extents), or
    skipped; never a link to anything outside DEST."""
    w = box.w
    content = w.data(b"linked content")
    entries = [d(b"a"), Entry(K_FILE, b"a/first", mode=0o644, size=14, extents=content, flags=F_LINKED),
               Entry(K_HARDLINK, b"a/later-target", mode=0o644, size=14, extents=content, target=b"a/zz"),
               Entry(K_HARDLINK, b"a/to-dir", mode=0o644, target=b"a"),
               Entry(K_HARDLINK, b"a/to-other-tree", mode=0o644, size=14, extents=content, target=b"b/f"),
               Entry(K_HARDLINK, b"a/to-symlink", mode=0o644, target=b"a/sym"),
               Entry(K_HARDLINK, b"a/twin", mode=0o644, size=14, extents=content, target=b"a/first"),
               Entry(K_SYMLINK, b"a/sym", mode=0o777, target=os.fsencode(box.outside / "victim.txt")),
               Entry(K_FILE, b"a/zz", mode=0o644, size=14, extents=content, flags=F_LINKED),
               d(b"b"), Entry(K_FILE, b"b/f", mode=0o644, size=14, extents=content, flags=F_LINKED)]
    sid = w.snapshot(entries)
    restore(box, sid, sub="/a", processes=processes)
    out = box.dest
    assert os.stat(out / "twin").st_ino == os.stat(out / "first").st_ino  # a real hard link, inside DEST
    for name in ("later-target", "to-other-tree"):
        assert (out / name).read_bytes() == b"linked content" and os.stat(out / name).st_nlink == 1
    assert not (out / "to-dir").exists() or (out / "to-dir").is_file()
    assert not os.path.samefile(out / "to-symlink", box.outside / "victim.txt") if (out / "to-symlink").exists() \
        else True
    assert box.unchanged() and os.stat(box.outside / "victim.txt").st_nlink == 1


def test_mount_ls_find_diff_and_cat_see_only_the_valid_entries(box, run_cli, tmp_path):
    entries = [d(b"a"), f(b"a/../escape", EVIL, box.w), f(b"a/good", b"good", box.w),
               Entry(K_SYMLINK, b"a/lnk", mode=0o777, target=os.fsencode(box.outside)),
               f(b"a/lnk/victim.txt", EVIL, box.w), f(b"b\x1b]0;pwned\x07\nname", b"odd", box.w)]
    sid = box.w.snapshot(entries)
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["read"]}
    p = run_cli("ls", "-R", sid, env=env)
    out = p.stdout.decode()
    assert "/a/good" in out and ".." not in out and "lnk/victim" not in out
    assert "\x1b" not in out and "\\x1b]0;pwned\\x07\\nname" in out  # escaped, one line
    assert "REFUSED" in p.stderr.decode()
    j = json.loads(run_cli("ls", "-R", "--json", sid, env=env, check=0).stdout)
    assert "/b\x1b]0;pwned\x07\nname" in [x["path"] for x in j]  # --json stays exact
    p = run_cli("find", "*", env=env, check=0)
    assert "escape" not in p.stdout.decode() and "\x1b" not in p.stdout.decode()
    p = run_cli("cat", f"{sid}:/a/../escape", env=env)
    assert p.returncode == 6 and b"Traceback" not in p.stderr
    p = run_cli("diff", sid, sid, env=env, check=0)
    assert b"Traceback" not in p.stderr
    if os.path.exists("/dev/fuse") and ROOT:
        from test_mount import Mount

        m = Mount(box.repo, sid, tmp_path / "mnt")
        try:
            seen = []
            for dp, ds, fs in os.walk(tmp_path / "mnt"):
                seen += [os.path.join(dp, n) for n in ds + fs]
            names = {os.path.basename(p) for p in seen}
            assert "good" in names and "escape" not in names and ".." not in names
            assert not any("victim.txt" in p for p in seen)
        finally:
            m.close()
    assert box.unchanged()


def test_cli_restore_names_what_it_refused_and_exits_4(box, run_cli):
    sid = box.w.snapshot([f(rel_outside(box) + b"/victim.txt", EVIL, box.w), f(b"ok", b"ok", box.w)])
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["read"]}
    p = run_cli("restore", sid, box.dest, env=env)
    err = p.stderr.decode()
    assert p.returncode == 4 and "REFUSED" in err and "Traceback" not in err and "internal error" not in err
    assert box.unchanged() and (box.dest / "ok").read_bytes() == b"ok"


@pytest.mark.parametrize("direct_io", [True, False], ids=["direct", "page-cache"])
def test_an_extent_longer_than_its_blob_leaves_a_hole_in_place(box, direct_io):
    """A write key claims 400 KiB of a 100 KiB blob in the middle of a large
    file. Restore names the damage; with keep_damaged every other byte stays
    where the index puts it (the shortfall a hole of zeros), whether the
    file is written past the page cache or through it."""
    w = box.w
    a, b, c = os.urandom(300_000), os.urandom(100_000), os.urandom(200_000)
    exts = []
    for plain, claim in ((a, len(a)), (b, 400_000), (c, len(c))):
        bid, _ = w.blob(fmt.T_DATA, plain)
        exts.append(Extent(bid, 0, claim, w.key_of(fmt.T_DATA, plain)))
    size = 300_000 + 400_000 + 200_000
    sid = w.snapshot([Entry(K_FILE, b"db", mode=0o644, size=size, extents=exts)])
    st, problems = restore(box, sid, direct_io=direct_io)
    assert st.damaged == 1 and "shorter than the index says" in problems[0][1]
    assert not (box.dest / "db").exists()
    kept = box.tmp / "kept"
    st, problems = restore(box, sid, dest=kept, keep_damaged=True, direct_io=direct_io)
    assert st.damaged == 1 and "kept" in problems[0][1]
    assert (kept / "db").read_bytes() == a + b + bytes(300_000) + c
    assert box.unchanged()


# ---- 2. privileges ----------------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="needs root (owners, device nodes)")
def test_setuid_bits_follow_the_owner_policy(box):
    w = box.w
    entries = [f(b"sgid-other", b"x", w, mode=0o2755, uid=1234, gid=5678),
               f(b"suid-root", b"#!/bin/sh\n", w, mode=0o4755)]
    sid = w.snapshot(entries)
    restore(box, sid, dest=box.tmp / "as-root")
    assert stat.S_IMODE(os.stat(box.tmp / "as-root" / "suid-root").st_mode) == 0o4755
    assert stat.S_IMODE(os.stat(box.tmp / "as-root" / "sgid-other").st_mode) == 0o2755
    assert os.stat(box.tmp / "as-root" / "sgid-other").st_uid == 1234
    st, _ = restore(box, sid, dest=box.tmp / "no-setuid", setuid=False)
    assert stat.S_IMODE(os.stat(box.tmp / "no-setuid" / "suid-root").st_mode) == 0o755 and st.setuid_dropped == 2
    st, _ = restore(box, sid, dest=box.tmp / "no-owner", owner=False)
    # Without owners, a setgid file would carry the restorer's group: dropped.
    assert stat.S_IMODE(os.stat(box.tmp / "no-owner" / "sgid-other").st_mode) == 0o755
    assert os.stat(box.tmp / "no-owner" / "sgid-other").st_uid == 0


@pytest.mark.skipif(not ROOT, reason="needs root (device nodes)")
def test_device_nodes_fifos_and_sockets_follow_the_policy(box):
    entries = [Entry(K_BLOCK, b"disk", mode=0o666, rdev=os.makedev(8, 0)),
               Entry(K_CHAR, b"mem", mode=0o666, rdev=os.makedev(1, 1)),
               Entry(K_FIFO, b"pipe", mode=0o666), Entry(K_SOCKET, b"sock", mode=0o777)]
    sid = box.w.snapshot(entries)
    restore(box, sid, dest=box.tmp / "all")
    assert stat.S_ISCHR(os.lstat(box.tmp / "all" / "mem").st_mode)
    assert stat.S_ISFIFO(os.lstat(box.tmp / "all" / "pipe").st_mode)
    assert not (box.tmp / "all" / "sock").exists()  # sockets belong to running programs: never
    st, _ = restore(box, sid, dest=box.tmp / "none", special=False)
    assert os.listdir(box.tmp / "none") == [] and st.not_created == 4
    assert box.unchanged()


# ---- 3. bounded resources -------------------------------------------------------------------


def _maxrss_of(cmd, env) -> tuple[subprocess.CompletedProcess, int]:
    """Run a CLI command; its peak RSS in MiB (this test's children only)."""
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True); "
            "sys.stdout.buffer.write(p.stdout); sys.stderr.buffer.write(p.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, file=sys.stderr); "
            "sys.exit(p.returncode)")
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env)
    p = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "rekkord", *map(str, cmd)], env=e,
                       capture_output=True, timeout=300)
    lines = p.stderr.decode().strip().splitlines()
    return p, int(lines[-1])


def test_a_snapshot_that_thrashes_the_restore_blob_cache_stays_bounded_in_memory(box):
    """A write key makes 80 data blobs of 3 MiB and 160 small files that each
    take 1 KiB from a different blob, round robin, so that no blob is needed
    twice in a row and every one twice: the restore's cache of finished
    blobs (12 MiB) must evict and fetch again, never keep the 240 MiB, and
    every file must still get its own bytes."""
    w = box.w
    blobs = []
    for i in range(80):
        plain = os.urandom(3 << 20)
        bid, _ = w.blob(fmt.T_DATA, plain)
        blobs.append((bid, w.key_of(fmt.T_DATA, plain), plain))
    entries, want = [], {}
    for k in range(160):
        bid, key, plain = blobs[k % 80]
        off = (k * 7919) % ((3 << 20) - 1024)
        name = b"f%03d" % k
        entries.append(Entry(K_FILE, name, mode=0o644, size=1024, extents=[Extent(bid, off, 1024, key)]))
        want[name] = plain[off:off + 1024]
    del blobs
    sid = w.snapshot(entries)
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["read"],
           "REKKORD_CACHE_DIR": str(box.tmp / "c")}
    p, rss = _maxrss_of(["restore", sid, box.dest], env)
    assert p.returncode == 0, p.stderr.decode()
    assert rss < 160, rss
    for name, content in want.items():
        assert (box.dest / os.fsdecode(name)).read_bytes() == content, name
    assert box.unchanged()


@pytest.mark.parametrize("target", ["data", "index", "reflist"])
def test_a_decompression_bomb_is_refused_before_anything_is_allocated(box, target):
    """A few kilobytes of valid zstd claiming 2 GiB, under a valid MAC: restore,
    ls and check name the blob and stay small in memory."""
    w = box.w
    bomb = zstd_claiming(2 << 30)
    assert len(bomb) < 200_000
    good = w.data(b"fine")
    entries = [f(b"bomb.bin", b"", None), f(b"fine", b"fine", None)]
    entries[1].extents = good
    btype = {"data": fmt.T_DATA, "index": fmt.T_INDEX, "reflist": fmt.T_REFLIST}[target]
    bid, key, size = w.put_inner(btype, inner(fmt.COMP_ZSTD, bomb))  # (a valid MAC, or a valid name in v2)
    if target == "data":
        entries[0].extents, entries[0].size = [Extent(bid, 0, 4 << 20, key)], 4 << 20
        sid = w.snapshot(entries)
    elif target == "index":
        sid = w.record("nightly", [[bid.hex(), size]] + w.index(entries[1:]))
    else:
        sid = w.record("nightly", w.index(entries[1:]), [[bid.hex(), size]])
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["read"],
           "REKKORD_CACHE_DIR": str(box.tmp / "c")}
    for cmd in (["restore", sid, box.dest], ["check", "--read-data"], ["ls", "-R", sid]):
        p, rss = _maxrss_of(cmd, env)
        err = p.stderr.decode()
        assert rss < 400, (cmd, rss)
        assert "Traceback" not in err and "internal error" not in err and "MemoryError" not in err, err
        if cmd[0] == "check" or (cmd[0] == "restore" and target == "data"):
            assert p.returncode == 4 and bid.hex()[:16] in err, (cmd, err)
    assert (box.dest / "fine").read_bytes() == b"fine"


def test_an_oversized_object_from_the_storage_is_never_read_whole(box):
    """The storage plants a 200 MiB object under a blob's name: check and
    restore read no more than the largest blob can be and name it."""
    w = box.w
    src = box.tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(5000))
    res = Saver(box.repo.repo("write"), Cache(None)).save("c", [str(src)])
    storage = Attacker(box.url)  # the storage alone
    victim = [n for n in storage.names("blobs/")][0]
    with open(os.path.join(box.url, victim), "wb") as fh:
        fh.truncate(200 << 20)
    big = fmt.blob_name(os.urandom(32))
    os.makedirs(os.path.dirname(os.path.join(box.url, big)), exist_ok=True)
    with open(os.path.join(box.url, big), "wb") as fh:
        fh.truncate(200 << 20)
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["audit"],
           "REKKORD_CACHE_DIR": str(box.tmp / "c")}
    p, rss = _maxrss_of(["check"], env)
    assert p.returncode == 4 and rss < 250, (rss, p.stderr)
    assert big.rsplit("/", 1)[1][:16] in p.stderr.decode()
    del res, w


RECORD_FIELD_ATTACKS = {
    "index-not-a-list": {"index": 5},
    "index-bad-hex": {"index": [["zz", 10]]},
    "index-bad-size": {"index": [["00" * 32, -1]]},
    "index-huge-size": {"index": [["00" * 32, 10**30]]},
    "time-a-string": {"time_ns": "yesterday"},
    "time-negative": {"time_ns": -5},
    "time-huge": {"time_ns": 10**40},
    "channel-a-dict": {"channel": {"a": 1}},
    "channel-slash": {"channel": "../x"},
    "channel-control": {"channel": "a\x1b[2Jb"},
    "channel-empty": {"channel": ""},
    "host-a-list": {"host": ["h"]},
    "tags-not-strings": {"tags": [1, 2]},
    "too-many-tags": {"tags": ["t"] * 10_000},
    "stats-strings": {"stats": {"files": "many"}},
    "stats-nested": {"stats": {"files": {"x": 1}}},
    "kid-garbage": {"kid": 7},
    "private-garbage": {"private": {"id": "x", "sealed": 3}},
    "linked-flag-string": {"linked_flag": "yes"},
    "v-missing": {"v": None},
}


@pytest.mark.parametrize("attack", sorted(RECORD_FIELD_ATTACKS))
def test_a_record_with_a_bad_field_is_skipped_and_reported_never_a_crash(box, run_cli, attack):
    w = box.w
    good = Saver(box.repo.repo("write"), Cache(None))
    src = box.tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    genuine = good.save("nightly", [str(src)]).snapshot_id
    fields = {k: v for k, v in RECORD_FIELD_ATTACKS[attack].items()}
    if fields.get("v", 1) is None:
        fields.pop("v")
        sid = os.urandom(16).hex()
        rec = {"id": sid, "repo": w.config["repo"], "kid": w.kid, "channel": "nightly", "time_ns": 3 * 10**18,
               "index": [], "reflist": []}
        w.put_record(sid, json.dumps(rec).encode())
    else:
        sid = w.record("nightly", w.index([f(b"x", b"x", w)]), time_ns=3 * 10**18, override=fields)
    repo = box.repo.repo("read")
    problems = []
    snaps = repo.snapshots(on_problem=lambda s, m: problems.append(s))
    assert [s.id for s in snaps] == [genuine] and problems == [sid]
    assert repo.resolve("nightly").id == genuine
    with pytest.raises(IntegrityError):
        repo.load_snapshot(sid)
    report = Checker(box.repo.repo("audit"), Cache(None)).run()
    assert any(p.object == f"snapshots/{sid}" for p in report.problems) and report.exit_code == 4
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["full"]}
    for args in (["snapshots"], ["channels"], ["restore", sid, box.dest], ["ls", sid],
                 ["forget", "--keep-last", "1", "--dry-run"], ["prune", "--dry-run"]):
        p = run_cli(*args, env=env)
        err = p.stderr.decode()
        assert "Traceback" not in err and "internal error" not in err, (args, err)
        assert p.returncode != 1, (args, err)


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b"1" * 100_000, b'{"a": "\\ud800"}',
                                  b"\xff\xfe\x00junk", b"", b"null", b"[]", b'"string"',
                                  b'{"channel": "x", "index": [[' + b'"00",' * 50_000 + b"1]]}"])
def test_a_record_body_that_is_not_a_record_is_a_typed_error(box, body):
    sid = os.urandom(16).hex()
    box.w.put_record(sid, body)
    repo = box.repo.repo("read")
    with pytest.raises(IntegrityError):
        repo.load_snapshot(sid)
    assert repo.snapshots() == []
    assert Checker(box.repo.repo("audit"), Cache(None)).run().exit_code == 4


def test_index_records_with_absurd_counts_are_typed_errors(box):
    """Lengths and counts beyond the record (or the format) are refused before
    anything is allocated for them: a typed error, or the entry refused."""
    import struct

    w = box.w
    good = encode(f(b"a", b"a", w))
    tl = 4 + 4 + 1 + 44 + 1 + 1  # offset of the target length (path b"a", empty user and group)
    ne = len(good) - 40 - 4  # offset of the extent count (one extent)
    bad = [struct.pack("<I", 2**31) + good[4:],  # a record length beyond the format's limit
           good[:ne] + struct.pack("<I", 0xFFFFFFFF) + good[ne + 4:],  # an extent count no record holds
           good[:tl] + b"\xff\xff" + good[tl + 2:],  # a target length past the record
           good[:tl + 2] + b"\xff\xff" + good[tl + 4:],  # an xattr count past the record
           good[:-8] + struct.pack("<I", 0xFFFFFFFF) + good[-4:]]  # an extent offset beyond any blob
    for i, stream in enumerate(bad):
        sid = w.record("nightly", w.index(stream))
        repo = box.repo.repo("read")
        refused = []
        try:
            got = list(iter_entries(repo, repo.load_snapshot(sid), on_refused=lambda p, m: refused.append(m)))
        except IntegrityError:
            got = None
        assert got is None or (got == [] and refused), i
        st, problems = restore(box, sid, dest=box.tmp / f"out-{i}")
        assert st.damaged >= 1 and st.files == 0, (i, problems)


# ---- 5. trust -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["audit", "read"])
def test_a_record_signed_by_a_role_that_may_not_save_is_never_trusted(box, run_cli, role):
    src = box.tmp / "src"
    src.mkdir()
    (src / "a").write_bytes(b"genuine")
    genuine = Saver(box.repo.repo("write"), Cache(None)).save("nightly", [str(src)]).snapshot_id
    rogue = Attacker(box.url, box.repo.key_files[role])
    fake = rogue.snapshot([d(b"etc"), f(b"etc/passwd", EVIL, rogue)], "nightly", time_ns=time.time_ns() + 10**9)
    repo = box.repo.repo("read")
    snap = repo.load_snapshot(fake)
    assert not snap.signature_ok and any("may not save" in p for p in snap.problems)
    assert repo.resolve("nightly").id == genuine
    with pytest.raises(IntegrityError, match="not trusted"):
        Restorer(repo, snap)
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["read"]}
    run_cli("restore", "nightly", box.dest, env=env, check=0)
    assert (box.dest / str(src).lstrip("/") / "a").read_bytes() == b"genuine"
    report = Checker(box.repo.repo("audit"), Cache(None)).run()
    assert [p.object for p in report.problems if p.kind == "untrusted"] == [f"snapshots/{fake}"]
    # Freshness counts trusted snapshots only: the genuine one is old.
    env = {"REKKORD_REPOSITORY": box.url, "REKKORD_KEY_FILE": box.repo.key_files["audit"]}
    p = run_cli("channels", "--json", env=env, check=0)
    [ch] = json.loads(p.stdout)
    assert ch["latest"] == genuine or ch.get("id") == genuine or genuine[:8] in json.dumps(ch)


def test_revocation_is_monotonic(box, tmp_path):
    from rekkord.repository import signed_json

    admin = box.repo.repo("admin")
    write_kid = box.repo.keys["write"].kid
    first = admin.revoke(write_kid)
    again = box.repo.repo("admin").revoke(write_kid)
    assert again["time_ns"] == first["time_ns"]  # revoking again never moves it
    # A later revocation (genuine, signed by the master key) planted beside it cannot move it either.
    later = {"v": 1, "repo": admin.id, "kid": write_kid, "time_ns": first["time_ns"] + 10**15}
    Attacker(box.url).put(f"revoked/{write_kid}.later", signed_json(later, admin.key.sign_seed,
                                                                     b"rekkord revocation v1\0"))
    assert box.repo.repo("read").revocations()[write_kid]["time_ns"] == first["time_ns"]
    # The storage withholds the revocation: a check that saw it remembers it.
    cache = Cache(str(tmp_path / "audit-cache.sqlite"))
    Checker(box.repo.repo("audit"), cache).run()
    for n in Attacker(box.url).names("revoked/"):
        Attacker(box.url).delete(n)
    w = Attacker(box.url, box.repo.key_files["write"])
    sid = w.snapshot([f(b"x", b"x", w)], time_ns=time.time_ns() + 10**9)
    report = Checker(box.repo.repo("audit"), cache).run()
    assert any(p.object == f"snapshots/{sid}" and "revoked" in p.message for p in report.problems)
    assert any(p.object == f"revoked/{write_kid}" and p.kind == "missing" for p in report.problems)


# ---- 6. garbage collection ----------------------------------------------------------------------


def _save(box, src, role="write", channel="c", cache=None):
    return Saver(box.repo.repo(role), cache or Cache(None)).save(channel, [str(src)])


def _restores_whole(box, sid, src, name):
    from treeutil import assert_same_tree

    out = box.tmp / name
    st, problems = restore(box, sid, sub=str(src), dest=out)
    assert st.damaged == 0, problems
    assert_same_tree(src, out)


def _tree(box, name="src", n=6, big=True):
    src = box.tmp / name
    src.mkdir()
    for i in range(n):
        (src / f"small-{i}").write_bytes(os.urandom(3000 + i))
    if big:
        (src / "big.bin").write_bytes(os.urandom(3 << 20))
    return src


def test_fossils_planted_under_every_live_name_cost_no_snapshot_its_data(box):
    from rekkord.gc import prune

    src = _tree(box)
    sid = _save(box, src).snapshot_id
    w = box.w
    for name in w.names("blobs/"):
        bid = fmt.blob_id_from_name(name)
        raw = w.seal(fmt.T_DATA, b"garbage for " + bid, claim_id=bid)[1]  # a valid MAC, other content
        w.put(f"fossils/20260101T000000Z-evil/{bid.hex()[:2]}/{bid.hex()}", raw)
    for _ in range(2):
        prune(box.repo.repo("audit"), session_timeout=0)
    _restores_whole(box, sid, src, "out")
    assert Checker(box.repo.repo("full"), Cache(None), read_data=True).run().ok
    # Fossils of a collection without a manifest wait until nothing was
    # written to it for a week by the storage's clock (whatever its name
    # claims), then they are settled: the planted copies set aside, not used.
    assert w.names("fossils/")
    week_ago = time.time() - 8 * 86400
    for name in w.names("fossils/"):
        os.utime(os.path.join(box.repo.url, *name.split("/")), (week_ago, week_ago))
    prune(box.repo.repo("audit"), session_timeout=0)
    _restores_whole(box, sid, src, "out2")
    assert not w.names("fossils/")


@pytest.mark.repo_format(1)
@pytest.mark.parametrize("role", ["audit", "full"])
def test_a_spoiled_copy_under_the_name_of_a_fossil_never_costs_the_genuine_one(box, role):
    """A write key plants a valid-MAC forgery in blobs/ while the genuine
    blob is a fossil, and a new save reuses the name: prune keeps the copy
    that verifies (a full key can tell), or sets the fossil aside where a
    decrypting check finds it and puts it back (an audit key cannot tell)."""
    from rekkord.gc import SaveSession, fossil_name, prune

    src = _tree(box, big=False)
    first = _save(box, src).snapshot_id
    from rekkord.forget import forget

    running = SaveSession(box.repo.repo("write"), refresh_interval=None).begin()  # keeps the collection open
    forget(box.repo.repo("audit"), ids=[first])
    rep = prune(box.repo.repo(role))
    assert rep.collections_pending and rep.fossilised
    w = box.w
    fossils = w.names("fossils/")
    for name in fossils:  # the attacker fills blobs/ again with forgeries
        bid = fmt.blob_id_from_name("blobs/" + "/".join(name.split("/")[2:]))
        w.put(fmt.blob_name(bid), w.seal(fmt.T_DATA, b"spoiled " + bid, claim_id=bid)[1])
    second = _save(box, src).snapshot_id  # dedups against the forgeries
    running.end()
    prune(box.repo.repo(role))
    full = Checker(box.repo.repo("full"), Cache(None), read_data=True).run()
    if role == "audit":
        assert w.names("quarantine/")  # the genuine fossils, set aside; the check put them back
        assert not full.ok and any("put back" in p.message for p in full.problems)
    assert Checker(box.repo.repo("full"), Cache(None), read_data=True).run().ok
    _restores_whole(box, second, src, "out")
    del fossil_name


def test_forged_bookkeeping_never_lets_prune_delete(box):
    """Unsigned or write-key-signed collection closings and dead-session
    tombstones: prune takes none of them."""
    from rekkord.forget import forget
    from rekkord.gc import GC, SESSIONS, SaveSession, prune, signed_object

    src = _tree(box, big=False)
    first = _save(box, src).snapshot_id
    running = SaveSession(box.repo.repo("write"), refresh_interval=None).begin()
    forget(box.repo.repo("audit"), ids=[first])
    rep = prune(box.repo.repo("audit"))
    [cid] = rep.collections_pending
    w = box.w
    done = json.loads(w.storage.read(f"{GC}{cid}.done"))
    forged = {**done["body"], "sessions": []}
    name = f"{GC}{cid}.done"
    w.put(name, json.dumps({"body": forged, "kid": done["kid"], "sig": done["sig"]}).encode())  # not re-signed
    assert prune(box.repo.repo("audit")).deleted == 0
    wkey = box.repo.keys["write"]  # a write key may sign, but may not prune
    w.put(name, signed_object(wkey, name, forged))
    assert prune(box.repo.repo("audit")).deleted == 0
    tomb = f"{SESSIONS}{running.id}.dead"
    w.put(tomb, signed_object(wkey, tomb, {"v": 1, "session": running.id, "time": 0}))
    assert prune(box.repo.repo("audit")).deleted == 0
    # The running save reuses the fossilised blobs and completes: its snapshot is whole.
    saver = Saver(box.repo.repo("write"), Cache(None))
    res = saver._save("c", [str(src)])
    running.after_record(res.snapshot_id, saver.refs)
    running.end()
    prune(box.repo.repo("audit"))
    _restores_whole(box, res.snapshot_id, src, "out")


def test_a_save_whose_marker_is_deleted_never_keeps_a_snapshot_with_deleted_blobs(box, monkeypatch):
    """The storage deletes a running save's session marker, so a prune
    collects and deletes blobs the save reuses: the save notices (the
    collection does not name it), verifies, withdraws its record and fails."""
    from rekkord.errors import StorageError
    from rekkord.forget import forget
    from rekkord.gc import prune

    src = _tree(box, big=False)
    cache = Cache(None)
    first = _save(box, src, cache=cache).snapshot_id
    forget(box.repo.repo("audit"), ids=[first])
    real = Saver._prepare_cache

    def attack(self):
        real(self)
        for name in box.w.names("sessions/"):
            Attacker(box.url).delete(name)
        prune(box.repo.repo("audit"))

    monkeypatch.setattr(Saver, "_prepare_cache", attack)
    with pytest.raises(StorageError, match="withdrawn"):
        Saver(box.repo.repo("write"), cache).save("c", [str(src)])
    assert box.repo.repo("read").snapshots() == []  # no record that references deleted blobs


@pytest.mark.repo_format(1)
def test_a_planted_reference_list_cannot_hide_a_saves_blobs_from_prune(box):
    """A write key predicts the reference list of a file another machine
    will save and plants, under its name, one that omits the file's blob.
    The save writes its own list over it (it reads back what the name
    holds), so prune keeps the file."""
    from rekkord.gc import prune

    w = box.w
    content = os.urandom(4000)
    src = box.tmp / "src"
    src.mkdir()
    (src / "f").write_bytes(content)
    pack_id, raw = w.seal(fmt.T_DATA, content)
    honest = fmt.pack_reflist([(pack_id, len(raw))])
    rid = w.blob_id(fmt.T_REFLIST, honest)
    w.put_blob(rid, w.seal(fmt.T_REFLIST, fmt.pack_reflist([]), claim_id=rid)[1])
    sid = _save(box, src).snapshot_id
    assert box.repo.repo("read").load_snapshot(sid).reflist[0][0] == rid
    prune(box.repo.repo("audit"), session_timeout=0)
    prune(box.repo.repo("audit"), session_timeout=0)
    _restores_whole(box, sid, src, "out")


def test_a_session_that_never_ends_only_delays_prune(box):
    from rekkord.forget import forget
    from rekkord.gc import SESSIONS, SaveSession, prune

    src = _tree(box, big=False)
    sid = _save(box, src).snapshot_id
    fake = SaveSession(box.repo.repo("write"), refresh_interval=None, clock=lambda: 4_000_000_000.0)
    fake.begin()  # refreshed far in the future, and never ended
    forget(box.repo.repo("audit"), ids=[sid])
    for _ in range(2):
        rep = prune(box.repo.repo("audit"))
        assert rep.deleted == 0 and rep.waiting_for_sessions == 1
    assert box.w.names(SESSIONS)


# ---- 7. spoiled deduplication (format v1) -----------------------------------------------------------


@pytest.mark.repo_format(1)
def test_spoiled_deduplication_is_found_contained_and_healed(box, tmp_path):
    """A compromised machine plants valid-MAC garbage under the ids of a file
    another machine will save.  The audit check cannot see it (v1's known
    limit); a decrypting check names it, sets it aside and publishes a hint;
    the victim's next save -- its file unchanged, served by the stat cache --
    uploads the data again, and the earlier snapshot restores whole."""
    w = box.w
    content = os.urandom(3 << 20)
    src = box.tmp / "src"
    src.mkdir()
    (src / "package.tar").write_bytes(content)
    planted = w.chunk_ids(content)
    for bid in planted:
        w.put_blob(bid, w.seal(fmt.T_DATA, os.urandom(1000), claim_id=bid)[1])
    cache = Cache(str(tmp_path / "victim.sqlite"))
    sid = Saver(box.repo.repo("write"), cache).save("c", [str(src)]).snapshot_id
    assert Checker(box.repo.repo("audit"), Cache(None)).run().ok  # MACs verify: v1 cannot tell
    r = Checker(box.repo.repo("full"), Cache(None), read_data=True).run()
    spoiled = {p.object for p in r.problems if "spoiled" in p.message}
    assert spoiled == {fmt.blob_name(b) for b in planted} and r.damaged_snapshots == [sid]
    assert r.repair_hint and len(w.names("quarantine/")) == len(planted)
    res = Saver(box.repo.repo("write"), cache).save("c", [str(src)])
    assert res.stats.blobs_repaired == len(planted)
    _restores_whole(box, sid, src, "out")
    # An audit check cannot clear a hint about content it cannot decrypt.
    assert Checker(box.repo.repo("audit"), Cache(None)).run().repairs_removed == 0
    r = Checker(box.repo.repo("full"), Cache(None), read_data=True).run()
    assert r.ok and r.repairs_removed == 1 and r.healed_snapshots == []


# ---- format v2: deduplication that a compromised machine cannot spoil -----------------------------


class CreateOnly:
    """Storage a machine may only add to (an append-only account): no
    overwrite, no delete, no rename."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def write(self, name, data, *, exclusive=True):
        from rekkord.errors import StoragePermissionDenied

        if not exclusive and self._inner.exists(name):
            raise StoragePermissionDenied(f"write {name}: this account may only create")
        return self._inner.write(name, data, exclusive=exclusive)

    def delete(self, name):
        from rekkord.errors import StoragePermissionDenied

        raise StoragePermissionDenied(f"delete {name}: this account may only create")

    def rename(self, src, dst):
        from rekkord.errors import StoragePermissionDenied

        raise StoragePermissionDenied(f"rename {src}: this account may only create")


def _machine(box, role="write", create_only=True):
    from rekkord.repository import Repository

    base = box.repo.repo(role)
    storage = CreateOnly(base.storage) if create_only else base.storage
    return Repository(storage, base.config, base.key)


def _plant_everywhere(w, content) -> list[str]:
    """A write key plants invalid bytes under every name an honest save of
    ``content`` will try: each variant of each chunk (and of the pack a lone
    small file makes)."""
    planted = []
    for chunk in w.chunks(content):
        for i, name in enumerate(w.predicted_names(fmt.T_DATA, chunk)):
            n = fmt.blob_name(name)
            if not w.storage.exists(n):
                # Random bytes, or a well-formed blob of other content.
                junk = os.urandom(2000) if i % 2 else w.seal(fmt.T_DATA, os.urandom(len(chunk)))[1]
                w.put(n, junk, overwrite=False)
                planted.append(n)
    return planted


@pytest.mark.repo_format(2)
def test_v2_a_spoiling_attack_fails(box, tmp_path):
    """A compromised machine plants objects under every name it can compute,
    before and during two other machines' saves, on storage that only lets
    them create.  Their snapshots restore byte for byte, and the audit check
    names every planted object as invalid and no snapshot as hurt."""
    from treeutil import assert_same_tree

    w = box.w
    package = os.urandom(3 << 20)  # content the attacker knows (an OS package, a shared document)
    doc = os.urandom(9000)
    b_src, c_src = tmp_path / "b", tmp_path / "c"
    for d_ in (b_src, c_src):
        d_.mkdir()
        (d_ / "package.tar").write_bytes(package)
    (c_src / "doc.pdf").write_bytes(doc)
    planted = _plant_everywhere(w, package)  # before
    b = Saver(_machine(box), Cache(str(tmp_path / "b.sqlite"))).save("b", [str(b_src)])
    planted += _plant_everywhere(w, doc)  # during: after one machine saved, before the next
    c = Saver(_machine(box), Cache(str(tmp_path / "c.sqlite"))).save("c", [str(c_src)])
    for sid, src, name in ((b.snapshot_id, b_src, "ob"), (c.snapshot_id, c_src, "oc")):
        out = tmp_path / name
        st, problems = restore(box, sid, sub=str(src), dest=out)
        assert st.damaged == 0, problems
        assert_same_tree(src, out)
    report = Checker(box.repo.repo("audit"), Cache(None)).run()
    invalid = {p.object for p in report.problems if p.kind == "damaged" and p.what == "unreferenced blob"}
    assert invalid == set(planted) and len(planted) >= 8
    assert report.damaged_snapshots == [] and all(not p.snapshots for p in report.problems)
    # What the attack costs: the squatted content is stored under a random
    # nonce, once per machine (deduplication of it is lost, nothing else).
    assert b.stats.blobs_proven == 0 and sum("invalid object occupies" in m for _, m in b.warnings) >= 4


@pytest.mark.repo_format(2)
def test_v2_a_second_machine_proves_what_the_first_stored(box, tmp_path):
    """Without squatters, a machine saving what another stored (cold cache)
    uploads no data blob: it reads each object back, finds that it hashes to
    its name, and reuses it."""
    content = os.urandom(3 << 20)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "same.bin").write_bytes(content)
    first = Saver(box.repo.repo("write"), Cache(None)).save("a", [str(tmp_path / "a")])
    second = Saver(box.repo.repo("write"), Cache(None)).save("b", [str(tmp_path / "b")])
    chunks = len(box.w.chunks(content))
    assert first.stats.blobs_proven == 0 and second.stats.blobs_proven == chunks
    assert second.stats.bytes_new < first.stats.bytes_new - len(content) // 2  # (index and lists only)


@pytest.mark.repo_format(2)
def test_v2_a_forgery_under_a_fossils_name_is_just_invalid(box):
    """The v1 attack of test_a_spoiled_copy_under_the_name_of_a_fossil_never_costs_the_genuine_one
    on v2: the forgeries do not hash to their names, the save proves and
    replaces them, and prune keeps the one copy that verifies."""
    from rekkord.forget import forget
    from rekkord.gc import SaveSession, prune

    src = _tree(box, big=False)
    first = _save(box, src).snapshot_id
    running = SaveSession(box.repo.repo("write"), refresh_interval=None).begin()
    forget(box.repo.repo("audit"), ids=[first])
    assert prune(box.repo.repo("audit")).collections_pending
    w = box.w
    for name in w.names("fossils/"):
        w.put("blobs/" + "/".join(name.split("/")[2:]), os.urandom(3000))
    second = _save(box, src).snapshot_id
    running.end()
    prune(box.repo.repo("audit"))
    assert not w.names("quarantine/") and not w.names("fossils/")
    assert Checker(box.repo.repo("audit"), Cache(None)).run().ok  # an audit key suffices in v2
    _restores_whole(box, second, src, "out")


@pytest.mark.repo_format(2)
def test_v2_reference_lists_and_index_blobs_cannot_be_predicted(box):
    """Reference lists and index blobs are randomised: two machines saving the
    same tree get different names, so none can be planted in advance."""
    src = _tree(box, big=False)
    a = box.repo.repo("read").load_snapshot(_save(box, src).snapshot_id)
    b = box.repo.repo("read").load_snapshot(_save(box, src).snapshot_id)
    assert {i for i, _ in a.reflist}.isdisjoint(i for i, _ in b.reflist)
    assert {i for i, _ in a.index}.isdisjoint(i for i, _ in b.index)

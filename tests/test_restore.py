"""rekkord.restore: round trips through Saver + Restorer on a real local
repository (hypothesis-generated trees, the awkward tree, real data), sub-path
selection, overwrite rules, damage and a full disk."""

import os
import random
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rekkord import format as fmt
from rekkord.cache import Cache
from rekkord.errors import NoSpace, PathNotFound, UsageError
from rekkord.restore import RestoreOptions, Restorer
from rekkord.save import Saver
from rekkord.snapshot import iter_entries
from treeutil import assert_same_tree, make_awkward_tree


def save(local_repo, paths, role="write"):
    return Saver(local_repo.repo(role), Cache(None)).save("c", [str(p) for p in paths])


def restorer(local_repo, sid, role="read", **opts):
    repo = local_repo.repo(role)
    return Restorer(repo, repo.load_snapshot(sid), RestoreOptions(**opts))


def leftovers(root, source=None) -> list[str]:
    """Restore's temporary names left in ROOT (a name the SOURCE tree holds too is the user's)."""
    root = os.fsencode(root)
    found = []
    for dp, ds, fs in os.walk(root):
        for f in fs + ds:
            if f.startswith(b".rekkord-tmp-"):
                rel = os.path.relpath(os.path.join(dp, f), root)
                if source is None or not os.path.lexists(os.path.join(os.fsencode(source), rel)):
                    found.append(os.path.join(dp, f))
    return found


# ---- hypothesis-generated trees ------------------------------------------------------

names = st.one_of(
    st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=24)
    .map(os.fsencode),
    st.binary(min_size=1, max_size=24),
).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
mtimes = st.one_of(st.integers(0, 2**33 * 10**9), st.integers(-(2**31) * 10**9, 0))
files = st.fixed_dictionaries({
    "kind": st.just("file"),
    "size": st.one_of(st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000),
                      st.sampled_from([0, 262_143, 262_144, 300_000, 1_300_000])),
    "compressible": st.booleans(),
    "seed": st.integers(0, 2**32),
    "mode": st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o000, 0o4755, 0o2750, 0o1644]),
    "mtime": mtimes,
})
symlinks = st.fixed_dictionaries({
    "kind": st.just("symlink"),
    "target": st.binary(min_size=1, max_size=120).filter(lambda b: b"\0" not in b),
    "mtime": mtimes,
})
dir_modes = st.sampled_from([0o755, 0o700, 0o1777, 0o500, 0o2775])
trees = st.recursive(
    st.one_of(files, symlinks, st.fixed_dictionaries({"kind": st.just("dir"), "children": st.just({}),
                                                       "mode": dir_modes, "mtime": mtimes})),
    lambda kids: st.fixed_dictionaries({"kind": st.just("dir"), "children": st.dictionaries(names, kids, max_size=6),
                                        "mode": dir_modes, "mtime": mtimes}),
    max_leaves=25,
)


def build(path: bytes, node: dict) -> None:
    kind = node["kind"]
    if kind == "file":
        rng = random.Random(node["seed"])
        if node["compressible"]:
            data = (rng.randbytes(50) * (node["size"] // 50 + 1))[:node["size"]]
        else:
            data = rng.randbytes(node["size"])
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, node["mode"])
    elif kind == "symlink":
        os.symlink(node["target"], path)
    else:
        os.mkdir(path)
        for name, child in node["children"].items():
            build(path + b"/" + name, child)
        os.chmod(path, node["mode"])
    os.utime(path, ns=(node["mtime"], node["mtime"]), follow_symlinks=False)


def build_root(work: str, root: dict) -> bytes:
    """WORK/src holding the generated ``root`` (name -> node)."""
    src = os.fsencode(work) + b"/src"
    os.mkdir(src)
    for name, node in root.items():
        build(src + b"/" + name, node)
    return src


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(root=st.dictionaries(names, trees, min_size=1, max_size=6))
def test_round_trip_of_generated_trees(local_repo, root):
    work = tempfile.mkdtemp(dir=local_repo.tmp)
    try:
        src = build_root(work, root)
        res = save(local_repo, [os.fsdecode(src)])
        assert res.warnings == []
        out = os.fsencode(work) + b"/out"
        r = restorer(local_repo, res.snapshot_id)
        r.restore(src, os.fsdecode(out))
        assert r.problems == []
        assert_same_tree(src, out)
        assert leftovers(out, src) == []
    finally:
        shutil.rmtree(work)


# ---- the awkward tree and real data --------------------------------------------------------


def test_awkward_tree_round_trip(local_repo, tmp_path):
    src = tmp_path / "src"
    make_awkward_tree(src)
    res = save(local_repo, [src])
    assert res.warnings == []
    r = restorer(local_repo, res.snapshot_id)
    st_ = r.restore(str(src), str(tmp_path / "out"))
    assert r.problems == [] and st_.damaged == 0
    assert_same_tree(src, tmp_path / "out")
    sparse = os.stat(tmp_path / "out" / "sparse.img")
    assert sparse.st_size == 30 << 20 and sparse.st_blocks * 512 < 1 << 20  # holes stay holes
    assert os.stat(tmp_path / "out" / "d1" / "hard-a").st_nlink == 3
    if os.geteuid() == 0:
        assert os.stat(tmp_path / "out" / "owned-by-other").st_uid == 1234
        assert os.lstat(tmp_path / "out" / "link-rel").st_gid == 5678
        assert stat.S_ISCHR(os.lstat(tmp_path / "out" / "null-dev").st_mode)
    assert leftovers(tmp_path / "out") == []


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory):
    """Copies of real data: part of /usr/share/doc and of Python's library."""
    root = tmp_path_factory.mktemp("real")
    for name in sorted(os.listdir("/usr/share/doc"))[:130]:
        s = os.path.join("/usr/share/doc", name)
        if os.path.isdir(s) and not os.path.islink(s):
            shutil.copytree(s, root / "doc" / name, symlinks=True)
    lib = sysconfig.get_paths()["stdlib"]
    for pkg in ("json", "email", "asyncio"):
        shutil.copytree(os.path.join(lib, pkg), root / "lib" / pkg, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_real_tree_round_trip(local_repo, real_tree, tmp_path):
    res = save(local_repo, [real_tree / "doc", real_tree / "lib"])
    assert res.stats.files > 500
    out = tmp_path / "out"
    r = restorer(local_repo, res.snapshot_id)
    r.restore(None, str(out))  # the whole snapshot: saved absolute paths under DEST
    assert r.problems == []
    for part in ("doc", "lib"):
        assert_same_tree(real_tree / part, str(out) + str(real_tree / part))


# ---- selection and destination rules ------------------------------------------------------


@pytest.fixture
def small(local_repo, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "sub" / "a.txt").write_text("a")
    (src / "sub" / "deeper" / "b.txt").write_text("b")
    (src / "sub2").mkdir()
    res = save(local_repo, [src])
    return src, res.snapshot_id


def test_restore_whole_snapshot_recreates_absolute_paths(local_repo, small, tmp_path):
    src, sid = small
    out = tmp_path / "out"
    restorer(local_repo, sid).restore(None, str(out))
    assert (out / str(src).lstrip("/") / "sub" / "deeper" / "b.txt").read_text() == "b"


def test_restore_sub_directory_and_single_file(local_repo, small, tmp_path):
    src, sid = small
    restorer(local_repo, sid).restore(f"{src}/sub", str(tmp_path / "o1"))
    assert sorted(os.listdir(tmp_path / "o1")) == ["a.txt", "deeper"]
    restorer(local_repo, sid).restore(f"{src}/sub/deeper/b.txt", str(tmp_path / "o2"))
    assert os.listdir(tmp_path / "o2") == ["b.txt"]
    # A trailing slash or "." components name the same path.
    restorer(local_repo, sid).restore(f"{src}/./sub/", str(tmp_path / "o3"))
    assert sorted(os.listdir(tmp_path / "o3")) == ["a.txt", "deeper"]


def test_path_not_in_snapshot(local_repo, small, tmp_path):
    src, sid = small
    with pytest.raises(PathNotFound, match=f"path {src}/nope is not in the snapshot"):
        restorer(local_repo, sid).restore(f"{src}/nope", str(tmp_path / "o"))
    with pytest.raises(PathNotFound, match=r"\.\."):
        restorer(local_repo, sid).restore(f"{src}/../etc", str(tmp_path / "o"))
    with pytest.raises(PathNotFound):
        restorer(local_repo, sid).restore(f"{src}/su", str(tmp_path / "o"))  # a prefix is not a path
    assert not (tmp_path / "o").exists()


def test_patterns_that_match_nothing_are_named(local_repo, small, tmp_path):
    """An --include that selects no entry of the snapshot is a warning
    naming it (stats.unmatched), also when DEST has a path it matches (what
    --delete looks at is not the snapshot) or when an exclude removes all it
    matches; an --exclude that removes nothing is recorded, not a warning."""
    src, sid = small
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "stray.md").write_text("stray")
    (out / "sub" / "notes.log").write_text("mine")
    st_, problems, _ = run_restore(local_repo, sid, src, out, includes=["*.txt", "*.md", "b.*"],
                                   excludes=["*.tmp", "deeper"], delete=True)
    assert st_.unmatched == ["*.md", "b.*"] and st_.unmatched_excludes == ["*.tmp"]
    assert problems == [(f"--include {p}", f"matches nothing in snapshot {sid[:8]} below the path given")
                        for p in ("*.md", "b.*")]
    # (--delete removes what an include matches and the snapshot has not; keeps the rest)
    assert sorted(os.listdir(out / "sub")) == ["a.txt", "notes.log"]
    assert (out / "top.txt").read_text() == "top" and not (out / "sub" / "deeper").exists()
    st_, problems, _ = run_restore(local_repo, sid, src, tmp_path / "o2", includes=["*.txt"], excludes=["sub2"])
    assert (st_.unmatched, st_.unmatched_excludes, problems) == ([], [], [])


def counting_reads(repo):
    """Count the blobs a restore reads from the storage."""
    seen = []
    read = repo.storage.read

    def counted(name, *a, **kw):
        if name.startswith("blobs/"):
            seen.append(name)
        return read(name, *a, **kw)

    repo.storage.read = counted
    return seen


def run_restore(local_repo, sid, src, out, **opts):
    repo = local_repo.repo("read")
    reads = counting_reads(repo)
    r = Restorer(repo, repo.load_snapshot(sid), RestoreOptions(**opts))
    st_ = r.restore(str(src), str(out))
    return st_, r.problems, reads


def test_overwrite_modes(local_repo, tmp_path):
    """restic's --overwrite choices on what DEST already has: always (the
    default) compares the content and rewrites what differs, if-changed
    trusts size and mtime, if-newer keeps what is newer, never keeps
    everything; identical files are skipped quietly and get their metadata
    back; the summary counts what was restored, unchanged and kept."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "small.txt").write_text("small")
    (src / "sub" / "other.txt").write_text("other")
    big = os.urandom(1_500_000)  # chunked: its extents are whole blobs
    (src / "big.bin").write_bytes(big)
    os.symlink("small.txt", src / "link")
    for p in ("small.txt", "sub/other.txt", "big.bin"):
        os.utime(src / p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    sid = save(local_repo, [src]).snapshot_id
    out = tmp_path / "out"
    st_, problems, reads = run_restore(local_repo, sid, src, out)
    assert (st_.restored, st_.skipped, problems) == (4, 0, [])
    repo = local_repo.repo("read")
    chunks = {fmt.blob_name(x.blob) for e in iter_entries(repo, repo.load_snapshot(sid))
              if e.path.endswith(b"/big.bin") for x in e.extents}
    assert chunks and chunks <= set(reads)
    assert_same_tree(src, out)

    # Again, always: nothing differs, nothing is written or downloaded for the
    # large file (its chunks are settled by their ids); metadata comes back.
    os.chmod(out / "big.bin", 0o600)
    st_, problems, reads = run_restore(local_repo, sid, src, out)
    assert (st_.restored, st_.skipped, st_.unchanged, st_.kept, problems) == (0, 4, 4, 0, [])
    assert st_.bytes_skipped == st_.bytes == len(big) + 10 and st_.bytes_restored == 0
    assert len(reads) == 2 and not chunks & set(reads)  # the index and the pack, to compare the small files
    assert_same_tree(src, out)

    # Same size and mtime, other content: if-changed believes it, always does not.
    def tamper():
        (out / "small.txt").write_text("SMALL")
        os.utime(out / "small.txt", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
        with open(out / "big.bin", "r+b") as f:
            f.seek(1_000_000)
            f.write(b"x")
        os.utime(out / "big.bin", ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))

    tamper()
    st_, problems, reads = run_restore(local_repo, sid, src, out, overwrite="if-changed")
    assert (st_.restored, st_.unchanged, problems) == (0, 4, []) and len(reads) == 1  # the index only
    assert (out / "small.txt").read_text() == "SMALL"
    st_, problems, _ = run_restore(local_repo, sid, src, out, overwrite="always")
    assert (st_.restored, st_.unchanged, problems) == (2, 2, [])
    assert_same_tree(src, out)

    # if-newer: a newer file in DEST stays, an older one is replaced.
    (out / "small.txt").write_text("newer")
    (out / "sub" / "other.txt").write_text("older")
    os.utime(out / "sub" / "other.txt", ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))
    st_, problems, _ = run_restore(local_repo, sid, src, out, overwrite="if-newer")
    assert (out / "small.txt").read_text() == "newer" and (out / "sub" / "other.txt").read_text() == "other"
    assert (st_.restored, st_.kept, problems) == (1, 3, [])  # (the unchanged big file and link are older too)

    # never: nothing in DEST is touched, not even its metadata; quietly.
    os.chmod(out / "big.bin", 0o600)
    (out / "sub" / "other.txt").unlink()
    st_, problems, _ = run_restore(local_repo, sid, src, out, overwrite="never")
    assert (st_.restored, st_.kept, problems) == (1, 3, [])
    assert (out / "small.txt").read_text() == "newer" and stat.S_IMODE(os.stat(out / "big.bin").st_mode) == 0o600
    assert leftovers(out) == []
    # The library's earlier boolean still means what it did with --overwrite.
    assert RestoreOptions(overwrite=True).overwrite == "always" and RestoreOptions(overwrite=False).overwrite == "never"


def test_a_file_sharing_its_inode_with_one_outside_dest_is_replaced_never_changed(local_repo, small, tmp_path):
    """The content is the snapshot's, but DEST's file is a hard link to a
    file outside DEST (planted by a local user): its metadata is never set
    through that inode (that would chmod or chown the outside file), it is
    replaced instead; a symlink where a file goes is replaced, not followed."""
    src, sid = small
    out = tmp_path / "out"
    restorer(local_repo, sid).restore(str(src), str(out))
    outside = tmp_path / "outside.txt"
    outside.write_text("top")
    os.chmod(outside, 0o640)
    os.utime(outside, ns=(5 * 10**9, 5 * 10**9))
    (out / "top.txt").unlink()
    os.link(outside, out / "top.txt")
    (out / "sub" / "a.txt").unlink()
    os.symlink(outside, out / "sub" / "a.txt")
    before = (os.stat(outside).st_mode, os.stat(outside).st_mtime_ns, outside.read_text())
    st_, problems, _ = run_restore(local_repo, sid, src, out)
    assert problems == [] and st_.restored == 2 and st_.unchanged == 1
    assert (os.stat(outside).st_mode, os.stat(outside).st_mtime_ns, outside.read_text()) == before
    assert os.stat(outside).st_nlink == 1 and not os.path.islink(out / "sub" / "a.txt")
    assert_same_tree(src, out)


def test_a_symlink_in_dest_is_never_followed(local_repo, small, tmp_path):
    """DEST/sub is a symlink to a directory outside DEST (planted, or left
    from an earlier restore): nothing is written through it, its target's
    modes and times stay; with --overwrite never nothing is restored below
    it, in every other mode (the default) the link is replaced with the directory."""
    src, sid = small
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir(mode=0o700)
    os.utime(outside, ns=(1_000_000_000, 1_000_000_000))
    os.symlink(outside, out / "sub")
    r = restorer(local_repo, sid, overwrite="never")
    r.restore(str(src), str(out))
    assert os.listdir(outside) == [] and os.stat(outside).st_mtime_ns == 1_000_000_000
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o700
    assert [p for p, m in r.problems if "not a directory" in m] == [str(out / "sub")]
    assert (out / "top.txt").read_text() == "top"  # the rest is restored
    r = restorer(local_repo, sid)
    r.restore(str(src), str(out))
    assert not os.path.islink(out / "sub") and (out / "sub" / "deeper" / "b.txt").read_text() == "b"
    assert os.listdir(outside) == []


def test_dry_run_writes_nothing(local_repo, small, tmp_path):
    src, sid = small
    st_ = restorer(local_repo, sid, dry_run=True).restore(str(src), str(tmp_path / "out"))
    assert st_.files == 3 and st_.bytes == 5
    assert not (tmp_path / "out").exists()


def test_include_exclude_and_verify(local_repo, small, tmp_path):
    src, sid = small
    restorer(local_repo, sid, includes=["a.txt"], verify=True).restore(str(src), str(tmp_path / "o1"))
    assert sorted(p.name for p in (tmp_path / "o1").rglob("*.txt")) == ["a.txt"]
    restorer(local_repo, sid, excludes=[f"{src}/sub"]).restore(str(src), str(tmp_path / "o2"))
    assert sorted(os.listdir(tmp_path / "o2")) == ["sub2", "top.txt"]


# ---- damage -------------------------------------------------------------------------------


def data_blobs(url):
    out = []
    for dp, _, fs in os.walk(os.path.join(url, "blobs")):
        for f in fs:
            p = os.path.join(dp, f)
            with open(p, "rb") as fh:
                if fh.read(5)[4] == fmt.T_DATA:
                    out.append(p)
    return out


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_a_damaged_file_is_reported_by_name_and_the_rest_restores(local_repo, tmp_path, damage):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("small file in a pack")
    (src / "big.bin").write_bytes(os.urandom(600_000))  # its own data blob(s)
    res = save(local_repo, [src])
    # Find the blob only big.bin uses.
    repo = local_repo.repo("read")
    from rekkord.snapshot import iter_entries

    es = {e.path.rsplit(b"/", 1)[-1]: e for e in iter_entries(repo, repo.load_snapshot(res.snapshot_id))}
    victim = fmt.blob_name(es[b"big.bin"].extents[0].blob)
    path = os.path.join(local_repo.url, victim)
    raw = bytearray(open(path, "rb").read())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x04
        open(path, "wb").write(raw)
    elif damage == "truncate":
        open(path, "wb").write(raw[:-100])
    else:
        os.unlink(path)
    out = tmp_path / "out"
    r = restorer(local_repo, res.snapshot_id)
    st_ = r.restore(str(src), str(out))
    assert st_.damaged == 1
    assert [p for p, m in r.problems] == [str(out / "big.bin")]
    assert "DAMAGED, not restored" in r.problems[0][1] and victim.split("/")[-1] in r.problems[0][1]
    assert not (out / "big.bin").exists()  # never a partial file under its final name
    assert (out / "small.txt").read_text() == "small file in a pack"
    assert leftovers(out) == []
    # With keep_damaged the file stays, with a hole where the blob was.
    out2 = tmp_path / "out2"
    r2 = restorer(local_repo, res.snapshot_id, keep_damaged=True)
    r2.restore(str(src), str(out2))
    assert (out2 / "big.bin").exists() and "kept" in r2.problems[0][1]


@pytest.mark.parametrize("direct_io", [True, False])
def test_large_files_restore_past_the_page_cache_or_through_it(local_repo, tmp_path, monkeypatch, direct_io):
    """Files of directio.MIN_SIZE bytes and more are written with O_DIRECT where the
    file system takes it (``--page-cache``: never); either way every byte,
    hole and time comes back."""
    from rekkord import directio

    src = tmp_path / "src"
    src.mkdir()
    sizes = [directio.MIN_SIZE - 1, directio.MIN_SIZE, 1_048_577, 3_000_001]
    for n in sizes:
        (src / f"f{n}").write_bytes(os.urandom(n))
    holey = os.urandom(100_000) + bytes(2 << 20) + os.urandom(5000)  # an aligned zero run: holes
    (src / "holey").write_bytes(holey)
    res = save(local_repo, [src])
    made = []
    real = directio.DirectWriter
    monkeypatch.setattr(directio, "DirectWriter", lambda fd, hole: made.append(1) or real(fd, hole))
    out = tmp_path / "out"
    restorer(local_repo, res.snapshot_id, direct_io=direct_io).restore(str(src), str(out))
    assert_same_tree(src, out)
    fd = os.open(tmp_path, os.O_RDONLY)
    on_block_fs = directio.supported(fd)
    os.close(fd)
    assert len(made) == (4 if direct_io and on_block_fs else 0)  # the three large files and holey
    if on_block_fs:
        assert os.stat(out / "holey").st_blocks * 512 < 1 << 20


def test_full_disk_raises_no_space_and_leaves_no_partial_file(local_repo, tmp_path, tiny_disk):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small").write_text("fits")
    (src / "b-big").write_bytes(os.urandom(3 << 20))
    res = save(local_repo, [src])
    # (the two writers run at once: when b-big fills the disk first, it is
    # a-small's write that fails, and the error names a-small)
    with pytest.raises(NoSpace, match="no space left writing .*/out/(b-big|a-small)$"):
        restorer(local_repo, res.snapshot_id).restore(str(src), str(tiny_disk / "out"))
    assert not (tiny_disk / "out" / "b-big").exists()
    assert leftovers(tiny_disk) == []


def test_a_failure_is_raised_even_when_its_future_tells_the_waiters_first(local_repo, tmp_path, tiny_disk,
                                                                           monkeypatch):
    """A future wakes its waiters before it runs its done callbacks. With the
    callbacks slowed down, the walk's last wait returns before any callback
    could have noted the failure: the restore must still raise NoSpace
    (it once ended "successfully" here, b-big missing; seen in CI)."""
    import concurrent.futures
    import time

    src = tmp_path / "src"
    src.mkdir()
    (src / "b-big").write_bytes(os.urandom(3 << 20))
    res = save(local_repo, [src])
    slow = concurrent.futures.Future._invoke_callbacks

    def late(self):
        time.sleep(0.5)
        slow(self)

    monkeypatch.setattr(concurrent.futures.Future, "_invoke_callbacks", late)
    with pytest.raises(NoSpace, match="no space left writing .*b-big"):
        restorer(local_repo, res.snapshot_id).restore(str(src), str(tiny_disk / "out"))


# ---- how files are created ------------------------------------------------------------

def _modes_tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i, mode in enumerate([0o644, 0o600, 0o755, 0o444, 0o640, 0o4755]):
        p = src / "d" / f"f{i}"
        p.write_bytes(b"x" * (i * 100))
        os.chmod(p, mode)
    (src / "d" / "big").write_bytes(os.urandom(600_000))
    (src / "d" / "e" / "f").mkdir(parents=True)  # (directories made in directories the restore made)
    for i, mode in enumerate([0o640, 0o755, 0o604]):
        (src / "d" / "e" / "f" / f"deep{i}").write_bytes(b"y" * i)
        os.chmod(src / "d" / "e" / "f" / f"deep{i}", mode)
    return src


def _set_default_acl(path, user=7, group=0, other=0):
    """A default ACL (user::, group::, other::) as the kernel stores it, without setfacl."""
    import struct

    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                          for tag, perm in ((0x01, user), (0x04, group), (0x20, other)))
    os.setxattr(path, "system.posix_acl_default", acl)


def test_modes_are_the_saved_ones_below_a_default_acl_and_any_umask(local_repo, tmp_path, monkeypatch):
    """A new file is created with its saved mode, and its fchmod is skipped
    only where that mode is known to be what the file got: not below a
    directory whose default ACL overrides the umask (however deep: a
    directory made in one inherits it), nor with an odd umask.  Only a
    directory made in one the restore did not make is asked for its ACL."""
    from rekkord import safefs

    src = _modes_tree(tmp_path)
    asked = []
    real = safefs.has_default_acl
    monkeypatch.setattr(safefs, "has_default_acl", lambda fd: asked.append(fd) or real(fd))
    res = save(local_repo, [src])
    dest = tmp_path / "acl"
    dest.mkdir()
    try:
        _set_default_acl(dest)  # new files get no group or other bits, whatever their mode asks
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e.strerror}")
    restorer(local_repo, res.snapshot_id).restore(str(src), str(dest))
    assert_same_tree(src, dest)
    assert len(asked) == 1  # d; d/e and d/e/f inherit its answer
    old = os.umask(0o077)
    try:
        restorer(local_repo, res.snapshot_id).restore(str(src), str(tmp_path / "umask"))
    finally:
        os.umask(old)
    assert_same_tree(src, tmp_path / "umask")


def test_where_unnamed_files_cannot_be_made_temporary_names_are_used(local_repo, tmp_path, monkeypatch):
    from rekkord import safefs

    src = _modes_tree(tmp_path)
    res = save(local_repo, [src])
    calls = []

    def refuse(dfd, mode):
        calls.append(mode)
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(safefs, "create_unnamed", refuse)
    r = restorer(local_repo, res.snapshot_id)
    r.restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert len(calls) == 1 and r._unnamed is False  # asked once, then never again
    assert leftovers(tmp_path / "out") == []


def test_a_name_taken_while_the_file_was_written_is_replaced_not_followed(local_repo, tmp_path, monkeypatch):
    """Something that appears under a file's name in a directory the restore
    made (a local user racing it: here a symlink out of DEST) is replaced
    atomically, never written through."""
    from rekkord import safefs

    src = _modes_tree(tmp_path)
    res = save(local_repo, [src])
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    real = safefs.link_unnamed

    def racing(fd, dfd, name):
        if not name.startswith(b".rekkord-tmp-"):
            os.symlink(outside, name, dir_fd=dfd)
        return real(fd, dfd, name)

    monkeypatch.setattr(safefs, "link_unnamed", racing)
    restorer(local_repo, res.snapshot_id).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert outside.read_bytes() == b"keep"
    assert leftovers(tmp_path / "out") == []


# ---- when directory metadata is set --------------------------------------------------

def _linked_tree(tmp_path, closed_mode=0o755):
    src = tmp_path / "src"
    for d in ("a-closed", "b-plain/sub", "c-links", "d-ro"):
        (src / d).mkdir(parents=True)
    (src / "a-closed" / "target").write_bytes(b"linked")
    (src / "b-plain" / "f").write_bytes(b"f")
    (src / "b-plain" / "sub" / "g").write_bytes(os.urandom(400_000))
    os.link(src / "a-closed" / "target", src / "c-links" / "link")
    (src / "d-ro" / "inside").write_bytes(b"ro")
    os.chmod(src / "d-ro", 0o555)
    os.chmod(src / "a-closed", closed_mode)
    t = 1_500_000_000_000_000_007
    for d in ("a-closed", "b-plain/sub", "b-plain", "c-links", "d-ro"):
        os.utime(src / d, ns=(t, t))
        t += 1_000_000_003
    return src


def test_directory_metadata_goes_on_when_the_directory_is_done_and_late_where_links_go(local_repo, tmp_path,
                                                                                        monkeypatch):
    """A directory gets its mode and times once its last file is written;
    only one that hard links go into at the end waits for the pass at the
    end (else creating the link would change its time)."""
    src = _linked_tree(tmp_path)
    res = save(local_repo, [src])
    late = []
    real = Restorer._apply_dir_meta

    def recording(self, dirs):
        late.extend(comps for comps, _ in dirs)
        return real(self, dirs)

    monkeypatch.setattr(Restorer, "_apply_dir_meta", recording)
    restorer(local_repo, res.snapshot_id).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert late == [(b"c-links",)]
    assert os.stat(tmp_path / "out" / "c-links" / "link").st_nlink == 2


def test_a_failed_restore_leaves_its_unfinished_directories_0700(local_repo, tmp_path, tiny_disk):
    """Directories keep 0700 when the restore fails (full disk) before
    their entries are all there: a rerun can still write into them."""
    src = tmp_path / "src"
    (src / "full").mkdir(parents=True)
    (src / "full" / "a-small").write_text("fits")
    (src / "full" / "b-big").write_bytes(os.urandom(3 << 20))
    os.chmod(src / "full", 0o555)
    res = save(local_repo, [src])
    with pytest.raises(NoSpace):
        restorer(local_repo, res.snapshot_id).restore(str(src), str(tiny_disk / "out"))
    assert stat.S_IMODE(os.stat(tiny_disk / "out" / "full").st_mode) == 0o700


def test_hard_links_out_of_a_directory_without_search_permission_restore_without_root(local_repo, tmp_path):
    """Without root's power to pass any directory (a user namespace drops
    CAP_DAC_OVERRIDE), a directory whose mode would shut us out (0600: no
    search) gets it only in the pass at the end, after the hard links that
    reach into it are made."""
    src = _linked_tree(tmp_path, closed_mode=0o600)
    res = save(local_repo, [src])
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    env.update(REKKORD_REPOSITORY=local_repo.url, REKKORD_CACHE_DIR=str(tmp_path / "cli-cache"),
               REKKORD_KEY_FILE=local_repo.key_files["read"])
    p = subprocess.run(["unshare", "-U", sys.executable, "-m", "rekkord", "restore",
                        f"{res.snapshot_id}:{src}", str(tmp_path / "out")], env=env, capture_output=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    assert_same_tree(src, tmp_path / "out", owners=False)
    assert os.stat(tmp_path / "out" / "c-links" / "link").st_nlink == 2


def test_symlinks_go_straight_under_their_names_unless_one_is_taken(local_repo, tmp_path, monkeypatch):
    """In a directory the restore made, a symlink is made under its own name
    (no temporary name, no rename); a name a local user took meanwhile (here
    a symlink out of DEST) is replaced, never followed."""
    from rekkord import restore as restore_mod, safefs

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(3):
        os.symlink(f"target-{i}", src / "d" / f"link{i}")
    res = save(local_repo, [src])
    renames = []
    real_rename = safefs.rename
    monkeypatch.setattr(safefs, "rename", lambda dfd, a, b: renames.append(b) or real_rename(dfd, a, b))
    restorer(local_repo, res.snapshot_id).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert renames == []
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    real_free = restore_mod._symlink_if_free

    def racing(target, dfd, name):
        if name == b"link1":
            os.symlink(outside, name, dir_fd=dfd)
        return real_free(target, dfd, name)

    monkeypatch.setattr(restore_mod, "_symlink_if_free", racing)
    restorer(local_repo, res.snapshot_id).restore(str(src), str(tmp_path / "out2"))
    assert_same_tree(src, tmp_path / "out2")
    assert renames == [b"link1"] and outside.read_bytes() == b"keep"
    assert leftovers(tmp_path / "out2") == []


def test_directories_are_not_remembered_once_their_metadata_is_on(local_repo, tmp_path, monkeypatch):
    # What a restore remembers of directories is bounded by the open ones
    # (and those left for the pass at the end), not by the tree: keeping
    # every directory's entry until the end was 15 MiB for 14k directories.
    src = tmp_path / "src"
    for i in range(80):
        for j in range(25):
            d = src / f"d{i:02}" / f"e{j:02}"
            d.mkdir(parents=True)
            (d / "f").write_bytes(b"x%d" % j)
    os.chmod(src / "d07" / "e03", 0o555)  # (no 0700: its metadata waits for the end)
    sid = save(local_repo, [src]).snapshot_id
    r = restorer(local_repo, sid)
    seen = []
    real_tick = Restorer._tick

    def tick(self, force=False):
        seen.append(len(self._dirs_todo))
        return real_tick(self, force)

    monkeypatch.setattr(Restorer, "_tick", tick)
    out = tmp_path / "out"
    r.restore(None, str(out))
    assert len(seen) > 1000
    # (the tree has 2081 directories; those of the files still being
    # written stay: up to a batch of 512 files sharing a pack)
    assert max(seen) < 700
    assert_same_tree(src, out / src.relative_to("/"))
    assert stat.S_IMODE(os.lstat(out / src.relative_to("/") / "d07" / "e03").st_mode) == 0o555


# ---- a restore shared by processes (Shares) ----------------------------------------------

def _walk_of(rng) -> list:
    """A random tree as the validated walk gives it: (entry, rel), depth first, names in byte order."""
    from rekkord.index import K_DIR, K_FILE, K_HARDLINK, F_LINKED, Entry

    out = [(Entry(K_DIR, b""), b"")]
    linkable = []

    def fill(prefix: bytes, depth: int):
        names = sorted({bytes([rng.randrange(97, 103)]) * rng.randint(1, 2) for _ in range(rng.randint(0, 5))})
        for nm in names:
            path = prefix + nm
            r = rng.random()
            if r < 0.35 and depth < 4:
                out.append((Entry(K_DIR, path), path))
                fill(path + b"/", depth + 1)
            elif r < 0.45 and linkable:
                out.append((Entry(K_HARDLINK, path, target=rng.choice(linkable)), path))
            else:
                e = Entry(K_FILE, path)
                if rng.random() < 0.2:
                    e.flags |= F_LINKED
                    linkable.append(path)
                out.append((e, path))

    fill(b"", 0)
    return out


@given(st.integers(0, 2**32), st.integers(2, 3), st.integers(1, 4))
@settings(max_examples=150, deadline=None)
def test_every_entry_goes_to_one_process_with_the_directories_above_it(seed, n, block):
    from rekkord.index import K_DIR, K_HARDLINK
    from rekkord.restore import Shares

    walk = _walk_of(random.Random(seed))
    owner_of: dict[bytes, int] = {}
    mixed_by: list[set] = []
    for me in range(n):
        mixed: dict[tuple, int] = {}
        where = [0]
        sh = Shares(n, me, lambda rel: tuple(rel.split(b"/")) if rel else (),
                    lambda comps, e: mixed.setdefault(comps, where[0]), block=block)
        made: set[bytes] = set()
        for i, (e, rel) in enumerate(walk):
            where[0] = i
            for x, xrel, owned in sh.take(e, rel):
                if owned:
                    assert x is e and xrel not in owner_of, "an entry restored twice"
                    owner_of[xrel] = me
                    # every directory above it made first, here, once
                    parts = xrel.split(b"/")[:-1] if xrel else []
                    for k in range(len(parts)):
                        assert b"/".join(parts[:k + 1]) in made
                    if x.kind == K_DIR:
                        assert xrel not in made
                        made.add(xrel)
                else:
                    assert x.kind == K_DIR and xrel not in made, "a directory made twice"
                    made.add(xrel)
        mixed_by.append(mixed)
    assert set(owner_of) == {rel for _, rel in walk}
    # Hard links go with their first link.
    for e, rel in walk:
        if e.kind == K_HARDLINK and e.target in owner_of:
            assert owner_of[rel] == owner_of[e.target]
    # Every process sees the same mixed directories: those with entries of
    # more than one process at or below them, each said while the walk is
    # still inside it.
    for m in mixed_by[1:]:
        assert m == mixed_by[0]
    for i, (e, rel) in enumerate(walk):
        if e.kind != K_DIR:
            continue
        inside = [j for j, (_, r) in enumerate(walk) if r == rel or not rel or r.startswith(rel + b"/")]
        owners = {owner_of[walk[j][1]] for j in inside}
        comps = tuple(rel.split(b"/")) if rel else ()
        assert (comps in mixed_by[0]) == (len(owners) > 1), rel
        if comps in mixed_by[0]:
            assert mixed_by[0][comps] in inside


@pytest.fixture
def small_blocks(monkeypatch):
    import rekkord.restore as restore_mod

    monkeypatch.setattr(restore_mod, "SHARE_BLOCK", 3)


def _stats(st):
    from dataclasses import asdict

    return {k: v for k, v in asdict(st).items() if k != "duration"}


def test_a_restore_shared_by_processes_is_the_restore_of_one(local_repo, tmp_path, small_blocks):
    src = tmp_path / "src"
    make_awkward_tree(src)
    # A read-only directory whose files go to several processes, and
    # enough directories for every kind of block boundary.
    ro = src / "ro"
    for i in range(12):
        (ro / f"s{i:02}").mkdir(parents=True)
        (ro / f"s{i:02}" / "f").write_bytes(b"%d" % i * 100)
        (ro / f"g{i:02}").write_bytes(b"g%d" % i)
    for p in sorted(ro.iterdir()):
        if p.is_dir():
            os.chmod(p, 0o555)
    os.chmod(ro, 0o555)
    os.utime(ro, ns=(10**18, 10**18))
    try:
        sid = save(local_repo, [src]).snapshot_id
        one = restorer(local_repo, sid, processes=1).restore(None, str(tmp_path / "one"))
        r = restorer(local_repo, sid, processes=2)
        ticks = []
        r.progress = ticks.append
        two = r.restore(None, str(tmp_path / "two"))
        rel = src.relative_to("/")
        assert_same_tree(src, tmp_path / "two" / rel)
        assert_same_tree(tmp_path / "one", tmp_path / "two")
        assert _stats(two) == _stats(one) and two.files > 30 and r.problems == []
        assert ticks and ticks[-1].files == two.files and ticks[-1].restored == two.restored
        assert leftovers(tmp_path / "two") == []
    finally:
        for t in (src, tmp_path / "one", tmp_path / "two"):
            subprocess.run(["chmod", "-R", "u+w", str(t)], check=False)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(root=st.dictionaries(names, trees, min_size=1, max_size=6), n=st.integers(2, 3))
def test_shared_restores_of_generated_trees(local_repo, root, n):
    import rekkord.restore as restore_mod

    work = tempfile.mkdtemp(dir=local_repo.tmp)
    block, restore_mod.SHARE_BLOCK = restore_mod.SHARE_BLOCK, 2
    try:
        src = build_root(work, root)
        res = save(local_repo, [os.fsdecode(src)])
        out = os.fsencode(work) + b"/out"
        r = restorer(local_repo, res.snapshot_id, processes=n)
        r.restore(src, os.fsdecode(out))  # (a directory of the snapshot: shared too)
        assert r.problems == []
        assert_same_tree(src, out)
        assert leftovers(out, src) == []
    finally:
        restore_mod.SHARE_BLOCK = block
        subprocess.run(["chmod", "-R", "u+rwx", work], check=False)
        shutil.rmtree(work)


@pytest.fixture
def shared_tree(local_repo, tmp_path, small_blocks):
    src = tmp_path / "src"
    for i in range(30):
        (src / f"d{i:02}").mkdir(parents=True)
        (src / f"d{i:02}" / "f").write_bytes(b"file %d " % i * 50)
    return src, save(local_repo, [src]).snapshot_id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def forks(monkeypatch):
    pids = []
    real = os.fork

    def fork():
        pid = real()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    return pids


def _fail_in(monkeypatch, in_child: bool, act) -> None:
    """``act(name)`` before each file that a child (or the coordinator) restores."""
    parent = os.getpid()
    real = Restorer._place_file

    def place(self, parent_h, name, *a, **kw):
        if (os.getpid() != parent) == in_child:
            act(name)
        return real(self, parent_h, name, *a, **kw)

    monkeypatch.setattr(Restorer, "_place_file", place)


def test_a_process_of_a_shared_restore_that_runs_out_of_space_fails_the_restore(local_repo, shared_tree,
                                                                                tmp_path, monkeypatch, forks):
    def full(name):
        raise NoSpace(f"no space left writing {name.decode()}")

    _fail_in(monkeypatch, True, full)
    with pytest.raises(NoSpace, match="no space left writing f"):
        restorer(local_repo, shared_tree[1], processes=2).restore(None, str(tmp_path / "out"))
    assert forks and not any(_alive(p) for p in forks)


def test_a_process_killed_mid_restore_is_named_and_fails_the_restore(local_repo, shared_tree, tmp_path,
                                                                     monkeypatch, forks):
    import signal

    from rekkord.errors import RekkordError

    _fail_in(monkeypatch, True, lambda name: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(RekkordError, match="a restore process ended before its share was done "
                                           r"\(killed by signal 9\)") as exc:
        restorer(local_repo, shared_tree[1], processes=2).restore(None, str(tmp_path / "out"))
    assert type(exc.value) is RekkordError
    assert forks and not any(_alive(p) for p in forks)


def test_when_the_coordinator_fails_the_other_processes_are_stopped(local_repo, shared_tree, tmp_path,
                                                                    monkeypatch, forks):
    def interrupt(name):
        raise KeyboardInterrupt

    _fail_in(monkeypatch, False, interrupt)
    with pytest.raises(KeyboardInterrupt):
        restorer(local_repo, shared_tree[1], processes=3).restore(None, str(tmp_path / "out"))
    assert len(forks) == 2 and not any(_alive(p) for p in forks)
    assert leftovers(tmp_path / "out") == []  # (unnamed files until complete: nothing half-written named)


def _named_temporaries(monkeypatch):
    """Every file is written under a temporary name (as where O_TMPFILE is not supported)."""
    from rekkord import safefs

    monkeypatch.setattr(safefs, "unnamed_supported", lambda: False)


def test_a_stopped_process_ends_its_files_and_leaves_no_temporary_name(local_repo, shared_tree, tmp_path,
                                                                       monkeypatch, forks):
    import time

    import rekkord.restore as restore_mod

    src, sid = shared_tree
    out = tmp_path / "out"
    _named_temporaries(monkeypatch)
    parent = os.getpid()
    real = restore_mod._write_sparse

    def slow(fd, data, pos):  # (the children are mid-file, under a temporary name, when told to stop)
        if os.getpid() != parent:
            time.sleep(0.05)
        return real(fd, data, pos)

    seen = []

    def interrupt(name):
        time.sleep(0.2)
        seen.append(len(leftovers(out)))  # (the children's files, under their temporary names)
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_mod, "_write_sparse", slow)
    _fail_in(monkeypatch, False, interrupt)
    with pytest.raises(KeyboardInterrupt):
        restorer(local_repo, sid, processes=3).restore(None, str(out))
    assert len(forks) == 2 and not any(_alive(p) for p in forks)
    assert seen[0] > 0 and leftovers(out) == []
    for dp, ds, fs in os.walk(out):  # (what has its name is whole)
        for f in fs:
            assert open(os.path.join(dp, f), "rb").read() == open(dp[len(str(out)):] + "/" + f, "rb").read()


def test_a_process_that_does_not_stop_is_killed(local_repo, shared_tree, tmp_path, monkeypatch, forks):
    import time

    import rekkord.restore as restore_mod

    monkeypatch.setattr(restore_mod, "STOP_WAIT", 0.3)

    def hang(name):  # (e.g. a fetch that never returns: the stop is seen, but this thread does not end)
        time.sleep(120)

    def interrupt(name):
        time.sleep(0.3)
        raise KeyboardInterrupt

    _fail_in(monkeypatch, True, hang)
    _fail_in(monkeypatch, False, interrupt)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        restorer(local_repo, shared_tree[1], processes=2).restore(None, str(tmp_path / "out"))
    assert time.monotonic() - started < 60  # (killed, not waited for)
    assert forks and not any(_alive(p) for p in forks)


def test_a_ctrl_c_in_a_process_of_a_shared_restore_interrupts_it_cleanly(local_repo, shared_tree, tmp_path,
                                                                       monkeypatch, forks):
    import signal

    _named_temporaries(monkeypatch)
    _fail_in(monkeypatch, True, lambda name: os.kill(os.getpid(), signal.SIGINT))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        restorer(local_repo, shared_tree[1], processes=2).restore(None, str(out))
    assert forks and not any(_alive(p) for p in forks)
    assert leftovers(out) == []


_COORDINATOR_KILLED = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
from rekkord import safefs
from rekkord.restore import Restorer
import rekkord.restore as restore_mod
from test_restore import restorer

safefs.unnamed_supported = lambda: False  # (temporary names: what a killed process could leave)
restore_mod.SHARE_BLOCK = 3  # (as small_blocks: each process its share of the 30 files)
me = os.getpid()
real_fork, real_place, real_write = os.fork, Restorer._place_file, restore_mod._write_sparse
kids = []

def fork():
    pid = real_fork()
    if pid:
        kids.append(pid)
    return pid

def place(self, *a, **kw):
    if os.getpid() == me:
        time.sleep(0.3)
        open({pids!r}, "w").write(" ".join(map(str, kids)))
        os.kill(me, signal.SIGKILL)
    return real_place(self, *a, **kw)

def slow(fd, data, pos):
    time.sleep(0.2)
    return real_write(fd, data, pos)

os.fork, Restorer._place_file, restore_mod._write_sparse = fork, place, slow

class Repo:
    def __init__(self, url, key_files):
        self.url, self.key_files = url, key_files

    def repo(self, role):
        from rekkord import keys
        from rekkord.repository import Repository
        from rekkord.storage.local import LocalStorage
        return Repository.open(LocalStorage(self.url, sync=False), keys.load(self.key_files[role]))

import json
spec = json.load(open({spec!r}))
restorer(Repo(spec["url"], spec["key_files"]), spec["sid"], processes=2).restore(None, {out!r})
"""


def test_when_the_coordinator_is_killed_the_other_processes_stop_cleanly(local_repo, shared_tree, tmp_path):
    import json
    import signal
    import time

    spec = tmp_path / "spec.json"
    json.dump({"url": local_repo.url, "sid": shared_tree[1], "key_files": local_repo.key_files}, open(spec, "w"))
    pids, out = tmp_path / "pids", tmp_path / "out"
    script = _COORDINATOR_KILLED.format(tests=os.path.dirname(__file__), pids=str(pids), spec=str(spec),
                                        out=str(out))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    kids = [int(x) for x in pids.read_text().split()]
    assert kids
    deadline = time.monotonic() + 30
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:  # (not our children: not reaped here)
        time.sleep(0.05)
    assert not any(_alive(k) for k in kids)
    assert leftovers(out) == []
    restored = sum(len(fs) for _, _, fs in os.walk(out))
    assert restored <= 5  # (the child's share is 10 or more: it stopped when the coordinator died)


def test_an_interrupted_file_leaves_no_temporary_name_nor_open_file(local_repo, shared_tree, tmp_path,
                                                                   monkeypatch):
    import rekkord.restore as restore_mod

    src, sid = shared_tree
    out = tmp_path / "out"
    _named_temporaries(monkeypatch)

    def interrupted(fd, data, pos):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_mod, "_write_sparse", interrupted)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        restorer(local_repo, sid, processes=1).restore(None, str(out))
    assert leftovers(out) == [] and len(os.listdir("/proc/self/fd")) == fds


def test_damage_found_by_any_process_is_reported_as_by_one(local_repo, tmp_path, small_blocks):
    src = tmp_path / "src"
    for i in range(12):  # (each file its own blobs: each process finds its own damage)
        (src / f"d{i:02}").mkdir(parents=True)
        (src / f"d{i:02}" / "f").write_bytes(os.urandom(300_000))
    sid = save(local_repo, [src]).snapshot_id
    for p in data_blobs(local_repo.url):
        raw = bytearray(open(p, "rb").read())
        raw[-20] ^= 0xFF
        open(p, "wb").write(bytes(raw))
    one = restorer(local_repo, sid, processes=1)
    st1 = one.restore(None, str(tmp_path / "one"))
    two = restorer(local_repo, sid, processes=2)
    st2 = two.restore(None, str(tmp_path / "two"))
    assert st1.damaged == 12 and _stats(st2) == {**_stats(st1), "repair_hint": st2.repair_hint}
    # The children's damaged blobs are named in the one repair hint too.
    hints = local_repo.repo("read").repairs()
    assert sorted(hints[st2.repair_hint]) == sorted(hints[st1.repair_hint]) and len(hints[st1.repair_hint]) >= 12
    strip = lambda probs, d: sorted((p.replace(str(tmp_path / d), "DEST"), m) for p, m in probs)  # noqa: E731
    assert strip(two.problems, "two") == strip(one.problems, "one")


def test_who_shares_a_restore(local_repo, shared_tree, tmp_path, monkeypatch):
    import rekkord.restore as restore_mod

    src, sid = shared_tree

    def n(**opts):
        return restorer(local_repo, sid, **opts)._processes()

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert n() == 1  # (61 entries: too few)
    monkeypatch.setattr(restore_mod, "SHARE_MIN_ENTRIES", 10)
    assert n() == 4 and n(processes=1) == 1 and n(processes=3) == 3
    for opts in ({"dry_run": True}, {"delete": True}, {"includes": ["f"]}, {"excludes": ["x"]}):
        assert n(processes=2, **opts) == 1, opts
    r = restorer(local_repo, sid, processes=2)
    monkeypatch.setattr(type(r.repo.storage), "fork_safe", False)
    assert r._processes() == 1
    with pytest.raises(UsageError):
        RestoreOptions(processes=0)


def test_a_large_file_weighs_on_its_process_share():
    # The nightly tree: a 210 MiB database first, then thousands of small
    # files.  The database's process gets fewer of them.
    from rekkord.index import K_DIR, K_FILE, Entry
    from rekkord.restore import SHARE_ENTRY_BYTES, Shares

    walk = [(Entry(K_DIR, b""), b""), (Entry(K_FILE, b"db", size=210 << 20), b"db")]
    walk += [(Entry(K_FILE, b"s%05d" % i, size=4000), b"s%05d" % i) for i in range(20000)]
    owned = [[], []]
    for me in (0, 1):
        sh = Shares(2, me, lambda rel: (rel,) if rel else (), lambda comps, e: None)
        for e, rel in walk:
            owned[me] += [x for x, _, mine in sh.take(e, rel) if mine]
    work = [sum(1 + x.size // SHARE_ENTRY_BYTES for x in o) for o in owned]
    assert sum(map(len, owned)) == len(walk)
    assert abs(work[0] - work[1]) <= 1100  # (within a block of 1024 and the last entry)
    db_owner = 0 if any(x.path == b"db" for x in owned[0]) else 1
    # (20000 small files and the database's 5376 units: 7312 files beside it, 12688 elsewhere)
    assert abs(len(owned[db_owner]) - 7312) <= 1100 and len(owned[1 - db_owner]) > 11500

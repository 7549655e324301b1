"""rekkord.diff: comparing snapshots, finding files, reading byte ranges —
on real saves into a local repository."""

import os
import random

import pytest

from rekkord.cache import Cache
from rekkord.diff import ContentReader, Differ, Matcher, find, glob_regex, lookup
from rekkord.errors import PathNotFound, PermissionDenied, UsageError
from rekkord.index import Entry
from rekkord.save import Saver
from rekkord.snapshot import BlobFetcher


def save(local_repo, paths, channel="c", cache=None):
    res = Saver(local_repo.repo("write"), cache or Cache(None)).save(channel, [str(p) for p in paths])
    return local_repo.repo("read").load_snapshot(res.snapshot_id)


def changes_by_path(changes, root):
    prefix = "/" + str(root).lstrip("/")
    return {c.display_path[len(prefix):] or "/": c for c in changes}


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "docs").mkdir(parents=True)
    (src / "docs" / "a.txt").write_text("alpha\n")
    (src / "docs" / "b.txt").write_text("beta\n")
    (src / "big.bin").write_bytes(random.Random(1).randbytes(3 << 20))
    (src / "keep.txt").write_text("unchanged\n")
    os.symlink("docs/a.txt", src / "link")
    (src / "gone").mkdir()
    (src / "gone" / "x").write_text("x")
    return src


def test_diff_added_removed_modified_metadata(local_repo, tree):
    s1 = save(local_repo, [tree])
    (tree / "docs" / "new.txt").write_text("new file\n")  # added
    (tree / "docs" / "a.txt").write_text("ALPHA\n")  # same size, new content
    (tree / "docs" / "b.txt").write_text("beta, longer\n")  # new size
    os.chmod(tree / "keep.txt", 0o600)  # metadata only
    data = bytearray((tree / "big.bin").read_bytes())
    data[2_000_000] ^= 1
    (tree / "big.bin").write_bytes(bytes(data))
    os.unlink(tree / "link")
    os.symlink("docs/b.txt", tree / "link")
    (tree / "gone" / "x").unlink()
    (tree / "gone").rmdir()
    s2 = save(local_repo, [tree])
    repo = local_repo.repo("read")
    d = Differ(repo, s1, s2)
    ch = changes_by_path(d.run(), tree)
    assert ch["/docs/new.txt"].status == "added"
    assert ch["/gone"].status == "removed" and ch["/gone/x"].status == "removed"
    assert ch["/docs/a.txt"].status == "modified" and "content" in ch["/docs/a.txt"].details
    assert ch["/docs/b.txt"].status == "modified" and "size" in ch["/docs/b.txt"].details
    assert ch["/big.bin"].status == "modified"
    assert ch["/link"].status == "modified" and ch["/link"].details[0] == "target"
    assert ch["/keep.txt"].status == "metadata" and ch["/keep.txt"].details == ["mode"]
    assert d.stats.added == 1 and d.stats.removed == 2
    # Output is in path order.
    paths = [c.path for c in d.run()]
    assert paths == sorted(paths, key=lambda p: p.split(b"/"))


def test_identical_snapshots_have_no_changes(local_repo, tree):
    s1 = save(local_repo, [tree])
    s2 = save(local_repo, [tree])
    assert Differ(local_repo.repo("read"), s1, s2).run() == []


def test_repacked_small_file_with_same_content_is_not_modified(local_repo, tree):
    """Without the stat cache, a neighbour's change moves unchanged small files
    into another pack: their extents differ, their bytes do not."""
    s1 = save(local_repo, [tree])
    (tree / "docs" / "0-first.txt").write_text("shifts the pack\n")
    s2 = save(local_repo, [tree])
    repo = local_repo.repo("read")
    d = Differ(repo, s1, s2)
    ch = changes_by_path(d.run(), tree)
    assert ch["/docs/0-first.txt"].status == "added"
    assert "/docs/a.txt" not in ch and "/keep.txt" not in ch
    assert d.stats.contents_compared >= 1  # it had to look
    # --fast trusts extents alone: the repacked files show up as modified.
    fast = changes_by_path(Differ(repo, s1, s2, compare_content=False).run(), tree)
    assert fast["/docs/a.txt"].status == "modified"


def test_diff_below_a_path_and_a_path_in_neither(local_repo, tree):
    s1 = save(local_repo, [tree])
    (tree / "docs" / "new.txt").write_text("n")
    (tree / "top-new").write_text("t")
    s2 = save(local_repo, [tree])
    repo = local_repo.repo("read")
    ch = Differ(repo, s1, s2, subpath=f"{tree}/docs").run()
    assert [c.display_path for c in ch if c.status == "added"] == [f"{tree}/docs/new.txt"]
    with pytest.raises(PathNotFound):
        Differ(repo, s1, s2, subpath=f"{tree}/nowhere").run()


def test_diff_needs_a_key_that_reads(local_repo, tree):
    s1 = save(local_repo, [tree])
    with pytest.raises(PermissionDenied):
        Differ(local_repo.repo("audit"), s1, s1)


@pytest.mark.parametrize("pattern,path,hit", [
    ("*.txt", "x/y/a.txt", True),
    ("*.txt", "x/a.txt/b", False),
    ("docs/*.txt", "home/u/docs/a.txt", True),
    ("docs/*.txt", "home/u/docs/sub/a.txt", False),
    ("docs/**", "home/u/docs/sub/a.txt", True),
    ("/home/*/docs", "home/u/docs", True),
    ("/home/*/docs", "srv/home/u/docs", False),
    ("/home/**/a.txt", "home/a.txt", True),
    ("report-20??.pdf", "r/report-2024.pdf", True),
    ("[ab].txt", "b.txt", True),
    ("[!ab].txt", "b.txt", False),
])
def test_matcher(pattern, path, hit):
    e = Entry(1, path.encode())
    assert Matcher(pattern).match(e) is hit


def test_glob_regex_star_stays_in_a_component():
    assert glob_regex("a/*/c").fullmatch("a/b/c")
    assert not glob_regex("a/*/c").fullmatch("a/b/x/c")
    assert glob_regex("a/**/c").fullmatch("a/c")
    with pytest.raises(UsageError):
        Matcher("")


def test_find_across_snapshots_and_channels(local_repo, tree, tmp_path):
    s1 = save(local_repo, [tree], channel="one")
    (tree / "docs" / "c.txt").write_text("c")
    s2 = save(local_repo, [tree], channel="two")
    repo = local_repo.repo("read")
    hits = [(s.id, os.fsdecode(e.name)) for s, e in find(repo, [s1, s2], "*.txt")]
    assert hits == [(s1.id, "a.txt"), (s1.id, "b.txt"), (s1.id, "keep.txt"),
                    (s2.id, "a.txt"), (s2.id, "b.txt"), (s2.id, "c.txt"), (s2.id, "keep.txt")]
    assert [os.fsdecode(e.name) for _, e in find(repo, [s2], "docs/c.*")] == ["c.txt"]
    with pytest.raises(PermissionDenied):
        list(find(local_repo.repo("audit"), [s1], "*"))


def test_lookup_and_content_reader_ranges(local_repo, tree):
    snap = save(local_repo, [tree])
    repo = local_repo.repo("read")
    e = lookup(repo, snap, f"{tree}/big.bin")
    data = (tree / "big.bin").read_bytes()
    fetcher = BlobFetcher(repo, 4, max_bytes=8 << 20)
    try:
        r = ContentReader(fetcher, e.extents, e.size)
        assert len(e.extents) > 1
        rng = random.Random(5)
        for _ in range(40):
            off = rng.randrange(0, len(data) + 10)
            n = rng.randrange(0, 300_000)
            assert r.read(off, n) == data[off:off + n]
        # Across an extent boundary exactly.
        b = e.extents[0].length
        assert r.read(b - 3, 6) == data[b - 3:b + 3]
        assert b"".join(r.iter(chunk=100_000)) == data
        # A read fetches only the blobs it needs.
        fetcher2 = BlobFetcher(repo, 2)
        ContentReader(fetcher2, e.extents, e.size, readahead=0).read(0, 10)
        fetcher2.close()
        assert fetcher2.fetched == 1
        small = lookup(repo, snap, f"{tree}/docs/a.txt")
        assert ContentReader(fetcher, small.extents, small.size).read(0, 100) == b"alpha\n"
    finally:
        fetcher.close()
    with pytest.raises(PathNotFound):
        lookup(repo, snap, f"{tree}/docs/none.txt")
    with pytest.raises(UsageError):
        lookup(repo, snap, "/")

"""rekkord.cache: the local SQLite cache (known blobs, stat cache) and the
rule that it is only an optimisation."""

import os
import shutil

import pytest

from rekkord.cache import Cache, cache_path
from rekkord.restore import Restorer
from rekkord.save import Saver
from treeutil import assert_same_tree


def save(local_repo, src, cache, role="write", channel="c"):
    repo = local_repo.repo(role)
    return Saver(repo, cache).save(channel, [str(src)])


def open_cache(local_repo, role="write"):
    return Cache(cache_path(local_repo.cache_dir, local_repo.master.repo, role))


def test_known_blobs(tmp_path):
    c = Cache(str(tmp_path / "sub" / "c.sqlite"))
    assert oct(os.stat(tmp_path / "sub").st_mode & 0o777) == "0o700"
    a, b = os.urandom(32), os.urandom(32)
    assert c.blob_size(a) is None
    c.add_blob(a, 10)
    c.add_blobs([(b, 20)])
    assert (c.blob_size(a), c.blob_size(b), c.blob_count()) == (10, 20, 2)
    c.forget_blobs([a])
    assert c.blob_size(a) is None and c.blob_count() == 1
    c.set_meta("generation", 4)
    c.close()
    again = Cache(str(tmp_path / "sub" / "c.sqlite"))
    assert again.blob_size(b) == 20 and again.get_meta("generation") == "4"
    assert again.get_meta("missing", "d") == "d"
    again.reset_blobs()
    assert again.blob_count() == 0
    again.close()


def test_stat_cache_hits_only_for_the_identical_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    c = Cache(str(tmp_path / "c.sqlite"))
    path = bytes(f)
    c.store_file(path, os.stat(f), b"E" * 40, 1)
    assert c.lookup_file(path, os.stat(f)) == b"E" * 40
    assert c.lookup_file(b"/other", os.stat(f)) is None
    # Each of mtime, size, ctime and inode invalidates the entry.
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert c.lookup_file(path, os.stat(f)) is None
    c.store_file(path, os.stat(f), b"E" * 40, 1)
    os.chmod(f, 0o600)  # changes only ctime
    assert c.lookup_file(path, os.stat(f)) is None
    c.store_file(path, os.stat(f), b"E" * 40, 1)
    with open(f, "ab") as fh:
        fh.write(b"!")
    assert c.lookup_file(path, os.stat(f)) is None
    c.store_file(path, os.stat(f), b"E" * 40, 1)
    st = os.stat(f)
    g = tmp_path / "g"
    shutil.copy2(f, g)
    os.replace(g, f)  # same size and mtime, new inode
    assert c.lookup_file(path, os.stat(f)) is None


def test_forgetting_a_blob_forgets_the_files_using_it(tmp_path):
    c = Cache(None)  # in memory
    a, b = os.urandom(32), os.urandom(32)
    st = os.stat(tmp_path)
    c.store_file(b"/x", st, a + bytes(8) + b + bytes(8), 1)
    c.store_file(b"/y", st, b + bytes(8), 1)
    c.store_file(b"/z", st, os.urandom(40), 1)
    c.forget_blobs([a])
    assert c.lookup_file(b"/x", st) is None
    assert c.lookup_file(b"/y", st) is not None and c.lookup_file(b"/z", st) is not None


def test_verification_memory(tmp_path):
    c = Cache(str(tmp_path / "c.sqlite"))
    a = os.urandom(32)
    assert c.last_verified(a) is None
    c.mark_verified([a], when=1234)
    assert c.last_verified(a) == 1234
    c.forget_blobs([a])
    assert c.last_verified(a) is None


def test_cache_path_names_repository_and_role(tmp_path):
    assert cache_path("/c", "abcd", "write") == "/c/abcd-write.sqlite"


def tree(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"small{i}").write_bytes(os.urandom(1000 + i))
    (src / "big").write_bytes(os.urandom(3 << 20))
    return src


def test_unchanged_files_cost_one_stat(local_repo, tmp_path):
    src = tree(tmp_path)
    cache = open_cache(local_repo)
    first = save(local_repo, src, cache)
    assert first.stats.bytes_read == first.stats.bytes_total > 3 << 20
    cache.close()
    cache = open_cache(local_repo)
    second = save(local_repo, src, cache)
    assert second.stats.bytes_read == 0
    assert second.stats.files_unchanged == second.stats.files == 31
    # Touch one file: only it is read again.
    (src / "d" / "small3").write_bytes(b"changed")
    third = save(local_repo, src, cache)
    assert third.stats.bytes_read == len(b"changed") and third.stats.files_unchanged == 30
    cache.close()


def test_deleting_the_cache_keeps_saves_correct_and_deduplicated(local_repo, tmp_path):
    src = tree(tmp_path)
    cache = open_cache(local_repo)
    first = save(local_repo, src, cache)
    cache.close()
    shutil.rmtree(local_repo.cache_dir)
    cache = open_cache(local_repo)
    second = save(local_repo, src, cache)
    cache.close()
    assert second.stats.bytes_read == second.stats.bytes_total  # no stat cache: read again
    # ... but no data is stored twice (only the index, whose parent directory
    # entries changed with the cache directory, is new).
    assert second.stats.blobs_new <= 1 and second.stats.bytes_new < 0.01 * second.stats.bytes_total
    repo = local_repo.repo("read")
    Restorer(repo, repo.load_snapshot(second.snapshot_id)).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    assert first.stats.blobs_new > 0


def test_a_newer_generation_makes_the_writer_revalidate(local_repo, tmp_path):
    """After garbage collection bumps the generation, blobs the cache believed
    to exist are re-listed, and those gone are uploaded again."""
    src = tree(tmp_path)
    cache = open_cache(local_repo)
    save(local_repo, src, cache)
    blobs = os.path.join(local_repo.url, "blobs")
    shutil.rmtree(blobs)  # what a prune of everything would leave
    local_repo.repo("admin").storage.write("generations/1", b"")
    (src / "d" / "small0").write_bytes(b"new content")
    again = save(local_repo, src, cache)
    assert cache.get_meta("generation") == "1"
    cache.close()
    assert again.stats.blobs_new > 0
    repo = local_repo.repo("read")
    Restorer(repo, repo.load_snapshot(again.snapshot_id)).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")

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


@pytest.mark.parametrize("n", [1, 127, 128, 300])
def test_files_rows_written_many_to_a_statement_all_come_back(tmp_path, n):
    """Rows go in 128 to an INSERT and the rest one by one: every row of
    a flush is there once the file is opened again, none mixed up."""
    st = os.stat(tmp_path)
    c = Cache(str(tmp_path / "c.sqlite"))
    for i in range(n):
        c.store_file(b"/f%d" % i, st, i.to_bytes(2, "big") * 20, 1, b"R%d" % i)
    c.close()
    again = Cache(str(tmp_path / "c.sqlite"))
    assert [again.lookup_record(b"/f%d" % i, st) for i in range(n)] == \
        [(i.to_bytes(2, "big") * 20, b"R%d" % i) for i in range(n)]
    assert again.lookup_record(b"/f%d" % n, st) is None


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
    # (Format v2: index blobs and reference lists are randomised, so without
    # the cache they are new -- each in its copies; every data blob was
    # proven, not uploaded.)
    copies = local_repo.repo("write").copies
    assert second.stats.blobs_new <= (2 * copies if local_repo.version >= 2 else 1)
    assert second.stats.bytes_new < 0.01 * second.stats.bytes_total
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


# ---- many processes on one cache --------------------------------------------------


def _repository(tmp_path, url, options=None):
    """A repository at ``url`` with key files of every role -> (key files, env)."""
    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.storage import open_storage

    master = Key.generate_master()
    Repository.init(open_storage(url, options), master)
    admin = Repository.open(open_storage(url, options), master)
    files = {"admin": str(tmp_path / "admin.key")}
    master.save(files["admin"])
    for role in ("full", "write", "read", "audit"):
        k = master.derive(role, f"t-{role}")
        admin.publish_cert(k.cert)
        files[role] = str(tmp_path / f"{role}.key")
        k.save(files[role])
    return files


def _sources(tmp_path, n):
    """``n`` small trees that share some files (the same blobs, written by
    several savers at once) and differ in others."""
    import random

    shared = random.Random(7).randbytes(400_000)
    out = []
    for i in range(n):
        rng = random.Random(i)
        src = tmp_path / f"src{i}"
        (src / "d").mkdir(parents=True)
        (src / "shared.bin").write_bytes(shared)
        (src / "own.bin").write_bytes(rng.randbytes(300_000))
        for j in range(25):
            (src / "d" / f"f{j}").write_bytes(rng.randbytes(rng.randrange(10, 6000)) if j % 3 else b"same %d" % j)
        out.append(src)
    return out


def concurrent_operations(tmp_path, url, env, *, savers, rounds, options=None):
    """``savers`` real `rekkord save` processes at once (write key and full
    key: two caches, each shared by many), beside a check and a restore
    with the full key, all on one cache directory; ``rounds`` times (later
    rounds find their files in the stat cache).  Every process exits 0 and
    every snapshot restores equal to its source."""
    import json
    import subprocess
    import sys

    keys = _repository(tmp_path, url, options)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}, **env,
           "REKKORD_REPOSITORY": url, "REKKORD_CACHE_DIR": str(tmp_path / "cache")}
    sources = _sources(tmp_path, savers)

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", "rekkord", *map(str, args)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(p):
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0 and b"error" not in err, (p.args[3:], p.returncode, err.decode())
        return out

    snapshots = []  # (id, source)
    for r in range(rounds):
        if r:
            for src in sources[::2]:  # a change in half of the trees
                (src / "d" / "f1").write_bytes(os.urandom(3000 + r))
        procs = [(start("-k", keys["write" if i % 3 else "full"], "save", "--json", f"c{i}", src), src)
                 for i, src in enumerate(sources)]
        others = [start("-k", keys["full"], "check")]
        if snapshots:
            others.append(start("-k", keys["full"], "restore", snapshots[-1][0], tmp_path / f"during{r}"))
        for p, src in procs:
            snapshots.append((json.loads(finish(p))["id"], src))
        for p in others:
            finish(p)
    finish(start("-k", keys["audit"], "check"))
    finish(start("-k", keys["full"], "check", "--read-data"))  # every snapshot, every byte
    for k, (sid, src) in enumerate(snapshots[-savers:]):  # the latest of each source
        dest = tmp_path / f"out{k}"
        finish(start("-k", keys["read"], "restore", sid, dest))
        assert_same_tree(src, dest / str(src).lstrip("/"))
    return snapshots


def test_concurrent_saves_checks_and_restores_share_one_cache(tmp_path):
    """Before: 'internal error: OperationalError: database is locked' for a
    good part of the saves (a deferred transaction held for the whole save)."""
    url = str(tmp_path / "repo")
    concurrent_operations(tmp_path, url, {}, savers=6, rounds=2)


@pytest.mark.s3
def test_concurrent_saves_on_s3_share_one_cache(tmp_path, s3_server):
    concurrent_operations(tmp_path, s3_server.url(), s3_server.env(), savers=5, rounds=2,
                          options=s3_server.options())


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_many_concurrent_saves_share_one_cache(tmp_path, request, where):
    if where == "s3":
        srv = request.getfixturevalue("s3_server")
        concurrent_operations(tmp_path, srv.url(), srv.env(), savers=12, rounds=2, options=srv.options())
    else:
        concurrent_operations(tmp_path, str(tmp_path / "repo"), {}, savers=12, rounds=3)


# ---- files private to their owner ----------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_cache_files_are_private_whatever_the_umask(tmp_path, umask):
    d = tmp_path / "cache"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)  # a directory that already existed, too open
    old = os.umask(umask)
    try:
        c = Cache(str(d / "r-write.sqlite"))
        c.add_blob(os.urandom(32), 1)
        c.open_session()
        c.commit()
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in d.iterdir()}
        c.close()
    finally:
        os.umask(old)
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    assert set(modes) >= {"r-write.sqlite", "r-write.sqlite-wal", "r-write.sqlite-shm", "r-write.sqlite.sessions"}
    assert modes.pop("r-write.sqlite.sessions") == "0o700"
    assert set(modes.values()) == {"0o600"}, modes


def test_existing_cache_files_are_made_private(tmp_path):
    path = tmp_path / "c.sqlite"
    Cache(str(path)).close()
    os.chmod(path, 0o644)
    Cache(str(path)).close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# ---- one cache, many processes ---------------------------------------------------------


def test_a_locked_cache_waits_then_keeps_its_rows_for_later(tmp_path):
    """Another process holds the write lock past the busy timeout: nothing
    fails, this process still sees what it learned, and writes it later."""
    import sqlite3

    path = str(tmp_path / "c.sqlite")
    c = Cache(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    a = os.urandom(32)
    c.add_blob(a, 7)
    c.set_meta("generation", "3")
    assert c.commit() is False  # still locked
    assert c.blob_size(a) == 7 and c.get_meta("generation") == "3"
    other.execute("ROLLBACK")
    assert c.commit() is True
    assert other.execute("SELECT size FROM blobs WHERE id=?", (a,)).fetchall() == [(7,)]
    c.close()


def test_a_slow_background_write_holds_the_save_back_instead_of_buffering_without_bound(tmp_path, monkeypatch):
    """The writer thread can fall behind a save (a first save of 100k small
    files outran it to 50k buffered rows, ~40 MiB): past WAIT_ROWS the save
    waits for it, so what is buffered stays bounded, and every row lands."""
    import threading
    import time

    import rekkord.cache as cache_mod

    monkeypatch.setattr(cache_mod, "FLUSH_ROWS", 50)
    monkeypatch.setattr(cache_mod, "WAIT_ROWS", 200)
    c = Cache(str(tmp_path / "c.sqlite"))
    real_apply = c._apply
    writes = []

    def slow_apply(db, buf):
        writes.append(threading.current_thread().name)
        time.sleep(0.05)
        real_apply(db, buf)

    monkeypatch.setattr(c, "_apply", slow_apply)
    st = os.stat(tmp_path)
    most = 0
    for i in range(2000):
        c.store_file(b"/f%d" % i, st, b"E" * 40, 1)
        with c.lock:
            most = max(most, sum(len(b.files) for b in c._buffers()))
    assert most <= 2 * 200 + 1, most  # (what is buffered, and the write in flight)
    assert any(n.startswith("rekkord-cache") for n in writes)  # (still written in the background)
    c.close()
    again = Cache(str(tmp_path / "c.sqlite"))
    assert all(again.lookup_file(b"/f%d" % i, st) == b"E" * 40 for i in (0, 999, 1999))
    again.close()


def test_a_cache_locked_by_another_process_does_not_hold_the_save_back(tmp_path, monkeypatch):
    """While the file is locked by others, waiting for the writer would
    cost the busy timeout again and again: the save goes on buffering."""
    import sqlite3
    import time

    import rekkord.cache as cache_mod

    monkeypatch.setattr(cache_mod, "FLUSH_ROWS", 50)
    monkeypatch.setattr(cache_mod, "WAIT_ROWS", 100)
    path = str(tmp_path / "c.sqlite")
    c = Cache(path, busy_timeout=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    st = os.stat(tmp_path)
    start = time.monotonic()
    for i in range(1000):
        c.store_file(b"/f%d" % i, st, b"E" * 40, 1)
    assert time.monotonic() - start < 0.2 * 5  # (a wait per store past 100 rows: minutes)
    assert c.lookup_file(b"/f999", st) == b"E" * 40
    other.execute("ROLLBACK")
    assert c.commit() is True
    c.close()


def test_rows_learned_under_an_older_generation_stay_out_of_the_file(tmp_path):
    """A save that began before a prune must not write blobs it learned into
    a cache another process re-listed for the newer generation; it keeps
    them for itself."""
    path = str(tmp_path / "c.sqlite")
    old, new = Cache(path), Cache(path)
    old.bind_generation(1)
    new.bind_generation(2)
    new.reset_blobs()
    b, x = os.urandom(32), os.urandom(32)
    new.add_blobs([(b, 5)])
    new.set_meta("generation", 2)
    new.set_meta("listed", 1)
    new.commit()
    old.add_blob(x, 9)
    old.commit()
    assert old.blob_size(x) == 9  # for itself
    assert new.blob_size(x) is None and new.blob_size(b) == 5  # not in the file
    third = Cache(path)
    assert third.blob_size(x) is None and third.get_meta("generation") == "2"
    for c in (old, new, third):
        c.close()


_HOLDER = """
import os, sys, time
from rekkord.cache import Cache
c = Cache(sys.argv[1])
c.open_session()
c.add_pending(bytes.fromhex(sys.argv[2]))
c.add_blob(bytes.fromhex(sys.argv[2]), 1)
c.commit()
print("ready", flush=True)
time.sleep(120)
"""


def test_a_running_saves_pending_blobs_are_not_a_dead_saves(tmp_path):
    """Only a session whose process is gone counts as a save that died: a
    save running beside it keeps its pending blobs to itself."""
    import subprocess
    import sys

    path = str(tmp_path / "c.sqlite")
    x = os.urandom(32)
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, path, x.hex()], stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        c = Cache(path)
        assert c.dead_sessions() == {} and c.blob_size(x) == 1
    finally:
        p.kill()
        p.wait()
    dead = c.dead_sessions()
    assert list(dead.values()) == [[x]] and c.pending_blobs() == [x]
    c.reap_sessions(dead)
    assert c.dead_sessions() == {} and os.listdir(path + ".sessions") == []
    c.close()


def test_a_cache_from_before_sessions_counts_as_one_dead_save(tmp_path):
    import sqlite3

    path = str(tmp_path / "c.sqlite")
    Cache(path).close()
    x = os.urandom(32)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO pending VALUES (?)", (x,))
    db.execute("INSERT INTO meta VALUES ('save_open', '1')")
    db.close()
    c = Cache(path)
    dead = c.dead_sessions()
    assert list(dead.values()) == [[x]]
    c.reap_sessions(dead)
    assert c.dead_sessions() == {}
    c.close()


# ---- a cache that breaks ------------------------------------------------------------


def test_a_corrupt_cache_file_gives_a_warning_and_a_throw_away_cache(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    warnings = []
    c = Cache(str(path), warn=warnings.append)
    a = os.urandom(32)
    c.add_blob(a, 3)
    assert c.commit() and c.blob_size(a) == 3
    c.open_session()
    c.close()
    assert len(warnings) == 1 and "going on without it" in warnings[0], warnings


@pytest.mark.parametrize("how", ["overwritten", "deleted"])
def test_a_cache_broken_under_a_running_save(tmp_path, local_repo, how):
    """The file is overwritten with garbage, or the whole cache directory
    deleted, while a save uses it: the save completes, correct (with a
    warning when it notices), and so does the next one."""
    import sqlite3

    warnings = []
    path = cache_path(local_repo.cache_dir, local_repo.master.repo, "write")
    src = tree(tmp_path)
    save(local_repo, src, Cache(path))  # a cache with something in it
    (src / "d" / "small0").write_bytes(b"changed")
    cache = Cache(path, warn=warnings.append)
    saver = Saver(local_repo.repo("write"), cache)
    real = saver._classify
    broken = []

    def break_it(*a):
        if not broken:
            broken.append(1)
            cache.commit()
            if how == "deleted":
                shutil.rmtree(local_repo.cache_dir)
            else:
                db = sqlite3.connect(path)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                db.close()
                with open(path, "r+b") as f:
                    f.write(os.urandom(os.path.getsize(path)))
        return real(*a)

    saver._classify = break_it
    res = saver.save("c", [str(src)])
    cache.close()
    assert broken and res.stats.files == 31
    if how == "overwritten":
        assert warnings and all("going on without it" in w for w in warnings), warnings
    r = local_repo.repo("read")
    Restorer(r, r.load_snapshot(res.snapshot_id)).restore(str(src), str(tmp_path / "out"))
    assert_same_tree(src, tmp_path / "out")
    again = Cache(path, warn=warnings.append)
    res = save(local_repo, src, again)
    again.close()
    Restorer(r, r.load_snapshot(res.snapshot_id)).restore(str(src), str(tmp_path / "out2"))
    assert_same_tree(src, tmp_path / "out2")


def test_the_walks_forward_scan_finds_what_point_lookups_find_in_any_order(tmp_path):
    """A save looks its files up in walk order through one forward scan of
    the files table (Cache._scan_file); out of order, past deleted rows, for
    paths it does not hold and after a commit of its own it answers as a
    point query does."""
    import random

    from rekkord import cache as cache_mod

    rng = random.Random(7)
    names = [b"a", b"a-b", b"a.py", b"a0", b"b", b"x y", b"\xff", b"z"]
    paths = sorted({b"/t/" + b"/".join(rng.choice(names) for _ in range(rng.randint(1, 4))) for _ in range(400)})
    f = tmp_path / "f"
    f.write_bytes(b"x")
    st = os.stat(f)
    c = Cache(str(tmp_path / "c.sqlite"))
    for i, p in enumerate(paths):
        if i % 3:  # a third of the paths are not in the table: absent files, gaps in the scan
            c.store_file(p, st, bytes([i % 256]) * 40, 1, b"R%d" % i)
    c.close()
    c = Cache(str(tmp_path / "c.sqlite"))

    def point(p):
        return c._read_one(cache_mod._LOOKUP_FILE, (p,))

    def preorder(ps):  # the order of a save's walk: a directory's subtree before its next sibling
        return sorted(ps, key=lambda p: p.split(b"/"))

    orders = [paths, preorder(paths), paths[::7] + paths[3::5], rng.sample(paths, len(paths))]
    assert any(a > b for a, b in zip(orders[1], orders[1][1:]))  # (the walk's order is not the table's)
    for order in orders:
        want = [point(p) for p in order]
        assert [c._scan_file(p) for p in order] == want
        assert sum(w is not None for w in want) > len(order) // 2
    # A row this process writes mid-scan is seen once committed.
    c._scan_file(paths[10])
    c.store_file(b"/t/a0/new", st, b"N" * 40, 1, b"NEW")
    c.commit()
    assert c._scan_file(b"/t/a0/new") == point(b"/t/a0/new") != None  # noqa: E711
    # A path far ahead of the scan (past more than SCAN_SKIP rows) is found too.
    assert c._scan_file(paths[-1]) == point(paths[-1])
    c.close()


def _dirs_of(local_repo, sid, under: bytes) -> dict:
    from rekkord.index import K_DIR
    from rekkord.snapshot import iter_entries

    repo = local_repo.repo("admin")
    return {e.path: (e.mode, e.mtime_ns, e.xattrs) for e in iter_entries(repo, repo.load_snapshot(sid))
            if e.kind == K_DIR and e.path.startswith(under)}


def test_unchanged_directories_reuse_their_cached_record_and_changed_ones_are_read_again(local_repo, tmp_path,
                                                                                      monkeypatch):
    from rekkord.save import SaveOptions

    src = tree(tmp_path)
    (src / "d" / "e").mkdir()
    (src / "other").mkdir()
    os.setxattr(src / "d", "user.note", b"first")
    os.setxattr(src / "d" / "small1", "user.note", b"file")
    under = bytes(src).lstrip(b"/")
    read_dirs = []
    real = Saver._entry

    def counting(self, rel, abspath, st, **kw):
        if os.path.isdir(abspath) and abspath.startswith(bytes(src)):
            read_dirs.append(os.path.relpath(abspath, bytes(src)))
        return real(self, rel, abspath, st, **kw)

    monkeypatch.setattr(Saver, "_entry", counting)
    cache = open_cache(local_repo)
    first = save(local_repo, src, cache)
    assert sorted(read_dirs) == [b".", b"d", b"d/e", b"other"]
    cache.close()
    read_dirs.clear()
    cache = open_cache(local_repo)
    second = save(local_repo, src, cache)
    assert read_dirs == [] and second.stats.dirs == first.stats.dirs  # every record from the cache
    assert _dirs_of(local_repo, second.snapshot_id, under) == _dirs_of(local_repo, first.snapshot_id, under)
    # A mode, an xattr, a new entry: each moves the directory's ctime, so it is read again.
    os.chmod(src / "other", 0o700)
    os.setxattr(src / "d", "user.note", b"second")
    (src / "d" / "e" / "new").write_bytes(b"n")
    third = save(local_repo, src, cache)
    assert sorted(read_dirs) == [b"d", b"d/e", b"other"]
    got = _dirs_of(local_repo, third.snapshot_id, under)
    assert got[under + b"/other"][0] == 0o700
    assert (b"user.note", b"second") in got[under + b"/d"][2]
    assert got[under + b"/d/e"][1] == os.lstat(src / "d" / "e").st_mtime_ns
    # Without xattrs, nothing recorded with them is reused.
    read_dirs.clear()
    fourth = Saver(local_repo.repo("write"), cache, SaveOptions(xattrs=False)).save("c", [str(src)])
    assert sorted(read_dirs) == [b".", b"d", b"d/e", b"other"]
    assert _dirs_of(local_repo, fourth.snapshot_id, under)[under + b"/d"][2] == []
    from rekkord.snapshot import iter_entries

    repo = local_repo.repo("admin")
    xattrs = [[e.xattrs for e in iter_entries(repo, repo.load_snapshot(sid)) if e.path.endswith(b"/d/small1")]
              for sid in (third.snapshot_id, fourth.snapshot_id)]
    # (the unchanged file's cached record, with its xattr, is not reused by a save without xattrs)
    assert xattrs == [[[(b"user.note", b"file")]], [[]]]
    cache.close()

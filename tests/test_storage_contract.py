"""The storage contract (rekkord/storage/base.py), checked on every backend:
memory, a local directory, S3 (SeaweedFS) and SFTP (OpenSSH), the last two
on real servers started by the fixtures in conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import servers

from rekkord.errors import ObjectExists, ObjectNotFound
from rekkord.storage import Storage, open_storage
from rekkord.storage.memory import MemoryStorage

BACKENDS = [
    "memory",
    "local",
    pytest.param("s3", marks=pytest.mark.s3),
    pytest.param("sftp", marks=pytest.mark.sftp),
]


class Location:
    """A fresh storage plus a way to plant a stray temporary file in it."""

    def __init__(self, storage: Storage, directory: Path | None, url: str | None = None,
                 options: dict | None = None):
        self.storage = storage
        self.directory = directory  # the objects' directory on this machine, if any
        self.url, self.options = url, options  # to open it again in another process (None: memory)

    def plant_temp(self, subdir: str = "") -> bool:
        """Put a leftover temporary file (as an interrupted writer leaves)
        next to the objects; False when the backend has none."""
        if self.directory is None:
            return False
        d = self.directory / subdir if subdir else self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / ".tmp-0123456789abcdef").write_bytes(b"half a blob")
        return True


@pytest.fixture(params=BACKENDS)
def loc(request, tmp_path):
    kind = request.param
    url = options = None
    if kind == "memory":
        storage, directory = MemoryStorage(), None
    elif kind == "local":
        directory = tmp_path / "repo"
        url, options = str(directory), {}
        storage = open_storage(url)
    elif kind == "s3":
        srv = request.getfixturevalue("s3_server")
        url, options = srv.url(), srv.options()
        storage, directory = open_storage(url, options), None
    else:
        srv = request.getfixturevalue("sftp_server")
        url, options = srv.url(), srv.options()
        storage = open_storage(url, options)
        directory = Path(url.split(f":{srv.port}", 1)[1])  # the server is this machine
    storage.create()
    try:
        yield Location(storage, directory, url, options)
    finally:
        storage.close()


@pytest.fixture
def st(loc):
    return loc.storage


def test_write_read_stat(st):
    assert st.stat("config") is None
    assert not st.exists("config")
    st.write("config", b"hello world")
    assert st.read("config") == b"hello world"
    assert st.stat("config") == 11
    assert st.exists("config")
    st.write("keys/k1", b"")
    assert st.read("keys/k1") == b""
    assert st.stat("keys/k1") == 0
    st.write("blobs/ab/ab0123", bytearray(b"\x00\xff" * 10))
    assert st.read("blobs/ab/ab0123") == b"\x00\xff" * 10


def test_range_reads(st):
    data = bytes(range(256)) * 4
    st.write("obj", data)
    assert st.read("obj", 0, 10) == data[:10]
    assert st.read("obj", 100, 50) == data[100:150]
    assert st.read("obj", 1000) == data[1000:]
    assert st.read("obj", 1000, 100) == data[1000:]  # shorter at the end
    assert st.read("obj", 1024) == b""
    assert st.read("obj", 1024, 10) == b""
    assert st.read("obj", 5000, 10) == b""
    assert st.read("obj", 10, 0) == b""
    assert st.read("obj", offset=3) == data[3:]


def test_missing_objects(st):
    with pytest.raises(ObjectNotFound):
        st.read("nothing")
    with pytest.raises(ObjectNotFound):
        st.read("blobs/zz/nothing", 10, 10)
    with pytest.raises(ObjectNotFound):
        st.read("nothing", 0, 0)
    assert st.stat("nothing") is None
    assert st.stat("no/such/dir") is None
    st.delete("nothing")  # not an error
    st.delete("no/such/dir")


def test_exclusive_write_never_replaces(st):
    st.write("snapshots/s1", b"first")
    with pytest.raises(ObjectExists):
        st.write("snapshots/s1", b"second")
    with pytest.raises(ObjectExists):
        st.write("snapshots/s1", b"first")  # even with the same content
    assert st.read("snapshots/s1") == b"first"
    st.write("snapshots/s1", b"third", exclusive=False)
    assert st.read("snapshots/s1") == b"third"
    assert sorted(st.list("snapshots/")) == [("snapshots/s1", 5)]


def test_list_by_prefix(st):
    names = {
        "config": b"c",
        "keys/a": b"ka",
        "blobs/ab/ab01": b"1",
        "blobs/ab/ab02": b"22",
        "blobs/ac/ac01": b"333",
        "blobs/b0/b001": b"4444",
        "snapshots/2024-01-01": b"55555",
    }
    assert list(st.list()) == []
    for n, d in names.items():
        st.write(n, d)
    assert sorted(st.list()) == sorted((n, len(d)) for n, d in names.items())
    assert sorted(st.list("blobs/")) == [("blobs/ab/ab01", 1), ("blobs/ab/ab02", 2), ("blobs/ac/ac01", 3), ("blobs/b0/b001", 4)]
    assert sorted(st.list("blobs/a")) == [("blobs/ab/ab01", 1), ("blobs/ab/ab02", 2), ("blobs/ac/ac01", 3)]
    assert sorted(st.list("blobs/ab/")) == [("blobs/ab/ab01", 1), ("blobs/ab/ab02", 2)]
    assert sorted(st.list("blobs/ab/ab02")) == [("blobs/ab/ab02", 2)]
    assert list(st.list("blobs/zz/")) == []
    assert list(st.list("nothing")) == []
    assert sorted(st.list("conf")) == [("config", 1)]


def test_delete(st):
    st.write("blobs/ab/ab01", b"x")
    st.write("blobs/ab/ab02", b"y")
    st.delete("blobs/ab/ab01")
    assert st.stat("blobs/ab/ab01") is None
    with pytest.raises(ObjectNotFound):
        st.read("blobs/ab/ab01")
    assert list(st.list("blobs/")) == [("blobs/ab/ab02", 1)]
    st.delete("blobs/ab/ab01")
    # a deleted name can be written again
    st.write("blobs/ab/ab01", b"again")
    assert st.read("blobs/ab/ab01") == b"again"


def test_rename_moves_and_never_replaces(loc):
    st = loc.storage
    data = os.urandom(3000)
    st.write("blobs/ab/ab01", data)
    ino = (loc.directory / "blobs/ab/ab01").stat().st_ino if loc.directory else None
    st.rename("blobs/ab/ab01", "fossils/c1/ab/ab01")  # into directories that do not exist yet
    assert st.stat("blobs/ab/ab01") is None and st.read("fossils/c1/ab/ab01") == data
    assert sorted(st.list()) == [("fossils/c1/ab/ab01", 3000)]
    if ino is not None:  # local and SFTP move the file itself: no copy, no space needed
        assert (loc.directory / "fossils/c1/ab/ab01").stat().st_ino == ino
    with pytest.raises(ObjectNotFound):
        st.rename("blobs/ab/ab01", "fossils/c2/ab/ab01")
    assert st.stat("fossils/c2/ab/ab01") is None
    # an existing destination is never replaced, and the source stays
    st.write("blobs/ab/ab01", b"new")
    with pytest.raises(ObjectExists):
        st.rename("blobs/ab/ab01", "fossils/c1/ab/ab01")
    assert st.read("blobs/ab/ab01") == b"new" and st.read("fossils/c1/ab/ab01") == data
    st.delete("blobs/ab/ab01")
    st.rename("fossils/c1/ab/ab01", "blobs/ab/ab01")  # and back (resurrection)
    assert st.read("blobs/ab/ab01") == data and sorted(st.list()) == [("blobs/ab/ab01", 3000)]


def test_concurrent_renames_to_one_name(st):
    """Many movers race for one destination: exactly one wins, the other
    sources stay whole."""
    for i in range(8):
        st.write(f"blobs/ab/src{i}", b"%d" % i * 100)
    outcomes = []

    def move(i):
        try:
            st.rename(f"blobs/ab/src{i}", "fossils/c/ab/dst")
            outcomes.append(i)
        except ObjectExists:
            pass

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(move, range(8)))
    assert len(outcomes) == 1
    assert st.read("fossils/c/ab/dst") == b"%d" % outcomes[0] * 100
    assert sorted(n for n, _ in st.list("blobs/")) == sorted(f"blobs/ab/src{i}" for i in range(8) if i != outcomes[0])


def test_object_times_are_the_storages(loc):
    st = loc.storage
    before = st.now()
    st.write("blobs/ab/ab01", b"x")
    st.write("snapshots/s1", b"yy")
    after = st.now()
    m = st.mtime("blobs/ab/ab01")
    assert before - 2 <= m <= after + 2  # S3 and SFTP times have whole seconds
    assert st.mtime("blobs/ab/nothing") is None and st.mtime("no/such/dir") is None
    times = {n: (size, t) for n, size, t in st.list_times()}
    assert {n: size for n, (size, _) in times.items()} == dict(st.list())
    assert times["blobs/ab/ab01"][1] == m and abs(times["snapshots/s1"][1] - st.mtime("snapshots/s1")) < 1e-6
    assert [n for n, _, _ in st.list_times("snap")] == ["snapshots/s1"]
    if loc.plant_temp():
        assert ".tmp-0123456789abcdef" not in {n for n, _, _ in st.list_times()}


@pytest.mark.skipif(servers.faketime_lib() is None, reason="needs faketime (apt-get install faketime)")
def test_storage_time_ignores_a_skewed_local_clock(loc):
    """A writer whose clock is 3 days behind still reads true times from the
    storage (and, on S3, has its requests accepted: the clock is corrected
    from the server's Date header)."""
    if loc.url is None:
        pytest.skip("the memory backend lives in one process")
    code = ("import json, sys, time\n"
            "from rekkord.storage import open_storage\n"
            "st = open_storage(sys.argv[1], json.loads(sys.argv[2]))\n"
            "st.write('blobs/ab/skewed', b'x')\n"
            "print(json.dumps([time.time(), st.now(), st.mtime('blobs/ab/skewed'), list(st.list_times('blobs/'))]))\n")
    p = subprocess.run([sys.executable, "-c", code, loc.url, json.dumps(loc.options)],
                       env={**os.environ, **servers.faketime_env("-3d")}, capture_output=True, text=True,
                       timeout=120, cwd=Path(__file__).parent.parent)
    assert p.returncode == 0, p.stderr
    local, now, mtime, listed = json.loads(p.stdout)
    real = time.time()
    assert real - local > 2.9 * 86400  # the writer's clock was off...
    assert abs(now - real) < 600 and abs(mtime - real) < 600  # ...the storage's was not
    assert listed == [["blobs/ab/skewed", 1, mtime]]
    assert loc.storage.read("blobs/ab/skewed") == b"x"


def test_temp_files_are_not_listed(loc):
    st = loc.storage
    st.write("blobs/ab/ab01", b"x")
    planted = loc.plant_temp("blobs/ab") and loc.plant_temp()
    if planted:
        assert st.stat("blobs/ab/.tmp-0123456789abcdef") is not None  # it is there...
    assert sorted(st.list()) == [("blobs/ab/ab01", 1)]  # ...but never listed
    assert sorted(st.list("blobs/ab/")) == [("blobs/ab/ab01", 1)]

    # nor while writers are busy
    stop = threading.Event()
    seen: set[str] = set()

    def lister():
        while not stop.is_set():
            seen.update(n for n, _ in st.list("blobs/"))

    t = threading.Thread(target=lister)
    t.start()
    try:
        for i in range(30):
            st.write(f"blobs/cd/cd{i:04d}", os.urandom(2000))
    finally:
        stop.set()
        t.join()
    assert all(n == "blobs/ab/ab01" or n.startswith("blobs/cd/cd0") for n in seen), seen
    assert len(list(st.list("blobs/cd/"))) == 30


def test_old_temporaries_are_removed_and_recent_ones_kept(loc):
    """A killed writer's temporary file is never listed, so only
    remove_temporaries can reclaim it; one still being written (recent) stays."""
    st = loc.storage
    st.write("blobs/ab/ab01", b"x")
    if not loc.plant_temp("blobs/ab"):
        assert st.remove_temporaries(0) == (0, 0)
        return
    old = loc.directory / "blobs" / "ab" / ".tmp-0123456789abcdef"
    recent = loc.directory / ".tmp-fedcba9876543210"
    recent.write_bytes(b"in flight")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert st.remove_temporaries(3600) == (1, len(b"half a blob"))
    assert not old.exists() and recent.exists()
    assert sorted(st.list()) == [("blobs/ab/ab01", 1)] and st.read("blobs/ab/ab01") == b"x"
    assert st.remove_temporaries(3600) == (0, 0)


def test_concurrent_writers(st):
    n = max(4, min(st.connections, 16))
    assert isinstance(st.connections, int) and st.connections >= 1

    blobs = {f"blobs/{i % 7:02x}/{i:064x}": os.urandom(1000 + i) for i in range(64)}
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda kv: st.write(*kv), blobs.items()))
    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(st.read, blobs))
    assert got == list(blobs.values())
    assert sorted(st.list("blobs/")) == sorted((k, len(v)) for k, v in blobs.items())

    # many writers race for one name: exactly one wins, the rest are refused
    barrier = threading.Barrier(n)

    def race(i):
        data = f"writer {i}".encode() * 100
        barrier.wait()
        try:
            st.write("snapshots/raced", data)
            return data
        except ObjectExists:
            return None

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(race, range(n)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert st.read("snapshots/raced") == winners[0]


def test_readers_see_whole_objects(st):
    data = os.urandom(3 * 1024 * 1024)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            try:
                got = st.read("blobs/ab/big")
            except ObjectNotFound:
                continue
            if got != data:
                bad.append(len(got))
            return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    written = False
    try:
        st.write("blobs/ab/big", data)
        written = True
    finally:
        if not written:
            stop.set()
        for t in threads:
            t.join(timeout=60)
        stop.set()
    assert not bad


def test_large_object(st):
    data = os.urandom(20 * 1024 * 1024)
    st.write("blobs/ff/large", data)
    assert st.stat("blobs/ff/large") == len(data)
    assert st.read("blobs/ff/large") == data
    off = 7 * 1024 * 1024 + 12345
    assert st.read("blobs/ff/large", off, 3 * 1024 * 1024) == data[off : off + 3 * 1024 * 1024]
    assert st.read("blobs/ff/large", len(data) - 100, 1000) == data[-100:]


def test_create_is_idempotent(st):
    st.create()
    st.write("config", b"x")
    st.create()
    assert st.read("config") == b"x"


def test_context_manager_closes():
    with open_storage("memory://") as s:
        s.write("a", b"b")


def test_sdks_are_imported_lazily():
    code = (
        "import sys, rekkord, rekkord.storage, rekkord.storage.base, rekkord.errors\n"
        "from rekkord.storage import open_storage\n"
        "open_storage('memory://')\n"
        "bad = [m for m in ('boto3', 'botocore', 'paramiko') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)

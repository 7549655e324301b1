"""rekkord.mount: real FUSE mounts (fuse3, as root) served by the real CLI in a
subprocess, read with ordinary tools, compared with the source, unmounted by
fusermount3, umount, SIGINT and SIGTERM.  The laziness of reads and of index
loading is shown on the operations object itself."""

import bisect
import errno
import os
import random
import signal
import stat
import subprocess
import sys
import time

import pytest

from rekkord.cache import Cache
from rekkord.mount import SnapshotFS, snapshot_dir_name
from rekkord.save import Saver
from treeutil import make_awkward_tree, snapshot_tree

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root")


def save(local_repo, paths, channel="c"):
    return Saver(local_repo.repo("write"), Cache(None)).save(channel, [str(p) for p in paths]).snapshot_id


class Mount:
    def __init__(self, local_repo, what, mnt, key="read", extra=()):
        self.mnt = str(mnt)
        os.makedirs(self.mnt, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
        env.update(REKKORD_REPOSITORY=local_repo.url, REKKORD_KEY_FILE=local_repo.key_files[key],
                   REKKORD_CACHE_DIR=local_repo.cache_dir)
        self.proc = subprocess.Popen([sys.executable, "-m", "rekkord", *extra, "mount", what, self.mnt], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise AssertionError(f"mount exited {self.proc.returncode}: {err.decode()}")
            assert time.monotonic() < deadline, "mount did not appear"
            time.sleep(0.05)

    def wait(self, timeout=60):
        out, err = self.proc.communicate(timeout=timeout)
        self.stderr = err.decode()
        return self.proc.returncode

    def close(self):
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], check=False)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def mounts():
    opened = []

    def open_(*a, **kw):
        m = Mount(*a, **kw)
        opened.append(m)
        return m

    yield open_
    for m in opened:
        m.close()


def test_one_snapshot_shows_the_source_tree(local_repo, mounts, tmp_path):
    src = tmp_path / "src"
    make_awkward_tree(src)
    sid = save(local_repo, [src])
    m = mounts(local_repo, sid[:8], tmp_path / "mnt")
    root = tmp_path / "mnt" / str(src).lstrip("/")
    a = snapshot_tree(src)
    b = snapshot_tree(root)
    # Hard links are shown as independent files with the same content.
    assert a.pop("__hardlinks__") and b.pop("__hardlinks__") == []
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k] == b[k], k
    st = os.lstat(root / "setuid-bin")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_nlink == 1
    assert os.readlink(root / "link-dangling") == "/nonexistent/target"
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    # Read-only.
    with pytest.raises(OSError) as e:
        open(root / "plain.txt", "w")
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        os.mkdir(root / "newdir")
    subprocess.run(["fusermount3", "-u", str(tmp_path / "mnt")], check=True)
    assert m.wait() == 0
    assert "mounted snapshot" in m.stderr and "unmounted" in m.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_all_snapshots_by_channel_and_time(local_repo, mounts, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "doc.txt").write_text("version 1\n")
    s1 = save(local_repo, [src], channel="web")
    (src / "doc.txt").write_text("version 2, longer\n")
    s2 = save(local_repo, [src], channel="web")
    s3 = save(local_repo, [src], channel="db")
    repo = local_repo.repo("read")
    names = {sid: snapshot_dir_name(repo.load_snapshot(sid)) for sid in (s1, s2, s3)}
    mounts(local_repo, "all", tmp_path / "mnt")
    mnt = tmp_path / "mnt"
    assert sorted(os.listdir(mnt)) == ["db", "web"]
    assert sorted(os.listdir(mnt / "web")) == sorted([names[s1], names[s2], "latest"])
    assert os.readlink(mnt / "web" / "latest") == names[s2]
    rel = str(src / "doc.txt").lstrip("/")
    assert (mnt / "web" / names[s1] / rel).read_text() == "version 1\n"
    assert (mnt / "web" / "latest" / rel).read_text() == "version 2, longer\n"
    assert (mnt / "db" / names[s3] / rel).stat().st_size == len("version 2, longer\n")
    # A snapshot directory's time is the snapshot's.
    t = repo.load_snapshot(s1).time_ns
    assert os.stat(mnt / "web" / names[s1]).st_mtime_ns == t


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "umount"])
def test_clean_unmount(local_repo, mounts, tmp_path, how):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    sid = save(local_repo, [src])
    m = mounts(local_repo, sid, tmp_path / "mnt")
    assert (tmp_path / "mnt" / str(src).lstrip("/") / "f").read_text() == "x"
    if how == "umount":
        subprocess.run(["umount", str(tmp_path / "mnt")], check=True)
    else:
        m.proc.send_signal(getattr(signal, how))
    assert m.wait() == 0
    assert "Traceback" not in m.stderr
    assert not os.path.ismount(tmp_path / "mnt")


def test_grep_a_tree_and_read_a_big_file(local_repo, mounts, tmp_path):
    """Ordinary tools on a mounted tree: grep -r finds what it finds in the
    source; a big file reads back identical with dd at odd offsets."""
    src = tmp_path / "src"
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "needle", "delta"]
    for d in range(20):
        (src / f"d{d:02d}").mkdir(parents=True)
        for f in range(25):
            text = "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(30))
            (src / f"d{d:02d}" / f"f{f:02d}.txt").write_text(text)
    big = rng.randbytes(12 << 20)
    (src / "big.bin").write_bytes(big)
    sid = save(local_repo, [src])
    mounts(local_repo, sid, tmp_path / "mnt")
    root = tmp_path / "mnt" / str(src).lstrip("/")
    g1 = subprocess.run(["grep", "-rc", "needle", "."], cwd=src, capture_output=True, check=True).stdout
    g2 = subprocess.run(["grep", "-rc", "needle", "."], cwd=root, capture_output=True, check=True).stdout
    assert sorted(g1.splitlines()) == sorted(g2.splitlines())
    off = 5_000_001
    out = subprocess.run(["dd", f"if={root / 'big.bin'}", "bs=1", f"skip={off}", "count=4097", "status=none"],
                         capture_output=True, check=True).stdout
    assert out == big[off:off + 4097]
    with open(root / "big.bin", "rb") as f:
        assert f.read() == big


def test_mount_errors_are_one_line(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sid = save(local_repo, [src])
    env = {"REKKORD_REPOSITORY": local_repo.url}
    p = run_cli("-k", local_repo.key_files["read"], "mount", sid, tmp_path / "nope", env=env)
    assert p.returncode == 6 and p.stderr.decode().startswith("rekkord: error: mount point")
    p = run_cli("-k", local_repo.key_files["audit"], "mount", sid, tmp_path, env=env)
    assert p.returncode == 5 and b"audit key cannot" in p.stderr
    (tmp_path / "file").write_text("")
    p = run_cli("-k", local_repo.key_files["read"], "mount", "all", tmp_path / "file", env=env)
    assert p.returncode != 0 and len(p.stderr.splitlines()) == 1


# ---- the operations object, without the kernel --------------------------------------------


def test_index_loads_on_first_access_and_reads_fetch_only_needed_blobs(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(3).randbytes(20 << 20)
    (src / "big.bin").write_bytes(data)
    s1 = save(local_repo, [src], channel="a")
    save(local_repo, [src], channel="b")
    repo = local_repo.repo("read")
    fs = SnapshotFS(repo, None, cache_bytes=8 << 20, threads=2)
    try:
        assert sorted(n for n, *_ in [x if isinstance(x, tuple) else (x,) for x in fs.readdir("/")]) == \
            [".", "..", "a", "b"]
        trees = list(fs.trees.values())
        assert len(trees) == 2 and all(t._root is None for t in trees)  # nothing loaded yet
        name = snapshot_dir_name(repo.load_snapshot(s1))
        fs.getattr(f"/a/{name}")
        assert all(t._root is None for t in trees)  # a stat of the snapshot dir does not load it
        path = f"/a/{name}{src}/big.bin"
        assert fs.getattr(path)["st_size"] == len(data)
        assert sum(t._root is not None for t in trees) == 1  # only the one entered
        fh = fs.open(path, os.O_RDONLY)
        before = fs.fetcher.fetched
        # 4 KiB at about 10 MiB, inside one chunk (the chunk boundaries depend on the
        # repository's secret: a read at 10 MiB exactly may cross one)
        r = fs.handles[fh]
        i = bisect.bisect_right(r.starts, 10 << 20) - 1
        off = min(10 << 20, r.starts[i] + r.extents[i].length - 4096)
        assert fs.read(path, 4096, off, fh) == data[off:off + 4096]
        assert fs.fetcher.fetched - before == 1  # one blob for one small random read
        fs.release(path, fh)
        with pytest.raises(OSError) as e:
            fs.open(path, os.O_WRONLY)
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:
            fs.getattr(f"/a/{name}/nope")
        assert e.value.errno == errno.ENOENT
        assert fs.readlink("/a/latest") == name or fs.readlink("/a/latest").endswith(s1[:8])
    finally:
        fs.close()

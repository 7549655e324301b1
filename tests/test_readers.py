"""rekkord.readers: the reader processes of a save (each runs
rekkord/readworker.py alone), their answers, their deaths and the save's."""

import os
import signal
import subprocess
import sys
import time

import pytest
from rekkord import index as ix, readers


def stat_of(p):
    s = os.lstat(p)
    return (os.fsencode(p), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a").write_bytes(b"alpha" * 100)
    (tmp_path / "b").write_bytes(b"")
    (tmp_path / "x").write_bytes(b"with xattr")
    try:
        os.setxattr(tmp_path / "x", "user.note", b"v1")
        os.setxattr(tmp_path / "x", "user.alpha", b"v0")
    except OSError:
        pass
    (tmp_path / "secret").write_bytes(b"no")
    os.chmod(tmp_path / "secret", 0)
    os.symlink(tmp_path / "a", tmp_path / "link")
    return tmp_path


def expected(tmp_path):
    r = readers.BatchReader(1 << 20, b"k" * 32, 1, True)
    return r, r.read([stat_of(tmp_path / n) for n in ("a", "b", "x", "link")])


def test_the_processes_answer_as_the_threads_do(files):
    reader, local = expected(files)
    pool = readers.ReaderPool(2, reader)
    try:
        futs = [pool.submit([stat_of(files / n) for n in ("a", "b", "x", "link")]) for _ in range(6)]
        for f in futs:
            assert f.result(30) == local
    finally:
        pool.shutdown()
    data, flags, msg, xattrs, mark, n = local[0]
    assert data == b"alpha" * 100 and flags == 0 and msg is None and n == 500
    if local[2][3]:
        assert local[2][3] == [(b"user.alpha", b"v0"), (b"user.note", b"v1")]  # sorted
    # a symlink is never read through
    assert local[3][0] is None and local[3][1] == ix.F_UNREADABLE and "cannot open" in local[3][2]


def test_an_unreadable_or_changed_file_is_reported_not_faked(files):
    reader = readers.BatchReader(1 << 20, b"k" * 32, 1, True)
    stale = list(stat_of(files / "a"))
    stale[1] -= 1  # the walk saw another size
    pool = readers.ReaderPool(1, reader)
    try:
        out = pool.submit([tuple(stale), stat_of(files / "secret")]).result(30)
    finally:
        pool.shutdown()
    assert out[0][1] & ix.F_CHANGED and out[0][2] == "file changed while it was being read"
    if os.geteuid() != 0:  # (root reads anything)
        assert out[1][0] is None and out[1][1] == ix.F_UNREADABLE


def test_a_killed_reader_fails_its_batches_and_the_others_go_on(files):
    reader, local = expected(files)
    pool = readers.ReaderPool(2, reader)
    try:
        first = pool.workers[0]
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        deadline = time.monotonic() + 10
        while not first.dead and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.dead
        with pytest.raises(readers.ReaderDied):
            first.submit([stat_of(files / "a")]).result(10)
        # the pool hands new batches to the live one
        assert pool.submit([stat_of(files / n) for n in ("a", "b", "x", "link")]).result(30) == local
        pool.workers[1].proc.kill()
        pool.workers[1].proc.wait()
        time.sleep(0.2)
        with pytest.raises(readers.ReaderDied):
            pool.submit([stat_of(files / "a")]).result(10)
    finally:
        pool.shutdown()


def test_readers_end_quietly_when_the_save_is_killed(tmp_path):
    """A save killed with SIGKILL leaves no reader behind, and nothing on stderr."""
    script = (
        "import os, sys, time\n"
        "from rekkord import readers\n"
        "pool = readers.ReaderPool(2, readers.BatchReader(1 << 20, b'k' * 32, 1, True))\n"
        "print(' '.join(str(w.proc.pid) for w in pool.workers), flush=True)\n"
        "for _ in range(50):\n"
        f"    pool.submit([({os.fsencode(tmp_path / 'f')!r}, 3, 0, 0, 0)] * 200)\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "f").write_bytes(b"abc")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    pids = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 2
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") and
                                              b"zombie" not in open(f"/proc/{pid}/status", "rb").read()
                                              for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or b"zombie" in open(f"/proc/{pid}/status", "rb").read()
    assert p.stderr.read() == b""


def test_a_worker_never_runs_the_callers_main_module(tmp_path):
    """The workers are `python -m rekkord.readers`: a script without an
    `if __name__ == "__main__"` guard is not run again in each of them (as
    multiprocessing's spawn and forkserver would)."""
    marker = tmp_path / "ran"
    script = tmp_path / "user_script.py"
    script.write_text(
        "import os\n"
        "from rekkord import readers\n"
        f"open({str(marker)!r}, 'a').write('x')\n"
        "pool = readers.ReaderPool(2, readers.BatchReader(1 << 20, b'k' * 32, 1, True))\n"
        f"print(pool.submit([({os.fsencode(script)!r}, 0, 0, 0, 0)]).result(30)[0][1])\n"
        "pool.shutdown()\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, env={**os.environ, "PYTHONPATH": os.getcwd()},
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert marker.read_text() == "x"

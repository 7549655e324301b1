"""rekkord.readworker: what a reader process runs (and the save's read
threads too): reading small files, and the pipe protocol."""

import io
import os
import subprocess
import sys

from hypothesis import given, settings, strategies as st

from rekkord import crypto, index as ix, readworker
from rekkord.chunker import PackCutter


def test_its_flags_are_the_indexs():
    assert (readworker.F_UNREADABLE, readworker.F_CHANGED, readworker.F_PARTIAL) == \
        (ix.F_UNREADABLE, ix.F_CHANGED, ix.F_PARTIAL)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000), st.binary(min_size=32, max_size=32), st.integers(0, 6))
def test_the_mark_is_the_pack_cutters(data, key, bits):
    cutter = PackCutter(None, key=key, bits=bits)
    rule = crypto.keyed_hash(key, data, length=1)[0] & ((1 << bits) - 1) == 0  # docs/format.md
    assert readworker.BatchReader(1 << 20, key, cutter.mask, True).mark(data) == cutter.cut_mark(data) == rule


def test_a_file_that_grew_past_the_limit_is_read_no_further(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 300_000)
    s = os.stat(p)
    out = readworker.BatchReader(1000, b"k" * 32, 1, False).read(
        [(os.fsencode(p), 100, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)])
    data, flags, msg, xattrs, mark, n = out[0]
    assert 1000 < len(data) < 300_000 and n == len(data) and flags & ix.F_CHANGED and xattrs == []


def _reads(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.read

    def counted(fd, n):
        calls.append(n)
        return real(fd, n)

    monkeypatch.setattr(readworker.os, "read", counted)
    return calls


def test_a_file_of_the_size_the_walk_saw_takes_one_read(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"y" * 5000)
    s = os.stat(p)
    calls = _reads(monkeypatch)
    data, flags, msg, n = readworker.read_small(os.fsencode(p), 5000, s.st_mtime_ns, s.st_ctime_ns, s.st_ino,
                                                1 << 20, None)
    assert (data, flags, msg, n) == (b"y" * 5000, 0, None, 5000) and len(calls) == 1


def test_a_file_that_grew_or_shrank_after_the_walk_is_read_whole_and_flagged(tmp_path, monkeypatch):
    p = tmp_path / "f"
    p.write_bytes(b"z" * 5000)
    s = os.stat(p)
    calls = _reads(monkeypatch)
    for seen in (4000, 6000):  # the walk saw it smaller, or larger
        data, flags, msg, n = readworker.read_small(os.fsencode(p), seen, s.st_mtime_ns, s.st_ctime_ns, s.st_ino,
                                                    1 << 20, None)
        assert data == b"z" * 5000 and n == 5000 and flags & ix.F_CHANGED and "changed" in msg
    assert len(calls) == 4  # each read to the end: the short read alone proves nothing


def test_a_short_read_below_the_size_reads_on(tmp_path, monkeypatch):
    """A file system may answer a read with fewer bytes than there are (FUSE,
    network file systems): the reader goes on to the end, nothing is lost."""
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 40)
    s = os.stat(p)
    real = os.read
    monkeypatch.setattr(readworker.os, "read", lambda fd, n: real(fd, min(n, 1000)))
    data, flags, msg, n = readworker.read_small(os.fsencode(p), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino,
                                                1 << 20, None)
    assert data == p.read_bytes() and (flags, msg, n) == (0, None, s.st_size)


def test_serve_answers_each_batch_in_order(tmp_path):
    (tmp_path / "a").write_bytes(b"aaa")
    s = os.stat(tmp_path / "a")
    one = (os.fsencode(tmp_path / "a"), 3, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
    req = io.BytesIO()
    reader = readworker.BatchReader(1 << 20, b"k" * 32, 1, True)
    readworker._send(req, reader.args())
    readworker._send(req, [one])
    readworker._send(req, [one, one])
    req.seek(0)
    out = io.BytesIO()
    readworker.serve(req, out)
    out.seek(0)
    assert readworker._recv(out) == reader.read([one])
    assert readworker._recv(out) == reader.read([one, one])
    assert readworker._recv(out) is None


def test_a_worker_is_lean_and_needs_nothing_but_its_path():
    """It starts with -S -E: no site-packages processing, no PYTHON* variables."""
    from rekkord import readers

    root = os.path.dirname(os.path.dirname(os.path.abspath(readworker.__file__)))
    env = {"REKKORD_READER_PATH": os.pathsep.join([root] + [p for p in sys.path if p]), "PATH": os.environ["PATH"]}
    boot = readers._BOOT.replace("w.main()", "print(sorted(m for m in sys.modules if m.startswith('rekkord')))")
    p = subprocess.run([sys.executable, "-S", "-E", "-c", boot], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['rekkord', 'rekkord.readworker']"

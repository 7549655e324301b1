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

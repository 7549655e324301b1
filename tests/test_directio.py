"""rekkord.directio: files written past the page cache come out byte for byte,
with holes where the data has aligned zero blocks, on file systems that take
O_DIRECT and on those that refuse it."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from rekkord import directio
from rekkord.storage.local import LocalStorage

HOLE = 64 * 1024
B = directio.BUFFER


def _direct_ok(path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return directio.supported(fd)
    finally:
        os.close(fd)


@pytest.fixture
def ddir(tmp_path):
    if not _direct_ok(tmp_path):
        pytest.skip("the test directory's file system does not take O_DIRECT")
    return tmp_path


def _write(path, parts, hole=HOLE) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        w = directio.DirectWriter(fd, hole)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        size = 0  # an int part is a gap: zeros the writer is not given
        for p in parts:
            if not isinstance(p, int):
                w.write(p, size)
            size += p if isinstance(p, int) else len(p)
        end = w.finish()
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT  # cleared for what the caller does next
        if end != size:
            os.ftruncate(fd, size)
        return end
    finally:
        os.close(fd)


def _expected(parts) -> bytes:
    return b"".join(bytes(p) if isinstance(p, int) else p for p in parts)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, B - 1, B, B + 1, 3 * B + 12345])
def test_sizes_round_trip(ddir, size):
    data = os.urandom(size)
    p = ddir / "f"
    assert _write(p, [data]) == size
    assert p.read_bytes() == data


_POOL = os.urandom(3 * B + 4096)


@settings(max_examples=40, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(min_value=0, max_value=4096), hs.integers(min_value=0, max_value=3 * B)),
                max_size=6))
def test_any_cut_of_the_stream_round_trips(tmp_path_factory, cuts):
    d = tmp_path_factory.mktemp("d")
    if not _direct_ok(d):
        pytest.skip("no O_DIRECT here")
    parts = [_POOL[off:off + n] for off, n in cuts]
    _write(d / "f", parts)
    assert (d / "f").read_bytes() == b"".join(parts)


def test_aligned_zero_blocks_become_holes(ddir):
    data = os.urandom(HOLE)
    parts = [data, bytes(8 * HOLE), data, 3 * HOLE + 100, data[:5000]]
    p = ddir / "f"
    _write(p, parts)
    assert p.read_bytes() == _expected(parts)
    # 11 blocks of data were written; the 8 zero blocks and the 3 skipped ones are holes
    assert p.stat().st_blocks * 512 < 6 * HOLE


def test_a_trailing_hole_is_left_to_ftruncate(ddir):
    data = os.urandom(3000)
    parts = [data, bytes(B + 2 * HOLE - 3000)]
    p = ddir / "f"
    end = _write(p, parts)
    assert end < len(_expected(parts))
    assert p.read_bytes() == _expected(parts)


def test_writing_behind_what_was_written_is_refused(ddir):
    fd = os.open(ddir / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        w = directio.DirectWriter(fd, HOLE)
        w.write(b"x" * 5000, 0)
        with pytest.raises(ValueError):
            w.write(b"y", 4999)
        w.finish()
    finally:
        os.close(fd)


def test_hole_zero_writes_zero_blocks(ddir):
    parts = [bytes(2 * B + 7)]
    p = ddir / "f"
    assert _write(p, parts, hole=0) == 2 * B + 7
    assert p.read_bytes() == _expected(parts)
    assert p.stat().st_blocks * 512 >= 2 * B


def test_refused_alignment_switches_to_the_page_cache(ddir, monkeypatch):
    """A file system that takes the flag but refuses a direct write (EINVAL)
    gets the rest of the file buffered, whole."""
    real = os.pwrite
    calls = []

    def pwrite(fd, data, off):
        direct = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT
        calls.append(bool(direct))
        if direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, off)

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    data = os.urandom(2 * B + 999)
    p = ddir / "f"
    _write(p, [data])
    assert p.read_bytes() == data
    assert calls[0] is True and calls.count(True) == 1


def test_other_write_errors_pass_through(ddir, monkeypatch):
    def pwrite(fd, data, off):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directio.os, "pwrite", pwrite)
    with pytest.raises(OSError) as ei:
        _write(ddir / "f", [os.urandom(B)])
    assert ei.value.errno == errno.ENOSPC


def test_a_file_that_refuses_the_flag_raises_unsupported(ddir, monkeypatch):
    real = fcntl.fcntl

    def fake(fd, cmd, arg=0):
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(directio.fcntl, "fcntl", fake)
    fd = os.open(ddir / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(directio.DirectUnsupported):
            directio.DirectWriter(fd, HOLE)
    finally:
        os.close(fd)


def test_only_block_file_systems_are_chosen(tmp_path):
    for path in ("/proc", "/dev/shm"):
        if os.path.isdir(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                assert directio.fs_type(fd) not in directio.FS_TYPES
                assert not directio.supported(fd)
            finally:
                os.close(fd)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert directio.fs_type(fd) is not None
    finally:
        os.close(fd)


# ---- the local storage backend ------------------------------------------------------


def _spy(monkeypatch):
    made = []
    real = directio.DirectWriter

    def spy(fd, hole):
        w = real(fd, hole)
        made.append(w)
        return w

    monkeypatch.setattr(directio, "DirectWriter", spy)
    return made


def test_local_storage_writes_large_objects_direct(ddir, monkeypatch):
    made = _spy(monkeypatch)
    st = LocalStorage(ddir / "repo")
    st.create()
    big = os.urandom(directio.MIN_SIZE + 4321)
    st.write("blobs/aa/big", big)
    st.write("blobs/aa/small", b"x" * 1000)
    assert len(made) == 1
    assert st.read("blobs/aa/big") == big
    assert st.read("blobs/aa/small") == b"x" * 1000
    assert [n for n in os.listdir(ddir / "repo" / "blobs" / "aa") if n.startswith(".tmp-")] == []


def test_local_storage_elsewhere_uses_the_page_cache(monkeypatch):
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        pytest.skip("no /dev/shm")
    import tempfile

    made = _spy(monkeypatch)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        st = LocalStorage(d)
        st.create()
        big = os.urandom(directio.MIN_SIZE * 2)
        st.write("blobs/aa/big", big)
        assert st.read("blobs/aa/big") == big
    assert made == []

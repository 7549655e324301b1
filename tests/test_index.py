"""rekkord.index: index records (Entry, Extent) encode/decode."""

import os
import stat
import struct

import pytest
from hypothesis import given, settings, strategies as st

from rekkord import index as ix
from rekkord.errors import IntegrityError
from rekkord.index import Entry, Extent

u32 = st.integers(0, 2**32 - 1)
names = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b)

entries = st.builds(
    Entry,
    kind=st.sampled_from(sorted(ix.KIND_NAMES)),
    path=st.lists(names, min_size=0, max_size=6).map(b"/".join),
    mode=st.integers(0, 0o7777),
    uid=u32, gid=u32,
    mtime_ns=st.integers(-(2**63), 2**63 - 1), atime_ns=st.integers(-(2**63), 2**63 - 1),
    size=st.integers(0, 2**64 - 1), rdev=st.integers(0, 2**64 - 1),
    user=st.binary(max_size=255), group=st.binary(max_size=255),
    target=st.binary(max_size=4096),
    xattrs=st.lists(st.tuples(st.binary(min_size=1, max_size=60), st.binary(max_size=3000)), max_size=4),
    extents=st.lists(st.builds(Extent, st.binary(min_size=32, max_size=32), u32, u32), max_size=20),
    flags=st.integers(0, 7),
)


@settings(max_examples=300, deadline=None)
@given(entries)
def test_encode_decode_round_trip(e):
    raw = ix.encode(e)
    (n,) = struct.unpack_from("<I", raw)
    assert n == len(raw) - 4
    back, end = ix.decode_one(raw, 0)
    assert end == len(raw)
    assert back == e


@settings(max_examples=50, deadline=None)
@given(st.lists(entries, max_size=8))
def test_decode_all_of_a_stream(es):
    buf = b"".join(ix.encode(e) for e in es)
    assert list(ix.decode_all(buf)) == es
    assert list(ix.decode_all(memoryview(buf))) == es


def test_record_layout_is_format_v1():
    e = Entry(kind=ix.K_FILE, path=b"a/b", mode=0o644, uid=1, gid=2, mtime_ns=3, atime_ns=4, size=5, rdev=6,
              user=b"u", group=b"gg", target=b"", xattrs=[(b"user.k", b"v")],
              extents=[Extent(b"\xaa" * 32, 7, 5)], flags=ix.F_CHANGED)
    expected_body = (
        bytes([1, 2]) + struct.pack("<H", 3) + b"a/b"
        + struct.pack("<IIIqqQQ", 0o644, 1, 2, 3, 4, 5, 6)
        + b"\x01u" + b"\x02gg" + struct.pack("<H", 0)
        + struct.pack("<H", 1) + struct.pack("<H", 6) + b"user.k" + struct.pack("<I", 1) + b"v"
        + struct.pack("<I", 1) + b"\xaa" * 32 + struct.pack("<II", 7, 5)
    )
    assert ix.encode(e) == struct.pack("<I", len(expected_body)) + expected_body


def test_truncated_or_damaged_records_raise_integrity_error():
    e = Entry(kind=ix.K_FILE, path=b"dir/file", extents=[Extent(os.urandom(32), 0, 10)],
              xattrs=[(b"user.a", b"b")])
    raw = ix.encode(e)
    for cut in range(1, len(raw)):
        with pytest.raises(IntegrityError):
            list(ix.decode_all(raw[:cut]))
    # A length field that disagrees with the content.
    longer = struct.pack("<I", len(raw) - 4 + 3) + raw[4:] + b"xyz"
    with pytest.raises(IntegrityError, match="bad length"):
        ix.decode_one(longer, 0)
    # An extent count that runs past the record.
    bad = bytearray(raw)
    struct.pack_into("<I", bad, len(raw) - 44, 1000)
    with pytest.raises(IntegrityError):
        ix.decode_one(bytes(bad), 0)


def test_kind_from_mode():
    assert ix.kind_from_mode(stat.S_IFREG | 0o644) == ix.K_FILE
    assert ix.kind_from_mode(stat.S_IFDIR) == ix.K_DIR
    assert ix.kind_from_mode(stat.S_IFLNK) == ix.K_SYMLINK
    assert ix.kind_from_mode(stat.S_IFIFO) == ix.K_FIFO
    assert ix.kind_from_mode(stat.S_IFCHR) == ix.K_CHAR
    assert ix.kind_from_mode(stat.S_IFBLK) == ix.K_BLOCK
    assert ix.kind_from_mode(stat.S_IFSOCK) == ix.K_SOCKET
    with pytest.raises(ValueError):
        ix.kind_from_mode(0)


def test_entry_helpers():
    e = Entry(kind=ix.K_DIR, path=b"home/user/dir", mode=0o1777)
    assert e.name == b"dir" and e.parent == b"home/user"
    assert Entry(kind=ix.K_FILE, path=b"top").parent == b""
    assert e.mode_string() == "drwxrwxrwt"
    assert Entry(kind=ix.K_SYMLINK, path=b"l", mode=0o777).mode_string() == "lrwxrwxrwx"
    assert Entry(kind=ix.K_HARDLINK, path=b"h").has_content and not e.has_content
    assert e.kind_name == "dir"


def test_extents_encoding():
    xs = [Extent(os.urandom(32), i, 2 * i) for i in range(5)]
    raw = ix.encode_extents(xs)
    assert len(raw) == 5 * 40
    assert ix.decode_extents(raw) == xs
    assert ix.decode_extents(b"") == []


# ---- hostile input: fuzzing the decoder -----------------------------------------------------

from hypothesis import HealthCheck  # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_decoding_random_bytes(buf):
    from rekkord.errors import IntegrityError

    try:
        ix.decode_one(buf, 0)
    except IntegrityError:
        pass


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries, st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=5))
def test_fuzz_decoding_mutated_records(e, flips):
    from rekkord.errors import IntegrityError

    b = bytearray(ix.encode(e))
    for pos, x in flips:
        b[pos % len(b)] ^= x
    try:
        got, end = ix.decode_one(bytes(b), 0)
        assert end <= len(b)
    except IntegrityError:
        pass

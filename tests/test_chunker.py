"""rekkord.chunker: FastCDC with a secret seed, cross-checked against the
pure-Python reference (tests/chunker_reference.py); StreamCutter; PackCutter."""

import hashlib
import io
import os
import random

import blake3
import pytest

from chunker_reference import cut_lengths, cut_points
from rekkord.chunker import INDEX_PARAMS, Chunker, ChunkerParams, PackCutter, StreamCutter, chunker_seed

MiB = 1 << 20
DEFAULT = ChunkerParams()  # 256 KiB / 1 MiB / 4 MiB, the repository default
SMALL = ChunkerParams(2048, 8192, 32768)
TINY = ChunkerParams(64, 256, 1024)


def pseudo_random(label: bytes, n: int) -> bytes:
    return blake3.blake3(label).digest(n)


def text_like(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9))) for _ in range(500)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + b"\n"
    return bytes(out[:n])


def ref(data: bytes, p: ChunkerParams, seed: int) -> list[int]:
    return cut_lengths(data, min_size=p.min_size, avg_size=p.avg_size, max_size=p.max_size, seed=seed)


class Trickle(io.RawIOBase):
    """A stream that returns short, irregular reads (like a pipe or a slow disk)."""

    def __init__(self, data: bytes, seed: int = 0):
        self.data = memoryview(data)
        self.pos = 0
        self.rng = random.Random(seed)

    def readable(self):
        return True

    def readinto(self, b):
        n = min(len(b), self.rng.randint(1, 300_000), len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


# ---- equality with the reference ---------------------------------------------

SEEDS = [1, 0x0123456789ABCDEF, (1 << 63) - 1, 0x5EED]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("params,size", [(SMALL, 700_000), (TINY, 40_000), (INDEX_PARAMS, 3 * MiB // 2)],
                         ids=["small", "tiny", "index"])
def test_pyfastcdc_matches_reference(params, size, seed):
    for data in (pseudo_random(b"eq%d" % seed, size), text_like(size, seed)):
        expected = ref(data, params, seed)
        ch = Chunker(params, seed)
        assert [len(c) for c in ch.cut(data)] == expected
        assert [len(c) for c in ch.cut_stream(Trickle(data, seed))] == expected


@pytest.mark.parametrize("seed", [0x0123456789ABCDEF, chunker_seed(b"\x07" * 32)])
def test_pyfastcdc_matches_reference_with_repository_parameters(seed):
    data = pseudo_random(b"default params", 7 * MiB) + bytes(5 * MiB) + text_like(MiB)
    expected = ref(data, DEFAULT, seed)
    assert len(expected) >= 5
    ch = Chunker(DEFAULT, seed)
    assert [len(c) for c in ch.cut(data)] == expected
    assert [len(c) for c in ch.cut_stream(io.BytesIO(data))] == expected


class ShortReads(io.RawIOBase):
    """An unbuffered file whose reads return at most ``cap`` bytes each."""

    def __init__(self, data: bytes, cap: int):
        self.f = io.BytesIO(data)
        self.cap = cap

    def readable(self):
        return True

    def readinto(self, b):
        return self.f.readinto(memoryview(b)[:self.cap])

    def read(self, n=-1):
        return self.f.read(self.cap if n is None or n < 0 else min(n, self.cap))


@pytest.mark.parametrize("params", [SMALL, DEFAULT], ids=["small", "default"])
def test_cut_file_cuts_as_the_stream_chunker_does(params):
    """A save reads a file of up to twice the maximum chunk whole and cuts it
    in place (no zero-filled window per file): the chunks must be the ones of
    the stream chunker (and of the reference), whatever the file's size
    against the size the save saw (the file grew or shrank meanwhile) and
    however short its reads are."""
    seed = 0x5EED
    ch = Chunker(params, seed)
    limit = 2 * params.max_size
    sizes = [0, 1, params.min_size, params.max_size, params.max_size + 1, limit - 1, limit, limit + 1,
             3 * limit + 7]
    for n in sizes:
        data = pseudo_random(b"cut_file %d" % n, n // 2) + bytes(n // 8) + text_like(min(n - n // 2 - n // 8, 4096), n)
        data += pseudo_random(b"tail", n - len(data))
        # (the reference is slow on megabytes; the stream chunker is proven
        # equal to it above)
        expected = ref(data, params, seed) if params is SMALL else [len(c) for c in ch.cut_stream(io.BytesIO(data))]
        for hint in sorted({n, 0, max(0, n - 999), n + 999, limit, limit + 1}):
            for f in (io.BytesIO(data), ShortReads(data, 100_003)):
                got = list(ch.cut_file(f, hint))
                assert [len(c) for c in got] == expected, (n, hint)
                assert b"".join(got) == data
                assert all(type(c) is bytes for c in got)


@pytest.mark.parametrize("nc", [0, 2, 3])
def test_other_normalization_levels_match_reference(nc):
    # Only level 1 is used by format v1; the other levels prove the reference
    # implements the mask selection rather than one hard-coded case.
    from pyfastcdc import FastCDC

    data = pseudo_random(b"nc", 200_000)
    got = [c.length for c in FastCDC(4096, min_size=1024, max_size=16384, normalized_chunking=nc,
                                     seed=99).cut_buf(data)]
    assert got == cut_lengths(data, min_size=1024, avg_size=4096, max_size=16384, seed=99, nc=nc)


def test_reference_golden_vector():
    """Pins the reference itself: these cut points are format v1."""
    data = pseudo_random(b"rekkord chunker golden vector", 3 * MiB)
    seed = 0x0123456789ABCDEF
    assert cut_points(data, min_size=2048, avg_size=8192, max_size=32768, seed=seed)[:12] == [
        13646, 30746, 43990, 59781, 69089, 84913, 96719, 105919, 112500, 125692, 128327, 136193]
    assert cut_points(data, min_size=256 * 1024, avg_size=MiB, max_size=4 * MiB, seed=seed) == [
        1610686, 2080868, 3145728]
    assert [len(c) for c in Chunker(DEFAULT, seed).cut(data)] == [1610686, 2080868 - 1610686, 3145728 - 2080868]


def test_chunk_sizes_respect_bounds_and_seed_changes_boundaries():
    data = pseudo_random(b"bounds", 2 * MiB)
    a = ref(data, SMALL, 1)
    b = ref(data, SMALL, 2)
    assert sum(a) == len(data)
    assert all(SMALL.min_size <= n <= SMALL.max_size for n in a[:-1])
    assert a != b
    zeros = [len(c) for c in Chunker(SMALL, 5).cut(bytes(200_000))]
    assert all(n <= SMALL.max_size for n in zeros) and sum(zeros) == 200_000


# ---- boundary stability -----------------------------------------------------------


def chunk_digests(data: bytes, params: ChunkerParams, seed: int) -> list[bytes]:
    return [hashlib.sha256(c).digest() for c in Chunker(params, seed).cut(data)]


@pytest.mark.parametrize("params,size", [(SMALL, 3 * MiB), (DEFAULT, 24 * MiB)], ids=["small", "default"])
def test_inserting_bytes_changes_only_nearby_chunks(params, size):
    seed = chunker_seed(b"\x01" * 32)
    base = pseudo_random(b"stability", size)
    old = chunk_digests(base, params, seed)
    old_set = set(old)
    ends = []
    pos = 0
    for c in Chunker(params, seed).cut(base):
        pos += len(c)
        ends.append(pos)
    assert len(old) >= 12
    rng = random.Random(7)
    for _ in range(3):
        at = rng.randrange(size // 10, size - size // 10)
        for edit in (base[:at] + rng.randbytes(rng.randint(1, 5000)) + base[at:],  # insertion
                     base[:at] + base[at + 3000:],  # deletion
                     base[:at] + rng.randbytes(10) + base[at + 10:]):  # overwrite
            new = chunk_digests(edit, params, seed)
            changed = [d for d in new if d not in old_set]
            assert 1 <= len(changed) <= 3, (len(changed), len(new))
            # Every chunk that ends before the edit is kept in place, and the
            # list re-synchronises at most a few chunks after it.
            lead = next(i for i, (x, y) in enumerate(zip(old + [None], new + [None])) if x != y)
            trail = next(i for i, (x, y) in enumerate(zip(old[::-1] + [None], new[::-1] + [None])) if x != y)
            assert lead >= sum(1 for e in ends if e < at)
            assert len(old) - lead - trail <= 3 and len(new) - lead - trail <= 3


def test_prepending_keeps_later_chunks():
    seed = 12345
    base = pseudo_random(b"prepend", 2 * MiB)
    old = set(chunk_digests(base, SMALL, seed))
    new = chunk_digests(b"header!" + base, SMALL, seed)
    assert sum(d not in old for d in new) <= 2


# ---- seed, parameters ------------------------------------------------------------


def test_chunker_seed_is_secret_dependent_63_bit_and_nonzero():
    seeds = {chunker_seed(os.urandom(32)) for _ in range(200)}
    assert len(seeds) == 200
    assert all(0 < s < (1 << 63) for s in seeds)
    assert chunker_seed(b"k" * 32) == chunker_seed(b"k" * 32)


def test_params_json_round_trip():
    assert DEFAULT.to_json() == {"algorithm": "fastcdc2020-nc1", "min": 262144, "avg": 1048576, "max": 4194304}
    assert ChunkerParams.from_json(DEFAULT.to_json()) == DEFAULT
    assert INDEX_PARAMS == ChunkerParams(64 * 1024, 256 * 1024, MiB)
    with pytest.raises(ValueError, match="unknown chunker"):
        ChunkerParams.from_json({"algorithm": "rabin", "min": 1, "avg": 2, "max": 3})


# ---- StreamCutter (the index stream) ------------------------------------------------


@pytest.mark.parametrize("seed", [3, 0x7777])
def test_stream_cutter_equals_cutting_the_concatenation(seed):
    data = text_like(6 * MiB, seed)
    ch = Chunker(INDEX_PARAMS, seed)
    whole = [bytes(c) for c in ch.cut(data)]
    sc = StreamCutter(ch)
    got = []
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 17, 300, 5000, 70_000, 1_500_000])
        got += sc.feed(data[pos:pos + n])
        pos += n
    assert got, "feed() must emit chunks before the end for a long stream"
    got += sc.finish()
    assert got == whole
    assert sc.finish() == []


# ---- PackCutter (small files) -----------------------------------------------------------


def test_pack_cutter_rules():
    pc = PackCutter(b"\x01" * 32, min_size=1000, max_size=10_000, bits=3, max_files=50)
    files = [os.urandom(40) for _ in range(2000)]
    assert not any(pc.should_cut(999, 3, f) for f in files)  # below min: never
    assert all(pc.should_cut(10_000, 3, f) for f in files)  # at max size: always
    assert all(pc.should_cut(10, 50, f) for f in files)  # at max files: always
    cuts = sum(pc.should_cut(5000, 3, f) for f in files)
    assert 150 < cuts < 350  # about 1 in 2**3
    # Content-defined: the same file gives the same answer; another key another rule.
    assert [pc.should_cut(5000, 3, f) for f in files] == [pc.should_cut(6000, 9, f) for f in files]
    other = PackCutter(b"\x02" * 32, min_size=1000, max_size=10_000, bits=3, max_files=50)
    assert [pc.should_cut(5000, 3, f) for f in files] != [other.should_cut(5000, 3, f) for f in files]


def test_pack_cutter_defaults():
    pc = PackCutter(b"\x03" * 32)
    assert (pc.min_size, pc.max_size, pc.mask, pc.max_files) == (512 * 1024, 4 * MiB, 7, 4096)


def test_chunker_params_around_an_average():
    """init --chunk-size: min a quarter and max four times the average, and
    the min (the size from which a file is cut, not packed) never below
    64 KiB."""
    from rekkord.errors import UsageError

    assert ChunkerParams.around(1 << 20) == ChunkerParams()
    assert ChunkerParams.around(512 << 10) == ChunkerParams(128 << 10, 512 << 10, 2 << 20)
    assert ChunkerParams.around(256 << 10).min_size == 64 << 10
    assert ChunkerParams.around(8 << 20).max_size == 32 << 20
    for bad in ((256 << 10) - 1, (8 << 20) + 1, 0):
        with pytest.raises(UsageError, match="between 256 KiB and 8 MiB"):
            ChunkerParams.around(bad)

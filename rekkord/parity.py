"""Reed-Solomon parity over data blobs (format v2, optional, chosen at init).

A repository created with ``rekkord init --parity 5%`` stores, next to the
data blobs every save writes, **parity groups** (``parity/<xx>/<64 hex>``,
named like blobs by the BLAKE3 hash of their bytes; docs/format.md §13.9):

* a group covers the stored bytes of a run of data blobs (its *members*, in
  the order the save stored them), concatenated into one stream, zero-padded
  and laid out as ``n`` columns of ``rows`` stripes of ``stripe`` bytes each
  (column ``c`` is the stream's bytes ``c*C .. (c+1)*C``, ``C = rows*stripe``);
* for every row, the zfec erasure coder (the Reed-Solomon code of
  Tahoe-LAFS) makes ``m`` parity stripes from the row's ``n`` data stripes;
* the object holds the member list, a 16-byte BLAKE3 hash of every stripe
  (data and parity), then the ``m`` parity columns.

A member stripe that does not match its hash is an erasure; a row with at
most ``m`` erasures is decoded.  A bit flip costs one row (``n`` stripes read
back), and a member lost whole erases at most ``ceil((size + stripe) / C)``
stripes of each row: the writer picks ``m`` so that any one member of a group,
whatever its size, can be lost and rebuilt.  Rebuilt bytes are used only once
they hash to the blob's name, so a parity object is hostile input like any
other (a forged one can at worst fail to rebuild), and everything here works
on stored bytes: an audit key (or anyone holding the storage) can check and
repair data it cannot decrypt.

Space: about ``percent`` of the data in full groups (``n`` columns, ``m``
parity columns, ``m/n`` = the share chosen at init); a group that ends a save
before it is full still gets parity for its largest member (at least that
member's size), which is what makes a lost object recoverable; measured in
docs/performance.md.  Memory: a group is spilled to a temporary file while it
fills, so a save holds no more than one stripe row in memory for it.
"""

from __future__ import annotations

import math
import mmap
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import blake3

from .errors import (
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    UsageError,
)

PREFIX = "parity/"
MAGIC = b"RKP1"
VERSION = 1
SCHEME = "zfec-rs-columns-1"
HEAD = struct.Struct("<4sBBBBIIII")  # magic, version, n, m, reserved, stripe, rows, members, reserved
MEMBER = struct.Struct("<32sI")
HASH_SIZE = 16

#: Limits a reader enforces before allocating anything (docs/format.md §11).
MAX_STRIPE = 1 << 20
MAX_COLUMN = 64 << 20  # rows * stripe
MAX_MEMBERS = 1 << 16
MAX_STRIPES = 1 << 20  # (n + m) * rows
MAX_PARITY = 256 << 20  # m * column: the parity columns of one object

#: What a writer picks: 64 KiB stripes (a bit flip costs one row, n * 64 KiB
#: read back), columns of at least 4 KiB in small groups.
STRIPE = 64 << 10
MIN_COLUMN = 4 << 10
MIN_PERCENT, MAX_PERCENT = 1, 50


def available() -> bool:
    try:
        import zfec  # noqa: F401
    except ImportError:
        return False
    return True


def install_hint_text() -> str:
    from .extras import install_hint

    return f"parity needs the zfec package: {install_hint('parity')}"


#: How much of a parity object check reads at once while hashing it.
READ_PIECE = 8 << 20


def hasher():
    return blake3.blake3()


def blake3_name(raw) -> bytes:
    """The name of a parity object or a v2 blob: the plain hash of its bytes."""
    return blake3.blake3(raw).digest()


def _zfec():
    try:
        import zfec
    except ImportError:
        from .extras import install_hint

        raise UsageError(f"parity needs the zfec package: {install_hint('parity')}") from None
    return zfec


def check_ratio(ratio: float) -> None:
    if not MIN_PERCENT / 100 <= ratio <= MAX_PERCENT / 100:
        raise UsageError(f"--parity: give {MIN_PERCENT}% to {MAX_PERCENT}% (the share of the data stored again "
                         f"as parity), not {ratio * 100:g}%")
    _zfec()


def parse_percent(spec: str) -> float:
    s = spec.strip().rstrip("%").strip()
    try:
        v = float(s)
    except ValueError:
        raise UsageError(f"--parity {spec!r}: give a percentage, e.g. 5%") from None
    check_ratio(v / 100)
    return v / 100


def config_for(ratio: float) -> dict:
    """The repository config's ``parity`` field."""
    return {"scheme": SCHEME, "percent": round(ratio * 100, 3)}


def ratio_of(config: dict) -> float | None:
    p = config.get("parity")
    if not p:
        return None
    return p["percent"] / 100


def shape(ratio: float) -> tuple[int, int]:
    """(n data columns, m parity columns) of a full group at ``ratio`` = m/n:
    one parity column per 20 data columns up to 5 %, more beyond."""
    m = max(1, round(ratio * 20))
    n = max(1, min(127, round(m / ratio)))
    return n, m


def target_bytes(ratio: float, blob_limit: int) -> int:
    """When a writer closes a group: once its columns are long enough that
    ``m`` parity columns rebuild a member of the largest size."""
    n, m = shape(ratio)
    return n * -(-(blob_limit + STRIPE) // m)


def plan(sizes: list[int], ratio: float) -> tuple[int, int, int, int]:
    """(n, m, stripe, rows) for a group of members of ``sizes`` (in stream
    order): ``m/n`` is at least ``ratio``, and any one member lost whole
    erases at most ``m`` stripes of a row."""
    total = sum(sizes)
    n_full, _ = shape(ratio)
    best = None
    # Fewer, longer columns may need fewer parity columns for the largest
    # member (a group that ends a save before it is full): the smallest
    # parity wins, then the most columns.
    for n in range(max(1, min(n_full, -(-total // MIN_COLUMN))), 0, -1):
        per_column = -(-total // n)
        stripe = min(STRIPE, -(-per_column // 64) * 64)
        rows = -(-total // (n * stripe))
        column = rows * stripe
        # A member lost whole erases, in some row, ceil(its stripes / rows)
        # stripes: m parity columns must cover the worst member.
        worst, pos = 0, 0
        for size in sizes:
            span = (pos + size - 1) // stripe - pos // stripe + 1
            worst = max(worst, -(-span // rows))
            pos += size
        m = max(math.ceil(ratio * n - 1e-9), worst, 1)
        if n + m > 256:
            continue
        if best is None or m * column < best[0]:
            best = (m * column, (n, m, stripe, rows))
    if best is None:  # (cannot happen: n = 1 needs m = 1)
        raise ValueError("no parity shape fits")
    return best[1]


def stripe_hash(b) -> bytes:
    return blake3.blake3(b).digest(HASH_SIZE)


# ---- the object ------------------------------------------------------------------------


@dataclass
class Group:
    """A parity object's manifest (everything but its parity columns)."""

    name: bytes
    n: int
    m: int
    stripe: int
    rows: int
    members: list[tuple[bytes, int]]
    hashes: bytes  # HASH_SIZE * (n + m) * rows, data columns then parity columns, column-major
    size: int | None = None  # the object's size, when listed

    @property
    def column(self) -> int:
        return self.stripe * self.rows

    @property
    def manifest_size(self) -> int:
        return HEAD.size + MEMBER.size * len(self.members) + HASH_SIZE * (self.n + self.m) * self.rows

    @property
    def object_size(self) -> int:
        return self.manifest_size + self.m * self.column

    def hash_of(self, col: int, row: int) -> bytes:
        o = (col * self.rows + row) * HASH_SIZE
        return self.hashes[o:o + HASH_SIZE]

    def offsets(self) -> dict[bytes, tuple[int, int]]:
        """member name -> (offset in the stream, size)."""
        out, pos = {}, 0
        for name, size in self.members:
            out.setdefault(name, (pos, size))
            pos += size
        return out


def parse_head(buf, what: str) -> tuple[int, int, int, int, int]:
    """(n, m, stripe, rows, members) from the first bytes of a parity object,
    each within the format's limits."""
    if len(buf) < HEAD.size:
        raise IntegrityError(f"{what}: truncated ({len(buf)} bytes)")
    magic, version, n, m, r1, stripe, rows, k, r2 = HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise IntegrityError(f"{what}: not a parity group (bad magic)")
    if version != VERSION or r1 or r2:
        raise IntegrityError(f"{what}: unknown parity group version {version}")
    if not (1 <= n and 1 <= m and n + m <= 256):
        raise IntegrityError(f"{what}: bad shape ({n} data and {m} parity columns)")
    if not 1 <= stripe <= MAX_STRIPE or not 1 <= rows or rows * stripe > MAX_COLUMN \
            or (n + m) * rows > MAX_STRIPES or m * rows * stripe > MAX_PARITY:
        raise IntegrityError(f"{what}: bad stripe size or row count ({stripe} x {rows})")
    if not 1 <= k <= MAX_MEMBERS:
        raise IntegrityError(f"{what}: bad member count {k}")
    return n, m, stripe, rows, k


def parse_manifest(buf, name: bytes, *, size: int | None = None) -> Group:
    """The manifest at the start of ``buf`` (at least its manifest size)."""
    what = f"parity group {object_name(name)}"
    n, m, stripe, rows, k = parse_head(buf, what)
    end_members = HEAD.size + MEMBER.size * k
    end = end_members + HASH_SIZE * (n + m) * rows
    if len(buf) < end:
        raise IntegrityError(f"{what}: truncated manifest")
    members = [MEMBER.unpack_from(buf, HEAD.size + i * MEMBER.size) for i in range(k)]
    total = 0
    for _, s in members:
        if s < 1:
            raise IntegrityError(f"{what}: a member of size 0")
        total += s
    if total > n * rows * stripe:
        raise IntegrityError(f"{what}: members larger than its columns")
    g = Group(name, n, m, stripe, rows, members, bytes(buf[end_members:end]), size)
    if size is not None and size != g.object_size:
        raise IntegrityError(f"{what}: has {size} bytes where its manifest says {g.object_size}")
    return g


def object_name(name: bytes) -> str:
    h = name.hex()
    return f"{PREFIX}{h[:2]}/{h}"


def name_from_object(obj: str) -> bytes | None:
    parts = obj.split("/")
    if len(parts) != 3 or parts[0] != PREFIX[:-1] or len(parts[2]) != 64 or parts[2][:2] != parts[1]:
        return None
    try:
        return bytes.fromhex(parts[2])
    except ValueError:
        return None


def encode(members: list[tuple[bytes, int]], stream, ratio: float) -> tuple[bytes, bytearray]:
    """(name, bytes) of the parity object for ``members`` whose stored bytes,
    concatenated, are ``stream`` (a buffer at least ``n * C`` long with zeros
    after the members, or exactly their total: it is padded here)."""
    zfec = _zfec()
    sizes = [s for _, s in members]
    n, m, stripe, rows = plan(sizes, ratio)
    column = stripe * rows
    total = sum(sizes)
    view = memoryview(stream)
    if len(view) < n * column:
        padded = bytearray(n * column)
        padded[:total] = view[:total]
        view = memoryview(padded)
    manifest = bytearray(HEAD.pack(MAGIC, VERSION, n, m, 0, stripe, rows, len(members), 0))
    for name, size in members:
        manifest += MEMBER.pack(name, size)
    hashes = bytearray(HASH_SIZE * (n + m) * rows)
    parity = bytearray(m * column)
    enc = zfec.Encoder(n, n + m)
    want = tuple(range(n, n + m))
    for r in range(rows):
        blocks = tuple(view[c * column + r * stripe: c * column + (r + 1) * stripe] for c in range(n))
        for c, b in enumerate(blocks):
            o = (c * rows + r) * HASH_SIZE
            hashes[o:o + HASH_SIZE] = stripe_hash(b)
        for j, p in enumerate(enc.encode(blocks, want)):
            parity[j * column + r * stripe: j * column + (r + 1) * stripe] = p
            o = ((n + j) * rows + r) * HASH_SIZE
            hashes[o:o + HASH_SIZE] = stripe_hash(p)
    out = manifest + hashes + parity
    return blake3.blake3(out).digest(), out


# ---- writing: groups of the blobs a save stores ------------------------------------------------


class GroupBuilder:
    """Collects the data blobs a save stores (their stored bytes, spilled to a
    temporary file) and writes a parity group whenever enough have come, and
    at :meth:`finish` for the rest.  Thread-safe: store threads call :meth:`add`."""

    def __init__(self, storage, ratio: float, blob_limit: int, *, on_written: Callable[[str, int], None] | None = None,
                 on_error: Callable[[str], None] | None = None, spill_dir: str | None = None):
        _zfec()
        self.storage = storage
        self.ratio = ratio
        self.target = target_bytes(ratio, blob_limit)
        self.on_written = on_written
        self.on_error = on_error
        self.spill_dir = spill_dir
        self.lock = threading.Lock()
        self._new()

    def _new(self):
        self.members: list[tuple[bytes, int]] = []
        self.total = 0
        self.file = None

    def add(self, name: bytes, raw) -> None:
        with self.lock:
            try:
                if self.file is None:
                    self.file = tempfile.TemporaryFile(  # noqa: SIM115 (closed with the group)
                        prefix="rekkord-parity-", dir=self.spill_dir)
                self.file.write(raw)
            except OSError as e:  # (no room for the spill file: these blobs go without parity)
                self._failed(f"cannot keep data for parity ({e.strerror or e})", [(name, len(raw))] + self.members)
                self.close_locked()
                return
            self.members.append((name, len(raw)))
            self.total += len(raw)
            full = self._take() if self.total >= self.target else None
        if full is not None:
            self._write(*full)

    def _failed(self, why: str, members) -> None:
        if self.on_error is not None:
            self.on_error(f"{why}: {len(members)} data blobs have no parity (rekkord check --repair gives them some)")

    def _take(self):
        taken = (self.members, self.total, self.file)
        self._new()
        return taken

    def finish(self) -> None:
        with self.lock:
            rest = self._take() if self.members else None
        if rest is not None:
            self._write(*rest)

    def close(self) -> None:
        with self.lock:
            self.close_locked()

    def close_locked(self) -> None:
        if self.file is not None:
            self.file.close()
        self._new()

    def _write(self, members, total, f) -> None:
        """Encode and store one group.  A failure costs these blobs their
        parity, not the save: it is reported through ``on_error``."""
        try:
            try:
                n, _, stripe, rows = plan([s for _, s in members], self.ratio)
                f.truncate(max(total, n * stripe * rows))
                f.flush()
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    name, raw = encode(members, mm, self.ratio)
            finally:
                f.close()
            write_group(self.storage, name, raw)
        except (OSError, StorageError) as e:
            self._failed(f"cannot write a parity group ({e})", members)
            return
        if self.on_written is not None:
            self.on_written(object_name(name), len(raw))


def write_group(storage, name: bytes, raw) -> None:
    """Create a parity object; one already there under its name is kept
    when it holds these bytes (it hashes to the name), else replaced."""
    obj = object_name(name)
    try:
        storage.write(obj, raw, exclusive=True)
    except ObjectExists:
        try:
            if blake3.blake3(storage.read(obj)).digest() == name:
                return
        except StorageError:
            pass
        storage.write(obj, raw, exclusive=False)


# ---- reading: the groups of a repository, and rebuilding a member --------------------------------


class ParityIndex:
    """The parity groups of a repository, listed once and read lazily
    (manifests only), and the rebuilding of a member from its group."""

    def __init__(self, storage, *, threads: int = 8):
        self.storage = storage
        self.threads = threads
        self.lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._groups: dict[bytes, Group] | None = None
        self._by_member: dict[bytes, list[bytes]] | None = None
        self.problems: dict[bytes, str] = {}  # parity objects whose manifest could not be read

    def listing(self) -> dict[bytes, int]:
        out = {}
        for obj, size in self.storage.list(PREFIX):
            name = name_from_object(obj)
            if name is not None:
                out[name] = size
        return out

    def read_manifest(self, name: bytes, size: int | None = None) -> Group:
        obj = object_name(name)
        head = self.storage.read(obj, 0, 64 << 10)
        n, m, _, rows, k = parse_head(head, f"parity group {obj}")
        need = HEAD.size + MEMBER.size * k + HASH_SIZE * (n + m) * rows
        if len(head) < need:
            head = head + self.storage.read(obj, len(head), need - len(head))
        return parse_manifest(head, name, size=size)

    def groups(self, listing: dict[bytes, int] | None = None) -> dict[bytes, Group]:
        with self._build_lock:  # (readers on many threads list and read the manifests once)
            return self._groups_locked(listing)

    def _groups_locked(self, listing: dict[bytes, int] | None) -> dict[bytes, Group]:
        with self.lock:
            if self._groups is not None and listing is None:
                return self._groups
        listing = self.listing() if listing is None else listing
        out: dict[bytes, Group] = {}

        def one(item):
            name, size = item
            try:
                return name, self.read_manifest(name, size)
            except (IntegrityError, ObjectNotFound) as e:
                with self.lock:
                    self.problems[name] = str(e)
                return name, None

        with ThreadPoolExecutor(max(1, self.threads)) as pool:
            for name, g in pool.map(one, listing.items()):
                if g is not None:
                    out[name] = g
        by: dict[bytes, list[bytes]] = {}
        for name, g in out.items():
            for member, _ in g.members:
                by.setdefault(member, []).append(name)
        with self.lock:
            self._groups, self._by_member = out, by
        return out

    def drop(self, name: bytes) -> None:
        """Forget a group found damaged (its bytes do not hash to its name)."""
        if self._groups is None or name not in self._groups:
            return
        g = self._groups.pop(name)
        for member, _ in g.members:
            names = self._by_member.get(member, [])
            if name in names:
                names.remove(name)

    def covering(self, blob: bytes) -> list[Group]:
        self.groups()
        with self.lock:
            return [self._groups[g] for g in self._by_member.get(blob, [])]

    def rebuild(self, blob: bytes, *, groups: Iterable[Group] | None = None) -> tuple[bytes, Group] | None:
        """The stored bytes of data blob ``blob``, rebuilt from a group that
        covers it and verified against its name, with that group; None when
        no group can."""
        for g in (self.covering(blob) if groups is None else groups):
            try:
                raw = rebuild_member(self.storage, g, blob, threads=self.threads)
            except (IntegrityError, StorageError):
                continue
            if raw is not None:
                return raw, g
        return None


def _read_range(storage, name: str, offset: int, length: int) -> bytes | None:
    try:
        return storage.read(name, offset, length)
    except ObjectNotFound:
        return None


def rebuild_member(storage, g: Group, blob: bytes, *, threads: int = 8) -> bytes | None:
    """Rebuild member ``blob`` of group ``g``: read the stripes it spans,
    find those that do not match their hashes, decode their rows from the
    other stripes of the row (data and parity, each checked against its
    hash), and return the member's bytes when they hash to its name."""
    from .format import blob_name

    zfec = _zfec()
    offsets = g.offsets()
    if blob not in offsets:
        return None
    start, size = offsets[blob]
    s, C, rows, n, m = g.stripe, g.column, g.rows, g.n, g.m
    total = sum(sz for _, sz in g.members)
    bounds = []  # (stream start, end, member name)
    pos = 0
    for name, sz in g.members:
        bounds.append((pos, pos + sz, name))
        pos += sz
    cache: dict[tuple[int, int], bytes | None] = {}  # (column, row) -> stripe bytes, None if unreadable

    def data_stripes(keys: list[tuple[int, int]]):
        """Read data stripes (column, row), merging ranges that touch."""
        want = sorted(k for k in set(keys) if k not in cache)
        spans = []  # merged stream intervals
        for c, r in want:
            a = c * C + r * s
            if spans and spans[-1][1] == a:
                spans[-1][1] = a + s
            else:
                spans.append([a, a + s])
        reads = []  # (member name, member offset, length, stream offset)
        for a, b in spans:
            for lo, hi, name in bounds:
                if hi <= a or lo >= b:
                    continue
                x, y = max(a, lo), min(b, hi)
                reads.append((name, x - lo, y - x, x))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            got = list(pool.map(lambda t: _read_range(storage, blob_name(t[0]), t[1], t[2]), reads))
        buf = {}
        for a, b in spans:
            buf[a] = bytearray(b - a)  # zeros beyond the members: the padding
        bad_ranges = []
        for (name, off, length, x), data in zip(reads, got):
            a = next(a for a, b in spans if a <= x < b)
            if data is None or len(data) != length:
                bad_ranges.append((x, x + length))
                data = (data or b"")[:length]
            buf[a][x - a:x - a + len(data)] = data
        for c, r in want:
            a0 = c * C + r * s
            a = next(a for a, b in spans if a <= a0 < b)
            piece = bytes(buf[a][a0 - a:a0 - a + s])
            ok = not any(x < a0 + s and y > a0 for x, y in bad_ranges) and stripe_hash(piece) == g.hash_of(c, r)
            cache[(c, r)] = piece if ok else None

    def parity_stripes(keys: list[tuple[int, int]]) -> dict[tuple[int, int], bytes | None]:
        obj = object_name(g.name)
        base = g.manifest_size
        out = {}
        want = sorted(set(keys))
        runs = []
        for j, r in want:
            if runs and runs[-1][0] == j and runs[-1][2] == r:
                runs[-1][2] = r + 1
            else:
                runs.append([j, r, r + 1])
        with ThreadPoolExecutor(max(1, threads)) as pool:
            got = list(pool.map(lambda t: _read_range(storage, obj, base + t[0] * C + t[1] * s, (t[2] - t[1]) * s),
                                runs))
        for (j, r0, r1), data in zip(runs, got):
            for r in range(r0, r1):
                piece = data[(r - r0) * s:(r - r0 + 1) * s] if data is not None else b""
                ok = len(piece) == s and stripe_hash(piece) == g.hash_of(n + j, r)
                out[(j, r)] = bytes(piece) if ok else None
        return out

    first, last = start // s, (start + size - 1) // s  # stripes in stream order (column-major)
    mine = [(q // rows, q % rows) for q in range(first, last + 1)]
    data_stripes(mine)
    bad_rows = sorted({r for (c, r) in mine if cache[(c, r)] is None})
    if bad_rows:
        data_stripes([(c, r) for r in bad_rows for c in range(n) if c * C + r * s < total])
        pk = parity_stripes([(j, r) for r in bad_rows for j in range(m)])
        dec = zfec.Decoder(n, n + m)
        for r in bad_rows:
            blocks, nums = [], []
            for c in range(n):
                if c * C + r * s >= total:  # all padding: known zeros
                    piece = bytes(s)
                    if stripe_hash(piece) != g.hash_of(c, r):
                        continue
                    cache[(c, r)] = piece
                piece = cache.get((c, r))
                if piece is not None:
                    blocks.append(piece)
                    nums.append(c)
            for j in range(m):
                if len(blocks) >= n:
                    break
                piece = pk.get((j, r))
                if piece is not None:
                    blocks.append(piece)
                    nums.append(n + j)
            if len(blocks) < n:
                return None  # more erasures in this row than parity
            decoded = dec.decode(tuple(blocks[:n]), tuple(nums[:n]))
            for c in range(n):
                if cache.get((c, r)) is None:
                    cache[(c, r)] = bytes(decoded[c])
    out = bytearray()
    for c, r in mine:
        out += cache[(c, r)]
    lo = start - first * s
    raw = bytes(out[lo:lo + size])
    return raw if blake3.blake3(raw).digest() == blob else None

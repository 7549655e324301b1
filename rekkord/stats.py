"""``rekkord stats``: restic's modes over a snapshot, a channel or the repository.

========================  ==========  =================================================================
mode                      key         counts
========================  ==========  =================================================================
``restore-size``          read        what a restore writes: files (hard links counted, their content
                                      once) and their bytes, summed over the snapshots
``files-by-contents``     read        distinct file contents as stored (same extents: same content) and
                                      their bytes, over all the snapshots together
``blobs-per-file``        read        distinct file contents, and the distinct data blobs they use
``raw-data``              audit       the distinct blobs the snapshots reference and their stored bytes,
                                      from the records and reference lists (nothing decrypted); with a
                                      read key also the data's uncompressed size, hence the
                                      compression and deduplication ratios
========================  ==========  =================================================================

An audit key reads snapshot records and reference lists only: it sees blob
ids and stored sizes, never a file, a name or an uncompressed size.  So with
an audit key ``raw-data`` gives the stored size of everything the snapshots
use and, from the counters the writers put in their records, the logical
size saved and the ratio of the two (deduplication and compression
together); the other modes need the index, sealed with the data key.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from . import format as fmt
from .errors import IntegrityError, PermissionDenied, UsageError
from .index import K_FILE, K_HARDLINK, encode_extents
from .repository import Repository, Snapshot
from .snapshot import iter_entries

MODES = ("restore-size", "files-by-contents", "blobs-per-file", "raw-data")
READ_MODES = ("restore-size", "files-by-contents", "blobs-per-file")


@dataclass
class Stats:
    mode: str
    snapshots_count: int = 0
    total_size: int = 0
    total_file_count: int | None = None
    total_blob_count: int | None = None
    # raw-data:
    blobs_by_type: dict = field(default_factory=dict)  # "data"/"index"/"reference list" -> [count, stored bytes]
    total_uncompressed_size: int | None = None  # data blobs' plaintext (read key only)
    logical_size: int | None = None  # bytes of every file path (hard links too): records' counters, or the index
    compression_ratio: float | None = None  # uncompressed / stored, data blobs
    compression_space_saving: float | None = None  # percent
    deduplication_ratio: float | None = None  # logical / uncompressed
    storage_ratio: float | None = None  # logical / stored: deduplication and compression together
    source: str = ""  # what the numbers come from

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != {}}


def _blob_list(snap: Snapshot, what: str) -> list[tuple[bytes, int]]:
    try:
        out = snap.all_blobs("index" if what == "index" else "reflist")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise IntegrityError(f"snapshot {snap.id}: malformed {what} list in its record") from None
    for bid, size in out:
        if len(bid) != 32 or type(size) is not int or size < 0:
            raise IntegrityError(f"snapshot {snap.id}: malformed {what} list in its record")
    return out


def _need_read(repo: Repository, mode: str) -> None:
    if not repo.key.can("read"):
        raise PermissionDenied(f"{repo.key.role} keys cannot compute stats --mode {mode}: it needs the file index, "
                               "sealed with the data key (use a read, full or admin key; an audit key can use "
                               "--mode raw-data)")


def compute(repo: Repository, snaps: list[Snapshot], mode: str = "restore-size", *, threads: int = 8,
            progress: Callable[[int, int], None] | None = None) -> Stats:
    """Stats of ``snaps`` in ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise UsageError(f"unknown stats mode {mode!r} (choose from {', '.join(MODES)})")
    repo.key.require("list", "compute statistics")
    if mode in READ_MODES:
        _need_read(repo, mode)
    st = Stats(mode, snapshots_count=len(snaps))
    if mode == "raw-data":
        return _raw_data(repo, snaps, st, threads, progress)
    contents: dict[bytes, int] = {}  # encoded extents -> size
    blobs: set[bytes] = set()
    files = size = 0
    for n, snap in enumerate(snaps):
        for e in iter_entries(repo, snap):
            if e.kind not in (K_FILE, K_HARDLINK):
                continue
            if mode == "restore-size":
                files += 1
                if e.kind == K_FILE:
                    size += e.size
                continue
            key = encode_extents(e.extents)
            if key not in contents:
                contents[key] = e.size
                if mode == "blobs-per-file":
                    blobs.update(x.blob for x in e.extents)
        if progress:
            progress(n + 1, len(snaps))
    if mode == "restore-size":
        st.total_file_count, st.total_size, st.source = files, size, "index"
    else:
        st.total_file_count, st.total_size, st.source = len(contents), sum(contents.values()), "index"
        if mode == "blobs-per-file":
            st.total_blob_count = len(blobs)
    return st


def _raw_data(repo: Repository, snaps: list[Snapshot], st: Stats, threads: int, progress) -> Stats:
    sizes: dict[bytes, tuple[int, int]] = {}  # blob id -> (type, stored size)
    reflists: dict[bytes, Snapshot] = {}
    logical = 0
    for snap in snaps:
        for bid, size in _blob_list(snap, "index"):
            sizes[bid] = (fmt.T_INDEX, size)
        for bid, size in _blob_list(snap, "reference list"):
            sizes[bid] = (fmt.T_REFLIST, size)
        for copies in snap.copies_of("reflist"):
            reflists.setdefault(copies[0][0], (snap, copies))
        counters = snap.stats if isinstance(snap.stats, dict) else {}
        total = counters.get("bytes_total")
        logical += total if type(total) is int and total >= 0 else 0

    def read(item):
        bid, (snap, copies) = item
        try:
            return fmt.unpack_reflist(repo.read_copies(copies, fmt.T_REFLIST, what=f" of snapshot {snap.id[:8]}"))
        except IntegrityError as e:
            raise IntegrityError(f"snapshot {snap.id}: reference list {bid.hex()}: {e}") from None

    done = 0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for records in pool.map(read, reflists.items()):
            for bid, size in records:
                if bid not in sizes:
                    sizes[bid] = (fmt.T_DATA, size)
            done += 1
            if progress:
                progress(done, len(reflists))
    by_type: dict[str, list[int]] = {}
    for t, size in sizes.values():
        entry = by_type.setdefault(fmt.TYPE_NAMES[t], [0, 0])
        entry[0] += 1
        entry[1] += size
    st.blobs_by_type = by_type
    st.total_blob_count = len(sizes)
    st.total_size = sum(size for _, size in sizes.values())
    st.logical_size = logical
    st.source = "records and reference lists"
    if st.total_size:
        st.storage_ratio = round(logical / st.total_size, 3)
    if repo.key.can("read"):
        # The plaintext of each data blob, from the extents that use it.
        plain: dict[bytes, int] = {}
        logical = 0
        for snap in snaps:
            for e in iter_entries(repo, snap):
                if e.kind in (K_FILE, K_HARDLINK):  # every path's bytes, as the save counts them
                    logical += e.size
                for x in e.extents:
                    end = x.offset + x.length
                    if end > plain.get(x.blob, 0):
                        plain[x.blob] = end
        data_stored = by_type.get("data", [0, 0])[1]
        st.total_uncompressed_size = sum(plain.values())
        st.logical_size = logical
        st.source = "records, reference lists and index"
        if data_stored:
            st.compression_ratio = round(st.total_uncompressed_size / data_stored, 3)
            st.compression_space_saving = round(100 * (1 - data_stored / st.total_uncompressed_size), 2) \
                if st.total_uncompressed_size else None
        if st.total_uncompressed_size:
            st.deduplication_ratio = round(logical / st.total_uncompressed_size, 3)
        if st.total_size:
            st.storage_ratio = round(logical / st.total_size, 3)
    return st

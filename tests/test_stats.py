"""rekkord.stats: restic's modes, checked against what the tree and the
repository on disk hold; raw-data with an audit key decrypts nothing."""

from __future__ import annotations

import os

import pytest

from rekkord.cache import Cache
from rekkord.errors import PermissionDenied, UsageError
from rekkord.save import Saver
from rekkord.stats import compute


@pytest.fixture
def world(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = os.urandom(1 << 20)
    (src / "big").write_bytes(big)
    (src / "big-copy").write_bytes(big)  # same content, another inode: the same blobs
    os.link(src / "big", src / "big-link")
    smalls = [os.urandom(1000 + i) for i in range(5)]
    for i, data in enumerate(smalls):
        (src / f"small{i}").write_bytes(data)
    ids = [Saver(local_repo.repo("write"), Cache(None)).save("c", [str(src)]).snapshot_id for _ in range(2)]
    local_repo.big, local_repo.smalls, local_repo.ids = len(big), [len(d) for d in smalls], ids
    return local_repo


def snaps(world, role):
    repo = world.repo(role)
    return repo, [repo.load_snapshot(i) for i in world.ids]


def stored_blob_bytes(url) -> int:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(url, "blobs")) for f in fs)


def test_restore_size_counts_what_a_restore_writes(world):
    repo, ss = snaps(world, "read")
    one = compute(repo, ss[:1], "restore-size")
    assert one.total_file_count == 8  # big, big-copy, big-link, 5 small ones
    assert one.total_size == 2 * world.big + sum(world.smalls)  # the link's content once
    two = compute(repo, ss, "restore-size")
    assert (two.total_file_count, two.total_size, two.snapshots_count) == (16, 2 * one.total_size, 2)


def test_files_by_contents_and_blobs_per_file(world):
    repo, ss = snaps(world, "full")
    fc = compute(repo, ss, "files-by-contents")
    assert fc.total_file_count == 6 and fc.total_size == world.big + sum(world.smalls)
    bpf = compute(repo, ss, "blobs-per-file")
    assert bpf.total_file_count == 6 and bpf.total_blob_count >= 2  # big's chunks + one pack


def test_raw_data_with_an_audit_key_decrypts_nothing(world, monkeypatch):
    repo, ss = snaps(world, "audit")
    opened = []
    real = repo.read_blob
    monkeypatch.setattr(repo, "read_blob", lambda bid, t=None: opened.append(t) or real(bid, t))
    st = compute(repo, ss, "raw-data")
    assert set(opened) == {3}  # reference lists only (type 3): no index, no data
    assert st.total_size == stored_blob_bytes(world.url)  # everything stored is referenced here
    assert st.total_uncompressed_size is None and st.compression_ratio is None
    assert st.logical_size == 2 * (3 * world.big + sum(world.smalls))  # the records' counters (every path)
    assert st.storage_ratio == round(st.logical_size / st.total_size, 3)
    assert set(st.blobs_by_type) == {"data", "index", "reference list"}
    for mode in ("restore-size", "files-by-contents", "blobs-per-file"):
        with pytest.raises(PermissionDenied, match="audit keys cannot compute stats --mode .* --mode raw-data"):
            compute(repo, ss, mode)


def test_raw_data_with_a_read_key_gives_compression_and_deduplication(world):
    repo, ss = snaps(world, "read")
    st = compute(repo, ss, "raw-data")
    assert st.total_uncompressed_size == world.big + sum(world.smalls)  # unique plaintext of the data
    assert st.logical_size == 2 * (3 * world.big + sum(world.smalls))  # the same, from the index
    assert st.deduplication_ratio == round(st.logical_size / st.total_uncompressed_size, 3) > 3
    data_stored = st.blobs_by_type["data"][1]
    assert st.compression_ratio == round(st.total_uncompressed_size / data_stored, 3) < 1.01  # random data
    with pytest.raises(UsageError, match="unknown stats mode"):
        compute(repo, ss, "nonsense")

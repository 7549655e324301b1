"""rekkord.dryrun: a dry-run save writes nothing to the repository (no blob,
record or session marker) and leaves the cache unchanged, and reports what
the real save then does: the same files, new bytes and uploaded bytes."""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3

import pytest

from rekkord.cache import Cache, cache_path
from rekkord.dryrun import DryRunStorage, dry_run_save
from rekkord.errors import ObjectExists, ObjectNotFound
from rekkord.save import SaveOptions, Saver
from rekkord.storage.memory import MemoryStorage


def tree_state(root) -> dict[str, str]:
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            out[rel] = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) else "dir"
    return out


def cache_dump(path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "src"
    (s / "sub").mkdir(parents=True)
    (s / "big.bin").write_bytes(os.urandom(3 << 20))
    for i in range(30):
        (s / "sub" / f"small{i}").write_bytes(os.urandom(2000) * (i % 3 + 1))
    return s


def test_nothing_is_written_and_the_estimate_is_what_the_save_uploads(local_repo, src, tmp_path):
    repo = local_repo.repo("write")
    cpath = cache_path(local_repo.cache_dir, repo.id, "write")
    c = Cache(cpath)
    Saver(repo, c).save("c", [str(src)])
    c.close()
    (src / "big.bin").write_bytes(os.urandom(1 << 20) + (src / "big.bin").read_bytes()[:1 << 20])
    (src / "sub" / "small3").write_bytes(b"changed")
    (src / "new.txt").write_text("new file\n" * 100)
    before, cache_before = tree_state(local_repo.url), cache_dump(cpath)
    dry = dry_run_save(local_repo.repo("write"), cpath, SaveOptions(), "c", [str(src)])
    assert tree_state(local_repo.url) == before  # not a blob, record, marker or temporary file
    assert cache_dump(cpath) == cache_before
    assert dry.stats.files == 32 and dry.stats.files_unchanged == 29 and dry.stats.blobs_new > 0
    c = Cache(cpath)
    real = Saver(local_repo.repo("write"), c).save("c", [str(src)])
    c.close()
    for f in ("files", "files_unchanged", "dirs", "bytes_total", "bytes_read", "bytes_new", "bytes_stored",
              "blobs_new", "blobs_known"):
        assert getattr(dry.stats, f) == getattr(real.stats, f), f
    added = sum(os.path.getsize(os.path.join(local_repo.url, p)) for p, h in tree_state(local_repo.url).items()
                if p.startswith("blobs/") and h != "dir" and p not in before)
    assert dry.uploads["blobs"][1] == added == real.stats.bytes_stored
    assert set(dry.uploads) >= {"blobs", "snapshots", "sessions"}
    assert dry.to_json()["bytes_upload"] == sum(b for _, b in dry.uploads.values())


def test_a_missing_cache_is_not_created_and_a_stream_can_be_dry_run(local_repo, tmp_path):
    repo = local_repo.repo("write")
    cpath = os.path.join(tmp_path, "no-cache-yet", "c.sqlite")
    before = tree_state(local_repo.url)
    dry = dry_run_save(repo, cpath, SaveOptions(), "db", stream=io.BytesIO(b"dump" * 1000), stream_name="app.sql")
    assert dry.stats.files == 1 and dry.stats.bytes_total == 4000 and dry.uploads["blobs"][0] >= 2
    assert not os.path.exists(os.path.dirname(cpath)) and tree_state(local_repo.url) == before


def test_dry_run_storage_reads_through_and_keeps_writes_in_memory():
    inner = MemoryStorage("memory://x")
    inner.write("a", b"real")
    st = DryRunStorage(inner)
    st.write("blobs/00/x", b"12345")
    st.write("sessions/s", b"marker")
    with pytest.raises(ObjectExists):
        st.write("a", b"other")
    assert st.read("a") == b"real" and st.read("sessions/s", 1, 3) == b"ark" and st.stat("blobs/00/x") == 5
    st.delete("a")
    with pytest.raises(ObjectNotFound):
        st.read("a")
    assert sorted(n for n, _ in st.list("")) == ["blobs/00/x", "sessions/s"]
    assert sorted(n for n, _ in inner.list("")) == ["a"] and inner.read("a") == b"real"
    assert st.uploads == {"blobs": [1, 5], "sessions": [1, 6]}

"""rekkord.dump: tar and zip archives of a snapshot, extracted by Python's
tarfile/zipfile, GNU tar and Info-ZIP unzip and compared with the source
tree; hostile names in an index never reach the archive."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import zipfile

import pytest

from rekkord import format as fmt
from rekkord.cache import Cache
from rekkord.dump import dump, safe_name
from craft import data_extent, store
from rekkord.index import K_DIR, K_FILE, K_HARDLINK, K_SYMLINK, Entry
from rekkord.save import Saver
from treeutil import assert_same_tree, make_awkward_tree


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An awkward tree saved once (module-wide: dumping does not change it)."""
    from types import SimpleNamespace

    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.storage.local import LocalStorage

    tmp = tmp_path_factory.mktemp("dump")
    src = tmp / "src"
    make_awkward_tree(src, big=600_000)
    master = Key.generate_master()
    Repository.init(LocalStorage(str(tmp / "repo"), sync=False), master)
    repo = Repository.open(LocalStorage(str(tmp / "repo"), sync=False), master)
    sid = Saver(repo, Cache(None)).save("c", [str(src)]).snapshot_id
    return SimpleNamespace(src=src, repo=repo, snap=repo.load_snapshot(sid), tmp=tmp)


def tar_of(saved, **kw) -> bytes:
    out = io.BytesIO()
    warnings = []
    st = dump(saved.repo, saved.snap, kw.pop("path", str(saved.src)), out, warn=lambda p, m: warnings.append(m),
              **kw)
    return out.getvalue(), st, warnings


def test_tar_extracted_by_tarfile_and_gnu_tar_is_the_source_tree(saved, tmp_path):
    data, st, warnings = tar_of(saved)
    assert warnings == [] and st.skipped == st.damaged == 0 and st.files > 5 and st.links >= 4
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
        assert all(safe_name(os.fsencode(n.rstrip("/"))) for n in names)
        assert any(m.islnk() for m in t.getmembers()) and any(m.issym() for m in t.getmembers())
        t.extractall(tmp_path / "py", filter="fully_trusted")
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    p = subprocess.run(["tar", "-x", "-p", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", str(gnu)],
                       input=data, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert_same_tree(saved.src, gnu, owners=os.geteuid() == 0)
    py = snapshot_without_dir_times(tmp_path / "py")
    src = snapshot_without_dir_times(saved.src)
    assert py.keys() == src.keys()
    for k, a in src.items():
        b = py[k]
        if isinstance(a, dict):  # tarfile keeps times as floats: ~0.2 µs of precision at today's dates
            assert abs(a.pop("mtime", 0) - b.pop("mtime", 0)) < 1000, k
        assert a == b, k


def snapshot_without_dir_times(root):
    from treeutil import snapshot_tree

    tree = snapshot_tree(root, owners=os.geteuid() == 0)
    for info in tree.values():
        if isinstance(info, dict) and info.get("type") in (stat.S_IFDIR, stat.S_IFLNK):
            info.pop("mtime")  # tarfile sets neither (GNU tar does: compared above)
        if isinstance(info, dict):
            info.pop("xattrs", None)  # tarfile does not restore xattrs
    return tree


def test_full_paths_and_a_single_file(saved):
    data, _, _ = tar_of(saved, rooted=False)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
    rel = str(saved.src).lstrip("/")
    assert f"{rel}/plain.txt" in names and all(n.startswith(rel) for n in names)
    out = io.BytesIO()
    st = dump(saved.repo, saved.snap, f"{saved.src}/plain.txt", out)
    assert out.getvalue() == (saved.src / "plain.txt").read_bytes() and st.files == 1


@pytest.mark.skipif(shutil.which("unzip") is None, reason="Info-ZIP unzip not installed")
def test_zip_extracted_by_zipfile_and_unzip(saved, tmp_path):
    data, st, warnings = tar_of(saved, archive="zip")
    # Devices, FIFOs and sockets do not fit in a zip: left out, with a warning each.
    assert st.unsupported == sum("cannot be stored in a zip" in w for w in warnings) >= 1
    assert all("cannot be stored in a zip" in w or "not UTF-8" in w for w in warnings)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = {zi.filename: zi for zi in z.infolist()}
        assert stat.S_IMODE(info["setuid-bin"].external_attr >> 16) == 0o4755
        assert stat.S_ISLNK(info["link-rel"].external_attr >> 16) and z.read("link-rel") == b"plain.txt"
        assert z.read("d1/d2/hard-b") == (saved.src / "d1/hard-a").read_bytes()  # a copy: zip has no links
        assert z.read("big.bin") == (saved.src / "big.bin").read_bytes()
    archive = tmp_path / "x.zip"
    archive.write_bytes(data)
    dest = tmp_path / "unzipped"
    p = subprocess.run(["unzip", "-q", "-X", "-K", str(archive), "-d", str(dest)], capture_output=True)
    assert p.returncode in (0, 1), p.stderr  # 1: warnings (e.g. the non-UTF-8 name)
    for name in ("plain.txt", "private", "setuid-bin", "sparse.img", "closed/inside", "d1/d2/hard-b"):
        a, b = saved.src / name, dest / name
        assert a.read_bytes() == b.read_bytes() and stat.S_IMODE(os.lstat(a).st_mode) == stat.S_IMODE(
            os.lstat(b).st_mode), name
        assert os.lstat(a).st_mtime_ns // 10**9 == os.lstat(b).st_mtime_ns // 10**9, name
    assert os.readlink(dest / "link-rel") == "plain.txt"
    if os.geteuid() == 0:
        assert os.lstat(dest / "owned-by-other").st_uid == 1234


def crafted(repo, entries):
    """A snapshot whose index holds ``entries`` as given (what a hostile writer can make)."""
    stream = b"".join(repo.index.encode(e) for e in entries)
    bid, size, _ = store(repo, fmt.T_INDEX, stream)
    sid = repo.write_snapshot({"channel": "evil", "time_ns": 10**18, "host": "h", "index": [[bid.hex(), size]],
                               "reflist": []})
    return repo.load_snapshot(sid)


def test_hostile_names_never_reach_the_archive(saved):
    repo = saved.repo
    ext = [data_extent(repo, b"payload")]
    entries = [Entry(K_DIR, b"ok", mode=0o755), Entry(K_FILE, b"ok/good", mode=0o644, size=7, extents=ext),
               Entry(K_FILE, b"ok/../../escape", mode=0o644, size=7, extents=ext),
               Entry(K_FILE, b"/etc/cron.d/evil", mode=0o644, size=7, extents=ext),
               Entry(K_FILE, b"ok/./dot", mode=0o644, size=7, extents=ext),
               Entry(K_FILE, b"ok//empty", mode=0o644, size=7, extents=ext),
               Entry(K_HARDLINK, b"ok/link", mode=0o644, size=7, target=b"../../etc/shadow", extents=ext),
               Entry(K_SYMLINK, b"ok/sym", mode=0o777, target=b"/etc/passwd")]
    snap = crafted(repo, entries)
    for archive in ("tar", "zip"):
        out, warnings = io.BytesIO(), []
        st = dump(repo, snap, None, out, archive=archive, warn=lambda p, m: warnings.append(p))
        assert st.skipped == 5 and sorted(warnings) == sorted(["/ok/../../escape", "//etc/cron.d/evil", "/ok/./dot",
                                                               "/ok//empty", "/ok/link"])
        if archive == "tar":
            with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
                assert t.getnames() == ["ok", "ok/good", "ok/sym"]
                assert t.extractfile("ok/good").read() == b"payload"
        else:
            assert zipfile.ZipFile(io.BytesIO(out.getvalue())).namelist() == ["ok/", "ok/good", "ok/sym"]


def test_a_damaged_file_is_dumped_with_zeros_and_reported(saved, tmp_path):
    repo = saved.repo
    x = data_extent(repo, os.urandom(5000))
    name = fmt.blob_name(x.blob)
    snap = crafted(repo, [Entry(K_FILE, b"f", mode=0o600, size=5000, extents=[x]),
                          Entry(K_FILE, b"g", mode=0o600, size=5000, extents=[x])])
    repo.storage.delete(name)
    out, warnings = io.BytesIO(), []
    st = dump(repo, snap, "/", out, warn=lambda p, m: warnings.append((p, m)))
    assert st.damaged == 2 and [p for p, _ in warnings] == ["/f", "/g"]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        assert t.extractfile("f").read() == bytes(5000) and t.getnames() == ["f", "g"]

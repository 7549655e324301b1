"""rekkord.save: the save pipeline on a real local repository.

Covers dedup (an unchanged tree grows the repository by well under 1 %),
packing of small files, excludes, unreadable and changing files (reported by
path, marked in the snapshot, exit code 3), and a save killed with SIGKILL
followed by one that reuses what was uploaded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time

import pytest

from rekkord import format as fmt, index as ix, readers, readworker
from rekkord.cache import Cache, cache_path
from rekkord.errors import UsageError
from rekkord.restore import Restorer
from rekkord.save import Excluder, SaveOptions, Saver
from rekkord.snapshot import iter_entries
from treeutil import assert_same_tree

STDLIB = sysconfig.get_paths()["stdlib"]


def repo_bytes(url: str) -> int:
    """Bytes the repository occupies on disk (allocated blocks)."""
    total = 0
    for dp, _, fs in os.walk(url):
        for f in fs:
            total += os.lstat(os.path.join(dp, f)).st_blocks * 512
    return total


def blob_files(url: str) -> list[str]:
    d = os.path.join(url, "blobs")
    return [os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs if not f.startswith(".tmp-")]


def do_save(local_repo, paths, *, role="write", cache=None, options=None, channel="c", warn=None):
    repo = local_repo.repo(role)
    cache = cache or Cache(cache_path(local_repo.cache_dir, repo.id, role))
    try:
        return Saver(repo, cache, options or SaveOptions(), warn=warn).save(channel, [str(p) for p in paths])
    finally:
        cache.close()


def entries(local_repo, sid) -> dict[bytes, ix.Entry]:
    repo = local_repo.repo("read")
    return {e.path: e for e in iter_entries(repo, repo.load_snapshot(sid))}


def restore(local_repo, sid, sub, dest):
    repo = local_repo.repo("read")
    r = Restorer(repo, repo.load_snapshot(sid))
    r.restore(str(sub), str(dest))
    return r


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory):
    """Copies of real data: part of /usr/share/doc and of Python's library."""
    root = tmp_path_factory.mktemp("real")
    docs = sorted(os.listdir("/usr/share/doc"))[:130]
    for name in docs:
        src = os.path.join("/usr/share/doc", name)
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, root / "doc" / name, symlinks=True)
    for pkg in ("json", "email", "asyncio"):
        shutil.copytree(os.path.join(STDLIB, pkg), root / "lib" / pkg, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copystat("/usr/share/doc", root / "doc")
    return root


def test_unchanged_real_tree_grows_repository_by_well_under_one_percent(local_repo, real_tree, tmp_path):
    first = do_save(local_repo, [real_tree])
    assert first.stats.files > 500 and first.stats.bytes_total > 10 << 20
    size1 = repo_bytes(local_repo.url)
    second = do_save(local_repo, [real_tree])
    size2 = repo_bytes(local_repo.url)
    growth = (size2 - size1) / size1
    assert second.stats.bytes_read == 0 and second.stats.blobs_new == 0
    assert growth < 0.001, f"grew by {growth:.5%}"
    # Without the cache (a fresh machine, or the cache deleted): still no data twice.
    shutil.rmtree(local_repo.cache_dir)
    third = do_save(local_repo, [real_tree])
    size3 = repo_bytes(local_repo.url)
    assert third.stats.bytes_read == third.stats.bytes_total
    assert (size3 - size1) / size1 < 0.01
    print(f"\nreal tree {first.stats.bytes_total} bytes, {first.stats.files} files; repository "
          f"{size1} bytes; unchanged re-save +{size2 - size1} bytes ({growth:.4%}); without cache "
          f"+{size3 - size2} bytes")
    restore(local_repo, third.snapshot_id, real_tree, tmp_path / "out")
    assert_same_tree(real_tree, tmp_path / "out")


def test_small_files_are_packed_and_a_change_disturbs_only_its_pack(local_repo, tmp_path):
    src = tmp_path / "many"
    for d in range(20):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(100):
            (src / f"d{d:02}" / f"f{i:03}").write_bytes(os.urandom(200 + (i * 37) % 3000))
    first = do_save(local_repo, [src])
    before = set(blob_files(local_repo.url))
    assert first.stats.files == 2000
    assert len(before) < 20, f"{len(before)} storage objects for 2000 small files"
    # Change one file in the middle without moving any pack boundary: same
    # size, and neither the old nor the new content is a cut point (the rule
    # is keyed, so ask the repository's own PackCutter).
    cutter = local_repo.repo("write").pack_cutter()
    victim = next(p for p in sorted((src / "d10").iterdir())[50:]
                  if not cutter.should_cut(cutter.min_size, 1, p.read_bytes()))
    size = victim.stat().st_size
    new_content = next(c for c in iter(lambda: os.urandom(size), None)
                       if not cutter.should_cut(cutter.min_size, 1, c))
    victim.write_bytes(new_content)
    shutil.rmtree(local_repo.cache_dir)  # content-defined packing needs no cache
    second = do_save(local_repo, [src])
    new = set(blob_files(local_repo.url)) - before
    new_data = [p for p in new if open(p, "rb").read(5)[4] == fmt.T_DATA]
    assert len(new_data) == 1  # only the pack holding the changed file
    assert second.stats.bytes_new < 0.5 * first.stats.bytes_new
    restore(local_repo, second.snapshot_id, src, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")


def test_parents_of_saved_paths_and_hardlinks(local_repo, tmp_path):
    src = tmp_path / "a" / "b"
    src.mkdir(parents=True)
    (src / "f").write_bytes(b"x" * 5000)
    os.link(src / "f", src / "g")
    (tmp_path / "a" / "not-saved").write_text("no")
    res = do_save(local_repo, [src, src / "f"])  # nested paths collapse into their parent
    es = entries(local_repo, res.snapshot_id)
    rel = str(src).lstrip("/").encode()
    parts = rel.split(b"/")
    for i in range(1, len(parts)):
        assert es[b"/".join(parts[:i])].kind == ix.K_DIR
    assert (rel.rsplit(b"/", 1)[0] + b"/not-saved") not in es
    f, g = es[rel + b"/f"], es[rel + b"/g"]
    assert f.kind == ix.K_FILE and g.kind == ix.K_HARDLINK and g.target == rel + b"/f"
    assert g.extents == f.extents and res.stats.files == 2
    repo = local_repo.repo("read")
    assert repo.private(repo.load_snapshot(res.snapshot_id)) == {"paths": [str(src)]}


def test_bad_arguments(local_repo, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        do_save(local_repo, [tmp_path / "missing"])
    with pytest.raises(UsageError, match="invalid channel"):
        do_save(local_repo, [tmp_path], channel="a/b")
    assert not os.path.exists(os.path.join(local_repo.url, "snapshots"))


def test_excludes(local_repo, tmp_path):
    src = tmp_path / "src"
    for p in ("keep.txt", "skip.tmp", "sub/keep2", "sub/skip.tmp", "build/out.o", "sub/build/x",
              "cache/CACHEDIR.TAG", "cache/blob", "faketag/CACHEDIR.TAG"):
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_bytes(b"data " + p.encode())
    (src / "cache/CACHEDIR.TAG").write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\n# tag")
    opts = SaveOptions(excludes=["*.tmp", f"{src}/build", "# comment"], exclude_caches=True)
    res = do_save(local_repo, [src], options=opts)
    rel = str(src).lstrip("/")
    names = {e.decode()[len(rel) + 1:] for e in entries(local_repo, res.snapshot_id) if e.decode().startswith(rel + "/")}
    assert names == {"keep.txt", "sub", "sub/keep2", "sub/build", "sub/build/x", "cache", "cache/CACHEDIR.TAG",
                     "faketag", "faketag/CACHEDIR.TAG"}
    ex = Excluder(["/a/**/z", "*.o"])
    assert ex.excluded(b"/a/b/c/z", b"z") and ex.excluded(b"/q/x.o", b"x.o") and not ex.excluded(b"/b/z", b"z")


def test_restic_excludes_ignoring_case_by_size_and_by_tag_file(local_repo, tmp_path):
    src = tmp_path / "src"
    files = {"Keep.txt": b"k", "Photo.JPG": b"p", "docs/Report.PDF": b"r", "big.iso": b"x" * 5000,
             "exact.bin": b"y" * 4096, "nobackup/.nobackup": b"", "nobackup/data": b"d",
             "tagged/TAG": b"magic header\nrest", "tagged/sub/file": b"f", "wrongtag/TAG": b"other",
             "wrongtag/file": b"w", "BUILD/x": b"b"}
    for p, data in files.items():
        (src / p).parent.mkdir(parents=True, exist_ok=True)
        (src / p).write_bytes(data)
    warnings = []
    opts = SaveOptions(iexcludes=["*.jpg", f"{str(src).upper()}/DOCS/*.pdf", "build"],
                       exclude_larger_than=4096, exclude_if_present=[".nobackup", "TAG:magic header"])
    res = do_save(local_repo, [src], options=opts, warn=lambda p, m: warnings.append((p, m)))
    rel = str(src).lstrip("/")
    names = {e.decode()[len(rel) + 1:] for e in entries(local_repo, res.snapshot_id) if e.decode().startswith(rel + "/")}
    # restic's rules: a tagged directory keeps only its tag file; --exclude-larger-than is strict (>).
    assert names == {"Keep.txt", "docs", "exact.bin", "nobackup", "nobackup/.nobackup", "tagged", "tagged/TAG",
                     "wrongtag", "wrongtag/TAG", "wrongtag/file"}
    assert warnings == [(f"{src}/wrongtag/TAG", "exclusion tag file does not start with the expected header; "
                                                 "not excluding")]
    ex = Excluder([], ["*.TXT"])
    assert ex.excluded(b"/a/b.txt", b"b.txt") and ex.excluded(b"/a/B.Txt", b"B.Txt")
    assert not Excluder(["*.TXT"]).excluded(b"/a/b.txt", b"b.txt")  # --exclude stays case-sensitive
    with pytest.raises(UsageError, match="give a file name"):
        do_save(local_repo, [src], options=SaveOptions(exclude_if_present=[":header"]))


def test_count_tree_estimates_what_a_save_reads(local_repo, tmp_path):
    from rekkord.save import count_tree

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_bytes(b"a" * 1000)
    (src / "sub" / "b.tmp").write_bytes(b"b" * 500)
    (src / "sub" / "c").write_bytes(b"c" * 3000)
    os.symlink("a", src / "link")
    assert count_tree([str(src)]) == 4500
    assert count_tree([str(src)], SaveOptions(excludes=["*.tmp"], exclude_larger_than=2000)) == 1000
    res = do_save(local_repo, [src], options=SaveOptions(excludes=["*.tmp"]))
    assert res.stats.bytes_total == count_tree([str(src)], SaveOptions(excludes=["*.tmp"])) == 4000
    assert count_tree([str(src)], stop=lambda: True) == 0


def test_one_file_system(local_repo, tmp_path):
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "here").write_text("here")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "mnt")], check=True)
    try:
        (src / "mnt" / "elsewhere").write_text("other fs")
        res = do_save(local_repo, [src], options=SaveOptions(one_file_system=True))
        all_ = do_save(local_repo, [src])
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)
    rel = str(src).lstrip("/").encode()
    es = entries(local_repo, res.snapshot_id)
    assert rel + b"/mnt" in es and rel + b"/here" in es  # the mount point itself is kept, empty
    assert rel + b"/mnt/elsewhere" not in es
    assert rel + b"/mnt/elsewhere" in entries(local_repo, all_.snapshot_id)


# ---- unreadable and changing files ---------------------------------------------------


def cli_env(local_repo, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    env.update(REKKORD_REPOSITORY=local_repo.url, REKKORD_CACHE_DIR=str(tmp_path / "cli-cache"))
    return env


def test_unreadable_files_are_reported_marked_and_exit_3(local_repo, tmp_path):
    """Run the real CLI without root's power to bypass permissions: in a new
    user namespace (``unshare -U``) the process keeps its own files' owner
    permissions but loses CAP_DAC_OVERRIDE, so a mode-000 file is unreadable.
    (``setpriv --reuid`` cannot be used here: /root, which holds Python, is 0700.)"""
    src = tmp_path / "src"
    (src / "closed-dir").mkdir(parents=True)
    (src / "ok.txt").write_text("fine")
    (src / "secret").write_bytes(b"s" * 1000)
    (src / "big-secret").write_bytes(os.urandom(300_000))
    (src / "empty-secret").write_bytes(b"")
    (src / "closed-dir" / "inner").write_text("x")
    for p in ("secret", "big-secret", "empty-secret"):
        os.chmod(src / p, 0)
    os.chmod(src / "closed-dir", 0)
    try:
        p = subprocess.run(["unshare", "-U", sys.executable, "-m", "rekkord", "-k", local_repo.key_files["write"],
                            "save", "--json", "c", str(src)], env=cli_env(local_repo, tmp_path),
                           capture_output=True, timeout=120)
    finally:
        os.chmod(src / "closed-dir", 0o755)
    err = p.stderr.decode()
    assert p.returncode == 3, (p.returncode, err)
    assert "Traceback" not in err
    for name in ("secret", "big-secret", "empty-secret", "closed-dir"):
        assert err.count(f"rekkord: warning: {src}/{name}: ") == 1, name
    assert len(err.splitlines()) == 4, err  # one line per problem, nothing else
    out = json.loads(p.stdout)
    assert out["warnings"] == 4 and {x["path"] for x in out["problems"]} == {
        f"{src}/{n}" for n in ("secret", "big-secret", "empty-secret", "closed-dir")}
    es = entries(local_repo, out["id"])
    rel = str(src).lstrip("/").encode()
    for name in (b"secret", b"big-secret", b"empty-secret"):
        assert es[rel + b"/" + name].flags & ix.F_UNREADABLE, name
        assert es[rel + b"/" + name].extents == []
    assert es[rel + b"/ok.txt"].flags == 0
    # The rest restores; the unreadable files are reported, not faked.
    r = restore(local_repo, out["id"], src, tmp_path / "out")
    assert (tmp_path / "out" / "ok.txt").read_text() == "fine"
    assert not (tmp_path / "out" / "secret").exists()
    assert {os.path.basename(p) for p, m in r.problems if "unreadable" in m} == {"secret", "big-secret", "empty-secret"}


def test_files_changing_while_read_are_reported_and_marked(local_repo, tmp_path, monkeypatch):
    """Deterministic: the small file changes between the walk's stat and its
    read; the large one grows while its chunks are being read."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "small").write_bytes(b"before")
    (src / "large").write_bytes(os.urandom(3 << 20))
    (src / "steady").write_bytes(b"steady")
    real_open = readworker.open_nofollow

    def open_and_change(path):
        if path.endswith(b"/small"):
            with open(path, "ab") as f:
                f.write(b" and after")
        return real_open(path)

    monkeypatch.setattr(readworker, "open_nofollow", open_and_change)
    repo = local_repo.repo("write")
    saver = Saver(repo, Cache(None), warn=lambda p, m: None)
    real_cut = saver.chunker.cut_file

    def cut_and_grow(f, size):
        for i, chunk in enumerate(real_cut(f, size)):
            if i == 0:
                with open(src / "large", "ab") as g:
                    g.write(b"appended while reading")
            yield chunk

    saver.chunker.cut_file = cut_and_grow
    res = saver.save("c", [str(src)])
    assert sorted(p for p, _ in res.warnings) == [f"{src}/large", f"{src}/small"]
    assert all("changed while it was being read" in m for _, m in res.warnings)
    es = entries(local_repo, res.snapshot_id)
    rel = str(src).lstrip("/").encode()
    assert es[rel + b"/small"].flags & ix.F_CHANGED and es[rel + b"/large"].flags & ix.F_CHANGED
    assert es[rel + b"/steady"].flags == 0
    # What was read is stored consistently with the recorded size.
    assert sum(x.length for x in es[rel + b"/large"].extents) == es[rel + b"/large"].size
    assert es[rel + b"/small"].size == len(b"before and after")
    # A changed file is not trusted by the stat cache: the next save reads it again.
    assert res.stats.warnings == 2


def test_cli_exits_3_for_a_file_growing_during_the_save(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(os.urandom(40 << 20))
    stop = threading.Event()

    def grow():
        with open(src / "log", "ab", buffering=0) as f:
            while not stop.is_set():
                f.write(b"line\n")
                time.sleep(0.001)

    t = threading.Thread(target=grow)
    t.start()
    try:
        p = run_cli("-k", local_repo.key_files["write"], "save", "c", src, env={"REKKORD_REPOSITORY": local_repo.url})
    finally:
        stop.set()
        t.join()
    assert p.returncode == 3, p.stderr.decode()
    line = f"rekkord: warning: {src}/log: file changed while it was being read"
    assert p.stderr.decode().count(line) == 1 and p.stderr.decode().count(f"{src}/log") == 1
    assert b"Traceback" not in p.stderr


# ---- interrupted save --------------------------------------------------------------------


@pytest.mark.slow
def test_save_killed_with_sigkill_then_resumed(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(25):
        with open(src / f"f{i:02}", "wb") as f:
            f.write(os.urandom(8 << 20))  # 200 MiB of incompressible data in all
    env = cli_env(local_repo, tmp_path)
    cmd = [sys.executable, "-m", "rekkord", "-j", "1", "-k", local_repo.key_files["write"], "save", "--json",
           "c", str(src)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(blob_files(local_repo.url)) < 40:
            assert proc.poll() is None, "the save ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    uploaded = blob_files(local_repo.url)
    uploaded_bytes = sum(os.path.getsize(p) for p in uploaded)
    assert not os.listdir(os.path.join(local_repo.url, "snapshots")) if os.path.isdir(
        os.path.join(local_repo.url, "snapshots")) else True
    total = 25 * (8 << 20)
    assert 0 < uploaded_bytes < total
    # The next save completes and reuses every blob the killed one stored.
    p = subprocess.run(cmd, env=env, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout)
    assert out["bytes_total"] == total
    assert out["bytes_new"] < total
    assert out["bytes_new"] <= total - (uploaded_bytes - 100 * len(uploaded)) * 0.9
    assert out["blobs_known"] >= len(uploaded) - 1
    print(f"\nkilled after {len(uploaded)} blobs ({uploaded_bytes} bytes); resumed save added "
          f"{out['bytes_new']} of {total} bytes")
    restore(local_repo, out["id"], src, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")


# ---- reader processes ---------------------------------------------------------------------

def _many_small(root, n=600):
    for d in range(n // 100):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (root / f"d{d}" / f"f{i}").write_bytes(os.urandom(1 + (i * 37) % 3000))


def test_reader_processes_save_what_the_threads_save(local_repo, tmp_path, monkeypatch):
    """The same tree (the awkward one, and many small files) saved with its
    small files read in worker processes and on threads: the same index,
    entry for entry, and it restores byte for byte."""
    from treeutil import assert_same_tree, make_awkward_tree
    import rekkord.save as save_mod

    src = tmp_path / "src"
    make_awkward_tree(src / "awkward")
    _many_small(src / "many")
    monkeypatch.setattr(save_mod, "READER_PROCESSES_AFTER", 0)
    by_procs = do_save(local_repo, [src], options=SaveOptions(reader_processes=2), cache=Cache(None))
    by_threads = do_save(local_repo, [src], options=SaveOptions(reader_processes=0), cache=Cache(None))
    assert by_procs.warnings == by_threads.warnings
    assert by_procs.stats.bytes_read == by_threads.stats.bytes_read > 0
    a, b = entries(local_repo, by_procs.snapshot_id), entries(local_repo, by_threads.snapshot_id)
    assert a == b
    restore(local_repo, by_procs.snapshot_id, src, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")


def test_a_reader_process_killed_during_a_save_costs_nothing_but_a_warning(local_repo, tmp_path, monkeypatch):
    from treeutil import assert_same_tree
    import rekkord.save as save_mod

    src = tmp_path / "src"
    _many_small(src, 3000)
    monkeypatch.setattr(save_mod, "READER_PROCESSES_AFTER", 0)
    real_submit = readers.ReaderPool.submit
    calls = []

    def submit_then_kill(self, files):
        calls.append(1)
        if len(calls) == 5:  # batches are in flight in both processes
            self.workers[0].proc.kill()
        return real_submit(self, files)

    monkeypatch.setattr(readers.ReaderPool, "submit", submit_then_kill)
    res = do_save(local_repo, [src], options=SaveOptions(reader_processes=2))
    assert [m for _, m in res.warnings] == ["a reader process ended; reading on threads"]
    assert res.stats.bytes_read == res.stats.bytes_total and res.stats.files == 3000
    restore(local_repo, res.snapshot_id, src, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out")

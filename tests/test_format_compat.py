"""Format compatibility: tests/fixtures/repo-v1/ is a small repository
written by rekkord 0.1 (format v1), tests/fixtures/repo-v2/ one written in
format v2 when it was introduced; both are committed.  Every future version
must open them, list them, restore them identically, check them clean and
go on saving into them.

Each fixture was made once with ``python tests/test_format_compat.py --make
VERSION DIR`` (see :func:`make_fixture`); never regenerate one to make a test
pass: a change that breaks these tests breaks every existing repository.

Contents: ``master.key`` (unprotected), ``audit.key`` (passphrase
``rekkord-v1-fixture``, Argon2id), ``write.key`` (wrote both snapshots), and the
repository in ``repo/``: snapshot ``v1`` of the tree :func:`build_tree` makes
at the fixture's source path, and snapshot ``single`` of one file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
AUDIT_PASSPHRASE = "rekkord-v1-fixture"

# Pinned facts about the committed fixtures (the source path is the absolute
# path recorded in each).
FIXTURES = {
    1: {"dir": os.path.join(HERE, "fixtures", "repo-v1"), "source": "/tmp/rekkord-v1-fixture/src",
        "repo": "15c8befa353ccc56977802488f691a61",
        "snapshots": {"v1": "f708826f9608b0d130cb15c3d99d01f8", "single": "ba3595a85398f84e7b8e01e510224842"}},
    2: {"dir": os.path.join(HERE, "fixtures", "repo-v2"), "source": "/tmp/rekkord-v2-fixture/src",
        "repo": "15bcebf289bfc8206ab239fdd7dc0f39", "snapshots": {"v1": "024c7d33ed6b5b96301d5f6f456d15b2", "single": "980f5a96a9edc5a29e62e06373c349e9"}},
}
VERSION = 1
FIXTURE, SOURCE = FIXTURES[1]["dir"], FIXTURES[1]["source"]
REPO_ID, SNAPSHOTS = FIXTURES[1]["repo"], FIXTURES[1]["snapshots"]


def build_tree(root: str) -> None:
    """The fixture's source tree, byte for byte and with fixed metadata."""
    r = os.fsencode(root)
    os.makedirs(r + b"/dir/sub", exist_ok=True)

    def w(rel: bytes, data: bytes, mode: int = 0o644):
        p = r + b"/" + rel
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)

    w(b"hello.txt", b"hello, rekkord format v1\n")
    w(b"empty", b"")
    w(b"private.txt", b"mode 0600\n", 0o600)
    w(b"caf\xe9-latin1", b"a name that is not UTF-8\n")
    w(b"dir/nested.txt", b"nested\n" * 3)
    w(b"dir/sub/run.sh", b"#!/bin/sh\necho v1\n", 0o755)
    # >= 256 KiB: cut by FastCDC into its own data blob; compresses to little.
    w(b"dir/big.txt", b"".join(b"line %06d of the rekkord v1 fixture\n" % i for i in range(8000)))
    os.link(r + b"/hello.txt", r + b"/dir/hardlink-to-hello")
    os.symlink(b"../hello.txt", r + b"/dir/link-to-hello")
    os.symlink(b"/nonexistent/dangling", r + b"/dangling")
    os.setxattr(r + b"/hello.txt", "user.rekkord", b"v1 fixture")
    os.chmod(r + b"/dir/sub", 0o750)
    t = 1_700_000_000_123_456_789
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for n in sorted(filenames + dirnames):
            os.utime(os.path.join(dirpath, n), ns=(t, t), follow_symlinks=False)
            t += 1_000_000_007
    os.utime(r, ns=(t, t))


def make_fixture(version: int, out: str) -> None:
    """Write a fixture (run once, by hand; see the module docstring)."""
    SOURCE = FIXTURES[version]["source"]
    sys.path.insert(0, os.path.dirname(HERE))
    from rekkord.cache import Cache
    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.save import SaveOptions, Saver
    from rekkord.storage.local import LocalStorage

    if os.path.exists(SOURCE):
        shutil.rmtree(SOURCE)
    build_tree(SOURCE)
    os.makedirs(out)
    master = Key.generate_master()
    storage = LocalStorage(os.path.join(out, "repo"))
    Repository.init(storage, master, version=version)
    admin = Repository.open(storage, master)
    write, audit = master.derive("write", "fixture-writer"), master.derive("audit", "fixture-auditor")
    for k in (write, audit):
        admin.publish_cert(k.cert)
    master.save(os.path.join(out, "master.key"))
    write.save(os.path.join(out, "write.key"))
    audit.save(os.path.join(out, "audit.key"), AUDIT_PASSPHRASE)
    repo = Repository.open(LocalStorage(os.path.join(out, "repo")), write)
    opts = SaveOptions(host="fixture-host")
    a = Saver(repo, Cache(None), opts).save("v1", [SOURCE], time_ns=1_700_000_100_000_000_000)
    b = Saver(repo, Cache(None), opts).save("single", [SOURCE + "/hello.txt"], time_ns=1_700_000_200_000_000_000)
    print(json.dumps({"repo": master.repo, "snapshots": {"v1": a.snapshot_id, "single": b.snapshot_id}}))


# ---- the tests ---------------------------------------------------------------------------

@pytest.fixture(params=sorted(FIXTURES), ids=lambda v: f"v{v}")
def fixture_copy(tmp_path, request):
    """A private copy of each fixture: nothing may ever write into a committed one."""
    global VERSION, FIXTURE, SOURCE, REPO_ID, SNAPSHOTS
    VERSION = request.param
    f = FIXTURES[VERSION]
    FIXTURE, SOURCE, REPO_ID, SNAPSHOTS = f["dir"], f["source"], f["repo"], f["snapshots"]
    d = tmp_path / f"repo-v{VERSION}"
    shutil.copytree(FIXTURE, d)
    for name in ("master.key", "write.key", "audit.key"):
        os.chmod(d / name, 0o600)
    return d


def open_repo(d, name="master.key", passphrase=None):
    from rekkord import keys
    from rekkord.repository import Repository
    from rekkord.storage.local import LocalStorage

    return Repository.open(LocalStorage(str(d / "repo")), keys.load(str(d / name), passphrase))


def test_opens_and_lists(fixture_copy):
    repo = open_repo(fixture_copy)
    assert repo.config["format"] == VERSION and repo.id == REPO_ID
    snaps = repo.snapshots()
    assert [(s.id, s.channel, s.time_ns, s.host) for s in snaps] == [
        (SNAPSHOTS["v1"], "v1", 1_700_000_100_000_000_000, "fixture-host"),
        (SNAPSHOTS["single"], "single", 1_700_000_200_000_000_000, "fixture-host")]
    assert all(s.signature_ok for s in snaps)
    assert repo.private(snaps[0]) == {"paths": [SOURCE]}
    assert {c["label"] for c in repo.certificates().values()} == {"fixture-writer", "fixture-auditor"}


def test_index_lists_every_entry(fixture_copy, tmp_path):
    from rekkord import index as ix
    from rekkord.snapshot import iter_entries, select

    repo = open_repo(fixture_copy)
    es = {rel: e for e, rel in select(iter_entries(repo, repo.resolve("v1")), SOURCE.lstrip("/").encode())}
    assert sorted(es) == sorted([b"", b"caf\xe9-latin1", b"dangling", b"dir", b"dir/big.txt",
                                 b"dir/hardlink-to-hello", b"dir/link-to-hello", b"dir/nested.txt", b"dir/sub",
                                 b"dir/sub/run.sh", b"empty", b"hello.txt", b"private.txt"])
    # dir/ sorts before hello.txt: the first link seen holds the content.
    assert es[b"dir/hardlink-to-hello"].kind == ix.K_FILE and es[b"hello.txt"].kind == ix.K_HARDLINK
    assert es[b"hello.txt"].target == SOURCE.lstrip("/").encode() + b"/dir/hardlink-to-hello"
    assert es[b"dir/link-to-hello"].target == b"../hello.txt"
    assert es[b"hello.txt"].xattrs == [(b"user.rekkord", b"v1 fixture")]
    assert es[b"dir/big.txt"].size == 8000 * 38 and es[b"private.txt"].mode == 0o600
    built = tmp_path / "built"
    build_tree(str(built))
    for rel, e in es.items():
        if rel:
            assert e.mtime_ns == os.lstat(os.fsencode(built) + b"/" + rel).st_mtime_ns, rel


def test_restores_identically(fixture_copy, tmp_path):
    from rekkord.restore import Restorer
    from treeutil import assert_same_tree

    expected = tmp_path / "expected"
    build_tree(str(expected))
    repo = open_repo(fixture_copy)
    r = Restorer(repo, repo.resolve("v1"))
    r.restore(SOURCE, str(tmp_path / "out"))
    assert r.problems == []
    assert_same_tree(expected, tmp_path / "out", owners=os.geteuid() == 0)
    r = Restorer(repo, repo.resolve(SNAPSHOTS["single"][:8]))
    r.restore(SOURCE + "/hello.txt", str(tmp_path / "one"))
    assert (tmp_path / "one" / "hello.txt").read_bytes() == b"hello, rekkord format v1\n"


def test_checks_clean_with_audit_and_master_keys(fixture_copy):
    from rekkord.cache import Cache
    from rekkord.check import Checker

    audit = open_repo(fixture_copy, "audit.key", AUDIT_PASSPHRASE)
    report = Checker(audit, Cache(None)).run()
    assert report.ok, [str(p) for p in report.problems]
    assert report.snapshots == 2 and report.orphans == 0
    report = Checker(open_repo(fixture_copy), Cache(None), read_data=True).run()
    assert report.ok, [str(p) for p in report.problems]


def test_same_tree_saved_again_adds_no_data(fixture_copy, tmp_path):
    """Blob ids, the chunker and small-file packing are stable for a v1
    repository: today's save of the same content finds every data blob."""
    from rekkord import format as fmt
    from rekkord.cache import Cache
    from rekkord.save import Saver

    src = tmp_path / "again"
    build_tree(str(src))
    before = {p for p, _ in _blob_files(fixture_copy)}
    Saver(open_repo(fixture_copy, "write.key"), Cache(None)).save("again", [str(src)])
    new = [(p, t) for p, t in _blob_files(fixture_copy) if p not in before]
    assert [p for p, t in new if t == fmt.T_DATA] == []


def test_forgets_and_prunes(fixture_copy):
    """forget and prune with the audit key: the forgotten snapshot's own data
    goes, the other snapshot still restores and checks clean."""
    from rekkord.cache import Cache
    from rekkord.check import Checker
    from rekkord.forget import forget
    from rekkord.gc import prune

    audit = open_repo(fixture_copy, "audit.key", AUDIT_PASSPHRASE)
    forget(audit, ids=[SNAPSHOTS["v1"]])
    prune(audit, session_timeout=0)
    prune(audit, session_timeout=0)
    assert [s.id for s in audit.snapshots()] == [SNAPSHOTS["single"]]
    report = Checker(open_repo(fixture_copy), Cache(None), read_data=True).run()
    assert report.ok and report.orphans == 0, [str(p) for p in report.problems]


def _blob_files(d):
    for dp, _, fs in os.walk(d / "repo" / "blobs"):
        for f in fs:
            with open(os.path.join(dp, f), "rb") as fh:
                yield os.path.join(dp, f), fh.read(5)[4]


def test_cli_reads_v1(fixture_copy, run_cli, tmp_path):
    env = {"REKKORD_REPOSITORY": str(fixture_copy / "repo")}
    snaps = json.loads(run_cli("-k", fixture_copy / "master.key", "snapshots", "--json", env=env, check=0).stdout)
    assert [s["id"] for s in snaps] == [SNAPSHOTS["v1"], SNAPSHOTS["single"]]
    run_cli("-k", fixture_copy / "master.key", "restore", f"v1:{SOURCE}/dir", tmp_path / "dir", env=env, check=0)
    assert (tmp_path / "dir" / "nested.txt").read_bytes() == b"nested\n" * 3
    run_cli("-k", fixture_copy / "audit.key", "check", env={**env, "REKKORD_PASSPHRASE": AUDIT_PASSPHRASE}, check=0)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--make":
        make_fixture(int(sys.argv[2]), sys.argv[3])
    else:
        print(__doc__)

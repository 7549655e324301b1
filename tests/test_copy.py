"""rekkord.copy: snapshots copied between repositories (3-2-1, and format v1
to v2), with real trees and real repositories on local directories."""

import os

import pytest

from rekkord.cache import Cache
from rekkord.check import Checker
from rekkord.copy import copy, select
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.restore import Restorer
from rekkord.save import SaveOptions, Saver
from rekkord.storage.local import LocalStorage
from treeutil import assert_same_tree, make_awkward_tree


def new_repo(path, version=2, like=None):
    master = Key.generate_master()
    Repository.init(LocalStorage(str(path), sync=False), master, version=version, like=like)
    admin = Repository.open(LocalStorage(str(path), sync=False), master)
    write = master.derive("write", "copier")
    admin.publish_cert(write.cert)
    return admin, Repository.open(LocalStorage(str(path), sync=False), write)


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    make_awkward_tree(src, big=1 << 20)
    admin, write = new_repo(tmp_path / "v1", version=1)
    a = Saver(write, Cache(None), SaveOptions(host="web01", tags=["nightly"])).save("etc", [str(src)],
                                                                                   time_ns=1_700_000_000 * 10**9)
    (src / "plain.txt").write_text("changed\n")
    b = Saver(write, Cache(None), SaveOptions(host="web01")).save("etc", [str(src)], time_ns=1_700_086_400 * 10**9)
    return src, admin, [a.snapshot_id, b.snapshot_id]


def test_a_v1_repository_copied_into_a_v2_one_restores_the_same(source, tmp_path):
    src, v1, sids = source
    admin, write = new_repo(tmp_path / "v2", version=2, like=v1)
    cache = Cache(str(tmp_path / "dest.sqlite"))
    rep = copy(v1, write, cache, select(v1, []))
    assert [a for a, _ in rep.copied] == sids and not rep.failed and not rep.untrusted
    assert admin.version == 2
    copies = {s.record["copy_of"].split(":")[1]: s for s in admin.snapshots()}
    for sid in sids:
        o, c = v1.load_snapshot(sid), copies[sid]
        assert (c.channel, c.host, c.time_ns, c.tags, c.signature_ok) == (o.channel, o.host, o.time_ns, o.tags, True)
        assert admin.private(c) == v1.private(o)
    out = tmp_path / "out"
    Restorer(admin, copies[sids[1]]).restore(str(src), str(out))
    assert_same_tree(src, out)
    for role_repo in (admin,):
        r = Checker(role_repo, Cache(None), read_data=True).run()
        assert r.ok, [str(p) for p in r.problems]
    # Resuming: nothing is copied twice (the writer's cache remembers), and
    # a key that lists the destination sees the copies themselves.
    assert copy(v1, write, cache, select(v1, [])).skipped == sids
    assert copy(v1, admin, Cache(None), select(v1, [])).skipped == sids
    # Sharing the chunker (init --from-repo): a save of the same tree into the
    # copy finds every data blob there already.
    res = Saver(write, Cache(None)).save("etc", [str(src)])
    assert res.stats.blobs_proven > 0 and res.stats.bytes_new < 0.05 * res.stats.bytes_total


def test_a_damaged_file_in_the_source_is_named_and_the_rest_copied(source, tmp_path):
    from rekkord import format as fmt
    from rekkord.snapshot import iter_entries

    src, v1, sids = source
    snap = v1.load_snapshot(sids[0])
    big = next(e for e in iter_entries(v1, snap) if e.path.endswith(b"big.bin"))
    os.unlink(os.path.join(str(tmp_path / "v1"), fmt.blob_name(big.extents[0].blob)))
    admin, write = new_repo(tmp_path / "v2", like=v1)
    warnings = []
    rep = copy(v1, write, Cache(None), [snap], warn=lambda p, m: warnings.append((p, m)))
    assert len(rep.copied) == 1 and any(p.endswith("big.bin") and "DAMAGED" in m for p, m in warnings)
    copied = admin.load_snapshot(rep.copied[0][1])
    names = {e.path.rsplit(b"/", 1)[-1] for e in iter_entries(admin, copied)}
    assert b"big.bin" not in names and b"plain.txt" in names
    assert Checker(admin, Cache(None), read_data=True).run().ok


def test_copy_needs_a_key_that_reads_the_source_and_one_that_saves_here(source, tmp_path):
    from rekkord.errors import PermissionDenied

    src, v1, sids = source
    admin, write = new_repo(tmp_path / "v2")
    w1 = v1.key.derive("write", "w")
    v1.publish_cert(w1.cert)
    with pytest.raises(PermissionDenied):
        copy(Repository.open(v1.storage, w1), write, Cache(None), [])
    audit = admin.key.derive("audit", "a")
    admin.publish_cert(audit.cert)
    with pytest.raises(PermissionDenied):
        copy(v1, Repository.open(admin.storage, audit), Cache(None), [])

"""rekkord/tags.py: tags changed after the fact by signed annotations; the
snapshot records are never rewritten, only keys that read may tag, and every
other annotation (a write or audit key's, one forged or moved by the storage)
is ignored and named."""

import pytest

from attacker import Attacker
from rekkord import tags
from rekkord.cache import Cache
from rekkord.check import Checker
from rekkord.errors import PermissionDenied, UsageError
from rekkord.save import SaveOptions, Saver
from rekkord.selection import select


@pytest.fixture
def tagged(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    saver = Saver(local_repo.repo("write"), Cache(None), SaveOptions(tags=["nightly", "keep"]))
    return saver.save("c", [str(src)]).snapshot_id


def tags_seen(local_repo, sid, role="read"):
    problems = []
    repo = local_repo.repo(role)
    snap = next(s for s in repo.snapshots(on_problem=lambda n, m: problems.append((n, m))) if s.id == sid)
    assert repo.load_snapshot(sid).tags == snap.tags
    return snap.tags, problems


def test_tags_change_by_annotations_and_the_record_stays(local_repo, tagged):
    repo = local_repo.repo("read")
    record = repo.storage.read(f"snapshots/{tagged}")
    snap = repo.load_snapshot(tagged)
    assert tags.write(repo, snap, add=["audit-2026"]) is not None
    assert tags_seen(local_repo, tagged) == (["nightly", "keep", "audit-2026"], [])
    assert tags_seen(local_repo, tagged, "audit")[0] == ["nightly", "keep", "audit-2026"]  # audit keys see tags
    assert tags.write(repo, snap, remove=["keep"], add=["legal-hold"])
    assert snap.tags == ["nightly", "audit-2026", "legal-hold"] == tags_seen(local_repo, tagged)[0]
    assert snap.saved_tags == ["nightly", "keep"]
    # Nothing changes: nothing is written.
    before = sorted(repo.storage.list("annotations/"))
    assert tags.write(repo, snap, add=["nightly"]) is None and sorted(repo.storage.list("annotations/")) == before
    # --set, by another key that reads (full, admin), each in a fresh Repository.
    assert tags.write(local_repo.repo("full"), local_repo.repo("full").load_snapshot(tagged), set_=["x"])
    assert tags_seen(local_repo, tagged)[0] == ["x"]
    admin = local_repo.repo("admin")
    assert tags.write(admin, admin.load_snapshot(tagged), set_=[])
    assert tags_seen(local_repo, tagged)[0] == []
    assert repo.storage.read(f"snapshots/{tagged}") == record  # the signed record is untouched
    # Selections (snapshots --tag, forget --keep-tag, copy) see the tags as they are now.
    snaps = local_repo.repo("audit").snapshots()
    assert select(None, snaps, tags=["nightly"]) == [] and [s.id for s in select(None, snaps, tags=[""])] == [tagged]
    r = Checker(local_repo.repo("audit")).run()
    assert r.problems == []


def test_only_keys_that_read_may_tag(local_repo, tagged):
    for role in ("write", "audit"):
        repo = local_repo.repo(role)
        snap = local_repo.repo("read").load_snapshot(tagged)
        with pytest.raises(PermissionDenied):
            tags.write(repo, snap, add=["x"])
    repo = local_repo.repo("read")
    with pytest.raises(UsageError):
        tags.write(repo, repo.load_snapshot(tagged), set_=["a"], add=["b"])
    with pytest.raises(UsageError):
        tags.write(repo, repo.load_snapshot(tagged))
    with pytest.raises(UsageError):
        tags.split_tags(["ok,bad\x1b[2J"])
    assert tags.split_tags(["a,b", " c ", "a", ""]) == ["a", "b", "c"]


def test_hostile_annotations_are_ignored_and_named(local_repo, tagged):
    """A write key (a compromised machine stripping the tag that keeps its
    old snapshots), an audit key, the storage (no key: cannot even seal to
    the log key with the right mix), and a genuine annotation moved to
    another name or replayed onto another repository's id: all ignored, each
    named; check reports them."""
    url = local_repo.url
    bad = {}
    for role in ("write", "audit"):
        bad[Attacker(url, local_repo.key_files[role]).annotation(tagged, remove=["keep"])] = f"{role} key, which may not change tags"
    bad[Attacker(url, None).annotation(tagged, set=[])] = "cannot be opened"
    reader = Attacker(url, local_repo.key_files["read"])
    genuine = reader.annotation(tagged, add=["ok"])
    moved = f"annotations/{'0' * 32}"
    reader.storage.write(moved, reader.storage.read(genuine))
    bad[moved] = "cannot be opened"
    bad[reader.annotation(tagged, add=["y"], set=["z"])] = "both sets and changes"
    bad[reader.annotation("nothex", add=["z"])] = "snapshot"
    bad[reader.annotation(tagged, add=["\x1b[2J"])] = "control characters"
    seen, problems = tags_seen(local_repo, tagged)
    assert seen == ["nightly", "keep", "ok"]
    named = dict(problems)
    assert set(named) == set(bad), problems
    for name, why in bad.items():
        assert named[name].startswith("ignored: ") and why in named[name], (name, named[name])
    r = Checker(local_repo.repo("audit")).run()
    assert sorted(p.object for p in r.problems) == sorted(bad) and all(p.kind == "untrusted" for p in r.problems)

"""rekkord.snapshot: the validating entry stream (EntryValidator, iter_entries),
sub-path selection.  Index streams are built by an attacker holding a write
key (tests/attacker.py): restore, mount and the listings see only what a
genuine save could have written."""


import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from attacker import Attacker
from rekkord.errors import IntegrityError, PathNotFound
from rekkord.index import K_DIR, K_FILE, K_HARDLINK, K_SYMLINK, Entry, encode
from rekkord.snapshot import F_IMPLICIT, EntryValidator, iter_entries, normalize_subpath, path_problem, select


def names(es):
    return [e.path for e in es]


def run(entries, *, resync_at=None):
    v = EntryValidator()
    out, refused = [], []
    for i, e in enumerate(entries):
        if i == resync_at:
            v.resync()
        got = v.check(e)
        if got is None:
            if v.last_refusal:
                refused.append((e.path, v.last_refusal))
        else:
            out += got
    return out, refused


def test_a_genuine_tree_passes_unchanged():
    es = [Entry(K_DIR, b""), Entry(K_DIR, b"a"), Entry(K_FILE, b"a/f"), Entry(K_DIR, b"a/z"),
          Entry(K_FILE, b"a/z/g"), Entry(K_FILE, b"a-b"), Entry(K_SYMLINK, b"b", target=b"../x"),
          Entry(K_HARDLINK, b"c", target=b"a/f")]
    out, refused = run(es)
    assert names(out) == names(es) and refused == []


@pytest.mark.parametrize("path,why", [(b"../x", "'.' or '..'"), (b"/x", "absolute"), (b"a//b", "empty"),
                                      (b"a\0b", "NUL"), (b"n" * 256, "component too long"),
                                      (b"d/" * 2100 + b"x", "too long"), (b"./x", "'.'"), (b"x/", "empty")])
def test_paths_no_save_writes_are_refused(path, why):
    assert why in path_problem(path)
    out, refused = run([Entry(K_DIR, b"d"), Entry(K_FILE, path), Entry(K_FILE, b"zz")])
    assert names(out) == [b"d", b"zz"] and refused == [(path, refused[0][1])] and why in refused[0][1]


def test_order_parents_and_descendants_of_refused_entries():
    es = [Entry(K_SYMLINK, b"l", target=b"/etc"), Entry(K_FILE, b"l/passwd"), Entry(K_FILE, b"l/shadow"),
          Entry(K_DIR, b"m"), Entry(K_FILE, b"m/a"), Entry(K_FILE, b"m/a"), Entry(K_FILE, b"m/0"),
          Entry(K_FILE, b"n/x"), Entry(K_FILE, b"o")]
    out, refused = run(es)
    assert names(out) == [b"l", b"m", b"m/a", b"o"]
    assert [p for p, _ in refused] == [b"l/passwd", b"l/shadow", b"m/a", b"m/0", b"n/x"]


def test_a_refused_directory_hides_its_subtree_without_one_report_each():
    es = [Entry(K_DIR, b"a\0"), Entry(K_FILE, b"b"), Entry(K_DIR, b"c", mode=0o170000), Entry(K_FILE, b"c/1"),
          Entry(K_FILE, b"c/2"), Entry(K_FILE, b"d")]
    v = EntryValidator()
    got = [v.check(e) for e in es]
    assert [g is not None for g in got] == [False, True, False, False, False, True]
    assert v.skipped == 2


def test_after_a_lost_run_missing_parents_come_back_as_implicit_directories():
    es = [Entry(K_DIR, b"a"), Entry(K_FILE, b"a/f"), Entry(K_FILE, b"a/g/c/g"), Entry(K_FILE, b"a/g/c/h")]
    out, refused = run(es, resync_at=2)
    assert names(out) == [b"a", b"a/f", b"a/g", b"a/g/c", b"a/g/c/g", b"a/g/c/h"] and refused == []
    assert [bool(e.flags & F_IMPLICIT) for e in out] == [False, False, True, True, False, False]
    # ... but never below something seen not to be a directory.
    out, refused = run([Entry(K_SYMLINK, b"s", target=b"/"), Entry(K_FILE, b"s/x")], resync_at=1)
    assert names(out) == [b"s"] and len(refused) == 1


def test_normalize_subpath_and_select():
    assert normalize_subpath("/a/./b/") == b"a/b"
    with pytest.raises(PathNotFound):
        normalize_subpath("/a/../b")
    es = [Entry(K_DIR, b"a"), Entry(K_FILE, b"a/x"), Entry(K_FILE, b"ab")]
    assert [r for _, r in select(iter(es), b"a")] == [b"", b"x"]


kinds = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 255])
comp = st.sampled_from([b"a", b"b", b"..", b".", b"", b"c\0", b"x" * 300, b"\xff"])
paths = st.lists(comp, min_size=0, max_size=4).map(b"/".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(kinds, paths, st.integers(0, 0o177777), paths, st.integers(0, 300)), max_size=12),
       st.one_of(st.none(), st.integers(0, 12)))
def test_fuzz_the_validator_keeps_its_promises(items, resync_at):
    es = [Entry(k, p, mode=m, target=t, flags=fl) for k, p, m, t, fl in items]
    out, refused = run(es, resync_at=resync_at)
    seen, dirs = [], {()}
    for e in out:
        comps = tuple(e.path.split(b"/")) if e.path else ()
        assert path_problem(e.path) is None or e.path == b""
        assert all(seen[-1] < comps for _ in [0] if seen)  # strictly ordered: no repeats
        assert comps[:-1] in dirs or comps == ()  # every parent a directory seen before
        if e.kind == K_DIR:
            dirs.add(comps)
        seen.append(comps)


@pytest.fixture
def w(local_repo):
    return Attacker(local_repo.url, local_repo.key_files["write"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.binary(max_size=3000), pieces=st.integers(1, 4))
def test_fuzz_iter_entries_on_random_index_streams(local_repo, w, stream, pieces):
    """Random index bytes sealed by a write key: a typed error or refusals, in
    both the plain and the salvaging reader."""
    sid = w.record("c", w.index(stream, pieces))
    repo = local_repo.repo("read")
    snap = repo.load_snapshot(sid)
    try:
        list(iter_entries(repo, snap, on_refused=lambda p, m: None))
    except IntegrityError:
        pass
    list(iter_entries(repo, snap, on_damage=lambda *a: None, on_refused=lambda p, m: None))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=6))
def test_fuzz_iter_entries_on_mutated_genuine_indexes(local_repo, w, flips):
    es = [Entry(K_DIR, b"d", mode=0o755)] + [Entry(K_FILE, b"d/f%03d" % i, mode=0o644, size=3, extents=w.data(b"%03d" % i))
                                             for i in range(30)]
    stream = bytearray(b"".join(encode(e) for e in es))
    for pos, x in flips:
        stream[pos % len(stream)] ^= x
    sid = w.record("c", w.index(bytes(stream), 2))
    repo = local_repo.repo("read")
    snap = repo.load_snapshot(sid)
    got = list(iter_entries(repo, snap, on_damage=lambda *a: None, on_refused=lambda p, m: None))
    assert all(path_problem(e.path) is None for e in got)

"""Crash safety of save (docs/integrity.md, "Write ordering").

A real `rekkord save` process is killed — with SIGKILL at random times (many
seeds), or at an exact storage operation (every kind of write, each flush) —
optionally followed by a simulated power loss that empties or removes every
object written since the last flush.  Each time: `check` with an audit key
finds the repository clean, the next save completes and uploads only what
is missing, and the snapshot restores equal to the source.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from faulty_storage import FaultyStorage, lose_unflushed_writes, run_check
from rekkord.cache import Cache, cache_path
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.restore import Restorer
from rekkord.save import Saver
from rekkord.storage.local import LocalStorage
from treeutil import assert_same_tree

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """About 20 MiB: large files cut in chunks, hundreds of small files in packs."""
    root = tmp_path_factory.mktemp("crash") / "src"
    rng = random.Random(1)
    for i in range(5):
        d = root / f"big{i}"
        d.mkdir(parents=True)
        with open(d / "data.bin", "wb") as f:
            f.write(rng.randbytes(3_000_000 + 1000 * i))
    for i in range(400):
        d = root / "small" / f"d{i % 17:02}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{i:03}", "wb") as f:
            f.write(rng.randbytes(rng.randrange(10, 12_000)))
    return root


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An initialised repository with keys of every role (no snapshot yet)."""
    root = tmp_path_factory.mktemp("crash-template")
    master = Key.generate_master()
    storage = LocalStorage(str(root / "repo"))
    Repository.init(storage, master)
    admin = Repository.open(storage, master)
    keys, files = {"admin": master}, {}
    for role in ("write", "audit", "read"):
        keys[role] = master.derive(role, f"t-{role}")
        admin.publish_cert(keys[role].cert)
    for role, k in keys.items():
        files[role] = str(root / f"{role}.key")
        k.save(files[role])
    return root, keys, files


class Case:
    def __init__(self, template, tmp_path):
        root, self.keys, self.key_files = template
        self.url = str(tmp_path / "repo")
        shutil.copytree(root / "repo", self.url)
        self.cache_dir = str(tmp_path / "cache")
        self.tmp = tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
        self.env.update(REKKORD_REPOSITORY=self.url, REKKORD_CACHE_DIR=self.cache_dir)
        self.local = type("L", (), {"repo": lambda _s, role="admin": self.repo(role), "cache_dir": self.cache_dir})()

    def repo(self, role, storage=None):
        return Repository.open(storage or LocalStorage(self.url), self.keys[role])

    def save_cmd(self, src, spec=None):
        base = [sys.executable, os.path.join(HERE, "faulty_storage.py"), json.dumps(spec)] if spec else \
            [sys.executable, "-m", "rekkord"]
        return base + ["-k", self.key_files["write"], "save", "--json", "c", str(src)]

    def blobs(self) -> set[str]:
        return {n for n, _ in LocalStorage(self.url).list("blobs/")}

    def check_clean(self):
        from faulty_storage import run_check as rc

        r = rc(self.local, "audit")
        assert r.ok, [str(p) for p in r.problems]
        return r

    def resave_counting(self, src):
        """The next save, in-process over a counting storage, with the write
        key's cache as the killed process left it."""
        counting = FaultyStorage(LocalStorage(self.url))
        repo = self.repo("write", counting)
        cache = Cache(cache_path(self.cache_dir, repo.id, "write"))
        try:
            res = Saver(repo, cache).save("c", [str(src)])
        finally:
            cache.close()
        return res, [n for n in counting.written if n.startswith("blobs/")]

    def restore_equal(self, sid, src):
        repo = self.repo("read")
        out = self.tmp / f"out-{sid[:8]}"
        r = Restorer(repo, repo.load_snapshot(sid))
        r.restore(str(src), str(out))
        assert r.stats.damaged == 0 and r.problems == []
        assert_same_tree(src, out)


def after_crash(case: Case, src, present: set[str]):
    """What must hold after any interruption."""
    case.check_clean()
    res, uploaded = case.resave_counting(src)
    # Only what is missing is uploaded: nothing the killed save had stored
    # (and the storage kept) is written again.
    assert not set(uploaded) & present, sorted(set(uploaded) & present)[:3]
    assert res.stats.blobs_new == len(uploaded)
    r = case.check_clean()
    assert r.snapshots >= 1
    case.restore_equal(res.snapshot_id, src)
    return res


def full_save_time(case: Case, src) -> float:
    t = time.monotonic()
    p = subprocess.run(case.save_cmd(src), env=case.env, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return time.monotonic() - t


def kill_at_random(case: Case, src, delay: float):
    proc = subprocess.Popen(case.save_cmd(src), env=case.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def random_kill_rounds(template, tmp_path, source, seeds):
    probe = Case(template, tmp_path / "probe")
    duration = full_save_time(probe, source)
    outcomes = {"killed": 0, "finished": 0}
    for seed in seeds:
        case = Case(template, tmp_path / f"seed{seed}")
        delay = random.Random(seed).uniform(0.05, duration * 1.1)
        rc = kill_at_random(case, source, delay)
        outcomes["killed" if rc == -signal.SIGKILL else "finished"] += 1
        assert rc in (0, -signal.SIGKILL), rc
        after_crash(case, source, case.blobs())
    print(f"\nfull save {duration:.2f}s; {outcomes}")
    assert outcomes["killed"] >= len(seeds) // 2


def test_save_killed_at_random_times(template, tmp_path, source):
    random_kill_rounds(template, tmp_path, source, range(4))


@pytest.mark.slow
def test_save_killed_at_random_times_many_seeds(template, tmp_path, source):
    random_kill_rounds(template, tmp_path, source, range(100, 140))


def count_operations(template, tmp_path, src) -> dict:
    """Writes and flushes of a full save, by kind of object."""
    case = Case(template, tmp_path / "count")
    counting = FaultyStorage(LocalStorage(case.url))
    cache = Cache(str(tmp_path / "count.sqlite"))
    Saver(case.repo("write", counting), cache).save("c", [str(src)])
    cache.close()
    return {"writes": list(counting.written), "flushes": counting.ops["flush"]}


def kill_points(ops):
    writes = ops["writes"]
    n = len(writes)
    blobs = [i for i, w in enumerate(writes) if w.startswith("blobs/")]
    record = next(i for i, w in enumerate(writes) if w.startswith("snapshots/"))
    points = [("write", 0), ("write", 1), ("write", blobs[len(blobs) // 3]), ("write", blobs[-1]),
              ("write", record), ("flush", 0), ("flush", 1)]
    return [p for p in points if p[0] == "flush" or p[1] < n]


def kill_at_operations(template, tmp_path, src, cases):
    """``cases``: (operation, how many pass before the kill, power loss mode or None)."""
    for k, (op, n, power_loss) in enumerate(cases):
        case = Case(template, tmp_path / f"p{k}")
        journal = str(case.tmp / "journal")
        spec = {"faults": [{"op": op, "action": "kill", "after": n, "times": 1}], "journal": journal}
        p = subprocess.run(case.save_cmd(src, spec), env=case.env, capture_output=True, timeout=120)
        assert p.returncode == -signal.SIGKILL, (op, n, p.returncode, p.stderr)
        if power_loss:
            lost = lose_unflushed_writes(journal, case.url, mode=power_loss)
            assert op != "flush" or n != 1 or lost  # killed at the record's flush: the record is lost
        present = {b for b in case.blobs() if os.path.getsize(os.path.join(case.url, *b.split("/")))}
        after_crash(case, src, present)


def test_save_killed_at_exact_operations(template, tmp_path, source):
    src = source / "small"  # a smaller save keeps this quick; packs, index and record still all appear
    points = kill_points(count_operations(template, tmp_path, src))
    kill_at_operations(template, tmp_path, src, [
        (*points[2], None),  # among the blobs
        (*points[4], "empty"),  # the snapshot record itself, then a power loss
        ("flush", 0, "remove"),  # the flush before the record, then a power loss
    ])


@pytest.mark.slow
@pytest.mark.parametrize("power_loss", [None, "empty", "remove"])
def test_save_killed_at_every_kind_of_operation(template, tmp_path, source, power_loss):
    src = source / "small"
    points = kill_points(count_operations(template, tmp_path, src))
    kill_at_operations(template, tmp_path, src, [(op, n, power_loss) for op, n in points])


class PowerLoss(BaseException):
    """The machine stops: nothing after this point runs (no commit, no cleanup)."""


def test_power_loss_before_the_flush_with_a_cache_that_already_recorded_the_blobs(template, tmp_path, source):
    """The worst case for a cache: a long save committed its cache (blobs
    known, files cached) every few seconds, then the power went before the
    blobs were durable.  The next save must not trust the cache for them."""
    src = source / "small"
    case = Case(template, tmp_path / "c")
    journal = str(case.tmp / "journal")

    class DiesAtFlush(FaultyStorage):
        def flush(self):
            raise PowerLoss()

    class EagerCache(Cache):  # commits as often as a long save would
        def maybe_commit(self, every=5.0):
            super().maybe_commit(0)

    repo = case.repo("write", DiesAtFlush(LocalStorage(case.url), journal=journal))
    path = cache_path(case.cache_dir, repo.id, "write")
    cache = EagerCache(path)
    with pytest.raises(PowerLoss):
        Saver(repo, cache).save("c", [str(src)])
    cache.abandon()  # no commit, the session left behind: what the disk has is what was committed
    lost = lose_unflushed_writes(journal, case.url, mode="empty")
    cache = Cache(path)
    pending, known = cache.pending_blobs(), cache.blob_count()
    cache.close()
    assert lost and pending and known, "the cache believed blobs stored that the power loss emptied"
    r = run_check(case.local, "audit")
    assert r.ok and any("empty objects" in n for n in r.notes)
    res = after_crash(case, src, set())
    assert res.stats.blobs_repaired >= 1  # emptied blobs were replaced, not trusted

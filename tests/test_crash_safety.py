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


# ---- several channels on one machine, and `save --all` (issue 12 #2) ----------------------------------


CHANNELS = {"big": ["big0", "big1"], "small": ["small"], "everything": [""]}  # (everything overlaps both)


class Channels(Case):
    """One machine saving several channels of ``source`` from one config
    file, with one write key and one cache."""

    def __init__(self, template, tmp_path, src):
        super().__init__(template, tmp_path)
        self.src = src
        self.conf = str(tmp_path / "rekkord.toml")
        body = [f'repository = "{self.url}"\nkey_file = "{self.key_files["write"]}"\n']
        for ch, parts in CHANNELS.items():
            paths = ", ".join(json.dumps(str(src / p) if p else str(src)) for p in parts)
            body.append(f"\n[channels.{ch}]\npaths = [{paths}]\n")
        with open(self.conf, "w") as f:
            f.write("".join(body))

    def cmd(self, *args, spec=None):
        base = [sys.executable, os.path.join(HERE, "faulty_storage.py"), json.dumps(spec)] if spec else \
            [sys.executable, "-m", "rekkord"]
        return base + ["-c", self.conf, *args]

    def run(self, *args, spec=None):
        return subprocess.run(self.cmd(*args, spec=spec), env=self.env, capture_output=True, timeout=300,
                              check=False)

    def start(self, *args, spec=None):
        return subprocess.Popen(self.cmd(*args, spec=spec), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def snapshots(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for s in sorted(self.repo("read").snapshots(), key=lambda s: s.time_ns):
            out.setdefault(s.channel, []).append(s)
        return out

    def restores(self, snap):
        repo = self.repo("read")
        for p in CHANNELS[snap.channel]:
            root = self.src / p if p else self.src
            out = self.tmp / f"out-{snap.id[:8]}-{p or 'all'}"
            r = Restorer(repo, repo.load_snapshot(snap.id))
            r.restore(str(root), str(out))
            assert r.stats.damaged == 0 and r.problems == [], r.problems
            assert_same_tree(root, out)

    def heals(self, before: dict[str, list]):
        """After an interrupted save: the next `save --all` completes every
        channel, check is clean, every snapshot restores, none was lost."""
        self.check_clean()
        present = self.blobs()
        p = self.run("save", "--all", "--json")
        assert p.returncode == 0, p.stderr.decode()
        out = json.loads(p.stdout)
        assert [(o["channel"], o["status"]) for o in out] == [(ch, "success") for ch in CHANNELS]
        # Only what is missing is stored: what the killed save left intact is reused.
        assert sum(o["blobs_new"] for o in out) == len(self.blobs() - present)
        self.check_clean()
        after = self.snapshots()
        for ch, snaps in before.items():  # nothing lost
            assert [s.id for s in snaps] == [s.id for s in after[ch][:len(snaps)]]
        for ch in CHANNELS:
            for snap in after[ch]:
                self.restores(snap)
        return out


def test_save_all_killed_at_a_record_heals_with_the_next_save_all(template, tmp_path, source):
    """`save --all` killed while it writes the second channel's record (the
    first channel is saved, the second almost, the third not begun)."""
    case = Channels(template, tmp_path / "a", source)
    spec = {"faults": [{"op": "write", "match": "snapshots/", "action": "kill", "after": 1, "times": 1}]}
    p = case.run("save", "--all", spec=spec)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    before = case.snapshots()
    assert list(before) == ["big"] and len(before["big"]) == 1
    case.heals(before)


def test_save_all_killed_at_random_times_heals(template, tmp_path, source):
    # The shorter of two probe runs (the first one may pay for a cold page
    # cache): kills late in it could come after a faster run had ended.
    durations = []
    for n in range(2):
        probe = Channels(template, tmp_path / f"probe{n}", source)
        t = time.monotonic()
        assert probe.run("save", "--all").returncode == 0
        durations.append(time.monotonic() - t)
    duration = min(durations)
    killed = 0
    for seed in range(3):
        case = Channels(template, tmp_path / f"s{seed}", source)
        proc = case.start("save", "--all")
        try:
            proc.wait(timeout=random.Random(seed).uniform(0.1, 0.75) * duration)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        proc.communicate()
        killed += proc.returncode == -signal.SIGKILL
        assert proc.returncode in (0, -signal.SIGKILL)
        case.heals(case.snapshots())
    assert killed >= 2


def test_channels_saving_side_by_side_one_killed_the_others_complete_and_it_heals(template, tmp_path, source):
    """Three saves of three channels at once on one machine (one key, one
    cache); the one of `everything` is killed among its uploads.  The other
    two complete; the next `save --all` heals."""
    case = Channels(template, tmp_path / "c", source)
    kill = {"faults": [{"op": "write", "match": "blobs/", "action": "kill", "after": 2, "times": 1}]}
    procs = {ch: case.start("save", "--json", ch, spec=kill if ch == "everything" else None) for ch in CHANNELS}
    results = {}
    for ch, p in procs.items():
        _, err = p.communicate(timeout=300)
        results[ch] = (p.returncode, err.decode()[-500:])
    assert results["big"][0] == 0 and results["small"][0] == 0, results
    assert results["everything"][0] == -signal.SIGKILL, results
    before = case.snapshots()
    assert sorted(before) == ["big", "small"]
    case.heals(before)

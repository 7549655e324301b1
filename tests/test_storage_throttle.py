"""rekkord.storage.throttle: token buckets (a fake clock, no timing), and
ThrottledStorage over the real S3 (SeaweedFS) and SFTP (OpenSSH) servers:
every byte a save uploads and a restore downloads goes through the bucket,
and the rate is kept -- asserted from the bucket's own count of waits on a
fake clock, never by timing."""

from __future__ import annotations

import os
import threading

import pytest

from rekkord.cache import Cache
from rekkord.keys import Key
from rekkord.repository import Repository
from rekkord.restore import Restorer
from rekkord.save import Saver
from rekkord.storage import open_storage
from rekkord.storage.memory import MemoryStorage
from rekkord.storage.throttle import ThrottledStorage, TokenBucket


class FakeClock:
    """Time that moves only when someone sleeps."""

    def __init__(self):
        self.t = 1000.0
        self.lock = threading.Lock()
        self.slept = []

    def __call__(self):
        return self.t

    def sleep(self, s):
        with self.lock:
            self.slept.append(s)
            self.t += s


def bucket(rate, burst=None):
    clock = FakeClock()
    return TokenBucket(rate, burst, clock=clock, sleep=clock.sleep), clock


def test_a_bucket_lets_a_burst_through_then_keeps_to_its_rate():
    b, clock = bucket(1000)  # 1000 bytes/s, one second of burst
    assert b.take(600) == 0 and b.take(400) == 0 and b.waits == 0  # the burst
    assert b.take(500) == pytest.approx(0.5)  # debt: wait it off
    assert b.take(2000) == pytest.approx(2.0)  # (the half second slept refilled what the last take owed)
    assert b.waits == 2 and clock.t - 1000 == pytest.approx(2.5) and b.bytes == 3500
    clock.t += 10  # idle: the bucket refills, but only up to its burst
    assert b.take(1000) == 0 and b.take(1) > 0


def test_threads_together_keep_to_the_rate():
    b, clock = bucket(10_000)
    ts = [threading.Thread(target=lambda: [b.take(1000) for _ in range(20)]) for _ in range(5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert b.bytes == 100_000
    assert clock.t - 1000 >= (100_000 - 10_000) / 10_000 - 1e-9  # never faster than the rate


def test_throttled_storage_counts_content_only():
    up, _ = bucket(100)
    down, _ = bucket(100)
    st = ThrottledStorage(MemoryStorage("memory://t"), upload=up, download=down)
    st.write("a", b"x" * 250)
    assert st.read("a", 10, 40) == b"x" * 40 and st.stat("a") == 250 and list(st.list("")) == [("a", 250)]
    st.rename("a", "b")
    st.delete("b")
    assert (up.bytes, down.bytes, up.waits) == (250, 40, 1)


def remote_round_trip(url, options, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(900_000))
    for i in range(20):
        (src / f"small{i}").write_bytes(os.urandom(3000))
    inner = open_storage(url, options)
    master = Key.generate_master()
    Repository.init(inner, master)
    rate = 256 * 1024
    up, up_clock = bucket(rate)
    repo = Repository.open(ThrottledStorage(open_storage(url, options), upload=up), master)
    res = Saver(repo, Cache(None)).save("c", [str(src)])
    repo.storage.close()
    stored = sum(size for prefix in ("blobs/", "snapshots/") for _, size in inner.list(prefix))
    # Everything the save put on the server went through the bucket (plus session markers) ...
    assert up.bytes >= stored >= res.stats.bytes_stored > 900_000 and up.waits > 0
    # ... and never faster than the rate: the fake clock moved by at least the debt.
    assert up_clock.t - 1000 >= (up.bytes - up.burst) / rate - 1e-6
    down, down_clock = bucket(rate)
    rrepo = Repository.open(ThrottledStorage(open_storage(url, options), download=down), master)
    Restorer(rrepo, rrepo.load_snapshot(res.snapshot_id)).restore(None, str(tmp_path / "out"))
    rrepo.storage.close()
    inner.close()
    assert (tmp_path / "out" / str(src).lstrip("/") / "big").read_bytes() == (src / "big").read_bytes()
    data_blobs = res.stats.bytes_stored
    assert down.bytes >= data_blobs * 0.9 and down.waits > 0  # (the index and reference lists too)
    assert down_clock.t - 1000 >= (down.bytes - down.burst) / rate - 1e-6


@pytest.mark.s3
def test_limits_on_s3(s3_location, tmp_path):
    remote_round_trip(*s3_location, tmp_path)


@pytest.mark.sftp
def test_limits_on_sftp(sftp_location, tmp_path):
    remote_round_trip(*sftp_location, tmp_path)

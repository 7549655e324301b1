"""Bandwidth limits: a Storage wrapper that throttles bytes through token buckets.

``--limit-upload`` / ``--limit-download`` (KiB/s, restic's unit) wrap the
repository's storage in :class:`ThrottledStorage`: every object written
takes its size from the upload bucket before it is sent, every object read
takes its size from the download bucket once it has arrived (its size is
known only then), so the transfers of all threads together keep to the rate.
Listing, stat, delete and server-side renames move no content and are not
throttled.

A bucket holds one second's worth of bytes (a burst), refills at the rate,
and may go into debt: an object larger than the bucket is never refused,
the thread that took it waits until the debt is paid, and the threads after
it wait their turn.  Each bucket counts the bytes it let through, how often
a thread had to wait and for how long in total (``waits``,
``wait_seconds``), which tests assert instead of timing anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from .base import Storage


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)
        self.clock = clock
        self.sleep = sleep
        self.tokens = self.burst
        self.last = clock()
        self.lock = threading.Lock()
        self.bytes = 0
        self.waits = 0
        self.wait_seconds = 0.0

    def take(self, n: int) -> float:
        """Take ``n`` bytes; sleep while the bucket is in debt.  Returns the
        time slept (as asked of ``sleep``)."""
        if n <= 0:
            return 0.0
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            self.tokens -= n
            self.bytes += n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
            if wait:
                self.waits += 1
                self.wait_seconds += wait
        if wait:
            self.sleep(wait)
        return wait

    def summary(self, what: str) -> str:
        return (f"{what} limited to {self.rate / 1024:.0f} KiB/s: {self.bytes} bytes, {self.waits} waits, "
                f"{self.wait_seconds:.1f}s waited")


class ThrottledStorage(Storage):
    """``inner`` with its uploads and/or downloads throttled."""

    def __init__(self, inner: Storage, *, upload: TokenBucket | None = None, download: TokenBucket | None = None):
        self.inner = inner
        self.upload = upload
        self.download = download
        self.url = inner.url
        self.connections = inner.connections
        self.atomic_exclusive = inner.atomic_exclusive

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        if self.upload is not None:
            self.upload.take(len(data))
        self.inner.write(name, data, exclusive=exclusive)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.read(name, offset, length)
        if self.download is not None:
            self.download.take(len(data))
        return data

    def stat(self, name: str) -> int | None:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)  # a backend's own move: the bytes stay on the server

    # (The storage's clock: garbage collection times everything by it.)
    def now(self) -> float:
        return self.inner.now()

    def mtime(self, name: str) -> float | None:
        return self.inner.mtime(name)

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        return self.inner.list_times(prefix)

    def defer_sync(self) -> None:
        self.inner.defer_sync()

    def flush(self) -> None:
        self.inner.flush()

    def create(self) -> None:
        self.inner.create()

    def remove_temporaries(self, older_than: float) -> tuple[int, int]:
        return self.inner.remove_temporaries(older_than)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name):  # anything backend-specific
        return getattr(self.inner, name)

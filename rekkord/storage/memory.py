"""In-memory backend, for unit tests of pure logic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from ..errors import ObjectExists, ObjectNotFound
from .base import Storage


class MemoryStorage(Storage):
    connections = 8

    def __init__(self, url: str = "memory://", *, clock: Callable[[], float] = time.time):
        """``clock``: the storage's own clock (object times, ``now``); tests
        of clock skew give it one that disagrees with the writer's."""
        self.url = url
        self.objects: dict[str, bytes] = {}
        self.times: dict[str, float] = {}
        self.clock = clock
        self._lock = threading.Lock()

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        with self._lock:
            if exclusive and name in self.objects:
                raise ObjectExists(f"write {self.url}{name}: already exists")
            self.objects[name] = bytes(data)
            self.times[name] = self.clock()

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.objects[name]
        except KeyError:
            raise ObjectNotFound(f"read {self.url}{name}: not found") from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def stat(self, name: str) -> int | None:
        data = self.objects.get(name)
        return None if data is None else len(data)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(k, len(v)) for k, v in self.objects.items() if k.startswith(prefix)]
        yield from items

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        with self._lock:
            items = [(k, len(v), self.times[k]) for k, v in self.objects.items() if k.startswith(prefix)]
        yield from items

    def now(self) -> float:
        return self.clock()

    def mtime(self, name: str) -> float | None:
        with self._lock:
            return self.times.get(name) if name in self.objects else None

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)
            self.times.pop(name, None)

"""In-memory backend, for unit tests of pure logic."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..errors import ObjectExists, ObjectNotFound
from .base import Storage


class MemoryStorage(Storage):
    connections = 8

    def __init__(self, url: str = "memory://"):
        self.url = url
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        with self._lock:
            if exclusive and name in self.objects:
                raise ObjectExists(f"write {self.url}{name}: already exists")
            self.objects[name] = bytes(data)

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

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)

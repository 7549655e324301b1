"""The storage interface.

A backend stores opaque byte strings under ``/``-separated names such as
``config`` or ``blobs/ab/ab12...``.  It never sees keys or plaintext and never
imports crypto.  Semantics every backend must honour (checked by
``tests/test_storage_contract.py``):

* ``write`` is atomic: a reader sees either nothing or the whole object.
  With ``exclusive=True`` (the default) an existing name is never replaced and
  :class:`ObjectExists` is raised instead.
* ``read`` raises :class:`ObjectNotFound` for a missing name; with ``offset``
  and ``length`` it returns that range (shorter at the end of the object).
* ``stat`` returns the size, or ``None`` when the object does not exist.
* ``list(prefix)`` yields ``(name, size)`` for every object whose name starts
  with ``prefix`` (in no particular order); temporary files are never listed.
* ``delete`` removes a name; deleting a missing name is not an error.
* ``rename(src, dst)`` moves an object to a name that must not exist
  (:class:`ObjectExists` otherwise, ``src`` kept; :class:`ObjectNotFound`
  when ``src`` is missing), creating directories as needed.  Local and SFTP
  repositories move the name itself (no copy, no free space needed beyond a
  directory entry); elsewhere it is a copy and a delete.
* Time, by the storage's own clock, never the caller's: ``now()`` is the
  storage's current time, ``mtime(name)`` when an object was last written
  (``None`` when it does not exist) and ``list_times(prefix)`` yields
  ``(name, size, mtime)`` like ``list``.  All are unix times in seconds
  (S3 and SFTP have whole seconds).  A writer whose clock is days off
  still gets true times from these (the garbage collector bases its timing
  on them): local directories answer with the file system's times (those
  of a file just written, for ``now``), S3 with ``LastModified`` and the
  server's ``Date`` header, SFTP with ``st_mtime`` and a probe file's.
* Transient failures are retried inside the backend (see :func:`retry`);
  what escapes is final.
"""

from __future__ import annotations

import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from ..errors import ConfigError, StorageError, TransientStorageError

T = TypeVar("T")
_sleep = time.sleep  # tests replace it to count retries instead of timing them


class Storage(ABC):
    #: A printable location, without secrets, used in error messages.
    url: str = ""
    #: How many requests the backend serves well in parallel.
    connections: int = 4
    #: Whether ``write(exclusive=True)`` is enforced by the server itself
    #: (otherwise it is a best-effort check-then-write).
    atomic_exclusive: bool = True
    #: Whether a forked process may go on reading through this object (no
    #: connection, thread or lock that the fork would share or lose): a
    #: restore then shares its work with forked processes.
    fork_safe: bool = False

    @abstractmethod
    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None: ...

    @abstractmethod
    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    @abstractmethod
    def stat(self, name: str) -> int | None: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]: ...

    @abstractmethod
    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    # -- time, by the storage's clock -------------------------------------------

    def now(self) -> float:
        """The storage's current time (unix seconds), read from the storage
        itself where it has a clock of its own."""
        raise NotImplementedError(f"{type(self).__name__} cannot tell the storage's time")

    def mtime(self, name: str) -> float | None:
        """When ``name`` was last written, by the storage's clock; ``None``
        when it does not exist."""
        raise NotImplementedError(f"{type(self).__name__} cannot tell object times")

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        """``(name, size, mtime)`` for every object ``list(prefix)`` yields,
        ``mtime`` by the storage's clock."""
        raise NotImplementedError(f"{type(self).__name__} cannot tell object times")

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``, which must not exist (garbage collection
        moves blobs to and from ``fossils/``).  Raises :class:`ObjectNotFound`
        when ``src`` is missing and :class:`ObjectExists` when ``dst`` exists
        (``src`` is then kept); directories are created as needed.  This
        default reads, writes exclusively, flushes and deletes: a crash in
        between leaves both names, never neither.  It needs room for a second
        copy and costs a download and an upload (S3: a GET, a PUT and a
        DELETE per object; docs/storage.md).  Backends with a cheaper move
        override it with the same guarantees: local directories and SFTP
        move the name itself, which needs no free space."""
        data = self.read(src)
        self.write(dst, data, exclusive=True)
        self.flush()
        self.delete(src)

    def defer_sync(self) -> None:
        """Writes from now on need not be durable one by one; :meth:`flush`
        makes every completed write durable at once.  (The saver defers
        syncing blobs and flushes before it writes the snapshot record.)"""

    def flush(self) -> None:
        """Make every completed write durable (no-op where each write is)."""

    def create(self) -> None:
        """Make the location (directory, bucket) when it does not exist."""

    def remove_temporaries(self, older_than: float) -> tuple[int, int]:
        """Delete the temporary objects of interrupted writes (a killed
        process cannot remove its own) whose last change is more than
        ``older_than`` seconds old; returns how many and their bytes.  They
        are never listed, so nothing else would ever remove them.  Backends
        whose writes leave none (S3, memory) keep this default."""
        return 0, 0

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def retry(
    op: Callable[[], T],
    *,
    what: str,
    attempts: int = 6,
    base_delay: float = 0.2,
    max_delay: float = 10.0,
    on_retry: Callable[[Exception], None] | None = None,
) -> T:
    """Run ``op``; retry :class:`TransientStorageError` with exponential
    backoff and full jitter.  After the last attempt the error is re-raised
    with ``what`` (server and operation) in its message."""
    for attempt in range(attempts):
        try:
            return op()
        except TransientStorageError as e:
            if attempt == attempts - 1:
                raise TransientStorageError(f"{what}: {e} (gave up after {attempts} attempts)") from e
            if on_retry is not None:
                on_retry(e)
            delay = min(max_delay, base_delay * (2**attempt))
            _sleep(random.uniform(0, delay))
    raise AssertionError("unreachable")


class RetryingBackend:
    """Retries for a remote backend that fail fast once the server is known down.

    After one operation waited through all its retries, the others (and the
    next ones) fail at their first transient error instead of waiting again,
    until an operation succeeds.  Subclasses set ``_retries``, ``_base_delay``
    and ``_max_delay``; ``attempt`` raises :class:`StorageError` subclasses.
    """

    _down: str | None = None
    _retries: int
    _base_delay: float
    _max_delay: float

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)  # rekkord.storage.s3, ...

    def _with_retries(self, op: str, what: str, attempt: Callable[[], T]) -> T:
        def once() -> T:
            try:
                result = attempt()
            except TransientStorageError as e:
                down = self._down
                if down is not None:
                    raise StorageError(f"{what}: {e} (not retried: {down})") from e
                raise
            self._down = None
            return result

        try:
            return retry(
                once,
                what=what,
                attempts=self._retries,
                base_delay=self._base_delay,
                max_delay=self._max_delay,
                on_retry=lambda e: self._log.info("%s: %s; retrying", what, e),
            )
        except TransientStorageError:
            self._down = f"an earlier {op} gave up after {self._retries} attempts"
            raise


# --- backend options (from the config file or the CLI, all strings or numbers) ---


def int_option(options: Mapping[str, Any], key: str, default: int) -> int:
    v = options.get(key)
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"option {key}: expected an integer, got {v!r}") from None
    if n < 1:
        raise ConfigError(f"option {key}: must be at least 1, got {n}")
    return n


def float_option(options: Mapping[str, Any], key: str, default: float) -> float:
    v = options.get(key)
    if v is None or v == "":
        return default
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"option {key}: expected a number, got {v!r}") from None
    if x < 0:
        raise ConfigError(f"option {key}: must not be negative, got {x}")
    return x


def bool_option(options: Mapping[str, Any], key: str, default: bool) -> bool:
    v = options.get(key)
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"option {key}: expected true or false, got {v!r}")

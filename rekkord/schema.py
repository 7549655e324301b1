"""Validating what is read from a repository: every byte of it is hostile input.

A record, a certificate, a marker or any other bookkeeping object may have
been written by a compromised machine (a write key can seal, MAC and sign
whatever it likes), by a rogue auditor (an audit key can sign) or by the
storage itself.  Decoders bound sizes before they allocate and check every
field they use for type and range; anything else is an
:class:`~rekkord.errors.IntegrityError` naming the object and the field, never
a ``KeyError``, ``TypeError``, ``RecursionError`` or ``MemoryError``.

The limits below are part of the format (docs/format.md, "Limits"): a writer
never produces anything beyond them, so a reader may refuse it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from .errors import IntegrityError

# ---- limits of the format (docs/format.md, "Limits") ------------------------------

#: Small bookkeeping objects: config, certificates, revocations, session
#: markers, generations, repair hints, forget log entries, collection closings.
MAX_SMALL_OBJECT = 1 << 20
#: Objects that list blob ids (repair hints, collection manifests, forget logs).
MAX_LIST_OBJECT = 256 << 20
#: A sealed snapshot record (its inline private part included).
MAX_RECORD = 16 << 20
#: Path of an index entry (relative to the snapshot root), one component of it,
#: a symlink target, an xattr name and value, and the xattrs and extents of one entry.
MAX_PATH = 4095
MAX_NAME = 255
MAX_TARGET = 4095
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 64 << 10
MAX_XATTRS = 4096
MAX_XATTR_BYTES = 1 << 20
#: One encoded index record (a file of ~1.6 TiB at the default 1 MiB chunks).
MAX_INDEX_RECORD = 64 << 20
#: Plaintext of an index blob (the index stream is cut at 1 MiB at most) and
#: of a reference list blob (65536 records of 36 bytes).
MAX_INDEX_BLOB = 1 << 20
MAX_REFLIST_BLOB = 65536 * 36
#: The inline private part of a record (saved paths).
MAX_PRIVATE = 8 << 20
#: Labels, channels, hosts, users and tags in records and certificates.
MAX_LABEL = 255
MAX_TAGS = 256
#: Blobs one record names directly (index and reference-list blobs).
MAX_RECORD_BLOBS = 1 << 20
#: Chunker parameters a config may set.
CHUNK_MIN_LOW, CHUNK_MAX_HIGH = 4 << 10, 64 << 20


def data_blob_limit(min_size: int, max_size: int) -> int:
    """The largest data blob plaintext: a chunk of at most ``max_size``, or a
    pack (closed once it holds 4 MiB, after a file smaller than ``min_size``)."""
    return max(max_size, (4 << 20) + min_size)


# ---- JSON ------------------------------------------------------------------------


def loads(raw, what: str, *, limit: int = MAX_SMALL_OBJECT):
    """Parse JSON read from the repository, bounded: too large, not UTF-8,
    nested too deeply, or numbers with absurd digit counts are damage."""
    if len(raw) > limit:
        raise IntegrityError(f"{what}: too large ({len(raw)} bytes, at most {limit})")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError, TypeError):
        raise IntegrityError(f"{what}: damaged (not valid JSON)") from None


def loads_object(raw, what: str, *, limit: int = MAX_SMALL_OBJECT) -> dict:
    d = loads(raw, what, limit=limit)
    if not isinstance(d, dict):
        raise IntegrityError(f"{what}: damaged (not a JSON object)")
    return d


# ---- field checks ----------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]*")


def bad(what: str, key: str, why: str) -> IntegrityError:
    return IntegrityError(f"{what}: field {key!r} {why}")


def get(d: dict, key: str, what: str, check: Callable[[Any], str | None], *, optional: bool = False,
        default=None):
    """``d[key]`` after ``check(value)`` (which returns a complaint or None)."""
    if key not in d:
        if optional:
            return default
        raise bad(what, key, "is missing")
    v = d[key]
    why = check(v)
    if why:
        raise bad(what, key, why)
    return v


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(v):
        if type(v) is not int:
            return "is not an integer"
        if lo is not None and v < lo or hi is not None and v > hi:
            return f"is out of range ({v})"
        return None

    return check


def number(lo: float | None = None, hi: float | None = None) -> Callable[[Any], str | None]:
    def check(v):
        if type(v) not in (int, float) or v != v:
            return "is not a number"
        if lo is not None and v < lo or hi is not None and v > hi:
            return f"is out of range ({v})"
        return None

    return check


def boolean(v) -> str | None:
    return None if type(v) is bool else "is not true or false"


def text(max_len: int = MAX_LABEL, *, empty: bool = True, name: bool = False,
         printable: bool = False) -> Callable[[Any], str | None]:
    """A string of at most ``max_len`` UTF-8 bytes; ``name``: usable as one
    path component (no '/', not '.' or '..', no NUL); ``printable``: no
    control characters."""

    def check(v):
        if type(v) is not str:
            return "is not a string"
        try:
            n = len(v.encode())
        except UnicodeEncodeError:
            return "is not valid Unicode"
        if n > max_len:
            return f"is too long ({n} bytes, at most {max_len})"
        if not v and not empty:
            return "is empty"
        if name and ("/" in v or "\0" in v or v in (".", "..")):
            return "is not a valid name"
        if printable and not v.isprintable():
            return "holds control characters"
        return None

    return check


def hexstr(nbytes: int | None = None, *, max_bytes: int | None = None) -> Callable[[Any], str | None]:
    def check(v):
        if type(v) is not str or not _HEX.fullmatch(v) or len(v) % 2:
            return "is not lower-case hexadecimal"
        if nbytes is not None and len(v) != 2 * nbytes:
            return f"is not {nbytes} bytes"
        if max_bytes is not None and len(v) > 2 * max_bytes:
            return f"is too long (at most {max_bytes} bytes)"
        return None

    return check


def listof(item: Callable[[Any], str | None], max_len: int) -> Callable[[Any], str | None]:
    def check(v):
        if type(v) is not list:
            return "is not a list"
        if len(v) > max_len:
            return f"has too many items ({len(v)}, at most {max_len})"
        for i, x in enumerate(v):
            why = item(x)
            if why:
                return f"item {i} {why}"
        return None

    return check


def mapping(max_len: int = 1024) -> Callable[[Any], str | None]:
    def check(v):
        if type(v) is not dict:
            return "is not an object"
        if len(v) > max_len:
            return f"has too many fields ({len(v)})"
        return None

    return check


def blob_ref(max_size: int) -> Callable[[Any], str | None]:
    """``[<64 hex id>, <stored size>]`` as records name their blobs."""
    hex32 = hexstr(32)

    def check(v):
        if type(v) is not list or len(v) != 2:
            return "is not [id, size]"
        return hex32(v[0]) or integer(1, max_size)(v[1])

    return check

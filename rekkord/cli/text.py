"""Names from a snapshot reach a terminal escaped.

A file name is any bytes but '/' and NUL, chosen by whoever made the files,
and a snapshot may have been made by a compromised machine: printed raw, a
name could move the cursor, rewrite earlier lines, set the window title or
(on some terminals) answer back.  So every name and message that may hold
one is printed with control characters shown visibly, the way ``ls -b`` and
restic do: ``\\n``, ``\\t``, ``\\x1b``, ``\\\\`` for a backslash, and
``\\xNN`` for bytes that are not UTF-8.  ``--json`` output stays exact
(``json.dumps`` escapes control characters itself).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def subject(name: str) -> str:
    """What a problem of ``Repository.snapshots(on_problem=...)`` is about:
    a snapshot id, or an object's name (``annotations/<aid>``)."""
    return name if "/" in name else f"snapshot {name}"


def safe(s: str) -> str:
    """``s`` with every non-printable character escaped (surrogate escapes
    of undecodable bytes become ``\\xNN`` of the byte)."""
    if s.isprintable() and "\\" not in s:
        return s
    out = []
    for ch in s:
        named = _NAMED.get(ch)
        if named is not None:
            out.append(named)
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            if 0xDC80 <= o <= 0xDCFF:  # a byte os.fsdecode could not decode
                out.append(f"\\x{o - 0xDC00:02x}")
            elif o < 0x100:
                out.append(f"\\x{o:02x}")
            elif o < 0x10000:
                out.append(f"\\u{o:04x}")
            else:
                out.append(f"\\U{o:08x}")
    return "".join(out)


def path(p: bytes) -> str:
    """A snapshot path (relative bytes) as ``/escaped/path``."""
    import os

    return "/" + safe(os.fsdecode(p))

"""libc functions the os module lacks, looked up once through ctypes."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def function(name: str, argtypes: tuple, restype=ctypes.c_int):
    """libc's ``name`` with these argument and result types (errno kept for
    ``ctypes.get_errno``), or None where this libc has no such function."""
    try:
        f = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # not Linux, or an older libc
        return None
    f.argtypes = list(argtypes)
    f.restype = restype
    return f

"""rekkord.libc: libc functions found once, typed, and None where absent."""

import ctypes
import os

from rekkord import libc


def test_a_function_is_looked_up_once_and_typed(tmp_path):
    f = libc.function("fstatfs", (ctypes.c_int, ctypes.c_void_p))
    assert f is libc.function("fstatfs", (ctypes.c_int, ctypes.c_void_p))
    assert f.restype is ctypes.c_int
    buf = ctypes.create_string_buffer(512)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert f(fd, buf) == 0
        assert f(-1, buf) == -1 and ctypes.get_errno() == 9  # EBADF, kept for get_errno
    finally:
        os.close(fd)


def test_a_missing_function_is_none():
    assert libc.function("no_such_function_in_any_libc", ()) is None

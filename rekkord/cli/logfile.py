"""The --log-file log: opened before any work starts, closed with a summary line.

* A missing directory is created (mode 0700); when that or opening the file
  fails, the command stops with a clear error before doing anything.
* A new log file is created mode 0600 whatever the umask (it names files
  and snapshots); an existing one keeps its mode.
* Every run ends with one line: ``rekkord exit 0 (ok) after 1.2s: save --all``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from ..errors import ConfigError, ExitCode

FORMAT = "%(asctime)s %(levelname)s %(message)s"

_CODE_NAMES = {v: k.lower() for k, v in vars(ExitCode).items() if not k.startswith("_") and isinstance(v, int)}

_state: dict = {}
# Without --log-file, records go nowhere (logging's last-resort handler would
# print each warning a second time on stderr).
logging.getLogger("rekkord").addHandler(logging.NullHandler())


def open_log(path: str, argv: list[str] | None = None) -> logging.Handler:
    """Attach a handler for ``path`` to the ``rekkord`` logger."""
    path = os.path.expanduser(str(path))
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        try:
            os.makedirs(d, mode=0o700)
            os.chmod(d, 0o700)  # makedirs' mode is filtered by the umask
        except FileExistsError:
            raise ConfigError(f"cannot create the log directory {d}: a file of that name exists") from None
        except OSError as e:
            raise ConfigError(f"cannot create the log directory {d}: {e.strerror}") from None
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(path, flags | os.O_EXCL, 0o600)
            os.fchmod(fd, 0o600)  # whatever the umask
        except FileExistsError:
            fd = os.open(path, flags)
    except IsADirectoryError:
        raise ConfigError(f"cannot open the log file {path}: it is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot open the log file {path}: {e.strerror}") from None
    stream = os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(FORMAT))
    log = logging.getLogger("rekkord")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    _state.update(handler=handler, start=time.monotonic(), argv=" ".join(sys.argv[1:] if argv is None else argv))
    log.info("rekkord %s", _state["argv"])
    return handler


def add_summary(line) -> None:
    """``line()`` is logged at the end of the run, before the exit line
    (e.g. what a bandwidth limit did)."""
    _state.setdefault("summaries", []).append(line)


def finish(code) -> None:
    """The summary line with the exit code, then the handler is closed."""
    summaries = _state.pop("summaries", [])
    handler = _state.pop("handler", None)
    if handler is None:
        return
    if code is None:
        code = 0
    elif not isinstance(code, int):
        code = ExitCode.ERROR  # sys.exit("message")
    log = logging.getLogger("rekkord")
    level = logging.INFO if code == 0 else logging.WARNING if code == ExitCode.WARNINGS else logging.ERROR
    for line in summaries:
        try:
            log.info("%s", line())
        except Exception:  # a summary must never hide the exit line
            pass
    elapsed = time.monotonic() - _state.pop("start", time.monotonic())
    log.log(level, "rekkord exit %d (%s) after %.1fs: %s", code, _CODE_NAMES.get(code, "error"), elapsed,
            _state.pop("argv", ""))
    log.removeHandler(handler)
    handler.close()

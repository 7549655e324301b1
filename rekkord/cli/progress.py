"""What a command shows while it runs, fitted to where its output goes.

* stderr is a terminal: a live progress bar (rich, imported only then) with
  bytes, rate, ETA when the total is known (a whole-snapshot restore; a save
  whose channel was saved before from this machine) and a file count.
* anything else (cron, a pipe, a log): nothing at all while running.
* warnings always go to stderr, one line each, and to the --log-file log.
"""

from __future__ import annotations

import logging
import sys
import time

import click

from .context import human_bytes

log = logging.getLogger("rekkord")
log.addHandler(logging.NullHandler())  # without --log-file, log lines go nowhere (not to stderr)
# Records go only to the --log-file handler; without one, logging's last-resort
# handler would print every warning and error a second time on stderr.
log.addHandler(logging.NullHandler())


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Callbacks for the library's ``progress(stats)``; a no-op unless
    ``enabled`` and stderr is a terminal."""

    def __init__(self, enabled: bool, label: str, *, total: int | None = None):
        self.enabled = enabled and stderr_is_tty()
        self.label = label
        self.total = total or None
        self.start = time.monotonic()
        self._rich = None
        self._task = None
        self._width = 0
        if self.enabled:
            self._start_rich()

    def _start_rich(self):
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress as RichProgress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
        except ImportError:  # pragma: no cover - rich is a dependency
            return
        self._rich = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
            TransferSpeedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True), transient=True, refresh_per_second=5,
        )
        self._rich.start()
        self._task = self._rich.add_task(self.label, total=self.total, detail="")

    def set_total(self, total: int | None):
        self.total = total or None
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def _show(self, done: int, detail: str):
        if self._rich is not None:
            self._rich.update(self._task, completed=done, detail=detail)
            return
        el = max(time.monotonic() - self.start, 1e-6)
        eta = ""
        if self.total and done:
            eta = f", ETA {int((self.total - done) / (done / el))}s" if done < self.total else ""
        self._line(f"{self.label}: {human_bytes(done)} ({human_bytes(done / el)}/s{eta}) {detail}")

    def save(self, st):
        if not self.enabled:
            return
        self._show(st.bytes_total, f"{st.files} files, {human_bytes(st.bytes_read)} read, "
                                   f"{human_bytes(st.bytes_stored)} stored")

    def restore(self, st):
        if not self.enabled:
            return
        self._show(st.bytes, f"{st.files} files")

    def _line(self, text: str):
        pad = max(0, self._width - len(text))
        self._width = len(text)
        sys.stderr.write("\r" + text + " " * pad)
        sys.stderr.flush()

    def done(self):
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()


def warn_printer(quiet: bool):
    """One line per warning on stderr (also under -q: warnings matter), and
    in the log file."""

    def warn(path: str, message: str):
        from .text import safe

        path, message = safe(path), safe(message)
        log.warning("%s: %s", path, message)
        click.echo(f"rekkord: warning: {path}: {message}", err=True)

    return warn


def log_info(message: str) -> None:
    """A line for the --log-file log (timestamped there); nothing otherwise."""
    log.info(message)


def style(text: str, **kw) -> str:
    """Colour for terminals; click.echo strips it when the output is not one,
    and NO_COLOR turns it off everywhere."""
    import os

    if os.environ.get("NO_COLOR"):
        return text
    return click.style(text, **kw)

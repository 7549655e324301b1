"""What a command shows while it runs, fitted to where its output goes.

* stderr is a terminal: a live progress bar (rich, imported only then) with
  bytes, rate, ETA when the total is known or estimated (a whole-snapshot
  restore: the record's size; a save: the size of the channel's previous
  save from this machine, else a quick count of the tree run alongside) and
  a file count, on one line that fits the terminal (80 columns included).
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

    def __init__(self, enabled: bool, label: str, *, total: int | None = None, console=None):
        self.enabled = enabled and (console is not None or stderr_is_tty())
        self.label = label
        self.total = total or None
        self.start = time.monotonic()
        self._rich = None
        self._task = None
        self._width = 0
        if self.enabled:
            self._start_rich(console)

    def _start_rich(self, console=None):
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress as RichProgress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.table import Column
        except ImportError:  # pragma: no cover - rich is a dependency
            return

        console = console or Console(stderr=True)
        width = console.width
        # One line that fits: fixed-width numbers, then the label and the
        # detail cut (with an ellipsis) to what is left.  Below 100 columns
        # the transfer speed gives way (the ETA says what matters).
        wide = width >= 100
        fixed = 10 + 17 + 3 + 7 + 5 + (13 if wide else 0)  # bar, bytes, "ETA", time left, gaps, speed
        label_w = max(6, min(24, (width - fixed) // 2))
        detail_w = max(4, width - fixed - label_w - 2)

        def cut(w):
            return Column(no_wrap=True, overflow="ellipsis", max_width=w)

        columns = [TextColumn("[bold]{task.description}", table_column=cut(label_w)), BarColumn(bar_width=10),
                   DownloadColumn(binary_units=True)]
        if wide:
            columns.append(TransferSpeedColumn())
        columns += [TextColumn("ETA"), TimeRemainingColumn(),
                    TextColumn("{task.fields[detail]}", table_column=cut(detail_w))]
        self._rich = RichProgress(*columns, console=console, transient=True, refresh_per_second=5)
        self._rich.start()
        self._task = self._rich.add_task(self.label, total=self.total, detail="")

    def set_total(self, total: int | None):
        self.total = total or None
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def estimate_from(self, count) -> None:
        """Run ``count()`` (bytes expected, e.g. a quick walk of the tree) in
        the background and take its result as the total, unless the total is
        known already."""
        if not self.enabled or self.total:
            return
        import threading

        def run():
            try:
                n = count()
            except Exception:  # an estimate only
                return
            if n and not self.total:
                self.set_total(n)

        threading.Thread(target=run, name="rekkord-count", daemon=True).start()

    def _show(self, done: int, detail: str):
        if self.total and done > self.total:  # the estimate was short: keep a little ahead
            self.set_total(int(done * 1.05))
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
        self._show(st.bytes_total, f"{st.files} files, {human_bytes(st.bytes_stored)} new")

    def restore(self, st):
        if not self.enabled:
            return
        self._show(st.bytes, f"{st.files} files")

    def _line(self, text: str):
        import shutil

        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        text = text if len(text) <= width else text[:width - 1] + "…"
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

"""Progress on a terminal (one rewritten line on stderr), nothing otherwise."""

from __future__ import annotations

import sys
import time

import click

from .context import human_bytes


class Progress:
    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self.start = time.monotonic()
        self.width = 0

    def save(self, st):
        if not self.enabled:
            return
        el = max(time.monotonic() - self.start, 1e-6)
        self._line(f"{self.label}: {st.files} files, {human_bytes(st.bytes_read)} read "
                   f"({human_bytes(st.bytes_read / el)}/s), {human_bytes(st.bytes_stored)} stored, "
                   f"{int(el)}s")

    def restore(self, st):
        if not self.enabled:
            return
        el = max(time.monotonic() - self.start, 1e-6)
        self._line(f"{self.label}: {st.files} files, {human_bytes(st.bytes)} ({int(el)}s)")

    def _line(self, text: str):
        pad = max(0, self.width - len(text))
        self.width = len(text)
        sys.stderr.write("\r" + text + " " * pad)
        sys.stderr.flush()

    def done(self):
        if self.enabled and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def warn_printer(quiet: bool):
    def warn(path: str, message: str):
        click.echo(f"rekkord: warning: {path}: {message}", err=True)

    return warn

"""rekkord.cli.progress: the save and restore displays fit an 80-column
terminal, show an ETA once a total is known, and take an estimated total
from a background count."""

from __future__ import annotations

import io
import re
import threading

from rich.console import Console

from rekkord.cli.progress import Progress
from rekkord.restore import RestoreStats
from rekkord.save import SaveStats

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def rendered(progress: Progress, buf: io.StringIO) -> list[str]:
    progress._rich.refresh()
    text = ANSI.sub("", buf.getvalue())
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def console(width: int):
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None), buf


def test_save_progress_fits_80_columns_with_a_total_and_an_eta():
    c, buf = console(80)
    p = Progress(True, "saving web1-etc-and-a-channel-name-much-too-long", total=25 << 30, console=c)
    st = SaveStats(files=123456, bytes_total=12 << 30, bytes_stored=987 << 20)
    p.save(st)
    lines = rendered(p, buf)
    p.done()
    assert lines and all(len(line) <= 80 for line in lines), [len(x) for x in lines]
    last = lines[-1]
    assert "ETA" in last and "/25.0 GiB" in last and "12.0" in last


def test_restore_progress_fits_80_columns_too():
    c, buf = console(80)
    p = Progress(True, "restoring", total=3 << 40, console=c)
    p.restore(RestoreStats(files=9_999_999, bytes=1 << 40))
    lines = rendered(p, buf)
    p.done()
    assert all(len(line) <= 80 for line in lines) and "ETA" in lines[-1]


def test_an_estimated_total_arrives_from_a_background_count():
    c, buf = console(80)
    p = Progress(True, "saving c", console=c)
    assert p.total is None
    counted = threading.Event()

    def count():
        counted.set()
        return 40 << 20

    p.estimate_from(count)
    assert counted.wait(10)
    for _ in range(1000):  # the thread sets the total right after count() returns
        if p.total:
            break
        threading.Event().wait(0.01)
    assert p.total == 40 << 20
    p.save(SaveStats(files=3, bytes_total=10 << 20))
    assert "/40.0 MiB" in rendered(p, buf)[-1]
    # Past the estimate, the total moves ahead instead of showing more than 100 %.
    p.save(SaveStats(files=9, bytes_total=50 << 20))
    assert p.total > 50 << 20
    p.done()
    # A known total is never replaced by an estimate.
    q = Progress(True, "saving c", total=123, console=console(80)[0])
    q.estimate_from(lambda: 999)
    q.done()
    assert q.total == 123

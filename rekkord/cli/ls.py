"""rekkord ls"""

from __future__ import annotations

import os
import stat
import time

import click

from .context import Settings, echo_json, pass_settings
from .progress import warn_printer
from .text import path as text_path, safe


def iso_ns(ns: int) -> str:
    """RFC 3339 with nanoseconds, in UTC (restic's times have nanoseconds too)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


def entry_json(e) -> dict:
    """One entry in --json, with restic's names and conventions where they
    exist: ``type`` (file, dir, symlink, dev, chardev, fifo, socket; a hard
    link is a file with ``hardlink: true``), ``mode`` a number (the POSIX
    ``st_mode``, type bits included), ``permissions`` as ls shows them,
    ``device`` numbers, RFC 3339 times, and a hard link's ``target`` as the
    absolute path of its first link."""
    from ..index import K_BLOCK, K_CHAR, K_DIR, K_FIFO, K_FILE, K_HARDLINK, K_SOCKET, K_SYMLINK

    types = {K_FILE: ("file", stat.S_IFREG), K_HARDLINK: ("file", stat.S_IFREG), K_DIR: ("dir", stat.S_IFDIR),
             K_SYMLINK: ("symlink", stat.S_IFLNK), K_FIFO: ("fifo", stat.S_IFIFO), K_CHAR: ("chardev", stat.S_IFCHR),
             K_BLOCK: ("dev", stat.S_IFBLK), K_SOCKET: ("socket", stat.S_IFSOCK)}
    kind, ifmt = types.get(e.kind, ("irregular", 0))
    d = {
        "name": os.fsdecode(e.name), "type": kind, "path": "/" + os.fsdecode(e.path),
        "uid": e.uid, "gid": e.gid, "user": e.user.decode(errors="replace"),
        "group": e.group.decode(errors="replace"), "size": e.size,
        "mode": ifmt | (e.mode & 0o7777), "permissions": e.mode_string(),
        "mtime": iso_ns(e.mtime_ns), "mtime_ns": e.mtime_ns,
    }
    if e.atime_ns:
        d["atime"] = iso_ns(e.atime_ns)
    if e.kind == K_SYMLINK:
        d["target"] = os.fsdecode(e.target)
    elif e.kind == K_HARDLINK:
        d["hardlink"] = True
        d["target"] = "/" + os.fsdecode(e.target)
    if e.kind in (K_CHAR, K_BLOCK):
        d.update(device=e.rdev, device_major=os.major(e.rdev), device_minor=os.minor(e.rdev))
    if e.flags:
        d["flags"] = e.flags
    return d


@click.command("ls")
@click.argument("spec", metavar="SNAPSHOT[:PATH]")
@click.option("--recursive", "-R", is_flag=True)
@click.option("--long", "-l", "long_", is_flag=True, help="Mode, owner, size and time")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def ls_cmd(s: Settings, spec, recursive, long_, as_json):
    """List the files of a snapshot.

    --json follows restic's `ls --json` where it can: type (file, dir,
    symlink, dev, chardev, fifo, socket), mode as a number, permissions,
    device numbers, times in RFC 3339 with nanoseconds; a hard link is a
    file with "hardlink": true and the absolute path of its first link as
    "target". The mode is the POSIX st_mode (as stat(2) gives it), not Go's
    FileMode, whose type bits mean nothing outside Go."""
    from ..snapshot import iter_entries, normalize_subpath, select, split_spec

    snap_spec, path = split_spec(spec)
    repo = s.open_repo()
    snap = repo.resolve(snap_spec)
    sub = normalize_subpath(path)
    out = []
    depth0 = sub.count(b"/") + 1 if sub else 0
    warn = warn_printer(s.quiet)
    entries = iter_entries(repo, snap, on_refused=lambda p, why: warn(f"/{os.fsdecode(p)}", f"REFUSED: {why}"))
    for e, rel in select(entries, sub):
        if not recursive and e.path.count(b"/") + (1 if e.path else 0) > depth0 + 1 and rel:
            continue
        if not recursive and rel and e.path.count(b"/") != (depth0 if sub else 0):
            continue
        if as_json:
            out.append(entry_json(e))
        elif long_:
            click.echo(f"{e.mode_string()} {safe(e.user.decode(errors='replace')) or e.uid:>8} "
                       f"{safe(e.group.decode(errors='replace')) or e.gid:>8} {e.size:>12} "
                       f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e.mtime_ns / 1e9))} "
                       f"{text_path(e.path)}" + (f" -> {safe(os.fsdecode(e.target))}" if e.kind == 3 else ""))
        else:
            click.echo(text_path(e.path))
    if as_json:
        echo_json(out)


COMMANDS = [ls_cmd]

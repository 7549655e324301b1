"""rekkord ls"""

from __future__ import annotations

import os
import time

import click

from .context import Settings, echo_json, pass_settings
from .progress import warn_printer
from .text import path as text_path, safe


def entry_json(e) -> dict:
    return {
        "path": "/" + os.fsdecode(e.path), "type": e.kind_name, "mode": oct(e.mode), "size": e.size,
        "uid": e.uid, "gid": e.gid, "user": e.user.decode(errors="replace"),
        "group": e.group.decode(errors="replace"), "mtime_ns": e.mtime_ns,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.mtime_ns / 1e9)),
        **({"target": os.fsdecode(e.target)} if e.target else {}),
        **({"flags": e.flags} if e.flags else {}),
    }


@click.command("ls")
@click.argument("spec", metavar="SNAPSHOT[:PATH]")
@click.option("--recursive", "-R", is_flag=True)
@click.option("--long", "-l", "long_", is_flag=True, help="Mode, owner, size and time")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def ls_cmd(s: Settings, spec, recursive, long_, as_json):
    """List the files of a snapshot."""
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

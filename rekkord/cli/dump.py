"""rekkord dump"""

from __future__ import annotations

import click

from ..errors import ExitCode, UsageError
from .context import Settings, pass_settings
from .progress import warn_printer


@click.command("dump")
@click.argument("spec", metavar="SNAPSHOT[:PATH]")
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--archive", "-a", type=click.Choice(["tar", "zip"]), default="tar", show_default=True,
              help="Archive format for a directory")
@click.option("--target", "-t", type=click.Path(dir_okay=False), help="Write to this file instead of "
              "standard output")
@pass_settings
def dump_cmd(s: Settings, spec, path, archive, target):
    """Write a directory of a snapshot to standard output as a tar (or zip)
    archive; a single file as its content (like `cat`).

    `rekkord dump etc:/etc > etc.tar` names the archive's members relative
    to /etc (restic's SNAPSHOT:subfolder); `rekkord dump etc /etc` (restic's
    form) keeps their full path (etc/...); `rekkord dump etc` dumps the
    whole snapshot. Modes, owners, times, symbolic links, hard links (tar),
    devices, FIFOs and extended attributes (tar) are kept. Names are always
    relative: an entry of the snapshot with an absolute path or a '..' is
    left out with a warning (exit status 4); so is a damaged file's missing
    content (zeros, exit status 4). What the format cannot hold (sockets; in
    zip also devices and FIFOs; zip turns hard links into copies) is left
    out with a warning (exit status 3)."""
    import sys

    from ..dump import dump
    from ..snapshot import split_spec

    snap_spec, sub = split_spec(spec)
    rooted = True
    if path is not None:
        if sub is not None:
            raise UsageError("give the path once: SNAPSHOT:PATH or SNAPSHOT PATH")
        sub, rooted = path, False
    repo = s.open_repo()
    repo.key.require("read", "read files")
    snap = repo.resolve(snap_spec)
    out = open(target, "wb") if target else click.get_binary_stream("stdout")

    def before_archive():
        if not target and sys.stdout.isatty():
            raise UsageError("standard output is a terminal: redirect it (rekkord dump ... > x.tar) or use --target")

    try:
        st = dump(repo, snap, sub, out, archive=archive, rooted=rooted, threads=s.threads or 8,
                  warn=warn_printer(s.quiet), before_archive=before_archive)
        out.flush()
    finally:
        if target:
            out.close()
    if st.skipped or st.damaged:
        raise SystemExit(ExitCode.DAMAGED)
    if st.unsupported:
        raise SystemExit(ExitCode.WARNINGS)


COMMANDS = [dump_cmd]

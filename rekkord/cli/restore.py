"""rekkord restore"""

from __future__ import annotations

import click

from ..errors import ExitCode
from .context import Settings, echo_json, human_bytes, pass_settings
from .progress import Progress, warn_printer


@click.command("restore")
@click.argument("spec", metavar="SNAPSHOT[:PATH]")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace files that exist in DEST")
@click.option("--dry-run", "-n", is_flag=True, help="Only count what would be restored")
@click.option("--owner/--no-owner", default=None, help="Restore owners (default: only as root)")
@click.option("--keep-damaged", is_flag=True, help="Keep damaged files (with holes) under their names")
@click.option("--include", multiple=True, metavar="PATTERN", help="Restore only matching files")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Do not restore matching paths")
@click.option("--verify", is_flag=True, help="Re-read what was written and compare")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def restore_cmd(s: Settings, spec, dest, overwrite, dry_run, owner, keep_damaged, include, exclude, verify,
                as_json):
    """Restore a snapshot, a directory or a file into DEST.

    `restore ID DEST` recreates the saved absolute paths under DEST;
    `restore ID:/home/user DEST` puts the content of /home/user into DEST;
    a single file lands at DEST/<name>. SNAPSHOT is an id, a unique prefix
    of one, or a channel name (its latest snapshot)."""
    from ..restore import RestoreOptions, Restorer
    from ..snapshot import split_spec

    snap_spec, path = split_spec(spec)
    repo = s.open_repo()
    repo.key.require("read", "restore files")
    snap = repo.resolve(snap_spec)
    progress = Progress(not s.quiet and not as_json, "restoring")
    r = Restorer(repo, snap, RestoreOptions(overwrite=overwrite, dry_run=dry_run, owner=owner,
                                            keep_damaged=keep_damaged, includes=list(include),
                                            excludes=list(exclude), threads=s.threads, verify=verify),
                 progress=progress.restore, warn=warn_printer(s.quiet))
    try:
        st = r.restore(path, dest)
    finally:
        progress.done()
    if as_json:
        from dataclasses import asdict

        echo_json({"snapshot": snap.id, **asdict(st),
                   "problems": [{"path": p, "message": m} for p, m in r.problems]})
    elif not s.quiet or st.warnings:
        verb = "would restore" if dry_run else "restored"
        click.echo(f"{verb} {st.files} files, {st.dirs} dirs, {st.others} other "
                   f"({human_bytes(st.bytes)}) from {snap.id[:8]} in {st.duration:.2f}s"
                   + (f"; {st.damaged} damaged" if st.damaged else "")
                   + (f"; {st.warnings} warnings" if st.warnings else ""), err=s.quiet)
    if st.damaged:
        raise SystemExit(ExitCode.DAMAGED)
    if st.warnings:
        raise SystemExit(ExitCode.WARNINGS)


COMMANDS = [restore_cmd]

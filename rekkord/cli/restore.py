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
@click.option("--no-setuid", is_flag=True, help="Never restore setuid/setgid bits (default: only together with "
              "the owner they were saved with)")
@click.option("--no-special", is_flag=True, help="Do not create device nodes or FIFOs (sockets never are)")
@click.option("--keep-damaged", is_flag=True, help="Keep damaged files (with holes) under their names")
@click.option("--include", multiple=True, metavar="PATTERN", help="Restore only matching files")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="Do not restore matching paths")
@click.option("--verify", is_flag=True, help="Re-read what was written and compare")
@click.option("--delete", is_flag=True, help="Make DEST match: also remove what DEST has and the snapshot "
              "(after --include/--exclude) does not; implies --overwrite")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def restore_cmd(s: Settings, spec, dest, overwrite, dry_run, owner, no_setuid, no_special, keep_damaged, include,
                exclude, verify, delete, as_json):
    """Restore a snapshot, a directory or a file into DEST.

    `restore ID DEST` recreates the saved absolute paths under DEST;
    `restore ID:/home/user DEST` puts the content of /home/user into DEST;
    a single file lands at DEST/<name>. SNAPSHOT is an id, a unique prefix
    of one, or a channel name (its latest snapshot).

    Patterns: without '/' they match a name (of the entry or a directory
    above it); with '/' the absolute path in the snapshot (`*` stays in one
    directory, `**` crosses them). Excludes win; with includes only matching
    entries (and the directories leading to them) are restored. --delete
    never removes what the patterns leave out.

    A snapshot may come from a compromised machine: nothing is ever written
    outside DEST or through a symlink, and entries no save writes are refused
    by name (exit code 4). Restoring an untrusted machine's files as root,
    consider --no-owner --no-setuid --no-special."""
    from ..restore import RestoreOptions, Restorer
    from ..snapshot import split_spec

    snap_spec, path = split_spec(spec)
    repo = s.open_repo()
    repo.key.require("read", "restore files")
    snap = repo.resolve(snap_spec)
    whole = path is None and not include and not exclude
    progress = Progress(not s.quiet and not as_json, "restoring",
                        total=snap.stats.get("bytes_total") if whole else None)
    r = Restorer(repo, snap, RestoreOptions(overwrite=overwrite, dry_run=dry_run, owner=owner,
                                            keep_damaged=keep_damaged, includes=list(include),
                                            excludes=list(exclude), threads=s.threads, verify=verify,
                                            delete=delete, setuid=not no_setuid, special=not no_special),
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
                   + (f"; {st.deleted} {'would be ' if dry_run else ''}deleted" if delete else "")
                   + (f"; {st.verified} verified" if verify else "")
                   + (f"; {st.damaged} damaged" if st.damaged else "")
                   + (f"; {st.refused} refused" if st.refused else "")
                   + (f"; {st.not_created} special files not created" if st.not_created else "")
                   + (f"; setuid/setgid dropped on {st.setuid_dropped}" if st.setuid_dropped else "")
                   + (f"; {st.warnings} warnings" if st.warnings else ""), err=s.quiet)
    if st.repair_hint and not as_json:
        click.echo(f"published repair hint {st.repair_hint}: the next save on each machine that still has the "
                   "damaged data uploads it again", err=True)
    if st.damaged:
        raise SystemExit(ExitCode.DAMAGED)
    if st.warnings:
        raise SystemExit(ExitCode.WARNINGS)


COMMANDS = [restore_cmd]

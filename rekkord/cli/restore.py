"""rekkord restore"""

from __future__ import annotations

import click

from ..errors import ExitCode
from ..restore import OVERWRITE_MODES
from .context import Settings, echo_json, human_bytes, pass_settings
from .progress import Progress, warn_printer


class _RestoreCommand(click.Command):
    """``--overwrite`` takes a mode (restic's), and alone means ``always``,
    as the flag did before it took one: ``restore --overwrite ID DEST``
    keeps working.  Click would take ID for the mode, so a bare
    ``--overwrite`` gets its value here before parsing -- unless the next
    word looks like a misspelt mode (``if-chnaged``), which click then
    refuses by name."""

    def parse_args(self, ctx, args):
        import difflib

        out = []
        for i, a in enumerate(args):
            if a == "--":
                out.extend(args[i:])
                break
            if a == "--overwrite" and (i + 1 >= len(args) or args[i + 1] not in OVERWRITE_MODES
                                       and not difflib.get_close_matches(args[i + 1], OVERWRITE_MODES,
                                                                         cutoff=0.7)):
                out.append("--overwrite=always")
                continue
            out.append(a)
        return super().parse_args(ctx, out)


@click.command("restore", cls=_RestoreCommand)
@click.argument("spec", metavar="SNAPSHOT[:PATH]")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--overwrite", type=click.Choice(OVERWRITE_MODES), default="always", show_default=True,
              metavar="MODE", help="What to do with files DEST already has: always (compare the content, "
              "rewrite what differs), if-changed (trust a matching size and mtime), if-newer (replace only "
              "what is older than the snapshot's), never (keep them); identical files are skipped. "
              "--overwrite alone: always")
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
              "(after --include/--exclude) does not (not with --overwrite never)")
@click.option("--processes", type=click.IntRange(min=1), metavar="N",
              help="Processes that share the restore (default: one per core, up to 4, for snapshots of "
              "4000 entries or more into an empty DEST; one for dry runs, --delete, --include/--exclude and remote storage)")
@click.option("--page-cache", is_flag=True,
              help="Write large files through the page cache (default: files of 256 KiB and more bypass it "
              "with O_DIRECT on ext4, XFS, btrfs and f2fs, so a large restore does not evict what the "
              "machine keeps in memory)")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def restore_cmd(s: Settings, spec, dest, overwrite, dry_run, owner, no_setuid, no_special, keep_damaged, include,
                exclude, verify, delete, processes, page_cache, as_json):
    """Restore a snapshot, a directory or a file into DEST.

    `restore ID DEST` recreates the saved absolute paths under DEST;
    `restore ID:/home/user DEST` puts the content of /home/user into DEST;
    a single file lands at DEST/<name>. SNAPSHOT is an id, a unique prefix
    of one, or a channel name (its latest snapshot).

    Patterns: without '/' they match a name (of the entry or a directory
    above it); with '/' the absolute path in the snapshot (`*` stays in one
    directory, `**` crosses them). Excludes win; with includes only matching
    entries (and the directories leading to them) are restored. An
    --include that matches nothing is a warning naming it, and exit code 6
    (an --exclude that matches nothing is only a note).
    --delete never removes what the patterns leave out.

    Restoring again into the same DEST resumes an interrupted restore: files
    already there as the snapshot has them are skipped (quietly; their
    metadata is set again), the temporary files the interrupted run left are
    removed, and the summary says how many were skipped.

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
                                            delete=delete, setuid=not no_setuid, special=not no_special,
                                            processes=processes, direct_io=not page_cache),
                 progress=progress.restore, warn=warn_printer(s.quiet))
    try:
        st = r.restore(path, dest)
    finally:
        progress.done()
    if as_json:
        echo_json(summary_json(snap.id, st, r.problems, dry_run), line=True)
    elif not s.quiet or st.warnings:
        verb = "would restore" if dry_run else "restored"
        skipped = ""
        if st.skipped:
            kept = f"kept by --overwrite {overwrite}"
            parts = [f"{n} {what}" for n, what in ((st.unchanged, "unchanged"), (st.kept, kept)) if n]
            skipped = f"; skipped {st.skipped} ({human_bytes(st.bytes_skipped)}): {', '.join(parts)}"
        # "files" are every entry but directories, as in restic's summary.
        click.echo(f"{verb} {st.restored} files ({human_bytes(st.bytes_restored)}), {st.dirs} dirs from "
                   f"{snap.id[:8]} in {st.duration:.2f}s" + skipped
                   + (f"; {st.deleted} {'would be ' if dry_run else ''}deleted" if delete else "")
                   + (f"; removed {st.temporaries_removed} temporary files of an interrupted restore"
                      if st.temporaries_removed else "")
                   + (f"; {st.verified} verified" if verify else "")
                   + (f"; {st.damaged} damaged" if st.damaged else "")
                   + (f"; {st.refused} refused" if st.refused else "")
                   + (f"; {st.not_created} special files not created" if st.not_created else "")
                   + (f"; setuid/setgid dropped on {st.setuid_dropped}" if st.setuid_dropped else "")
                   + (f"; {st.warnings} warnings" if st.warnings else ""), err=s.quiet)
    if not s.quiet and not as_json:
        from .text import safe

        for pat in st.unmatched_excludes:
            click.echo(f"rekkord: note: --exclude {safe(pat)}: matches nothing in snapshot {snap.id[:8]}", err=True)
    if st.repair_hint and not as_json:
        click.echo(f"published repair hint {st.repair_hint}: the next save on each machine that still has the "
                   "damaged data uploads it again", err=True)
    if st.damaged:
        raise SystemExit(ExitCode.DAMAGED)
    if st.unmatched:
        raise SystemExit(ExitCode.NOT_FOUND)
    if st.warnings:
        raise SystemExit(ExitCode.WARNINGS)


def summary_json(sid: str, st, problems, dry_run: bool) -> dict:
    """restic's restore summary message, on one line (message_type
    "summary", seconds_elapsed, total_files, files_restored, files_skipped,
    files_deleted, total_bytes, bytes_restored, bytes_skipped; "files" there
    are all entries but directories), then rekkord's own counters under
    their earlier names, which scripts may read."""
    from dataclasses import asdict

    return {
        "message_type": "summary", "seconds_elapsed": int(st.duration), "dry_run": dry_run,
        "total_files": st.files + st.others, "files_restored": st.restored, "files_skipped": st.skipped,
        "files_deleted": st.deleted, "total_bytes": st.bytes, "bytes_restored": st.bytes_restored,
        "bytes_skipped": st.bytes_skipped,
        "snapshot": sid, **asdict(st), "problems": [{"path": p, "message": m} for p, m in problems]}


COMMANDS = [restore_cmd]

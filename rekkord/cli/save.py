"""rekkord save"""

from __future__ import annotations

import click

from ..errors import ExitCode
from .context import Settings, echo_json, human_bytes, pass_settings
from .progress import Progress, warn_printer


@click.command("save")
@click.argument("channel")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--exclude", "-e", multiple=True, metavar="PATTERN", help="Skip matching paths (repeatable)")
@click.option("--exclude-file", multiple=True, type=click.Path(dir_okay=False), help="Patterns, one a line")
@click.option("--exclude-caches", is_flag=True, help="Skip the content of directories with a CACHEDIR.TAG")
@click.option("--one-file-system", "-x", is_flag=True, help="Do not cross file system boundaries")
@click.option("--host", help="Host name to record (default: this machine's)")
@click.option("--tag", multiple=True, help="Tag the snapshot (repeatable)")
@click.option("--no-xattrs", is_flag=True, help="Do not save extended attributes")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object")
@pass_settings
def save_cmd(s: Settings, channel, paths, exclude, exclude_file, exclude_caches, one_file_system, host,
             tag, no_xattrs, as_json):
    """Save PATHS as a new snapshot in CHANNEL (works with a write key)."""
    from ..save import SaveOptions, Saver, read_exclude_file

    excludes = list(exclude)
    for f in exclude_file:
        excludes += read_exclude_file(f)
    repo = s.open_repo()
    repo.key.require("save", "save snapshots")
    cache = s.open_cache(repo)
    progress = Progress(not s.quiet and not as_json, "saving")
    try:
        saver = Saver(repo, cache, SaveOptions(excludes=excludes, exclude_caches=exclude_caches,
                                               one_file_system=one_file_system, host=host, tags=list(tag),
                                               threads=s.threads, xattrs=not no_xattrs),
                      progress=progress.save, warn=warn_printer(s.quiet))
        result = saver.save(channel, list(paths))
    finally:
        progress.done()
        cache.close()
    st = result.stats
    if as_json:
        echo_json(result.to_json())
    elif s.quiet:
        if st.warnings:
            click.echo(f"snapshot {result.snapshot_id[:8]} saved with {st.warnings} warnings", err=True)
    else:
        click.echo(f"snapshot {result.snapshot_id} saved in channel {channel}")
        click.echo(f"  files: {st.files} ({st.files_unchanged} unchanged), dirs: {st.dirs}, other: {st.others}")
        click.echo(f"  bytes: {human_bytes(st.bytes_total)} total, {human_bytes(st.bytes_read)} read, "
                   f"{human_bytes(st.bytes_new)} new, {human_bytes(st.bytes_stored)} stored "
                   f"({st.blobs_new} new blobs)")
        click.echo(f"  time: {st.duration:.2f}s" + (f", warnings: {st.warnings}" if st.warnings else ""))
    if st.warnings:
        raise SystemExit(ExitCode.WARNINGS)


COMMANDS = [save_cmd]

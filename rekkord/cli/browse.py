"""rekkord diff | find | cat"""

from __future__ import annotations

import time

import click

from ..errors import UsageError
from .context import Settings, echo_json, human_bytes, pass_settings
from .progress import style
from .text import path as text_path, safe, subject

_COLOURS = {"added": "green", "removed": "red", "modified": "yellow", "metadata": "cyan"}


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


@click.command("diff")
@click.argument("snap1", metavar="SNAP1")
@click.argument("snap2", metavar="SNAP2")
@click.option("--path", "subpath", metavar="PATH", help="Only compare below PATH")
@click.option("--no-metadata", is_flag=True, help="Hide metadata-only changes (mode, owner, mtime, xattrs)")
@click.option("--fast", is_flag=True, help="Never fetch file contents: a packed small file whose extents moved "
              "counts as modified")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def diff_cmd(s: Settings, snap1, snap2, subpath, no_metadata, fast, as_json):
    """Show what changed from SNAP1 to SNAP2.

    Each line starts with + (added), - (removed), M (content or type
    changed) or m (metadata only), then the path; for m and M, what changed.
    SNAP1 and SNAP2 are ids, unique id prefixes, or channel names (latest)."""
    from ..diff import STATUS_CHARS, Differ

    repo = s.open_repo()
    repo.key.require("read", "compare snapshots")
    a = repo.resolve(snap1)
    b = repo.resolve(snap2)
    d = Differ(repo, a, b, subpath=subpath, compare_content=not fast, threads=s.threads or 8)
    changes = d.run()
    if no_metadata:
        changes = [c for c in changes if c.status != "metadata"]
    st = d.stats
    if as_json:
        echo_json({"from": a.id, "to": b.id, "changes": [c.to_json() for c in changes],
                   "summary": {"added": st.added, "removed": st.removed, "modified": st.modified,
                               "metadata": st.metadata, "bytes_added": st.bytes_added,
                               "bytes_removed": st.bytes_removed}})
        return
    for c in changes:
        extra = f"  ({', '.join(c.details)})" if c.details and c.status in ("modified", "metadata") else ""
        line = f"{STATUS_CHARS[c.status]}  {text_path(c.path)}"
        click.echo(style(line, fg=_COLOURS[c.status]) + extra)
    if not s.quiet:
        click.echo(f"{a.id[:8]} -> {b.id[:8]}: {st.added} added, {st.removed} removed, {st.modified} modified, "
                   f"{st.metadata} metadata only (+{human_bytes(st.bytes_added)}, "
                   f"-{human_bytes(st.bytes_removed)})", err=True)


@click.command("find")
@click.argument("pattern")
@click.option("--channel", multiple=True, help="Only snapshots of these channels")
@click.option("--host", multiple=True, help="Only snapshots from these hosts")
@click.option("--latest", is_flag=True, help="Only the latest snapshot of each channel")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def find_cmd(s: Settings, pattern, channel, host, latest, as_json):
    """Find files by name or path in every snapshot.

    A PATTERN without '/' matches names (`'*.conf'`, `'report-2024-??.pdf'`);
    with '/' it matches paths: `*` stays inside one directory, `**` crosses
    them, and a pattern not starting with '/' matches at any depth
    (`'nginx/*.conf'`, `'/home/**/thesis*'`). Quote it from the shell."""
    from ..diff import find

    repo = s.open_repo()
    repo.key.require("read", "search snapshot contents")
    snaps = repo.snapshots(on_problem=lambda sid, msg: click.echo(
        f"rekkord: warning: {subject(sid)}: {safe(msg)}" + ("" if "/" in sid else "; not searched"), err=True))
    snaps = [x for x in snaps if x.signature_ok]
    if channel:
        snaps = [x for x in snaps if x.channel in channel]
    if host:
        snaps = [x for x in snaps if x.host in host]
    if latest:
        newest = {}
        for x in snaps:
            newest[x.channel] = x
        snaps = sorted(newest.values(), key=lambda x: (x.time_ns, x.id))
    if channel and not snaps:
        raise _no_channel(channel)
    rows = []
    problems = []

    def on_error(snap, err):
        problems.append(snap.id)
        click.echo(f"rekkord: error: snapshot {snap.id[:8]}: {safe(str(err))}", err=True)

    for snap, e in find(repo, snaps, pattern, threads=min(4, s.threads or 4), on_error=on_error):
        if as_json:
            from .ls import entry_json

            rows.append({"snapshot": snap.id, "channel": snap.channel, "snapshot_time": _iso(snap.time),
                         **entry_json(e)})
        else:
            click.echo(f"{snap.id[:8]}  {_when(snap.time)}  {snap.channel}  {text_path(e.path)}"
                       f"{'/' if e.kind_name == 'dir' else ''}  {e.size if e.kind_name != 'dir' else '-'}  "
                       f"{_when(e.mtime_ns / 1e9)}")
            rows.append(None)
    if as_json:
        echo_json(rows)
    elif not s.quiet:
        click.echo(f"{len(rows)} matches in {len(snaps)} snapshots", err=True)
    if problems:
        from ..errors import ExitCode

        raise SystemExit(ExitCode.DAMAGED)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _no_channel(channels):
    from ..errors import SnapshotNotFound

    return SnapshotNotFound(f"no snapshot in channel {', '.join(channels)}")


@click.command("cat")
@click.argument("spec", metavar="SNAPSHOT:PATH")
@pass_settings
def cat_cmd(s: Settings, spec):
    """Write one file of a snapshot to standard output (binary-safe, streamed).

    `rekkord cat etc:/etc/fstab`, `rekkord cat db:/db.sql | psql app`."""
    from ..diff import ContentReader, file_entry, lookup
    from ..snapshot import BlobFetcher, split_spec

    snap_spec, path = split_spec(spec)
    if path is None:
        raise UsageError(f"give a path: {spec}:/path/to/file")
    repo = s.open_repo()
    repo.key.require("read", "read files")
    snap = repo.resolve(snap_spec)
    e = file_entry(lookup(repo, snap, path), path)
    out = click.get_binary_stream("stdout")
    fetcher = BlobFetcher(repo, s.threads or 8, max_bytes=64 << 20)
    try:
        for data in ContentReader(fetcher, e.extents, e.size, readahead=4).iter():
            out.write(data)
        out.flush()
    finally:
        fetcher.close()


COMMANDS = [diff_cmd, find_cmd, cat_cmd]

"""rekkord snapshots"""

from __future__ import annotations

import time

import click

from .context import Settings, echo_json, human_bytes, pass_settings, table
from .text import safe, subject


def snapshot_json(x, paths: list[str] | None, readable: bool) -> dict:
    """One snapshot in --json: rekkord's fields, plus restic's names for the
    same facts (``hostname``, ``username``, ``paths``, ``summary``)."""
    st = x.stats if isinstance(x.stats, dict) else {}
    d = x.to_json()
    d.update(hostname=x.host, username=x.record.get("user", ""), program_version=None)
    if readable:
        d["paths"] = paths
    d["summary"] = {
        "total_files_processed": st.get("files"),
        "total_bytes_processed": st.get("bytes_total"),
        "files_unmodified": st.get("files_unchanged"),
        "data_added": st.get("bytes_new"),
        "data_added_packed": st.get("bytes_stored"),
        "data_blobs": st.get("blobs_new"),
        "backup_duration": st.get("duration"),
    }
    d["trusted"] = x.signature_ok
    return d


@click.command("snapshots")
@click.argument("selectors", nargs=-1, metavar="[SNAPSHOT|CHANNEL]...")
@click.option("--channel", multiple=True, help="Only these channels")
@click.option("--host", multiple=True, help="Only these hosts")
@click.option("--tag", multiple=True, metavar="TAG[,TAG...]",
              help="Only snapshots with all these tags (repeatable: any of the lists; '' for untagged ones)")
@click.option("--path", "paths", multiple=True, metavar="PATH",
              help="Only snapshots that saved PATH (repeatable: all of them); needs a read, full or admin key")
@click.option("--latest", type=click.IntRange(1), metavar="N", help="Only the N newest snapshots of each channel")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def snapshots_cmd(s: Settings, selectors, channel, host, tag, paths, latest, as_json):
    """List snapshots (read, full, audit or master key).

    Arguments select snapshots by id (or unique prefix) or channel name. The
    table shows tags, and the saved paths when the key can read them (they
    are sealed with the data key: an audit key sees the channel, host, time,
    tags and counters only)."""
    from ..forget import split_ids_and_channels
    from ..selection import saved_paths, select

    repo = s.open_repo()
    warnings = []
    snaps = repo.snapshots(on_problem=lambda sid, msg: warnings.append(f"{subject(sid)}: {msg}"))
    for w in warnings:
        click.echo(f"rekkord: warning: {w}", err=True)
    if selectors:
        ids, names = split_ids_and_channels(repo, selectors)
        full_ids = {i for i in repo.snapshot_ids() if any(i.startswith(p) for p in ids)}
        snaps = [x for x in snaps if x.id in full_ids or x.channel in names]
    paths_of: dict = {}
    snaps = select(repo, snaps, channels=channel, hosts=host, tags=tag, paths=paths, latest=latest,
                   paths_of=paths_of)
    readable = repo.key.can("read")
    if readable:
        for x in snaps:
            if x.id not in paths_of:
                paths_of[x.id] = saved_paths(repo, x)
    if as_json:
        echo_json([snapshot_json(x, paths_of.get(x.id), readable) for x in snaps])
        return
    rows = []
    for x in snaps:
        st = x.stats if isinstance(x.stats, dict) else {}
        # Channel, host and tags are checked printable when a record is
        # read, saved paths are any bytes a file name may hold: every cell
        # that comes from the repository reaches the terminal escaped, so a
        # name with escapes or a newline cannot forge a row.
        row = [x.id[:8], safe(x.channel), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x.time)),
               safe(x.host), ",".join(safe(str(t)) for t in x.tags) if isinstance(x.tags, list) else ""]
        if readable:
            p = paths_of.get(x.id)
            row.append("?" if p is None else ",".join(safe(str(q)) for q in p))
        row += [str(st.get("files", "")), human_bytes(st.get("bytes_total", 0) or 0),
                human_bytes(st.get("bytes_stored", 0) or 0), "" if x.signature_ok else "UNTRUSTED"]
        rows.append(row)
    headers = ["ID", "CHANNEL", "TIME", "HOST", "TAGS"] + (["PATHS"] if readable else []) + \
              ["FILES", "SIZE", "ADDED", ""]
    click.echo(table(rows, headers))


COMMANDS = [snapshots_cmd]

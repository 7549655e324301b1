"""rekkord stats"""

from __future__ import annotations

import click

from .context import Settings, echo_json, human_bytes, pass_settings


@click.command("stats")
@click.argument("selectors", nargs=-1, metavar="[SNAPSHOT|CHANNEL]...")
@click.option("--mode", type=click.Choice(["restore-size", "files-by-contents", "blobs-per-file", "raw-data"]),
              default="restore-size", show_default=True, help="What to count (restic's modes)")
@click.option("--host", multiple=True, help="Only snapshots from these hosts")
@click.option("--tag", multiple=True, metavar="TAG[,TAG...]", help="Only snapshots with all these tags (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def stats_cmd(s: Settings, selectors, mode, host, tag, as_json):
    """Sizes and counts of snapshots: one (an id), a channel (all its
    snapshots) or, without arguments, the whole repository.

    \b
    restore-size       files and bytes a restore writes (summed over the snapshots)
    files-by-contents  distinct file contents as stored, and their bytes
    blobs-per-file     distinct file contents and the distinct data blobs they use
    raw-data           distinct blobs referenced and their stored bytes; the
                       compression and deduplication ratios

    raw-data works with an audit key: it reads only snapshot records and
    reference lists (blob ids and stored sizes), decrypting nothing; it then
    gives the stored size and, from the writers' counters, the logical size
    and the storage ratio (deduplication and compression together). The
    other modes, and raw-data's uncompressed size and separate ratios, need
    the index, sealed with the data key: a read, full or admin key.
    Snapshots whose signature or key is not trusted are counted only when
    named by id."""
    from ..errors import SnapshotNotFound
    from ..forget import split_ids_and_channels
    from ..selection import select
    from ..stats import compute

    repo = s.open_repo()
    from .text import subject

    snaps = repo.snapshots(on_problem=lambda sid, msg: click.echo(f"rekkord: warning: {subject(sid)}: {msg}",
                                                                   err=True))
    wanted: set[str] = set()
    if selectors:
        ids, names = split_ids_and_channels(repo, selectors)
        wanted = {i for i in repo.snapshot_ids() if any(i.startswith(p) for p in ids)}
        snaps = [x for x in snaps if x.id in wanted or x.channel in names]
    # A record whose signature or key is not trusted counts only when named by id.
    untrusted = [x for x in snaps if not x.signature_ok and x.id not in wanted]
    if untrusted:
        click.echo(f"rekkord: warning: {len(untrusted)} untrusted snapshots not counted (name one by id to "
                   "count it)", err=True)
        snaps = [x for x in snaps if x.signature_ok or x.id in wanted]
    snaps = select(repo, snaps, hosts=host, tags=tag)
    if not snaps and (selectors or host or tag):
        raise SnapshotNotFound("no snapshot matches")
    st = compute(repo, snaps, mode, threads=s.threads or 8)
    if as_json:
        echo_json(st.to_json())
        return
    rows = [("Snapshots processed", str(st.snapshots_count))]
    if st.total_file_count is not None:
        rows.append(("Total File Count", str(st.total_file_count)))
    if st.total_blob_count is not None:
        by = ", ".join(f"{k} {n}" for k, (n, _) in sorted(st.blobs_by_type.items()))
        rows.append(("Total Blob Count", f"{st.total_blob_count}" + (f" ({by})" if by else "")))
    rows.append(("Total Size", human_bytes(st.total_size) + (" stored" if mode == "raw-data" else "")))
    if st.total_uncompressed_size is not None:
        rows.append(("Total Uncompressed Size", human_bytes(st.total_uncompressed_size) + " (data)"))
    if st.compression_ratio is not None:
        rows.append(("Compression Ratio", f"{st.compression_ratio:.2f}x"))
    if st.compression_space_saving is not None:
        rows.append(("Compression Space Saving", f"{st.compression_space_saving:.2f} %"))
    if st.logical_size is not None:
        rows.append(("Logical Size", human_bytes(st.logical_size) + ("" if st.total_uncompressed_size is not None
                                                                       else " (from the records' counters)")))
    if st.deduplication_ratio is not None:
        rows.append(("Deduplication Ratio", f"{st.deduplication_ratio:.2f}x"))
    if st.storage_ratio is not None:
        rows.append(("Storage Ratio", f"{st.storage_ratio:.2f}x (logical / stored)"))
    width = max(len(k) for k, _ in rows)
    click.echo(f"Stats in {mode} mode:")
    for k, v in rows:
        click.echo(f"  {k:>{width}}:  {v}")


COMMANDS = [stats_cmd]

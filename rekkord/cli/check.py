"""rekkord check"""

from __future__ import annotations

import click

from .context import Settings, echo_json, human_bytes, pass_settings


@click.command("check")
@click.option("--read-data", is_flag=True, help="Also decrypt and re-hash every blob (read, full or admin key)")
@click.option("--read-data-subset", metavar="N%|SIZE",
              help="Read only a part of the blobs in full (e.g. 5% or 2G), least recently verified first; "
                   "with an audit key the part is MAC-verified")
@click.option("--no-heal", is_flag=True, help="Do not publish a repair hint for missing or damaged blobs")
@click.option("--repair", is_flag=True, help="Write again what can be rebuilt exactly: a lost copy of an index "
              "blob (read, full or master key) or of a reference list, a data blob from parity, and parity for "
              "data blobs that have none")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object")
@pass_settings
def check_cmd(s: Settings, read_data, read_data_subset, no_heal, repair, as_json):
    """Verify the repository; an audit key verifies without decrypting anything.

    Exit codes: 0 no problem found, 4 damage found, 7 the storage failed
    to answer for some objects (check incomplete), 5 the key cannot check
    (write key; --read-data with an audit key), 6 no repository, 1 other.
    """
    from ..check import Checker, parse_subset

    parse_subset(read_data_subset)  # a usage error before any work
    repo = s.open_repo()
    cache = s.open_cache(repo)
    try:
        report = Checker(repo, cache, read_data=read_data, subset=read_data_subset, threads=s.threads,
                         heal=not no_heal, repair=repair).run()
    finally:
        cache.close()
    if as_json:
        echo_json(report.to_json())
        raise SystemExit(report.exit_code)
    from .text import safe

    for p in report.problems:
        label = ("damage (recoverable)" if p.recoverable_from else "damage") if p.damage else "could not verify"
        click.echo(f"rekkord: {label}: {safe(str(p))}", err=True)
    for line in report.repaired:
        click.echo(f"rekkord: repaired: {safe(line)}", err=True)
    for n in report.notes:
        click.echo(f"rekkord: note: {safe(n)}", err=True)
    status = {"clean": "no problems found", "damaged": f"{len(report.problems)} problems found",
              "incomplete": f"{len(report.problems)} objects could not be verified"}[report.status]
    if not s.quiet or not report.ok:
        read = f"{report.blobs_read} read" + (f", {report.blobs_decrypted} decrypted" if report.blobs_decrypted
                                              else "")
        click.echo(f"checked ({report.level}) {report.snapshots} snapshots, {report.blobs_checked} of "
                   f"{report.blobs_referenced} blobs present ({read}, {human_bytes(report.bytes_read)}), "
                   f"{report.orphans} unreferenced"
                   + (f", {report.parity_groups} parity groups" if report.parity_groups else "")
                   + f" in {report.duration:.1f}s: {status}", err=not report.ok)
    for title, sids in (("damaged snapshots:", report.damaged_snapshots),
                        ("snapshots that lost redundancy but no data (rekkord check --repair restores it):",
                         report.degraded_snapshots)):
        if sids:
            click.echo(title, err=True)
        for sid in sids:
            info = report.snapshot_info.get(sid, {})
            click.echo(f"  {sid}  {info.get('channel', '?')}  {info.get('time', '')}  {info.get('host', '')}",
                       err=True)
    if report.healed_snapshots:
        click.echo("healed since the previous check: " + " ".join(x[:8] for x in report.healed_snapshots),
                   err=not report.ok)
    if report.repair_hint:
        click.echo(f"published repair hint {report.repair_hint}: the next save on each machine that still has "
                   "the data uploads the missing or damaged blobs again", err=True)
    if report.repairs_removed and not s.quiet:
        click.echo(f"removed {report.repairs_removed} repair hints: what they named is intact again")
    raise SystemExit(report.exit_code)


COMMANDS = [check_cmd]

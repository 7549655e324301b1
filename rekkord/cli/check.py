"""rekkord check"""

from __future__ import annotations

import click

from ..errors import ExitCode
from .context import Settings, echo_json, human_bytes, pass_settings


@click.command("check")
@click.option("--read-data", is_flag=True, help="Also decrypt and re-hash every blob (read key or better)")
@click.option("--read-data-subset", metavar="N%|SIZE",
              help="Decrypt and re-hash a part, least recently verified first")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def check_cmd(s: Settings, read_data, read_data_subset, as_json):
    """Verify the repository (an audit key verifies without decrypting)."""
    from ..check import Checker

    repo = s.open_repo()
    cache = s.open_cache(repo)
    try:
        report = Checker(repo, cache, read_data=read_data, subset=read_data_subset, threads=s.threads).run()
    finally:
        cache.close()
    if as_json:
        echo_json(report.to_json())
    else:
        for p in report.problems:
            click.echo(f"rekkord: damage: {p}", err=True)
        if not s.quiet or not report.ok:
            status = "no problems found" if report.ok else f"{len(report.problems)} problems found"
            click.echo(f"checked {report.snapshots} snapshots, {report.blobs_checked} blobs "
                       f"({report.blobs_read} read, {human_bytes(report.bytes_checked)}), "
                       f"{report.orphans} unreferenced: {status}", err=not report.ok)
        if report.damaged_snapshots:
            click.echo("damaged snapshots: " + " ".join(x[:8] for x in report.damaged_snapshots), err=True)
    if not report.ok:
        raise SystemExit(ExitCode.DAMAGED)


COMMANDS = [check_cmd]

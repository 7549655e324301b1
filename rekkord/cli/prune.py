"""rekkord prune"""

from __future__ import annotations

import re

import click

from .context import Settings, echo_json, human_bytes, pass_settings


class _Seconds(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if not m:
            self.fail(f"{value!r} is not a duration (e.g. 90s, 30m, 2h, 1d)", param, ctx)
        return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@click.command("prune")
@click.option("--dry-run", "-n", is_flag=True, help="Only report what would be collected and deleted")
@click.option("--session-timeout", type=_Seconds(), default="30m", show_default=True,
              help="Consider a save dead when its session marker was not refreshed for this long")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def prune_cmd(s: Settings, dry_run, session_timeout, as_json):
    """Delete blobs no snapshot references, without locks (audit key suffices).

    Unreferenced blobs first become fossils; a later prune deletes them once
    every save that was running when they were collected has finished (at
    once when none was running), and moves back any a new snapshot uses.
    Saves never wait for a prune, and a prune can be stopped at any point."""
    from ..gc import Pruner

    repo = s.open_repo()
    report = Pruner(repo, dry_run=dry_run, session_timeout=session_timeout, threads=s.threads).run()
    if as_json:
        echo_json(report.to_json())
        return
    print_report(s, report, dry_run)


def print_report(s: Settings, report, dry_run: bool) -> None:
    """A prune's report, as `rekkord prune` prints it (also `forget --prune`)."""
    would = "would " if dry_run else ""
    lines = [f"{report.snapshots} snapshots reference {report.blobs_referenced} blobs; "
             f"{report.blobs_total} blobs stored"]
    if report.rolled_back:
        lines.append(f"  {would}move back {report.rolled_back} fossils of an interrupted prune")
    if report.resurrected:
        lines.append(f"  {would}resurrect {report.resurrected} fossils still in use "
                     f"({human_bytes(report.resurrected_bytes)})")
    if report.fossilised:
        lines.append(f"  {would}collect {report.fossilised} unreferenced blobs "
                     f"({human_bytes(report.fossilised_bytes)}) as fossils")
    lines.append(f"  {would}delete {report.deleted} fossils: {human_bytes(report.deleted_bytes)} "
                 f"{'to reclaim' if dry_run else 'reclaimed'}")
    if report.sessions_declared_dead:
        lines.append(f"  {report.sessions_declared_dead} save sessions {'are' if dry_run else 'declared'} dead "
                     "(no refresh within the session timeout)")
    if report.parity_deleted:
        lines.append(f"  {would}delete {report.parity_deleted} parity groups of deleted blobs "
                     f"({human_bytes(report.parity_deleted_bytes)})")
    if report.temporaries_removed:
        lines.append(f"  removed {report.temporaries_removed} temporary files of interrupted writes "
                     f"({human_bytes(report.temporaries_bytes)})")
    if report.collections_pending:
        lines.append(f"  {len(report.collections_pending)} fossil collections wait for "
                     f"{report.waiting_for_sessions} running saves: run prune again later")
    if s.quiet:
        lines = [f"prune: {would}delete {report.deleted} fossils ({human_bytes(report.deleted_bytes)}), "
                 f"{would}collect {report.fossilised} blobs"]
    click.echo("\n".join(lines))


COMMANDS = [prune_cmd]

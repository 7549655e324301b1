"""rekkord snapshots"""

from __future__ import annotations

import time

import click

from .context import Settings, echo_json, human_bytes, pass_settings, table


@click.command("snapshots")
@click.option("--channel", multiple=True, help="Only these channels")
@click.option("--host", multiple=True, help="Only these hosts")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def snapshots_cmd(s: Settings, channel, host, as_json):
    """List snapshots (read, full, audit or master key)."""
    repo = s.open_repo()
    warnings = []
    snaps = repo.snapshots(on_problem=lambda sid, msg: warnings.append(f"snapshot {sid}: {msg}"))
    for w in warnings:
        click.echo(f"rekkord: warning: {w}", err=True)
    if channel:
        snaps = [x for x in snaps if x.channel in channel]
    if host:
        snaps = [x for x in snaps if x.host in host]
    if as_json:
        echo_json([x.to_json() for x in snaps])
        return
    rows = []
    for x in snaps:
        st = x.stats
        rows.append([x.id[:8], x.channel, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(x.time)), x.host,
                     str(st.get("files", "")), human_bytes(st.get("bytes_total", 0)),
                     human_bytes(st.get("bytes_stored", 0)), "" if x.signature_ok else "UNTRUSTED"])
    click.echo(table(rows, ["ID", "CHANNEL", "TIME", "HOST", "FILES", "SIZE", "ADDED", ""]))


COMMANDS = [snapshots_cmd]

"""rekkord reports"""

from __future__ import annotations

import time

import click

from .context import Settings, echo_json, human_bytes, pass_settings, table


@click.command("reports")
@click.option("--channel", multiple=True, metavar="CHANNEL", help="Only this channel (repeatable)")
@click.option("--host", multiple=True, metavar="HOST", help="Only this host (repeatable)")
@click.option("--since", metavar="DURATION", help="Only reports newer than DURATION (e.g. 36h, 7d)")
@click.option("--latest", is_flag=True, help="Only the latest report of each channel and host")
@click.option("--details", is_flag=True, help="Also the error message and the warnings (read, full or master "
              "key: they may name files and are sealed to the data key)")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list")
@pass_settings
def reports_cmd(s: Settings, channel, host, since, latest, details, as_json):
    """Failure reports: what saves that failed or ended with warnings left in
    the repository (audit, read, full or master key).

    Each shows the time, channel, host, exit code, kind of error and counts,
    never a file name; --details adds the sealed part (error message and
    warning lines) for keys that hold the data key. Reports older than 30
    days are removed by prune. Reports signed by a key that may not save,
    is revoked or is not certified are marked untrusted."""
    from ..report import details as open_details, reports
    from .channels import parse_duration

    limit = parse_duration(since) if since else None
    repo = s.open_repo()
    repo.key.require("list", "list failure reports")
    if details:
        repo.key.require("read", "read the details of failure reports (--details)")
    problems = []
    reps = reports(repo, on_problem=lambda n, m: problems.append(f"{n}: {m}"))
    for p in problems:
        click.echo(f"rekkord: warning: {p}", err=True)
    now = time.time()
    reps = [r for r in reps if (not channel or r.channel in channel) and (not host or r.host in host)
            and (limit is None or now - r.time <= limit)]
    if latest:
        last = {}
        for r in reps:  # oldest first: the last one wins
            last[(r.channel, r.host)] = r
        reps = sorted(last.values(), key=lambda r: (r.time_ns, r.id))
    rows = []
    for r in reps:
        d = r.to_json()
        if details:
            d["details"] = open_details(repo, r)
        rows.append(d)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        if not s.quiet:
            click.echo("no failure reports", err=True)
        return
    out = [[d["id"][:8], time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["time_ns"] / 1e9)), d["channel"],
            d["host"] or "-", d["status"], str(d["exit_code"]), d["error"], str(d["files"]), str(d["warnings"]),
            human_bytes(d["bytes"]), "" if d["trusted"] else "UNTRUSTED"] for d in rows]
    headers = ["ID", "TIME", "CHANNEL", "HOST", "STATUS", "EXIT", "ERROR", "FILES", "WARNINGS", "BYTES", ""]
    if not any(r[-1] for r in out):
        headers, out = headers[:-1], [r[:-1] for r in out]
    if not details:
        click.echo(table(out, headers))
        return
    for line, d in zip(out, rows, strict=True):
        click.echo(table([line], headers))
        det = d["details"]
        if det["error"]:
            click.echo(f"  error: {det['error']}")
        for w in det["warnings"]:
            click.echo(f"  warning: {w}")
        if det["omitted"]:
            click.echo(f"  ... and {det['omitted']} more warnings")
        click.echo("")


COMMANDS = [reports_cmd]

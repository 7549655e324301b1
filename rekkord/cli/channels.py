"""rekkord channels"""

from __future__ import annotations

import re
import time

import click

from ..errors import ExitCode, UsageError
from .context import Settings, echo_json, pass_settings, table
from .progress import log_info, style

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``36h``, ``2d``, ``1w``, ``1d12h``: seconds."""
    t = text.strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise UsageError(f"invalid duration {text!r} (use e.g. 90s, 15m, 36h, 2d, 1w, 1d12h)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def human_age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    out = []
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            out.append(f"{s // n}{unit}")
            s %= n
        if len(out) == 2:
            break
    return " ".join(out)


@click.command("channels")
@click.option("--stale", metavar="DURATION", help="Exit 10 when a channel's latest snapshot is older "
              "(e.g. 26h, 2d); for monitoring")
@click.option("--expect", multiple=True, metavar="CHANNEL",
              help="A channel that must exist (repeatable): with --stale, a missing one is stale too")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def channels_cmd(s: Settings, stale, expect, as_json):
    """Each channel's latest snapshot and its age (read, full, audit or master key).

    With --stale, exits 10 and names every channel whose latest snapshot is
    older than DURATION (or that has none, with --expect): run it from
    Nagios, Icinga or a cron job on a machine that holds an audit key."""
    limit = parse_duration(stale) if stale else None
    repo = s.open_repo()
    warnings = []
    from .text import subject

    snaps = repo.snapshots(on_problem=lambda sid, msg: warnings.append(f"{subject(sid)}: {msg}"))
    for w in warnings:
        click.echo(f"rekkord: warning: {w}", err=True)
    now = time.time()
    chans: dict[str, dict] = {}
    none = {"latest": None, "time": None, "time_ns": None, "age_seconds": None, "host": None}
    for x in snaps:  # oldest first: the last trusted one wins
        c = chans.setdefault(x.channel, {"channel": x.channel, "snapshots": 0, "untrusted": 0, **none})
        c["snapshots"] += 1
        if not x.signature_ok:
            # Forged, or signed by a revoked key or by a role that may not
            # save: never a channel's latest, never counted as fresh.
            c["untrusted"] += 1
            continue
        c.update(latest=x.id, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(x.time)), time_ns=x.time_ns,
                 age_seconds=round(now - x.time, 3), host=x.host)
    for name in expect:
        chans.setdefault(name, {"channel": name, "snapshots": 0, "untrusted": 0, **none})
    rows = sorted(chans.values(), key=lambda c: c["channel"])
    stale_rows = []
    for c in rows:
        if limit is not None:
            c["stale"] = c["age_seconds"] is None or c["age_seconds"] > limit
            if c["stale"]:
                stale_rows.append(c)
    none_at_all = limit is not None and not rows
    if as_json:
        echo_json(rows)
    else:
        out = []
        for c in rows:
            status = ""
            if c.get("stale"):
                status = style("STALE", fg="red", bold=True)
            elif limit is not None:
                status = style("ok", fg="green")
            if c.get("untrusted"):
                status = (status + " " if status else "") + style(f"{c['untrusted']} UNTRUSTED", fg="red")
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["time_ns"] / 1e9)) if c["time_ns"] else "-"
            out.append([c["channel"], (c["latest"] or "-")[:8], when,
                        human_age(c["age_seconds"]) if c["age_seconds"] is not None else "never",
                        c["host"] or "-", str(c["snapshots"]), status])
        headers = ["CHANNEL", "LATEST", "TIME", "AGE", "HOST", "SNAPSHOTS", ""]
        if not any(r[-1] for r in out):
            headers, out = headers[:-1], [r[:-1] for r in out]
        if rows and not (s.quiet and limit is not None):
            click.echo(table(out, headers))
    for c in stale_rows:
        age = f"latest snapshot {c['latest'][:8]} is {human_age(c['age_seconds'])} old" if c["latest"] \
            else "has no snapshot"
        msg = f"channel {c['channel']} {age} (limit {stale})"
        log_info("stale: " + msg)
        click.echo(f"rekkord: stale: {msg}", err=True)
    if none_at_all:
        click.echo("rekkord: stale: the repository has no snapshots at all", err=True)
    if stale_rows or none_at_all:
        raise SystemExit(ExitCode.STALE)
    if limit is not None and not as_json and not s.quiet:
        click.echo(f"all {len(rows)} channels have a snapshot newer than {stale}", err=True)


COMMANDS = [channels_cmd]

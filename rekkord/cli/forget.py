"""rekkord forget"""

from __future__ import annotations

import time

import click

from .context import Settings, echo_json, pass_settings
from .prune import _Seconds


class _Count(click.ParamType):
    name = "N"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "unlimited":
            return -1
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a count (a number, or 'unlimited')", param, ctx)
        if n < 0:
            self.fail("negative counts are not allowed; use 'unlimited' to keep all", param, ctx)
        return n


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value, param, ctx):
        from ..errors import UsageError
        from ..forget import Duration

        if isinstance(value, Duration):
            return value
        try:
            return Duration.parse(value)
        except UsageError as e:
            self.fail(str(e), param, ctx)


COUNT = _Count()
DURATION = _Duration()


def _when(time_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time_ns / 1e9))


@click.command("forget")
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT|CHANNEL]...")
@click.option("--keep-last", "-l", type=COUNT, default=0, help="Keep the N newest snapshots")
@click.option("--keep-hourly", "-H", type=COUNT, default=0, help="Keep the newest snapshot of each of the last N hours")
@click.option("--keep-daily", "-d", type=COUNT, default=0, help="... of each of the last N days")
@click.option("--keep-weekly", "-w", type=COUNT, default=0, help="... of each of the last N weeks (ISO)")
@click.option("--keep-monthly", "-m", type=COUNT, default=0, help="... of each of the last N months")
@click.option("--keep-yearly", "-y", type=COUNT, default=0, help="... of each of the last N years")
@click.option("--keep-within", type=DURATION, help="Keep all snapshots newer than DURATION (e.g. 1y5m7d2h) "
              "before the newest one")
@click.option("--keep-within-hourly", type=DURATION, help="Keep hourly snapshots within DURATION")
@click.option("--keep-within-daily", type=DURATION, help="Keep daily snapshots within DURATION")
@click.option("--keep-within-weekly", type=DURATION, help="Keep weekly snapshots within DURATION")
@click.option("--keep-within-monthly", type=DURATION, help="Keep monthly snapshots within DURATION")
@click.option("--keep-within-yearly", type=DURATION, help="Keep yearly snapshots within DURATION")
@click.option("--keep-tag", multiple=True, metavar="TAG[,TAG...]",
              help="Keep snapshots with all these tags (repeatable; '' matches untagged ones)")
@click.option("--channel", multiple=True, help="Only snapshots of these channels")
@click.option("--host", multiple=True, help="Only snapshots from these hosts")
@click.option("--key", "key_ids", multiple=True, metavar="KID", help="Only snapshots signed by these keys")
@click.option("--group-by", default=None, metavar="FIELDS",
              help="Apply the policy per group of these fields: any of host,channel,paths,key,tags ('' for one "
                   "group)  [default: host,channel,paths; paths only with a key that can read them]")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be kept and removed, and why")
@click.option("--prune", "then_prune", is_flag=True, help="Then run prune, to reclaim the space (with --dry-run: "
              "what prune would do)")
@click.option("--session-timeout", type=_Seconds(), default="30m", show_default=True,
              help="With --prune: as prune's --session-timeout")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def forget_cmd(s: Settings, snapshot_ids, keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly,
               keep_yearly, keep_within, keep_within_hourly, keep_within_daily, keep_within_weekly,
               keep_within_monthly, keep_within_yearly, keep_tag, channel, host, key_ids, group_by, dry_run,
               then_prune, session_timeout, as_json):
    """Remove snapshots: those named, or those a retention policy does not keep.

    Arguments are snapshot ids (or unique prefixes of 4+ characters), which
    are removed, or channel names, which select the snapshots a --keep-*
    policy applies to (like --channel). The policy (restic's rules) applies
    to each group separately: by default the snapshots of one host, channel
    and set of saved paths (restic's host,paths; an audit key cannot read
    paths and groups by host and channel), so that one machine's snapshots,
    however many or however dated, never push out another's; --dry-run
    shows each group. A snapshot is kept when any --keep-* rule keeps it.
    Only snapshot records go: --prune (or `rekkord prune`) reclaims the
    space. Works with an audit, full or admin key. Against a
    flood of snapshots from a stolen write key, use --keep-within and
    --group-by host,channel,key (docs/maintenance.md)."""
    from ..errors import UsageError
    from ..forget import Policy, forget, parse_group_by, split_ids_and_channels

    policy = Policy(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                    monthly=keep_monthly, yearly=keep_yearly, within=keep_within,
                    within_hourly=keep_within_hourly, within_daily=keep_within_daily,
                    within_weekly=keep_within_weekly, within_monthly=keep_within_monthly,
                    within_yearly=keep_within_yearly,
                    keep_tags=[[t.strip() for t in spec.split(",")] for spec in keep_tag])
    repo = s.open_repo()
    ids, channel_args = split_ids_and_channels(repo, snapshot_ids)
    if channel_args and ids:
        raise UsageError(f"give snapshot ids or channel names, not both ({', '.join(channel_args)} "
                         "name channels: they select the snapshots of a --keep-* policy)")
    problems = []
    report = forget(repo, policy, ids=ids, channels=tuple(channel) + tuple(channel_args), hosts=host,
                    keys=key_ids, group_by=None if group_by is None else parse_group_by(group_by),
                    dry_run=dry_run,
                    on_problem=lambda sid, msg: problems.append((sid, msg)))
    from .text import subject

    for sid, msg in problems:
        click.echo(f"rekkord: warning: {subject(sid)}: {msg}", err=True)
    pruned = None
    if then_prune:
        from ..forget import without_snapshots
        from ..gc import Pruner

        target = without_snapshots(repo, report.removed) if dry_run else repo
        pruned = Pruner(target, dry_run=dry_run, session_timeout=session_timeout, threads=s.threads).run()
    if as_json:
        echo_json(report.to_json() if pruned is None else {**report.to_json(), "prune": pruned.to_json()})
        return
    verb = "would remove" if dry_run else "removed"
    if not s.quiet:
        if report.explicit:
            for sid in report.removed:
                click.echo(f"{'would remove' if dry_run else 'remove'}  {sid[:8]}  (named on the command line)")
        if report.paths_unread and report.groups:
            click.echo(f"(grouped by {', '.join(report.group_by) or 'nothing'}: {repo.key.role} keys cannot "
                       "read saved paths)")
        for g in report.groups:
            click.echo(f"{g.describe()}:")
            for d in sorted(g.decisions, key=lambda d: (d.snapshot.time_ns, d.snapshot.id)):
                sn = d.snapshot
                why = ", ".join(d.reasons) if d.keep else "no rule keeps it"
                click.echo(f"  {'keep  ' if d.keep else 'remove'}  {sn.id[:8]}  {_when(sn.time_ns)}  {sn.host}  {why}")
        for sn in report.untrusted:
            click.echo(f"  untrusted  {sn.id[:8]}  {_when(sn.time_ns)}  {sn.channel}  not evaluated: "
                       f"{'; '.join(sn.problems)}")
    kept = sum(1 for g in report.groups for d in g.decisions if d.keep)
    summary = f"{verb} {len(report.removed)} snapshots"
    if not report.explicit:
        summary += f", kept {kept}" + (f" ({len(report.untrusted)} untrusted not evaluated)" if report.untrusted else "")
    if report.removed and not dry_run and pruned is None:
        summary += "; run `rekkord prune` to reclaim their space"
    click.echo(summary)
    if pruned is not None:
        from .prune import print_report

        print_report(s, pruned, dry_run)


COMMANDS = [forget_cmd]

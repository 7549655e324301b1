"""rekkord tag"""

from __future__ import annotations

import click

from ..errors import ExitCode
from .context import Settings, echo_json, pass_settings
from .text import safe, subject


@click.command("tag")
@click.argument("selectors", nargs=-1, metavar="[SNAPSHOT|CHANNEL]...")
@click.option("--add", multiple=True, metavar="TAG[,TAG...]", help="Add these tags")
@click.option("--remove", multiple=True, metavar="TAG[,TAG...]", help="Remove these tags")
@click.option("--set", "set_", multiple=True, metavar="TAG[,TAG...]",
              help="Replace the tags with these ('' for none)")
@click.option("--channel", multiple=True, help="Only snapshots of these channels")
@click.option("--host", multiple=True, help="Only snapshots of these hosts")
@click.option("--tag", multiple=True, metavar="TAG[,TAG...]",
              help="Only snapshots with all these tags (repeatable: any of the lists; '' for untagged ones)")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def tag_cmd(s: Settings, selectors, add, remove, set_, channel, host, tag, as_json):
    """Change the tags of existing snapshots (read, full or master key).

    Arguments select snapshots by id (or unique prefix) or channel name (all
    of its snapshots); without them, every snapshot the filters keep, as
    restic's tag. The records are never rewritten (they are signed by the key
    that saved them): each change is a new annotation signed by your key, and
    the tags shown everywhere (snapshots, forget --keep-tag, copy) are the
    record's as the annotations change them. Annotations signed by a key that
    may not tag (write, audit) or forged are ignored, with a warning."""
    from .. import tags as tagmod
    from ..forget import split_ids_and_channels
    from ..selection import select

    add, remove = tagmod.split_tags(add), tagmod.split_tags(remove)
    new = tagmod.split_tags(set_) if set_ else None
    repo = s.open_repo()
    repo.key.require(tagmod.CAPABILITY, "change the tags of snapshots")
    warnings = []
    snaps = repo.snapshots(on_problem=lambda name, msg: warnings.append(f"{subject(name)}: {msg}"))
    for w in warnings:
        click.echo(f"rekkord: warning: {safe(w)}", err=True)
    if selectors:
        ids, names = split_ids_and_channels(repo, selectors)
        all_ids = repo.snapshot_ids()
        wanted = {next(x for x in all_ids if x.startswith(i)) for i in ids}
        snaps = [x for x in snaps if x.id in wanted or x.channel in names]
    snaps = select(repo, snaps, channels=channel, hosts=host, tags=tag)
    changed = []
    for snap in snaps:
        before = list(snap.tags)
        if tagmod.write(repo, snap, add=add, remove=remove, set_=new) is None:
            continue
        after = tagmod.changed(before, add, remove, new)
        changed.append(snap.id)
        if as_json:
            # restic's message (its ids change with the tags, ours do not)
            echo_json({"message_type": "changed", "old_snapshot_id": snap.id, "new_snapshot_id": snap.id,
                       "tags": after}, line=True)
        elif not s.quiet:
            click.echo(f"{snap.id[:8]} ({safe(snap.channel)}): tags {safe(' '.join(before)) or '(none)'} -> "
                       f"{safe(' '.join(after)) or '(none)'}")
    if as_json:
        echo_json({"message_type": "summary", "changed_snapshot_count": len(changed)}, line=True)
    elif not s.quiet:
        click.echo(f"changed the tags of {len(changed)} of {len(snaps)} snapshots")
    if warnings:
        raise SystemExit(ExitCode.WARNINGS)


COMMANDS = [tag_cmd]

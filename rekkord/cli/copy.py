"""rekkord copy"""

from __future__ import annotations

import click

from ..errors import ExitCode
from .context import Settings, echo_json, human_bytes, pass_settings
from .progress import warn_printer


@click.command("copy")
@click.argument("specs", nargs=-1, metavar="[SNAPSHOT|CHANNEL]...")
@click.option("--from-repo", "from_repo", required=True, metavar="URL",
              help="The repository to copy from  [env: REKKORD_FROM_REPOSITORY]", envvar="REKKORD_FROM_REPOSITORY")
@click.option("--from-key", "from_key", required=True, metavar="FILE",
              help="A key of the source that reads (read, full or master)  [env: REKKORD_FROM_KEY_FILE]",
              envvar="REKKORD_FROM_KEY_FILE")
@click.option("--from-passphrase-file", metavar="FILE", envvar="REKKORD_FROM_PASSPHRASE_FILE",
              help="The source key's passphrase, from a file  [env: REKKORD_FROM_PASSPHRASE_FILE]")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def copy_cmd(s: Settings, specs, from_repo, from_key, from_passphrase_file, as_json):
    """Copy snapshots from another repository into this one.

    Every trusted snapshot of the source (or those named: ids, unique
    prefixes, channels) is copied with its channel, host, time and tags,
    re-encrypted for this repository and deduplicated against what it
    holds; those copied before are skipped, so an interrupted copy resumes.
    This repository needs only a write key (-k); the source needs a key that
    reads (--from-key; its passphrase from --from-passphrase-file or
    REKKORD_FROM_PASSPHRASE). Copying a format 1 repository into a new one
    (`rekkord init --from-repo`) converts it to format 2."""
    import os

    from .. import keys
    from ..copy import copy, select
    from ..repository import Repository
    from ..storage import open_storage
    from .context import passphrase_from_file, warn_line

    text = keys.read_key_file(os.path.expanduser(from_key), warn=warn_line)
    passphrase = None
    if keys.is_protected(text):
        passphrase = (passphrase_from_file(os.path.expanduser(from_passphrase_file)) if from_passphrase_file
                      else os.environ.get("REKKORD_FROM_PASSPHRASE") or None)
        if passphrase is None and click.get_text_stream("stdin").isatty():
            passphrase = click.prompt("Passphrase for the source key", hide_input=True, default="",
                                      show_default=False) or None
    source = Repository.open(open_storage(from_repo, s.storage_options()), keys.loads(text, passphrase))
    source.key.require("read", "read the snapshots to copy")
    source.notice = warn_line  # (a source blob read from a copy or rebuilt from parity)
    dest = s.open_repo()
    dest.key.require("save", "save copies")
    warn = warn_printer(s.quiet)
    cache = s.open_cache(dest)
    try:
        def copied(snap, res):
            if not s.quiet and not as_json:
                click.echo(f"copied {snap.id[:8]} ({snap.channel}) -> {res.snapshot_id[:8]}: "
                           f"{human_bytes(res.stats.bytes_total)}, {human_bytes(res.stats.bytes_stored)} new")

        report = copy(source, dest, cache, select(source, list(specs)), threads=s.threads, warn=warn,
                      on_copied=copied)
    finally:
        cache.close()
    if as_json:
        echo_json(report.to_json())
    elif not s.quiet or report.failed:
        click.echo(f"{len(report.copied)} snapshots copied, {len(report.skipped)} already there"
                   + (f", {len(report.failed)} failed" if report.failed else "")
                   + (f", {len(report.untrusted)} untrusted not copied" if report.untrusted else "")
                   + f"; {human_bytes(report.bytes_new)} new", err=bool(report.failed))
    if report.failed:
        raise SystemExit(ExitCode.DAMAGED if all("DAMAGED" in m or "damaged" in m for _, m in report.failed)
                         else ExitCode.ERROR)
    if report.warnings or report.untrusted:
        raise SystemExit(ExitCode.WARNINGS)


COMMANDS = [copy_cmd]

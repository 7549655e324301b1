"""rekkord mount"""

from __future__ import annotations

import click

from .context import Settings, pass_settings
from .progress import warn_printer


@click.command("mount")
@click.argument("snapshot", metavar="SNAPSHOT|all")
@click.argument("mountpoint")
@click.option("--allow-other", is_flag=True, help="Let other users in (needs user_allow_other in /etc/fuse.conf "
              "unless root); permissions are still checked")
@click.option("--cache-size", type=click.IntRange(8, 65536), default=64, show_default=True, metavar="MIB",
              help="Decrypted blobs kept in memory")
@click.option("--debug", is_flag=True, hidden=True)
@pass_settings
def mount_cmd(s: Settings, snapshot, mountpoint, allow_other, cache_size, debug):
    """Browse snapshots through a read-only file system at MOUNTPOINT.

    `rekkord mount SNAPSHOT DIR` shows one snapshot (an id, a unique prefix,
    or a channel name for its latest snapshot); `rekkord mount all DIR` shows
    every snapshot as DIR/<channel>/<time>_<id>/..., with DIR/<channel>/latest.

    Runs in the foreground until unmounted: Ctrl-C, or `fusermount3 -u DIR`
    (`umount DIR` as root) from another shell. Needs FUSE 3 (Debian: fuse3)
    and the mfusepy package."""
    from ..mount import mount

    repo = s.open_repo()
    repo.key.require("read", "mount snapshots")
    snap = None if snapshot == "all" else repo.resolve(snapshot)
    what = "every snapshot" if snap is None else f"snapshot {snap.id[:8]} ({snap.channel})"

    def ready():
        if not s.quiet:
            click.echo(f"mounted {what} at {mountpoint}; unmount with Ctrl-C or "
                       f"`fusermount3 -u {mountpoint}`", err=True)

    mount(repo, snap, mountpoint, allow_other=allow_other, cache_bytes=cache_size << 20, threads=s.threads or 8,
          on_ready=ready, warn=warn_printer(s.quiet), debug=debug)
    if not s.quiet:
        click.echo(f"unmounted {mountpoint}", err=True)


COMMANDS = [mount_cmd]

"""rekkord init"""

from __future__ import annotations

import os

import click

from ..errors import KeyFileExists, UsageError
from .context import Settings, pass_settings


@click.command("init")
@click.option("--compression", type=click.IntRange(0, 22), default=3, show_default=True,
              help="zstd level for new data (0: none)")
@click.option("--format", "version", type=click.IntRange(1, 2), default=None,
              help="Repository format (default: 2; 1 only for tools that cannot read 2)")
@click.option("--from-repo", "from_repo", metavar="URL",
              help="Take the chunker parameters and secrets of this repository (restic's "
                   "--copy-chunker-params), so that `rekkord copy` between the two deduplicates")
@click.option("--from-key", "from_key", metavar="FILE", help="A key of --from-repo that chunks (write, read, "
              "full or master)")
@click.option("--parity", "parity", metavar="PERCENT",
              help="Store Reed-Solomon parity over the data (format 2, e.g. 5%: about that share of extra "
                   "space), so that check --repair can rebuild a lost or damaged data blob (needs zfec)")
@click.option("--chunk-size", "chunk_size", metavar="SIZE",
              help="Average size of data chunks (default 1M; 256k to 8M; min a quarter of it, max four times). "
                   "Smaller chunks store less of a database or disk image that changes in many places, "
                   "at the cost of more objects")
@click.option("--index-copies", "index_copies", type=click.IntRange(1, 2), default=None,
              help="Copies of every index blob and reference list (format 2; default 2)")
@pass_settings
def init_cmd(s: Settings, compression: int, version, from_repo, from_key, parity, chunk_size, index_copies):
    """Create a repository and a new master key.

    The master key is written to the key file (-k / REKKORD_KEY_FILE), never
    to the repository. It is protected with a passphrase when one is given
    (prompt on a terminal, or REKKORD_PASSPHRASE); keep it offline and derive
    keys for daily use with `rekkord key derive`.
    """
    from ..keys import Key
    from ..repository import FORMAT_VERSION, Repository

    ratio = None
    if parity is not None:
        from ..parity import parse_percent

        ratio = parse_percent(parity)
    chunker = None
    if chunk_size is not None:
        from ..chunker import ChunkerParams
        from .save import parse_size

        if from_repo:
            raise UsageError("--chunk-size and --from-repo exclude each other (--from-repo takes that "
                             "repository's chunker parameters)")
        chunker = ChunkerParams.around(parse_size(chunk_size))
    like = None
    if from_repo:
        from .. import keys
        from ..storage import open_storage
        from .context import warn_line

        if not from_key:
            raise UsageError("--from-repo needs --from-key (a key of that repository)")
        text = keys.read_key_file(os.path.expanduser(from_key), warn=warn_line)
        pp = os.environ.get("REKKORD_FROM_PASSPHRASE") if keys.is_protected(text) else None
        like = Repository.open(open_storage(from_repo, s.storage_options()), keys.loads(text, pp))
    key_path = s.key_path()
    url = s.repository_url()
    if os.path.lexists(key_path):
        raise KeyFileExists(f"key file {key_path} already exists; refusing to overwrite it")
    storage = s.open_storage()
    master = Key.generate_master()
    passphrase = s.passphrase(prompt_text="Passphrase to protect the master key (empty for none)",
                              confirm=True)
    # Write the key first (exclusively): a repository without its key is useless.
    master.save(key_path, passphrase)
    try:
        Repository.init(storage, master, chunker=chunker, compression=compression,
                        version=version or FORMAT_VERSION, like=like, index_copies=index_copies, parity=ratio)
    except BaseException:
        os.unlink(key_path)
        raise
    if not s.quiet:
        click.echo(f"created repository {master.repo} at {url}" + (f" (parity {ratio * 100:g}%)" if ratio else ""))
        click.echo(f"master key written to {key_path}" + (" (passphrase-protected)" if passphrase else
                                                           " (not protected: keep it offline)"))
        click.echo("next: rekkord key derive --role write --label HOST --output HOST.key")


COMMANDS = [init_cmd]

"""Entry point: the ``rekkord`` group, global options and error mapping."""

from __future__ import annotations

import logging
import os
import sys

import click

from .. import __version__
from ..errors import ExitCode, RekkordError
from .context import Settings, load_toml


#: command name -> module of rekkord.cli that defines it (in its COMMANDS).
#: A command's module is imported only when that command runs (or for --help):
#: a nightly `rekkord save` does not pay for mount, setup or browse.
COMMAND_MODULES = {
    "init": "init", "key": "key", "save": "save", "snapshots": "snapshots", "ls": "ls",
    "restore": "restore", "check": "check", "diff": "browse", "find": "browse", "cat": "browse",
    "channels": "channels", "mount": "mount", "setup": "setup", "forget": "forget", "prune": "prune",
    "reports": "reports", "monitor": "monitor",
}



class RekkordGroup(click.Group):
    """Loads commands lazily and maps every RekkordError to one line on
    stderr and its exit code."""

    def list_commands(self, ctx):
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx, name):
        cmd = self.commands.get(name)
        if cmd is None and name in COMMAND_MODULES:
            import importlib

            mod = importlib.import_module(f"{__package__}.{COMMAND_MODULES[name]}")
            for c in mod.COMMANDS:
                self.add_command(c)
            cmd = self.commands.get(name)
        return cmd

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RekkordError as e:
            from .text import safe

            msg = safe(str(e))  # one line, whatever names it holds
            _log_error(msg)
            click.echo(f"rekkord: error: {msg}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("rekkord: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(ExitCode.ERROR)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort, SystemExit):
            raise
        except OSError as e:
            # Anything the library did not translate: still one clear line.
            from .text import safe

            where = f" ({safe(os.fsdecode(e.filename))})" if getattr(e, "filename", None) else ""
            click.echo(f"rekkord: error: {safe(str(e.strerror or e))}{where}", err=True)
            sys.exit(ExitCode.NO_SPACE if e.errno == 28 else ExitCode.ERROR)
        except Exception as e:  # a bug: still one line, the traceback only with -v
            s = ctx.obj
            if s is not None and getattr(s, "verbose", 0):
                import traceback

                traceback.print_exc()
            from .text import safe

            click.echo(f"rekkord: internal error: {type(e).__name__}: {safe(str(e))} (run with -v for details; "
                       "please report this)", err=True)
            sys.exit(ExitCode.ERROR)


class _StorageWarnings(logging.Handler):
    """Warnings of the storage backends (a clock the server corrected, a
    server without conditional writes) also go to stderr, one line each:
    they are the machine's administrator's to fix."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record):
        try:
            click.echo(f"rekkord: warning: {record.getMessage()}", err=True)
        except Exception:  # pragma: no cover - stderr gone
            pass


def _show_storage_warnings() -> None:
    log = logging.getLogger("rekkord.storage")
    if not any(isinstance(h, _StorageWarnings) for h in log.handlers):
        log.addHandler(_StorageWarnings())


def _log_error(msg: str):
    log = logging.getLogger("rekkord")
    if log.handlers:
        log.error(msg)


@click.group(cls=RekkordGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-r", "--repository", metavar="URL", help="Repository: a path, s3://BUCKET/PREFIX or "
              "sftp://USER@HOST[:PORT]/PATH  [env: REKKORD_REPOSITORY]")
@click.option("-k", "--key-file", metavar="FILE", help="Key file  [env: REKKORD_KEY_FILE]")
@click.option("-c", "--config", "config_path", metavar="FILE", envvar="REKKORD_CONFIG",
              help="TOML config file  [env: REKKORD_CONFIG]")
@click.option("--cache-dir", metavar="DIR", help="Local cache directory  [env: REKKORD_CACHE_DIR]")
@click.option("--no-cache", is_flag=True, help="Use a throw-away cache (slower, always correct)")
@click.option("-j", "--threads", type=click.IntRange(1, 256), help="Parallel storage connections")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and a one-line summary")
@click.option("-v", "--verbose", count=True, help="More detail")
@click.option("--log-file", metavar="FILE", help="Append a timestamped log to FILE")
@click.version_option(__version__, prog_name="rekkord")
@click.pass_context
def cli(ctx, repository, key_file, config_path, cache_dir, no_cache, threads, quiet, verbose, log_file):
    """Encrypted, deduplicating backups where servers hold only a write key.

    Exit codes: 0 ok, 1 error, 2 usage, 3 saved/restored with warnings,
    4 damage found, 5 key problem, 6 not found, 7 storage error, 8 no space,
    9 refusing to overwrite, 10 stale channel, 130 interrupted.
    """
    file_cfg = load_toml(config_path) if config_path else {}
    s = Settings(
        flags={"repository": repository, "key_file": key_file, "cache_dir": cache_dir},
        file=file_cfg, config_path=config_path, quiet=quiet, verbose=verbose, threads=threads,
        no_cache=no_cache, log_file=log_file or file_cfg.get("log_file"),
    )
    if s.log_file:
        handler = logging.FileHandler(os.path.expanduser(s.log_file))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log = logging.getLogger("rekkord")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.info("rekkord %s", " ".join(sys.argv[1:]))
    _show_storage_warnings()
    ctx.obj = s




def main():
    import gc

    # The pipelines allocate many short-lived objects and few cycles: collect
    # the young generation far less often (gc was ~7 % of a save's CPU).
    gc.set_threshold(50_000, 50, 100)
    _limit_malloc_arenas()
    cli(prog_name="rekkord")


def _limit_malloc_arenas():
    """glibc gives each thread its own malloc arena, each keeping freed
    megabyte-sized buffers: two arenas cut a save's peak RSS by ~15 %."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main()

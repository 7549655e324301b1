"""Entry point: the ``rekkord`` group, global options and error mapping.

Global options (``-r``, ``-k``, ``-c``, ``-q``, ``-v``, ``-j``, ``--cache-dir``,
``--log-file``, the passphrase and bandwidth options...) are accepted before
the command and after it (``rekkord save -q etc /etc``): each leaf command
gets hidden copies of them, unless it has an option of the same name itself
(``setup --repository``, ``setup --log-file``: the command's own meaning
wins).  The work that depends on them -- reading the config file, opening
the log file -- starts once the command line is fully parsed
(:meth:`Settings.start`).
"""

from __future__ import annotations

import functools
import logging
import os  # noqa: F401  (for the error branches of invoke)
import sys

import click

from .. import __version__
from ..errors import ExitCode, RekkordError, UsageError
from . import logfile
from .context import Settings


#: command name -> module of rekkord.cli that defines it (in its COMMANDS).
#: A command's module is imported only when that command runs (or for --help):
#: a nightly `rekkord save` does not pay for mount, setup or browse.
COMMAND_MODULES = {
    "init": "init", "key": "key", "save": "save", "snapshots": "snapshots", "ls": "ls",
    "restore": "restore", "check": "check", "diff": "browse", "find": "browse", "cat": "browse",
    "channels": "channels", "mount": "mount", "setup": "setup", "forget": "forget", "prune": "prune",
    "reports": "reports", "monitor": "monitor",
    "stats": "stats", "dump": "dump", "version": "meta", "completion": "meta", "man": "meta", "copy": "copy",
    "tag": "tag",
}


class _Rate(click.ParamType):
    """A bandwidth in KiB/s (restic's --limit-upload unit): a positive integer."""

    name = "KiB/s"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            try:
                n = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a rate in KiB/s (a whole number, e.g. 1024)", param, ctx)
        if n < 1:
            self.fail("a rate must be at least 1 KiB/s", param, ctx)
        return n


RATE = _Rate()

#: (Settings name, option declarations, click.Option keywords).  Shown once in
#: `rekkord --help`; hidden copies are attached to every command.
GLOBAL_OPTIONS = [
    ("repository", ("-r", "--repository"), dict(metavar="URL", help="Repository: a path, s3://BUCKET/PREFIX or "
                                                "sftp://USER@HOST[:PORT]/PATH  [env: REKKORD_REPOSITORY]")),
    ("key_file", ("-k", "--key-file"), dict(metavar="FILE", help="Key file  [env: REKKORD_KEY_FILE]")),
    ("config_path", ("-c", "--config"), dict(metavar="FILE", envvar="REKKORD_CONFIG",
                                             help="TOML config file  [env: REKKORD_CONFIG]")),
    ("passphrase_file", ("--passphrase-file",), dict(
        metavar="FILE", help="Read the key's passphrase from FILE (e.g. a systemd credential)  "
                             "[env: REKKORD_PASSPHRASE_FILE]")),
    ("passphrase_command", ("--passphrase-command",), dict(
        metavar="CMD", help="Run CMD and use its output as the key's passphrase (e.g. 'pass show rekkord')  "
                            "[env: REKKORD_PASSPHRASE_COMMAND]")),
    ("cache_dir", ("--cache-dir",), dict(metavar="DIR", help="Local cache directory  [env: REKKORD_CACHE_DIR]")),
    ("no_cache", ("--no-cache",), dict(is_flag=True, help="Use a throw-away cache (slower, always correct)")),
    ("threads", ("-j", "--threads"), dict(type=click.IntRange(1, 256), help="Parallel storage connections")),
    ("limit_upload", ("--limit-upload",), dict(type=RATE, metavar="KiB/s", help="Limit uploads to remote storage to this "
                                                "many KiB/s")),
    ("limit_download", ("--limit-download",), dict(type=RATE, metavar="KiB/s", help="Limit downloads from remote storage to "
                                                    "this many KiB/s")),
    ("quiet", ("-q", "--quiet"), dict(is_flag=True, help="Only errors and a one-line summary")),
    ("verbose", ("-v", "--verbose"), dict(count=True, help="More detail")),
    ("json", ("--json",), dict(is_flag=True, help="JSON output, for the commands that have it")),
    ("log_file", ("--log-file",), dict(metavar="FILE", help="Append a timestamped log to FILE, ending with the "
                                        "exit code")),
]
LATE_PREFIX = "rekkord_global_"
GLOBAL_EPILOG = ("Global options (rekkord --help) may also be given after the command, "
                 "e.g. `rekkord {name} -q`.")


def attach_global_options(cmd: click.Command) -> None:
    """Give ``cmd`` (and, for a group, each of its commands) hidden copies of
    the global options, merged into the Settings before it runs."""
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            attach_global_options(sub)
        return
    if getattr(cmd, "_rekkord_globals", None) is not None:
        return
    taken = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    names = []
    for name, decls, kw in GLOBAL_OPTIONS:
        if set(decls) & taken or name == "json":
            # The command's own option wins; --json after a command is its own.
            continue
        kw = {k: v for k, v in kw.items() if k != "envvar"}
        cmd.params.append(click.Option([LATE_PREFIX + name, *decls], hidden=True, **kw))
        names.append(name)
    cmd._rekkord_globals = names
    if cmd.epilog is None:
        cmd.epilog = GLOBAL_EPILOG.format(name=cmd.name)
    has_json = any(p.name == "as_json" for p in cmd.params)
    original = cmd.callback

    @functools.wraps(original)
    def callback(*args, **kwargs):
        late = {n: kwargs.pop(LATE_PREFIX + n) for n in names}
        ctx = click.get_current_context()
        s = ctx.find_object(Settings)
        if s is not None:
            s.merge_late(late)
            if s.json:
                if not has_json:
                    raise UsageError(f"{ctx.command_path} has no --json output")
                kwargs["as_json"] = True
            s.start()
        return original(*args, **kwargs)

    cmd.callback = callback


class RekkordGroup(click.Group):
    """Loads commands lazily and maps every RekkordError to one line on
    stderr and its exit code."""

    argv: list[str] = []

    def list_commands(self, ctx):
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx, name):
        cmd = self.commands.get(name)
        if cmd is None and name in COMMAND_MODULES:
            import importlib

            mod = importlib.import_module(f"{__package__}.{COMMAND_MODULES[name]}")
            for c in mod.COMMANDS:
                attach_global_options(c)
                self.add_command(c)
            cmd = self.commands.get(name)
        return cmd

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        RekkordGroup.argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode, **extra)
        except SystemExit as e:
            logfile.finish(e.code)
            raise
        except BaseException:
            logfile.finish(ExitCode.ERROR)
            raise
        logfile.finish(0)
        return rv

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
            _log_error("interrupted")
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
    import logging

    log = logging.getLogger("rekkord")
    if log.handlers:
        log.error(msg)


def _global_options(f):
    for name, decls, kw in reversed(GLOBAL_OPTIONS):
        f = click.option(*decls, name, **kw)(f)
    return f


@click.group(cls=RekkordGroup, context_settings={"help_option_names": ["-h", "--help"]})
@_global_options
@click.version_option(__version__, prog_name="rekkord")
@click.pass_context
def cli(ctx, **options):
    """Encrypted, deduplicating backups where servers hold only a write key.

    Global options may be given before or after the command. Exit codes:
    0 ok, 1 error, 2 usage, 3 saved/restored with warnings, 4 damage found,
    5 key problem, 6 not found, 7 storage error, 8 no space, 9 refusing to
    overwrite, 10 stale channel, 130 interrupted.
    """
    _show_storage_warnings()
    ctx.obj = Settings.from_options(options, argv=RekkordGroup.argv)


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

"""rekkord save: one channel from the command line, every channel of the
config file (--all), or standard input as one file (--stdin), with pre/post
hooks.

Config file::

    [channels.etc]
    paths = ["/etc"]
    exclude = ["*.swp"]

    [channels.db]
    stdin = "app.sql"                  # save a command's output as one file
    command = "pg_dump app"            # its failure fails the save
    pre = "systemctl is-active postgresql"
    post = "/usr/local/bin/notify-backup"   # gets REKKORD_STATUS etc.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

import click

from ..errors import ConfigError, ExitCode, RekkordError, StorageError, UsageError
from .context import SECRET_ENV, Settings, echo_json, human_bytes, pass_settings
from .progress import Progress, log, log_info, warn_printer

from .config import CHANNEL_KEYS  # noqa: E402  (the schema of [channels.NAME])


class HookFailed(RekkordError):
    exit_code = ExitCode.ERROR


@dataclass
class Job:
    channel: str
    paths: list[str] = field(default_factory=list)
    stdin_name: str | None = None
    command: str | list | None = None  # produces the stdin content
    excludes: list[str] = field(default_factory=list)
    iexcludes: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    exclude_if_present: list[str] = field(default_factory=list)
    exclude_larger_than: int | None = None
    one_file_system: bool = False
    host: str | None = None
    tags: list[str] = field(default_factory=list)
    xattrs: bool = True
    pre: str | list | None = None
    post: str | list | None = None


@dataclass
class Outcome:
    channel: str
    status: str = "failure"  # success | warning | failure
    result: object = None  # SaveResult
    error: str | None = None
    exit_code: int = ExitCode.OK
    exception: BaseException | None = None
    saver: object = None  # the Saver, for the counts of a failed save's report
    dry_run: bool = False

    def to_json(self) -> dict:
        d = {"channel": self.channel, "status": self.status}
        if self.result is not None:
            d.update(self.result.to_json())
        if self.error:
            d["error"] = self.error
        return d


def _strings(value, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{what} must be a string or a list of strings")


def _command(value, what: str):
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ConfigError(f"{what} must be a command line (string) or an argument list")


def config_channels(s: Settings) -> dict[str, dict]:
    chans = s.file.get("channels", {})
    if not isinstance(chans, dict) or not all(isinstance(v, dict) for v in chans.values()):
        raise ConfigError(f"{s.config_path}: [channels] must hold [channels.NAME] tables")
    for name, c in chans.items():
        unknown = set(c) - CHANNEL_KEYS
        if unknown:
            raise ConfigError(f"{s.config_path}: [channels.{name}] has unknown keys: {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(CHANNEL_KEYS))})")
    return chans


def job_from_config(name: str, c: dict) -> Job:
    from ..save import read_exclude_file

    where = f"[channels.{name}]"
    excludes = _strings(c.get("exclude"), f"{where} exclude")
    for f in _strings(c.get("exclude_file"), f"{where} exclude_file"):
        excludes += read_exclude_file(os.path.expanduser(f))
    iexcludes = _strings(c.get("iexclude"), f"{where} iexclude")
    for f in _strings(c.get("iexclude_file"), f"{where} iexclude_file"):
        iexcludes += read_exclude_file(os.path.expanduser(f))
    paths = [os.path.expanduser(p) for p in _strings(c.get("paths"), f"{where} paths")]
    for key, mode in (("files_from", "glob"), ("files_from_verbatim", "lines"), ("files_from_raw", "nul")):
        for f in _strings(c.get(key), f"{where} {key}"):
            paths += read_files_from(os.path.expanduser(f), mode)
    limit = c.get("exclude_larger_than")
    job = Job(name, paths=paths,
              stdin_name=c.get("stdin"), command=_command(c.get("command"), f"{where} command"),
              excludes=excludes, iexcludes=iexcludes, exclude_caches=bool(c.get("exclude_caches", False)),
              exclude_if_present=_strings(c.get("exclude_if_present"), f"{where} exclude_if_present"),
              exclude_larger_than=None if limit is None else _size(limit, f"{where} exclude_larger_than"),
              one_file_system=bool(c.get("one_file_system", False)), host=c.get("host"),
              tags=_strings(c.get("tags"), f"{where} tags"), xattrs=bool(c.get("xattrs", True)),
              pre=_command(c.get("pre"), f"{where} pre"), post=_command(c.get("post"), f"{where} post"))
    if job.stdin_name is not None and not isinstance(job.stdin_name, str):
        raise ConfigError(f"{where} stdin must be a file name")
    if job.stdin_name and job.paths:
        raise ConfigError(f"{where} has both paths and stdin; a channel saves one or the other")
    if job.command and not job.stdin_name:
        raise ConfigError(f"{where} command needs stdin = \"NAME\" (the file name its output is saved as)")
    if not job.paths and not job.stdin_name:
        raise ConfigError(f"{where} has no paths to save")
    return job


# ---- restic's option values ------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """restic's sizes: a number with an optional unit k, m, g or t (powers of
    1024; ``KiB``, ``MB`` ... read the same), e.g. ``500k``, ``2G``."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not m:
        raise UsageError(f"invalid size {text!r} (use e.g. 500k, 10M, 2G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _size(value, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a size (a number of bytes or e.g. \"10M\")")
    try:
        return parse_size(value)
    except UsageError as e:
        raise ConfigError(f"{what}: {e}") from None


def parse_time(text: str) -> int:
    """``--time``: restic's ``YYYY-MM-DD HH:MM:SS`` (local time), or ISO 8601
    with a zone; nanoseconds since the epoch."""
    import datetime as dt

    t = text.strip()
    try:
        when = dt.datetime.strptime(t, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(t)
        except ValueError:
            raise UsageError(f"invalid time {text!r} (use \"YYYY-MM-DD HH:MM:SS\" or ISO 8601, "
                             "e.g. 2024-05-01T02:30:00+02:00)") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time, like restic
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


def read_files_from(path: str, mode: str) -> list[str]:
    """The paths of restic's --files-from (``glob``: a pattern per line,
    expanded, '#' comments and empty lines skipped), --files-from-verbatim
    (``lines``: a path per line, as is) and --files-from-raw (``nul``:
    NUL-separated).  ``-`` reads standard input."""
    import glob

    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read file list {path}: {e.strerror}") from None
    if mode == "nul":
        items = [p for p in data.split(b"\0") if p]
    else:
        items = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
        items = [p for p in items if p]
    out = []
    for raw in items:
        p = os.fsdecode(raw)
        if mode != "glob":
            out.append(p)
            continue
        p = p.strip()
        if not p or p.startswith("#"):
            continue
        if glob.has_magic(p):
            found = sorted(glob.glob(p))
            if not found:
                click.echo(f"rekkord: warning: {path}: pattern {p!r} matches no file", err=True)
            out += found
        else:
            out.append(p)
    return out


# ---- hooks and stdin commands -----------------------------------------------------


def run_hook(which: str, cmd, env: dict, channel: str) -> None:
    """Run a hook; its output goes to our stderr (stdout may carry JSON)."""
    log_info(f"channel {channel}: {which} hook: {cmd}")
    try:
        p = subprocess.run(cmd, shell=isinstance(cmd, str), env=env, stdin=subprocess.DEVNULL,
                           stdout=sys.stderr.fileno(), stderr=None)
    except OSError as e:
        raise HookFailed(f"{which} hook for channel {channel} cannot run: {e.strerror}") from None
    if p.returncode != 0:
        raise HookFailed(f"{which} hook for channel {channel} failed with exit code {p.returncode}")


class CommandStream:
    """A command's stdout for Saver.save_stream: at EOF, a failed command
    raises, so the save is abandoned before its snapshot record is written."""

    def __init__(self, cmd, channel: str):
        self.cmd = cmd
        self.channel = channel
        try:
            self.proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE)
        except OSError as e:
            raise HookFailed(f"command for channel {channel} cannot run: {e.strerror}") from None

    def readinto(self, b) -> int:
        n = self.proc.stdout.readinto(b)
        if not n:
            rc = self.proc.wait()
            if rc != 0:
                raise HookFailed(f"command for channel {self.channel} failed with exit code {rc}; "
                                 "nothing was saved")
        return n

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


# ---- the command --------------------------------------------------------------------


@click.command("save")
@click.argument("channel", required=False)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--all", "all_channels", is_flag=True, help="Save every [channels.NAME] of the config file")
@click.option("--stdin", "stdin_name", metavar="NAME", help="Save standard input as one file NAME at the "
              "snapshot root (`pg_dump app | rekkord save --stdin app.sql db`)")
@click.option("--stdin-command", metavar="CMD", help="With --stdin: run CMD and save its output; "
              "if CMD fails, nothing is saved")
@click.option("--pre", metavar="CMD", help="Run CMD first; if it fails, the channel is not saved")
@click.option("--post", metavar="CMD", help="Run CMD last, with REKKORD_STATUS=success|warning|failure, "
              "REKKORD_SNAPSHOT, REKKORD_CHANNEL (and REKKORD_ERROR)")
@click.option("--files-from", multiple=True, metavar="FILE", help="Also save the paths in FILE: one glob "
              "pattern a line, '#' comments (repeatable; - is stdin)")
@click.option("--files-from-verbatim", multiple=True, metavar="FILE", help="Also save the paths in FILE, one a "
              "line, taken as they are")
@click.option("--files-from-raw", multiple=True, metavar="FILE", help="Also save the NUL-separated paths in FILE "
              "(find -print0)")
@click.option("--exclude", "-e", multiple=True, metavar="PATTERN", help="Skip matching paths (repeatable)")
@click.option("--exclude-file", multiple=True, type=click.Path(dir_okay=False), help="Patterns, one a line")
@click.option("--iexclude", multiple=True, metavar="PATTERN", help="Like --exclude, ignoring case")
@click.option("--iexclude-file", multiple=True, type=click.Path(dir_okay=False),
              help="Like --exclude-file, ignoring case")
@click.option("--exclude-caches", is_flag=True, help="Skip the content of directories with a CACHEDIR.TAG")
@click.option("--exclude-if-present", multiple=True, metavar="FILE[:HEADER]",
              help="Skip the content of directories holding FILE (that starts with HEADER) but FILE itself")
@click.option("--exclude-larger-than", metavar="SIZE", help="Skip files larger than SIZE (e.g. 500k, 2G)")
@click.option("--one-file-system", "-x", is_flag=True, help="Do not cross file system boundaries")
@click.option("--host", help="Host name to record (default: this machine's)")
@click.option("--tag", multiple=True, help="Tag the snapshot (repeatable)")
@click.option("--time", "at", metavar="TIME", help="The snapshot's time instead of now (\"YYYY-MM-DD HH:MM:SS\", "
              "local, or ISO 8601)")
@click.option("--no-xattrs", is_flag=True, help="Do not save extended attributes")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be saved, how much is new and would be "
              "uploaded; write nothing")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (a list with --all)")
@pass_settings
def save_cmd(s: Settings, channel, paths, all_channels, stdin_name, stdin_command, pre, post, files_from,
             files_from_verbatim, files_from_raw, exclude, exclude_file, iexclude, iexclude_file, exclude_caches,
             exclude_if_present, exclude_larger_than, one_file_system, host, tag, at, no_xattrs, dry_run, as_json):
    """Save PATHS as a new snapshot in CHANNEL (works with a write key).

    `rekkord save CHANNEL` alone saves what [channels.CHANNEL] in the config
    file names; `rekkord save --all` saves every configured channel in turn
    (a failed channel does not stop the others). Exit status: 0 saved, 3
    saved with warnings (unreadable or changing files), other codes: failed.

    --dry-run runs the whole save -- walk, stat cache, chunking,
    deduplication, compression -- and reports what it would save, what is
    new and the bytes it would upload, with nothing written to the
    repository (not even a session marker) and the local cache unchanged.
    It runs no pre or post hook (a --stdin command still runs: its output is
    what would be saved)."""
    from ..save import parse_tag_file_spec, read_exclude_file

    extra_excludes = list(exclude)
    for f in exclude_file:
        extra_excludes += read_exclude_file(f)
    extra_iexcludes = list(iexclude)
    for f in iexclude_file:
        extra_iexcludes += read_exclude_file(f)
    for spec in exclude_if_present:
        parse_tag_file_spec(spec)  # a usage error before any work
    limit = parse_size(exclude_larger_than) if exclude_larger_than else None
    time_ns = parse_time(at) if at else None
    listed = []
    for files, mode in ((files_from, "glob"), (files_from_verbatim, "lines"), (files_from_raw, "nul")):
        for f in files:
            listed += read_files_from(f, mode)
    if (files_from or files_from_verbatim or files_from_raw) and not listed and not paths:
        raise UsageError("the file lists name no path to save")
    jobs = _jobs(s, channel, tuple(paths) + tuple(listed), all_channels, stdin_name, stdin_command)
    if time_ns is not None and all_channels:
        raise UsageError("--time sets one snapshot's time; it cannot be combined with --all")
    for job in jobs:
        job.excludes += extra_excludes
        job.iexcludes += extra_iexcludes
        job.exclude_if_present += list(exclude_if_present)
        job.exclude_larger_than = limit if limit is not None else job.exclude_larger_than
        job.exclude_caches = job.exclude_caches or exclude_caches
        job.one_file_system = job.one_file_system or one_file_system
        job.host = host or job.host
        job.tags = list(tag) or job.tags
        job.xattrs = job.xattrs and not no_xattrs
        job.pre = pre or job.pre
        job.post = post or job.post
    if any(j.stdin_name and not j.command for j in jobs) and sys.stdin.isatty():
        raise UsageError("standard input is a terminal: pipe the data in (`pg_dump app | rekkord save --stdin "
                         "app.sql db`) or use --stdin-command")

    repo = s.open_repo()
    repo.key.require("save", "save snapshots")
    cache = None if dry_run else s.open_cache(repo)  # a dry run only reads a copy of it
    outcomes = []
    try:
        for job in jobs:
            outcomes.append(_run_job(s, repo, cache, job, quiet=s.quiet or as_json, time_ns=time_ns,
                                     dry_run=dry_run))
            if not dry_run:
                _write_report(repo, job, outcomes[-1])
            _report(s, outcomes[-1], as_json, several=all_channels)
    finally:
        if cache is not None:
            cache.close()
    if as_json:
        echo_json([o.to_json() for o in outcomes] if all_channels else outcomes[0].to_json())
    failed = [o for o in outcomes if o.status == "failure"]
    warned = [o for o in outcomes if o.status == "warning"]
    if all_channels and not as_json and (not s.quiet or failed or warned):
        click.echo(f"saved {len(outcomes) - len(failed)} of {len(outcomes)} channels"
                   + (f"; {len(warned)} with warnings" if warned else "")
                   + (f"; failed: {', '.join(o.channel for o in failed)}" if failed else ""),
                   err=bool(failed or warned))
    if not all_channels and failed and failed[0].exception is not None:
        raise failed[0].exception
    if failed:
        raise SystemExit(failed[0].exit_code or ExitCode.ERROR)
    if warned:
        raise SystemExit(ExitCode.WARNINGS)


def _jobs(s: Settings, channel, paths, all_channels, stdin_name, stdin_command) -> list[Job]:
    if all_channels:
        if channel or paths or stdin_name:
            raise UsageError("--all saves the channels of the config file; give no CHANNEL, PATHS or --stdin")
        if not s.config_path:
            raise UsageError("--all needs a config file with [channels.NAME] sections (-c FILE or REKKORD_CONFIG)")
        chans = config_channels(s)
        if not chans:
            raise ConfigError(f"{s.config_path} defines no [channels.NAME] sections")
        return [job_from_config(n, c) for n, c in chans.items()]
    if not channel:
        raise UsageError("give a CHANNEL (and PATHS), or --all")
    if stdin_command and not stdin_name:
        raise UsageError("--stdin-command needs --stdin NAME (the file name its output is saved as)")
    if stdin_name:
        if paths:
            raise UsageError("--stdin saves standard input only; give no PATHS")
        return [Job(channel, stdin_name=stdin_name, command=stdin_command)]
    conf = config_channels(s).get(channel) if s.file else None
    if paths:
        job = Job(channel, paths=list(paths))
        if conf is not None:  # hooks and excludes of the configured channel still apply
            base = job_from_config(channel, conf)
            job.excludes, job.pre, job.post = base.excludes, base.pre, base.post
            job.iexcludes, job.exclude_if_present = base.iexcludes, base.exclude_if_present
            job.exclude_larger_than = base.exclude_larger_than
        return [job]
    if conf is None:
        raise UsageError(f"no paths given for channel {channel}, and the config file has no [channels.{channel}]")
    return [job_from_config(channel, conf)]


def _run_job(s: Settings, repo, cache, job: Job, *, quiet: bool, time_ns: int | None = None,
             dry_run: bool = False) -> Outcome:
    from ..save import SaveOptions, Saver

    out = Outcome(job.channel)
    out.dry_run = dry_run
    if dry_run:  # no hooks: they may change things
        job.pre = job.post = None
    env = dict(os.environ, REKKORD_CHANNEL=job.channel)
    for name in SECRET_ENV:  # hooks need no secret of ours
        env.pop(name, None)
    interrupted = None
    try:
        if job.pre:
            run_hook("pre", job.pre, dict(env, REKKORD_HOOK="pre"), job.channel)
        estimate = cache.get_meta(f"last_bytes_total:{job.channel}") if cache is not None else None
        progress = Progress(not quiet, f"{'checking' if dry_run else 'saving'} {job.channel}",
                            total=int(estimate) if estimate else None)
        stream = None
        options = SaveOptions(excludes=job.excludes, iexcludes=job.iexcludes, exclude_caches=job.exclude_caches,
                              exclude_if_present=job.exclude_if_present,
                              exclude_larger_than=job.exclude_larger_than,
                              one_file_system=job.one_file_system, host=job.host,
                              tags=job.tags, threads=s.threads, xattrs=job.xattrs)
        if not job.stdin_name:
            from ..save import count_tree

            finished = []
            progress.estimate_from(lambda: count_tree(job.paths, options, stop=lambda: bool(finished)))
        try:
            if job.stdin_name:
                stream = CommandStream(job.command, job.channel) if job.command else sys.stdin.buffer
            if dry_run:
                from ..dryrun import dry_run_save

                out.result = dry_run_save(repo, s.cache_file(repo), options, job.channel, job.paths,
                                          stream=stream, stream_name=job.stdin_name, time_ns=time_ns,
                                          progress=progress.save, warn=warn_printer(s.quiet))
            else:
                saver = Saver(repo, cache, options, progress=progress.save, warn=warn_printer(s.quiet))
                out.saver = saver
                if job.stdin_name:
                    out.result = saver.save_stream(job.channel, job.stdin_name, stream, time_ns=time_ns)
                else:
                    out.result = saver.save(job.channel, job.paths, time_ns=time_ns)
        finally:
            if not job.stdin_name:
                finished.append(True)
            progress.done()
            if isinstance(stream, CommandStream):
                stream.close()
        if not dry_run:
            cache.set_meta(f"last_bytes_total:{job.channel}", out.result.stats.bytes_total)
        out.status = "warning" if out.result.stats.warnings else "success"
    except RekkordError as e:
        out.error, out.exit_code, out.exception = str(e), e.exit_code, e
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        out.error = f"{e.strerror or e}{where}"
        out.exit_code = ExitCode.NO_SPACE if e.errno == 28 else ExitCode.ERROR
    except KeyboardInterrupt as e:
        out.error, out.exit_code, interrupted = "interrupted", ExitCode.INTERRUPTED, e
    if job.post:
        penv = dict(env, REKKORD_HOOK="post", REKKORD_STATUS=out.status,
                    REKKORD_SNAPSHOT=out.result.snapshot_id if out.result else "", REKKORD_ERROR=out.error or "")
        try:
            run_hook("post", job.post, penv, job.channel)
        except HookFailed as e:
            click.echo(f"rekkord: warning: {e}", err=True)
            log.warning("%s", e)
            if out.status == "success":
                out.status = "warning"
    if interrupted is not None:
        raise interrupted
    return out


def _write_report(repo, job: Job, o: Outcome) -> None:
    """A save that failed or ended with warnings leaves a failure report in
    the repository (rekkord/report.py), for `rekkord reports` and the monitor.
    Best effort: a report that cannot be written is one more warning, never
    another exit code."""
    if o.status == "success":
        return
    from ..report import error_kind, write_report
    from ..repository import default_host

    failed = o.status == "failure"
    saver = o.saver
    stats = o.result.stats if o.result is not None else getattr(saver, "stats", None)
    warnings = o.result.warnings if o.result is not None else list(getattr(saver, "warnings", []))
    try:
        write_report(repo, channel=job.channel, host=job.host or default_host(), status=o.status,
                     exit_code=(o.exit_code or ExitCode.ERROR) if failed else ExitCode.WARNINGS,
                     error_kind=(error_kind(o.exception) if o.exception is not None else "OSError") if failed
                     else "Warnings", error_message=o.error, warnings=warnings,
                     warning_count=stats.warnings if stats else None, files=stats.files if stats else 0,
                     bytes_total=stats.bytes_total if stats else 0)
    except (RekkordError, OSError) as e:
        log.warning("channel %s: could not write a failure report: %s", job.channel, e)
        if not (isinstance(e, StorageError) and isinstance(o.exception, StorageError)):
            # (when the storage failed the save, that one error line says it all)
            click.echo(f"rekkord: warning: channel {job.channel}: could not write a failure report: {e}", err=True)


def _report(s: Settings, o: Outcome, as_json: bool, several: bool) -> None:
    if o.status == "failure":
        log.error("channel %s: %s", o.channel, o.error)
        if several or o.exception is None:  # else raised, and printed by the CLI
            click.echo(f"rekkord: error: channel {o.channel}: {o.error}", err=True)
        return
    r = o.result
    st = r.stats
    if o.dry_run:
        _report_dry_run(s, o, as_json)
        return
    log_info(f"channel {o.channel}: snapshot {r.snapshot_id} saved: {st.files} files, "
             f"{human_bytes(st.bytes_total)}, {human_bytes(st.bytes_stored)} stored, {st.warnings} warnings, "
             f"{st.duration:.1f}s")
    if as_json:
        return
    if s.quiet:
        if st.warnings or o.status == "warning":
            click.echo(f"snapshot {r.snapshot_id[:8]} saved in channel {o.channel} with "
                       f"{st.warnings} warnings", err=True)
        return
    click.echo(f"snapshot {r.snapshot_id} saved in channel {o.channel}")
    click.echo(f"  files: {st.files} ({st.files_unchanged} unchanged), dirs: {st.dirs}, other: {st.others}")
    click.echo(f"  bytes: {human_bytes(st.bytes_total)} total, {human_bytes(st.bytes_read)} read, "
               f"{human_bytes(st.bytes_new)} new, {human_bytes(st.bytes_stored)} stored "
               f"({st.blobs_new} new blobs)")
    if st.parity_groups:
        click.echo(f"  parity: {human_bytes(st.parity_bytes)} in {st.parity_groups} parity groups")
    click.echo(f"  time: {st.duration:.2f}s" + (f", warnings: {st.warnings}" if st.warnings else ""))


def _report_dry_run(s: Settings, o: Outcome, as_json: bool) -> None:
    r = o.result
    st = r.stats
    log_info(f"channel {o.channel}: dry run: {st.files} files, {human_bytes(st.bytes_total)}, "
             f"{human_bytes(st.bytes_new)} new, {human_bytes(r.bytes_upload)} to upload")
    if as_json:
        return
    click.echo(f"dry run: channel {o.channel} would be saved; nothing was written")
    click.echo(f"  files: {st.files} ({st.files_unchanged} unchanged), dirs: {st.dirs}, other: {st.others}")
    click.echo(f"  bytes: {human_bytes(st.bytes_total)} total, {human_bytes(st.bytes_read)} read, "
               f"{human_bytes(st.bytes_new)} new in {st.blobs_new} new blobs")
    blobs = r.uploads.get("blobs", [0, 0])[1]
    click.echo(f"  would upload: {human_bytes(r.bytes_upload)} ({human_bytes(blobs)} of blobs, "
               f"{human_bytes(r.bytes_upload - blobs)} of records and markers)"
               + (f", warnings: {st.warnings}" if st.warnings else ""))


COMMANDS = [save_cmd]

"""rekkord setup: first run on a machine, interactive or scripted.

Writes the config file, creates the repository and its master key, derives
this machine's write key, and prints how to schedule the nightly save (a cron
line, or a systemd service and timer).  Every question has a flag, so it can
run unattended (``--yes``) from a provisioning script.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time

import click

from ..errors import ExitCode, KeyFileExists, RekkordError, UsageError
from .context import Settings, pass_settings


class ConfigExists(RekkordError):
    exit_code = ExitCode.EXISTS


def default_config_dir() -> str:
    if os.geteuid() == 0:
        return "/etc/rekkord"
    return os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "rekkord")


def toml_str(s: str) -> str:
    """A TOML basic string (JSON escapes are valid TOML for these)."""
    return json.dumps(s, ensure_ascii=False)


def toml_list(items: list[str]) -> str:
    return "[" + ", ".join(toml_str(i) for i in items) + "]"


def render_config(*, repository: str, key_file: str, channel: str, paths: list[str], excludes: list[str],
                  log_file: str | None) -> str:
    lines = [
        f"# rekkord configuration, written by `rekkord setup` on {time.strftime('%Y-%m-%d')}.",
        "# This machine holds a write key: it can add snapshots, not list, read or restore them.",
        f"repository = {toml_str(repository)}",
        f"key_file = {toml_str(key_file)}",
    ]
    if log_file:
        lines.append(f"log_file = {toml_str(log_file)}")
    if repository.startswith("s3://"):
        lines += ["", "[s3]", '# endpoint_url = "https://s3.example.net"', '# region = "fr-par"',
                  '# access_key_id = "..."', '# secret_access_key = "..."']
    elif repository.startswith("sftp://"):
        lines += ["", "[sftp]", '# key_file = "/root/.ssh/id_ed25519"', '# fingerprint = "SHA256:..."']
    lines += [
        "",
        f"[channels.{_toml_key(channel)}]",
        f"paths = {toml_list(paths)}",
        f"exclude = {toml_list(excludes)}",
        "exclude_caches = true",
        '# pre = "pg_dump -Fc app > /var/backups/app.dump"   # runs first; its failure skips the save',
        '# post = "/usr/local/bin/notify"                      # gets REKKORD_STATUS, REKKORD_SNAPSHOT',
        "",
    ]
    return "\n".join(lines)


def _toml_key(k: str) -> str:
    import re

    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_str(k)


def rekkord_command() -> str:
    exe = shutil.which("rekkord")
    if exe:
        return exe
    return f"{shlex.quote(sys.executable)} -m rekkord"


def schedule_texts(cmd: str, config: str, hour: int, minute: int, log_file: str | None) -> dict[str, str]:
    logopt = f" --log-file {shlex.quote(log_file)}" if log_file else ""
    run = f"{cmd} -c {shlex.quote(config)} -q{logopt} save --all"
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "backup")
    return {
        "cron": f"{minute} {hour} * * * {user} {run}",
        "service": "\n".join([
            "[Unit]",
            "Description=rekkord backup (save every configured channel)",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            f"ExecStart={run}",
            "Nice=10",
            "IOSchedulingClass=idle",
            "# Exit status 3 means saved with warnings (unreadable files): still a success here.",
            "SuccessExitStatus=3",
            "",
        ]),
        "timer": "\n".join([
            "[Unit]",
            "Description=Nightly rekkord backup",
            "",
            "[Timer]",
            f"OnCalendar=*-*-* {hour:02d}:{minute:02d}:00",
            "RandomizedDelaySec=15min",
            "Persistent=true",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]),
    }


def _parse_time(t: str) -> tuple[int, int]:
    try:
        h, m = t.split(":")
        hour, minute = int(h), int(m)
        if 0 <= hour < 24 and 0 <= minute < 60:
            return hour, minute
    except ValueError:
        pass
    raise UsageError(f"invalid time {t!r}: use HH:MM, e.g. 02:30")


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@click.command("setup")
@click.option("--repository", "repo_url", metavar="URL", help="Where backups go: a path, s3://... or sftp://...")
@click.option("--config-file", metavar="FILE", help="Config file to write [default: /etc/rekkord/rekkord.toml as "
              "root, else ~/.config/rekkord/rekkord.toml]")
@click.option("--master-key", metavar="FILE", help="Where to write the master key [default: next to the config]")
@click.option("--write-key", metavar="FILE", help="Where to write this machine's write key [default: next to the "
              "config]")
@click.option("--channel", help="Channel name for this machine [default: the host name]")
@click.option("--path", "paths", multiple=True, help="A path to save (repeatable) [default: /etc]")
@click.option("--exclude", "excludes", multiple=True, help="A pattern to skip (repeatable)")
@click.option("--time", "at", metavar="HH:MM", help="When the nightly save runs [default: 02:30]")
@click.option("--log-file", "log_to", metavar="FILE", help="Log file for scheduled runs "
              "[default: /var/log/rekkord.log as root]")
@click.option("--units-dir", type=click.Path(file_okay=False), help="Also write rekkord.service and "
              "rekkord.timer into this directory (e.g. /etc/systemd/system)")
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: take defaults for what no flag gives")
@pass_settings
def setup_cmd(s: Settings, repo_url, config_file, master_key, write_key, channel, paths, excludes, at, log_to,
              units_dir, yes):
    """First run: config file, repository, master key, write key, schedule.

    Interactive on a terminal; with --yes (and flags) fully scripted. The
    master key passphrase comes from a prompt, --passphrase-file,
    --passphrase-command or REKKORD_PASSPHRASE (none with --yes unless one
    is given). Move the master key off this machine
    afterwards: with the write key alone, this machine cannot read its own
    backups — which is the point."""
    from ..keys import Key
    from ..repository import Repository, default_host
    from ..storage import open_storage

    def ask(text, value, default=None, **kw):
        if value not in (None, "", ()):
            return value
        if yes:
            if default is None:
                raise UsageError(f"--yes needs a value for: {text.lower()}")
            return default
        return click.prompt(text, default=default, **kw)

    host = default_host().split(".")[0] or "host"
    url = ask("Repository (a path, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH)", repo_url or s.get("repository"))
    if "://" not in url:
        url = os.path.abspath(os.path.expanduser(url))
    conf_default = os.path.join(default_config_dir(), "rekkord.toml")
    config_file = os.path.abspath(os.path.expanduser(ask("Config file to write", config_file, conf_default)))
    conf_dir = os.path.dirname(config_file)
    master_key = os.path.abspath(os.path.expanduser(
        ask("Master key file (keep it offline afterwards)", master_key, os.path.join(conf_dir, "master.key"))))
    write_key = os.path.abspath(os.path.expanduser(
        ask("Write key file for this machine", write_key, os.path.join(conf_dir, "write.key"))))
    channel = ask("Channel name for this machine", channel, host)
    if not channel or "/" in channel:
        raise UsageError(f"invalid channel name {channel!r}")
    path_list = list(paths) or _split(ask("Paths to save, comma-separated", None, "/etc"))
    if not path_list:
        raise UsageError("no paths to save")
    exclude_list = list(excludes) if excludes else (
        [] if yes else _split(click.prompt("Patterns to exclude, comma-separated (empty for none)", default="",
                                           show_default=False)))
    hour, minute = _parse_time(ask("Time of the nightly save (HH:MM)", at, "02:30"))
    log_default = "/var/log/rekkord.log" if os.geteuid() == 0 else os.path.join(conf_dir, "rekkord.log")
    log_file = ask("Log file for scheduled runs", log_to, log_default)

    for p in (master_key, write_key):
        if os.path.lexists(p):
            raise KeyFileExists(f"key file {p} already exists; refusing to overwrite it")
    if os.path.lexists(config_file):
        raise ConfigExists(f"config file {config_file} already exists; refusing to overwrite it")
    missing = [p for p in path_list if not os.path.exists(p)]

    passphrase = s.passphrase_from_sources()
    if not passphrase and not yes:
        passphrase = click.prompt("Passphrase for the master key (empty for none)", hide_input=True,
                                  confirmation_prompt=True, default="", show_default=False) or None

    storage = open_storage(url, s.storage_options())
    for d in {os.path.dirname(master_key), os.path.dirname(write_key), conf_dir}:
        os.makedirs(d, mode=0o700, exist_ok=True)
    master = Key.generate_master()
    master.save(master_key, passphrase)
    try:
        repo = Repository.init(storage, master)
    except BaseException:
        os.unlink(master_key)
        raise
    wkey = repo.key.derive("write", host)
    wkey.save(write_key, None)
    repo.publish_cert(wkey.cert)
    text = render_config(repository=url, key_file=write_key, channel=channel, paths=path_list,
                         excludes=exclude_list, log_file=None)
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)

    sched = schedule_texts(rekkord_command(), config_file, hour, minute, log_file)
    if units_dir:
        os.makedirs(units_dir, exist_ok=True)
        for name in ("service", "timer"):
            with open(os.path.join(units_dir, f"rekkord.{name}"), "w", encoding="utf-8") as f:
                f.write(sched[name])

    echo = click.echo
    echo(f"created repository {master.repo} at {url}")
    echo(f"master key:  {master_key} " + ("(passphrase-protected)" if passphrase else "(NOT passphrase-protected)"))
    echo("             move it offline (a USB key in a safe): it is what reads and restores your backups")
    echo(f"write key:   {write_key} (label {host}; can save, cannot read)")
    echo(f"config file: {config_file} (channel {channel}: {', '.join(path_list)})")
    for p in missing:
        echo(f"warning: {p} does not exist (yet)", err=True)
    echo("")
    echo("Try it now:")
    echo(f"  {rekkord_command()} -c {shlex.quote(config_file)} save --all")
    echo("")
    echo("Then schedule it, either with cron (/etc/cron.d/rekkord):")
    echo(f"  {sched['cron']}")
    echo("")
    where = f"written to {units_dir}" if units_dir else "/etc/systemd/system"
    echo(f"or with systemd ({where}), rekkord.service:")
    echo(sched["service"])
    echo("rekkord.timer:")
    echo(sched["timer"])
    echo("and enable it: systemctl daemon-reload && systemctl enable --now rekkord.timer")


COMMANDS = [setup_cmd]

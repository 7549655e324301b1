"""rekkord monitor run | check-config | passwd"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys

import click

from ..errors import ExitCode, RekkordError, UsageError
from ..extras import install_hint
from .context import pass_settings

ENV_CONFIG = "REKKORD_MONITOR_CONFIG"


def _config_path(path: str | None) -> str:
    path = path or os.environ.get(ENV_CONFIG)
    if not path:
        raise UsageError(f"no monitor config given: rekkord monitor run FILE (or {ENV_CONFIG})")
    return path


def _need_extra():
    try:
        import jinja2  # noqa: F401
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RekkordError(f"rekkord monitor needs the monitor extra ({e.name} is missing): "
                           + install_hint("monitor")) from None


@click.group("monitor")
def monitor_group():
    """A web dashboard and alerting service for many repositories, with audit
    keys only (docs/guide-monitoring.md).

    One TOML file lists the repositories, what each channel is expected to
    do, the check schedule, mail and webhook targets and the users."""


@monitor_group.command("run")
@click.argument("config", required=False, metavar="CONFIG")
@click.option("--once", is_flag=True, help="Poll every repository once, check those due, deliver, and exit")
@click.option("--check/--no-check", "force_check", default=None,
              help="With --once: check every repository (or none), whatever the schedule")
@pass_settings
def run_cmd(s, config, once, force_check):
    """Run the service: poll, check on schedule, alert, and serve the web UI
    and /metrics (on 127.0.0.1:8750 unless [monitor] listen says otherwise).

    CONFIG defaults to $REKKORD_MONITOR_CONFIG. Logs go to stderr (the
    journal under systemd). SIGTERM or Ctrl-C stops it; its state (history,
    open alerts, pending deliveries, the check schedule) is kept in the
    state directory."""
    from ..monitor.config import load

    cfg = load(_config_path(config))
    _need_extra()
    _logging(s)
    from ..monitor.service import Monitor

    monitor = Monitor(cfg)
    log = logging.getLogger("rekkord.monitor")
    if once:
        try:
            monitor.run_once(check=force_check)
            pending = monitor.deliverer.pending()
        finally:
            monitor.state.close()
        if pending:
            log.warning("%d alert messages could not be delivered yet; the service retries them", pending)
        return
    if force_check is not None:
        raise UsageError("--check/--no-check go with --once")
    import uvicorn

    from ..monitor.web import create_app

    socks = [_listen(*cfg.listen)]
    if cfg.metrics_listen:
        socks.append(_listen(*cfg.metrics_listen))
    app = create_app(monitor, metrics_port=cfg.metrics_listen[1] if cfg.metrics_listen else None)
    scheme = "https" if cfg.tls_cert else "http"
    log.info("serving %s://%s:%d/%s", scheme, _host(cfg.listen[0]), cfg.listen[1],
             f" (metrics on {_host(cfg.metrics_listen[0])}:{cfg.metrics_listen[1]})" if cfg.metrics_listen else "")
    ucfg = uvicorn.Config(app, lifespan="on", proxy_headers=True, forwarded_allow_ips=cfg.trusted_proxies,
                          ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key, server_header=False,
                          access_log=s.verbose > 0, log_config=None, timeout_graceful_shutdown=5)
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the
    # handler it found: this one makes that a clean exit (0), as systemd expects.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        uvicorn.Server(ucfg).run(sockets=socks)
    finally:
        monitor.state.close()
    log.info("stopped")


def _host(h: str) -> str:
    return f"[{h}]" if ":" in h else h


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RekkordError(f"cannot listen on {_host(host)}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _logging(s) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logging.WARNING if s.quiet else logging.DEBUG if s.verbose > 1 else logging.INFO
    for name in ("rekkord.monitor", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False


@monitor_group.command("check-config")
@click.argument("config", required=False, metavar="CONFIG")
@click.option("--connect", is_flag=True, help="Also open every repository with its key (needs the storage)")
@pass_settings
def check_config_cmd(s, config, connect):
    """Say exactly what is wrong with a monitor config file (exit 2), or
    summarise it (exit 0). Key files are opened and must be audit keys."""
    from ..monitor.config import check_config

    path = _config_path(config)
    cfg, errors, notes = check_config(path)
    for e in errors:
        click.echo(f"rekkord: error: {e}", err=True)
    for n in notes:
        click.echo(f"rekkord: note: {n}", err=True)
    if errors:
        raise SystemExit(ExitCode.USAGE)
    failed = 0
    if connect:
        from ..monitor.watch import Watcher

        for rc in cfg.repos:
            try:
                repo = Watcher(rc, rc.load_key(), None, "").open()
                n = sum(1 for _ in repo.storage.list("snapshots/"))
                repo.storage.close()
                click.echo(f"{rc.name}: repository {repo.id} opened, {n} snapshot records")
            except RekkordError as e:
                failed = failed or e.exit_code
                click.echo(f"rekkord: error: {path}: [[repository]] {rc.name}: {e}", err=True)
    if failed:
        raise SystemExit(failed)
    targets = (["mail"] if cfg.mail else []) + [f"webhook {w.name}" for w in cfg.webhooks]
    click.echo(f"{path}: OK: {len(cfg.repos)} repositories ({', '.join(r.name for r in cfg.repos)}), "
               f"{len(cfg.users)} users, alerts by {', '.join(targets) or 'the dashboard only'}, "
               f"listening on {_host(cfg.listen[0])}:{cfg.listen[1]}")


@monitor_group.command("passwd")
@click.argument("user")
@click.option("--role", type=click.Choice(["viewer", "admin"]), default="viewer", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input")
def passwd_cmd(user, role, password_stdin):
    """Print a [[user]] entry with an Argon2id hash of a new password, for the
    monitor config file (the password is asked twice on a terminal)."""
    from ..monitor.auth import hash_password
    from ..monitor.config import NAME

    if not NAME.match(user):
        raise UsageError(f"user name {user!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt(f"New password for {user}", hide_input=True, confirmation_prompt=True)
    else:
        raise UsageError("standard input is not a terminal: use --password-stdin")
    if len(password) < 8:
        raise UsageError("the password must have at least 8 characters")
    try:
        h = hash_password(password)
    except ValueError as e:
        raise UsageError(str(e)) from None
    click.echo(f'[[user]]\nname = "{user}"\nrole = "{role}"\npassword_hash = "{h}"')


COMMANDS = [monitor_group]

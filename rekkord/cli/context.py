"""Settings from flags, the environment and the TOML config file (in that
order of precedence), and the objects commands need (storage, key, repo)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import click

from ..errors import KeyError_, RekkordError, UsageError
from .config import STORAGE_OPTION_KEYS, load_toml  # noqa: F401 (load_toml: part of this module's API)

ENV = {
    "repository": "REKKORD_REPOSITORY",
    "key_file": "REKKORD_KEY_FILE",
    "passphrase": "REKKORD_PASSPHRASE",
    "passphrase_file": "REKKORD_PASSPHRASE_FILE",
    "passphrase_command": "REKKORD_PASSPHRASE_COMMAND",
    "cache_dir": "REKKORD_CACHE_DIR",
    "sftp_key_file": "REKKORD_SFTP_KEY_FILE",
    "sftp_password": "REKKORD_SFTP_PASSWORD",
    "sftp_fingerprint": "REKKORD_SFTP_FINGERPRINT",
}
#: Variables that carry (or lead to) a key's passphrase: hooks never see them.
SECRET_ENV = ("REKKORD_PASSPHRASE", "REKKORD_PASSPHRASE_FILE", "REKKORD_PASSPHRASE_COMMAND",
              "REKKORD_NEW_PASSPHRASE")
MAX_PASSPHRASE_FILE = 1 << 20


@dataclass
class Settings:
    flags: dict = field(default_factory=dict)
    file: dict = field(default_factory=dict)
    config_path: str | None = None
    quiet: bool = False
    verbose: int = 0
    threads: int | None = None
    no_cache: bool = False
    log_file: str | None = None
    json: bool = False
    limit_upload: int | None = None  # KiB/s
    limit_download: int | None = None
    argv: list[str] = field(default_factory=list)
    _passphrase: str | None = None
    _passphrase_resolved: bool = False
    _started: bool = False

    #: Global options that are looked up through get() (flag, env, config file).
    FLAG_NAMES = ("repository", "key_file", "cache_dir", "passphrase_file", "passphrase_command")

    @classmethod
    def from_options(cls, options: dict, argv: list[str] | None = None) -> "Settings":
        """Settings from the global options given before the command."""
        s = cls(argv=list(argv or []))
        s.merge_late(options)
        return s

    def merge_late(self, options: dict) -> None:
        """Merge global options (given before or after the command): a value
        given later wins, flags add up (-q, -v, --no-cache, --json)."""
        for name, v in options.items():
            if name in ("quiet", "no_cache", "json"):
                if v:
                    setattr(self, name, True)
            elif name == "verbose":
                self.verbose += v or 0
            elif v is None:
                continue
            elif name in self.FLAG_NAMES:
                self.flags[name] = v
            else:  # config_path, threads, log_file, limit_upload, limit_download
                setattr(self, name, v)

    def start(self) -> None:
        """Once the command line is parsed, before any work: read (and check)
        the config file, open the log file."""
        if self._started:
            return
        self._started = True
        self.file = load_toml(self.config_path) if self.config_path else {}
        if self.log_file is None and self.file.get("log_file"):
            self.log_file = str(self.file["log_file"])
        for name in ("limit_upload", "limit_download"):
            if getattr(self, name) is None and self.file.get(name) not in (None, ""):
                setattr(self, name, _rate(self.file[name], f"{self.config_path}: {name}"))
        if self.log_file:
            from .logfile import open_log

            open_log(self.log_file, self.argv)

    def get(self, name: str, default=None):
        v = self.flags.get(name)
        if v not in (None, ""):
            return v
        env = ENV.get(name)
        if env and os.environ.get(env):
            return os.environ[env]
        v = self.file.get(name)
        if v not in (None, ""):
            return v
        return default

    def storage_options(self) -> dict:
        out = {}
        for section in ("s3", "sftp", "storage"):
            sec = self.file.get(section)
            if isinstance(sec, dict):
                for k, v in sec.items():
                    key = f"sftp_{k}" if section == "sftp" and not k.startswith("sftp_") else k
                    out[key] = v
        for k in STORAGE_OPTION_KEYS:
            v = self.get(k)
            if v not in (None, ""):
                out[k] = v
        if self.threads:
            out["connections"] = self.threads
        return out

    def repository_url(self) -> str:
        url = self.get("repository")
        if not url:
            raise UsageError("no repository given: use -r/--repository, REKKORD_REPOSITORY or the config file")
        return str(url)

    def key_path(self) -> str:
        path = self.get("key_file")
        if not path:
            raise UsageError("no key file given: use -k/--key-file, REKKORD_KEY_FILE or the config file")
        return os.path.expanduser(str(path))

    # ---- objects ---------------------------------------------------------

    def open_storage(self):
        from ..storage import open_storage

        storage = open_storage(self.repository_url(), self.storage_options())
        if self.limit_upload or self.limit_download:
            from ..storage.throttle import ThrottledStorage, TokenBucket
            from .logfile import add_summary

            up = TokenBucket(self.limit_upload * 1024) if self.limit_upload else None
            down = TokenBucket(self.limit_download * 1024) if self.limit_download else None
            storage = ThrottledStorage(storage, upload=up, download=down)
            for bucket, what in ((up, "upload"), (down, "download")):
                if bucket is not None:
                    add_summary(lambda b=bucket, w=what: b.summary(w))
        return storage

    def passphrase(self, *, prompt_text: str = "Passphrase for the key file", confirm: bool = False) -> str | None:
        """The key's passphrase: from --passphrase-command, --passphrase-file
        (flags, then REKKORD_PASSPHRASE_COMMAND/_FILE or REKKORD_PASSPHRASE,
        then the config file's passphrase_command/_file/passphrase), else
        asked for on a terminal.  Resolved once per run."""
        if not self._passphrase_resolved:
            self._passphrase = self.passphrase_from_sources()
            self._passphrase_resolved = self._passphrase is not None
        if self._passphrase is not None:
            return self._passphrase
        if sys.stdin.isatty():
            return click.prompt(prompt_text, hide_input=True, confirmation_prompt=confirm,
                                default="", show_default=False) or None
        return None

    def passphrase_from_sources(self) -> str | None:
        """The passphrase from the options, environment or config file, or None (no prompt)."""
        config = f"the config file {self.config_path}"
        levels = (
            ("--passphrase-file and --passphrase-command", self.flags.get),
            ("REKKORD_PASSPHRASE_FILE and REKKORD_PASSPHRASE_COMMAND", lambda n: os.environ.get(ENV[n])),
            (f"passphrase_file and passphrase_command in {config}", self.file.get),
        )
        for what, get in levels:
            command, path, direct = get("passphrase_command"), get("passphrase_file"), get("passphrase")
            if command and path:
                raise UsageError(f"{what} exclude each other: give one")
            if command:
                return passphrase_from_command(str(command))
            if path:
                return passphrase_from_file(os.path.expanduser(str(path)))
            if direct:
                return str(direct)
        return None

    def load_key(self, path: str | None = None):
        from .. import keys

        text = keys.read_key_file(path or self.key_path(), warn=warn_line)
        passphrase = self.passphrase() if keys.is_protected(text) else None
        return keys.loads(text, passphrase)

    def open_repo(self, key=None):
        from ..repository import Repository

        key = key or self.load_key()
        repo = Repository.open(self.open_storage(), key)
        # A read that succeeds only through a copy or parity says so (the
        # repository lost redundancy; check --repair restores it).
        repo.notice = warn_line
        return repo

    def cache_file(self, repo) -> str | None:
        """The cache's path for ``repo`` (None with --no-cache)."""
        from ..cache import cache_path

        if self.no_cache:
            return None
        d = self.get("cache_dir")
        if not d:
            import platformdirs

            d = platformdirs.user_cache_dir("rekkord")
        return cache_path(os.path.expanduser(str(d)), repo.id, repo.key.role)

    def open_cache(self, repo):
        from ..cache import Cache

        def warn(message: str) -> None:  # the cache could not be used: the command goes on without it
            warn_line(message)

        return Cache(self.cache_file(repo), warn=warn)


def _rate(value, what: str) -> int:
    from ..errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what} must be a whole number of KiB/s")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{what} must be a whole number of KiB/s, not {value!r}") from None
    if n < 1:
        raise ConfigError(f"{what} must be at least 1 KiB/s")
    return n


def warn_line(message: str) -> None:
    """``rekkord: warning: MESSAGE`` on stderr and in the log file."""
    import logging

    logging.getLogger("rekkord").warning("%s", message)
    click.echo(f"rekkord: warning: {message}", err=True)


def passphrase_from_file(path: str) -> str:
    """A passphrase file's content without surrounding white space (restic's
    --password-file does the same), e.g. a systemd credential."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSPHRASE_FILE + 1)
    except FileNotFoundError:
        raise KeyError_(f"passphrase file {path} does not exist") from None
    except OSError as e:
        raise KeyError_(f"cannot read passphrase file {path}: {e.strerror}") from None
    if len(data) > MAX_PASSPHRASE_FILE:
        raise KeyError_(f"passphrase file {path} is larger than 1 MiB")
    return _passphrase_text(data, f"passphrase file {path}")


def passphrase_from_command(command: str) -> str:
    """The output of ``command`` (split like a shell would, run without one;
    stdin from /dev/null, stderr to ours), without surrounding white space:
    restic's --password-command.  E.g. ``pass show backup/rekkord``."""
    import shlex
    import subprocess

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise UsageError(f"passphrase command {command!r}: {e}") from None
    if not argv:
        raise UsageError("the passphrase command is empty")
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=None)
    except OSError as e:
        raise KeyError_(f"passphrase command {argv[0]} cannot run: {e.strerror}") from None
    if p.returncode != 0:
        raise KeyError_(f"passphrase command {argv[0]} failed with exit code {p.returncode}")
    return _passphrase_text(p.stdout, f"the output of passphrase command {argv[0]}")


def _passphrase_text(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise KeyError_(f"{what} is not UTF-8 text") from None
    if not text:
        raise KeyError_(f"{what} is empty")
    return text


def echo_json(obj, *, line: bool = False) -> None:
    """``line``: on one line (restic's JSON lines messages, such as a summary)."""
    if line:
        click.echo(json.dumps(obj, separators=(",", ":"), default=str))
    else:
        click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


pass_settings = click.make_pass_decorator(Settings)


def fail(message: str, code: int) -> None:
    raise RekkordError(message) if code == 1 else _Exit(message, code)


class _Exit(RekkordError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code

"""Settings from flags, the environment and the TOML config file (in that
order of precedence), and the objects commands need (storage, key, repo)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import click

from ..errors import ConfigError, RekkordError, UsageError

ENV = {
    "repository": "REKKORD_REPOSITORY",
    "key_file": "REKKORD_KEY_FILE",
    "passphrase": "REKKORD_PASSPHRASE",
    "cache_dir": "REKKORD_CACHE_DIR",
    "sftp_key_file": "REKKORD_SFTP_KEY_FILE",
    "sftp_password": "REKKORD_SFTP_PASSWORD",
    "sftp_fingerprint": "REKKORD_SFTP_FINGERPRINT",
}
STORAGE_OPTION_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "connections",
                       "sftp_key_file", "sftp_password", "sftp_fingerprint")


def load_toml(path: str) -> dict:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None


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

        return open_storage(self.repository_url(), self.storage_options())

    def passphrase(self, *, prompt_text: str = "Passphrase for the key file", confirm: bool = False) -> str | None:
        p = self.get("passphrase")
        if p:
            return str(p)
        if sys.stdin.isatty():
            return click.prompt(prompt_text, hide_input=True, confirmation_prompt=confirm,
                                default="", show_default=False) or None
        return None

    def load_key(self, path: str | None = None):
        from .. import keys

        text = keys.read_key_file(path or self.key_path())
        passphrase = self.passphrase() if keys.is_protected(text) else None
        return keys.loads(text, passphrase)

    def open_repo(self, key=None):
        from ..repository import Repository

        key = key or self.load_key()
        return Repository.open(self.open_storage(), key)

    def open_cache(self, repo):
        from ..cache import Cache, cache_path

        if self.no_cache:
            return Cache(None)
        d = self.get("cache_dir")
        if not d:
            import platformdirs

            d = platformdirs.user_cache_dir("rekkord")

        def warn(message: str) -> None:  # the cache could not be used: the command goes on without it
            from .progress import log

            log.warning("%s", message)
            click.echo(f"rekkord: warning: {message}", err=True)

        return Cache(cache_path(os.path.expanduser(str(d)), repo.id, repo.key.role), warn=warn)


def echo_json(obj) -> None:
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

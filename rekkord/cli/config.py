"""The TOML config file: reading it and checking every key against the schema.

A typo must not be silently ignored (``exlude = [...]`` would otherwise save
what it was meant to skip), so any key the schema does not know, at any
level, is a :class:`ConfigError` that names the file, the table and the
closest known key::

    rekkord: error: /etc/rekkord/rekkord.toml: unknown key 'exlude' in [channels.web1-etc] (did you mean 'exclude'?)

A new section or key is added here (``TOP_KEYS``, ``SECTIONS``), next to the
code that reads it; ``docs/cli.md`` lists them.
"""

from __future__ import annotations

import difflib

from ..errors import ConfigError

#: Backend options that may also be given at the top level (docs/storage.md).
STORAGE_OPTION_KEYS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "connections",
                       "sftp_key_file", "sftp_password", "sftp_fingerprint")

#: Top-level keys: the global options' names, in lower case.
TOP_KEYS = {
    "repository", "key_file", "passphrase", "passphrase_file", "passphrase_command", "cache_dir", "log_file",
    "limit_upload", "limit_download", *STORAGE_OPTION_KEYS,
}

_RETRY_KEYS = {"connections", "retries", "retry_base_delay", "retry_max_delay", "timeout"}
S3_KEYS = {"endpoint_url", "region", "access_key_id", "secret_access_key", "session_token", "profile",
           "addressing_style"} | _RETRY_KEYS
_SFTP_NAMES = {"key_file", "password", "fingerprint", "known_hosts", "fsync"}
#: [sftp] takes its options with or without the ``sftp_`` prefix.
SFTP_KEYS = _SFTP_NAMES | {f"sftp_{k}" for k in _SFTP_NAMES} | _RETRY_KEYS
#: [storage] options go to whichever backend the URL names.
STORAGE_KEYS = S3_KEYS | {f"sftp_{k}" for k in _SFTP_NAMES}

#: Keys of a [channels.NAME] table (rekkord/cli/save.py reads them).
CHANNEL_KEYS = {
    "paths", "files_from", "files_from_verbatim", "files_from_raw",
    "exclude", "exclude_file", "iexclude", "iexclude_file", "exclude_caches", "exclude_if_present",
    "exclude_larger_than", "one_file_system", "host", "tags", "xattrs", "pre", "post", "stdin", "command",
}

#: section -> its keys; a set for a table, ("tables", keys) for a table of tables.
SECTIONS: dict[str, object] = {
    "s3": S3_KEYS,
    "sftp": SFTP_KEYS,
    "storage": STORAGE_KEYS,
    "channels": ("tables", CHANNEL_KEYS),
}


def load_toml(path: str) -> dict:
    """The config file, checked against the schema."""
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from None
    validate(data, path)
    return data


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(path: str, key: str, where: str, known) -> ConfigError:
    hint = _suggest(key, known)
    if not hint and where == "" and key in CHANNEL_KEYS:
        hint = " (it belongs in a [channels.NAME] table)"
    elif not hint:
        hint = f" (known: {', '.join(sorted(known))})"
    loc = f" in [{where}]" if where else " at the top level"
    return ConfigError(f"{path}: unknown key {key!r}{loc}{hint}")


def validate(data: dict, path: str) -> None:
    """Raise ConfigError for the first key the schema does not know."""
    for key, value in data.items():
        spec = SECTIONS.get(key)
        if spec is None:
            if key not in TOP_KEYS:
                raise _unknown(path, key, "", TOP_KEYS | set(SECTIONS))
            if isinstance(value, dict):
                raise ConfigError(f"{path}: {key} must be a value, not a table")
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table ([{key}])")
        if isinstance(spec, tuple):  # a table of tables, e.g. [channels.NAME]
            keys = spec[1]
            for name, sub in value.items():
                if not isinstance(sub, dict):
                    raise ConfigError(f"{path}: [{key}] must hold [{key}.NAME] tables ({name} is a value)")
                for k in sub:
                    if k not in keys:
                        raise _unknown(path, k, f"{key}.{name}", keys)
        else:
            for k in value:
                if k not in spec:
                    raise _unknown(path, k, key, spec)

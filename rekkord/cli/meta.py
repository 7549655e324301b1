"""rekkord version | completion | man (hidden): about rekkord itself."""

from __future__ import annotations

import os
import platform
import sys

import click

from .context import Settings, echo_json, pass_settings

#: pyproject.toml's dependencies (tests/test_cli_meta.py keeps them in step).
DEPENDENCIES = ("pynacl", "zstandard", "blake3", "pyfastcdc", "click", "rich", "platformdirs", "boto3", "paramiko")
#: Optional dependencies and the extra that installs each.
OPTIONAL = {"mfusepy": "mount"}


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def version_info() -> dict:
    from .. import __version__
    from ..keys import KDF_ARGON2ID, KDF_ARGON2ID_HEADER, KDF_NONE
    from ..repository import FORMAT_VERSION, SUPPORTED_FORMATS

    return {
        "version": __version__,
        "repository_formats": {"supported": list(SUPPORTED_FORMATS), "writes": FORMAT_VERSION},
        "key_file_protections": {"supported": [KDF_NONE, KDF_ARGON2ID, KDF_ARGON2ID_HEADER],
                                 "writes": [KDF_NONE, KDF_ARGON2ID_HEADER]},
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "platform": platform.platform(),
        "dependencies": {d: _version(d) for d in DEPENDENCIES},
        "optional": {d: {"extra": extra, "version": _version(d)} for d, extra in OPTIONAL.items()},
    }


@click.command("version")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def version_cmd(s: Settings, as_json):
    """Show rekkord's version, the repository formats it reads and writes,
    and the versions of Python and of its dependencies (works offline)."""
    info = version_info()
    if as_json:
        echo_json(info)
        return
    f = info["repository_formats"]
    click.echo(f"rekkord {info['version']}")
    click.echo(f"repository formats: reads {', '.join(map(str, f['supported']))}; writes {f['writes']}")
    py = info["python"]
    click.echo(f"python {py['version']} ({py['implementation']}) on {info['platform']}")
    deps = ", ".join(f"{d} {v or 'MISSING'}" for d, v in info["dependencies"].items())
    click.echo(f"dependencies: {deps}")
    for d, o in info["optional"].items():
        click.echo(f"optional: {d} {o['version'] or 'not installed'} (extra [{o['extra']}])")


SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion_cmd(shell):
    """Print the shell completion script for SHELL (bash, zsh or fish).

    \b
    bash: rekkord completion bash > /etc/bash_completion.d/rekkord
          (or: eval "$(rekkord completion bash)" in ~/.bashrc)
    zsh:  rekkord completion zsh > "${fpath[1]}/_rekkord"
          (or: eval "$(rekkord completion zsh)" in ~/.zshrc)
    fish: rekkord completion fish > ~/.config/fish/completions/rekkord.fish

    It completes commands, options and choices (click's completion, the
    same as `_REKKORD_COMPLETE=bash_source rekkord`)."""
    from click.shell_completion import get_completion_class

    from .main import cli

    cls = get_completion_class(shell)
    comp = cls(cli, {}, "rekkord", "_REKKORD_COMPLETE")
    click.echo(comp.source())


@click.command("man", hidden=True)
@click.argument("directory", type=click.Path(file_okay=False))
def man_cmd(directory):
    """Write a man page for rekkord and for each command (roff) into DIRECTORY:
    rekkord.1, rekkord-save.1, rekkord-key-derive.1, ..."""
    from .main import cli
    from .reference import man_pages

    os.makedirs(directory, exist_ok=True)
    pages = man_pages(cli)
    for name, text in pages.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    click.echo(f"wrote {len(pages)} man pages to {directory}")


COMMANDS = [version_cmd, completion_cmd, man_cmd]

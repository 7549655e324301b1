"""rekkord key derive | list | info | passwd | revoke"""

from __future__ import annotations

import time

import click

from .context import Settings, echo_json, pass_settings, table


@click.group("key")
def key_group():
    """Derive, inspect and protect keys."""


@key_group.command("derive")
@click.option("--role", type=click.Choice(["full", "read", "write", "audit"]), required=True)
@click.option("--label", required=True, help="A name for the holder, e.g. the host name")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="New key file")
@click.option("--passphrase-prompt/--no-passphrase", default=False,
              help="Ask for a passphrase to protect the new key (REKKORD_NEW_PASSPHRASE also works)")
@pass_settings
def derive_cmd(s: Settings, role, label, output, passphrase_prompt):
    """Derive a key for ROLE from the master key and publish its certificate."""
    import os

    from ..errors import KeyFileExists

    if os.path.lexists(output):
        raise KeyFileExists(f"key file {output} already exists; refusing to overwrite it")
    repo = s.open_repo()
    new = repo.key.derive(role, label)
    new_pass = os.environ.get("REKKORD_NEW_PASSPHRASE") or None
    if passphrase_prompt and not new_pass:
        new_pass = click.prompt("Passphrase for the new key", hide_input=True, confirmation_prompt=True)
    new.save(output, new_pass)
    repo.publish_cert(new.cert)
    if not s.quiet:
        click.echo(f"derived {role} key {new.kid} ({label}) -> {output}")


@key_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def list_cmd(s: Settings, as_json):
    """List the keys certified in the repository."""
    repo = s.open_repo()
    revoked = repo.revocations()
    rows = []
    for kid, c in sorted(repo.certificates().items(), key=lambda kv: kv[1].get("created", 0)):
        rows.append({"kid": kid, "role": c["role"], "label": c["label"],
                     "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(c.get("created", 0))),
                     "revoked": kid in revoked})
    if as_json:
        echo_json(rows)
        return
    click.echo(table([[r["kid"], r["role"], r["label"], r["created"], "revoked" if r["revoked"] else ""]
                      for r in rows], ["KEY", "ROLE", "LABEL", "CREATED", "STATUS"]))


@key_group.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def info_cmd(s: Settings, file, as_json):
    """Show what a key file is (works offline)."""
    from ..keys import CAPABILITIES

    k = s.load_key(file)
    info = {"file": file, "kid": k.kid, "role": k.role, "label": k.label, "repository": k.repo,
            "can": sorted(CAPABILITIES[k.role])}
    if as_json:
        echo_json(info)
        return
    for name, v in info.items():
        click.echo(f"{name:11} {', '.join(v) if isinstance(v, list) else v}")


@key_group.command("passwd")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@pass_settings
def passwd_cmd(s: Settings, file):
    """Change (or set, or remove) the passphrase of a key file.

    The new passphrase is asked for on the terminal, or taken from
    REKKORD_NEW_PASSPHRASE (empty: remove protection)."""
    import os

    k = s.load_key(file)
    if "REKKORD_NEW_PASSPHRASE" in os.environ:
        new = os.environ["REKKORD_NEW_PASSPHRASE"] or None
    else:
        new = click.prompt("New passphrase (empty for none)", hide_input=True, confirmation_prompt=True,
                           default="", show_default=False) or None
    k.save(file, new, overwrite=True)
    if not s.quiet:
        click.echo(f"{file}: " + ("passphrase changed" if new else "passphrase removed"))


@key_group.command("revoke")
@click.argument("kid")
@pass_settings
def revoke_cmd(s: Settings, kid):
    """Revoke a derived key: check flags its later snapshots (needs the master key)."""
    from ..errors import NotFound

    repo = s.open_repo()
    if kid not in repo.certificates():
        matches = [k for k in repo.certificates() if k.startswith(kid)]
        if len(matches) != 1:
            raise NotFound(f"no key {kid} in the repository")
        kid = matches[0]
    repo.revoke(kid)
    if not s.quiet:
        click.echo(f"revoked key {kid}")


COMMANDS = [key_group]

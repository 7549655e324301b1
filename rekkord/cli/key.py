"""rekkord key derive | list | info | passwd | revoke"""

from __future__ import annotations

import time

import click

from .context import Settings, echo_json, pass_settings, table, warn_line
from .text import safe


@click.group("key")
def key_group():
    """Derive, inspect and protect keys."""


def new_passphrase_options(f):
    """--new-passphrase-file / --new-passphrase-command: the passphrase a
    command sets, from elsewhere (like the global --passphrase-file/-command
    for the key in use; restic's --new-password-file)."""
    f = click.option("--new-passphrase-command", metavar="CMD",
                     help="Run CMD and use its output as the new passphrase")(f)
    f = click.option("--new-passphrase-file", metavar="FILE", type=click.Path(dir_okay=False),
                     help="Read the new passphrase from FILE")(f)
    return f


def _new_passphrase_from(file, command) -> str | None:
    from ..errors import UsageError
    from .context import passphrase_from_command, passphrase_from_file

    if file and command:
        raise UsageError("--new-passphrase-file and --new-passphrase-command exclude each other: give one")
    if command:
        return passphrase_from_command(command)
    if file:
        return passphrase_from_file(file)
    return None


@key_group.command("derive")
@click.option("--role", type=click.Choice(["full", "read", "write", "audit"]), required=True)
@click.option("--label", required=True, help="A name for the holder, e.g. the host name")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="New key file")
@click.option("--passphrase-prompt/--no-passphrase", default=False,
              help="Ask for a passphrase to protect the new key (REKKORD_NEW_PASSPHRASE also works)")
@new_passphrase_options
@pass_settings
def derive_cmd(s: Settings, role, label, output, passphrase_prompt, new_passphrase_file, new_passphrase_command):
    """Derive a key for ROLE from the master key and publish its certificate.

    The new key is protected by a passphrase when one is given: with
    --new-passphrase-file, --new-passphrase-command, REKKORD_NEW_PASSPHRASE,
    or --passphrase-prompt on a terminal."""
    import os

    from ..errors import KeyFileExists

    if os.path.lexists(output):
        raise KeyFileExists(f"key file {output} already exists; refusing to overwrite it")
    new_pass = _new_passphrase_from(new_passphrase_file, new_passphrase_command)
    repo = s.open_repo()
    new = repo.key.derive(role, label)
    new_pass = new_pass or os.environ.get("REKKORD_NEW_PASSPHRASE") or None
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
    # Labels are the admin's words, but a certificate is read from the
    # storage: printed escaped, like every string from the repository.
    click.echo(table([[r["kid"], r["role"], safe(str(r["label"])), r["created"], "revoked" if r["revoked"] else ""]
                      for r in rows], ["KEY", "ROLE", "LABEL", "CREATED", "STATUS"]))


@key_group.command("info")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--verify", is_flag=True, help="Also open the key with its passphrase, which authenticates "
              "the facts shown")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
def info_cmd(s: Settings, file, verify, as_json):
    """Show what a key file is: role, label, repository, kid (works offline).

    A passphrase-protected key file shows these without its passphrase:
    they are stored in clear next to the sealed key, and authenticated by
    the seal, so a tampered file is detected once the passphrase is given
    (--verify, or any command using the key). Key files protected by
    earlier versions need the passphrase; `rekkord key passwd` rewrites them in
    the current form."""
    from .. import keys
    from ..keys import CAPABILITIES

    text = keys.read_key_file(file, warn=warn_line)
    found = keys.inspect(text)
    if found.facts is None or verify:
        k = s.load_key(file)
        facts, verified = k.public_facts(), True
    else:
        facts, verified = found.facts, found.verified
    info = {"file": file, "kid": facts["kid"], "role": facts["role"], "label": facts["label"],
            "repository": facts["repo"],
            "created": time.strftime("%Y-%m-%d %H:%M", time.gmtime(facts["created"])),
            "protection": found.protection, "verified": verified,
            "can": sorted(CAPABILITIES[facts["role"]])}
    if as_json:
        echo_json(info)
        return
    for name, v in info.items():
        if name == "verified":
            v = "yes" if v else "no: shown without the passphrase (--verify authenticates them)"
        # The label (and, unverified, every fact) comes from the file, which
        # anyone may have written: escaped, one line per fact whatever it holds.
        click.echo(f"{name:11} {', '.join(v) if isinstance(v, list) else safe(str(v))}")


@key_group.command("passwd")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@new_passphrase_options
@click.option("--no-passphrase", "remove", is_flag=True, help="Remove the protection")
@pass_settings
def passwd_cmd(s: Settings, file, new_passphrase_file, new_passphrase_command, remove):
    """Change (or set, or remove) the passphrase of a key file.

    The current passphrase comes from the global passphrase options (or the
    terminal). The new one from --new-passphrase-file,
    --new-passphrase-command, REKKORD_NEW_PASSPHRASE (empty: remove
    protection), or the terminal. The file is replaced atomically."""
    import os

    from ..errors import UsageError

    new = _new_passphrase_from(new_passphrase_file, new_passphrase_command)
    if remove and new:
        raise UsageError("--no-passphrase and a new passphrase exclude each other")
    k = s.load_key(file)
    if remove:
        new = None
    elif new:
        pass
    elif "REKKORD_NEW_PASSPHRASE" in os.environ:
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

"""Every command, given bad input, prints one clear line and exits non-zero —
never a traceback.

The commands are enumerated from the click group itself (recursively), so a
new command is walked through these cases without anyone editing this file:
its arguments are synthesised from their names and metavars.  A command that
takes an argument this file cannot fill fails here with a message saying
what to add to ``VALUES``; a case that truly cannot apply to a command goes
in ``NOT_APPLICABLE`` with the reason.

Cases (and the exit code each must give, see rekkord/errors.py):
  unknown-snapshot   a snapshot id that does not exist              6
  path-not-in-snap   SNAPSHOT:/a/path/that/is/not/there              6
  missing-repo       a repository URL where there is none            6
  wrong-role         a key whose role may not do this                5
  wrong-passphrase   a protected key file, a wrong passphrase        5
"""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest

from rekkord.cache import Cache
from rekkord.cli.main import cli
from rekkord.save import Saver

CASES = {"unknown-snapshot": 6, "path-not-in-snap": 6, "missing-repo": 6, "wrong-role": 5, "wrong-passphrase": 5}

NOT_APPLICABLE = {
    ("init",): {"*": "creates a repository and a master key: there is no snapshot, repository or key to be wrong"},
    ("setup",): {"*": "first-run helper that creates everything; its bad flags are tested in test_cli_setup.py"},
    ("key", "info"): {"*": "works offline on a key file of any role, and shows a protected key's public facts "
                           "without its passphrase (--verify with a wrong one: tests/test_cli_key.py)"},
    ("key", "passwd"): {"missing-repo": "works offline on a key file", "wrong-role": "any role may be protected"},
    ("key", "list"): {"wrong-role": "certificates are public (the storage holds them in clear): any key lists them"},
    ("monitor", "run"): {"*": "takes repositories and keys from its own config file; bad files: test_cli_monitor.py"},
    ("monitor", "check-config"): {"*": "takes repositories and keys from the file it checks: test_cli_monitor.py"},
    ("monitor", "passwd"): {"*": "works offline: prints a password hash for the monitor's config file"},
    ("version",): {"*": "describes rekkord itself: no repository, key or snapshot"},
    ("completion",): {"*": "prints a shell completion script: no repository, key or snapshot"},
    ("man",): {"*": "writes man pages from the command tree: no repository, key or snapshot"},
}

# The role that must be refused, per command (default: a write key, which
# can only save).
WRONG_ROLE = {("save",): "audit", ("key", "derive"): "full", ("key", "revoke"): "full", ("copy",): "audit"}

UNKNOWN = "0badc0de0badc0de"
MISSING_PATH = "/no/such/path/in/the/snapshot"

# Extra arguments that make a command meet a case it has no argument for.
EXTRA = {
    ("find",): {"unknown-snapshot": ["--channel", "no-such-channel"]},
    ("diff",): {"path-not-in-snap": ["--path", MISSING_PATH]},
}


def leaf_commands(group: click.Group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # lazily loaded commands included
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


COMMANDS = dict(leaf_commands(cli))


def is_snapshot_param(p: click.Parameter) -> bool:
    mv = (getattr(p, "metavar", None) or "").upper()
    return "SNAP" in mv or p.name in ("snapshot", "snapshot_ids", "spec", "snap1", "snap2")


class World:
    """A repository with one snapshot, keys of every role, a protected key.
    Shared by the module's tests: every case fails before changing anything."""

    def __init__(self, local_repo, tmp_path):
        self.r = local_repo
        self.tmp = tmp_path
        self.src = tmp_path / "src"
        self.src.mkdir()
        (self.src / "f").write_text("content")
        res = Saver(local_repo.repo("write"), Cache(None)).save("c", [str(self.src)])
        self.sid = res.snapshot_id
        self.protected = tmp_path / "protected.key"
        local_repo.master.save(str(self.protected), "the right passphrase")
        self.mnt = tmp_path / "mnt"
        self.mnt.mkdir()

    def value(self, path, p: click.Parameter, case: str):
        """The value for parameter ``p`` of command ``path`` in ``case`` (None: leave it out)."""
        name = p.name
        if is_snapshot_param(p):
            snap = UNKNOWN if case == "unknown-snapshot" else self.sid
            if "PATH" in (p.metavar or "").upper():
                sub = MISSING_PATH if case == "path-not-in-snap" else f"{self.src}/f"
                if path == ("restore",) and case != "path-not-in-snap":
                    sub = str(self.src)
                return f"{snap}:{sub}"
            return snap
        values = {
            "dest": str(self.tmp / "dest"),
            "mountpoint": str(self.mnt),
            "channel": "c",
            "paths": str(self.src),
            "pattern": "*",
            "file": str(self.protected),
            "kid": self.r.keys["read"].kid,
            "role": "write",
            "label": "new-key",
            "output": str(self.tmp / "new.key"),
            "from_repo": self.r.url,  # (copy: from the world's repository into itself)
            "from_key": self.r.key_files["admin"],
        }
        if name in values:
            return values[name]
        if p.required:
            pytest.fail(f"tests/test_cli_bad_input.py does not know how to fill parameter {name!r} of "
                        f"`rekkord {' '.join(path)}`: add it to World.value")
        return None

    def argv(self, path, cmd: click.Command, case: str) -> list[str]:
        args = list(path)
        for p in cmd.params:
            if isinstance(p, click.Argument):
                v = self.value(path, p, case)
                if v is not None:
                    args.append(v)
            elif p.required:
                v = self.value(path, p, case)
                args += [p.opts[0], v]
        args += EXTRA.get(path, {}).get(case, [])
        return args

    def env(self, path, case: str) -> dict:
        role = "admin"
        if case == "wrong-role":
            role = WRONG_ROLE.get(path, "write")
        e = {"REKKORD_REPOSITORY": self.r.url, "REKKORD_KEY_FILE": self.r.key_files[role],
             "REKKORD_CACHE_DIR": str(self.tmp / "cache")}
        if case == "missing-repo":
            e["REKKORD_REPOSITORY"] = str(self.tmp / "there-is-no-repository-here")
        if case == "wrong-passphrase":
            e["REKKORD_KEY_FILE"] = str(self.protected)
            e["REKKORD_PASSPHRASE"] = "a wrong passphrase"
        return e


def applies(path, cmd, case) -> bool:
    na = NOT_APPLICABLE.get(path, {})
    if "*" in na or case in na:
        return False
    if case in EXTRA.get(path, {}):
        return True
    if case == "unknown-snapshot":
        return any(is_snapshot_param(p) for p in cmd.params)
    if case == "path-not-in-snap":
        return any(is_snapshot_param(p) and "PATH" in (p.metavar or "").upper() for p in cmd.params)
    return True


PARAMS = [pytest.param(path, case, id=f"{'-'.join(path)}:{case}")
          for path, cmd in COMMANDS.items() for case in CASES if applies(path, cmd, case)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from types import SimpleNamespace

    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.storage.local import LocalStorage

    tmp = tmp_path_factory.mktemp("bad-input")
    url = str(tmp / "repo")
    master = Key.generate_master()
    Repository.init(LocalStorage(url, sync=False), master)
    repo = Repository.open(LocalStorage(url, sync=False), master)
    keys, files = {"admin": master}, {}
    for role in ("full", "read", "write", "audit"):
        keys[role] = master.derive(role, f"test-{role}")
        repo.publish_cert(keys[role].cert)
    for role, k in keys.items():
        files[role] = str(tmp / f"{role}.key")
        k.save(files[role])
    r = SimpleNamespace(url=url, master=master, keys=keys, key_files=files,
                        repo=lambda role="admin": Repository.open(LocalStorage(url, sync=False), keys[role]))
    return World(r, tmp)


@pytest.mark.parametrize("path,case", PARAMS)
def test_bad_input_gives_one_clear_line(world, path, case):
    w = world
    argv = w.argv(path, COMMANDS[path], case)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    env.update(w.env(path, case))
    try:
        p = subprocess.run([sys.executable, "-m", "rekkord", *argv], env=env, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=120)
    finally:
        if os.path.ismount(w.mnt):  # a mount that should never have happened
            subprocess.run(["fusermount3", "-u", "-z", str(w.mnt)])
    err = p.stderr.decode(errors="replace")
    what = f"rekkord {' '.join(argv)} ({case}) -> {p.returncode}: {err!r}"
    assert "Traceback" not in err, what
    assert p.returncode == CASES[case], what
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rekkord: error: "), what
    assert len(lines[0]) < 300, what
    assert p.stdout == b"", what


def test_every_command_is_walked():
    """Each command meets at least the repository and key cases, unless it
    is listed as not touching them (with a reason)."""
    walked = {path for path, _ in [(p.values[0], p.values[1]) for p in PARAMS]}
    for path in COMMANDS:
        na = NOT_APPLICABLE.get(path, {})
        assert path in walked or "*" in na, path
        for reason in na.values():
            assert len(reason) > 10

"""The rekkord group: global options before and after the command, --json
given globally, the config file's schema (a typo is an error with a
suggestion), and the log file (summary line with the exit code, directory
created 0700 or a clear error before any work, file 0600 whatever the umask)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from rekkord.cli.main import GLOBAL_OPTIONS, LATE_PREFIX, cli


@pytest.fixture
def invoke(monkeypatch):
    """The CLI in-process (fast): returns (exit code, output)."""
    for k in list(os.environ):
        if k.startswith("REKKORD_"):
            monkeypatch.delenv(k)

    def run(*args):
        r = CliRunner().invoke(cli, [str(a) for a in args], prog_name="rekkord")
        return r.exit_code, r.output

    return run


def leaves(group=cli, ctx=None, path=()):
    ctx = ctx or click.Context(cli)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, ctx, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_accepts_the_global_options_unless_it_has_its_own():
    for path, cmd in leaves():
        own = {o for p in cmd.params if not p.name.startswith(LATE_PREFIX) for o in p.opts + p.secondary_opts}
        copies = {p.name[len(LATE_PREFIX):] for p in cmd.params if p.name.startswith(LATE_PREFIX)}
        for name, decls, _ in GLOBAL_OPTIONS:
            if name == "json":
                continue  # a command's --json is its own option
            assert name in copies or set(decls) & own, (path, name)
        assert all(p.hidden for p in cmd.params if p.name.startswith(LATE_PREFIX))
    setup = dict(leaves())[("setup",)]
    assert "log_file" not in {p.name[len(LATE_PREFIX):] for p in setup.params if p.name.startswith(LATE_PREFIX)}


def test_global_options_after_the_command(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    w, r = local_repo.key_files["write"], local_repo.key_files["read"]
    p = run_cli("save", "c", src, "-r", local_repo.url, "-k", w, "-q", "-j", "2", env={}, check=0)
    assert p.stdout == b""  # -q after the command
    snaps = json.loads(run_cli("snapshots", "--json", "-k", r, "--repository", local_repo.url, check=0).stdout)
    assert [s["channel"] for s in snaps] == ["c"]
    # In a sub-group's command, and a later value wins over an earlier one.
    listed = run_cli("-k", "/nonexistent", "key", "list", "-r", local_repo.url, "-k", local_repo.key_files["admin"],
                     "--json", check=0)
    assert len(json.loads(listed.stdout)) == 4
    conf = tmp_path / "c.toml"
    conf.write_text(f'repository = "{local_repo.url}"\nkey_file = "{r}"\n')
    assert json.loads(run_cli("snapshots", "-c", conf, "--json", check=0).stdout)[0]["channel"] == "c"
    # --json before the command, for a command that has JSON output...
    assert json.loads(run_cli("-c", conf, "--json", "snapshots", check=0).stdout)[0]["channel"] == "c"


def test_global_json_for_a_command_without_json_output(invoke):
    code, out = invoke("--json", "completion", "bash")
    assert code == 2 and "rekkord completion has no --json output" in out


# ---- the config file ------------------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ('repositroy = "/r"\n', "unknown key 'repositroy' at the top level (did you mean 'repository'?)"),
    ('paths = ["/etc"]\n', "unknown key 'paths' at the top level (it belongs in a [channels.NAME] table)"),
    ('[s3]\nendpoint = "http://x"\n', "unknown key 'endpoint' in [s3] (did you mean 'endpoint_url'?)"),
    ('[sftp]\nfingerprnt = "SHA256:x"\n', "unknown key 'fingerprnt' in [sftp] (did you mean 'fingerprint'?)"),
    ('[storage]\nconections = 4\n', "unknown key 'conections' in [storage] (did you mean 'connections'?)"),
    ('[channels.etc]\npaths = ["/etc"]\nexlude = ["*~"]\n',
     "unknown key 'exlude' in [channels.etc] (did you mean 'exclude'?)"),
    ('[chanels.etc]\npaths = ["/etc"]\n', "unknown key 'chanels' at the top level (did you mean 'channels'?)"),
    ('[channels]\netc = 1\n', "[channels] must hold [channels.NAME] tables"),
    ('[s3.x]\na = 1\n', "unknown key 'x' in [s3]"),
    ('repository = 1\n[s3\n', "cannot read config file"),
])
def test_a_typo_in_the_config_file_is_an_error_with_a_suggestion(invoke, tmp_path, text, message):
    conf = tmp_path / "rekkord.toml"
    conf.write_text(text)
    code, out = invoke("-c", conf, "snapshots")
    assert code == 2, out
    assert out == f"rekkord: error: {conf}: {message}\n" or (message in out and out.count("\n") == 1), out


def test_every_documented_config_key_is_accepted(invoke, tmp_path):
    from rekkord.cli.config import SECTIONS, TOP_KEYS

    lines = [f'{k} = ""' for k in sorted(TOP_KEYS) if not k.startswith("limit_")]
    for sec, spec in SECTIONS.items():
        if isinstance(spec, tuple):
            lines += [f"[{sec}.x]"] + [f'{k} = "v"' for k in sorted(spec[1])]
        else:
            lines += [f"[{sec}]"] + [f'{k} = "v"' for k in sorted(spec)]
    conf = tmp_path / "all.toml"
    conf.write_text("\n".join(lines) + "\n")
    code, out = invoke("-c", conf, "version")
    assert code == 0, out


# ---- the log file -----------------------------------------------------------------------------


def run_with_umask(args, umask, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "rekkord", *map(str, args)], env=e, capture_output=True,
                          preexec_fn=lambda: os.umask(umask), timeout=120)


def test_log_file_dir_created_0700_file_0600_and_a_summary_line(local_repo, tmp_path):
    log = tmp_path / "logs" / "sub" / "rekkord.log"
    base = ["-r", local_repo.url, "-k", local_repo.key_files["read"], "--log-file", log]
    p = run_with_umask([*base, "snapshots"], 0)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(log.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    p = run_with_umask(["snapshots", "-r", local_repo.url, "-k", local_repo.key_files["read"], "--log-file", log,
                        ], 0o022)
    p = run_with_umask([*base, "ls", "nosuchsnapshot"], 0o022)
    assert p.returncode == 6
    lines = log.read_text().splitlines()
    assert re.search(r"INFO rekkord exit 0 \(ok\) after \d+\.\ds: -r .* snapshots$", lines[1])
    assert lines[-2].endswith("ERROR no snapshot or channel named 'nosuchsnapshot'")
    assert re.search(r"ERROR rekkord exit 6 \(not_found\) after \d+\.\ds: .* ls nosuchsnapshot$", lines[-1])
    assert sum("rekkord exit" in line for line in lines) == 3
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_an_unusable_log_file_stops_the_command_before_any_work(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("")
    key = tmp_path / "master.key"
    for log in (blocker / "sub" / "x.log", tmp_path):
        p = run_cli("-r", tmp_path / "repo", "-k", key, "init", "--log-file", log)
        err = p.stderr.decode()
        assert p.returncode == 2 and err.count("\n") == 1 and "rekkord: error: cannot " in err, err
        assert not key.exists() and not (tmp_path / "repo").exists()  # nothing was done


def test_log_file_from_the_config_file(local_repo, run_cli, tmp_path):
    log = tmp_path / "var" / "cfg.log"
    conf = tmp_path / "c.toml"
    conf.write_text(f'repository = "{local_repo.url}"\nkey_file = "{local_repo.key_files["read"]}"\n'
                    f'log_file = "{log}"\n')
    run_cli("-c", conf, "channels", check=0)
    assert log.read_text().splitlines()[-1].split(" INFO ")[1].startswith("rekkord exit 0 (ok)")


# ---- bandwidth limits ---------------------------------------------------------------------------


def test_limit_upload_and_download_throttle_through_the_storage(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(400_000))
    log = tmp_path / "limits.log"
    conf = tmp_path / "c.toml"
    conf.write_text(f'repository = "{local_repo.url}"\nlimit_upload = 256\n')
    run_cli("-c", conf, "-k", local_repo.key_files["write"], "--log-file", log, "save", "c", src, check=0)
    line = next(x for x in log.read_text().splitlines() if "upload limited" in x)
    m = re.search(r"upload limited to 256 KiB/s: (\d+) bytes, (\d+) waits", line)
    assert m and int(m.group(1)) > 400_000 and int(m.group(2)) >= 1, line
    run_cli("-r", local_repo.url, "-k", local_repo.key_files["read"], "restore", "c", tmp_path / "out",
            "--limit-download", "1024", "--log-file", log, check=0)
    assert re.search(r"download limited to 1024 KiB/s: \d+ bytes", log.read_text())
    p = run_cli("-r", local_repo.url, "--limit-upload", "0", "snapshots")
    assert p.returncode == 2 and b"at least 1 KiB/s" in p.stderr
    conf.write_text(f'repository = "{local_repo.url}"\nlimit_download = "fast"\n')
    p = run_cli("-c", conf, "-k", local_repo.key_files["read"], "snapshots")
    assert p.returncode == 2 and b"limit_download must be a whole number of KiB/s" in p.stderr

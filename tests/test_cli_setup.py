"""rekkord setup: scripted with flags, and interactive through its prompts;
what it writes is then used by the real CLI."""

import json
import os
import stat
import tomllib

import pytest


def test_scripted_setup_writes_a_working_configuration(run_cli, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (src / "b.tmp").write_text("b")
    conf, master, write = tmp_path / "etc" / "rekkord.toml", tmp_path / "offline" / "master.key", tmp_path / "w.key"
    p = run_cli("setup", "--yes", "--repository", tmp_path / "repo", "--config-file", conf, "--master-key", master,
                "--write-key", write, "--channel", "web1", "--path", src, "--exclude", "*.tmp", "--time", "03:15",
                "--log-file", tmp_path / "rekkord.log", "--units-dir", tmp_path / "units", env={}, check=0)
    out = p.stdout.decode()
    assert "created repository" in out and "move it offline" in out
    cron = next(line.strip() for line in out.splitlines() if line.strip().startswith("15 3 * * *"))
    assert f"-c {conf} -q --log-file {tmp_path / 'rekkord.log'} save --all" in cron
    assert "OnCalendar=*-*-* 03:15:00" in out and "ExecStart=" in out
    timer = (tmp_path / "units" / "rekkord.timer").read_text()
    service = (tmp_path / "units" / "rekkord.service").read_text()
    assert "Persistent=true" in timer and "WantedBy=timers.target" in timer
    assert "Type=oneshot" in service and "SuccessExitStatus=3" in service
    cfg = tomllib.loads(conf.read_text())
    assert cfg["repository"] == str(tmp_path / "repo") and cfg["key_file"] == str(write)
    assert cfg["channels"]["web1"]["paths"] == [str(src)] and cfg["channels"]["web1"]["exclude"] == ["*.tmp"]
    for f in (master, write, conf):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    info = json.loads(run_cli("key", "info", write, "--json", env={}, check=0).stdout)
    assert info["role"] == "write"
    # The scheduled command works as written, with only the write key...
    run_cli("-c", conf, "-q", "save", "--all", env={}, check=0)
    p = run_cli("-c", conf, "snapshots", env={})
    assert p.returncode == 5  # ...which cannot list what it saved
    # The master key reads it back; the excluded file is not there.
    e = {"REKKORD_REPOSITORY": str(tmp_path / "repo"), "REKKORD_KEY_FILE": str(master)}
    assert run_cli("cat", f"web1:{src}/a.txt", env=e, check=0).stdout == b"a"
    assert run_cli("cat", f"web1:{src}/b.tmp", env=e).returncode == 6


def test_interactive_setup_asks_and_protects_the_master_key(run_cli, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "x").write_text("x")
    answers = "\n".join([
        str(tmp_path / "repo"),  # repository
        str(tmp_path / "conf" / "rekkord.toml"),  # config file
        "",  # master key: default, next to the config
        "",  # write key: default
        "mail",  # channel
        f"{src}, {tmp_path / 'not-yet'}",  # paths
        "*.cache",  # excludes
        "01:05",  # time
        "",  # log file: default
        "correct horse", "correct horse",  # master key passphrase, twice
    ]) + "\n"
    p = run_cli("setup", env={}, input=answers.encode(), check=0)
    out = p.stdout.decode()
    assert "5 1 * * *" in out and "(passphrase-protected)" in out
    assert f"warning: {tmp_path / 'not-yet'} does not exist" in p.stderr.decode()
    conf = tmp_path / "conf" / "rekkord.toml"
    cfg = tomllib.loads(conf.read_text())
    assert cfg["channels"]["mail"]["paths"] == [str(src), str(tmp_path / "not-yet")]
    assert cfg["key_file"] == str(tmp_path / "conf" / "write.key")
    master = tmp_path / "conf" / "master.key"
    e = {"REKKORD_REPOSITORY": str(tmp_path / "repo"), "REKKORD_KEY_FILE": str(master)}
    p = run_cli("key", "list", env={**e, "REKKORD_PASSPHRASE": "wrong"})
    assert p.returncode == 5
    keys = json.loads(run_cli("key", "list", "--json", env={**e, "REKKORD_PASSPHRASE": "correct horse"},
                              check=0).stdout)
    assert [k["role"] for k in keys] == ["write"]


def test_setup_refuses_to_overwrite(run_cli, tmp_path):
    conf = tmp_path / "rekkord.toml"
    conf.write_text("# mine\n")
    p = run_cli("setup", "--yes", "--repository", tmp_path / "repo", "--config-file", conf, "--path", "/etc",
                env={})
    assert p.returncode == 9 and p.stderr.decode().startswith("rekkord: error: config file")
    assert conf.read_text() == "# mine\n"
    assert not (tmp_path / "repo").exists() and not (tmp_path / "master.key").exists()
    (tmp_path / "k").write_text("")
    p = run_cli("setup", "--yes", "--repository", tmp_path / "repo", "--config-file", tmp_path / "new.toml",
                "--master-key", tmp_path / "k", env={})
    assert p.returncode == 9 and b"key file" in p.stderr


@pytest.mark.parametrize("args,msg", [
    ((), "--yes needs a value for: repository"),
    (("--repository", "/tmp/x", "--time", "25:00"), "invalid time"),
    (("--repository", "/tmp/x", "--channel", "a/b"), "invalid channel name"),
])
def test_setup_bad_flags(run_cli, tmp_path, args, msg):
    p = run_cli("setup", "--yes", "--config-file", tmp_path / "c.toml", *args, env={})
    assert p.returncode == 2 and msg in p.stderr.decode() and len(p.stderr.splitlines()) == 1


def test_setup_into_an_existing_repository_fails_cleanly(run_cli, local_repo, tmp_path):
    p = run_cli("setup", "--yes", "--repository", local_repo.url, "--config-file", tmp_path / "n" / "c.toml",
                env={})
    assert p.returncode == 9 and b"already exists" in p.stderr
    assert not (tmp_path / "n" / "master.key").exists()

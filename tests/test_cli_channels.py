"""rekkord channels [--stale] through the real CLI, with an audit key."""

import json
import time

import pytest

from rekkord.cache import Cache
from rekkord.cli.channels import human_age, parse_duration
from rekkord.errors import UsageError
from rekkord.save import Saver


def save_at(local_repo, channel, path, age_seconds):
    t = time.time_ns() - int(age_seconds * 1e9)
    return Saver(local_repo.repo("write"), Cache(None)).save(channel, [str(path)], time_ns=t).snapshot_id


@pytest.fixture
def env(local_repo):
    return {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["audit"]}


@pytest.fixture
def repo_with_channels(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    ids = {
        "web-old": save_at(local_repo, "web", src, 3 * 86400),
        "web": save_at(local_repo, "web", src, 2),
        "db": save_at(local_repo, "db", src, 2),
    }
    return ids


def test_table_and_json(run_cli, env, repo_with_channels):
    ids = repo_with_channels
    p = run_cli("channels", env=env, check=0)
    out = p.stdout.decode()
    assert out.splitlines()[0].split() == ["CHANNEL", "LATEST", "TIME", "AGE", "HOST", "SNAPSHOTS"]
    web = next(line for line in out.splitlines() if line.startswith("web "))
    assert ids["web"][:8] in web and web.split()[-1] == "2"
    rows = json.loads(run_cli("channels", "--json", env=env, check=0).stdout)
    by = {r["channel"]: r for r in rows}
    assert by["web"]["latest"] == ids["web"] and by["web"]["snapshots"] == 2
    assert by["db"]["latest"] == ids["db"] and 1 <= by["db"]["age_seconds"] < 3600
    assert "stale" not in by["web"]


def test_stale_one_second_flags_a_channel_saved_two_seconds_ago(run_cli, env, repo_with_channels):
    p = run_cli("channels", "--stale", "1s", env=env)
    assert p.returncode == 10
    err = p.stderr.decode()
    assert "rekkord: stale: channel web latest snapshot" in err and "rekkord: stale: channel db" in err
    assert "Traceback" not in err
    rows = json.loads(run_cli("channels", "--stale", "1s", "--json", env=env, check=10).stdout)
    assert all(r["stale"] for r in rows)


def test_stale_one_hour_does_not(run_cli, env, repo_with_channels):
    p = run_cli("channels", "--stale", "1h", env=env, check=0)
    assert b"STALE" not in p.stdout and b"all 2 channels have a snapshot newer than 1h" in p.stderr
    # Under cron (-q): silence when all is well.
    p = run_cli("-q", "channels", "--stale", "1h", env=env, check=0)
    assert p.stdout == b"" and p.stderr == b""


def test_only_the_old_channel_is_stale(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    save_at(local_repo, "fresh", src, 60)
    save_at(local_repo, "old", src, 2 * 86400)
    p = run_cli("channels", "--stale", "1d", env=env)
    assert p.returncode == 10
    assert p.stderr.decode().count("rekkord: stale:") == 1 and "channel old" in p.stderr.decode()
    line = next(x for x in p.stdout.decode().splitlines() if x.startswith("old "))
    assert "STALE" in line and "\x1b[" not in line  # no colour codes off a terminal


def test_expected_channel_that_never_saved_is_stale(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    save_at(local_repo, "web", src, 1)
    p = run_cli("channels", "--stale", "1d", "--expect", "web", "--expect", "mail", env=env)
    assert p.returncode == 10 and "channel mail has no snapshot" in p.stderr.decode()
    run_cli("channels", "--stale", "1d", "--expect", "web", env=env, check=0)


def test_empty_repository_is_stale_for_monitoring(run_cli, env):
    p = run_cli("channels", "--stale", "1d", env=env)
    assert p.returncode == 10 and b"no snapshots at all" in p.stderr
    assert json.loads(run_cli("channels", "--json", env=env, check=0).stdout) == []


def test_write_key_cannot_list_and_bad_duration(run_cli, local_repo, env):
    p = run_cli("channels", env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]})
    assert p.returncode == 5 and p.stderr.decode().count("\n") == 1
    p = run_cli("channels", "--stale", "soon", env=env)
    assert p.returncode == 2 and p.stderr.decode().startswith("rekkord: error: invalid duration 'soon'")


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900), ("36h", 36 * 3600),
                                          ("2d", 172800), ("1w", 604800), ("1d12h", 129600), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1y", "1h x", "-1h", "1h1"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_human_age():
    assert human_age(5) == "5s"
    assert human_age(3 * 86400 + 5 * 3600 + 7) == "3d 5h"
    assert human_age(3600 + 120) == "1h 2m"

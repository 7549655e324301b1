"""rekkord reports: failure reports listed with an audit key (no file
names), their sealed details with a key that holds the data key."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def saved(local_repo, run_cli, tmp_path):
    """One failed save (pre hook) and one with a warning naming a file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("fine")
    secret = src / "Patient-Quimby-record.txt"
    secret.write_text("x")
    os.chmod(secret, 0)
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    run_cli("save", "--host", "web01", "--pre", "exit 9", "db", src, env=env, check=1)
    # Without root's CAP_DAC_OVERRIDE (a new user namespace), the file is unreadable.
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env, REKKORD_CACHE_DIR=str(tmp_path / "c"))
    cmd = [sys.executable, "-m", "rekkord", "save", "--host", "web02", "files", str(src)]
    if os.geteuid() == 0:
        cmd = ["unshare", "-U"] + cmd
    p = subprocess.run(cmd, env=e, capture_output=True, timeout=120)
    assert p.returncode == 3, p.stderr
    return secret


def run(run_cli, local_repo, role, *args, check=0):
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files[role]}
    return run_cli("reports", *args, env=env, check=check)


def test_an_audit_key_lists_reports_without_file_names(run_cli, local_repo, saved):
    p = run(run_cli, local_repo, "audit")
    out = p.stdout.decode()
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "CHANNEL", "HOST", "STATUS", "EXIT", "ERROR", "FILES", "WARNINGS",
                                "BYTES"]
    assert "db" in lines[2] and "web01" in lines[2] and "failure" in lines[2] and "HookFailed" in lines[2]
    assert "files" in lines[3] and "web02" in lines[3] and "warning" in lines[3] and "Warnings" in lines[3]
    assert saved.name not in out + p.stderr.decode() and "pre hook" not in out
    d = json.loads(run(run_cli, local_repo, "audit", "--json").stdout)
    assert [(r["channel"], r["status"], r["exit_code"], r["warnings"], r["trusted"]) for r in d] == [
        ("db", "failure", 1, 0, True), ("files", "warning", 3, 1, True)]
    assert saved.name not in json.dumps(d)
    assert [r["channel"] for r in json.loads(run(run_cli, local_repo, "audit", "--json", "--channel", "db").stdout)] \
        == ["db"]
    assert [r["host"] for r in json.loads(run(run_cli, local_repo, "audit", "--json", "--host", "web02").stdout)] \
        == ["web02"]
    assert json.loads(run(run_cli, local_repo, "audit", "--json", "--since", "1h").stdout) == d
    p = run(run_cli, local_repo, "audit", "--details", check=5)
    assert p.stderr.decode().strip() == ("rekkord: error: an audit key cannot read the details of failure reports "
                                         "(--details)")
    p = run(run_cli, local_repo, "write", check=5)


def test_details_with_a_read_key_name_the_files(run_cli, local_repo, saved):
    out = run(run_cli, local_repo, "read", "--details").stdout.decode()
    assert "  error: pre hook for channel db failed with exit code 9" in out
    assert f"  warning: {saved}: cannot open: Permission denied" in out
    d = json.loads(run(run_cli, local_repo, "read", "--details", "--json", "--latest").stdout)
    assert d[1]["details"] == {"error": None, "warnings": [f"{saved}: cannot open: Permission denied"],
                               "omitted": 0}


def test_no_reports_and_bad_options(run_cli, local_repo):
    p = run(run_cli, local_repo, "audit")
    assert p.stdout == b"" and p.stderr == b"no failure reports\n"
    assert json.loads(run(run_cli, local_repo, "audit", "--json").stdout) == []
    p = run(run_cli, local_repo, "audit", "--since", "yesterday", check=2)
    assert p.stderr.decode().startswith("rekkord: error: invalid duration 'yesterday'")

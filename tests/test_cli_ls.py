"""ls --json and find --json follow restic's conventions: restic's type
names, a mode as a number (the POSIX st_mode), permissions as ls prints
them, device numbers, RFC 3339 times with nanoseconds, and a hard link's
target as the absolute path of its first link."""

from __future__ import annotations

import json
import os
import stat

import pytest


@pytest.fixture
def listed(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "f").write_text("x")
    os.chmod(src / "f", 0o4750)
    os.link(src / "f", src / "d" / "f-link")
    os.symlink("../f", src / "d" / "sym")
    os.mkfifo(src / "fifo")
    if os.geteuid() == 0:
        os.mknod(src / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(src / "loop", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    env = {"REKKORD_REPOSITORY": local_repo.url}
    run_cli("-k", local_repo.key_files["write"], "save", "c", src, env=env, check=0)
    out = json.loads(run_cli("-k", local_repo.key_files["read"], "ls", "-R", "--json", f"c:{src}", env=env,
                             check=0).stdout)
    local_repo.src, local_repo.env = src, env
    return local_repo, {e["path"]: e for e in out}


def test_ls_json_uses_restics_conventions(listed):
    repo, by = listed
    src = repo.src
    for path, e in by.items():
        st = os.lstat(path)
        assert e["mode"] == st.st_mode, path  # a number, type bits included
        assert e["permissions"] == stat.filemode(st.st_mode), path
        assert e["mtime_ns"] == st.st_mtime_ns and e["uid"] == st.st_uid and e["name"] == os.path.basename(path)
        assert e["mtime"].endswith(f".{st.st_mtime_ns % 10**9:09d}Z"), e["mtime"]
    first, link = by[f"{src}/d/f-link"], by[f"{src}/f"]  # d/ comes first in the walk
    assert first["type"] == link["type"] == "file" and link["permissions"] == "-rwsr-x---"
    assert link["hardlink"] is True and link["target"] == f"{src}/d/f-link"  # absolute: the first link's path
    assert "hardlink" not in first
    assert by[f"{src}/d/sym"]["type"] == "symlink" and by[f"{src}/d/sym"]["target"] == "../f"  # as stored
    assert by[f"{src}/d"]["type"] == "dir" and by[f"{src}/fifo"]["type"] == "fifo"
    if os.geteuid() == 0:
        null, loop = by[f"{src}/null"], by[f"{src}/loop"]
        assert (null["type"], null["device"], null["device_major"], null["device_minor"]) == \
            ("chardev", os.makedev(1, 3), 1, 3)
        assert loop["type"] == "dev" and loop["device"] == os.makedev(7, 0)


def test_find_json_has_the_same_fields(listed, run_cli):
    repo, by = listed
    rows = json.loads(run_cli("-k", repo.key_files["read"], "find", f"{repo.src}/f", "--json", env=repo.env,
                              check=0).stdout)
    [row] = rows
    entry = by[f"{repo.src}/f"]
    assert {k: row[k] for k in entry} == entry and row["channel"] == "c" and row["snapshot_time"].endswith("Z")

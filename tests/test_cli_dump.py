"""rekkord dump through the CLI: tar to a pipe, zip, --target, restic's two
argument form, one file, a terminal refused, the keys that may."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import tarfile
import zipfile

import pytest


@pytest.fixture
def world(local_repo, run_cli, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    (src / "b.bin").write_bytes(os.urandom(300_000))
    os.symlink("sub/a.txt", src / "to-a")
    env = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    run_cli("save", "c", src, env=env, check=0)
    local_repo.src = src
    local_repo.dump = lambda *a, role="read", **kw: run_cli("-r", local_repo.url, "-k", local_repo.key_files[role],
                                                            "dump", *a, **kw)
    return local_repo


def test_tar_zip_target_and_the_forms_of_the_path(world, tmp_path):
    src = world.src
    p = world.dump(f"c:{src}", check=0)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        assert sorted(t.getnames()) == ["b.bin", "sub", "sub/a.txt", "to-a"]
        assert t.extractfile("b.bin").read() == (src / "b.bin").read_bytes()
        assert t.getmember("to-a").linkname == "sub/a.txt"
    rel = str(src).lstrip("/")
    p = world.dump("c", str(src / "sub"), check=0)  # restic's form: full paths
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as t:
        assert t.getnames() == [f"{rel}/sub", f"{rel}/sub/a.txt"]
    world.dump(f"c:{src}", "--archive", "zip", "--target", tmp_path / "out.zip", check=0)
    with zipfile.ZipFile(tmp_path / "out.zip") as z:
        assert z.read("sub/a.txt") == b"alpha\n" and "sub/" in z.namelist()
    assert world.dump(f"c:{src}/sub/a.txt", check=0).stdout == b"alpha\n"  # one file: its content
    whole = world.dump("c", check=0).stdout
    with tarfile.open(fileobj=io.BytesIO(whole)) as t:
        assert f"{rel}/sub/a.txt" in t.getnames()


def test_a_terminal_is_refused_and_keys_that_cannot_read(world):
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    try:
        p = subprocess.run([sys.executable, "-m", "rekkord", "-r", world.url, "-k", world.key_files["read"],
                            "dump", "c"], stdout=slave, stderr=subprocess.PIPE, env=env, timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode == 2 and b"standard output is a terminal" in p.stderr
    for role in ("audit", "write"):
        p = world.dump("c", role=role)
        assert p.returncode == 5 and p.stdout == b"" and p.stderr.startswith(b"rekkord: error: ")
    p = world.dump("c:/no/such/dir")
    assert p.returncode == 6 and p.stdout == b""
    p = world.dump(f"c:{world.src}", str(world.src))
    assert p.returncode == 2 and b"give the path once" in p.stderr

"""rekkord restore options through the real CLI: a single file, --include /
--exclude, --delete, --verify, progress on a terminal and silence elsewhere."""

import json
import os
import pty
import shutil
import subprocess
import sys

import pytest
from treeutil import assert_same_tree


@pytest.fixture
def env(local_repo):
    return {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["read"]}


@pytest.fixture
def saved(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "src"
    for d in ("etc/nginx/sites", "etc/cache/sub", "home/ann/cache", "home/ann/docs", "empty"):
        (src / d).mkdir(parents=True)
    files = {
        "etc/nginx/nginx.conf": "worker 1;\n", "etc/nginx/sites/a.conf": "server a;\n",
        "etc/nginx/mime.types": "types;\n", "etc/cache/sub/x.bin": "cached\n", "etc/hosts": "hosts\n",
        "home/ann/cache/y": "tmp\n", "home/ann/docs/thesis.tex": "\\begin\n", "home/ann/docs/notes.conf": "n\n",
    }
    for rel, text in files.items():
        (src / rel).write_text(text)
    p = run_cli("save", "c", src, "--json", env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]}, check=0)
    return src, json.loads(p.stdout)["id"]


def restored(root) -> list[str]:
    out = []
    for dp, ds, fs in os.walk(root):
        for n in ds + fs:
            out.append(os.path.relpath(os.path.join(dp, n), root))
    return sorted(out)


def test_single_file_restores_to_dest_name(run_cli, env, saved, tmp_path):
    src, sid = saved
    run_cli("restore", f"{sid}:{src}/etc/hosts", tmp_path / "out", env=env, check=0)
    assert restored(tmp_path / "out") == ["hosts"]
    assert (tmp_path / "out" / "hosts").read_text() == "hosts\n"


def test_exclude_by_name_drops_the_directory_and_its_content(run_cli, env, saved, tmp_path):
    src, sid = saved
    run_cli("restore", f"{sid}:{src}", tmp_path / "out", "--exclude", "cache", env=env, check=0)
    got = restored(tmp_path / "out")
    assert not any("cache" in p for p in got), got
    assert "etc/nginx/nginx.conf" in got and "home/ann/docs/thesis.tex" in got and "empty" in got


def test_exclude_by_path_with_globs(run_cli, env, saved, tmp_path):
    src, sid = saved
    run_cli("restore", f"{sid}:{src}", tmp_path / "out", "--exclude", f"{src}/home/*/cache",
            "--exclude", "/**/sites", env=env, check=0)
    got = restored(tmp_path / "out")
    assert "home/ann/cache" not in got and "home/ann/cache/y" not in got
    assert not any("sites" in p for p in got)
    assert "etc/cache/sub/x.bin" in got


def test_include_restores_only_matches_and_the_directories_leading_to_them(run_cli, env, saved, tmp_path):
    src, sid = saved
    run_cli("restore", f"{sid}:{src}", tmp_path / "out", "--include", "*.conf", env=env, check=0)
    assert restored(tmp_path / "out") == [
        "etc", "etc/nginx", "etc/nginx/nginx.conf", "etc/nginx/sites", "etc/nginx/sites/a.conf",
        "home", "home/ann", "home/ann/docs", "home/ann/docs/notes.conf"]
    # A directory pattern includes everything under it; excludes still win.
    run_cli("restore", f"{sid}:{src}", tmp_path / "o2", "--include", "nginx", "--exclude", "*.types",
            env=env, check=0)
    assert restored(tmp_path / "o2") == ["etc", "etc/nginx", "etc/nginx/nginx.conf", "etc/nginx/sites",
                                         "etc/nginx/sites/a.conf"]
    # Directories created for included files keep their saved metadata.
    assert os.stat(tmp_path / "o2" / "etc" / "nginx").st_mtime_ns == os.stat(src / "etc" / "nginx").st_mtime_ns


def test_delete_makes_dest_match(run_cli, env, saved, tmp_path):
    src, sid = saved
    out = tmp_path / "out"
    run_cli("restore", f"{sid}:{src}", out, env=env, check=0)
    # Drift: extra files and dirs, a changed file, type conflicts both ways.
    (out / "extra.txt").write_text("x")
    (out / "etc" / "extra-dir" / "deep").mkdir(parents=True)
    (out / "etc" / "extra-dir" / "deep" / "f").write_text("f")
    (out / "etc" / "hosts").write_text("changed\n")
    shutil.rmtree(out / "home" / "ann" / "cache")
    (out / "home" / "ann" / "cache").write_text("a file where a directory was")
    (out / "etc" / "nginx" / "mime.types").unlink()
    (out / "etc" / "nginx" / "mime.types").mkdir()
    (out / "etc" / "nginx" / "mime.types" / "inner").write_text("i")
    os.symlink("/", out / "empty" / "escape")
    p = run_cli("restore", f"{sid}:{src}", out, "--delete", "--dry-run", "--json", env=env, check=0)
    assert json.loads(p.stdout)["deleted"] >= 4 and (out / "extra.txt").exists()  # dry run: nothing removed
    p = run_cli("restore", f"{sid}:{src}", out, "--delete", env=env, check=0)
    assert b"deleted" in p.stdout
    assert_same_tree(src, out)
    assert os.path.islink("/") is False and os.path.isdir("/etc")  # the symlink was removed, not followed


def test_delete_keeps_what_patterns_leave_out(run_cli, env, saved, tmp_path):
    src, sid = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "local.log").write_text("keep me")
    (out / "stale.conf").write_text("delete me")
    run_cli("restore", f"{sid}:{src}/etc/nginx", out, "--delete", "--exclude", "*.log", env=env, check=0)
    assert (out / "local.log").exists() and not (out / "stale.conf").exists()
    assert (out / "nginx.conf").read_text() == "worker 1;\n"


def test_delete_on_a_whole_snapshot_cleans_only_the_saved_paths(run_cli, env, saved, tmp_path):
    src, sid = saved
    out = tmp_path / "out"
    run_cli("restore", sid, out, env=env, check=0)
    beside = out / str(src.parent).lstrip("/") / "beside-the-saved-path"
    beside.write_text("not in any saved path: untouched")
    inside = out / str(src).lstrip("/") / "inside"
    inside.write_text("in a saved path: removed")
    run_cli("restore", sid, out, "--delete", env=env, check=0)
    assert beside.exists() and not inside.exists()


def test_verify_reports_verified_files(run_cli, env, saved, tmp_path):
    src, sid = saved
    p = run_cli("restore", f"{sid}:{src}", tmp_path / "out", "--verify", "--json", env=env, check=0)
    d = json.loads(p.stdout)
    assert d["verified"] == 8 and d["damaged"] == 0


@pytest.mark.parametrize("flag", [[], ["--page-cache"]])
def test_large_files_verify_written_past_the_page_cache_or_through_it(run_cli, local_repo, env, tmp_path, flag):
    src = tmp_path / "big"
    src.mkdir()
    (src / "db.img").write_bytes(os.urandom(1_500_001))
    (src / "log").write_bytes(os.urandom(300_000))
    p = run_cli("save", "c", src, "--json", env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]}, check=0)
    sid = json.loads(p.stdout)["id"]
    p = run_cli("restore", f"{sid}:{src}", tmp_path / "out", "--verify", "--json", *flag, env=env, check=0)
    assert json.loads(p.stdout)["verified"] == 2
    assert_same_tree(src, tmp_path / "out")


def test_verify_catches_a_write_that_went_wrong(local_repo, saved, tmp_path, monkeypatch):
    """Fault injection in-process: the data written differs from the
    snapshot's; --verify reads it back and reports the file as damaged."""
    from click.testing import CliRunner

    import rekkord.restore as restore_mod
    from rekkord.cli.main import cli

    src, sid = saved
    real = restore_mod._write_sparse

    def corrupting(fd, data, pos):
        real(fd, bytes(data[:-1]) + bytes([data[-1] ^ 1]) if data else data, pos)

    monkeypatch.setattr(restore_mod, "_write_sparse", corrupting)
    r = CliRunner().invoke(cli, ["-r", local_repo.url, "-k", local_repo.key_files["read"], "--no-cache",
                                 "restore", f"{sid}:{src}/etc/hosts", str(tmp_path / "out"), "--verify"])
    assert r.exit_code == 4, r.output
    assert "verification failed" in r.output


def test_progress_on_a_terminal_and_nothing_elsewhere(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "big"
    src.mkdir()
    for i in range(30):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    wenv = {**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]}
    run_cli("save", "c", src, env=wenv, check=0)
    # Not a terminal: stderr stays empty.
    p = run_cli("restore", "c", tmp_path / "o1", env=env, check=0)
    assert p.stderr == b""
    # A terminal: a live progress display with bytes done out of the total
    # (known from the snapshot record), a rate column and an ETA.
    master, slave = pty.openpty()
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env, REKKORD_CACHE_DIR=str(tmp_path / "cc"), TERM="xterm", COLUMNS="160")
    proc = subprocess.Popen([sys.executable, "-m", "rekkord", "restore", "c", str(tmp_path / "o2")], env=e,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:
            break
        if not b:
            break
        chunks.append(b)
    out, _ = proc.communicate()
    os.close(master)
    tty = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0
    assert "restoring" in tty and "ETA" in tty and "/30.0 MiB" in tty and "files" in tty
    assert b"restored 30 files" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_owner_restored_as_root_unless_no_owner(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "theirs").write_text("x")
    os.chown(src / "theirs", 1234, 5678)
    run_cli("save", "c", src, env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]}, check=0)
    run_cli("restore", f"c:{src}", tmp_path / "o1", env=env, check=0)
    st = os.stat(tmp_path / "o1" / "theirs")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    run_cli("restore", f"c:{src}", tmp_path / "o2", "--no-owner", env=env, check=0)
    st = os.stat(tmp_path / "o2" / "theirs")
    assert (st.st_uid, st.st_gid) == (0, 0)


def tmp_leftovers(root) -> list[str]:
    import re

    rx = re.compile(r"\.rekkord-tmp-[0-9a-f]{12}-[0-9]+\Z")
    return [os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if rx.match(f)]


@pytest.mark.parametrize("dest", ["fresh", "dirs-exist"])
def test_a_killed_restore_resumes_where_it_stopped(run_cli, local_repo, env, tmp_path, dest):
    """kill -9 a real `rekkord restore` half-way (downloads throttled so
    that it is mid-way for sure), run the same command again: the files the
    first run finished are skipped without a download, and DEST ends byte
    for byte and in every metadata equal to the source.  In directories the
    restore made, a file has no name until it is complete (O_TMPFILE), so
    the kill leaves no partial file at all; in directories DEST had, files
    are written under temporary names, which the second run removes."""
    import signal
    import time

    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(6):
            p = src / f"d{d}" / f"f{i}.bin"
            p.write_bytes(os.urandom(300_000 + 1000 * i))  # chunked: one blob each
            os.chmod(p, 0o640 + (i % 2) * 0o100)
            os.utime(p, ns=(1_500_000_000_000_000_000 + i, 1_600_000_000_123_456_789 + i))
        (src / f"d{d}" / "small.txt").write_text(f"small {d}")
        os.symlink(f"f{d}.bin", src / f"d{d}" / "link")
    run_cli("save", "c", src, env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]}, check=0)
    out = tmp_path / "out"
    if dest == "dirs-exist":
        for d in range(4):
            (out / f"d{d}").mkdir(parents=True)
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env, REKKORD_CACHE_DIR=str(tmp_path / "cc"))
    cmd = [sys.executable, "-m", "rekkord", "--limit-download", "512", "restore", f"c:{src}", str(out)]
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = [f for f in (out.glob("d*/f*.bin") if out.exists() else []) if not f.name.startswith(".")]
        if len(done) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the restore ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(str(f.relative_to(out)) for f in out.glob("d*/f*.bin"))
    assert 5 <= len(finished) < 24, finished
    left = tmp_leftovers(out)
    if dest == "dirs-exist":
        assert left, "no temporary file was in flight when the restore was killed"
    else:
        assert left == []
        # and every file that has a name is complete
        for f in finished:
            assert (out / f).read_bytes() == (src / f).read_bytes(), f
    # Again, the same command (quiet, as a script would run it): a summary in JSON.
    p = run_cli("-q", "restore", f"c:{src}", out, "--json", env=env, check=0)
    summary = json.loads(p.stdout)
    assert p.stderr == b""
    assert summary["message_type"] == "summary" and summary["total_files"] == 4 * 8
    assert summary["files_skipped"] >= len(finished) and summary["unchanged"] == summary["files_skipped"]
    assert summary["files_restored"] + summary["files_skipped"] == summary["total_files"]
    assert summary["bytes_restored"] + summary["bytes_skipped"] == summary["total_bytes"]
    assert summary["temporaries_removed"] == len(left)
    assert tmp_leftovers(out) == []
    assert_same_tree(src, out)
    # A third run has nothing left to do, and -q prints nothing at all.
    p = run_cli("-q", "restore", f"c:{src}", out, env=env, check=0)
    assert p.stdout == p.stderr == b""
    p = run_cli("restore", f"c:{src}", out, env=env, check=0)
    assert b"restored 0 files" in p.stdout and b"skipped 32 " in p.stdout and b"32 unchanged" in p.stdout


def test_overwrite_modes_and_restics_json_summary(run_cli, env, saved, tmp_path):
    src, sid = saved
    out = tmp_path / "out"
    p = run_cli("restore", f"{sid}:{src}", out, "--json", env=env, check=0)
    assert p.stdout.count(b"\n") == 1 and p.stdout.startswith(b'{"message_type":"summary",')  # one JSON line
    first = json.loads(p.stdout)
    assert first["files_deleted"] == 0 and isinstance(first["seconds_elapsed"], int)
    assert (first["files_restored"], first["files_skipped"], first["total_files"]) == (8, 0, 8)
    assert first["bytes_restored"] == first["total_bytes"] == first["bytes"] and first["bytes_skipped"] == 0
    # (rekkord's own names stay, for the scripts that read them)
    assert {"snapshot", "files", "dirs", "others", "bytes", "skipped", "damaged", "warnings", "deleted",
            "verified", "problems"} <= set(first)
    hosts = out / "etc" / "hosts"

    def run(*args, code=0):
        p = run_cli("restore", f"{sid}:{src}", out, "--json", *args, env=env)
        assert p.returncode == code, p.stderr
        return json.loads(p.stdout)

    hosts.write_text("mine\n")
    assert run("--overwrite", "never")["kept"] == 8 and hosts.read_text() == "mine\n"
    os.utime(hosts, ns=(4_000_000_000 * 10**9, 4_000_000_000 * 10**9))  # newer than the snapshot's
    assert run("--overwrite=if-newer")["files_restored"] == 0 and hosts.read_text() == "mine\n"
    os.utime(hosts, ns=(10**9, 10**9))
    d = run("--overwrite", "if-newer")
    assert (d["files_restored"], d["kept"]) == (1, 7) and hosts.read_text() == "hosts\n"
    hosts.write_text("HOSTS\n")
    os.utime(hosts, ns=(os.stat(src / "etc" / "hosts").st_mtime_ns,) * 2)
    assert run("--overwrite", "if-changed")["unchanged"] == 8 and hosts.read_text() == "HOSTS\n"
    d = run()  # the default: always, the content decides
    assert (d["files_restored"], d["unchanged"]) == (1, 7) and hosts.read_text() == "hosts\n"
    p = run_cli("restore", "--overwrite", "if-chnaged", f"{sid}:{src}", out, env=env)
    assert p.returncode == 2 and b"'if-chnaged' is not one of" in p.stderr
    p = run_cli("restore", f"{sid}:{src}", out, "--delete", "--overwrite", "never", env=env)
    assert p.returncode == 2 and p.stderr.decode().startswith("rekkord: error: --delete")


def test_an_include_that_matches_nothing_is_a_warning_and_exit_6(run_cli, env, saved, tmp_path):
    src, sid = saved
    p = run_cli("restore", f"{sid}:{src}", tmp_path / "o1", "--include", "*.cnof", env=env)
    assert p.returncode == 6, p.stderr
    want = f"rekkord: warning: --include *.cnof: matches nothing in snapshot {sid[:8]} below the path given"
    assert p.stderr.decode().splitlines() == [want]
    assert not (tmp_path / "o1").exists() or restored(tmp_path / "o1") == []
    # One of two patterns matches: that one restores, the other is named.
    p = run_cli("restore", sid, tmp_path / "o2", "--include", "hosts", "--include", "/nowhere/**", "--json", env=env)
    assert p.returncode == 6
    assert json.loads(p.stdout)["unmatched"] == ["/nowhere/**"] and b"--include /nowhere/**" in p.stderr
    assert (tmp_path / "o2" / str(src).lstrip("/") / "etc" / "hosts").read_text() == "hosts\n"
    # An include matching only what an exclude removes matches nothing either.
    p = run_cli("restore", f"{sid}:{src}", tmp_path / "o3", "--include", "hosts", "--exclude", "etc", env=env)
    assert p.returncode == 6 and b"--include hosts" in p.stderr
    # An exclude that matches nothing is only a note: everything asked for is restored, exit 0.
    p = run_cli("restore", f"{sid}:{src}", tmp_path / "o4", "--exclude", "*.tpm", env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.decode() == f"rekkord: note: --exclude *.tpm: matches nothing in snapshot {sid[:8]}\n"
    assert (tmp_path / "o4" / "etc" / "hosts").read_text() == "hosts\n"


def test_processes_share_a_restore_with_the_same_result(run_cli, local_repo, env, tmp_path):
    # 1300 entries: more than a block (1024), so the second process has a share.
    src = tmp_path / "src"
    for i in range(26):
        for j in range(49):
            (src / f"d{i:02}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i:02}" / f"f{j:02}").write_text(f"{i} {j}\n" * (j + 1))
    p = run_cli("save", "c", src, "--json", env={**env, "REKKORD_KEY_FILE": local_repo.key_files["write"]}, check=0)
    sid = json.loads(p.stdout)["id"]
    out = {}
    for n in (1, 2):
        p = run_cli("restore", sid, tmp_path / f"out{n}", "--processes", n, "--json", env=env, check=0)
        out[n] = {k: v for k, v in json.loads(p.stdout).items() if k != "duration"}
        assert_same_tree(src, tmp_path / f"out{n}" / src.relative_to("/"))
    assert out[2] == out[1] and out[2]["files"] == 26 * 49
    p = run_cli("restore", sid, tmp_path / "out0", "--processes", "0", env=env, check=2)
    assert b"--processes" in p.stderr and b"Traceback" not in p.stderr

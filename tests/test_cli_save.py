"""rekkord save through the real CLI: the JSON contract, --all from a config
file with several channels, pre/post hooks, --stdin dumps, quiet and logged
output for cron."""

import json
import os
import random
import re
import subprocess
import sys

import pytest


@pytest.fixture
def env(local_repo):
    return {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["write"]}


def read_env(local_repo):
    return {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["read"]}


def cat(run_cli, local_repo, spec) -> bytes:
    return run_cli("cat", spec, env=read_env(local_repo), check=0).stdout


def snapshots(run_cli, local_repo):
    return json.loads(run_cli("snapshots", "--json", env=read_env(local_repo), check=0).stdout)


def hook_log(path):
    """A hook command that appends its REKKORD_* environment to ``path``."""
    return (f"{sys.executable} -c \"import os, json; open('{path}', 'a').write(json.dumps("
            f"{{k: v for k, v in os.environ.items() if k.startswith('REKKORD_')}}) + '\\n')\"")


def read_hook_log(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


@pytest.fixture
def trees(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    (etc / "skip.swp").write_text("swap")
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>hi</h1>\n")
    return etc, www


def test_save_json_parses_and_keeps_its_contract(run_cli, env, trees):
    etc, _ = trees
    p = run_cli("save", "etc", etc, "--json", env=env, check=0)
    d = json.loads(p.stdout)
    assert re.fullmatch(r"[0-9a-f]{32}", d["id"]) and d["channel"] == "etc" and d["status"] == "success"
    assert d["files"] == 2 and d["problems"] == [] and "bytes_stored" in d
    p = run_cli("save", "etc", etc, env=env, check=0)
    assert p.stdout.decode().startswith("snapshot ") and b"saved in channel etc" in p.stdout


def write_config(tmp_path, local_repo, body: str) -> str:
    conf = tmp_path / "rekkord.toml"
    conf.write_text(f'repository = "{local_repo.url}"\nkey_file = "{local_repo.key_files["write"]}"\n' + body)
    return str(conf)


def test_save_all_from_a_config_with_several_channels(run_cli, local_repo, trees, tmp_path):
    etc, www = trees
    log = tmp_path / "hooks.log"
    conf = write_config(tmp_path, local_repo, f"""
[channels.etc]
paths = ["{etc}"]
exclude = ["*.swp"]
pre = {json.dumps(hook_log(log))}
post = {json.dumps(hook_log(log))}

[channels.www]
paths = ["{www}"]
""")
    p = run_cli("-c", conf, "save", "--all", "--json", env={})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [(o["channel"], o["status"]) for o in out] == [("etc", "success"), ("www", "success")]
    assert {s["channel"] for s in snapshots(run_cli, local_repo)} == {"etc", "www"}
    assert cat(run_cli, local_repo, f"etc:{etc}/hosts") == b"127.0.0.1 localhost\n"
    p = run_cli("cat", f"etc:{etc}/skip.swp", env=read_env(local_repo))
    assert p.returncode == 6  # excluded by the channel's config
    pre, post = read_hook_log(log)
    assert pre["REKKORD_CHANNEL"] == "etc" and pre["REKKORD_HOOK"] == "pre" and "REKKORD_STATUS" not in pre
    assert post == {**post, "REKKORD_CHANNEL": "etc", "REKKORD_STATUS": "success", "REKKORD_SNAPSHOT": out[0]["id"],
                    "REKKORD_HOOK": "post"}
    # `save CHANNEL` alone takes the channel's paths from the config file.
    p = run_cli("-c", conf, "save", "www", "--json", env={}, check=0)
    assert json.loads(p.stdout)["channel"] == "www"


def test_failed_pre_hook_skips_the_channel_and_tells_the_post_hook(run_cli, local_repo, trees, tmp_path):
    etc, www = trees
    log = tmp_path / "hooks.log"
    conf = write_config(tmp_path, local_repo, f"""
[channels.db]
paths = ["{etc}"]
pre = "exit 3"
post = {json.dumps(hook_log(log))}

[channels.www]
paths = ["{www}"]
""")
    p = run_cli("-c", conf, "save", "--all", env={})
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "rekkord: error: channel db: pre hook for channel db failed with exit code 3" in err
    assert "saved 1 of 2 channels; failed: db" in err
    assert "Traceback" not in err
    (post,) = read_hook_log(log)
    assert post["REKKORD_STATUS"] == "failure" and post["REKKORD_SNAPSHOT"] == ""
    assert "pre hook" in post["REKKORD_ERROR"]
    assert [s["channel"] for s in snapshots(run_cli, local_repo)] == ["www"]  # the other channel still saved


def unreadable_file():
    """A file even root cannot read: a write-only sysfs attribute."""
    if os.geteuid() != 0:
        return None
    for dirpath, _, files in os.walk("/sys/devices"):
        for f in files:
            p = os.path.join(dirpath, f)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if st.st_mode & 0o777 == 0o200 and st.st_size > 0:
                return p
    return None


def test_warnings_reach_the_post_hook_and_exit_3(run_cli, local_repo, env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("ok")
    bad = unreadable_file()
    if bad is None:
        bad = src / "unreadable"
        bad.write_text("secret")
        os.chmod(bad, 0)
    log = tmp_path / "hooks.log"
    p = run_cli("save", "c", src, bad, "--post", hook_log(log), env=env)
    assert p.returncode == 3, p.stderr
    assert f"rekkord: warning: {bad}: cannot open: Permission denied" in p.stderr.decode()
    (post,) = read_hook_log(log)
    assert post["REKKORD_STATUS"] == "warning" and post["REKKORD_SNAPSHOT"]
    p = run_cli("-q", "save", "c", src, bad, "--json", env=env)
    assert p.returncode == 3 and json.loads(p.stdout)["status"] == "warning"


def test_post_hook_failure_is_a_warning(run_cli, env, trees):
    etc, _ = trees
    p = run_cli("save", "etc", etc, "--post", "exit 7", env=env)
    assert p.returncode == 3 and b"post hook for channel etc failed with exit code 7" in p.stderr


def test_stdin_dump_is_one_file_at_the_snapshot_root(run_cli, local_repo, env):
    data = random.Random(9).randbytes(3 << 20) + b"-- end of dump\n"
    p = run_cli("save", "--stdin", "db.sql", "db", "--json", env=env, input=data, check=0)
    d = json.loads(p.stdout)
    assert d["files"] == 1 and d["bytes_total"] == len(data)
    assert cat(run_cli, local_repo, "db:/db.sql") == data
    ls = json.loads(run_cli("ls", "db", "--json", env=read_env(local_repo), check=0).stdout)
    assert [e["path"] for e in ls] == ["/db.sql"] and ls[0]["size"] == len(data)
    # A pipe from a real process, as in `pg_dump | rekkord save --stdin`.
    producer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 1000000)"],
                                stdout=subprocess.PIPE)
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env, REKKORD_CACHE_DIR=str(local_repo.tmp / "c2"))
    q = subprocess.run([sys.executable, "-m", "rekkord", "save", "--stdin", "dump", "db2"], stdin=producer.stdout,
                       env=e, capture_output=True)
    producer.wait()
    assert q.returncode == 0, q.stderr
    assert cat(run_cli, local_repo, "db2:/dump") == b"x" * 1000000


def test_stdin_command_failure_saves_nothing(run_cli, local_repo, env):
    p = run_cli("save", "--stdin", "db.sql", "--stdin-command", "echo partial; exit 4", "db", env=env)
    assert p.returncode == 1
    assert p.stderr.decode().strip() == ("rekkord: error: command for channel db failed with exit code 4; "
                                         "nothing was saved")
    assert snapshots(run_cli, local_repo) == []
    run_cli("save", "--stdin", "db.sql", "--stdin-command", "printf 'SELECT 1;'", "db", env=env, check=0)
    assert cat(run_cli, local_repo, "db:/db.sql") == b"SELECT 1;"


def test_config_stdin_channel(run_cli, local_repo, tmp_path):
    conf = write_config(tmp_path, local_repo, """
[channels.pg]
stdin = "app.sql"
command = ["sh", "-c", "echo 'CREATE TABLE t;'"]
""")
    run_cli("-c", conf, "save", "--all", env={}, check=0)
    assert cat(run_cli, local_repo, "pg:/app.sql") == b"CREATE TABLE t;\n"


def test_quiet_under_cron_and_log_file(run_cli, local_repo, env, trees, tmp_path):
    etc, _ = trees
    log = tmp_path / "rekkord.log"
    p = run_cli("-q", "--log-file", log, "save", "etc", etc, env=env, check=0)
    assert p.stdout == b"" and p.stderr == b""
    lines = log.read_text().splitlines()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO rekkord .*save etc", lines[0])
    assert any("channel etc: snapshot" in line and "saved" in line for line in lines)
    p = run_cli("-q", "--log-file", log, "save", "etc", tmp_path / "missing", env=env)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    assert "ERROR" in log.read_text().splitlines()[-1]


def test_bad_save_invocations_are_one_line(run_cli, local_repo, env, tmp_path, trees):
    etc, _ = trees
    cases = [
        (("save",), "give a CHANNEL"),
        (("save", "x"), "no paths given for channel x"),
        (("save", "--all"), "--all needs a config file"),
        (("save", "--stdin", "a/b", "c"), "invalid name"),
        (("save", "--stdin", "n", "c", str(etc)), "give no PATHS"),
        (("save", "--stdin-command", "true", "c"), "needs --stdin"),
    ]
    for args, msg in cases:
        p = run_cli(*args, env=env, input=b"")
        assert p.returncode == 2, (args, p.stderr)
        assert msg in p.stderr.decode() and len(p.stderr.splitlines()) == 1, (args, p.stderr)
    conf = write_config(tmp_path, local_repo, '[channels.x]\npaths = ["/etc"]\nbogus = 1\n')
    p = run_cli("-c", conf, "save", "--all", env={})
    assert p.returncode == 2 and b"unknown key 'bogus' in [channels.x] (known: " in p.stderr


def on_a_terminal(argv, env, input_bytes=None):
    """Run the CLI with stderr on a pseudo-terminal; (returncode, stdout, what the terminal showed)."""
    import pty

    master, slave = pty.openpty()
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env, TERM="xterm", COLUMNS="160")
    proc = subprocess.Popen([sys.executable, "-m", "rekkord", *map(str, argv)], env=e, stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
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
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_has_an_eta_once_the_channel_was_saved(local_repo, env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))
    e = {**env, "REKKORD_CACHE_DIR": str(tmp_path / "cache")}
    rc, out, tty = on_a_terminal(["save", "c", src], e)
    assert rc == 0 and b"saved in channel c" in out
    assert "saving c" in tty and "20 files" in tty
    # The second time, the first save's size is the expected total: a bar with an ETA.
    rc, out, tty = on_a_terminal(["save", "c", src], e)
    assert rc == 0 and "saving c" in tty and "/20.0 MiB" in tty and "ETA" in tty
    # With -q or --json, nothing on the terminal but the result.
    rc, out, tty = on_a_terminal(["-q", "save", "c", src], e)
    assert rc == 0 and tty == "" and out == b""


def test_a_failed_or_warning_save_leaves_a_failure_report(run_cli, local_repo, env, trees):
    """The report names channel, host, exit code and kind of error, never the
    message (rekkord/report.py; `rekkord reports` in tests/test_cli_reports.py)."""
    from rekkord.report import reports

    etc, _ = trees
    run_cli("save", "etc", etc, "--pre", "exit 4", "--host", "web01", env=env, check=1)
    run_cli("save", "etc", etc, "--post", "exit 7", env=env, check=3)  # a warning: the post hook failed
    run_cli("save", "etc", etc, env=env, check=0)  # a clean save leaves none
    failed, warned = reports(local_repo.repo("audit"))
    assert (failed.channel, failed.host, failed.status, failed.exit_code, failed.error) == (
        "etc", "web01", "failure", 1, "HookFailed")
    assert (warned.status, warned.exit_code, warned.error, warned.files) == ("warning", 3, "Warnings", 2)


def test_a_report_that_cannot_be_written_changes_no_exit_code(run_cli, local_repo, env, trees):
    etc, _ = trees
    with open(os.path.join(local_repo.url, "reports"), "w") as f:  # reports/<id> cannot be created
        f.write("in the way")
    p = run_cli("save", "etc", etc, "--pre", "exit 4", env=env, check=1)
    err = p.stderr.decode()
    assert "rekkord: warning: channel etc: could not write a failure report: " in err
    assert "rekkord: error: pre hook for channel etc failed with exit code 4" in err and "Traceback" not in err
    p = run_cli("save", "etc", etc, "--post", "exit 7", env=env, check=3)
    assert b"could not write a failure report" in p.stderr
# ---- restic's save options (issue 14) -----------------------------------------------------------


def saved_paths(run_cli, local_repo, sid) -> set[str]:
    out = json.loads(run_cli("ls", "--json", "-R", sid, env=read_env(local_repo), check=0).stdout)
    return {e["path"] for e in out}


def test_files_from_in_restics_three_forms(run_cli, env, local_repo, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for n in ("a.conf", "b.conf", "c.txt", "# not a comment", "new\nline", "sp ace"):
        (d / n).write_text(n)
    lst = tmp_path / "list"
    lst.write_text(f"# a comment\n\n{d}/*.conf\n{d}/sp ace\n{d}/nothing-*.x\n")
    p = run_cli("save", "c", "--files-from", lst, "--json", env=env, check=0)
    assert b"pattern '" in p.stderr and b"matches no file" in p.stderr
    got = saved_paths(run_cli, local_repo, json.loads(p.stdout)["id"])
    assert {f"{d}/a.conf", f"{d}/b.conf", f"{d}/sp ace"} <= got and f"{d}/c.txt" not in got
    verbatim = tmp_path / "verbatim"
    verbatim.write_text(f"{d}/# not a comment\n\n{d}/c.txt\n")
    raw = tmp_path / "raw"
    raw.write_bytes(f"{d}/new\nline\0".encode())
    p = run_cli("save", "c", "--files-from-verbatim", verbatim, "--files-from-raw", raw, "--json", env=env, check=0)
    got = saved_paths(run_cli, local_repo, json.loads(p.stdout)["id"])
    assert {f"{d}/# not a comment", f"{d}/c.txt", f"{d}/new\nline"} <= got and f"{d}/a.conf" not in got
    # From standard input, with PATHS too.
    p = run_cli("save", "c", d / "c.txt", "--files-from-raw", "-", "--json", env=env,
                input=f"{d}/a.conf\0".encode(), check=0)
    got = saved_paths(run_cli, local_repo, json.loads(p.stdout)["id"])
    assert {f"{d}/a.conf", f"{d}/c.txt"} <= got and f"{d}/b.conf" not in got
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    p = run_cli("save", "c", "--files-from", empty, env=env)
    assert p.returncode == 2 and b"name no path" in p.stderr


def test_size_tag_file_case_insensitive_excludes_and_time(run_cli, env, local_repo, tmp_path):
    d = tmp_path / "d"
    (d / "cache").mkdir(parents=True)
    (d / "big").write_bytes(b"x" * 2048)
    (d / "small").write_bytes(b"x" * 10)
    (d / "Image.PNG").write_bytes(b"png")
    (d / "cache" / ".tag").write_text("rekkord-skip\n")
    (d / "cache" / "junk").write_text("junk")
    ifile = tmp_path / "ipatterns"
    ifile.write_text("*.png\n")
    p = run_cli("save", "c", d, "--exclude-larger-than", "1k", "--exclude-if-present", ".tag:rekkord-skip",
                "--iexclude-file", ifile, "--time", "2021-03-04 05:06:07", "--json", env=env, check=0)
    sid = json.loads(p.stdout)["id"]
    got = {x[len(str(d)) + 1:] for x in saved_paths(run_cli, local_repo, sid) if x.startswith(f"{d}/")}
    assert got == {"small", "cache", "cache/.tag"}
    snap = next(x for x in snapshots(run_cli, local_repo) if x["id"] == sid)
    import time as _t

    assert snap["time_ns"] == int(_t.mktime((2021, 3, 4, 5, 6, 7, 0, 0, -1))) * 10**9
    p = run_cli("save", "c", d, "--iexclude", "IMAGE.png", "--time", "2021-03-04T05:06:07+00:00", "--json",
                env=env, check=0)
    sid = json.loads(p.stdout)["id"]
    assert f"{d}/Image.PNG" not in saved_paths(run_cli, local_repo, sid)
    assert next(x for x in snapshots(run_cli, local_repo) if x["id"] == sid)["time"] == "2021-03-04T05:06:07Z"
    for args, msg in ((("--exclude-larger-than", "lots"), b"invalid size"), (("--time", "yesterday"),
                                                                              b"invalid time"),
                      (("--exclude-if-present", ":x"), b"give a file name")):
        p = run_cli("save", "c", d, *args, env=env)
        assert p.returncode == 2 and msg in p.stderr, p.stderr


def test_config_channel_takes_the_new_keys(run_cli, local_repo, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep").write_text("k")
    (d / "SKIP.me").write_text("s")
    (d / "huge").write_bytes(b"h" * 5000)
    (d / "listed").write_text("l")
    lst = tmp_path / "list"
    lst.write_text(f"{d}/listed\n")
    conf = write_config(tmp_path, local_repo, f'[channels.c]\npaths = ["{d}/keep", "{d}/SKIP.me", "{d}/huge"]\n'
                        f'files_from = ["{lst}"]\niexclude = ["skip.*"]\nexclude_larger_than = "4k"\n')
    sid = json.loads(run_cli("-c", conf, "save", "c", "--json", check=0).stdout)["id"]
    got = {x for x in saved_paths(run_cli, local_repo, sid) if x.startswith(f"{d}/")}
    assert got == {f"{d}/keep", f"{d}/listed"}


def test_dry_run_reports_and_writes_nothing(run_cli, env, local_repo, tmp_path, trees):
    etc, _ = trees
    cache_dir = tmp_path / "cli-cache"
    cache_dir.mkdir()  # now, so that a cache made later changes no mtime above etc

    def state():
        return sorted((dp, tuple(sorted(fs))) for dp, _, fs in os.walk(local_repo.url))

    before = state()
    p = run_cli("save", "etc", etc, "--dry-run", env=env, check=0)
    out = p.stdout.decode()
    assert out.startswith("dry run: channel etc would be saved; nothing was written") and "would upload: " in out
    assert state() == before and os.listdir(cache_dir) == []  # no cache made
    d = json.loads(run_cli("save", "etc", etc, "-n", "--json", env=env, check=0).stdout)
    assert d["dry_run"] and d["files"] == 2 and d["bytes_upload"] > 0 and d["uploads"]["blobs"]["objects"] >= 2
    assert state() == before and os.listdir(cache_dir) == []
    real = json.loads(run_cli("save", "etc", etc, "--json", env=env, check=0).stdout)
    assert real["bytes_stored"] == d["bytes_stored"] and real["files"] == d["files"]
    assert len(snapshots(run_cli, local_repo)) == 1
    again = json.loads(run_cli("save", "etc", etc, "-n", "--json", env=env, check=0).stdout)
    assert again["files_unchanged"] == 2 and again["uploads"]["blobs"]["bytes"] < d["uploads"]["blobs"]["bytes"]


# ---- healing across channels and `save --all` (issue 12 #2) ---------------------------------------


@pytest.mark.parametrize("local_repo", [1, 2], indirect=True)
def test_a_hint_heals_every_channel_and_no_new_snapshot_references_the_damaged_object(run_cli, local_repo, tmp_path):
    """One machine, three channels; two of them hold the same large file
    (deduplicated: one data blob).  A bit flip of unchanged size in that
    blob; an audit check publishes a repair hint.  The first save after it
    is of the channel that does not hold the file (it processes the hint
    but cannot upload the data); a later save of a channel that holds it,
    and `save --all`, must still upload it again: no new snapshot references
    the damaged object, check is clean and reports the snapshots healed."""
    from faulty_storage import blob_path, blob_roles, flip_bit

    rng = random.Random(2)
    shared = rng.randbytes(700_000)
    dirs = {}
    for ch in ("db", "www", "logs"):
        d = dirs[ch] = tmp_path / ch
        d.mkdir()
        (d / f"{ch}.txt").write_text(f"only in {ch}\n")
        if ch != "logs":
            (d / "shared.bin").write_bytes(shared)
    conf = write_config(tmp_path, local_repo, "".join(f'\n[channels.{ch}]\npaths = ["{d}"]\n'
                                                      for ch, d in dirs.items()))
    out = json.loads(run_cli("-c", conf, "save", "--all", "--json", env={}, check=0).stdout)
    first = {o["channel"]: o["id"] for o in out}
    roles = {ch: blob_roles(local_repo, first[ch]) for ch in ("db", "www")}
    common = set(roles["db"]["files"][f"{dirs['db']}/shared.bin"]) & \
        set(roles["www"]["files"][f"{dirs['www']}/shared.bin"])
    victim = min(common)
    size = os.path.getsize(blob_path(local_repo.url, victim))
    flip_bit(blob_path(local_repo.url, victim))
    assert os.path.getsize(blob_path(local_repo.url, victim)) == size
    audit = {"REKKORD_REPOSITORY": local_repo.url, "REKKORD_KEY_FILE": local_repo.key_files["audit"]}
    p = run_cli("check", env=audit, check=4)
    assert b"published repair hint" in p.stderr
    read = read_env(local_repo)

    def restores(sid, ch):
        return run_cli("cat", f"{sid}:{dirs[ch]}/shared.bin", env=read, check=0).stdout == shared

    # The channel without the file saves first: it sees the hint, has nothing to upload.
    run_cli("-c", conf, "save", "logs", "--json", env={}, check=0)
    # Then one that holds the data: it uploads it again, over the damaged object.
    www = json.loads(run_cli("-c", conf, "save", "www", "--json", env={}, check=0).stdout)
    assert restores(www["id"], "www") and www["blobs_new"] >= 1
    # And every channel at once: nothing born damaged.
    out = json.loads(run_cli("-c", conf, "save", "--all", "--json", env={}, check=0).stdout)
    assert [(o["channel"], o["status"]) for o in out] == [("db", "success"), ("www", "success"), ("logs", "success")]
    for o in out:
        if o["channel"] != "logs":
            assert restores(o["id"], o["channel"])
    p = run_cli("check", env=audit, check=0)
    assert b"healed since the previous check: " in p.stdout and first["db"][:8].encode() in p.stdout
    run_cli("check", "--read-data", env=read, check=0)
    assert restores(first["db"], "db") and restores(first["www"], "www")  # the old snapshots heal too

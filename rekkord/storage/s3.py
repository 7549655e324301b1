"""S3 backend (AWS S3 and S3-compatible stores), on botocore (boto3's engine).

URL: ``s3://BUCKET/PREFIX``.  Endpoint, region and credentials come from the
``options`` passed in (``endpoint_url``, ``region``, ``access_key_id``,
``secret_access_key``, ``session_token``, ``profile``) and otherwise from
boto3's normal sources (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``…, ``~/.aws/config`` and ``~/.aws/credentials``, instance
roles).  Other options: ``connections`` (HTTP connection pool size and the
number of threads callers should use, default 16), ``addressing_style``
(``path``/``virtual``/``auto``; ``path`` when an endpoint is given),
``retries``, ``retry_base_delay``, ``retry_max_delay``, ``timeout``.

Every object is written by a single ``PutObject``, which S3 applies
atomically.  Exclusive writes send ``If-None-Match: *`` (the server refuses
to replace an existing key: 412); when a server answers that it does not
implement the header, the backend falls back to a HEAD check before the PUT
(racy, so ``atomic_exclusive`` becomes False).  ``Content-MD5`` is sent with
every PUT so the server rejects a body damaged in transit; as it is signed,
the direct path below does not also hash the body with SHA-256 for the
signature, not even over plain http (``UNSIGNED-PAYLOAD``).

boto3's own retries are turned off: transient failures (connection errors,
timeouts, 5xx, throttling) are retried here with :func:`retry`, permanent
ones (access denied, no such bucket, quota) are raised at once.

The hot requests — PUT, GET and HEAD of one object — skip botocore's
per-call machinery (parameter validation, serialisation, endpoint rule
evaluation, response parsing: ~2.5 ms of CPU under the GIL per request) and
its ``Expect: 100-continue`` (one round trip per PUT): they are signed with
botocore's own SigV4 signer and sent through the client's own connection
pool, to the URL and signing region the client itself resolved for the
bucket (:class:`_Direct`).  ``before-send.s3.<Operation>`` events still fire.
Anything unexpected (a redirect to another region, a directory bucket, no
credentials) goes back to the client.

A machine whose clock is off cannot sign requests S3 accepts (AWS allows 15
minutes; SeaweedFS, MinIO and Ceph likewise): the server answers
``RequestTimeTooSkewed`` (or ``RequestExpired``, ``RequestInTheFuture``, or a
bare 403 to a HEAD).  As the AWS SDKs do (Java's and Go's "clock skew
correction"), the backend then takes the offset between the server's
``Date`` header and this machine's clock, logs a warning naming the clock,
and signs every later request -- direct or through the client -- with the
corrected time, retrying the refused request at once.  A server that still
refuses gets a :class:`StorageError` that names the clock.  ``now()``
returns the server's time (a ``Date`` header), ``mtime`` and ``list_times``
its ``LastModified``.
"""

from __future__ import annotations

import base64
import contextvars
import datetime
import email.utils
import hashlib
import html
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import botocore.exceptions as bx
import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.hooks import first_non_none_response

from ..errors import (
    ConfigError,
    NoSpace,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from .base import RetryingBackend, Storage, float_option, int_option

try:  # urllib3 errors can escape botocore while a response body streams
    from urllib3.exceptions import HTTPError as _Urllib3Error
except ImportError:  # pragma: no cover
    _Urllib3Error = OSError

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CONNECTIONS = 16

_sessions: dict[str | None, botocore.session.Session] = {}
_sessions_lock = threading.Lock()

_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
    "403",
}
_NO_SPACE = {"QuotaExceeded", "InsufficientStorage", "XMinioStorageFull", "StorageFull"}
_TRANSIENT = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ConditionalRequestConflict",
    "OperationAborted",
    "XMinioServerNotInitialized",
}


def _error_code(e: bx.ClientError) -> tuple[str, int, str]:
    err = e.response.get("Error", {}) or {}
    code = str(err.get("Code", "") or "")
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    message = str(err.get("Message", "") or "") or code or f"HTTP {status}"
    return code, status, message


_PROBE_KEY = "rekkord-probe"
_CODE_RE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]*)</Message>")
_REGION_RE = re.compile(r"Credential=[^/]*/[^/]*/([^/]*)/s3/aws4_request")


# ---- clock skew ---------------------------------------------------------------

#: Seconds added to this machine's clock when botocore signs a request in
#: this thread: set by :meth:`S3Storage._retry` around every request to the
#: storage's measured offset (other botocore users in the process see 0).
_signing_offset: contextvars.ContextVar[float] = contextvars.ContextVar("rekkord_s3_signing_offset", default=0.0)


def _install_signing_clock() -> bool:
    """Make botocore's SigV4 signers (ours and the client's) read the time
    through :data:`_signing_offset`.  botocore has no setting for it: its
    signers call ``botocore.auth.get_current_datetime``, which this wraps
    once (the same time when the offset is 0).  False when this botocore
    has no such function (then skew is reported, not corrected)."""
    import botocore.auth as auth

    current = getattr(auth, "get_current_datetime", None)
    if current is None:  # pragma: no cover - botocore too old
        return False
    if getattr(current, "rekkord_offset", False):
        return True

    def get_current_datetime(*args, **kwargs):
        now = current(*args, **kwargs)
        offset = _signing_offset.get()
        return now + datetime.timedelta(seconds=offset) if offset else now

    get_current_datetime.rekkord_offset = True  # type: ignore[attr-defined]
    auth.get_current_datetime = get_current_datetime
    return True


_CAN_CORRECT_CLOCK = _install_signing_clock()
#: Error codes that say the request time was refused.
_SKEW_CODES = {"RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture"}
#: Codes some servers give a skewed request instead (or a HEAD's bare 403):
#: taken for skew when the server's Date is this far from the signing time.
_MAYBE_SKEW_CODES = {"SignatureDoesNotMatch", "AccessDenied", "InvalidSignatureException", "AuthFailure", "403", ""}
_SKEW_TOLERANCE = 5 * 60.0


def _header(e: bx.ClientError, name: str) -> str | None:
    headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def _http_time(value: str | None) -> float | None:
    """Unix time of an HTTP date (``Date``, ``Last-Modified``), or None."""
    if not value:
        return None
    try:
        d = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


def _describe_offset(seconds: float) -> str:
    a = abs(seconds)
    amount = (f"{a / 86400:.1f} days" if a >= 86400 else f"{a / 3600:.1f} hours" if a >= 3600
              else f"{a / 60:.0f} minutes" if a >= 60 else f"{a:.0f} seconds")
    return f"{amount} {'behind' if seconds > 0 else 'ahead of'}"


class _NoBody:
    def stream(self, *a, **kw):
        return iter(())


class _UseClient(Exception):
    """The direct path met something only the client handles (a redirect)."""


class _SigV4(S3SigV4Auth):
    """botocore's S3 signer, except that a body whose ``Content-MD5`` is
    signed is not hashed again with SHA-256 over plain http either (botocore
    skips it only over https): the signed MD5 already binds the body to the
    signature, and what rekkord stores is authenticated end to end anyway."""

    def _should_sha256_sign_payload(self, request):
        if "Content-MD5" in request.headers:
            return False
        return super()._should_sha256_sign_payload(request)


class _Direct:
    """PUT, GET and HEAD of one object, signed with botocore's SigV4 signer
    and sent through the client's connection pool, without the client's
    per-call machinery.

    The URL prefix and the signing region are taken from a request the
    client itself prepares (a HEAD intercepted before it is sent), so
    addressing style, regional endpoints, custom endpoints and signing
    regions are exactly the client's."""

    def __init__(self, client, bucket: str, credentials):
        self.client = client
        self.events = client.meta.events
        self.credentials = credentials
        self.http = client._endpoint.http_session  # the client's pool (proxies, CA bundle, timeouts)
        seen: dict[str, Any] = {}

        def capture(request, **kw):
            if urlsplit(request.url).path.endswith("/" + _PROBE_KEY):
                seen["url"] = request.url
                seen["auth"] = request.headers.get("Authorization")
                return AWSResponse(request.url, 200, {}, _NoBody())
            return None

        uid = f"rekkord-probe-{id(self)}"
        self.events.register_first("before-send.s3.HeadObject", capture, unique_id=uid)
        try:
            client.head_object(Bucket=bucket, Key=_PROBE_KEY)
        finally:
            self.events.unregister("before-send.s3.HeadObject", unique_id=uid)
        parts = urlsplit(seen["url"])
        auth = seen["auth"]
        auth = auth.decode() if isinstance(auth, bytes) else str(auth or "")
        m = _REGION_RE.search(auth)
        if not m or not parts.path.endswith("/" + _PROBE_KEY):
            raise ValueError(f"cannot sign directly for {seen['url']!r}")
        self.region = m.group(1)
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(_PROBE_KEY)]}"
        self.https = parts.scheme == "https"

    def send(self, method: str, op: str, key: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> AWSResponse:
        """One request; raises :class:`botocore.exceptions.ClientError` (as
        the client would) for an error answer."""
        req = AWSRequest(method, self.base + quote(key, safe="/~"), data=body, headers=headers or {})
        _SigV4(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(req)
        prepared = req.prepare()
        resp = first_non_none_response(self.events.emit(f"before-send.s3.{op}", request=prepared))
        if resp is None:
            resp = self.http.send(prepared)
        status = resp.status_code
        if status < 300:
            if method == "GET":
                n = resp.headers.get("content-length")
                if n is not None and n.isdigit() and int(n) != len(resp.content):
                    raise bx.IncompleteReadError(actual_bytes=len(resp.content), expected_bytes=int(n))
            return resp
        content = resp.content if method != "HEAD" else b""
        m = _CODE_RE.search(content)
        code = m.group(1).decode(errors="replace") if m else ("" if content else str(status))
        m = _MESSAGE_RE.search(content)
        message = html.unescape(m.group(1).decode(errors="replace")) if m else ""
        if 300 <= status < 400 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                                           "IllegalLocationConstraintException"):
            raise _UseClient(f"{status} {code}")
        raise bx.ClientError({"Error": {"Code": code, "Message": message},
                              "ResponseMetadata": {"HTTPStatusCode": status,
                                                   "HTTPHeaders": {k.lower(): v for k, v in resp.headers.items()}}},
                             op)


class S3Storage(RetryingBackend, Storage):
    """Objects under ``PREFIX/`` in one bucket."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        profile: str | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        addressing_style: str | None = None,
        retries: int = 8,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        timeout: float = 60.0,
    ):
        if not bucket:
            raise ConfigError("S3 URL has no bucket: use s3://BUCKET/PREFIX")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = prefix + "/" if prefix else ""
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.connections = connections
        self.atomic_exclusive = True
        self._conditional_put = True
        self._retries = retries
        self._base_delay = retry_base_delay
        self._max_delay = retry_max_delay
        if (access_key_id is None) != (secret_access_key is None):
            raise ConfigError("S3: give both access_key_id and secret_access_key, or neither")
        if addressing_style is None:
            # Self-hosted stores rarely have wildcard DNS for virtual hosts.
            addressing_style = "path" if endpoint_url else "auto"
        if addressing_style not in ("path", "virtual", "auto"):
            raise ConfigError(f"S3: addressing_style must be path, virtual or auto, not {addressing_style!r}")
        config_kw: dict[str, Any] = dict(
            max_pool_connections=connections,
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"total_max_attempts": 1},  # we retry ourselves
            s3={"addressing_style": addressing_style},
            tcp_keepalive=True,
        )
        try:
            # Third-party stores often reject botocore's default CRC trailers;
            # integrity is covered by Content-MD5 and rekkord's own MACs.
            config = Config(
                **config_kw,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
        except TypeError:  # botocore < 1.36
            config = Config(**config_kw)
        try:
            with _sessions_lock:
                # A session loads botocore's service models once (0.3 s) but
                # also caches the credentials it finds in the environment:
                # share it only when the credentials are given explicitly.
                # Building a client from a session is not thread-safe.
                # (botocore's session, not boto3's: importing boto3 costs
                # another 0.1 s of start-up for nothing a client needs.)
                if access_key_id is not None and profile is None:
                    session = _sessions.get(None)
                    if session is None:
                        session = _sessions[None] = botocore.session.Session()
                else:
                    session = botocore.session.Session(profile=profile)
                self.client = session.create_client(
                    "s3",
                    endpoint_url=endpoint_url or None,
                    region_name=region,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret_access_key,
                    aws_session_token=session_token,
                    config=config,
                )
        except bx.ProfileNotFound as e:
            raise ConfigError(f"S3: {e}") from e
        except (ValueError, bx.BotoCoreError) as e:
            raise ConfigError(f"S3: cannot set up a client for {self.url}: {e}") from e
        #: where requests go, for messages
        self.server = self.client.meta.endpoint_url
        if access_key_id is not None:
            self._credentials: Any = Credentials(access_key_id, secret_access_key, session_token)
        else:
            try:
                self._credentials = session.get_credentials()  # what the client resolved (cached)
            except Exception:  # the client's own calls will report it
                self._credentials = None
        #: Set by RetryingBackend when an operation gave up after all its
        #: retries: without it, each of the many requests a save has in flight
        #: would wait through the whole backoff on its own (a save of two
        #: 200 MiB files took 8 minutes to fail after the server died).
        self._down: str | None = None
        self._direct_lock = threading.Lock()
        self._direct_state: _Direct | None | bool = False  # False: not probed yet; None: use the client
        #: Seconds to add to this machine's clock to get the server's, once a
        #: request was refused for its time (0 until then).
        self.clock_offset = 0.0
        self._clock_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> S3Storage:
        options = options or {}
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"not an S3 URL: {url!r} (use s3://BUCKET/PREFIX)")
        if parts.query or parts.fragment:
            raise ConfigError(f"S3 URL {url!r}: no query or fragment allowed")
        return cls(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=options.get("endpoint_url") or None,
            region=options.get("region") or None,
            access_key_id=options.get("access_key_id") or None,
            secret_access_key=options.get("secret_access_key") or None,
            session_token=options.get("session_token") or None,
            profile=options.get("profile") or None,
            connections=int_option(options, "connections", DEFAULT_CONNECTIONS),
            addressing_style=options.get("addressing_style") or None,
            retries=int_option(options, "retries", 8),
            retry_base_delay=float_option(options, "retry_base_delay", 0.5),
            retry_max_delay=float_option(options, "retry_max_delay", 30.0),
            timeout=float_option(options, "timeout", 60.0),
        )

    # -- helpers ------------------------------------------------------------

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise StorageError(f"invalid object name {name!r}")
        return self.prefix + name

    def _where(self, name: str | None) -> str:
        loc = f"{self.url}/{name}" if name else self.url
        return f"{loc} on {self.server}"

    def _translate(self, e: BaseException, op: str, name: str | None) -> StorageError:
        """Map a boto3 error to the rekkord tree.  Transient errors carry a
        short message: :func:`retry` prefixes the operation and server."""
        what = f"{op} {self._where(name)}"
        if isinstance(e, StorageError):
            return e
        if isinstance(e, bx.ClientError):
            code, status, message = _error_code(e)
            if code == "NoSuchBucket":
                return ObjectNotFound(f"{what}: bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND or (status == 404 and not code):
                return ObjectNotFound(f"{what}: not found")
            if code in _DENIED or status == 403:
                return StoragePermissionDenied(f"{what}: permission denied ({code}: {message})")
            if code in _NO_SPACE or status == 507:
                return NoSpace(f"{what}: no space ({code}: {message})")
            if code == "PreconditionFailed" or status == 412:
                return ObjectExists(f"{what}: already exists")
            if code in _TRANSIENT or status >= 500 or status == 429:
                return TransientStorageError(f"{code or 'HTTP ' + str(status)}: {message}")
            return StorageError(f"{what}: {code or 'HTTP ' + str(status)}: {message}")
        if isinstance(e, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            return StoragePermissionDenied(
                f"{what}: no usable S3 credentials ({e}); give access_key_id and "
                "secret_access_key, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(e, bx.SSLError):
            return StorageError(f"{what}: TLS error: {e}")
        if isinstance(
            e,
            (
                bx.HTTPClientError,
                bx.ConnectionError,
                bx.IncompleteReadError,
                bx.ChecksumError,
                _Urllib3Error,
                OSError,
            ),
        ):
            return TransientStorageError(f"{type(e).__name__}: {e}")
        if isinstance(e, bx.BotoCoreError):
            return StorageError(f"{what}: {e}")
        raise e

    def _retry(self, op: str, name: str | None, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            corrected = False
            while True:
                offset = self.clock_offset
                token = _signing_offset.set(offset)
                try:
                    return fn()
                except StorageError:
                    raise
                except Exception as e:
                    skew = self._skew(e, offset)
                    if skew is not None and not corrected and self._correct_clock(skew, offset):
                        corrected = True
                        continue  # signed again with the server's time, at once
                    err = self._clock_error(e, op, name, skew, corrected) if skew is not None else None
                    err = err or self._translate(e, op, name)
                    if err is e:
                        raise
                    if isinstance(err, StoragePermissionDenied) and abs(self.clock_offset) > _SKEW_TOLERANCE:
                        # (a HEAD's bare 403 says no more: the clock may be why)
                        err = StoragePermissionDenied(
                            f"{err} (this machine's clock is {_describe_offset(self.clock_offset)} the "
                            "server's; requests are signed with the server's time: set the clock (NTP))")
                    raise err from e
                finally:
                    _signing_offset.reset(token)

        return self._with_retries(op, f"{op} {self._where(name)}", attempt)

    # -- clock skew -----------------------------------------------------------

    def _skew(self, e: BaseException, offset: float) -> float | None:
        """For an answer refusing the request time: the server's clock minus
        this machine's, from its Date header (None: not a time refusal, or
        no Date; ``nan``: a time refusal without a usable Date)."""
        if not isinstance(e, bx.ClientError):
            return None
        code, status, _ = _error_code(e)
        server = _http_time(_header(e, "date"))
        if code in _SKEW_CODES:
            return float("nan") if server is None else server - time.time()
        if status == 403 and code in _MAYBE_SKEW_CODES and server is not None:
            skew = server - time.time()
            if abs(skew - offset) > _SKEW_TOLERANCE:
                return skew
        return None

    def _correct_clock(self, skew: float, used: float) -> bool:
        """Adopt ``skew`` as the clock offset; False when that changes
        nothing (no Date, correction unavailable, or already applied)."""
        if skew != skew or not _CAN_CORRECT_CLOCK:  # nan
            return False
        with self._clock_lock:
            if abs(self.clock_offset - used) > 1.0:
                return True  # another thread corrected it meanwhile: use that
            if abs(skew - used) < 2.0:
                return False
            first = self.clock_offset == 0.0
            self.clock_offset = skew
        (log.warning if first else log.info)(
            "%s: this machine's clock is %s the server's (the server refused the request time): "
            "signing requests with the server's time from now on; set the clock (NTP)",
            self.server, _describe_offset(skew))
        return True

    def _clock_error(self, e: BaseException, op: str, name: str | None, skew: float,
                     corrected: bool) -> StorageError:
        code, status, message = _error_code(e)
        what = f"{op} {self._where(name)}"
        if skew != skew:
            return StorageError(f"{what}: the server refused the request time ({code}: {message}): "
                                "check this machine's clock (NTP)")
        again = " even with the time corrected by its Date header" if corrected else ""
        return StorageError(f"{what}: the server refused the request time{again} ({code or status}): this "
                            f"machine's clock is {_describe_offset(skew)} the server's: set the clock (NTP)")

    def _server_time(self) -> float:
        """The server's time, from the Date header of a HEAD request."""
        key = self._key(_PROBE_KEY)

        def fn() -> float:
            t0 = time.time()
            try:
                d = self._direct()
                if d is not None:
                    try:
                        h = d.send("HEAD", "HeadObject", key).headers
                        date = h.get("date")
                    except _UseClient as e:
                        self._via_client(e)
                        d = None
                if d is None:
                    date = self.client.head_object(Bucket=self.bucket, Key=key)["ResponseMetadata"][
                        "HTTPHeaders"].get("date")
            except bx.ClientError as e:
                code, status, _ = _error_code(e)
                if not (status == 404 or code in _NOT_FOUND):
                    raise
                date = _header(e, "date")
            t = _http_time(date)
            if t is None:
                raise StorageError(f"read the time of {self._where(None)}: the server sent no Date header")
            # A Date has whole seconds: the middle of the second is the best guess
            # (bounded by the time the request took).
            return t + 0.5 if time.time() - t0 < 1.0 else t

        return self._retry("read the time of", None, fn)

    # -- single-object requests: direct when possible --------------------------

    def _direct(self) -> _Direct | None:
        d = self._direct_state
        if d is False:
            with self._direct_lock:
                d = self._direct_state
                if d is False:
                    d = None
                    if self._credentials is not None and not self.bucket.endswith("--x-s3"):
                        try:
                            d = _Direct(self.client, self.bucket, self._credentials)
                        except Exception as e:  # the client path always works
                            log.debug("%s: requests go through the botocore client (%s)", self.url, e)
                    self._direct_state = d
        return d

    def _via_client(self, e: _UseClient) -> None:
        log.info("%s: %s; sending requests through the botocore client from now on", self.url, e)
        self._direct_state = None

    def _put(self, key: str, data: bytes, content_md5: str, exclusive: bool) -> None:
        d = self._direct()
        if d is not None:
            headers = {"Content-MD5": content_md5}
            if exclusive:
                headers["If-None-Match"] = "*"
            try:
                d.send("PUT", "PutObject", key, body=data, headers=headers)
                return
            except _UseClient as e:
                self._via_client(e)
        kw = {"IfNoneMatch": "*"} if exclusive else {}
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=content_md5, **kw)

    def _get(self, key: str, range_: str | None) -> bytes:
        d = self._direct()
        if d is not None:
            try:
                return d.send("GET", "GetObject", key, headers={"Range": range_} if range_ else None).content
            except _UseClient as e:
                self._via_client(e)
        kw = {"Range": range_} if range_ else {}
        resp = self.client.get_object(Bucket=self.bucket, Key=key, **kw)
        with resp["Body"] as body:
            return body.read()

    def _head(self, key: str) -> dict | None:
        """``{"ContentLength": int, "ETag": str}``, or None when missing."""
        try:
            d = self._direct()
            if d is not None:
                try:
                    h = d.send("HEAD", "HeadObject", key).headers
                    return {"ContentLength": int(h.get("content-length", 0)), "ETag": h.get("etag", ""),
                            "LastModified": h.get("last-modified")}
                except _UseClient as e:
                    self._via_client(e)
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            # the parsed datetime, as the direct path's header text
            head["LastModified"] = head["ResponseMetadata"]["HTTPHeaders"].get("last-modified")
            return head
        except bx.ClientError as e:
            code, status, _ = _error_code(e)
            if status == 404 or code in _NOT_FOUND:
                return None
            raise

    # -- the interface ------------------------------------------------------

    def create(self) -> None:
        def fn() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except bx.ClientError as e:
                code, status, _ = _error_code(e)
                if not (status == 404 or code in ("NoSuchBucket", "NotFound", "404")):
                    raise
            region = self.client.meta.region_name
            kw: dict[str, Any] = {}
            if region and region not in ("us-east-1", "aws-global") and "amazonaws.com" in self.server:
                kw["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.client.create_bucket(Bucket=self.bucket, **kw)
            except bx.ClientError as e:
                code, _, message = _error_code(e)
                if code == "BucketAlreadyOwnedByYou":
                    return
                if code == "BucketAlreadyExists":
                    raise StorageError(
                        f"create {self._where(None)}: bucket name {self.bucket!r} is taken by another account"
                    ) from e
                raise

        self._retry("create bucket", None, fn)

    def write(self, name: str, data: bytes, *, exclusive: bool = True) -> None:
        key = self._key(name)
        digest = hashlib.md5(data, usedforsecurity=False).digest()
        content_md5 = base64.b64encode(digest).decode()
        attempts = 0

        def put() -> None:
            if exclusive and not self._conditional_put:
                # The server ignores If-None-Match: check, then put (racy).
                if self._head(key) is not None:
                    if attempts > 1 and self._etag(key) == digest.hex():
                        return  # our own earlier attempt landed
                    raise ObjectExists(f"write {self._where(name)}: already exists")
                self._put(key, data, content_md5, exclusive=False)
                return
            try:
                self._put(key, data, content_md5, exclusive)
            except bx.ClientError as e:
                code, status, message = _error_code(e)
                if exclusive and (
                    code == "NotImplemented" or status == 501 or (status == 400 and "If-None-Match" in message)
                ):
                    log.warning(
                        "%s does not support conditional writes (If-None-Match); "
                        "falling back to check-then-write",
                        self.server,
                    )
                    self._conditional_put = False
                    self.atomic_exclusive = False
                    return put()
                if exclusive and (code == "PreconditionFailed" or status == 412) and attempts > 1:
                    # An earlier attempt may have landed before its answer was lost.
                    if self._etag(key) == digest.hex():
                        return
                raise

        def fn() -> None:
            nonlocal attempts
            attempts += 1
            put()

        self._retry("write", name, fn)

    def _etag(self, key: str) -> str | None:
        head = self._head(key)
        if head is None:
            return None
        return str(head.get("ETag", "")).strip('"').lower()

    def read(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"read {self._where(name)}: negative offset or length")
        if length == 0:
            if self.stat(name) is None:
                raise ObjectNotFound(f"read {self._where(name)}: not found")
            return b""
        range_ = None
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            range_ = f"bytes={offset}-{end}"

        def fn() -> bytes | None:
            try:
                return self._get(key, range_)
            except bx.ClientError as e:
                code, status, _ = _error_code(e)
                if code == "InvalidRange" or status == 416:
                    return None  # offset at or past the end
                raise

        data = self._retry("read", name, fn)
        if data is None:
            if self.stat(name) is None:
                raise ObjectNotFound(f"read {self._where(name)}: not found")
            return b""
        return data

    def stat(self, name: str) -> int | None:
        key = self._key(name)

        def fn() -> int | None:
            head = self._head(key)
            return None if head is None else int(head["ContentLength"])

        return self._retry("stat", name, fn)

    def now(self) -> float:
        return self._server_time()

    def mtime(self, name: str) -> float | None:
        key = self._key(name)

        def fn() -> float | None:
            head = self._head(key)
            if head is None:
                return None
            t = _http_time(head.get("LastModified"))
            if t is None:
                raise StorageError(f"stat {self._where(name)}: the server sent no Last-Modified time")
            return t

        return self._retry("stat", name, fn)

    def list_times(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        for name, size, obj in self._list_objects(prefix):
            t = obj.get("LastModified")
            if not isinstance(t, datetime.datetime):
                raise StorageError(f"list {self._where(prefix or None)}: no LastModified time for {name}")
            yield name, size, t.timestamp()

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, size, _ in self._list_objects(prefix):
            yield name, size

    def _list_objects(self, prefix: str) -> Iterator[tuple[str, int, dict]]:
        full = self.prefix + prefix
        cut = len(self.prefix)
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            page = self._retry("list", prefix or None, lambda kw=kw: self.client.list_objects_v2(**kw))
            for obj in page.get("Contents", ()) or ():
                key = obj["Key"]
                if key.endswith("/") or not key.startswith(full):
                    continue  # folder markers some stores show
                yield key[cut:], int(obj.get("Size", 0)), obj
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def delete(self, name: str) -> None:
        key = self._key(name)

        def fn() -> None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except bx.ClientError as e:
                code, status, _ = _error_code(e)
                if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
                    return
                raise

        self._retry("delete", name, fn)

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # pragma: no cover - best effort
                pass

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, server={self.server!r})"

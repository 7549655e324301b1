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
every PUT so the server rejects a body damaged in transit.

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
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
import threading
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


class _NoBody:
    def stream(self, *a, **kw):
        return iter(())


class _UseClient(Exception):
    """The direct path met something only the client handles (a redirect)."""


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
        if body is not None:
            # As the client does for PutObject: over https with Content-MD5
            # the body is not hashed again for the signature.
            req.context["payload_signing_enabled"] = False
        S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(req)
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
                                                   "HTTPHeaders": dict(resp.headers)}}, op)


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
            try:
                return fn()
            except StorageError:
                raise
            except Exception as e:
                err = self._translate(e, op, name)
                if err is e:
                    raise
                raise err from e

        return self._with_retries(op, f"{op} {self._where(name)}", attempt)

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
                    return {"ContentLength": int(h.get("content-length", 0)), "ETag": h.get("etag", "")}
                except _UseClient as e:
                    self._via_client(e)
            return self.client.head_object(Bucket=self.bucket, Key=key)
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

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
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
                yield key[cut:], int(obj.get("Size", 0))
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

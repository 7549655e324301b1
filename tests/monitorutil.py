"""Helpers for the monitor's tests: config files, machines that save, a
mailbox (aiosmtpd), a webhook receiver, a server in a thread, a browser.

The fixtures built on these (``smtp_server``, ``webhook_server``) are in
conftest.py."""

from __future__ import annotations

import email
import email.policy
import http.cookiejar
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASSWORD = "correct horse battery"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_hash_cache: dict[str, str] = {}


def password_hash(password: str = PASSWORD) -> str:
    """One Argon2id hash per password per session (each costs ~0.1 s)."""
    from rekkord.monitor.auth import hash_password

    if password not in _hash_cache:
        _hash_cache[password] = hash_password(password)
    return _hash_cache[password]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until it returns something true (returned); fail after
    ``timeout`` seconds (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# --- TOML ------------------------------------------------------------------------------------------


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_table(header: str, d: dict) -> str:
    lines = [header]
    subs = []
    for k, v in d.items():
        if isinstance(v, dict) and k in ("storage", "channels"):
            subs.append((k, v))
        else:
            lines.append(f"{k} = {toml_value(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in subs:
        if k == "storage":
            out += toml_table("[repository.storage]", v)
        else:
            for ch, rule in v.items():
                out += toml_table(f"[repository.channels.{json.dumps(ch)}]", rule)
    return out


def write_config(path, *, repositories: list[dict], monitor: dict | None = None, users: list[dict] | None = None,
                 mail: dict | None = None, webhooks: list[dict] | None = None, defaults: dict | None = None) -> str:
    parts = [toml_table("[monitor]", {"state_dir": str(os.path.join(os.path.dirname(path), "state")),
                                       **(monitor or {})})]
    if defaults:
        parts.append(toml_table("[defaults]", defaults))
    for r in repositories:
        parts.append(toml_table("[[repository]]", r))
    if mail:
        parts.append(toml_table("[mail]", mail))
    for w in webhooks or []:
        parts.append(toml_table("[[webhook]]", w))
    if users is None:
        users = [{"name": "alice", "role": "admin"}, {"name": "victor", "role": "viewer"}]
    for u in users:
        parts.append(toml_table("[[user]]", {"password_hash": password_hash(), **u}))
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return str(path)


# --- machines ----------------------------------------------------------------------------------------


@dataclass
class Machine:
    """A backed-up server: a write key of its own, a tree, a cache."""

    name: str
    repo_url: str
    storage_options: dict
    key: object
    key_file: str
    tree: str
    cache_dir: str

    def open(self, key=None):
        from rekkord.repository import Repository
        from rekkord.storage import open_storage

        return Repository.open(open_storage(self.repo_url, self.storage_options), key or self.key)

    def save(self, channel: str | None = None, *, time_ns: int | None = None, warn=None):
        from rekkord.cache import Cache, cache_path
        from rekkord.save import SaveOptions, Saver

        repo = self.open()
        cache = Cache(cache_path(self.cache_dir, repo.id, self.name))
        try:
            return Saver(repo, cache, SaveOptions(host=self.name), warn=warn).save(
                channel or f"{self.name}-files", [self.tree], time_ns=time_ns)
        finally:
            cache.close()
            repo.storage.close()

    def fail(self, channel: str | None = None, *, error_kind: str = "StorageError", exit_code: int = 7,
             message: str = "", warnings=(), time_ns: int | None = None):
        """What `rekkord save` leaves when the save fails (rekkord/report.py)."""
        from rekkord.report import write_report

        repo = self.open()
        try:
            return write_report(repo, channel=channel or f"{self.name}-files", host=self.name, status="failure",
                                exit_code=exit_code, error_kind=error_kind, error_message=message,
                                warnings=warnings, files=3, bytes_total=1000, time_ns=time_ns)
        finally:
            repo.storage.close()


def make_machine(tmp, master, repo_url: str, name: str, *, options: dict | None = None, files: dict | None = None):
    """Derive a write key for ``name`` (published), and give it a tree."""
    from rekkord.repository import Repository
    from rekkord.storage import open_storage

    key = master.derive("write", name)
    admin = Repository.open(open_storage(repo_url, options or {}), master)
    admin.publish_cert(key.cert)
    admin.storage.close()
    key_file = os.path.join(tmp, f"{name}.key")
    key.save(key_file)
    tree = os.path.join(tmp, f"tree-{name}")
    os.makedirs(tree, exist_ok=True)
    for rel, data in (files or {f"{name}-Patient-Record-Zebulon.txt": b"x" * 100,
                               f"Confidential-Ward-{name}/{name}-secret-plan.odt": os.urandom(3000)}).items():
        p = os.path.join(tree, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    return Machine(name, repo_url, options or {}, key, key_file, tree, os.path.join(tmp, "machine-caches"))


def new_repository(tmp, url: str, options: dict | None = None):
    """A fresh repository at ``url``: (master key, audit key file)."""
    from rekkord.keys import Key
    from rekkord.repository import Repository
    from rekkord.storage import open_storage

    master = Key.generate_master()
    storage = open_storage(url, options or {})
    Repository.init(storage, master)
    repo = Repository.open(storage, master)
    audit = master.derive("audit", "monitor")
    repo.publish_cert(audit.cert)
    storage.close()
    os.makedirs(tmp, exist_ok=True)
    path = os.path.join(tmp, f"audit-{master.repo[:8]}.key")
    audit.save(path)
    return master, path


def secret_names(machines) -> list[str]:
    """Every file and directory name of the machines' trees, and their paths."""
    out = []
    for m in machines:
        for dirpath, dirs, files in os.walk(m.tree):
            for n in dirs + files:
                out.append(n)
                out.append(os.path.join(dirpath, n))
    return out


# --- mail and webhooks -----------------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.cond:
            self.messages.append((list(envelope.rcpt_tos), msg))
            self.cond.notify_all()
        return "250 Message accepted"

    def subjects(self) -> list[str]:
        with self.cond:
            return [str(m["Subject"]) for _, m in self.messages]

    def find(self, *words: str):
        with self.cond:
            return [(r, m) for r, m in self.messages if all(w in str(m["Subject"]) for w in words)]

    def wait(self, *words: str, timeout: float = 30.0):
        return wait_for(lambda: self.find(*words), timeout, what=f"a mail with {words} (have {self.subjects()})")

    def everything(self) -> str:
        with self.cond:
            return "\n".join(m.as_string() for _, m in self.messages)


class SMTPServer:
    def __init__(self):
        self.port = free_port()
        self.mailbox = Mailbox()
        self.controller = None

    def start(self):
        from aiosmtpd.controller import Controller

        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self):
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def config(self, **extra) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "from": "monitor@example.org", "to": ["ops@example.org"],
                "timeout": "5s", **extra}


class WebhookSink:
    """An HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.fail_next = 0
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                data = self.rfile.read(n)
                with sink.cond:
                    if sink.fail_next:
                        sink.fail_next -= 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    sink.bodies.append(json.loads(data))
                    sink.headers.append(dict(self.headers))
                    sink.cond.notify_all()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def wait(self, pred, timeout: float = 30.0):
        return wait_for(lambda: [b for b in list(self.bodies) if pred(b)], timeout, what="a webhook call")


# --- a server in a thread --------------------------------------------------------------------------------------


@dataclass
class RunningServer:
    monitor: object
    base: str
    server: object
    thread: threading.Thread
    metrics_base: str | None = None
    extra: dict = field(default_factory=dict)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)
        self.monitor.state.close()


def serve(cfg, *, start_monitor: bool = True, clock=None) -> RunningServer:
    """The real ASGI app on uvicorn, on the config's listen address (and
    metrics listener), in a thread."""
    import uvicorn

    from rekkord.monitor.service import Monitor
    from rekkord.monitor.web import create_app

    monitor = Monitor(cfg, **({"clock": clock} if clock else {}))
    socks = []
    for host, port in [cfg.listen] + ([cfg.metrics_listen] if cfg.metrics_listen else []):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        socks.append(s)
    app = create_app(monitor, metrics_port=cfg.metrics_listen[1] if cfg.metrics_listen else None,
                     start=start_monitor)
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", log_config=None,
                                           proxy_headers=True, forwarded_allow_ips=cfg.trusted_proxies))
    t = threading.Thread(target=server.run, kwargs={"sockets": socks}, daemon=True)
    t.start()
    wait_for(lambda: server.started, 15, what="the server to start")
    base = f"http://{cfg.listen[0]}:{cfg.listen[1]}"
    mbase = f"http://{cfg.metrics_listen[0]}:{cfg.metrics_listen[1]}" if cfg.metrics_listen else None
    return RunningServer(monitor, base, server, t, mbase)


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


# --- an HTTP client with cookies ------------------------------------------------------------------------------


class Client:
    def __init__(self, base):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect())

    def req(self, method, path, data=None, headers=None):
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        r = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(r, timeout=20) as resp:
                return resp.status, dict(resp.headers), resp.read().decode(), resp.headers.get_all("Set-Cookie") or []
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode(), e.headers.get_all("Set-Cookie") or []

    def login(self, user="alice", password=PASSWORD, headers=None):
        status, _, page, _ = self.req("GET", "/login", headers=headers)
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        return self.req("POST", "/login", {"csrf": token, "next": "/", "username": user, "password": password},
                        headers=headers)

    def csrf(self, path="/"):
        return re.search(r'name="csrf" value="([^"]+)"', self.req("GET", path)[2]).group(1)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


def make_cookie(name, value):
    return http.cookiejar.Cookie(0, name, value, None, False, "127.0.0.1", False, False, "/", True, False, None,
                                 False, None, None, {})


def scrape(base: str, token: str | None = None) -> dict:
    """/metrics parsed with prometheus_client's own parser:
    {(name, frozenset(labels.items())): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text, _ = Client(base).req("GET", "/metrics",
                                          headers={"Authorization": f"Bearer {token}"} if token else {})
    assert status == 200, status
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def metric(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))

"""The web UI and /metrics: a Starlette app, Jinja2 templates, uPlot charts
served from our own static files (no CDN).

Security (docs/guide-monitoring.md, "Security"):

* every page but /login, /healthz and /static needs a session: local users
  of the config file, Argon2id password hashes, a random session token in an
  HttpOnly, SameSite=Strict cookie (Secure behind https), stored only as a
  hash, ended by logout or after ``session_lifetime``;
* every form carries a CSRF token (the session's; a login form has its own
  cookie-bound one) and cross-origin POSTs are refused;
* failed logins are limited per client address and per user name;
* viewers read; admins also acknowledge alerts and start checks;
* /metrics needs the bearer token (``metrics_token``), or is served alone
  on its own listener (``metrics_listen``);
* nothing served holds a key, a credential, a password hash or a token —
  and, the monitor holding audit keys only, no file name;
* strict Content-Security-Policy: scripts and styles from /static only.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import re
import secrets
import time
from urllib.parse import quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from .alerts import span, when
from .auth import RateLimiter, new_token, token_hash, verify_password
from .metrics import exposition
from .watch import channel_overview, damage_problems, human_bytes

log = logging.getLogger("rekkord.monitor")
HERE = os.path.dirname(__file__)
SESSION_COOKIE = "rekkord_session"
LOGIN_COOKIE = "rekkord_login"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class SecurityHeaders:
    """Pure ASGI middleware: security headers on every response."""

    def __init__(self, app, hsts: bool):
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"x-frame-options", b"DENY"), (b"referrer-policy", b"same-origin"),
                         (b"cross-origin-opener-policy", b"same-origin")]
                if not static and b"cache-control" not in names:
                    extra.append((b"cache-control", b"no-store"))
                if self.hsts:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers + [(k, v) for k, v in extra if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = when
    env.filters["span"] = lambda s: span(s) if s is not None else "-"
    env.filters["bytes"] = human_bytes
    env.filters["ns"] = lambda t: when(t / 1e9) if t else "-"
    env.filters["secs"] = lambda s: "-" if s is None else f"{s:.2f} s" if s < 60 else span(s)
    return Jinja2Templates(env=env)


def create_app(monitor, *, metrics_port: int | None = None, start: bool = True) -> Starlette:
    """The ASGI app.  ``metrics_port``: requests arriving on that port are
    the metrics listener's (only /metrics, no token).  ``start``: run the
    monitor's threads for the app's lifetime."""
    cfg = monitor.config
    state = monitor.state
    templates = _templates()
    limiter = RateLimiter(cfg.login_attempts, cfg.login_window)

    def on_metrics_port(request: Request) -> bool:
        server = request.scope.get("server")
        return metrics_port is not None and server is not None and server[1] == metrics_port

    def session_of(request: Request):
        token = request.cookies.get(SESSION_COOKIE)
        if not token or len(token) > 200:
            return None, None
        s = state.session(token_hash(token))
        if s is None:
            return None, None
        user = cfg.users.get(s["user"])  # a user removed from the config is logged out
        return (user, s) if user is not None else (None, None)

    def render(request: Request, name: str, ctx: dict, status: int = 200, user=None, sess=None) -> Response:
        base = {"user": user, "csrf": sess["csrf"] if sess else "", "now": monitor.clock()}
        return templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)

    def login_redirect(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    public = urlsplit(cfg.base_url).netloc if cfg.base_url else None

    def same_origin(request: Request) -> bool:
        """No Origin (an old browser, curl), or ours: the Host we were asked
        for, or base_url's (behind a proxy that rewrites Host)."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        netloc = urlsplit(origin).netloc if origin != "null" else None
        return netloc is not None and netloc in (request.headers.get("host", ""), public)

    async def checked_form(request: Request, sess) -> dict:
        if not same_origin(request):
            raise HTTPException(403, "cross-origin request refused")
        form = await request.form(max_fields=20, max_files=0)
        token = form.get("csrf", "")
        if not isinstance(token, str) or not sess or not hmac.compare_digest(token.encode(), sess["csrf"].encode()):
            raise HTTPException(403, "missing or wrong CSRF token (reload the page)")
        return form

    # ---- pages ------------------------------------------------------------------------------------

    async def login_page(request: Request):
        user, sess = session_of(request)
        nxt = _safe_next(request.query_params.get("next"))
        if user is not None:
            return RedirectResponse(nxt, status_code=303)
        return _login_form(request, nxt, None, 200)

    def _login_form(request: Request, nxt: str, error: str | None, status: int, headers=None):
        token = secrets.token_urlsafe(24)
        resp = render(request, "login.html", {"next": nxt, "error": error, "login_csrf": token}, status)
        resp.set_cookie(LOGIN_COOKIE, token, max_age=3600, httponly=True, samesite="strict",
                        secure=cfg.secure_cookies, path="/login")
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    async def login(request: Request):
        if not same_origin(request):
            raise HTTPException(403, "cross-origin request refused")
        form = await request.form(max_fields=10, max_files=0)
        nxt = _safe_next(form.get("next"))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        token = form.get("csrf", "")
        if not cookie or not isinstance(token, str) or not hmac.compare_digest(token.encode(), cookie.encode()):
            return _login_form(request, nxt, "The form expired; please try again.", 403)
        name = form.get("username", "")
        password = form.get("password", "")
        if not isinstance(name, str) or not isinstance(password, str):
            return _login_form(request, nxt, "Wrong user name or password.", 401)
        name = name.strip()[:64]
        client = request.client.host if request.client else "?"
        keys = (f"address:{client}", f"user:{name}")
        wait = limiter.wait(*keys)
        if wait > 0:
            log.warning("login for %r from %s refused: too many failed attempts", name, client)
            return _login_form(request, nxt, f"Too many failed logins; try again in {span(wait + 1)}.", 429,
                               {"Retry-After": str(int(wait) + 1)})
        user = cfg.users.get(name)
        ok = await run_in_threadpool(verify_password, user.password_hash if user else None, password)
        if not ok:
            limiter.failed(*keys)
            log.warning("failed login for %r from %s", name, client)
            return _login_form(request, nxt, "Wrong user name or password.", 401)
        limiter.succeeded(*keys)
        token = new_token()
        state.add_session(token_hash(token), user.name, secrets.token_urlsafe(24), cfg.session_lifetime)
        log.info("user %s logged in from %s", user.name, client)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, max_age=int(cfg.session_lifetime), httponly=True, samesite="strict",
                        secure=cfg.secure_cookies, path="/")
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    async def logout(request: Request):
        user, sess = session_of(request)
        if user is not None:
            await checked_form(request, sess)
            state.end_session(sess["token_hash"])
            log.info("user %s logged out", user.name)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    async def overview(request: Request):
        user, sess = session_of(request)
        if user is None:
            return login_redirect(request)
        now = monitor.clock()
        rows = [_repo_summary(monitor, rc, now) for rc in cfg.repos]
        return render(request, "overview.html", {"rows": rows, "open_alerts": state.open_alerts()}, user=user,
                      sess=sess)

    def repo_or_404(request: Request):
        rc = cfg.repo(request.path_params["name"])
        if rc is None:
            raise HTTPException(404, "no such repository")
        return rc

    async def repo_page(request: Request):
        user, sess = session_of(request)
        if user is None:
            return login_redirect(request)
        rc = repo_or_404(request)
        now = monitor.clock()
        summary = _repo_summary(monitor, rc, now)
        checks = state.checks(rc.name, 20)
        reports = state.q("SELECT * FROM reports WHERE repo = ? AND gone IS NULL ORDER BY time_ns DESC LIMIT 30",
                          (rc.name,))
        untrusted = state.q("SELECT * FROM snapshots WHERE repo = ? AND gone IS NULL AND trusted = 0 "
                            "ORDER BY time_ns DESC LIMIT 30", (rc.name,))
        return render(request, "repo.html", {"r": summary, "checks": list(reversed(checks)), "reports": reports,
                                             "untrusted": untrusted, "alerts": state.alerts(rc.name, 100)},
                      user=user, sess=sess)

    async def repo_data(request: Request):
        user, _ = session_of(request)
        if user is None:
            raise HTTPException(401, "log in first")
        rc = repo_or_404(request)
        return JSONResponse(_chart_data(state, rc.name))

    async def alerts_page(request: Request):
        user, sess = session_of(request)
        if user is None:
            return login_redirect(request)
        return render(request, "alerts.html", {"alerts": state.alerts(None, 500)}, user=user, sess=sess)

    def admin(request: Request):
        user, sess = session_of(request)
        if user is None:
            raise HTTPException(401, "log in first")
        if user.role != "admin":
            raise HTTPException(403, "this needs an admin account")
        return user, sess

    async def check_now(request: Request):
        user, sess = admin(request)
        await checked_form(request, sess)
        rc = repo_or_404(request)
        monitor.request_check(rc.name)
        log.info("check of %s requested by %s", rc.name, user.name)
        return RedirectResponse(f"/repo/{quote(rc.name)}", status_code=303)

    async def acknowledge(request: Request):
        user, sess = admin(request)
        form = await checked_form(request, sess)
        try:
            aid = int(request.path_params["id"])
        except ValueError:
            raise HTTPException(404, "no such alert") from None
        a = state.one("SELECT * FROM alerts WHERE id = ?", (aid,))
        if a is None:
            raise HTTPException(404, "no such alert")
        await run_in_threadpool(monitor.acknowledge, aid, user.name)
        back = _safe_next(form.get("next")) if form.get("next") else f"/repo/{quote(a['repo'])}"
        return RedirectResponse(back, status_code=303)

    async def metrics(request: Request):
        if not on_metrics_port(request):
            if not cfg.metrics_token:
                raise HTTPException(404, "not found")
            auth = request.headers.get("authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {cfg.metrics_token}".encode()):
                return PlainTextResponse("a bearer token is needed\n", status_code=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="rekkord monitor metrics"'})
        body, ctype = await run_in_threadpool(exposition, monitor)
        return Response(body, media_type=ctype)

    async def healthz(request: Request):
        return PlainTextResponse("ok\n")

    async def on_error(request: Request, exc: HTTPException):
        if on_metrics_port(request) or request.url.path.endswith(".json") or request.url.path == "/metrics":
            return PlainTextResponse(f"{exc.detail}\n", status_code=exc.status_code)
        user, sess = session_of(request)
        return render(request, "error.html", {"status": exc.status_code, "detail": exc.detail}, exc.status_code,
                      user=user, sess=sess)

    routes = [
        Route("/", overview), Route("/login", login_page), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]), Route("/alerts", alerts_page),
        Route("/repo/{name}", repo_page), Route("/repo/{name}/data.json", repo_data),
        Route("/repo/{name}/check", check_now, methods=["POST"]),
        Route("/alerts/{id}/ack", acknowledge, methods=["POST"]),
        Route("/metrics", metrics), Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if start:
            monitor.start()
        try:
            yield
        finally:
            if start:
                monitor.stop()

    inner = Starlette(routes=routes, exception_handlers={HTTPException: on_error}, lifespan=lifespan)

    async def app(scope, receive, send):
        # The metrics listener serves /metrics and nothing else.
        if scope["type"] == "http" and metrics_port is not None and scope.get("server") \
                and scope["server"][1] == metrics_port and scope["path"] != "/metrics":
            return await PlainTextResponse("not found\n", status_code=404)(scope, receive, send)
        return await inner(scope, receive, send)

    return SecurityHeaders(app, hsts=bool(cfg.tls_cert) or cfg.secure_cookies)


def _safe_next(value) -> str:
    """A local path to go back to after login (never another site)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value \
            or len(value) > 500 or any(ord(c) < 32 for c in value):
        return "/"
    return value


def _display_url(url: str) -> str:
    """A repository URL without a password, should one be written in it."""
    return re.sub(r"^([a-z0-9]+://[^/@:]*):[^/@]*@", r"\1:***@", url)


def _repo_summary(monitor, rc, now: float) -> dict:
    state = monitor.state
    r = state.repository(rc.name)
    last = state.last_check(rc.name)
    chans = channel_overview(state, rc, now)
    alerts = state.open_alerts(rc.name)
    unreachable = any(a["kind"] == "unreachable" for a in alerts) or (r["failed_polls"] or 0) > 0
    status = ("unreachable" if unreachable else "damaged" if damage_problems(last)
              else "failed" if any(c["status"] == "failed" for c in chans)
              else "stale" if any(c["stale"] for c in chans)
              else "untrusted" if any(c["untrusted"] for c in chans)
              else "warning" if any(c["status"] == "warning" for c in chans) or alerts
              else "unknown" if r["last_poll_ok"] is None else "fresh")
    nsnap = state.one("SELECT count(*) FROM snapshots WHERE repo = ? AND gone IS NULL", (rc.name,))[0]
    return {"name": rc.name, "url": _display_url(rc.url), "status": status, "row": r, "check": last, "channels": chans,
            "alerts": alerts, "snapshots": nsnap, "check_every": rc.check_every,
            "next_check": (last["started"] + rc.check_every) if last else None}


def _chart_data(state, name: str) -> dict:
    sizes = state.q("SELECT time, bytes, objects FROM sizes WHERE repo = ? ORDER BY time", (name,))
    snaps = state.q("SELECT channel, time_ns, bytes_total, bytes_stored FROM snapshots WHERE repo = ? AND trusted = 1 "
                    "ORDER BY time_ns", (name,))
    checks = state.q("SELECT started, duration, status FROM checks WHERE repo = ? ORDER BY started", (name,))
    channels: dict[str, list] = {}
    per_day: dict[int, int] = {}
    for s in snaps:
        t = s["time_ns"] / 1e9
        channels.setdefault(s["channel"], []).append([t, s["bytes_total"]])
        day = int(t // 86400 * 86400)
        per_day[day] = per_day.get(day, 0) + (s["bytes_stored"] or 0)
    return {
        "sizes": [[r["time"], r["bytes"]] for r in sizes],
        "snapshots": channels,
        "new_per_day": sorted([d, b] for d, b in per_day.items()),
        "checks": [[r["started"], r["duration"], r["status"]] for r in checks],
        "generated": time.time(),
    }

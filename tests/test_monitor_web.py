"""The monitor's web UI and /metrics (rekkord/monitor/web.py), served by
uvicorn and driven in Debian's chromium through Playwright: log in, watch a
channel turn stale, see the plots, see the alert and its resolution; and,
over plain HTTP, the security of the service: sessions, CSRF, login rate
limits, roles, the metrics token and listener, headers, and nothing secret
served.  One server and one browser for the module.

Set REKKORD_SCREENSHOTS=DIR to keep the screenshots (docs/ has them)."""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse

import pytest

pytest.importorskip("starlette")
pytest.importorskip("playwright")

from monitorutil import (  # noqa: E402
    CHROMIUM,
    Client,
    PASSWORD,
    free_port,
    launch_chromium,
    make_cookie,
    make_machine,
    new_repository,
    password_hash,
    secret_names,
    serve,
    wait_for,
    write_config,
)
from rekkord.monitor.config import load  # noqa: E402

TOKEN = "metrics-token-0123456789"
SMTP_PASSWORD = "smtp-password-Quetzal"
S3_SECRET = "s3-secret-Wombat-4711"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    url = str(tmp / "repo")
    master, audit = new_repository(str(tmp / "keys"), url)
    web = make_machine(str(tmp), master, url, "web01")
    db = make_machine(str(tmp), master, url, "db01")
    url2 = str(tmp / "repo2")
    master2, audit2 = new_repository(str(tmp / "keys2"), url2)
    lab = make_machine(str(tmp), master2, url2, "lab01")
    path = write_config(
        tmp / "monitor.toml",
        monitor={"listen": f"127.0.0.1:{free_port()}", "metrics_listen": f"127.0.0.1:{free_port()}",
                 "metrics_token": TOKEN, "poll_every": "0.5s", "check_every": "1h", "login_attempts": 3,
                 "login_window": "10m"},
        repositories=[{"name": "clinic", "url": url, "key_file": audit, "storage": {"secret_access_key": S3_SECRET},
                       "channels": {"web01-files": {"max_age": "5s"}}},
                      {"name": "lab", "url": url2, "key_file": audit2}],
        mail={"host": "127.0.0.1", "port": 1, "to": ["ops@example.org"], "username": "mon",
              "password": SMTP_PASSWORD, "timeout": "1s"})
    history(load(path), web, db, lab)
    web.save()
    db.save()
    db.fail(message="cannot open /srv/db01-Patient-Record-Zebulon.txt")
    lab.save()
    srv = serve(load(path))
    yield srv, web, db, lab, tmp
    srv.stop()


def history(cfg, web, db, lab, days=12):
    """Twelve nights of saves (growing trees), polls and checks, and one
    failed save that was fixed the next night: what the plots and the alert
    history show."""
    from rekkord.monitor.service import Monitor

    now = [0.0]
    mon = Monitor(cfg, clock=lambda: now[0])
    try:
        for day in range(days, 0, -1):
            now[0] = time.time() - day * 86400
            ns = int(now[0] * 1e9)
            for m, grow in ((web, 20_000), (db, 60_000), (lab, 5_000)):
                if day == days:  # a first save of some size: later nights add a few per cent
                    with open(os.path.join(m.tree, "base.bin"), "wb") as f:
                        f.write(os.urandom(grow * 30))
                with open(os.path.join(m.tree, f"log-{day:02d}.bin"), "wb") as f:
                    f.write(os.urandom(grow * (1 + day % 3)))
                if not (m is db and day == 5):
                    m.save(time_ns=ns)
            if day == 5:
                db.fail(time_ns=ns)
            for name in ("clinic", "lab"):
                mon.poll(name)
                mon.check(name)
    finally:
        mon.close()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; see .ci/install)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def shot(page, name):
    d = os.environ.get("REKKORD_SCREENSHOTS")
    if d:
        os.makedirs(d, exist_ok=True)
        page.screenshot(path=os.path.join(d, name), full_page=True)


def login(page, base, user="alice", password=PASSWORD):
    page.goto(base + "/")
    assert page.url.startswith(base + "/login?next=/")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def reloaded(page) -> bool:
    page.reload()
    return True


def channel_status(page, channel):
    return page.locator(f"tr[data-channel='{channel}'] .badge").first.inner_text()


def test_a_user_logs_in_watches_a_channel_turn_stale_and_sees_the_plots_and_alerts(site, browser):
    srv, web, db, lab, tmp = site
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    # Login: a wrong password first.
    login(page, srv.base, password="not it")
    assert page.locator(".error").inner_text() == "Wrong user name or password."
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(srv.base + "/")
    problems.clear()  # (the browser logs the 401 of the failed login)
    cookie = next(c for c in ctx.cookies() if c["name"] == "rekkord_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    # The overview: both repositories, their channels, db01's failed save.
    assert page.locator("section.repo").count() == 2
    wait_for(lambda: reloaded(page) and channel_status(page, "db01-files") == "failed", what="db01 failed")
    # web01's channel may be 5 s old at most: watch it turn stale.
    assert channel_status(page, "web01-files") in ("fresh", "stale")
    wait_for(lambda: reloaded(page) and channel_status(page, "web01-files") == "stale", 30, 0.5, "a stale channel")
    wait_for(lambda: reloaded(page) and page.locator("section.open-alerts li[data-kind=stale]").count() == 1,
             what="the stale alert on the overview")
    assert "clinic: channel web01-files is stale" in page.locator("section.open-alerts").inner_text()
    assert page.locator("#repo-clinic .badge").first.inner_text() in ("failed", "stale")
    shot(page, "monitor-overview.png")
    # The repository page: plots drawn by uPlot from data.json, the alert, the failure report.
    page.click("#repo-clinic h2 a")
    page.wait_for_url(srv.base + "/repo/clinic")
    page.wait_for_selector(".charts[data-ready='1']")
    assert page.locator(".chart canvas").count() >= 3
    assert page.locator(".chart[data-chart='sizes'] canvas").count() == 1
    assert "HookFailed" in page.content() or "StorageError" in page.locator("table.reports").inner_text()
    assert "clinic: channel web01-files is stale" in page.locator("table.alerts").first.inner_text()
    shot(page, "monitor-repository.png")
    # Fixed: web01 saves again; the alert resolves and the history says when.
    web.save()
    history = page.locator("table.alerts").last
    seen = []  # web01's status at each reload: fresh for its first 5 s (on a loaded machine, a
    # reload can take long enough that the first one to show the resolved alert shows it stale again)

    def resolved():
        if not reloaded(page):
            return False
        seen.append(channel_status(page, "web01-files"))
        return history.locator("tr.resolved[data-kind=stale]").count() and "fresh" in seen

    wait_for(resolved, 30, 0.5, "the resolved stale alert and web01 fresh")
    page.goto(srv.base + "/alerts")
    row = page.locator("tr.resolved[data-kind=stale]").first
    assert "clinic: channel web01-files is stale" in row.inner_text() and row.locator(".resolved-at").count() == 1
    row.locator("summary").click()
    assert "latest trusted snapshot of channel web01-files" in row.locator("pre").inner_text()
    shot(page, "monitor-alerts.png")
    # An admin acknowledges the failure alert (a CSRF-protected form).
    page.goto(srv.base + "/repo/clinic")
    page.locator("table.alerts").first.locator("tr[data-kind=failed] button").click()
    page.wait_for_url(srv.base + "/repo/clinic")
    assert "acknowledged by alice" in page.locator("table.alerts").first.inner_text()
    # Readable on a phone: nothing wider than the screen but the scrolling tables.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True,
                                has_touch=True, storage_state=ctx.storage_state())
    p2 = phone.new_page()
    p2.goto(srv.base + "/repo/clinic")
    p2.wait_for_selector(".charts[data-ready='1']")
    assert p2.evaluate("document.documentElement.scrollWidth") <= 390
    assert p2.evaluate("document.querySelector('.chart canvas').getBoundingClientRect().width") <= 390
    shot(p2, "monitor-phone.png")
    p2.goto(srv.base + "/")
    assert p2.evaluate("document.documentElement.scrollWidth") <= 390
    phone.close()
    # Logging out ends the session.
    page.click("button.link")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(srv.base + "/repo/clinic")
    assert "/login?next=/repo/clinic" in page.url
    ctx.close()
    assert problems == []  # no script error, no Content-Security-Policy violation


def test_a_viewer_reads_but_cannot_act(site, browser):
    srv, *_ = site
    ctx = browser.new_context()
    page = ctx.new_page()
    login(page, srv.base, "victor")
    page.wait_for_url(srv.base + "/")
    page.goto(srv.base + "/repo/clinic")
    assert page.locator("form[action$='/check']").count() == 0
    assert page.locator("form[action$='/ack']").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    r = page.request.post(srv.base + "/repo/clinic/check", form={"csrf": csrf})
    assert r.status == 403 and "admin" in r.text()
    ctx.close()


# --- plain HTTP ------------------------------------------------------------------------------------------


def test_sessions_and_cookies(site):
    srv, *_ = site
    c = Client(srv.base)
    status, headers, _, _ = c.req("GET", "/repo/clinic")
    assert status == 303 and headers["location"] == "/login?next=/repo/clinic"
    assert c.req("GET", "/repo/clinic/data.json")[0] == 401
    status, headers, _, cookies = c.login()
    assert status == 303 and headers["location"] == "/"
    (sc,) = [x for x in cookies if x.startswith("rekkord_session=")]
    attrs = {a.strip().split("=")[0].lower() for a in sc.split(";")[1:]}
    assert {"httponly", "samesite", "path", "max-age"} <= attrs and "samesite=strict" in sc.lower()
    assert "secure" not in attrs  # plain http on loopback (secure_cookies follows https)
    token = sc.split(";")[0].split("=", 1)[1]
    assert srv.monitor.state.q("SELECT count(*) FROM sessions WHERE token_hash = ?", (token,))[0][0] == 0
    assert c.req("GET", "/")[0] == 200
    d = json.loads(c.req("GET", "/repo/clinic/data.json")[2])
    assert set(d) >= {"sizes", "snapshots", "new_per_day", "checks"} and d["sizes"]
    # A made-up token is nobody's session.
    other = Client(srv.base)
    other.jar.set_cookie(make_cookie("rekkord_session", "x" * 43))
    assert other.req("GET", "/")[0] == 303
    # Logout needs the CSRF token; then the cookie is dead.
    assert c.req("POST", "/logout", {})[0] == 403
    assert c.req("POST", "/logout", {"csrf": c.csrf()})[0] == 303
    replay = Client(srv.base)
    replay.jar.set_cookie(make_cookie("rekkord_session", token))
    assert replay.req("GET", "/")[0] == 303


def test_csrf_and_cross_origin_posts_are_refused(site):
    srv, *_ = site
    c = Client(srv.base)
    # A login form posted without its cookie-bound token (from another site).
    status, _, page, _ = c.req("POST", "/login", {"username": "alice", "password": PASSWORD, "csrf": "x"})
    assert status == 403 and "The form expired" in page
    c.login()
    token = c.csrf("/repo/clinic")
    assert c.req("POST", "/repo/clinic/check", {})[0] == 403
    assert c.req("POST", "/repo/clinic/check", {"csrf": "wrong"})[0] == 403
    status, _, page, _ = c.req("POST", "/repo/clinic/check", {"csrf": token},
                               headers={"Origin": "https://evil.example"})
    assert status == 403 and "cross-origin" in page
    assert c.req("POST", "/repo/clinic/check", {"csrf": token}, headers={"Origin": srv.base})[0] == 303
    wait_for(lambda: len(srv.monitor.state.checks("clinic")) >= 2, what="the requested check")
    # After login, "next" never leads to another site.
    for nxt in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        c2 = Client(srv.base)
        page = c2.req("GET", "/login?next=" + urllib.parse.quote(nxt))[2]
        t = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        status, headers, _, _ = c2.req("POST", "/login", {"csrf": t, "next": nxt, "username": "alice",
                                                          "password": PASSWORD})
        assert status == 303 and headers["location"] == "/"


def test_failed_logins_are_rate_limited(site):
    """Per client address (as the trusted reverse proxy on loopback says, in
    X-Forwarded-For) and per user name."""
    srv, *_ = site

    def from_(addr):
        return {"X-Forwarded-For": addr}

    c = Client(srv.base)
    for _ in range(3):
        assert c.login("carol", "guess", from_("192.0.2.1"))[0] == 401  # unknown user: as a wrong password
    status, headers, page, _ = c.login("carol", "guess", from_("192.0.2.1"))
    assert status == 429 and int(headers["retry-after"]) > 500 and "Too many failed logins" in page
    assert c.login("carol", "guess", from_("192.0.2.2"))[0] == 429  # the name, from anywhere
    assert c.login("victor", PASSWORD, from_("192.0.2.1"))[0] == 429  # the address, for any name
    assert c.login("victor", PASSWORD, from_("192.0.2.3"))[0] == 303


def test_metrics_need_the_token_or_their_own_listener(site):
    from prometheus_client.parser import text_string_to_metric_families

    srv, *_ = site
    c = Client(srv.base)
    status, headers, _, _ = c.req("GET", "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert c.req("GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
    status, headers, text, _ = c.req("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"rekkord_channel_age_seconds", "rekkord_channel_stale", "rekkord_check_last_status",
            "rekkord_repository_bytes", "rekkord_repository_snapshots", "rekkord_alerts_firing",
            "rekkord_channel_failed", "rekkord_check_last_timestamp_seconds"} <= set(fams)
    failed = {s.labels["channel"]: s.value for s in fams["rekkord_channel_failed"].samples
              if s.labels["repository"] == "clinic"}
    assert failed["db01-files"] == 1 and failed["web01-files"] == 0
    up = {s.labels["repository"]: s.value for s in fams["rekkord_repository_up"].samples}
    assert up == {"clinic": 1, "lab": 1}
    # The metrics listener: /metrics without a token, nothing else.
    m = Client(srv.metrics_base)
    status, _, text2, _ = m.req("GET", "/metrics")
    assert status == 200 and "rekkord_repository_bytes" in text2
    assert m.req("GET", "/")[0] == 404 and m.req("GET", "/login")[0] == 404
    assert m.req("GET", "/static/monitor.css")[0] == 404


def test_security_headers_and_nothing_secret_is_served(site):
    srv, web, db, lab, tmp = site
    c = Client(srv.base)
    c.login()
    pages = ["/", "/alerts", "/repo/clinic", "/repo/lab", "/repo/clinic/data.json", "/repo/nope", "/login",
             "/static/monitor.js", "/static/monitor.css", "/static/vendor/uPlot.iife.min.js", "/healthz"]
    served = []
    for p in pages:
        status, headers, body, _ = c.req("GET", p)
        assert status == {"/repo/nope": 404, "/login": 303}.get(p, 200), p  # (logged in: /login goes to /)
        assert headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        if not p.startswith("/static/"):
            assert headers["cache-control"] == "no-store"
        served.append(body)
    served.append(c.req("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[2])
    everything = "\n".join(served)
    assert "<script>" not in everything  # no inline script anywhere
    secrets = [TOKEN, SMTP_PASSWORD, S3_SECRET, password_hash(), "$argon2id$", "BEGIN REKKORD KEY"]
    cfg = srv.monitor.config
    for rc in cfg.repos:
        k = rc.load_key()
        secrets += [k.psk.hex(), k.log_sk.hex(), k.sign_seed.hex(), open(rc.key_file).read().split("\n")[3]]
    for s in secrets:
        assert s not in everything, s[:20]
    for name in secret_names([web, db, lab]):
        assert os.path.basename(name) not in everything, name


def test_secure_cookies_behind_https(tmp_path, site):
    srv0, *_ = site
    cfg = load(write_config(tmp_path / "m.toml", monitor={
        "listen": f"127.0.0.1:{free_port()}", "base_url": "https://backups.example.org", "poll_every": "1h"},
        repositories=[{"name": "clinic", "url": srv0.monitor.config.repos[0].url,
                       "key_file": srv0.monitor.config.repos[0].key_file}]))
    assert cfg.secure_cookies
    srv = serve(cfg, start_monitor=False)
    try:
        c = Client(srv.base)
        _, _, page, cookies = c.req("GET", "/login")
        (lc,) = [x for x in cookies if x.startswith("rekkord_login=")]
        assert "; secure" in lc.lower()
        token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        # (a browser would send the Secure cookie over https only: here, by hand)
        status, headers, _, cookies = c.req("POST", "/login", {"csrf": token, "username": "alice",
                                                               "password": PASSWORD},
                                            headers={"Cookie": lc.split(";")[0]})
        assert status == 303
        (sc,) = [x for x in cookies if x.startswith("rekkord_session=")]
        assert "; secure" in sc.lower() and "httponly" in sc.lower() and "samesite=strict" in sc.lower()
        assert headers["strict-transport-security"] == "max-age=31536000"
    finally:
        srv.stop()


def test_names_from_a_hostile_repository_are_escaped(tmp_path):
    """Channel and host names are a writer's choice: shown, never executed."""
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    evil = make_machine(str(tmp_path), master, url, "web01")
    from rekkord.cache import Cache, cache_path
    from rekkord.save import SaveOptions, Saver

    repo = evil.open()
    chan, host = "<img src=x onerror=alert(1)>", '"><script>alert(2)</script>'
    Saver(repo, Cache(cache_path(str(tmp_path / "c"), repo.id, "w")), SaveOptions(host=host)).save(chan, [evil.tree])
    cfg = load(write_config(tmp_path / "m.toml", monitor={"listen": f"127.0.0.1:{free_port()}"},
                            repositories=[{"name": "clinic", "url": url, "key_file": audit}]))
    srv = serve(cfg, start_monitor=False)
    try:
        srv.monitor.run_once()
        c = Client(srv.base)
        c.login()
        for page in (c.req("GET", "/")[2], c.req("GET", "/repo/clinic")[2]):
            assert chan not in page and "<script>alert" not in page
            assert "&lt;img src=x onerror=alert(1)&gt;" in page
        assert json.loads(c.req("GET", "/repo/clinic/data.json")[2])["snapshots"] == {chan: ANY_LIST}
    finally:
        srv.stop()


class _AnyList:
    def __eq__(self, other):
        return isinstance(other, list)


ANY_LIST = _AnyList()

"""rekkord monitor through the real CLI: check-config, passwd, run --once,
and issue 13's judging scenario end to end with `rekkord monitor run` as a
service: two repositories (a local one and one on S3), three machines
saving with `rekkord save`; one machine stops saving, a blob is damaged, a
key is revoked (its machine saves on), a save fails; within one check
period the dashboard, /metrics and the mailbox show each, naming no file;
each resolves when fixed; a restart keeps the history."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

pytest.importorskip("starlette")

from monitorutil import (  # noqa: E402
    Client,
    free_port,
    metric,
    new_repository,
    scrape,
    secret_names,
    wait_for,
    write_config,
)

TOKEN = "scenario-metrics-token-42"


def cli(*args, env=None, input=None, timeout=120, cwd=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "rekkord", *map(str, args)], env=e, input=input,
                          capture_output=True, timeout=timeout, cwd=cwd)


def test_check_config_names_every_problem_and_exits_2(tmp_path):
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    good = write_config(tmp_path / "good.toml", repositories=[{"name": "clinic", "url": url, "key_file": audit}],
                        monitor={"metrics_token": TOKEN})
    p = cli("monitor", "check-config", good)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == (f"{good}: OK: 1 repositories (clinic), 2 users, alerts by the dashboard only, "
                                 "listening on 127.0.0.1:8750\n")
    assert p.stderr.decode() == f"rekkord: note: {good}: no [mail] and no [[webhook]]: alerts are shown on the " \
                                "dashboard only\n"
    p = cli("monitor", "check-config", good, "--connect")
    assert p.returncode == 0 and f"clinic: repository {master.repo} opened, 0 snapshot records" in p.stdout.decode()
    full = master.derive("full", "ops")
    full.save(str(tmp_path / "full.key"))
    bad = write_config(tmp_path / "bad.toml", repositories=[
        {"name": "clinic", "url": url, "key_file": str(tmp_path / "full.key"), "max_age": "tomorrow"}],
        monitor={"listen": "127.0.0.1", "poll_every": "-1m"}, users=[])
    p = cli("monitor", "check-config", bad)
    assert p.returncode == 2 and p.stdout == b""
    lines = p.stderr.decode().splitlines()
    assert lines == [
        f"rekkord: error: {bad}: [monitor]: poll_every: '-1m' is not a duration (use e.g. 90s, 15m, 26h, 2d, 1w, "
        "1d12h)",
        f"rekkord: error: {bad}: [[repository]] #1 (clinic): max_age: 'tomorrow' is not a duration (use e.g. 90s, "
        "15m, 26h, 2d, 1w, 1d12h)",
        f"rekkord: error: {bad}: [[repository]] #1 (clinic): key_file: {tmp_path / 'full.key'} is a full key; the "
        "monitor takes audit keys only, so that it can never read a file or a file name (derive one with `rekkord "
        "key derive --role audit`)",
        f"rekkord: error: {bad}: no [[user]]: nobody could log in (add one with `rekkord monitor passwd NAME`)",
        f"rekkord: note: {bad}: [monitor] neither metrics_token nor metrics_listen is set: /metrics is not served",
        f"rekkord: note: {bad}: no [mail] and no [[webhook]]: alerts are shown on the dashboard only",
    ]
    # run refuses the same file with one line, exit 2.
    p = cli("monitor", "run", bad)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1 and b"is a full key" in p.stderr
    assert b"Traceback" not in p.stderr
    p = cli("monitor", "check-config", str(tmp_path / "missing.toml"))
    assert p.returncode == 2 and p.stderr.decode() == (f"rekkord: error: monitor config {tmp_path / 'missing.toml'} "
                                                       "does not exist\n")
    p = cli("monitor", "run")
    assert p.returncode == 2 and b"no monitor config given" in p.stderr


def test_passwd_prints_a_user_entry_that_logs_in(tmp_path):
    p = cli("monitor", "passwd", "carol", "--role", "admin", "--password-stdin", input=b"s3cret-enough\n")
    assert p.returncode == 0, p.stderr
    import tomllib

    entry = tomllib.loads(p.stdout.decode())["user"][0]
    assert entry["name"] == "carol" and entry["role"] == "admin" and "s3cret" not in p.stdout.decode()
    from rekkord.monitor.auth import verify_password

    assert verify_password(entry["password_hash"], "s3cret-enough")
    assert cli("monitor", "passwd", "carol", "--password-stdin", input=b"short\n").returncode == 2
    assert cli("monitor", "passwd", "no/slash", "--password-stdin", input=b"long enough\n").returncode == 2
    p = cli("monitor", "passwd", "carol", input=b"")
    assert p.returncode == 2 and b"use --password-stdin" in p.stderr


def test_run_once(tmp_path, smtp_server):
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    cfg = write_config(tmp_path / "m.toml", repositories=[{"name": "clinic", "url": url, "key_file": audit,
                                                           "channels": {"etc": {}}}], mail=smtp_server.config())
    p = cli("monitor", "run", cfg, "--once")
    assert p.returncode == 0, p.stderr
    assert b"repository clinic: check clean: 0 snapshots" in p.stderr
    smtp_server.mailbox.wait("ALERT", "clinic: channel etc is stale")
    smtp_server.stop()
    p = cli("-q", "monitor", "run", cfg, "--once")
    assert p.returncode == 0 and p.stderr == b""  # checked an instant ago: not due; nothing new to say


# --- the judging scenario ------------------------------------------------------------------------------------


class Machine:
    """A server with a write key and a tree, saving with the real CLI."""

    def __init__(self, tmp, name, args, env, tree_files):
        self.name, self.args, self.env = name, args, env
        self.tree = tmp / f"tree-{name}"
        for rel, data in tree_files.items():
            (self.tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.tree / rel).write_bytes(data)

    def save(self, *extra, check=0):
        p = cli(*self.args, "save", "--host", self.name, *extra, f"{self.name}-etc", self.tree, env=self.env)
        assert p.returncode == check, (self.name, p.returncode, p.stderr.decode())
        return p


def files_of(name):
    return {f"{name}-Patient-Record-Quimby.txt": b"blood type 0+\n" * 20,
            f"Ward-{name}-Oncology/{name}-discharge-letter.odt": os.urandom(5000)}


@pytest.mark.s3
def test_the_judging_scenario(tmp_path, s3_server, smtp_server, webhook_server):
    env = {"REKKORD_CACHE_DIR": str(tmp_path / "cache")}
    # Repository "clinic": a local directory, machines web01 and db01.
    clinic = str(tmp_path / "clinic")
    cli("-r", clinic, "-k", tmp_path / "clinic-master.key", "init", env=env)
    for args in (("--role", "write", "--label", "web01", "--output", tmp_path / "web01.key"),
                 ("--role", "write", "--label", "db01", "--output", tmp_path / "db01.key"),
                 ("--role", "audit", "--label", "monitor", "--output", tmp_path / "clinic-audit.key")):
        assert cli("-r", clinic, "-k", tmp_path / "clinic-master.key", "key", "derive", *args, env=env).returncode == 0
    # Repository "lab": S3 (SeaweedFS), machine lab01.
    s3url = s3_server.url()
    s3 = {"endpoint_url": s3_server.endpoint_url, "access_key_id": s3_server.access_key_id,
          "secret_access_key": s3_server.secret_access_key, "region": s3_server.region}
    lab_cfg = tmp_path / "lab.toml"
    lab_cfg.write_text(f'repository = "{s3url}"\n[s3]\n' + "".join(f'{k} = "{v}"\n' for k, v in s3.items()))
    lab_admin = ("-c", lab_cfg, "-k", tmp_path / "lab-master.key")
    assert cli(*lab_admin, "init", env=env).returncode == 0
    for args in (("--role", "write", "--label", "lab01", "--output", tmp_path / "lab01.key"),
                 ("--role", "audit", "--label", "monitor", "--output", tmp_path / "lab-audit.key")):
        assert cli(*lab_admin, "key", "derive", *args, env=env).returncode == 0
    web = Machine(tmp_path, "web01", ("-r", clinic, "-k", tmp_path / "web01.key"), env, files_of("web01"))
    db = Machine(tmp_path, "db01", ("-r", clinic, "-k", tmp_path / "db01.key"), env, files_of("db01"))
    lab = Machine(tmp_path, "lab01", ("-c", lab_cfg, "-k", tmp_path / "lab01.key"), env, files_of("lab01"))
    names = secret_names([type("T", (), {"tree": str(m.tree)}) for m in (web, db, lab)])
    for m in (web, db, lab):
        m.save()

    port = free_port()
    cfg = write_config(
        tmp_path / "monitor.toml",
        monitor={"listen": f"127.0.0.1:{port}", "poll_every": "1s", "check_every": "8s", "repeat_after": "1h",
                 "metrics_token": TOKEN, "base_url": f"http://127.0.0.1:{port}", "retry_delay": "1s"},
        defaults={"max_age": "1h"},
        repositories=[
            {"name": "clinic", "url": clinic, "key_file": str(tmp_path / "clinic-audit.key"),
             "channels": {"web01-etc": {"max_age": "12s", "hosts": ["web01"]}, "db01-etc": {"hosts": ["db01"]}}},
            {"name": "lab", "url": s3url, "key_file": str(tmp_path / "lab-audit.key"), "storage": s3,
             "mail_to": ["lab-owner@example.org"]}],
        mail=smtp_server.config(), webhooks=[{"name": "chat", "url": webhook_server.url}])
    assert cli("monitor", "check-config", cfg).returncode == 0
    log = open(tmp_path / "monitor.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "rekkord", "monitor", "run", cfg], stdout=log, stderr=log,
                               env={k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")})
    base = f"http://127.0.0.1:{port}"
    mailbox = smtp_server.mailbox
    try:
        def checked(repo, status="clean"):
            def ok():
                try:
                    return metric(scrape(base, TOKEN), "rekkord_check_last_status", repository=repo, status=status)
                except (OSError, AssertionError):
                    return None
            return ok

        wait_for(checked("clinic"), 60, 0.2, "the first check of clinic")
        wait_for(checked("lab"), 60, 0.2, "the first check of lab")
        assert mailbox.messages == []

        # ---- four things go wrong -------------------------------------------------------------------
        # 1. web01 stops saving (nothing to do).
        # 2. A blob of web01's snapshot is damaged on the disk.
        from rekkord import format as fmt
        from rekkord.keys import load as load_key
        from rekkord.repository import Repository
        from rekkord.storage import open_storage

        admin = Repository.open(open_storage(clinic), load_key(str(tmp_path / "clinic-master.key")))
        snap = admin.resolve("web01-etc")
        data_blob = fmt.unpack_reflist(admin.read_blob(snap.reflist[0][0], fmt.T_REFLIST))[0][0]
        damaged = fmt.blob_name(data_blob)
        path = os.path.join(clinic, *damaged.split("/"))
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) // 2] ^= 0x40
        open(path, "wb").write(raw)
        # 3. db01's key is revoked, and db01 saves on with it (a stolen key).
        db_kid = load_key(str(tmp_path / "db01.key")).kid
        assert cli("-r", clinic, "-k", tmp_path / "clinic-master.key", "key", "revoke", db_kid, env=env).returncode == 0
        (db.tree / "new-Admission-Smithers.txt").write_text("new")
        untrusted_sid = json.loads(db.save("--json").stdout)["id"]
        # 4. lab01's save fails (its database dump command fails).
        lab.save("--pre", "exit 5", check=1)

        subjects = {
            "stale": "ALERT: clinic: channel web01-etc is stale",
            "damage": "ALERT: clinic: check found damage",
            "untrusted": "ALERT: clinic: untrusted snapshots in channel db01-etc",
            "failed": "ALERT: lab: the save of channel lab01-etc on lab01 failed",
        }
        got = {k: mailbox.wait(s, timeout=60)[0][1] for k, s in subjects.items()}
        body = {k: m.get_content() for k, m in got.items()}
        assert damaged in body["damage"] and snap.id in body["damage"] and "host web01" in body["damage"]
        assert untrusted_sid in body["untrusted"] and "after it was revoked" in body["untrusted"]
        assert "exit code 1 (HookFailed)" in body["failed"]
        assert mailbox.find("lab: the save")[0][0] == ["ops@example.org", "lab-owner@example.org"]
        assert f"{base}/repo/clinic" in body["stale"]
        m = scrape(base, TOKEN)
        assert metric(m, "rekkord_channel_stale", repository="clinic", channel="web01-etc") == 1
        assert metric(m, "rekkord_channel_stale", repository="clinic", channel="db01-etc") == 0
        assert metric(m, "rekkord_check_last_status", repository="clinic", status="damaged") == 1
        assert metric(m, "rekkord_check_last_ok", repository="lab") == 1
        assert metric(m, "rekkord_channel_untrusted_snapshots", repository="clinic", channel="db01-etc") == 1
        assert metric(m, "rekkord_channel_failed", repository="lab", channel="lab01-etc") == 1
        firing = {k: metric(m, "rekkord_alerts_firing", repository=r, kind=k, severity="critical")
                  for r, k in (("clinic", "stale"), ("clinic", "damage"), ("clinic", "untrusted"), ("lab", "failed"))}
        assert firing == {"stale": 1, "damage": 1, "untrusted": 1, "failed": 1}
        c = Client(base)
        assert c.login()[0] == 303
        overview = c.req("GET", "/")[2]
        for title in ("clinic: channel web01-etc is stale", "clinic: check found damage",
                      "clinic: untrusted snapshots in channel db01-etc",
                      "lab: the save of channel lab01-etc on lab01 failed"):
            assert title in overview
        assert 'data-status="damaged"' in overview and 'data-status="failed"' in overview
        rows = {ch: row for ch, row in re.findall(r'data-channel="([^"]+)">(.*?)</tr>', overview, re.S)}
        badges = {ch: re.findall(r'class="badge ([a-z]+)"', row) for ch, row in rows.items()}
        assert badges == {"web01-etc": ["damaged", "stale"], "db01-etc": ["untrusted"], "lab01-etc": ["failed"]}
        clinic_page = c.req("GET", "/repo/clinic")[2]
        assert damaged in clinic_page and untrusted_sid[:8] in clinic_page
        hooks = webhook_server.wait(lambda b: b["event"] == "alert" and b["kind"] == "failed")
        assert hooks[0]["repository"] == "lab"
        everything = [mailbox.everything(), json.dumps(webhook_server.bodies), overview, clinic_page,
                      c.req("GET", "/repo/lab")[2], c.req("GET", "/alerts")[2],
                      c.req("GET", "/repo/clinic/data.json")[2],
                      Client(base).req("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[2]]
        for n in names:
            assert all(os.path.basename(n) not in x for x in everything), n

        # ---- each is fixed -------------------------------------------------------------------------
        # The auditor's check publishes a repair hint; web01's next save uploads the blob again.
        p = cli("-r", clinic, "-k", tmp_path / "clinic-audit.key", "check", env=env)
        assert p.returncode == 4 and b"published repair hint" in p.stderr
        web.save()
        # db01 gets a new key; its snapshot by the revoked key is forgotten (the audit key may).
        assert cli("-r", clinic, "-k", tmp_path / "clinic-master.key", "key", "derive", "--role", "write",
                   "--label", "db01-new", "--output", tmp_path / "db01-new.key", env=env).returncode == 0
        db.args = ("-r", clinic, "-k", tmp_path / "db01-new.key")
        db.save()
        assert cli("-r", clinic, "-k", tmp_path / "clinic-audit.key", "forget", untrusted_sid,
                   env=env).returncode == 0
        # lab01's next save works.
        lab.save()
        for s in subjects.values():
            mailbox.wait(s.replace("ALERT", "RESOLVED"), timeout=60)
        m = scrape(base, TOKEN)
        assert metric(m, "rekkord_channel_stale", repository="clinic", channel="web01-etc") == 0
        assert metric(m, "rekkord_check_last_status", repository="clinic", status="clean") == 1
        assert metric(m, "rekkord_channel_untrusted_snapshots", repository="clinic", channel="db01-etc") == 0
        assert metric(m, "rekkord_channel_failed", repository="lab", channel="lab01-etc") == 0
        assert sum(v for (n, _), v in m.items() if n == "rekkord_alerts_firing") == 0
        overview = c.req("GET", "/")[2]
        assert 'data-status="fresh"' in overview and "Open alerts" not in overview
        assert len(mailbox.messages) == 8  # four alerts, four resolved notices: no storm, no reminder
        # ---- a restart keeps the history ---------------------------------------------------------------
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
        service = subprocess.Popen([sys.executable, "-m", "rekkord", "monitor", "run", cfg], stdout=log, stderr=log,
                                   env={k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")})
        c = wait_for(lambda: (lambda x: x if x.login()[0] == 303 else None)(Client(base)) if _up(port) else None,
                     30, 0.2, "the restarted service")
        history = c.req("GET", "/alerts")[2]
        for title in ("clinic: channel web01-etc is stale", "clinic: check found damage",
                      "clinic: untrusted snapshots in channel db01-etc",
                      "lab: the save of channel lab01-etc on lab01 failed"):
            assert title in history
        assert history.count('class="resolved-at"') == 4
        assert len(mailbox.messages) == 8
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGTERM)
            service.wait(30)
        log.close()
    text = (tmp_path / "monitor.log").read_text()
    assert "Traceback" not in text
    assert "check damaged" in text and text.count("sent (attempt 1)") >= 8


def _up(port) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_tls_with_certificate_files(tmp_path):
    """Without a reverse proxy: tls_cert and tls_key, and the service speaks HTTPS (with HSTS, Secure cookies)."""
    import ssl
    import urllib.request

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate here: {p.stderr.decode()[-200:]}")
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    port = free_port()
    cfg = write_config(tmp_path / "m.toml", repositories=[{"name": "clinic", "url": url, "key_file": audit}],
                       monitor={"listen": f"127.0.0.1:{port}", "tls_cert": str(cert), "tls_key": str(key),
                                "poll_every": "1h"})
    log = open(tmp_path / "log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "rekkord", "monitor", "run", cfg], stdout=log, stderr=log,
                               env={k: v for k, v in os.environ.items() if not k.startswith("REKKORD_")})
    try:
        ctx = ssl.create_default_context(cafile=str(cert))

        def get(path):
            try:
                return urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=5)
            except OSError:
                return None

        with wait_for(lambda: get("/healthz"), 30, 0.2, "the HTTPS service") as r:
            assert r.status == 200 and r.read() == b"ok\n"
            assert r.headers["Strict-Transport-Security"] == "max-age=31536000"
        with get("/login") as r:
            assert "secure" in r.headers["Set-Cookie"].lower()
    finally:
        service.send_signal(signal.SIGTERM)
        assert service.wait(30) == 0
        log.close()
    assert "serving https://127.0.0.1" in (tmp_path / "log").read_text()

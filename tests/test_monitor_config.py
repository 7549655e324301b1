"""The monitor's TOML file: a complete file parses; a bad one is answered
with every problem, each naming where it is; only audit keys are taken."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("starlette")

from monitorutil import new_repository, password_hash, write_config  # noqa: E402
from rekkord.errors import ConfigError  # noqa: E402
from rekkord.monitor import config as mc  # noqa: E402


@pytest.fixture
def repo(tmp_path):
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    return url, master, audit


def test_a_complete_file(tmp_path, repo):
    url, master, audit = repo
    pw = tmp_path / "pass"
    pw.write_text("sftp-secret\n")
    path = write_config(
        tmp_path / "monitor.toml",
        monitor={"listen": "[::1]:9000", "poll_every": "90s", "check_every": "6h", "repeat_after": "1d",
                 "metrics_token": "t" * 20, "metrics_listen": "127.0.0.1:9100", "base_url": "https://mon.example.org",
                 "retry_delay": "10s"},
        defaults={"max_age": "26h", "shrink_limit": "10%"},
        repositories=[{"name": "clinic", "url": url, "key_file": audit, "mail_to": ["owner@example.org"],
                       "check_subset": "5%", "grow_limit": "300%",
                       "storage": {"connections": 8}, "hosts": ["web01"],
                       "channels": {"etc": {"max_age": "2d"}, "db": {"hosts": ["db01", "db02"], "warnings": "show"}}}],
        mail={"host": "smtp.example.org", "security": "starttls", "username": "mon", "password": "pw",
              "from": "monitor@example.org", "to": "ops@example.org"},
        webhooks=[{"name": "ntfy", "url": "https://ntfy.example.org/", "fields": {"topic": "backups"},
                   "headers": {"Authorization": "Bearer x"}}])
    cfg = mc.load(path)
    assert cfg.listen == ("::1", 9000) and cfg.metrics_listen == ("127.0.0.1", 9100)
    assert (cfg.poll_every, cfg.check_every, cfg.repeat_after, cfg.retry_delay) == (90, 6 * 3600, 86400, 10)
    assert cfg.secure_cookies  # https base_url
    assert cfg.state_path == str(tmp_path / "state" / "state.sqlite")
    (rc,) = cfg.repos
    assert rc.url == url and rc.key_file == audit and rc.mail_to == ["owner@example.org"]
    assert rc.check_subset == "5%" and rc.grow_limit == 3.0 and rc.shrink_limit == 0.1
    assert rc.storage == {"connections": 8}
    assert rc.rule("etc") == mc.ChannelRule(2 * 86400, ("web01",), "alert")
    assert rc.rule("db") == mc.ChannelRule(26 * 3600, ("db01", "db02"), "show")
    assert rc.rule("other") == mc.ChannelRule(26 * 3600, ("web01",), "alert")
    assert rc.load_key().role == "audit"
    assert cfg.mail.port == 587 and cfg.mail.to == ["ops@example.org"] and cfg.mail.security == "starttls"
    assert cfg.webhooks[0].fields == {"topic": "backups"}
    assert set(cfg.users) == {"alice", "victor"} and cfg.users["alice"].role == "admin"
    # Secrets stay out of repr (and so out of logs and tracebacks).
    text = repr(cfg)
    assert "'pw'" not in text
    assert "Bearer x" not in text and "t" * 20 not in text and password_hash() not in text
    # Relative paths are relative to the file.
    os.chdir(tmp_path)
    path2 = write_config(tmp_path / "rel.toml", monitor={"state_dir": "st"},
                         repositories=[{"name": "r", "url": "repo", "key_file": os.path.relpath(audit, tmp_path)}])
    cfg2 = mc.load(path2)
    assert cfg2.repos[0].url == url and cfg2.state_dir == str(tmp_path / "st")
    assert cfg2.listen == ("127.0.0.1", 8750)  # the default binds loopback


def test_every_problem_is_named_with_where_it_is(tmp_path, repo):
    url, master, audit = repo
    full = master.derive("full", "oops")
    full_file = str(tmp_path / "full.key")
    full.save(full_file)
    path = tmp_path / "bad.toml"
    path.write_text(f"""
[monitor]
listen = "127.0.0.1:99999"
poll_every = "often"
tls_cert = "/nonexistent/cert.pem"
colour = "blue"

[[repository]]
name = "clinic"
url = "{url}"
key_file = "{full_file}"
max_age = "soon"
shrink_limit = "ten"

[[repository]]
name = "clinic"
url = "{url}"
key_file = "/nonexistent/audit.key"

[[repository]]
url = "ftp://x"

[mail]
security = "ssl"
to = ["not an address"]

[[webhook]]
url = "gopher://x"

[[user]]
name = "bob"
password_hash = "plaintext"
""")
    cfg, errors, notes = mc.check_config(str(path))
    assert cfg is None
    p = str(path)
    expected = [
        f"{p}: [monitor]: unknown key colour (known: ",
        f"{p}: [monitor]: listen: port 99999 is out of range",
        f"{p}: [monitor]: poll_every: 'often' is not a duration",
        f"{p}: [monitor]: tls_cert: /nonexistent/cert.pem does not exist or is not a file",
        f"{p}: [monitor]: tls_cert and tls_key go together",
        f"{p}: [[repository]] #1 (clinic): max_age: 'soon' is not a duration",
        f"{p}: [[repository]] #1 (clinic): shrink_limit: 'ten' is not a percentage",
        f"{p}: [[repository]] #1 (clinic): key_file: {full_file} is a full key; the monitor takes audit keys only",
        f"{p}: [[repository]] #2: name 'clinic' is used twice",
        f"{p}: [[repository]] #2 (clinic): key_file: /nonexistent/audit.key does not exist",
        f"{p}: [[repository]] #3: needs a name",
        f"{p}: [mail]: security: 'ssl' is not one of none, starttls, tls",
        f"{p}: [mail]: to: 'not an address' is not a mail address",
        f"{p}: [[webhook]] #1: url: 'gopher://x' is not an http:// or https:// URL",
        f"{p}: [[user]] #1: password_hash: is not an Argon2id hash",
        f"{p}: no [[user]]: nobody could log in",
    ]
    for e in expected:
        assert any(x.startswith(e) for x in errors), (e, errors)
    assert len(errors) == len(expected), errors
    with pytest.raises(ConfigError) as exc:
        mc.load(str(path))
    assert "is a full key" in str(exc.value) and "\n" not in str(exc.value)


def test_small_mistakes(tmp_path, repo):
    url, master, audit = repo

    def problems(**kw):
        path = write_config(tmp_path / "m.toml", **kw)
        return mc.check_config(path)[1:]

    base = [{"name": "clinic", "url": url, "key_file": audit}]
    errors, notes = problems(repositories=base)
    assert errors == []
    assert any("neither metrics_token nor metrics_listen" in n for n in notes)
    assert any("dashboard only" in n for n in notes)
    errors, notes = problems(repositories=base + [{"name": "again", "url": url, "key_file": audit}])
    assert any("watches the same repository" in e and "'clinic'" in e for e in errors)
    errors, _ = problems(repositories=base, users=[])
    assert any("no [[user]]" in e for e in errors)
    errors, _ = problems(repositories=[])
    assert any(e.endswith("no [[repository]] to watch") for e in errors)
    errors, _ = problems(repositories=[{**base[0], "mail_to": "owner@example.org"}])
    assert any("mail_to is set but there is no [mail] section" in e for e in errors)
    errors, _ = problems(repositories=base, mail={"host": "localhost"})
    assert any("[mail]: no recipients" in e for e in errors)
    errors, _ = problems(repositories=base, monitor={"metrics_token": "short"})
    assert any("metrics_token: must be a string of at least 16 characters" in e for e in errors)
    errors, _ = problems(repositories=base, monitor={"listen": "127.0.0.1:9000", "metrics_listen": "127.0.0.2:9000"})
    assert any("metrics_listen must use another port" in e for e in errors)
    errors, notes = problems(repositories=base, monitor={"listen": "0.0.0.0:9000"})
    assert errors == [] and any("not a loopback address and there is no tls_cert" in n for n in notes)
    errors, _ = problems(repositories=[{**base[0], "check_subset": "lots"}])
    assert any("check_subset" in e for e in errors)
    errors, _ = problems(repositories=[{**base[0], "channels": {"etc": {"max_age": "0s"}}}])
    assert any("channel etc: max_age: must be more than zero" in e for e in errors)
    errors, _ = problems(repositories=[{**base[0], "storage": {"password": "x"}}])
    assert any("storage: unknown key password" in e for e in errors)
    errors, _ = problems(repositories=base, users=[{"name": "a", "role": "root"}])
    assert any("role: 'root' is not one of viewer, admin" in e for e in errors)
    errors, _ = problems(repositories=base, users=[{"name": "a"}, {"name": "a"}])
    assert any("user 'a' is defined twice" in e for e in errors)


def test_unreadable_files(tmp_path):
    cfg, errors, _ = mc.check_config(str(tmp_path / "none.toml"))
    assert cfg is None and errors == [f"monitor config {tmp_path / 'none.toml'} does not exist"]
    (tmp_path / "bad.toml").write_text("[monitor\nx = 1\n")
    cfg, errors, _ = mc.check_config(str(tmp_path / "bad.toml"))
    assert len(errors) == 1 and "not valid TOML" in errors[0]


def test_passphrase_protected_audit_keys(tmp_path, repo):
    url, master, audit = repo
    key = master.derive("audit", "locked")
    kf = str(tmp_path / "locked.key")
    key.save(kf, passphrase="s3cret")
    base = {"name": "clinic", "url": url, "key_file": kf}
    path = write_config(tmp_path / "m.toml", repositories=[base])
    assert any("protected by a passphrase: set passphrase_file" in e for e in mc.check_config(path)[1])
    (tmp_path / "pp").write_text("wrong\n")
    path = write_config(tmp_path / "m.toml", repositories=[{**base, "passphrase_file": str(tmp_path / "pp")}])
    assert any("wrong passphrase" in e for e in mc.check_config(path)[1])
    (tmp_path / "pp").write_text("s3cret\n")
    cfg = mc.load(path)
    assert cfg.repos[0].load_key().kid == key.kid


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("15m", 900), ("26h", 93600), ("2d", 172800),
                                          ("1w", 604800), ("1d12h", 129600), (30, 30)])
def test_durations(text, seconds):
    assert mc.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1y", "h", "-5s", "5 parsecs", True, None])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        mc.parse_duration(bad)

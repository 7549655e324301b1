"""Delivery to a real SMTP server (aiosmtpd) and a real HTTP receiver:
messages arrive, failures are retried with backoff and logged, order per
target is kept, and a message that never goes through is given up on."""

from __future__ import annotations

import logging

import pytest

from rekkord.monitor.alerts import AlertEngine, Condition
from rekkord.monitor.config import MailConfig, MonitorConfig, RepoConfig, WebhookConfig
from rekkord.monitor.notify import Deliverer, post_webhook, send_mail
from rekkord.monitor.state import State

STALE = Condition("stale/clinic/etc", "stale", "clinic: channel etc is stale", "The latest snapshot is 2d old.")


def setup(smtp, hook, **kw):
    now = [1_000_000.0]
    mail = MailConfig(host="127.0.0.1", port=smtp.port, sender="monitor@example.org", to=["ops@example.org"],
                      timeout=5)
    cfg = MonitorConfig(path="x", repos=[RepoConfig("clinic", "/r", "/k")], mail=mail, retry_delay=10,
                        webhooks=[WebhookConfig("bridge", hook.url, headers={"X-Token": "t0ken"},
                                                fields={"topic": "backups"}, timeout=5)], **kw)
    st = State(None)
    clock = lambda: now[0]  # noqa: E731
    return AlertEngine(st, cfg, clock), Deliverer(st, cfg, clock), st, now


def test_mail_and_webhook_arrive(smtp_server, webhook_server):
    eng, dl, st, now = setup(smtp_server, webhook_server)
    eng.update("clinic", [STALE])
    assert dl.run_due() == 2 and dl.pending() == 0
    ((rcpt, msg),) = smtp_server.mailbox.messages
    assert rcpt == ["ops@example.org"] and msg["From"] == "monitor@example.org"
    assert msg["Subject"] == "[rekkord] ALERT: clinic: channel etc is stale"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Message-ID"]
    assert "The latest snapshot is 2d old." in msg.get_content()
    (body,) = webhook_server.bodies
    assert body["event"] == "alert" and body["topic"] == "backups" and body["repository"] == "clinic"
    assert body["text"].startswith("[rekkord] ALERT: clinic: channel etc is stale")
    assert webhook_server.headers[0]["X-Token"] == "t0ken"
    assert webhook_server.headers[0]["Content-Type"] == "application/json"
    eng.update("clinic", [])
    dl.run_due()
    assert smtp_server.mailbox.subjects()[-1] == "[rekkord] RESOLVED: clinic: channel etc is stale"
    assert webhook_server.bodies[-1]["event"] == "resolved"


def test_failures_are_retried_logged_and_kept_in_order(smtp_server, webhook_server, caplog):
    caplog.set_level(logging.INFO, logger="rekkord.monitor")
    eng, dl, st, now = setup(smtp_server, webhook_server)
    smtp_server.stop()
    webhook_server.fail_next = 1
    eng.update("clinic", [STALE])
    assert dl.run_due() == 0
    rows = st.q("SELECT * FROM deliveries ORDER BY id")
    assert [(r["attempts"], r["next_try"] - now[0]) for r in rows] == [(1, 10), (1, 10)]
    assert "Connection refused" in rows[0]["last_error"] and rows[1]["last_error"] == "webhook bridge: HTTP 503 " \
        "Service Unavailable"
    assert "failed (attempt 1 of 8)" in caplog.text and "retrying in 10s" in caplog.text
    assert webhook_server.url not in caplog.text  # a webhook URL may hold a token: never logged
    # The resolved notice is queued behind the alert and never overtakes it.
    now[0] += 5
    eng.update("clinic", [])
    assert dl.run_due() == 0  # nothing due: the alert waits until its next try, the notice behind it
    now[0] += 6
    assert dl.run_due() == 2  # the webhook is back: alert then resolved
    assert [b["event"] for b in webhook_server.bodies] == ["alert", "resolved"]
    assert dl.run_due() == 0  # the mail server is still down: second attempt was due, failed
    assert st.q("SELECT attempts FROM deliveries WHERE target = 'mail' ORDER BY id")[0][0] == 2
    now[0] += 20  # backoff doubled
    smtp_server.start()
    assert dl.run_due() == 2
    assert smtp_server.mailbox.subjects() == ["[rekkord] ALERT: clinic: channel etc is stale",
                                              "[rekkord] RESOLVED: clinic: channel etc is stale"]
    assert "sent (attempt 3)" in caplog.text


def test_a_message_is_given_up_after_the_last_attempt(smtp_server, webhook_server, caplog):
    eng, dl, st, now = setup(smtp_server, webhook_server, delivery_attempts=2)
    smtp_server.stop()
    eng.update("clinic", [STALE])
    dl.run_due()
    now[0] += 11
    dl.run_due()
    (r,) = st.q("SELECT * FROM deliveries WHERE target = 'mail'")
    assert r["status"] == "failed" and r["attempts"] == 2
    assert "failed for good after 2 attempts" in caplog.text
    assert dl.pending() == 0


def test_senders_raise_one_clear_error(smtp_server):
    from rekkord.monitor.notify import DeliveryError

    with pytest.raises(DeliveryError, match=r"^SMTP 127.0.0.1:1: Connection refused"):
        send_mail(MailConfig(host="127.0.0.1", port=1, to=["a@b"]), ["a@b"], "s", "b")
    with pytest.raises(DeliveryError, match=r"^webhook w: Connection refused"):
        post_webhook(WebhookConfig("w", "http://127.0.0.1:1/secret-token-in-url"), {})

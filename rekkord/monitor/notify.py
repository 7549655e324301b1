"""Delivery of alerts: mail through SMTP (the standard library's smtplib
and email), and a generic JSON webhook (urllib) that Matrix, ntfy and Slack
bridges can take.  :class:`Deliverer` sends the queued rows of the
``deliveries`` table, retries failures with exponential backoff, and logs
every attempt; messages to one target go out in order (a reminder never
overtakes the alert, a resolved notice never arrives first)."""

from __future__ import annotations

import json
import logging
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from .config import MailConfig, MonitorConfig, WebhookConfig

log = logging.getLogger("rekkord.monitor")
MAX_BACKOFF = 3600.0


class DeliveryError(Exception):
    pass


def send_mail(mc: MailConfig, recipients: list[str], subject: str, body: str) -> None:
    msg = EmailMessage()
    msg["From"] = mc.sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=mc.sender.rsplit("@", 1)[-1])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    try:
        if mc.security == "tls":
            smtp = smtplib.SMTP_SSL(mc.host, mc.port, timeout=mc.timeout, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(mc.host, mc.port, timeout=mc.timeout)
        with smtp:
            if mc.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if mc.username:
                smtp.login(mc.username, mc.password)
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as e:
        raise DeliveryError(f"SMTP {mc.host}:{mc.port}: {_reason(e)}") from None


def post_webhook(wc: WebhookConfig, payload: dict) -> None:
    data = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "rekkord-monitor", **wc.headers}
    req = urllib.request.Request(wc.url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=wc.timeout) as r:
            r.read(65536)
    except urllib.error.HTTPError as e:  # (the URL itself may hold a token: never in a message)
        raise DeliveryError(f"webhook {wc.name}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DeliveryError(f"webhook {wc.name}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e.reason, str):
        e = e.reason
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class Deliverer:
    def __init__(self, state, config: MonitorConfig, clock=time.time, *, mail=send_mail, webhook=post_webhook):
        self.state = state
        self.config = config
        self.clock = clock
        self.mail = mail
        self.webhook = webhook

    def run_due(self) -> int:
        """Try every delivery that is due, in order per target; returns how many were sent."""
        now = self.clock()
        rows = self.state.q("SELECT * FROM deliveries WHERE status = 'pending' ORDER BY id LIMIT 500")
        blocked: set[str] = set()
        sent = 0
        for r in rows:
            if r["target"] in blocked:
                continue
            if r["next_try"] > now:
                blocked.add(r["target"])  # an earlier message waits: later ones wait behind it
                continue
            if self._try(r):
                sent += 1
            else:
                blocked.add(r["target"])
        return sent

    def pending(self) -> int:
        return self.state.one("SELECT count(*) FROM deliveries WHERE status = 'pending'")[0]

    def _send(self, r) -> None:
        target = r["target"]
        if target == "mail":
            if self.config.mail is None:
                raise DeliveryError("no [mail] section any more")
            self.mail(self.config.mail, json.loads(r["recipients"]), r["subject"], r["body"])
            return
        name = target.split(":", 1)[1]
        wc = next((w for w in self.config.webhooks if w.name == name), None)
        if wc is None:
            raise DeliveryError(f"webhook {name} is no longer configured")
        self.webhook(wc, json.loads(r["payload"]))

    def _try(self, r) -> bool:
        attempt = r["attempts"] + 1
        what = f"delivery {r['id']} ({r['event']}: {r['subject']}) to {r['target']}"
        try:
            self._send(r)
        except DeliveryError as e:
            now = self.clock()
            if attempt >= self.config.delivery_attempts:
                self.state.x("UPDATE deliveries SET attempts = ?, status = 'failed', last_error = ? WHERE id = ?",
                             (attempt, str(e), r["id"]))
                log.error("%s failed for good after %d attempts: %s", what, attempt, e)
            else:
                delay = min(MAX_BACKOFF, self.config.retry_delay * 2 ** (attempt - 1))
                self.state.x("UPDATE deliveries SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
                             (attempt, now + delay, str(e), r["id"]))
                log.warning("%s failed (attempt %d of %d): %s; retrying in %.0fs", what, attempt,
                            self.config.delivery_attempts, e, delay)
            return False
        self.state.x("UPDATE deliveries SET attempts = ?, status = 'sent', sent = ?, last_error = NULL WHERE id = ?",
                     (attempt, self.clock(), r["id"]))
        log.info("%s sent (attempt %d)", what, attempt)
        return True

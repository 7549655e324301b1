"""The alert engine: conditions in, alerts and their deliveries out.

Each evaluation of a repository hands :meth:`AlertEngine.update` the set of
conditions that hold now, each with a stable key (``stale/<repo>/<channel>``,
``damage/<repo>``, …).  A condition without an open alert opens one and sends
an *alert*; an open alert whose condition still holds sends a *reminder*
once ``repeat_after`` has passed since the last message (never, once an
admin acknowledged it); an open alert whose condition is gone is resolved
and sends a *resolved* notice.  No alert storms: one message per change, at
most one reminder per repeat delay, and when one evaluation changes more
than ``burst`` alerts of a repository, each target gets one digest instead.

Deliveries are rows of the ``deliveries`` table, sent (and retried) by
``notify.Deliverer``; they survive restarts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from .config import MonitorConfig

KINDS = ("unreachable", "stale", "failed", "warnings", "damage", "untrusted", "unexpected-host", "size")
SEVERITIES = ("critical", "warning")


@dataclass(frozen=True)
class Condition:
    key: str
    kind: str
    title: str
    text: str
    severity: str = "critical"


@dataclass
class Event:
    event: str  # alert | reminder | resolved
    alert_id: int
    repo: str
    kind: str
    severity: str
    title: str
    text: str
    opened: float
    resolved: float | None = None


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "-"


def span(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    out = []
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            out.append(f"{s // n}{unit}")
            s %= n
        if len(out) == 2:
            break
    return " ".join(out)


class AlertEngine:
    def __init__(self, state, config: MonitorConfig, clock=time.time, on_enqueue=None):
        self.state = state
        self.config = config
        self.clock = clock
        self.on_enqueue = on_enqueue

    def update(self, repo: str, conditions: list[Condition], keep: frozenset | set = frozenset()) -> list[Event]:
        """Apply the conditions of ``repo``; open alerts of a kind in
        ``keep`` are left as they are (e.g. while the repository cannot be
        reached, nothing can be known about its channels)."""
        now = self.clock()
        events: list[Event] = []
        want = {}
        for c in conditions:
            want.setdefault(c.key, c)
        with self.state.tx() as db:
            current = {r["key"]: r for r in db.execute(
                "SELECT * FROM alerts WHERE repo = ? AND resolved IS NULL", (repo,))}
            for key, c in want.items():
                a = current.get(key)
                if a is None:
                    aid = db.execute("INSERT INTO alerts (repo, key, kind, severity, title, text, opened, last_sent) "
                                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                     (repo, key, c.kind, c.severity, c.title, c.text, now, now)).lastrowid
                    events.append(Event("alert", aid, repo, c.kind, c.severity, c.title, c.text, now))
                    continue
                if (a["title"], a["text"]) != (c.title, c.text):
                    db.execute("UPDATE alerts SET title = ?, text = ? WHERE id = ?", (c.title, c.text, a["id"]))
                if a["acked"] is None and now - (a["last_sent"] or a["opened"]) >= self.config.repeat_after:
                    db.execute("UPDATE alerts SET last_sent = ? WHERE id = ?", (now, a["id"]))
                    events.append(Event("reminder", a["id"], repo, c.kind, c.severity, c.title, c.text, a["opened"]))
            for key, a in current.items():
                if key in want or a["kind"] in keep:
                    continue
                db.execute("UPDATE alerts SET resolved = ? WHERE id = ?", (now, a["id"]))
                events.append(Event("resolved", a["id"], repo, a["kind"], a["severity"], a["title"], a["text"],
                                    a["opened"], now))
            if events:
                self._enqueue(db, repo, events, now)
        if events and self.on_enqueue is not None:
            self.on_enqueue()
        return events

    def acknowledge(self, alert_id: int, user: str) -> bool:
        """Stop the reminders of an open alert; True when it was open."""
        with self.state.tx() as db:
            n = db.execute("UPDATE alerts SET acked = ?, acked_by = ? WHERE id = ? AND resolved IS NULL "
                           "AND acked IS NULL", (self.clock(), user, alert_id)).rowcount
        return n > 0

    # ---- messages ------------------------------------------------------------------------------

    def targets(self, repo: str) -> list[tuple[str, list[str] | None]]:
        out = []
        cfg = self.config
        rc = cfg.repo(repo)
        if cfg.mail is not None:
            rcpt = list(dict.fromkeys(cfg.mail.to + (rc.mail_to if rc else [])))
            if rcpt:
                out.append(("mail", rcpt))
        out += [(f"webhook:{w.name}", None) for w in cfg.webhooks]
        return out

    def link(self, repo: str) -> str | None:
        base = self.config.base_url
        return f"{base.rstrip('/')}/repo/{repo}" if base else None

    def message(self, e: Event) -> tuple[str, str, dict]:
        label = {"alert": "ALERT", "reminder": "REMINDER", "resolved": "RESOLVED"}[e.event]
        subject = f"[rekkord] {label}: {e.title}"
        if e.event == "resolved":
            head = f"Resolved at {when(e.resolved)}, after {span(e.resolved - e.opened)}. The alert was:\n\n"
        elif e.event == "reminder":
            head = f"Still open since {when(e.opened)}.\n\n"
        else:
            head = f"Opened at {when(e.opened)}.\n\n"
        link = self.link(e.repo)
        body = head + e.text + "\n" + (f"\nRepository {e.repo}: {link}\n" if link else "") + \
            "\n-- rekkord monitor (audit keys only: it cannot read any file or file name)\n"
        payload = {"event": e.event, "repository": e.repo, "kind": e.kind, "severity": e.severity,
                   "alert_id": e.alert_id, "title": subject, "text": f"{subject}\n{e.text}", "message": e.text,
                   "opened": when(e.opened), "resolved": when(e.resolved) if e.resolved else None, "url": link}
        return subject, body, payload

    def digest(self, repo: str, events: list[Event]) -> tuple[str, str, dict]:
        counts = {k: sum(1 for e in events if e.event == k) for k in ("alert", "reminder", "resolved")}
        parts = [f"{n} {'new alerts' if k == 'alert' else k + 's' if k == 'reminder' else 'resolved'}"
                 for k, n in counts.items() if n]
        subject = f"[rekkord] {repo}: {', '.join(parts)}"
        lines = []
        for e in events:
            label = {"alert": "ALERT", "reminder": "REMINDER", "resolved": "RESOLVED"}[e.event]
            lines.append(f"{label}: {e.title}\n    " + e.text.replace("\n", "\n    "))
        link = self.link(repo)
        body = (f"{len(events)} changes at once; one message instead of {len(events)}.\n\n" + "\n\n".join(lines)
                + "\n" + (f"\nRepository {repo}: {link}\n" if link else "") + "\n-- rekkord monitor\n")
        payload = {"event": "digest", "repository": repo, "title": subject, "text": f"{subject}\n" + "\n".join(
            ln.split("\n")[0] for ln in lines), "message": "\n".join(ln.split("\n")[0] for ln in lines), "url": link,
            "events": [{"event": e.event, "kind": e.kind, "severity": e.severity, "alert_id": e.alert_id,
                        "title": e.title, "text": e.text} for e in events]}
        return subject, body, payload

    def _enqueue(self, db, repo: str, events: list[Event], now: float) -> None:
        targets = self.targets(repo)
        if not targets:
            return
        if len(events) > self.config.burst:
            messages = [(None, "digest", *self.digest(repo, events))]
        else:
            messages = [(e.alert_id, e.event, *self.message(e)) for e in events]
        for target, rcpt in targets:
            for aid, event, subject, body, payload in messages:
                if target.startswith("webhook:"):
                    extra = next((w.fields for w in self.config.webhooks if f"webhook:{w.name}" == target), {})
                    payload = {**payload, **extra}
                db.execute("INSERT INTO deliveries (alert, event, target, recipients, subject, body, payload, created, "
                           "next_try, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                           (aid, event, target, json.dumps(rcpt) if rcpt else None, subject, body,
                            json.dumps(payload), now, now))

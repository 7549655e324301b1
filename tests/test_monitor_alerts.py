"""The alert engine: an alert when a condition appears, one reminder per
repeat delay (none once acknowledged), a resolved notice when it goes, a
digest instead of a storm, and messages queued per target."""

from __future__ import annotations

import json

from rekkord.monitor.alerts import AlertEngine, Condition
from rekkord.monitor.config import MailConfig, MonitorConfig, RepoConfig, WebhookConfig
from rekkord.monitor.state import State


def setup(**kw):
    now = [1_000_000.0]
    cfg = MonitorConfig(path="x", repeat_after=3600, burst=3,
                        repos=[RepoConfig("clinic", "/r", "/k", mail_to=["owner@example.org"])],
                        mail=MailConfig(to=["ops@example.org"]),
                        webhooks=[WebhookConfig("ntfy", "http://127.0.0.1:1/", fields={"topic": "backups"})],
                        base_url="https://mon.example.org", **kw)
    st = State(None)
    return AlertEngine(st, cfg, clock=lambda: now[0]), st, now


STALE = Condition("stale/clinic/etc", "stale", "clinic: channel etc is stale", "The latest snapshot is 2d old.")
DAMAGE = Condition("damage/clinic", "damage", "clinic: check found damage", "- data blob blobs/ab/ab12: missing")


def deliveries(st):
    return [dict(r) for r in st.q("SELECT * FROM deliveries ORDER BY id")]


def test_alert_reminder_resolved(tmp_path):
    eng, st, now = setup()
    ev = eng.update("clinic", [STALE])
    assert [(e.event, e.kind) for e in ev] == [("alert", "stale")]
    d = deliveries(st)
    assert [(x["target"], x["event"]) for x in d] == [("mail", "alert"), ("webhook:ntfy", "alert")]
    assert json.loads(d[0]["recipients"]) == ["ops@example.org", "owner@example.org"]
    assert d[0]["subject"] == "[rekkord] ALERT: clinic: channel etc is stale"
    assert "The latest snapshot is 2d old." in d[0]["body"] and "https://mon.example.org/repo/clinic" in d[0]["body"]
    payload = json.loads(d[1]["payload"])
    assert payload["event"] == "alert" and payload["topic"] == "backups" and payload["kind"] == "stale"
    assert payload["text"].startswith("[rekkord] ALERT: clinic: channel etc is stale\n")
    # Still stale: nothing new until the repeat delay has passed.
    for _ in range(10):
        now[0] += 300
        assert eng.update("clinic", [STALE]) == []
    now[0] += 700
    assert [e.event for e in eng.update("clinic", [STALE])] == ["reminder"]
    assert deliveries(st)[-1]["subject"] == "[rekkord] REMINDER: clinic: channel etc is stale"
    assert eng.update("clinic", [STALE]) == []
    now[0] += 60
    ev = eng.update("clinic", [])
    assert [e.event for e in ev] == ["resolved"]
    last = deliveries(st)[-1]
    assert last["subject"] == "[rekkord] RESOLVED: clinic: channel etc is stale"
    assert "after 1h" in last["body"]
    (a,) = st.alerts("clinic")
    assert a["resolved"] == now[0] and st.open_alerts() == []
    # It can come back: a new alert.
    assert [e.event for e in eng.update("clinic", [STALE])] == ["alert"]
    assert len(st.alerts("clinic")) == 2


def test_acknowledged_alerts_send_no_reminders_but_still_resolve():
    eng, st, now = setup()
    eng.update("clinic", [STALE])
    (a,) = st.open_alerts()
    assert eng.acknowledge(a["id"], "alice") and not eng.acknowledge(a["id"], "alice")
    now[0] += 10 * 3600
    assert eng.update("clinic", [STALE]) == []
    assert [e.event for e in eng.update("clinic", [])] == ["resolved"]
    assert st.alerts("clinic")[0]["acked_by"] == "alice"


def test_kept_kinds_are_neither_opened_nor_resolved():
    eng, st, now = setup()
    eng.update("clinic", [STALE, DAMAGE])
    unreachable = Condition("unreachable/clinic", "unreachable", "clinic: cannot be reached", "timeout")
    ev = eng.update("clinic", [unreachable], keep={"stale", "damage"})
    assert [(e.event, e.kind) for e in ev] == [("alert", "unreachable")]
    assert {a["kind"] for a in st.open_alerts()} == {"stale", "damage", "unreachable"}
    ev = eng.update("clinic", [STALE])
    assert sorted((e.event, e.kind) for e in ev) == [("resolved", "damage"), ("resolved", "unreachable")]


def test_changing_text_updates_the_alert_without_a_new_message():
    eng, st, now = setup()
    eng.update("clinic", [DAMAGE])
    n = len(deliveries(st))
    more = Condition(DAMAGE.key, "damage", DAMAGE.title, DAMAGE.text + "\n- data blob blobs/cd/cd34: missing")
    assert eng.update("clinic", [more]) == []
    assert len(deliveries(st)) == n and "cd34" in st.open_alerts()[0]["text"]


def test_a_burst_becomes_one_digest_per_target():
    eng, st, now = setup()
    conds = [Condition(f"stale/clinic/c{i}", "stale", f"clinic: channel c{i} is stale", f"c{i} is old")
             for i in range(20)]
    ev = eng.update("clinic", conds)
    assert len(ev) == 20 and len(st.open_alerts()) == 20
    d = deliveries(st)
    assert [(x["target"], x["event"]) for x in d] == [("mail", "digest"), ("webhook:ntfy", "digest")]
    assert d[0]["subject"] == "[rekkord] clinic: 20 new alerts"
    assert all(f"ALERT: clinic: channel c{i} is stale" in d[0]["body"] for i in range(20))
    assert len(json.loads(d[1]["payload"])["events"]) == 20
    eng.update("clinic", conds[:2])
    assert deliveries(st)[-1]["subject"] == "[rekkord] clinic: 18 resolved"


def test_no_targets_no_deliveries_but_alerts_are_kept():
    now = [1.0]
    cfg = MonitorConfig(path="x", repos=[RepoConfig("clinic", "/r", "/k")])
    st = State(None)
    eng = AlertEngine(st, cfg, clock=lambda: now[0])
    assert [e.event for e in eng.update("clinic", [STALE])] == ["alert"]
    assert deliveries(st) == [] and len(st.open_alerts()) == 1

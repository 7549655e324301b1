"""Prometheus metrics, computed from the state at each scrape
(prometheus_client's custom collector; its exposition format)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .alerts import KINDS, SEVERITIES
from .watch import channel_overview

CHECK_STATUSES = ("clean", "damaged", "incomplete", "error", "none")


class MonitorCollector:
    def __init__(self, monitor):
        self.monitor = monitor

    def describe(self):
        return []  # collected on demand; no registration-time scrape

    def collect(self):
        m = self.monitor
        state = m.state
        now = m.clock()
        R, RC = ["repository"], ["repository", "channel"]
        g = {
            "ch_time": GaugeMetricFamily("rekkord_channel_last_snapshot_timestamp_seconds",
                                         "Time of the channel's latest trusted snapshot", labels=RC),
            "ch_age": GaugeMetricFamily("rekkord_channel_age_seconds",
                                        "Age of the channel's latest trusted snapshot", labels=RC),
            "ch_max": GaugeMetricFamily("rekkord_channel_max_age_seconds", "The channel's configured maximum age",
                                        labels=RC),
            "ch_stale": GaugeMetricFamily("rekkord_channel_stale", "1 when the channel is stale", labels=RC),
            "ch_failed": GaugeMetricFamily("rekkord_channel_failed",
                                           "Hosts whose latest save of the channel failed (a failure report newer "
                                           "than their latest snapshot)", labels=RC),
            "ch_snaps": GaugeMetricFamily("rekkord_channel_snapshots", "Trusted snapshots of the channel", labels=RC),
            "ch_untrusted": GaugeMetricFamily("rekkord_channel_untrusted_snapshots",
                                              "Snapshots of the channel signed by a revoked or unknown key", labels=RC),
            "ch_bytes": GaugeMetricFamily("rekkord_channel_last_snapshot_bytes",
                                          "Size of the files of the channel's latest trusted snapshot", labels=RC),
            "up": GaugeMetricFamily("rekkord_repository_up", "1 when the latest poll reached the repository",
                                    labels=R),
            "poll": GaugeMetricFamily("rekkord_repository_last_poll_timestamp_seconds", "Time of the latest poll",
                                      labels=R),
            "bytes": GaugeMetricFamily("rekkord_repository_bytes", "Stored bytes of the repository", labels=R),
            "objects": GaugeMetricFamily("rekkord_repository_objects", "Stored objects of the repository", labels=R),
            "snaps": GaugeMetricFamily("rekkord_repository_snapshots", "Snapshot records in the repository",
                                       labels=R),
            "check_time": GaugeMetricFamily("rekkord_check_last_timestamp_seconds", "Start of the latest check",
                                            labels=R),
            "check_dur": GaugeMetricFamily("rekkord_check_last_duration_seconds", "Duration of the latest check",
                                           labels=R),
            "check_ok": GaugeMetricFamily("rekkord_check_last_ok", "1 when the latest check found no problem",
                                          labels=R),
            "check_problems": GaugeMetricFamily("rekkord_check_last_problems", "Problems found by the latest check",
                                                labels=R),
            "check_status": GaugeMetricFamily("rekkord_check_last_status",
                                              "1 for the status of the latest check", labels=R + ["status"]),
            "alerts": GaugeMetricFamily("rekkord_alerts_firing", "Open alerts", labels=R + ["kind", "severity"]),
            "deliveries": GaugeMetricFamily("rekkord_deliveries", "Alert messages by delivery status",
                                            labels=["status"]),
        }
        open_alerts = {}
        for a in state.open_alerts():
            k = (a["repo"], a["kind"], a["severity"])
            open_alerts[k] = open_alerts.get(k, 0) + 1
        for rc in m.config.repos:
            name = rc.name
            r = state.repository(name)
            reached = r["last_poll_ok"] is not None and r["failed_polls"] == 0
            g["up"].add_metric([name], 1 if reached else 0)
            if r["last_poll"] is not None:
                g["poll"].add_metric([name], r["last_poll"])
            if r["bytes"] is not None:
                g["bytes"].add_metric([name], r["bytes"])
                g["objects"].add_metric([name], r["objects"])
            n = state.one("SELECT count(*) FROM snapshots WHERE repo = ? AND gone IS NULL", (name,))[0]
            g["snaps"].add_metric([name], n)
            last = state.last_check(name)
            status = last["status"] if last else "none"
            for s in CHECK_STATUSES:
                g["check_status"].add_metric([name, s], 1 if s == status else 0)
            if last:
                g["check_time"].add_metric([name], last["started"])
                if last["duration"] is not None:
                    g["check_dur"].add_metric([name], last["duration"])
                g["check_ok"].add_metric([name], 1 if status == "clean" else 0)
                g["check_problems"].add_metric([name], len(last["problems"]))
            for c in channel_overview(state, rc, now):
                lab = [name, c["channel"]]
                s = c["latest"]
                if s is not None:
                    g["ch_time"].add_metric(lab, s["time_ns"] / 1e9)
                    g["ch_age"].add_metric(lab, c["age"])
                    if s["bytes_total"] is not None:
                        g["ch_bytes"].add_metric(lab, s["bytes_total"])
                g["ch_max"].add_metric(lab, c["max_age"])
                g["ch_stale"].add_metric(lab, 1 if c["stale"] else 0)
                g["ch_failed"].add_metric(lab, len(c["failed"]))
                g["ch_snaps"].add_metric(lab, c["snapshots"])
                g["ch_untrusted"].add_metric(lab, c["untrusted"])
            for kind in KINDS:
                for sev in SEVERITIES:
                    g["alerts"].add_metric([name, kind, sev], open_alerts.get((name, kind, sev), 0))
        for s in ("pending", "sent", "failed"):
            g["deliveries"].add_metric([s], state.one("SELECT count(*) FROM deliveries WHERE status = ?", (s,))[0])
        yield from g.values()


def exposition(monitor) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor))
    return generate_latest(registry), CONTENT_TYPE_LATEST

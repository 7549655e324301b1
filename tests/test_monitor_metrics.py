"""/metrics (rekkord/monitor/metrics.py), parsed with prometheus_client's
own parser: every family, values that follow the state, and label values
from hostile repositories (a channel name is a writer's choice) that cannot
break the exposition format."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("prometheus_client")

from monitorutil import make_machine, new_repository, write_config  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from rekkord.monitor.config import load  # noqa: E402
from rekkord.monitor.metrics import exposition  # noqa: E402
from rekkord.monitor.service import Monitor  # noqa: E402

HOSTILE = 'we"ird\\chan} nel{x="1"}'


def parse(mon):
    body, ctype = exposition(mon)
    assert ctype.startswith("text/plain; version=")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return fams, {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}


def test_metrics_follow_the_state(tmp_path):
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    web = make_machine(str(tmp_path), master, url, "web01")
    now = [time.time()]
    web.save(time_ns=int(now[0] * 1e9))
    web.save(HOSTILE, time_ns=int(now[0] * 1e9))
    web.fail("db")
    cfg = load(write_config(tmp_path / "m.toml", repositories=[
        {"name": "clinic", "url": url, "key_file": audit, "channels": {"web01-files": {"max_age": "1h"}}}]))
    mon = Monitor(cfg, clock=lambda: now[0])
    try:
        fams, v = parse(mon)
        assert v[("rekkord_repository_up", (("repository", "clinic"),))] == 0  # not polled yet
        assert v[("rekkord_check_last_status", (("repository", "clinic"), ("status", "none")))] == 1
        mon.run_once()
        fams, v = parse(mon)
        for name in ("rekkord_channel_age_seconds", "rekkord_channel_last_snapshot_timestamp_seconds",
                     "rekkord_channel_stale", "rekkord_channel_failed", "rekkord_channel_snapshots",
                     "rekkord_repository_bytes", "rekkord_repository_snapshots", "rekkord_check_last_ok",
                     "rekkord_check_last_duration_seconds", "rekkord_alerts_firing", "rekkord_deliveries"):
            assert fams[name].type == "gauge" and fams[name].documentation, name

        def ch(name, channel):
            return v[(name, (("channel", channel), ("repository", "clinic")))]

        assert v[("rekkord_repository_up", (("repository", "clinic"),))] == 1
        assert v[("rekkord_repository_snapshots", (("repository", "clinic"),))] == 2
        assert v[("rekkord_repository_bytes", (("repository", "clinic"),))] > 0
        assert ch("rekkord_channel_snapshots", HOSTILE) == 1  # the label survives, escaped
        assert ch("rekkord_channel_stale", "web01-files") == 0 and ch("rekkord_channel_failed", "db") == 1
        assert ch("rekkord_channel_max_age_seconds", "web01-files") == 3600
        assert v[("rekkord_check_last_ok", (("repository", "clinic"),))] == 1
        assert v[("rekkord_alerts_firing", (("kind", "failed"), ("repository", "clinic"),
                                            ("severity", "critical")))] == 1
        now[0] += 7200
        mon.poll("clinic")
        fams, v = parse(mon)
        assert ch("rekkord_channel_stale", "web01-files") == 1
        assert 7200 <= ch("rekkord_channel_age_seconds", "web01-files") < 7300
        assert v[("rekkord_alerts_firing", (("kind", "stale"), ("repository", "clinic"),
                                            ("severity", "critical")))] == 1
    finally:
        mon.close()

"""The monitor's scheduler (rekkord/monitor/service.py) with its threads:
polls and checks on their own, a check requested now, an internal error
that is logged without stopping the service, and a quick stop."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("starlette")

from monitorutil import make_machine, new_repository, wait_for, write_config  # noqa: E402
from rekkord.monitor.config import load  # noqa: E402
from rekkord.monitor.service import Monitor  # noqa: E402


def test_the_threads_poll_check_and_deliver(tmp_path, smtp_server, caplog):
    caplog.set_level(logging.INFO, logger="rekkord.monitor")
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    web = make_machine(str(tmp_path), master, url, "web01")
    cfg = load(write_config(tmp_path / "m.toml", monitor={"poll_every": "0.3s", "check_every": "1h"},
                            repositories=[{"name": "clinic", "url": url, "key_file": audit,
                                           "channels": {"web01-files": {}}}], mail=smtp_server.config()))
    mon = Monitor(cfg)
    mon.start()
    try:
        smtp_server.mailbox.wait("ALERT", "channel web01-files is stale")  # configured, never saved
        wait_for(lambda: mon.state.last_check("clinic"), what="the first check")
        web.save()
        smtp_server.mailbox.wait("RESOLVED", "channel web01-files is stale")
        assert len(mon.state.checks("clinic")) == 1  # not due again for an hour
        mon.request_check("clinic")
        wait_for(lambda: len(mon.state.checks("clinic")) == 2, what="the requested check")
        # A bug in a poll is logged with its traceback; the service goes on.
        real = mon.watchers["clinic"].poll
        mon.watchers["clinic"].poll = lambda: 1 / 0
        wait_for(lambda: "poll failed with an internal error" in caplog.text, what="the logged error")
        assert "ZeroDivisionError" in caplog.text
        mon.watchers["clinic"].poll = real
        wait_for(lambda: mon.state.repository("clinic")["failed_polls"] == 0, what="a good poll again")
    finally:
        threads = list(mon._threads)
        mon.stop()
        mon.state.close()
    assert threads and not any(t.is_alive() for t in threads)

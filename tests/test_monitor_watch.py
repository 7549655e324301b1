"""Watching repositories with an audit key (rekkord/monitor/watch.py),
driven step by step with a clock of the test's: every alert condition of
issue 13 appears and resolves, on real repositories (local, S3 on
SeaweedFS, SFTP on OpenSSH); history survives a restart; and nothing the
monitor stores names a file."""

from __future__ import annotations

import glob
import os
import time

import pytest

pytest.importorskip("starlette")

from monitorutil import make_machine, new_repository, secret_names, write_config  # noqa: E402
from rekkord import crypto, format as fmt  # noqa: E402
from rekkord.monitor.config import load  # noqa: E402
from rekkord.monitor.service import Monitor  # noqa: E402
from rekkord.monitor.watch import channel_overview, check_due  # noqa: E402


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t

    def ns(self):
        return int(self.t * 1e9)


def open_kinds(m, repo="clinic"):
    return sorted(a["key"] for a in m.state.open_alerts(repo))


@pytest.fixture
def world(tmp_path, smtp_server):
    """One local repository, two machines saving into it, a monitor with a
    test clock, mail to a real SMTP server."""
    url = str(tmp_path / "repo")
    master, audit = new_repository(str(tmp_path / "keys"), url)
    m1 = make_machine(str(tmp_path), master, url, "web01")
    m2 = make_machine(str(tmp_path), master, url, "db01")
    clock = Clock()
    path = write_config(
        tmp_path / "monitor.toml", monitor={"repeat_after": "6h", "burst": 20},
        repositories=[{"name": "clinic", "url": url, "key_file": audit, "max_age": "1d",
                       "channels": {"web01-files": {"max_age": "1h", "hosts": ["web01"]},
                                    "db01-files": {"hosts": ["db01"]}}}],
        mail=smtp_server.config())
    m1.save(time_ns=clock.ns())
    m2.save(time_ns=clock.ns())
    mon = Monitor(load(path), clock=clock)
    yield mon, clock, master, m1, m2, url
    mon.close()


def step(mon, clock, seconds=60, check=False):
    clock.t += seconds
    mon.poll("clinic")
    if check:
        mon.check("clinic")
    mon.deliverer.run_due()


def test_stale_failed_warnings_and_resolved(world, smtp_server):
    mon, clock, master, m1, m2, url = world
    step(mon, clock, check=True)
    assert open_kinds(mon) == []
    chans = {c["channel"]: c for c in channel_overview(mon.state, mon.config.repo("clinic"), clock())}
    assert {k: c["status"] for k, c in chans.items()} == {"web01-files": "fresh", "db01-files": "fresh"}
    # web01 stops saving: stale after its hour, db01 (a day) is not.
    step(mon, clock, 3700)
    assert open_kinds(mon) == ["stale/clinic/web01-files"]
    (rcpt, msg), = smtp_server.mailbox.wait("ALERT", "channel web01-files is stale")
    assert "The latest trusted snapshot of channel web01-files" in msg.get_content()
    # db01's save fails: a failure report, no snapshot.
    m2.fail(message="cannot read /srv/db01-secret-dump.sql")
    step(mon, clock)
    assert open_kinds(mon) == ["failed/clinic/db01-files/db01", "stale/clinic/web01-files"]
    (_, msg), = smtp_server.mailbox.wait("ALERT", "the save of channel db01-files on db01 failed")
    assert "exit code 7 (StorageError)" in msg.get_content() and "secret" not in msg.as_string()
    chans = {c["channel"]: c for c in channel_overview(mon.state, mon.config.repo("clinic"), clock())}
    assert chans["db01-files"]["status"] == "failed" and chans["web01-files"]["status"] == "stale"
    # Both fixed: the next save of each.
    m1.save(time_ns=clock.ns())
    m2.save(time_ns=clock.ns())
    step(mon, clock)
    assert open_kinds(mon) == []
    smtp_server.mailbox.wait("RESOLVED", "channel web01-files is stale")
    smtp_server.mailbox.wait("RESOLVED", "db01-files on db01 failed")
    # A save with warnings: a warning (when the channel says so).
    from rekkord.report import write_report

    repo = m2.open()
    write_report(repo, channel="db01-files", host="db01", status="warning", exit_code=3, error_kind="Warnings",
                 warnings=[("/srv/db01-secret-dump.sql", "changed while it was read")], time_ns=clock.ns() + 1)
    step(mon, clock)
    (a,) = mon.state.open_alerts()
    assert a["key"] == "warnings/clinic/db01-files/db01" and a["severity"] == "warning"
    m2.save(time_ns=clock.ns())
    step(mon, clock)
    assert open_kinds(mon) == []
    # No reminder storms: a stale channel mails once per repeat delay.
    step(mon, clock, 3700)
    for _ in range(40):  # 6h40m of polls every 10 minutes: one reminder (repeat_after 6h)
        step(mon, clock, 600)
    assert len(smtp_server.mailbox.find("channel web01-files is stale", "ALERT")) == 2
    assert len(smtp_server.mailbox.find("channel web01-files is stale", "REMINDER")) == 1


def test_untrusted_keys_and_unexpected_hosts(world, tmp_path):
    mon, clock, master, m1, m2, url = world
    admin = m1.open(master)
    # A key the master never certified, signing a record (an insider with the log key).
    rogue_seed = os.urandom(32)
    sid = crypto.random_bytes(16).hex()
    rec = {"v": 1, "id": sid, "repo": admin.id, "kid": "0" * 24, "channel": "db01-files", "time_ns": clock.ns(),
           "host": "db01", "user": "root", "tags": [], "index": [], "reflist": [], "stats": {}}
    from rekkord.keys import kid_of

    rec["kid"] = kid_of(crypto.sign_public(rogue_seed))
    admin.storage.write(f"snapshots/{sid}", fmt.seal_record(sid, rec, rogue_seed, bytes.fromhex(admin.config["log_pk"]),
                                                            admin.log_mix))
    # web01's key is revoked, and the machine saves on with it.
    admin.revoke(m1.key.kid)
    clock.t = max(clock.t, time.time()) + 1
    bad = m1.save(time_ns=clock.ns())
    # A certified key of another machine saves into db01's channel.
    intruder = make_machine(str(tmp_path), master, url, "laptop")
    odd = intruder.save("db01-files", time_ns=clock.ns())
    step(mon, clock, 1, check=True)
    assert open_kinds(mon) == ["unexpected-host/clinic/db01-files", "untrusted/clinic/db01-files",
                               "untrusted/clinic/web01-files"]
    alerts = {a["key"]: a for a in mon.state.open_alerts()}
    assert "after it was revoked" in alerts["untrusted/clinic/web01-files"]["text"]
    assert bad.snapshot_id in alerts["untrusted/clinic/web01-files"]["text"]
    assert "not certified" in alerts["untrusted/clinic/db01-files"]["text"] and sid in \
        alerts["untrusted/clinic/db01-files"]["text"]
    assert odd.snapshot_id in alerts["unexpected-host/clinic/db01-files"]["text"] and "laptop" in \
        alerts["unexpected-host/clinic/db01-files"]["text"]
    # These are not damage: the check's untrusted records are the untrusted alert.
    assert "damage/clinic" not in alerts
    # The revoked key's new snapshot does not count as fresh for its channel.
    chans = {c["channel"]: c for c in channel_overview(mon.state, mon.config.repo("clinic"), clock())}
    assert chans["web01-files"]["untrusted"] == 1 and chans["web01-files"]["latest"]["id"] != bad.snapshot_id
    # Fixed: the snapshots are forgotten (an audit key can), web01 gets a new key.
    from rekkord.forget import forget

    forget(m1.open(load_audit(mon)), ids=[bad.snapshot_id, sid, odd.snapshot_id])
    step(mon, clock, 1, check=True)
    assert open_kinds(mon) == []
    assert {a["key"] for a in mon.state.alerts("clinic") if a["resolved"]} == set(alerts)


def load_audit(mon):
    return mon.config.repo("clinic").load_key()


def test_damage_names_objects_and_snapshots_and_resolves(world, smtp_server):
    mon, clock, master, m1, m2, url = world
    step(mon, clock, check=True)
    snap = m1.open(master).load_snapshot(max(m1.open(master).snapshot_ids()))  # any snapshot
    data_blobs = [b for b, _ in snap.reflist]
    victim = os.path.join(url, *fmt.blob_name(data_blobs[0]).split("/"))
    original = open(victim, "rb").read()
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(bytes([original[100] ^ 1]))
    step(mon, clock, check=False)
    assert open_kinds(mon) == []  # a poll does not read blobs; the scheduled check does
    assert not check_due(mon.state, mon.config, mon.config.repo("clinic"), clock())
    mon.request_check("clinic")
    assert check_due(mon.state, mon.config, mon.config.repo("clinic"), clock())
    step(mon, clock, check=True)
    (a,) = mon.state.open_alerts()
    assert a["key"] == "damage/clinic"
    assert fmt.blob_name(data_blobs[0]) in a["text"] and "Snapshots hurt (1)" in a["text"]
    assert f"{snap.id} channel {snap.channel}, host {snap.host}" in a["text"]
    (_, msg), = smtp_server.mailbox.wait("ALERT", "clinic: check found damage")
    assert fmt.blob_name(data_blobs[0]) in msg.get_content()
    with open(victim, "wb") as f:
        f.write(original)
    step(mon, clock, check=True)  # (requested checks and due ones: here a manual one)
    assert open_kinds(mon) == []
    smtp_server.mailbox.wait("RESOLVED", "clinic: check found damage")


def test_size_alerts_and_their_acknowledgement(world):
    mon, clock, master, m1, m2, url = world
    step(mon, clock, check=True)
    base = mon.state.repository("clinic")["bytes"]
    with open(os.path.join(m1.tree, "bulk-Zebulon.log"), "wb") as f:
        f.write(os.urandom(3 * base))
    m1.save(time_ns=clock.ns())
    step(mon, clock)
    (a,) = mon.state.open_alerts()
    assert a["key"] == "size/clinic" and "grew" in a["title"] and "Zebulon" not in a["text"]
    step(mon, clock, check=True)  # a check does not accept a size that is alerting
    assert open_kinds(mon) == ["size/clinic"]
    assert mon.acknowledge(a["id"], "alice")
    assert open_kinds(mon) == []
    # Shrinking: web01's snapshots forgotten and pruned.
    from rekkord.forget import forget
    from rekkord.gc import Pruner

    audit = m1.open(load_audit(mon))
    forget(audit, ids=[s.id for s in audit.snapshots() if s.host == "web01"])
    Pruner(m1.open(load_audit(mon))).run()
    step(mon, clock)
    assert open_kinds(mon) == ["size/clinic", "stale/clinic/web01-files"]  # (a configured channel, now empty)
    a = {x["key"]: x for x in mon.state.open_alerts()}["size/clinic"]
    assert "shrank" in a["title"] and "mass deletion?" in a["text"]


def test_unreachable_keeps_what_it_cannot_know(world, smtp_server):
    mon, clock, master, m1, m2, url = world
    step(mon, clock, 3700)
    assert open_kinds(mon) == ["stale/clinic/web01-files"]
    os.rename(url, url + ".away")
    step(mon, clock)
    assert open_kinds(mon) == ["stale/clinic/web01-files"]  # one failed poll is not an alert yet
    step(mon, clock)
    assert open_kinds(mon) == ["stale/clinic/web01-files", "unreachable/clinic"]
    a = {x["key"]: x for x in mon.state.open_alerts()}["unreachable/clinic"]
    assert "could not be read 2 times in a row" in a["text"] and "no rekkord repository" in a["text"]
    os.rename(url + ".away", url)
    m1.save(time_ns=clock.ns())
    step(mon, clock)
    assert open_kinds(mon) == []
    smtp_server.mailbox.wait("RESOLVED", "cannot be reached")


def test_a_restart_keeps_history_alerts_and_the_check_schedule(world, smtp_server):
    mon, clock, master, m1, m2, url = world
    step(mon, clock, check=True)
    step(mon, clock, 3700)
    assert open_kinds(mon) == ["stale/clinic/web01-files"]
    checks, sizes = len(mon.state.checks("clinic")), mon.state.q("SELECT count(*) FROM sizes")[0][0]
    mails = len(smtp_server.mailbox.messages)
    cfg = mon.config
    mon.close()
    mon2 = Monitor(cfg, clock=clock)
    try:
        assert not check_due(mon2.state, cfg, cfg.repo("clinic"), clock())  # resumed: checked 1h ago, daily
        mon2.run_once()
        assert len(mon2.state.checks("clinic")) == checks
        assert open_kinds(mon2) == ["stale/clinic/web01-files"]
        assert len(smtp_server.mailbox.messages) == mails  # the open alert is not sent again
        assert mon2.state.q("SELECT count(*) FROM sizes")[0][0] >= sizes
        clock.t += 86400
        assert check_due(mon2.state, cfg, cfg.repo("clinic"), clock())
        mon2.run_once()
        assert len(mon2.state.checks("clinic")) == checks + 1
    finally:
        mon2.close()
    # Deleting the state loses history only: the next run sees everything again.
    for f in glob.glob(cfg.state_path + "*"):
        os.remove(f)
    mon3 = Monitor(cfg, clock=clock)
    try:
        mon3.run_once()
        assert open_kinds(mon3) == ["stale/clinic/db01-files", "stale/clinic/web01-files"]
        assert len(mon3.state.checks("clinic")) == 1
    finally:
        mon3.close()


def test_nothing_stored_names_a_file(world, smtp_server):
    """The monitor holds an audit key: the state database (and its WAL), the
    check cache and every message hold no name of the saved trees, even with
    damage, failures and warnings that name files."""
    mon, clock, master, m1, m2, url = world
    from rekkord.report import write_report

    names = secret_names([m1, m2])
    assert any("Patient-Record" in n for n in names)
    write_report(m2.open(), channel="db01-files", host="db01", status="warning", exit_code=3, error_kind="Warnings",
                 warnings=[(n, "cannot open: Permission denied") for n in names], time_ns=clock.ns() + 1)
    m1.fail(message=f"cannot read {names[0]}", warnings=[(n, "gone") for n in names])
    snap = m1.open(master).load_snapshot(m1.open(master).snapshot_ids()[0])
    victim = os.path.join(url, *fmt.blob_name(snap.reflist[0][0]).split("/"))
    os.remove(victim)  # damage: a reference list is gone
    step(mon, clock, 3700, check=True)
    assert {a["kind"] for a in mon.state.open_alerts()} >= {"stale", "failed", "warnings", "damage"}
    blobs = []
    for f in glob.glob(os.path.join(mon.config.state_dir, "**", "*"), recursive=True):
        if os.path.isfile(f):
            blobs.append((f, open(f, "rb").read()))
    blobs.append(("mail", smtp_server.mailbox.everything().encode()))
    assert blobs
    for where, data in blobs:
        for n in names:
            base = os.path.basename(n)
            assert base.encode() not in data, (where, base)


@pytest.mark.s3
def test_a_repository_on_s3(tmp_path, s3_server, smtp_server):
    watch_remote(tmp_path, s3_server.url(), s3_server.options(), smtp_server, storage_cfg={
        "endpoint_url": s3_server.endpoint_url, "access_key_id": s3_server.access_key_id,
        "secret_access_key": s3_server.secret_access_key, "region": s3_server.region})


@pytest.mark.sftp
def test_a_repository_on_sftp(tmp_path, sftp_server, smtp_server):
    opts = sftp_server.options()
    watch_remote(tmp_path, sftp_server.url(), opts, smtp_server,
                 storage_cfg={"sftp_key_file": opts["sftp_key_file"], "sftp_fingerprint": opts["sftp_fingerprint"]})


def watch_remote(tmp_path, url, options, smtp_server, storage_cfg):
    master, audit = new_repository(str(tmp_path / "keys"), url, options)
    m = make_machine(str(tmp_path), master, url, "web01", options=options)
    m.save()
    m.fail("other", message="disk full")
    path = write_config(tmp_path / "monitor.toml", repositories=[
        {"name": "remote", "url": url, "key_file": audit, "storage": storage_cfg}], mail=smtp_server.config())
    mon = Monitor(load(path))
    try:
        mon.run_once()
        r = mon.state.repository("remote")
        assert r["failed_polls"] == 0 and r["bytes"] > 0 and r["repo_id"] == master.repo
        assert mon.state.last_check("remote")["status"] == "clean"
        assert open_kinds(mon, "remote") == ["failed/remote/other/web01"]
        # Damage on the remote storage: a blob overwritten with other bytes.
        repo = m.open(master)
        snap = repo.load_snapshot(repo.snapshot_ids()[0])
        name = fmt.blob_name(snap.index[0][0])
        raw = bytearray(repo.storage.read(name))
        raw[70] ^= 1
        repo.storage.write(name, bytes(raw), exclusive=False)
        mon.request_check("remote")
        mon.run_once()
        assert open_kinds(mon, "remote") == ["damage/remote", "failed/remote/other/web01"]
        assert name in {a["key"]: a for a in mon.state.open_alerts()}["damage/remote"]["text"]
        smtp_server.mailbox.wait("ALERT", "remote: check found damage")
    finally:
        mon.close()

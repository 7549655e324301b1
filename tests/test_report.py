"""Failure reports (rekkord/report.py): what an audit key sees and what it
cannot, hostile reports refused, trust only for keys that may save, check
and prune."""

from __future__ import annotations

import json
import os
import struct
import time

import pytest

from rekkord import crypto, format as fmt, keys as keymod, report as rp
from rekkord.check import Checker
from rekkord.errors import IntegrityError, PermissionDenied, UnsupportedFormat
from rekkord.gc import Pruner

SECRET_NAMES = ["patient-Zebulon-Quaxley.pdf", "/home/dr-Hortensia/notes"]
WARNINGS = [(f"/srv/{SECRET_NAMES[0]}", "cannot open: Permission denied"),
            (SECRET_NAMES[1], "changed while it was read")]


def write(repo, **kw):
    args = dict(channel="etc", host="web01", status="warning", exit_code=3, error_kind="Warnings",
                warnings=WARNINGS, files=12, bytes_total=3456)
    args.update(kw)
    return rp.write_report(repo, **args)


def raw_body(local_repo, name):
    """What the audit key decrypts of a stored report (body text and all)."""
    audit = local_repo.repo("audit")
    rid = name.split("/")[1]
    body, msg, _ = rp._open_body(rid, audit.storage.read(name), audit.key.log_sk, audit.log_mix)
    return body, msg


def forge(repo, body: dict, *, rid: str | None = None, sign_seed=None) -> str:
    """A report made by someone holding ``repo``'s key (a writer turned
    hostile: it can seal to the log key and sign with its own key)."""
    rid = rid or crypto.random_bytes(16).hex()
    raw = rp.seal_report(rid, body, sign_seed or repo.key.sign_seed, bytes.fromhex(repo.config["log_pk"]),
                         repo.log_mix)
    repo.storage.write(rp.PREFIX + rid, raw)
    return rid


def valid_body(repo, rid):
    d = json.dumps({"error": None, "warnings": [], "omitted": 0}).encode()
    did = repo.codec.blob_id(fmt.T_INDEX, d)
    return {"v": 1, "id": rid, "repo": repo.id, "kid": repo.key.kid, "host": "h", "channel": "c",
            "time_ns": time.time_ns(), "exit_code": 1, "status": "failure", "error": "StorageError",
            "counts": {"files": 0, "warnings": 0, "bytes": 0},
            "details": {"id": did.hex(), "sealed": bytes(repo.codec.seal(fmt.T_INDEX, did, d)).hex()}}


def test_a_write_key_writes_what_an_audit_key_reads_without_any_file_name(local_repo):
    writer = local_repo.repo("write")
    name = write(writer, status="failure", exit_code=7, error_kind="StorageError",
                 error_message=f"cannot write {SECRET_NAMES[0]}: connection reset", warnings=WARNINGS)
    (rep,) = rp.reports(local_repo.repo("audit"))
    assert rep.name == name and rep.trusted and rep.problems == []
    assert (rep.channel, rep.host, rep.status, rep.exit_code, rep.error) == ("etc", "web01", "failure", 7,
                                                                             "StorageError")
    assert (rep.files, rep.warnings, rep.bytes, rep.kid) == (12, 2, 3456, writer.key.kid)
    assert abs(rep.time - time.time()) < 600
    # Everything the audit key can open holds no file name and no message.
    body, msg = raw_body(local_repo, name)
    everything = msg + json.dumps(rep.to_json()).encode()
    for secret in SECRET_NAMES + ["connection reset", "Permission denied", "/srv"]:
        assert secret.encode() not in everything
    # Nor does the stored object, raw or hex.
    raw = writer.storage.read(name)
    for secret in SECRET_NAMES:
        assert secret.encode() not in raw and secret.encode().hex().encode() not in raw
    # The details are for the data key.
    with pytest.raises(PermissionDenied):
        rp.details(local_repo.repo("audit"), rep)
    with pytest.raises(IntegrityError, match="cannot decrypt"):
        local_repo.repo("audit").codec.open(*rep.details_blob, fmt.T_INDEX)
    (full_rep,) = rp.reports(local_repo.repo("full"))
    d = rp.details(local_repo.repo("full"), full_rep)
    assert d["error"] == f"cannot write {SECRET_NAMES[0]}: connection reset"
    assert d["warnings"] == [f"{p}: {m}" for p, m in WARNINGS] and d["omitted"] == 0


def test_details_are_bounded_and_count_what_was_left_out(local_repo):
    writer = local_repo.repo("write")
    many = [(f"/data/file-{i:05d}-" + "x" * 200, "cannot open: Permission denied") for i in range(500)]
    name = write(writer, warnings=many)
    assert writer.storage.stat(name) <= rp.MAX_SIZE
    (rep,) = rp.reports(local_repo.repo("admin"))
    assert rep.warnings == 500
    d = rp.details(local_repo.repo("admin"), rep)
    assert 0 < len(d["warnings"]) < 500 and len(d["warnings"]) + d["omitted"] == 500


def test_error_kinds_are_a_fixed_vocabulary():
    from rekkord import errors

    assert rp.error_kind(errors.NoSpace("disk full at /srv/x")) == "NoSpace"
    assert rp.error_kind(errors.TransientStorageError("x")) == "TransientStorageError"
    assert rp.error_kind(FileNotFoundError(2, "gone", "/srv/secret")) == "OSError"
    assert rp.error_kind(ZeroDivisionError()) == "InternalError"

    class HookFailed(errors.RekkordError):
        pass

    class Special(errors.StorageError):
        pass

    assert rp.error_kind(HookFailed("x")) == "HookFailed" and rp.error_kind(Special("x")) == "StorageError"
    for cls in vars(errors).values():  # every class of the tree has a word (its own or a base's)
        if isinstance(cls, type) and issubclass(cls, errors.RekkordError):
            assert rp.error_kind(cls("x")) in rp.ERROR_KINDS[1:]


def test_a_writer_cannot_record_free_text_as_the_error_kind(local_repo):
    with pytest.raises(ValueError):
        write(local_repo.repo("write"), status="failure", error_kind="cannot open /srv/secret")
    with pytest.raises(ValueError):
        write(local_repo.repo("write"), status="broken")


def test_only_keys_that_may_save_are_trusted(local_repo):
    admin = local_repo.repo("admin")
    write(admin)  # the master key may save
    write(local_repo.repo("full"))
    with pytest.raises(PermissionDenied):
        write(local_repo.repo("audit"))
    with pytest.raises(PermissionDenied):
        write(local_repo.repo("read"))
    # A modified client with an audit or read key can still sign one: untrusted.
    for role in ("audit", "read"):
        repo = local_repo.repo(role)
        rid = crypto.random_bytes(16).hex()
        forge(local_repo.repo("write"), {**valid_body(local_repo.repo("write"), rid), "kid": repo.key.kid},
              rid=rid, sign_seed=repo.key.sign_seed)
    # A key the master never certified (someone with storage access).
    rogue = keymod.Key.generate_master()
    rid = crypto.random_bytes(16).hex()
    forge(local_repo.repo("write"), {**valid_body(local_repo.repo("write"), rid), "kid": rogue.kid}, rid=rid,
          sign_seed=rogue.sign_seed)
    problems = []
    reps = rp.reports(local_repo.repo("audit"), on_problem=lambda n, m: problems.append((n, m)))
    trusted = {r.kid for r in reps if r.trusted}
    assert trusted == {admin.key.kid, local_repo.keys["full"].kid}
    untrusted = {r.kid: r.problems for r in reps if not r.trusted}
    assert "may not save" in untrusted[local_repo.keys["audit"].kid][0]
    assert "may not save" in untrusted[local_repo.keys["read"].kid][0]
    assert "no valid certificate" in untrusted[rogue.kid][0]
    assert len(problems) == 3


def test_a_revoked_key_is_not_believed_after_its_revocation(local_repo):
    writer = local_repo.repo("write")
    write(writer, channel="before")
    local_repo.repo("admin").revoke(writer.key.kid)
    write(writer, channel="after")
    reps = {r.channel: r for r in rp.reports(local_repo.repo("audit"))}
    assert reps["before"].trusted
    assert not reps["after"].trusted and "after it was revoked" in reps["after"].problems[0]


def test_hostile_reports_are_refused(local_repo):
    writer = local_repo.repo("write")
    audit = local_repo.repo("audit")
    good = write(writer)
    raw = writer.storage.read(good)
    st = writer.storage

    def put(data, rid=None):
        rid = rid or crypto.random_bytes(16).hex()
        st.write(rp.PREFIX + rid, data)
        return rp.PREFIX + rid

    bad = {
        "flipped": put(raw[:100] + bytes([raw[100] ^ 1]) + raw[101:]),
        "truncated": put(raw[:-5]),
        "tiny": put(raw[:20]),
        "empty": put(b""),
        "renamed": put(raw),  # a genuine report copied under another name
        "huge": put(raw + bytes(rp.MAX_SIZE)),
        "not-a-name": put(raw, rid="sub/" + "0" * 32),
    }
    # A snapshot record stored as a report, and a report stored as a record.
    sid = crypto.random_bytes(16).hex()
    record = fmt.seal_record(sid, {"v": 1}, writer.key.sign_seed, bytes.fromhex(writer.config["log_pk"]),
                             writer.log_mix)
    bad["record"] = put(record, rid=sid)
    st.write(f"snapshots/{good.split('/')[1]}", raw)
    with pytest.raises(IntegrityError):
        fmt.open_record(good.split("/")[1], raw, audit.key.log_sk, audit.log_mix)
    # Well sealed and signed by the writer, but malformed fields.
    fields = {
        "v2": {"v": 2}, "other-repo": {"repo": "0" * 32}, "other-id": {"id": "1" * 32},
        "kid": {"kid": "../x"}, "status": {"status": "ok"}, "kind": {"error": "cannot open /srv/secret"},
        "exit": {"exit_code": 256}, "negative": {"time_ns": -1}, "float": {"time_ns": 1.5},
        "bool": {"exit_code": True}, "host": {"host": "x" * 300}, "channel": {"channel": ""},
        "control": {"channel": "a\nb"}, "counts": {"counts": {"files": 1}}, "count": {
            "counts": {"files": 2**64, "warnings": 0, "bytes": 0}},
        "extra": {"path": "/srv/secret"}, "details": {"details": {"id": "zz", "sealed": ""}},
        "details-hex": {"details": {"id": "0" * 64, "sealed": "g" * 400}},
    }
    for label, change in fields.items():
        rid = crypto.random_bytes(16).hex()
        body = {**valid_body(writer, rid), **change}
        if label == "other-id":
            body["id"] = "1" * 32
        bad[label] = rp.PREFIX + forge(writer, body, rid=rid)
    rid = crypto.random_bytes(16).hex()
    text = b"[1, 2]"  # JSON, but not an object
    sig = crypto.sign(writer.key.sign_seed, rp.SIG_CONTEXT + rid.encode() + b"\0" + text)
    eph_sk, eph_pk = crypto.new_ephemeral()
    log_pk = bytes.fromhex(writer.config["log_pk"])
    key = crypto.session_key(writer.log_mix, crypto.x25519(eph_sk, log_pk), eph_pk, log_pk)
    nonce = os.urandom(24)
    header = rp.MAGIC + eph_pk + nonce
    st.write(rp.PREFIX + rid, header + crypto.aead_encrypt(key, nonce, struct.pack("<I", len(text)) + text + sig,
                                                           header + rp.AD_CONTEXT + rid.encode()))
    bad["array"] = rp.PREFIX + rid
    problems = {}
    reps = rp.reports(audit, on_problem=lambda n, m: problems.setdefault(n, m))
    assert [r.name for r in reps] == [good]
    for label, name in bad.items():
        assert name in problems, label
    assert "unknown report version" in problems[bad["v2"]]
    assert "another report id" in problems[bad["other-id"]]
    assert "too large" in problems[bad["huge"]]
    # One call per object, never a traceback; the same refusals from open_report.
    with pytest.raises(UnsupportedFormat):
        rp.open_report(audit, bad["v2"].split("/")[1], st.read(bad["v2"]))
    with pytest.raises(IntegrityError):
        rp.open_report(audit, "x" * 32, raw)


def test_damaged_details_are_an_integrity_error(local_repo):
    writer = local_repo.repo("write")
    rid = crypto.random_bytes(16).hex()
    body = valid_body(writer, rid)
    sealed = bytearray(bytes.fromhex(body["details"]["sealed"]))
    sealed[70] ^= 1
    body["details"]["sealed"] = sealed.hex()
    forge(writer, body, rid=rid)
    (rep,) = rp.reports(local_repo.repo("full"))
    assert rep.trusted  # the audit part is fine
    with pytest.raises(IntegrityError, match="details cannot be opened"):
        rp.details(local_repo.repo("full"), rep)


def test_check_knows_reports_and_reports_forged_ones(local_repo):
    writer = local_repo.repo("write")
    write(writer)
    r = Checker(local_repo.repo("audit"), heal=False).run()
    assert r.ok, [str(p) for p in r.problems]
    writer.storage.write(f"{rp.PREFIX}{'ab' * 16}", b"RKR1" + os.urandom(200))
    rogue = keymod.Key.generate_master()
    rid = crypto.random_bytes(16).hex()
    forge(writer, {**valid_body(writer, rid), "kid": rogue.kid}, rid=rid, sign_seed=rogue.sign_seed)
    r = Checker(local_repo.repo("audit"), heal=False).run()
    by_obj = {p.object: p for p in r.problems}
    assert set(by_obj) == {f"{rp.PREFIX}{'ab' * 16}", f"{rp.PREFIX}{rid}"}
    assert by_obj[f"{rp.PREFIX}{'ab' * 16}"].kind == "damaged"
    assert by_obj[f"{rp.PREFIX}{rid}"].kind == "untrusted" and r.status == "damaged"
    assert all(p.what == "failure report" for p in r.problems)


def test_prune_removes_reports_uploaded_more_than_30_days_ago(local_repo):
    """Age is the storage's: when the report was uploaded, by the storage's
    clock, not the time the writer put in it.  A writer whose clock is 40 days
    behind has its fresh report kept; one uploaded 31 days ago by a writer
    40 days ahead goes."""
    writer = local_repo.repo("write")
    day = 86400 * 10**9

    def aged(name, days):  # the storage wrote it this many days ago
        path = os.path.join(local_repo.url, *name.split("/"))
        t = time.time() - days * 86400
        os.utime(path, (t, t))

    behind = write(writer, time_ns=time.time_ns() - 40 * day)
    ahead_old = write(writer, time_ns=time.time_ns() + 40 * day)
    aged(ahead_old, 31)
    old = write(writer, time_ns=time.time_ns() - 31 * day)
    aged(old, 31)
    new = write(writer, time_ns=time.time_ns() - 29 * day)
    aged(new, 29)
    junk = f"{rp.PREFIX}{'cd' * 16}"
    writer.storage.write(junk, b"not a report")
    aged(junk, 100)
    rep = Pruner(local_repo.repo("audit")).run()
    assert rep.reports_removed == 2
    names = {n for n, _ in writer.storage.list(rp.PREFIX)}
    assert names == {new, behind, junk}  # what does not open is left for check to report

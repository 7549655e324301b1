"""Failure reports: what a writer leaves in the repository when a save fails
or ends with warnings (format v1, docs/format.md §11).

A report is ``reports/<rid>`` (16 random bytes, 32 hex) and has two parts:

* the **audit part**, sealed to the repository's log key exactly like a
  snapshot record (but with its own magic, associated data and signature
  context, so neither can be taken for the other) and signed by the writer's
  own key: host, channel, time, exit code, status, a fixed-vocabulary error
  kind, counts (files, warnings, bytes) and the writer's kid.  It never holds
  a file name, a path or an error message (which may name one): an audit key
  (the monitor, ``rekkord reports``) opens it and sees nothing it may not.
* the **details**, sealed to the data key like a record's ``private`` part
  (a type-2 blob, inline hex): the error message and the warning lines.  Only
  read, full and admin keys open them.

Everything in a report is hostile input: :func:`open_report` bounds sizes
before reading, validates every field, and trusts a report only when it is
signed by a certified key whose role may save (the master key, full, write)
and that was not revoked at the report's time.

All of the construction lives in this module so that it can move behind a
per-format-version codec with the rest.
"""

from __future__ import annotations

import json
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import crypto, format as fmt, keys as keymod
from .errors import IntegrityError, ObjectNotFound, RekkordError, StorageError, UnsupportedFormat

PREFIX = "reports/"
MAGIC = b"RKR1"
SIG_CONTEXT = b"rekkord report v1\0"
AD_CONTEXT = b"rekkord report v1 sealed\0"
HEADER = 60  # magic, ephemeral public key, nonce
#: A whole stored report is at most this big (checked before it is read).
MAX_SIZE = 64 * 1024
#: The details' plaintext (JSON) is cut to fit in this.
MAX_DETAILS = 16 * 1024
MAX_TEXT = 255  # host, channel
MAX_INT = 2**63 - 1
#: Reports older than this are removed by prune.
KEEP = 30 * 86400

STATUSES = ("failure", "warning")
#: The error kinds a writer may record: names of exception classes (and
#: ``Warnings`` for a save that completed with warnings).  Nothing else: a
#: free-form message could name a file.
ERROR_KINDS = (
    "Warnings", "RekkordError", "UsageError", "ConfigError", "KeyError_", "WrongPassphrase", "WrongKey",
    "PermissionDenied", "NotFound", "RepositoryNotFound", "SnapshotNotFound", "PathNotFound", "IntegrityError",
    "ConfigMismatch", "KeyFileExists", "RepositoryExists", "UnsupportedFormat", "PartialFailure", "StorageError",
    "ObjectNotFound", "ObjectExists",
    "StoragePermissionDenied", "NoSpace", "TransientStorageError", "Interrupted", "HookFailed", "OSError",
    "InternalError",
)
#: Roles whose reports are trusted: those that may save.
SAVING_ROLES = ("full", "write")

_RID = re.compile(r"[0-9a-f]{32}\Z")
_KID = re.compile(r"[0-9a-f]{24}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS = {"v", "id", "repo", "kid", "host", "channel", "time_ns", "exit_code", "status", "error", "counts",
           "details"}
_COUNTS = ("files", "warnings", "bytes")


@dataclass
class Report:
    """A validated report (the audit part); ``trusted`` says whether its
    signer may be believed, ``problems`` why not."""

    id: str
    channel: str
    host: str
    time_ns: int
    exit_code: int
    status: str  # failure | warning
    error: str  # one of ERROR_KINDS
    files: int
    warnings: int
    bytes: int
    kid: str
    trusted: bool = True
    problems: list[str] = field(default_factory=list)
    details_blob: tuple[bytes, bytes] | None = None  # (id, sealed bytes), for data-key holders

    @property
    def name(self) -> str:
        return PREFIX + self.id

    @property
    def time(self) -> float:
        return self.time_ns / 1e9

    def to_json(self) -> dict:
        return {"id": self.id, "channel": self.channel, "host": self.host, "time_ns": self.time_ns,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)), "exit_code": self.exit_code,
                "status": self.status, "error": self.error, "files": self.files, "warnings": self.warnings,
                "bytes": self.bytes, "key": self.kid, "trusted": self.trusted, "problems": list(self.problems)}


def error_kind(exc: BaseException | None) -> str:
    """The vocabulary word for an exception: its class or the nearest base
    class in ERROR_KINDS (``InternalError`` for anything else)."""
    if exc is None:
        return "Warnings"
    for cls in type(exc).__mro__:
        if cls.__name__ in ERROR_KINDS:
            return cls.__name__
        if cls is KeyboardInterrupt:
            return "Interrupted"
    return "InternalError"


# --- writing -----------------------------------------------------------------------


def _details(error_message: str | None, warnings: list[tuple[str, str]]) -> bytes:
    """The details' JSON, cut to MAX_DETAILS: the error and as many warning
    lines as fit (``omitted`` counts the rest)."""
    err = (error_message or "")[:4000] or None
    lines: list[str] = []
    size = len(json.dumps({"error": err, "warnings": [], "omitted": 0}).encode())
    omitted = 0
    for path, message in warnings:
        line = f"{path}: {message}"[:1000]
        cost = len(json.dumps(line).encode()) + 1
        if size + cost > MAX_DETAILS - 32:
            omitted += 1
            continue
        lines.append(line)
        size += cost
    return json.dumps({"error": err, "warnings": lines, "omitted": omitted}).encode()


def seal_report(rid: str, body: dict, sign_seed: bytes, log_pk: bytes, log_mix: bytes) -> bytes:
    """Sign then seal a report's audit part to the log key."""
    text = keymod.canonical(body)
    sig = crypto.sign(sign_seed, SIG_CONTEXT + rid.encode() + b"\0" + text)
    plaintext = struct.pack("<I", len(text)) + text + sig
    eph_sk, eph_pk = crypto.new_ephemeral()
    key = crypto.session_key(log_mix, crypto.x25519(eph_sk, log_pk), eph_pk, log_pk)
    nonce = crypto.random_bytes(crypto.NONCE_SIZE)
    header = MAGIC + eph_pk + nonce
    return header + crypto.aead_encrypt(key, nonce, plaintext, header + AD_CONTEXT + rid.encode())


def write_report(repo, *, channel: str, host: str, status: str, exit_code: int, error_kind: str,
                 error_message: str | None = None, warnings=(), warning_count: int | None = None,
                 files: int = 0, bytes_total: int = 0, time_ns: int | None = None) -> str:
    """Write a report for a save of ``channel`` that failed (status
    "failure", ``error_kind`` from ERROR_KINDS, see :func:`error_kind`) or
    completed with warnings (status "warning"); ``warnings`` are (path,
    message) pairs and ``error_message`` the error's text: both go into the
    sealed details only.  Returns the report's name.  Needs a key that may save."""
    repo.key.require("save", "write failure reports")
    if status not in STATUSES or error_kind not in ERROR_KINDS:
        raise ValueError(f"bad report status {status!r} or error kind {error_kind!r}")
    warnings = list(warnings)
    rid = crypto.random_bytes(16).hex()
    details = _details(error_message, warnings)
    did, sealed = repo.codec.seal_for_store(fmt.T_INDEX, details)  # (v1: named by its id; v2: by its hash)
    body = {
        "v": 1, "id": rid, "repo": repo.id, "kid": repo.key.kid,
        "host": _clean(host), "channel": _clean(channel) or "?",
        "time_ns": time.time_ns() if time_ns is None else int(time_ns),
        "exit_code": max(0, min(255, int(exit_code))), "status": status, "error": error_kind,
        "counts": {"files": _count(files), "warnings": _count(len(warnings) if warning_count is None
                                                              else warning_count),
                   "bytes": _count(bytes_total)},
        "details": {"id": did.hex(), "sealed": bytes(sealed).hex()},
    }
    raw = seal_report(rid, body, repo.key.sign_seed, bytes.fromhex(repo.config["log_pk"]), repo.log_mix)
    repo.storage.write(PREFIX + rid, raw)
    return PREFIX + rid


def _clean(text) -> str:
    return "".join(c for c in str(text) if ord(c) >= 32)[:MAX_TEXT]


def _count(n) -> int:
    return max(0, min(MAX_INT, int(n or 0)))


# --- reading -------------------------------------------------------------------------


def _bad(rid: str, why: str) -> IntegrityError:
    return IntegrityError(f"report {rid}: {why}")


def _open_body(rid: str, raw: bytes, log_sk: bytes, log_mix: bytes) -> tuple[dict, bytes, bytes]:
    if len(raw) > MAX_SIZE:
        raise _bad(rid, f"too large ({len(raw)} bytes; a report is at most {MAX_SIZE})")
    if len(raw) < HEADER + crypto.TAG_SIZE + 4 + crypto.SIG_SIZE or raw[:4] != MAGIC:
        raise _bad(rid, "not a report (truncated or bad magic)")
    eph_pk, nonce = bytes(raw[4:36]), bytes(raw[36:60])
    log_pk = crypto.x25519_public(log_sk)
    key = crypto.session_key(log_mix, crypto.x25519(log_sk, eph_pk), eph_pk, log_pk)
    plaintext = crypto.aead_decrypt(key, nonce, raw[HEADER:], bytes(raw[:HEADER]) + AD_CONTEXT + rid.encode())
    if plaintext is None:
        raise _bad(rid, "cannot be opened (damaged, forged or renamed)")
    (n,) = struct.unpack_from("<I", plaintext, 0)
    if 4 + n + crypto.SIG_SIZE != len(plaintext):
        raise _bad(rid, "bad body length")
    text = bytes(plaintext[4:4 + n])
    sig = bytes(plaintext[4 + n:])
    try:
        body = json.loads(text)
    except ValueError:
        raise _bad(rid, "body is not JSON") from None
    if not isinstance(body, dict):
        raise _bad(rid, "body is not an object")
    return body, SIG_CONTEXT + rid.encode() + b"\0" + text, sig


def _int(body: dict, key: str, lo: int, hi: int, rid: str) -> int:
    v = body.get(key)
    if type(v) is not int or not lo <= v <= hi:
        raise _bad(rid, f"field {key!r} is not an integer in [{lo}, {hi}]")
    return v


def _text(body: dict, key: str, rid: str, *, empty: bool) -> str:
    v = body.get(key)
    if not isinstance(v, str) or len(v) > MAX_TEXT or (not v and not empty) or any(ord(c) < 32 for c in v):
        raise _bad(rid, f"field {key!r} is not a short printable string")
    return v


def _validate(rid: str, body: dict, repo_id: str) -> Report:
    if body.get("v") != 1:
        raise UnsupportedFormat(f"report {rid}: unknown report version {body.get('v')!r}")
    unknown = set(body) - _FIELDS
    if unknown:  # v1 has exactly these; a later version changes "v"
        raise _bad(rid, f"unknown fields {', '.join(sorted(map(str, unknown)))[:200]}")
    if body.get("id") != rid:
        raise _bad(rid, "names another report id (copied or renamed)")
    if body.get("repo") != repo_id:
        raise _bad(rid, "belongs to another repository")
    kid = body.get("kid")
    if not isinstance(kid, str) or not _KID.match(kid):
        raise _bad(rid, "field 'kid' is not a key id")
    status = body.get("status")
    if status not in STATUSES:
        raise _bad(rid, "field 'status' is neither failure nor warning")
    error = body.get("error")
    if error not in ERROR_KINDS:
        raise _bad(rid, "field 'error' is not one of the known error kinds")
    counts = body.get("counts")
    if not isinstance(counts, dict) or set(counts) != set(_COUNTS):
        raise _bad(rid, f"field 'counts' must hold exactly {', '.join(_COUNTS)}")
    n = {k: _int(counts, k, 0, MAX_INT, rid) for k in _COUNTS}
    details = body.get("details")
    if not isinstance(details, dict) or set(details) != {"id", "sealed"} \
            or not isinstance(details["id"], str) or not _HEX64.match(details["id"]) \
            or not isinstance(details["sealed"], str) or len(details["sealed"]) % 2 \
            or len(details["sealed"]) < 2 * (fmt.HEADER_SIZE + 16):
        raise _bad(rid, "field 'details' is malformed")
    try:
        sealed = bytes.fromhex(details["sealed"])
    except ValueError:
        raise _bad(rid, "field 'details' is not hex") from None
    return Report(id=rid, channel=_text(body, "channel", rid, empty=False), host=_text(body, "host", rid, empty=True),
                  time_ns=_int(body, "time_ns", 0, MAX_INT, rid), exit_code=_int(body, "exit_code", 0, 255, rid),
                  status=status, error=error, files=n["files"], warnings=n["warnings"], bytes=n["bytes"], kid=kid,
                  details_blob=(bytes.fromhex(details["id"]), sealed))


def open_report(repo, rid: str, raw: bytes) -> Report:
    """Open and validate ``reports/<rid>``; raises IntegrityError (or
    UnsupportedFormat) for anything that is not a well-formed report of this
    repository.  A well-formed report by a key that may not be believed is
    returned with ``trusted`` False and the reasons in ``problems``."""
    if not _RID.match(rid):
        raise _bad(rid[:80], "not a report name")
    if repo.key.log_sk is None:
        raise IntegrityError("this key cannot open reports")
    body, msg, sig = _open_body(rid, raw, repo.key.log_sk, repo.log_mix)
    rep = _validate(rid, body, repo.id)
    pk = repo.signer_pk(rep.kid)
    if pk is None:
        rep.problems.append(f"signed by key {rep.kid}, which has no valid certificate")
    elif not crypto.verify(pk, msg, sig):
        rep.problems.append(f"the signature by key {rep.kid} does not verify (forged or altered)")
    elif rep.kid != keymod.kid_of(repo.master_sign_pk):
        role = repo.certificates()[rep.kid].get("role")
        if role not in SAVING_ROLES:
            rep.problems.append(f"signed by key {rep.kid}, {keymod.article(role)} {role} key, which may not save")
    rev = repo.revocations().get(rep.kid)
    if rev is not None and rep.time_ns >= rev.get("time_ns", 0):
        rep.problems.append(f"signed by key {rep.kid} after it was revoked")
    rep.trusted = not rep.problems
    return rep


def _iter(repo, listing: dict[str, int], *, strict: bool = True):
    """(name, report or None, problem or None, kind) for every ``reports/``
    object; kind is "damaged" (no valid report), "untrusted" (a report whose
    signer may not be believed) or, unless ``strict``, "unverified" (the
    storage failed to answer)."""
    for name, size in listing.items():
        if not name.startswith(PREFIX):
            continue
        rid = name[len(PREFIX):]
        try:
            if size > MAX_SIZE:
                raise _bad(rid, f"too large ({size} bytes; a report is at most {MAX_SIZE})")
            rep = open_report(repo, rid, repo.storage.read(name))
        except ObjectNotFound:
            continue  # removed meanwhile (prune)
        except (IntegrityError, UnsupportedFormat) as e:
            yield name, None, _strip(str(e), rid[:80]), "damaged"
            continue
        except StorageError as e:
            if strict:
                raise
            yield name, None, f"could not be read: {e}", "unverified"
            continue
        yield name, rep, "; ".join(rep.problems) or None, "untrusted"


def reports(repo, *, listing: dict[str, int] | None = None,
            on_problem: Callable[[str, str], None] | None = None) -> list[Report]:
    """Every well-formed report, oldest first (untrusted ones included, with
    ``trusted`` False).  Objects under ``reports/`` that are no report, and
    untrusted reports, are passed to ``on_problem(name, message)``."""
    repo.key.require("list", "list failure reports")
    if listing is None:
        listing = dict(repo.storage.list(PREFIX))
    out = []
    for name, rep, problem, _ in _iter(repo, listing):
        if problem is not None and on_problem is not None:
            on_problem(name, problem)
        if rep is not None:
            out.append(rep)
    out.sort(key=lambda r: (r.time_ns, r.id))
    return out


def details(repo, rep: Report) -> dict:
    """The sealed details (``error``, ``warnings``, ``omitted``) of a report:
    only for keys that hold the data key (read, full, admin)."""
    repo.key.require("read", "read the details of failure reports")
    if rep.details_blob is None:
        return {"error": None, "warnings": [], "omitted": 0}
    did, sealed = rep.details_blob
    try:
        d = json.loads(repo.codec.open(did, sealed, fmt.T_INDEX))
    except (IntegrityError, UnsupportedFormat, ValueError, MemoryError) as e:
        raise _bad(rep.id, f"details cannot be opened ({_strip(str(e), did.hex(), 'blob')})") from None
    err, lines, omitted = (d.get("error"), d.get("warnings"), d.get("omitted")) if isinstance(d, dict) \
        else (None, None, None)
    if not (err is None or isinstance(err, str)) or not isinstance(lines, list) \
            or not all(isinstance(x, str) for x in lines) or type(omitted) is not int or omitted < 0:
        raise _bad(rep.id, "details are malformed")
    return {"error": err, "warnings": lines, "omitted": omitted}


def _strip(msg: str, ident: str, what: str = "report") -> str:
    prefix = f"{what} {ident}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


# --- check and prune ---------------------------------------------------------------------


def check_reports(repo, listing: dict[str, int], problem: Callable[[str, str, str], None]) -> int:
    """For check: validate every ``reports/`` object of ``listing``, calling
    ``problem(name, message, kind)`` for each bad one, kind "damaged" (not a
    valid report of this repository), "untrusted" (well-formed, but its
    signer may not be believed) or "unverified" (the storage failed to
    answer).  Returns how many reports are good."""
    good = 0
    for name, _rep, message, kind in _iter(repo, listing, strict=False):
        if message is None:
            good += 1
        else:
            problem(name, message, kind)
    return good


def prune_reports(repo, times, *, keep: float = KEEP, dry_run: bool = False) -> int:
    """Delete well-formed reports uploaded more than ``keep`` seconds ago;
    returns how many.  ``times`` is the pruner's ``gc.StorageClock``: the age
    is the object's modification time against the storage's present, never
    the report's own ``time_ns`` (the writer's clock, which may be days off:
    a report would go before anyone read it).  Without storage times, the
    report's ``time_ns`` against ``times.now()``.  Objects that do not open
    are left for check to report (prune never deletes on the strength of a
    name alone)."""
    n = 0
    for name, size, mtime in times.list_times(PREFIX):
        rid = name[len(PREFIX):]
        if size > MAX_SIZE or not _RID.match(rid):
            continue
        try:
            body, _, _ = _open_body(rid, repo.storage.read(name), repo.key.log_sk, repo.log_mix)
            rep = _validate(rid, body, repo.id)
        except (RekkordError, ValueError):
            continue
        if times.now() - (mtime if mtime is not None else rep.time) > keep:
            if not dry_run:
                repo.storage.delete(name)
            n += 1
    return n

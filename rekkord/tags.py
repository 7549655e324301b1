"""Tags after the fact: signed annotations (docs/format.md §7.1).

A snapshot record is signed by the key that saved it and never rewritten, so
``rekkord tag --add/--remove/--set`` does not touch it: it writes an
*annotation*, ``annotations/<aid>``, sealed to the log key like a record (the
storage cannot read the tags) and signed by the key that changes the tags,
which must be one that reads (admin, full or read): the keys of the people who
restore and look after the snapshots.  A write key must not: a compromised
machine could otherwise strip the tag that ``forget --keep-tag`` keeps its
old snapshots by.  An audit key must not either (it can open records, but it
serves the auditor, not the owner).

A snapshot's tags are those of its record, changed by the valid annotations
that name it, in the order of their time (then id).  Every byte of an
annotation is hostile input: one that does not open, names another name,
repository or a malformed snapshot id, carries malformed tags, is signed by an
unknown key, a key whose role may not tag, or a key after its revocation, is
ignored and reported through ``on_problem(name, message)``.  The storage can
withhold an annotation (the tags then look as they were before it), never
forge or alter one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import crypto, schema
from . import format as fmt
from . import keys as keymod
from .errors import IntegrityError, ObjectNotFound, UsageError

PREFIX = "annotations/"
#: The capability a signer's role needs for its annotations to count.
CAPABILITY = "read"
MAX_ANNOTATION = fmt.MAX_ANNOTATION


@dataclass
class Annotation:
    id: str
    snapshot: str
    time_ns: int
    kid: str
    add: list[str]
    remove: list[str]
    set: list[str] | None  # None: add/remove

    def apply(self, tags: list[str]) -> list[str]:
        if self.set is not None:
            return _unique(self.set)
        return _unique([t for t in tags if t not in self.remove] + self.add)


def _unique(tags) -> list[str]:
    return list(dict.fromkeys(tags))


def split_tags(specs) -> list[str]:
    """restic's form: each option value is a comma-separated list."""
    out = []
    for spec in specs:
        out += [t.strip() for t in spec.split(",") if t.strip()]
    bad = [t for t in out if schema.text(schema.MAX_LABEL, empty=False, printable=True)(t)]
    if bad:
        raise UsageError(f"invalid tag {bad[0][:64]!r} (printable text, at most {schema.MAX_LABEL} characters)")
    return _unique(out)


def changed(tags: list[str], add=(), remove=(), set_=None) -> list[str]:
    return Annotation("", "", 0, "", list(add), list(remove), None if set_ is None else list(set_)).apply(tags)


def write(repo, snap, *, add=(), remove=(), set_=None) -> str | None:
    """Change ``snap``'s tags; returns the annotation's name, or None when
    its tags would stay as they are (nothing is written)."""
    repo.key.require(CAPABILITY, "change the tags of snapshots")
    add, remove = list(add), list(remove)
    if set_ is not None and (add or remove):
        raise UsageError("--set replaces the tags: it cannot be combined with --add or --remove")
    if set_ is None and not add and not remove:
        raise UsageError("nothing to do: give --add, --remove or --set")
    if changed(snap.tags, add, remove, set_) == snap.tags:
        return None
    aid = crypto.random_bytes(16).hex()
    body = {"v": 1, "id": aid, "repo": repo.id, "kid": repo.key.kid, "snapshot": snap.id,
            # Strictly after what it changes: the order of annotations is their time.
            "time_ns": max(time.time_ns(), max((a.time_ns for a in annotations(repo).get(snap.id, [])),
                                               default=0) + 1)}
    if set_ is not None:
        body["set"] = list(set_)
    else:
        body.update(add=add, remove=remove)
    raw = fmt.seal_annotation(aid, body, repo.key.sign_seed, bytes.fromhex(repo.config["log_pk"]), repo.log_mix)
    repo.storage.write(PREFIX + aid, raw)
    a = Annotation(aid, snap.id, body["time_ns"], repo.key.kid, add, remove, None if set_ is None else list(set_))
    annotations(repo).setdefault(snap.id, []).append(a)
    snap.annotated_tags = a.apply(snap.tags)
    return PREFIX + aid


def open_annotation(repo, aid: str, raw: bytes) -> Annotation:
    """Open and verify one annotation; IntegrityError says why it does not count."""
    name = PREFIX + aid
    body, msg, sig = fmt.open_annotation(aid, raw, repo.key.log_sk, repo.log_mix)
    g = schema.get
    g(body, "v", name, schema.integer(1, 1 << 16))
    g(body, "id", name, schema.hexstr(16))
    g(body, "repo", name, schema.text(64))
    kid = g(body, "kid", name, schema.hexstr(12))
    sid = g(body, "snapshot", name, schema.hexstr(16))
    t = g(body, "time_ns", name, schema.integer(0, 2**63 - 1))
    tags = schema.listof(schema.text(schema.MAX_LABEL, empty=False, printable=True), schema.MAX_TAGS)
    add = g(body, "add", name, tags, optional=True, default=[])
    remove = g(body, "remove", name, tags, optional=True, default=[])
    set_ = g(body, "set", name, tags, optional=True)
    if body["id"] != aid:
        raise IntegrityError(f"{name}: names another annotation (replayed or renamed)")
    if body["repo"] != repo.id:
        raise IntegrityError(f"{name}: belongs to another repository")
    if set_ is not None and (add or remove):
        raise IntegrityError(f"{name}: both sets and changes tags")
    pk = repo.signer_pk(kid)
    if pk is None or not crypto.verify(pk, msg, sig):
        raise IntegrityError(f"{name}: signature by key {kid} is invalid or the key is not certified "
                             "(forged or altered)")
    if not repo.may_sign(kid, CAPABILITY):
        role = repo.signer_role(kid)
        raise IntegrityError(f"{name}: signed by key {kid}, {keymod.article(role)} {role} key, which may not "
                             "change tags")
    rev = repo.revocations().get(kid)
    if rev is not None and t >= rev.get("time_ns", 0):
        raise IntegrityError(f"{name}: signed by key {kid} after it was revoked")
    return Annotation(aid, sid, t, kid, add, remove, set_)


def annotations(repo, on_problem=None) -> dict[str, list[Annotation]]:
    """The valid annotations, by snapshot id, in the order they apply.
    Read once per Repository object (``write`` adds its own)."""
    if getattr(repo, "_annotations", None) is not None:
        if on_problem:
            for name, msg in repo._annotation_problems:
                on_problem(name, msg)
        return repo._annotations
    out: dict[str, list[Annotation]] = {}
    problems = []
    for name, _ in repo.storage.list(PREFIX):
        aid = name[len(PREFIX):]
        try:
            raw = repo.storage.read(name, 0, MAX_ANNOTATION + 1)
            if len(raw) > MAX_ANNOTATION:
                raise IntegrityError(f"{name}: too large for an annotation")
            a = open_annotation(repo, aid, raw)
        except ObjectNotFound:
            continue
        except (IntegrityError, ValueError, KeyError, TypeError) as e:
            msg = str(e)
            msg = msg[len(name) + 2:] if msg.startswith(name + ": ") else msg
            problems.append((name, f"ignored: {msg}"))
            continue
        out.setdefault(a.snapshot, []).append(a)
    for lst in out.values():
        lst.sort(key=lambda a: (a.time_ns, a.id))
    repo._annotations, repo._annotation_problems = out, problems
    if on_problem:
        for name, msg in problems:
            on_problem(name, msg)
    return out


def apply(repo, snaps, on_problem=None) -> None:
    """Set each snapshot's effective tags (``Snapshot.tags``)."""
    if not snaps:
        return
    by_snap = annotations(repo, on_problem)
    for s in snaps:
        lst = by_snap.get(s.id)
        if lst:
            tags = list(s.saved_tags)
            for a in lst:
                tags = a.apply(tags)
            s.annotated_tags = tags

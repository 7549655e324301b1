"""A repository: storage + config + the key in use.

Layout (format v1; docs/format.md)::

    config                signed JSON: format, id, public keys, chunker, compression
    keys/<kid>            certificates of derived keys (signed by the master key)
    revoked/<kid>         revocations (signed by the master key)
    snapshots/<sid>       snapshot records, sealed to the log key, signed by the writer
    blobs/<xx>/<id>       content-addressed blobs
    generations/<n>       garbage-collection generations (written by prune)
    sessions/<sid>        running save sessions; fossils/<cid>/xx/<id>, gc/collections/<cid>.*:
                          fossil collections (rekkord/gc.py, docs/maintenance.md)
    repairs/<rand>        repair hints: blob ids check found missing or damaged,
                          MACed with a psk-derived key (docs/integrity.md)
"""

from __future__ import annotations

import hmac
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import crypto, format as fmt, keys as keymod, schema, tags as tagmod
from .chunker import Chunker, ChunkerParams, PackCutter, chunker_seed
from .errors import (
    ConfigMismatch,
    IntegrityError,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    StorageError,
    UnsupportedFormat,
    UsageError,
    WrongKey,
)
from .keys import Key
from .storage.base import Storage

#: What new repositories are (docs/format.md): version 2 names blobs by the
#: hash of their bytes (rekkord/format_v2.py); version 1 is still read and written.
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)
#: Key for the MAC of repair hints (part of format v1; docs/integrity.md).
CTX_REPAIR = "rekkord v1 2026-11 repair hint key"


@dataclass
class Snapshot:
    id: str
    channel: str
    time_ns: int
    host: str
    kid: str
    record: dict
    signature_ok: bool = True
    problems: list[str] = field(default_factory=list)
    #: The tags as signed annotations changed them (rekkord/tags.py), or None.
    annotated_tags: list[str] | None = None

    @property
    def time(self) -> float:
        return self.time_ns / 1e9

    @property
    def index(self) -> list[tuple[bytes, int]]:
        return [(bytes.fromhex(i), s) for i, s in self.record["index"]]

    @property
    def reflist(self) -> list[tuple[bytes, int]]:
        return [(bytes.fromhex(i), s) for i, s in self.record["reflist"]]

    def copies_of(self, what: str) -> list[list[tuple[bytes, int]]]:
        """For each blob of ``what`` ("index" or "reflist"), its copies in
        order: [(name, stored size), ...], the first being the one the
        record's own list names (format v2 records with ``copies``,
        docs/format.md §13.8; one copy otherwise)."""
        first = self.index if what == "index" else self.reflist
        more = (self.record.get("copies") or {}).get(what)
        if not more:
            return [[x] for x in first]
        return [[x, (bytes.fromhex(i), s)] for x, (i, s) in zip(first, more)]

    def all_blobs(self, what: str) -> list[tuple[bytes, int]]:
        """Every index blob (or reference list) the record names, copies included."""
        return [x for group in self.copies_of(what) for x in group]

    @property
    def stats(self) -> dict:
        return self.record.get("stats", {})

    @property
    def saved_tags(self) -> list[str]:
        """The tags the record was saved with."""
        return self.record.get("tags", [])

    @property
    def tags(self) -> list[str]:
        """The tags now: the record's, as valid annotations changed them."""
        return self.annotated_tags if self.annotated_tags is not None else self.saved_tags

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "short_id": self.id[:8],
            "channel": self.channel,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
            "time_ns": self.time_ns,
            "host": self.host,
            "key": self.kid,
            "tags": self.tags,
            **{k: v for k, v in self.stats.items()},
        }


def signed_json(obj: dict, sign_seed: bytes, what: bytes) -> bytes:
    body = keymod.canonical(obj)
    sig = crypto.sign(sign_seed, what + body)
    return json.dumps({"body": obj, "sig": sig.hex()}, indent=1, sort_keys=True).encode()


def open_signed_json(raw: bytes, pk: bytes, what: bytes, name: str) -> dict:
    try:
        d = schema.loads_object(raw, name)
        body, sig = d["body"], bytes.fromhex(d["sig"])
        if not isinstance(body, dict) or len(sig) != crypto.SIG_SIZE:
            raise TypeError
    except (IntegrityError, ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"{name}: damaged (not valid signed JSON)") from None
    if not crypto.verify(pk, what + keymod.canonical(body), sig):
        raise IntegrityError(f"{name}: bad signature (damaged or forged)")
    return body


class Repository:
    def __init__(self, storage: Storage, config: dict, key: Key):
        self.storage = storage
        self.config = config
        self.key = key
        self._annotations = None  # rekkord/tags.py: valid annotations by snapshot id, once read
        self._annotation_problems: list[tuple[str, str]] = []
        self.id = config["repo"]
        self.chunker_params = ChunkerParams.from_json(config["chunker"])
        self.compression = config.get("compression", 3)
        self.master_sign_pk = bytes.fromhex(config["master_sign_pk"])
        cp = self.chunker_params
        self.limits = {fmt.T_DATA: schema.data_blob_limit(cp.min_size, cp.max_size),
                       fmt.T_INDEX: schema.MAX_INDEX_BLOB, fmt.T_REFLIST: schema.MAX_REFLIST_BLOB}
        self.max_stored = {t: fmt.stored_size(n) for t, n in self.limits.items()}
        psk = key.psk
        self.codec = None
        self.version = config.get("format", 1)
        if psk is not None:
            from .format_v2 import CodecV2

            self.log_mix = crypto.derive(crypto.CTX_LOG, psk)
            codec_class = CodecV2 if self.version >= 2 else fmt.BlobCodec
            self.codec = codec_class(
                fmt.BlobKeys(
                    id_key=key.id_key,
                    mac_key=crypto.derive(crypto.CTX_MAC, psk),
                    list_key=crypto.derive(crypto.CTX_LIST, psk),
                    session_mix=crypto.derive(crypto.CTX_SESSION, psk),
                    data_pk=bytes.fromhex(config["data_pk"]),
                    data_sk=key.data_sk,
                ),
                self.compression,
                self.limits,
            )
        self._certs: dict[str, dict] | None = None
        self._revoked: dict[str, dict] | None = None
        self._remembered: dict[str, dict] = {}
        #: Told (one line each, once) when a read succeeds only through a
        #: copy or parity: the repository has lost redundancy (the CLI sets
        #: it to print a warning; commands with their own warnings pass
        #: callbacks instead).
        self.notice: "Callable[[str], None] | None" = None
        self._noticed: set[str] = set()
        self._notice_lock = threading.Lock()
        #: Blobs found missing or damaged whose content was read from a copy
        #: or rebuilt from parity by this process (a restore names them in a
        #: repair hint).
        self.degraded: set[bytes] = set()
        self._parity = None

    # ---- creation / opening ---------------------------------------------------

    @classmethod
    def init(cls, storage: Storage, master: Key, *, chunker: ChunkerParams | None = None,
             compression: int = 3, version: int = FORMAT_VERSION, like: "Repository | None" = None,
             index_copies: int | None = None, parity: float | None = None) -> "Repository":
        """``index_copies``: copies of each index blob and reference list
        (format v2; default 2); ``parity``: the share of data blobs' size to
        store as Reed-Solomon parity (format v2, e.g. 0.05; rekkord/parity.py).
        ``like``: another repository (opened with a key that chunks) whose
        chunker parameters, seed and pack cut key the new one takes
        (``init --from-repo``), so that copies between them deduplicate."""
        if version not in SUPPORTED_FORMATS:
            raise UsageError(f"unknown format version {version} (this rekkord writes {SUPPORTED_FORMATS})")
        if version < 2 and (index_copies not in (None, 1) or parity):
            raise UsageError("copies of index blobs and parity need format 2 (format 1 names a blob by its "
                             "plaintext, so a copy would share its name)")
        if index_copies is not None and not 1 <= index_copies <= 2:
            raise UsageError(f"--index-copies {index_copies}: give 1 or 2")
        if parity:
            from .parity import check_ratio

            check_ratio(parity)
        storage.create()
        if storage.exists("config"):
            raise RepositoryExists(f"a repository already exists at {storage.url}")
        for _ in storage.list(""):
            raise RepositoryExists(f"{storage.url} is not empty; refusing to create a repository there")
        config = {
            "format": version,
            "repo": master.repo,
            "created": int(time.time()),
            "master_sign_pk": master.sign_pk.hex(),
            "data_pk": master.data_pk.hex(),
            "log_pk": master.log_pk.hex(),
            "chunker": (chunker or ChunkerParams()).to_json(),
            "compression": compression,
        }
        if version >= 2:
            config["index_copies"] = 2 if index_copies is None else index_copies
        if parity:
            from .parity import config_for

            config["parity"] = config_for(parity)
        if like is not None:
            from .chunker import seal_chunker_secrets

            if like.key.id_key is None:
                raise UsageError(f"{keymod.article(like.key.role)} {like.key.role} key of the other repository "
                                 "cannot read its chunker secrets (use a write, read, full or master key)")
            seed, cut = like.chunker_secrets()
            config["chunker"] = {**like.chunker_params.to_json(),
                                 "shared": seal_chunker_secrets(master.id_key, seed, cut)}
        storage.write("config", signed_json(config, master.sign_seed, b"rekkord config v1\0"))
        return cls(storage, config, master)

    @staticmethod
    def read_config(storage: Storage) -> dict:
        try:
            raw = storage.read("config")
        except ObjectNotFound as e:
            if "does not exist" in str(e):  # e.g. the bucket itself: say so
                raise RepositoryNotFound(f"no rekkord repository at {storage.url}: {e}") from None
            if _holds_objects(storage):
                raise IntegrityError(f"config is missing from {storage.url}, which holds other repository "
                                     "objects (the config was deleted or lost)") from None
            raise RepositoryNotFound(f"no rekkord repository at {storage.url}") from None
        try:
            unverified = schema.loads_object(raw, "config")["body"]
            pk = bytes.fromhex(unverified["master_sign_pk"])
            if not isinstance(unverified, dict):
                raise TypeError
        except (IntegrityError, ValueError, KeyError, TypeError):
            raise IntegrityError(f"config at {storage.url} is damaged") from None
        return unverified, raw, pk

    @classmethod
    def open(cls, storage: Storage, key: Key) -> "Repository":
        unverified, raw, _ = cls.read_config(storage)
        if unverified.get("format") not in SUPPORTED_FORMATS:
            raise UnsupportedFormat(f"repository format {unverified.get('format')} is not supported "
                                    f"by this rekkord (supports {SUPPORTED_FORMATS})")
        try:
            keymod.check_belongs(key, unverified)  # the key pins the repo id and public keys
        except WrongKey as e:
            if unverified.get("repo") == key.repo:
                # The key was made for this repository id, yet the config's keys
                # disagree with it: the config was replaced or forged.
                raise ConfigMismatch(f"config does not match this key, which was made for repository "
                                     f"{key.repo} ({e}): the config is forged or replaced") from None
            raise
        # The master signing key is trusted only once the key file agrees with it.
        config = open_signed_json(raw, bytes.fromhex(unverified["master_sign_pk"]),
                                  b"rekkord config v1\0", "config")
        validate_config(config)
        keymod.check_belongs(key, config)
        return cls(storage, config, key)

    # ---- certificates ------------------------------------------------------------

    def publish_cert(self, cert: dict) -> None:
        self.storage.write(f"keys/{cert['kid']}", json.dumps(cert, indent=1, sort_keys=True).encode())

    def certificates(self) -> dict[str, dict]:
        if self._certs is None:
            certs = {}
            for name, _ in self.storage.list("keys/"):
                kid = name.split("/", 1)[1]
                try:
                    cert = schema.loads_object(self.storage.read(name, 0, schema.MAX_SMALL_OBJECT + 1), name)
                except (IntegrityError, ObjectNotFound):
                    continue
                if keymod.verify_cert(cert, self.master_sign_pk, self.id) and cert.get("kid") == kid:
                    certs[kid] = cert
            self._certs = certs
        return self._certs

    def revocations(self) -> dict[str, dict]:
        """kid -> the valid revocation of that key with the earliest time.
        Revocation is monotonic: a later revocation never moves the earliest
        one, and ``remembered`` ones (a check's memory of earlier runs,
        :meth:`remember_revocations`) stand even when the storage withholds
        them."""
        if self._revoked is None:
            rev = {kid: dict(body) for kid, body in self._remembered.items()}
            for name, _ in self.storage.list("revoked/"):
                kid = name.split("/", 1)[1].split(".", 1)[0]
                try:
                    body = open_signed_json(self.storage.read(name, 0, schema.MAX_SMALL_OBJECT + 1),
                                            self.master_sign_pk, b"rekkord revocation v1\0", name)
                    schema.get(body, "time_ns", name, schema.integer(0, 2**63 - 1))
                except (IntegrityError, ObjectNotFound):
                    continue
                if body.get("kid") == kid and body.get("repo") == self.id:
                    old = rev.get(kid)
                    if old is None or body["time_ns"] < old["time_ns"]:
                        rev[kid] = body
            self._revoked = rev
        return self._revoked

    def remember_revocations(self, known: dict[str, int]) -> dict[str, int]:
        """Merge revocations remembered from earlier runs (kid -> time_ns);
        returns what to remember now (the earliest of both for each key)."""
        self._remembered = {k: {"v": 1, "repo": self.id, "kid": k, "time_ns": int(t)} for k, t in known.items()}
        self._revoked = None
        return {k: b["time_ns"] for k, b in self.revocations().items()}

    def revoke(self, kid: str) -> dict:
        """Revoke ``kid`` from now on.  A key already revoked stays revoked
        from its first revocation (written once, never replaced)."""
        self.key.require("revoke", "revoke keys")
        self._revoked = None
        old = self.revocations().get(kid)
        if old is not None:
            return old
        body = {"v": 1, "repo": self.id, "kid": kid, "time_ns": time.time_ns()}
        raw = signed_json(body, self.key.sign_seed, b"rekkord revocation v1\0")
        name = f"revoked/{kid}"
        try:
            self.storage.write(name, raw, exclusive=True)
        except ObjectExists:
            # Something not valid sits under the name (or a concurrent
            # revocation): keep it, and publish ours beside it.
            self.storage.write(f"{name}.{crypto.random_bytes(4).hex()}", raw, exclusive=True)
        self._revoked = None
        return self.revocations().get(kid, body)

    def signer_pk(self, kid: str) -> bytes | None:
        if kid == keymod.kid_of(self.master_sign_pk):
            return self.master_sign_pk
        cert = self.certificates().get(kid)
        return bytes.fromhex(cert["sign_pk"]) if cert else None

    def signer_role(self, kid: str) -> str | None:
        """The role of a signing key: 'admin' for the master key, the
        certificate's role for a derived key, None for an unknown key."""
        if kid == keymod.kid_of(self.master_sign_pk):
            return "admin"
        cert = self.certificates().get(kid)
        return cert["role"] if cert else None

    def may_sign(self, kid: str, capability: str) -> bool:
        """Whether ``kid`` is a certified key whose role has ``capability``
        (e.g. only roles that may save sign trusted snapshot records)."""
        role = self.signer_role(kid)
        return role is not None and keymod.CAPABILITIES.get(role) is not None \
            and capability in keymod.CAPABILITIES[role]

    # ---- blobs ---------------------------------------------------------------------

    @property
    def index(self):
        """The index record layout of this repository's format (rekkord.index)."""
        from .index import index_format

        return index_format(self.version)

    @property
    def copies(self) -> int:
        """How many copies of each index blob and reference list a save
        writes: the config's ``index_copies``, else 2 in format v2 (v1 names
        blobs by their plaintext, so two copies would share one name)."""
        if self.version < 2:
            return 1
        return self.config.get("index_copies", 2)

    def say(self, message: str, callback: "Callable[[str], None] | None" = None) -> None:
        """Report lost redundancy once per message (``callback``, else
        :attr:`notice`)."""
        with self._notice_lock:
            if message in self._noticed:
                return
            self._noticed.add(message)
        cb = callback or self.notice
        if cb is not None:
            cb(message)

    def read_copies(self, copies: list[tuple[bytes, int]], btype: int, *, what: str = "",
                    on_copy: "Callable[[str], None] | None" = None) -> bytes:
        """The plaintext of an index blob or reference list stored as
        ``copies`` [(name, size)]: the first copy that reads and verifies.
        Reading one after the first failed is said through ``on_copy`` (or
        :attr:`notice`); when none reads, the error names every copy."""
        errors: list[tuple[bytes, Exception]] = []
        for bid, _ in copies:
            try:
                data = self.read_blob(bid, btype)
            except (IntegrityError, StorageError, UnsupportedFormat) as e:
                errors.append((bid, e))
                continue
            if errors:
                first = errors[0][0]
                label = fmt.TYPE_NAMES[btype] if btype == fmt.T_REFLIST else f"{fmt.TYPE_NAMES[btype]} blob"
                with self._notice_lock:
                    self.degraded.update(b for b, _ in errors)
                self.say(f"{label} {first.hex()}{what}: {_strip_blob(errors[0][1], first)}; read its copy "
                         f"{bid.hex()} instead, nothing is lost (rekkord check --repair writes it again)", on_copy)
            return data
        if len(errors) == 1:
            raise errors[0][1]
        msg = "; ".join(f"{'its copy ' if i else ''}{b.hex()}: {_strip_blob(e, b)}" for i, (b, e) in enumerate(errors))
        first = errors[0][0]
        if all(isinstance(e, (IntegrityError, UnsupportedFormat)) for _, e in errors):
            raise IntegrityError(f"blob {first.hex()}: {msg.split(': ', 1)[1]}")
        raise StorageError(f"blob {first.hex()}: {msg.split(': ', 1)[1]}")

    def chunker_secrets(self) -> tuple[int, bytes]:
        """(chunker seed, pack cut key): derived from ``id_key``, or another
        repository's, sealed in the config by ``init --from-repo`` so that
        the same files cut into the same chunks in both (and copies
        deduplicate)."""
        sealed = self.config["chunker"].get("shared")
        if sealed:
            from .chunker import open_chunker_secrets

            return open_chunker_secrets(self.key.id_key, sealed)
        from .chunker import pack_cut_key

        return chunker_seed(self.key.id_key), pack_cut_key(self.key.id_key)

    def chunker(self) -> Chunker:
        return Chunker(self.chunker_params, self.chunker_secrets()[0])

    def pack_cutter(self) -> PackCutter:
        return PackCutter(None, key=self.chunker_secrets()[1])

    def read_raw(self, name: str, btype: int | None = None) -> bytes:
        """The stored bytes of a blob, read no further than the largest blob
        of its type (an object beyond it is refused, never read whole)."""
        limit = self.max_stored.get(btype) if btype is not None else max(self.max_stored.values())
        raw = self.storage.read(name, 0, limit + 1)
        if len(raw) > limit:
            raise IntegrityError(f"blob {name.rsplit('/', 1)[-1]}: too large for a blob (more than {limit} bytes)")
        return raw

    def read_blob(self, blob_id: bytes, expected_type: int | None = None, key: bytes = b"") -> bytes:
        """A blob's plaintext, verified; ``key``: what an index extent holds
        beside the reference (format v2's data blobs need it to decrypt)."""
        name = fmt.blob_name(blob_id)
        try:
            raw = self.read_raw(name, expected_type)
        except ObjectNotFound:
            raw = self._read_fossil(blob_id)
            if raw is None:
                raise IntegrityError(f"blob {blob_id.hex()} is missing from the repository") from None
            if len(raw) > max(self.max_stored.values()):
                raise IntegrityError(f"blob {blob_id.hex()}: too large for a blob")
        return self.codec.open(blob_id, raw, expected_type, key=key)

    def rebuild_data(self, blob_id: bytes, key: bytes, error: Exception) -> bytes:
        """The plaintext of data blob ``blob_id``, which could not be read
        (``error``), rebuilt from its parity group when the repository has
        parity (rekkord/parity.py) and the rebuilt bytes hash to its name;
        else ``error`` is raised.  A rebuild is said once (:meth:`say`), and
        the blob joins :attr:`degraded` (a restore names it in a repair hint)."""
        from . import parity as par

        if self.version < 2 or not par.ratio_of(self.config) or not par.available():
            raise error
        with self._notice_lock:
            if self._parity is None:
                self._parity = par.ParityIndex(self.storage, threads=4)
            idx = self._parity
        try:
            got = idx.rebuild(blob_id)
        except (IntegrityError, StorageError):
            got = None
        if got is None:
            raise error
        raw, g = got
        data = self.codec.open(blob_id, raw, fmt.T_DATA, key=key)
        with self._notice_lock:
            self.degraded.add(blob_id)
        self.say(f"data blob {blob_id.hex()}: {_strip_blob(error, blob_id)}; rebuilt it from parity group "
                 f"{par.object_name(g.name)}, nothing is lost (rekkord check --repair writes it again)")
        return data

    def _read_fossil(self, blob_id: bytes) -> bytes | None:
        """A blob a prune collected while a save was using it is a fossil until
        the next prune moves it back (rekkord/gc.py): still readable."""
        from .gc import read_moved

        return read_moved(self.storage, blob_id)

    # ---- snapshots -------------------------------------------------------------------

    def new_snapshot_id(self) -> str:
        # Time-ordered prefix keeps listings readable; the random part makes it unguessable.
        return crypto.random_bytes(16).hex()

    def write_snapshot(self, record: dict) -> str:
        self.key.require("save", "save snapshots")
        sid = self.new_snapshot_id()
        record = {**record, "v": 1, "id": sid, "kid": self.key.kid, "repo": self.id}
        raw = fmt.seal_record(sid, record, self.key.sign_seed, bytes.fromhex(self.config["log_pk"]), self.log_mix)
        self.storage.write(f"snapshots/{sid}", raw)
        return sid

    def _open_snapshot(self, sid: str, raw: bytes) -> Snapshot:
        record, msg, sig = fmt.open_record(sid, raw, self.key.log_sk, self.log_mix)
        validate_record(record, f"snapshot {sid}", self.max_stored)
        problems = []
        if record.get("id") != sid:
            problems.append("record names another snapshot id (replayed or renamed)")
        if record.get("repo") != self.id:
            problems.append("record belongs to another repository")
        kid = record.get("kid", "")
        pk = self.signer_pk(kid)
        ok = pk is not None and crypto.verify(pk, msg, sig)
        if not ok:
            why = (f"its certificate keys/{kid} is missing or invalid" if pk is None
                   else "the signature does not verify: the record was forged or altered")
            problems.append(f"signature by key {kid} is invalid or the key is not certified ({why})")
        elif not self.may_sign(kid, "save"):
            # Only roles that may save (admin, full, write) make trusted
            # snapshots: a read or audit key holds secrets enough to seal and
            # sign a record, but what it signs is never restored by channel.
            problems.append(f"signed by key {kid}, {keymod.article(self.signer_role(kid))} "
                            f"{self.signer_role(kid)} key, which may not save snapshots")
        rev = self.revocations().get(kid)
        if rev is not None and record.get("time_ns", 0) >= rev.get("time_ns", 0):
            problems.append(f"signed by key {kid} after it was revoked")
        return Snapshot(sid, record.get("channel", "?"), record.get("time_ns", 0), record.get("host", ""),
                        kid, record, ok and not problems, problems)

    def snapshot_ids(self) -> list[str]:
        return [name.split("/", 1)[1] for name, _ in self.storage.list("snapshots/")]

    def load_snapshot(self, sid: str) -> Snapshot:
        self.key.require("list", "read snapshot records")
        try:
            raw = self.storage.read(f"snapshots/{sid}")
        except ObjectNotFound:
            raise SnapshotNotFound(f"snapshot {sid} not found") from None
        snap = self._open_snapshot(sid, raw)
        tagmod.apply(self, [snap])
        return snap

    def snapshots(self, *, strict: bool = False, on_problem=None) -> list[Snapshot]:
        """All snapshot records, oldest first.  Records that cannot be opened
        are reported through ``on_problem(sid, message)`` (or raise when strict)."""
        self.key.require("list", "list snapshots")
        self._annotations = None  # (read again: a long-running process sees new ones)
        out = []
        for sid in self.snapshot_ids():
            try:
                snap = self.load_snapshot(sid)
            except (IntegrityError, SnapshotNotFound) as e:
                if strict:
                    raise
                if on_problem:
                    on_problem(sid, str(e))
                continue
            if not snap.signature_ok and on_problem:
                on_problem(sid, "; ".join(snap.problems))
            out.append(snap)
        out.sort(key=lambda s: (s.time_ns, s.id))
        # (ignored annotations are reported as ``annotations/<aid>``)
        tagmod.annotations(self, on_problem)
        return out

    def resolve(self, spec: str) -> Snapshot:
        """A full id, a unique id prefix, or a channel name (its latest snapshot)."""
        self.key.require("list", "find snapshots")
        if not spec:
            raise UsageError("no snapshot given")
        ids = self.snapshot_ids()
        if spec in ids:
            return self.load_snapshot(spec)
        matches = [i for i in ids if i.startswith(spec)] if len(spec) >= 4 else []
        if len(matches) == 1:
            return self.load_snapshot(matches[0])
        if len(matches) > 1:
            raise UsageError(f"snapshot prefix {spec!r} is ambiguous ({len(matches)} snapshots match)")
        in_channel = [s for s in self.snapshots() if s.channel == spec]
        # A channel means its latest *trusted* snapshot: a record signed by a
        # revoked or uncertified key never becomes "latest" (name it by id to
        # inspect it).
        trusted = [s for s in in_channel if s.signature_ok]
        if trusted:
            return trusted[-1]
        if in_channel:
            return in_channel[-1]  # only untrusted ones: the caller reports why
        raise SnapshotNotFound(f"no snapshot or channel named {spec!r}")

    def private(self, snap: Snapshot) -> dict:
        """The part of a record only data-key holders can read (saved paths)."""
        blob = snap.record.get("private")
        if not blob:
            return {}
        bid = bytes.fromhex(blob["id"])
        raw = bytes.fromhex(blob["sealed"])
        what = f"snapshot {snap.id}: private part"
        d = schema.loads_object(self.codec.open(bid, raw, fmt.T_INDEX, max_plaintext=schema.MAX_PRIVATE), what,
                                limit=schema.MAX_PRIVATE)
        schema.get(d, "paths", what, schema.listof(schema.text(schema.MAX_PATH + 1, empty=False), 1 << 16),
                   optional=True)
        schema.get(d, "stdin", what, schema.text(schema.MAX_NAME, empty=False, name=True), optional=True)
        return d

    # ---- repair hints (docs/integrity.md) --------------------------------------------

    def _repair_mac(self, body: dict) -> bytes:
        return crypto.keyed_hash(crypto.derive(CTX_REPAIR, self.key.psk), b"rekkord repair v1\0",
                                 keymod.canonical(body))

    def write_repair(self, blob_ids, *, deep: bool = False) -> str:
        """Publish blob ids found missing or damaged, so that savers holding
        the data forget them from their caches and upload them again.  MACed
        with a psk-derived key: the storage can neither forge nor alter one.
        ``deep``: some were found spoiled only by decrypting them (a valid MAC
        over the wrong content): only a check that decrypts may clear it."""
        body = {"v": 1, "repo": self.id, "time_ns": time.time_ns(), "kid": self.key.kid,
                "ids": sorted(b.hex() for b in blob_ids)}
        if deep:
            body["deep"] = True
        name = f"repairs/{crypto.random_bytes(12).hex()}"
        raw = json.dumps({"body": body, "mac": self._repair_mac(body).hex()}, sort_keys=True).encode()
        self.storage.write(name, raw)
        return name

    def repairs(self, on_problem=None) -> dict[str, list[bytes]]:
        return {name: ids for name, (ids, _) in self.repair_hints(on_problem).items()}

    def repair_hints(self, on_problem=None) -> dict[str, tuple[list[bytes], bool]]:
        """Valid repair hints: name -> (blob ids, deep)."""
        """Valid repair hints: name -> blob ids.  Invalid ones are reported
        through ``on_problem(name, message)`` and otherwise ignored."""
        out = {}
        for name, _ in self.storage.list("repairs/"):
            try:
                d = schema.loads_object(self.storage.read(name, 0, schema.MAX_LIST_OBJECT + 1), name,
                                        limit=schema.MAX_LIST_OBJECT)
                body, mac = d["body"], bytes.fromhex(d["mac"])
                if not isinstance(body, dict) or body.get("repo") != self.id \
                        or not hmac.compare_digest(mac, self._repair_mac(body)):
                    raise ValueError("bad MAC")
                ids = schema.get(body, "ids", name, schema.listof(schema.hexstr(32), 1 << 22))
                deep = schema.get(body, "deep", name, schema.boolean, optional=True, default=False)
                out[name] = ([bytes.fromhex(i) for i in ids], deep)
            except ObjectNotFound:
                continue  # deleted meanwhile (a check saw it healed)
            except (IntegrityError, ValueError, KeyError, TypeError, AttributeError):
                if on_problem:
                    on_problem(name, "repair hint is damaged or forged (bad MAC)")
        return out

    # ---- generations -------------------------------------------------------------

    def generation(self) -> int:
        best = 0
        for name, _ in self.storage.list("generations/"):
            try:
                best = max(best, int(name.split("/", 1)[1]))
            except ValueError:
                continue
        return best


# ---- schemas of what the repository holds (every byte of it is hostile input) ----------


def validate_config(config: dict) -> None:
    what = "config"
    g = schema.get
    g(config, "format", what, schema.integer(1, 1 << 16))
    g(config, "repo", what, schema.hexstr(16))
    g(config, "created", what, schema.integer(0, 2**63 - 1), optional=True)
    for k in ("master_sign_pk", "data_pk", "log_pk"):
        g(config, k, what, schema.hexstr(32))
    g(config, "compression", what, schema.integer(0, 22), optional=True)
    g(config, "index_copies", what, schema.integer(1, 2), optional=True)
    parity = g(config, "parity", what, schema.mapping(8), optional=True)
    if parity is not None:
        from .parity import MAX_PERCENT, MIN_PERCENT, SCHEME

        if config.get("format", 1) < 2:
            raise IntegrityError("config: parity needs format 2")
        if g(parity, "scheme", "config parity", schema.text(64)) != SCHEME:
            raise UnsupportedFormat(f"config: unknown parity scheme {parity['scheme']!r}")
        pct = parity.get("percent")
        if type(pct) not in (int, float) or not MIN_PERCENT <= pct <= MAX_PERCENT:
            raise IntegrityError(f"config parity: percent must be a number from {MIN_PERCENT} to {MAX_PERCENT}")
    ch = g(config, "chunker", what, schema.mapping(16))
    g(ch, "algorithm", "config chunker", schema.text(64), optional=True)
    g(ch, "shared", "config chunker", schema.hexstr(max_bytes=512), optional=True)
    sizes = [g(ch, k, "config chunker", schema.integer(schema.CHUNK_MIN_LOW, schema.CHUNK_MAX_HIGH))
             for k in ("min", "avg", "max")]
    if not sizes[0] <= sizes[1] <= sizes[2]:
        raise IntegrityError("config: chunker sizes are not min <= avg <= max")


def validate_record(record: dict, what: str, max_stored: dict[int, int]) -> None:
    """Type and range of every field a reader uses (docs/format.md §7)."""
    g = schema.get
    label = schema.text(schema.MAX_LABEL, printable=True)
    g(record, "v", what, schema.integer(1, 1 << 16))
    g(record, "id", what, schema.text(64))
    g(record, "repo", what, schema.text(64))
    g(record, "kid", what, schema.hexstr(12))
    g(record, "channel", what, schema.text(schema.MAX_LABEL, empty=False, name=True, printable=True))
    g(record, "time_ns", what, schema.integer(0, 2**63 - 1))
    g(record, "host", what, label, optional=True)
    g(record, "user", what, label, optional=True)
    g(record, "tags", what, schema.listof(schema.text(schema.MAX_LABEL, empty=False, printable=True),
                                          schema.MAX_TAGS), optional=True)
    g(record, "index", what, schema.listof(schema.blob_ref(max_stored[fmt.T_INDEX]), schema.MAX_RECORD_BLOBS))
    g(record, "reflist", what, schema.listof(schema.blob_ref(max_stored[fmt.T_REFLIST]), schema.MAX_RECORD_BLOBS))
    copies = g(record, "copies", what, schema.mapping(8), optional=True)
    if copies is not None:
        for k, t in (("index", fmt.T_INDEX), ("reflist", fmt.T_REFLIST)):
            more = g(copies, k, what + " copies", schema.listof(schema.blob_ref(max_stored[t]),
                                                                 schema.MAX_RECORD_BLOBS))
            if len(more) != len(record[k]):
                raise schema.bad(what, "copies", f"names {len(more)} copies of {len(record[k])} {k} blobs")
    stats = g(record, "stats", what, schema.mapping(256), optional=True, default={})
    num = schema.number()
    for k, v in stats.items():
        if len(k) > 64 or num(v):
            raise schema.bad(what, "stats", f"has an invalid counter {k[:64]!r}")
    g(record, "linked_flag", what, schema.boolean, optional=True)
    private = g(record, "private", what, schema.mapping(8), optional=True)
    if private:
        g(private, "id", what + " private part", schema.hexstr(32))
        g(private, "sealed", what + " private part", schema.hexstr(max_bytes=fmt.stored_size(schema.MAX_PRIVATE)))


def _strip_blob(e: Exception, bid: bytes) -> str:
    msg = str(e)
    for prefix in (f"blob {bid.hex()}: ", f"blob {bid.hex()} "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _holds_objects(storage: Storage) -> bool:
    """Whether the location holds repository objects (a config-less repository is damaged)."""
    try:
        for prefix in ("snapshots/", "keys/", "blobs/"):
            for _ in storage.list(prefix):
                return True
    except StorageError:
        pass
    return False


def default_host() -> str:
    return socket.gethostname()


def user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())

"""Keys, roles and certificates.

A key file holds the secrets of one role (see ``docs/security.md``):

========  =====================================================================
role      secrets held
========  =====================================================================
admin     the 32-byte master secret (everything else is derived from it)
full      id_key, psk, data_sk, log_sk, own signing seed, certificate
read      id_key, psk, data_sk, log_sk, own signing seed, certificate
write     id_key, psk, data_pk, log_pk, own signing seed, certificate
audit     psk, log_sk, data_pk, own signing seed, certificate
========  =====================================================================

Key files are armoured text; the payload may be protected with a passphrase
(docs/format.md §2): protection 2 (what rekkord writes) keeps the key's public
facts -- role, label, repository, kid -- in clear, authenticated as associated
data of the XChaCha20-Poly1305 seal under the Argon2id-derived key, so that
``key info`` shows them without the passphrase and a tampered header is caught
once the passphrase is given; protection 1 (Argon2id + secretbox, no public
facts) is still read.  Everything read from a key file is bounded and
type-checked: a damaged or hostile file gives :class:`KeyError_`, never a
``TypeError``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat as statmod
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
import nacl.pwhash
import nacl.secret
import nacl.utils
from nacl.exceptions import CryptoError

from . import crypto
from .errors import KeyError_, KeyFileExists, PermissionDenied, WrongKey, WrongPassphrase

ROLES = ("admin", "full", "read", "write", "audit")
DERIVABLE_ROLES = ("full", "read", "write", "audit")

#: What each role may do.  Enforced in the library (Repository.require) and,
#: where it matters, by cryptography (a write key lacks data_sk and log_sk).
CAPABILITIES = {
    "admin": {"save", "list", "read", "check", "forget", "prune", "derive", "revoke"},
    "full": {"save", "list", "read", "check", "forget", "prune"},
    "read": {"list", "read", "check"},
    "write": {"save"},
    "audit": {"list", "check", "forget", "prune"},
}

ARMOUR_BEGIN = "-----BEGIN REKKORD KEY-----"
ARMOUR_END = "-----END REKKORD KEY-----"
KEYFILE_MAGIC = b"RKK1"
KDF_NONE = 0
KDF_ARGON2ID = 1  # format 0.1: Argon2id + secretbox, no public facts (read, no longer written)
KDF_ARGON2ID_HEADER = 2  # Argon2id + XChaCha20-Poly1305 with an authenticated public header
ARGON2_OPS = 3
ARGON2_MEM = 128 * 1024 * 1024
#: Bounds on what a key file may ask of the KDF (a hostile file could ask
#: for hours of CPU or terabytes of memory) and on the file itself.
ARGON2_OPS_MIN, ARGON2_OPS_MAX = 1, 16
ARGON2_MEM_MIN, ARGON2_MEM_MAX = 8192, 1 << 30
MAX_KEY_FILE = 1 << 20
MAX_LABEL = 1024
_HEX = re.compile(r"[0-9a-f]*")


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def kid_of(sign_pk: bytes) -> str:
    """Key id: a short, stable name for a signing public key."""
    return blake3.blake3(sign_pk).hexdigest()[:24]


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass
class Key:
    """The secrets (and public values) of one key file."""

    role: str
    repo: str  # repository id (hex)
    label: str
    sign_seed: bytes
    id_key: bytes | None = None
    psk: bytes | None = None
    data_sk: bytes | None = None
    data_pk: bytes | None = None
    log_sk: bytes | None = None
    log_pk: bytes | None = None
    master: bytes | None = None
    cert: dict | None = None  # signed certificate (None for admin)
    created: float = field(default_factory=time.time)

    # ---- construction ----------------------------------------------------

    @classmethod
    def from_master(cls, master: bytes, repo: str, label: str = "admin") -> "Key":
        data_sk = crypto.derive(crypto.CTX_DATA_SK, master)
        log_sk = crypto.derive(crypto.CTX_LOG_SK, master)
        return cls(
            role="admin",
            repo=repo,
            label=label,
            master=master,
            sign_seed=crypto.derive(crypto.CTX_MASTER_SIGN, master),
            id_key=crypto.derive(crypto.CTX_ID_KEY, master),
            psk=crypto.derive(crypto.CTX_PSK, master),
            data_sk=data_sk,
            data_pk=crypto.x25519_public(data_sk),
            log_sk=log_sk,
            log_pk=crypto.x25519_public(log_sk),
        )

    @classmethod
    def generate_master(cls) -> "Key":
        master = crypto.random_bytes(32)
        repo = crypto.random_bytes(16).hex()
        return cls.from_master(master, repo)

    def derive(self, role: str, label: str) -> "Key":
        """Make a new key of ``role``, certified by this (admin) key."""
        if self.role != "admin" or self.master is None:
            raise PermissionDenied(f"only the master key can derive keys (this is {article(self.role)} {self.role} key)")
        if role not in DERIVABLE_ROLES:
            raise KeyError_(f"unknown role {role!r} (choose from {', '.join(DERIVABLE_ROLES)})")
        seed = crypto.random_bytes(32)
        k = Key(role=role, repo=self.repo, label=label, sign_seed=seed)
        if role in ("full", "read", "write"):
            k.id_key = self.id_key
        k.psk = self.psk
        k.data_pk = self.data_pk
        k.log_pk = self.log_pk
        if role in ("full", "read"):
            k.data_sk = self.data_sk
        if role in ("full", "read", "audit"):
            k.log_sk = self.log_sk
        k.cert = self.certify(role, label, crypto.sign_public(seed))
        return k

    def certify(self, role: str, label: str, sign_pk: bytes) -> dict:
        body = {
            "v": 1,
            "repo": self.repo,
            "kid": kid_of(sign_pk),
            "role": role,
            "label": label,
            "sign_pk": sign_pk.hex(),
            "created": int(time.time()),
        }
        sig = crypto.sign(self.sign_seed, b"rekkord cert v1\0" + canonical(body))
        return {**body, "sig": sig.hex()}

    # ---- properties --------------------------------------------------------

    @property
    def sign_pk(self) -> bytes:
        return crypto.sign_public(self.sign_seed)

    @property
    def kid(self) -> str:
        return kid_of(self.sign_pk)

    def can(self, capability: str) -> bool:
        return capability in CAPABILITIES[self.role]

    def require(self, capability: str, what: str) -> None:
        if not self.can(capability):
            raise PermissionDenied(f"{article(self.role)} {self.role} key cannot {what}")

    # ---- serialisation -------------------------------------------------------

    def to_json(self) -> dict:
        d: dict = {"format": 1, "role": self.role, "repo": self.repo, "label": self.label,
                   "created": int(self.created)}
        if self.role == "admin":
            d["master"] = self.master.hex()
            return d
        d["sign_seed"] = self.sign_seed.hex()
        for name in ("id_key", "psk", "data_sk", "data_pk", "log_sk", "log_pk"):
            v = getattr(self, name)
            if v is not None:
                d[name] = v.hex()
        d["cert"] = self.cert
        return d

    @classmethod
    def from_json(cls, d) -> "Key":
        """The key in a decoded payload; every field is type-checked
        (:class:`KeyError_` naming the field, never a ``TypeError``)."""
        if not isinstance(d, dict):
            raise KeyError_("damaged key file (the payload is not a JSON object)")
        if d.get("format") != 1 or type(d.get("format")) is not int or d.get("role") not in ROLES:
            raise KeyError_("not a rekkord key file (unknown format or role)")
        role = d["role"]
        repo = _hex_field(d, "repo", 16).hex()
        label = d.get("label", "admin" if role == "admin" else "")
        if not isinstance(label, str) or len(label) > MAX_LABEL:
            raise KeyError_(f"damaged key file (label must be a string of at most {MAX_LABEL} characters)")
        created = d.get("created", 0)
        if type(created) not in (int, float) or not 0 <= created < 1 << 40:
            raise KeyError_("damaged key file (created must be a time in seconds)")
        if role == "admin":
            k = cls.from_master(_hex_field(d, "master", 32), repo, label)
            k.created = created
            return k
        held = _ROLE_SECRETS[role]
        values = {}
        for name in ("id_key", "psk", "data_sk", "data_pk", "log_sk", "log_pk"):
            present = d.get(name) is not None
            if name in held and not present:
                raise KeyError_(f"damaged key file (a {role} key needs {name})")
            if present and name not in held and name not in ("data_pk", "log_pk"):
                raise KeyError_(f"damaged key file (a {role} key holds no {name})")
            values[name] = _hex_field(d, name, 32) if present else None
        cert = d.get("cert")
        if (not isinstance(cert, dict) or not all(isinstance(cert.get(f), str) for f in ("kid", "role", "sign_pk", "sig"))
                or cert["role"] != role):
            raise KeyError_("damaged key file (missing or malformed certificate)")
        return cls(role=role, repo=repo, label=label, sign_seed=_hex_field(d, "sign_seed", 32),
                   cert=cert, created=created, **values)

    def public_facts(self) -> dict:
        """What a protected key file shows without its passphrase (protection 2)."""
        return {"format": 1, "role": self.role, "label": self.label, "repo": self.repo, "kid": self.kid,
                "created": int(self.created)}

    def dumps(self, passphrase: str | None = None) -> str:
        payload = canonical(self.to_json())
        if passphrase:
            public = canonical(self.public_facts())
            salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
            kek = nacl.pwhash.argon2id.kdf(32, passphrase.encode(), salt, opslimit=ARGON2_OPS, memlimit=ARGON2_MEM)
            head = (KEYFILE_MAGIC + bytes([KDF_ARGON2ID_HEADER]) + struct.pack("<H", len(public)) + public
                    + salt + struct.pack("<IQ", ARGON2_OPS, ARGON2_MEM))
            nonce = crypto.random_bytes(24)
            body = head + nonce + crypto.aead_encrypt(kek, nonce, payload, head)
        else:
            body = KEYFILE_MAGIC + bytes([KDF_NONE]) + payload
        text = base64.b64encode(body).decode()
        lines = [text[i:i + 64] for i in range(0, len(text), 64)]
        head = (f"rekkord key file: role {self.role}, label {self.label!r}, repository {self.repo}.\n"
                "Keep it secret. Anyone holding it has the powers of its role.\n")
        return head + ARMOUR_BEGIN + "\n" + "\n".join(lines) + "\n" + ARMOUR_END + "\n"

    def save(self, path: str, passphrase: str | None = None, *, overwrite: bool = False) -> None:
        """Write the key file, mode 0600.  A new file never replaces an
        existing one (``O_EXCL``); ``overwrite`` (key passwd) writes a
        temporary file with an unpredictable name in the same directory
        (``O_EXCL``, 0600), syncs it and renames it over ``path``."""
        text = self.dumps(passphrase).encode()
        if overwrite:
            _replace_file(path, text)
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileExists(f"key file {path} already exists; refusing to overwrite it") from None
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


#: The secrets each derived role holds (data_pk and log_pk are public: any role may carry them).
_ROLE_SECRETS = {
    "full": {"id_key", "psk", "data_sk", "log_sk"},
    "read": {"id_key", "psk", "data_sk", "log_sk"},
    "write": {"id_key", "psk", "data_pk", "log_pk"},
    "audit": {"psk", "log_sk", "data_pk", "log_pk"},
}


def _hex_field(d: dict, name: str, size: int) -> bytes:
    v = d.get(name)
    if not isinstance(v, str) or len(v) != 2 * size or not _HEX.fullmatch(v):
        raise KeyError_(f"damaged key file ({name} must be {2 * size} lower-case hex characters)")
    return bytes.fromhex(v)


def _replace_file(path: str, data: bytes) -> None:
    """Atomically replace ``path`` by a file holding ``data``: a temporary
    file of an unpredictable name (mkstemp: O_EXCL, 0600) in the same
    directory, fsynced, renamed over ``path``, then the directory synced.
    Nobody can plant a file or a symlink under the temporary name first."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def parse_armour(text: str) -> bytes:
    if len(text) > MAX_KEY_FILE:
        raise KeyError_(f"not a rekkord key file (larger than {MAX_KEY_FILE >> 20} MiB)")
    try:
        start = text.index(ARMOUR_BEGIN) + len(ARMOUR_BEGIN)
        end = text.index(ARMOUR_END, start)
        body = base64.b64decode("".join(text[start:end].split()), validate=True)
    except (ValueError, TypeError, binascii.Error):
        raise KeyError_("not a rekkord key file (no valid armour)") from None
    if not body.startswith(KEYFILE_MAGIC) or len(body) < 5:
        raise KeyError_("not a rekkord key file (bad magic)")
    return body


def is_protected(text: str) -> bool:
    return parse_armour(text)[4] != KDF_NONE


@dataclass
class KeyFileInfo:
    """What a key file says about itself without its passphrase."""

    protection: str  # "none" | "passphrase" (protection 2) | "passphrase (old format)" (protection 1)
    facts: dict | None  # role, label, repo, kid, created -- None for protection 1
    verified: bool  # the facts come from the authenticated payload (unprotected file)


def inspect(text: str) -> KeyFileInfo:
    """The public facts of a key file, without a passphrase: from the
    payload of an unprotected file (verified), from the clear header of a
    protection-2 file (not verified until the passphrase opens the payload;
    :func:`loads` checks they match), none for a protection-1 file."""
    body = parse_armour(text)
    kdf = body[4]
    if kdf == KDF_NONE:
        k = _key_from_payload(body[5:])
        return KeyFileInfo("none", k.public_facts(), True)
    if kdf == KDF_ARGON2ID:
        return KeyFileInfo("passphrase (old format)", None, False)
    if kdf == KDF_ARGON2ID_HEADER:
        facts, _head, _salt, _ops, _mem, _sealed = _split_v2(body)
        return KeyFileInfo("passphrase", facts, False)
    raise KeyError_(f"key file uses an unknown protection scheme ({kdf})")


def _kdf_bounds(ops: int, mem: int) -> None:
    if not ARGON2_OPS_MIN <= ops <= ARGON2_OPS_MAX or not ARGON2_MEM_MIN <= mem <= ARGON2_MEM_MAX:
        raise KeyError_(f"key file asks for Argon2id opslimit {ops}, memlimit {mem} bytes: outside the accepted "
                        f"bounds ({ARGON2_OPS_MIN}-{ARGON2_OPS_MAX}, {ARGON2_MEM_MIN}-{ARGON2_MEM_MAX} bytes); "
                        "refusing to run the KDF")


def _split_v2(body: bytes):
    """Protection 2: (public facts, authenticated head, salt, ops, mem, nonce+ciphertext)."""
    if len(body) < 7:
        raise KeyError_("damaged key file (truncated header)")
    (n,) = struct.unpack_from("<H", body, 5)
    end = 7 + n
    if len(body) < end + 28 + 24 + crypto.TAG_SIZE:
        raise KeyError_("damaged key file (truncated)")
    try:
        facts = json.loads(body[7:end])
    except (ValueError, UnicodeDecodeError):
        raise KeyError_("damaged key file (public header is not JSON)") from None
    _check_facts(facts)
    salt = body[end:end + 16]
    ops, mem = struct.unpack_from("<IQ", body, end + 16)
    return facts, body[:end + 28], salt, ops, mem, body[end + 28:]


def _check_facts(f) -> None:
    ok = (isinstance(f, dict) and f.get("format") == 1 and type(f.get("format")) is int
          and f.get("role") in ROLES and isinstance(f.get("label"), str) and len(f["label"]) <= MAX_LABEL
          and isinstance(f.get("repo"), str) and len(f["repo"]) == 32 and _HEX.fullmatch(f["repo"])
          and isinstance(f.get("kid"), str) and len(f["kid"]) == 24 and _HEX.fullmatch(f["kid"])
          and type(f.get("created")) is int and f["created"] >= 0)
    if not ok:
        raise KeyError_("damaged key file (malformed public header)")


def _key_from_payload(payload) -> Key:
    try:
        d = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as e:
        raise KeyError_(f"damaged key file ({e})") from None
    return Key.from_json(d)


def loads(text: str, passphrase: str | None = None) -> Key:
    body = parse_armour(text)
    kdf = body[4]
    if kdf == KDF_NONE:
        return _key_from_payload(body[5:])
    if kdf not in (KDF_ARGON2ID, KDF_ARGON2ID_HEADER):
        raise KeyError_(f"key file uses an unknown protection scheme ({kdf})")
    if kdf == KDF_ARGON2ID:
        if len(body) < 33 + 40:
            raise KeyError_("damaged key file (truncated)")
        salt = body[5:21]
        ops, mem = struct.unpack_from("<IQ", body, 21)
    else:
        facts, head, salt, ops, mem, sealed = _split_v2(body)
    _kdf_bounds(ops, mem)
    if not passphrase:
        raise WrongPassphrase("the key file is protected by a passphrase; none was given")
    kek = nacl.pwhash.argon2id.kdf(32, passphrase.encode(), salt, opslimit=ops, memlimit=mem)
    if kdf == KDF_ARGON2ID:
        try:
            payload = nacl.secret.SecretBox(kek).decrypt(body[33:])
        except CryptoError:
            raise WrongPassphrase("wrong passphrase for the key file") from None
        return _key_from_payload(payload)
    payload = crypto.aead_decrypt(kek, sealed[:24], sealed[24:], head)
    if payload is None:
        # The header is associated data: a tampered header fails here too.
        raise WrongPassphrase("wrong passphrase for the key file (or its public header was altered)")
    key = _key_from_payload(payload)
    if key.public_facts() != facts:
        raise KeyError_("damaged key file (its public header does not match the sealed key)")
    return key


def read_key_file(path: str, warn: Callable[[str], None] | None = None) -> str:
    """The armoured text of a key file, or a KeyError_ naming the file.

    Reads at most :data:`MAX_KEY_FILE` bytes.  When the file (a regular
    file) can be read or written by its group or by others, ``warn(message)``
    is called: the library does not print."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise KeyError_(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyError_(f"cannot read key file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if statmod.S_ISDIR(st.st_mode):
            raise KeyError_(f"key file {path} is a directory")
        if statmod.S_ISREG(st.st_mode) and st.st_size > MAX_KEY_FILE:
            raise KeyError_(f"{path} is not a rekkord key file (larger than {MAX_KEY_FILE >> 20} MiB)")
        parts = []
        total = 0
        while total <= MAX_KEY_FILE:
            b = os.read(fd, MAX_KEY_FILE + 1 - total)
            if not b:
                break
            parts.append(b)
            total += len(b)
        if total > MAX_KEY_FILE:
            raise KeyError_(f"{path} is not a rekkord key file (larger than {MAX_KEY_FILE >> 20} MiB)")
    except OSError as e:
        raise KeyError_(f"cannot read key file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if warn is not None and statmod.S_ISREG(st.st_mode) and st.st_mode & 0o066:
        who = " and ".join(w for w, bits in (("its group", 0o060), ("others", 0o006)) if st.st_mode & bits)
        warn(f"key file {path} can be read or written by {who} (mode {statmod.S_IMODE(st.st_mode):04o}); "
             f"restrict it with: chmod 600 {path}")
    return b"".join(parts).decode("ascii", errors="replace")


def load(path: str, passphrase: str | None = None, *, warn: Callable[[str], None] | None = None) -> Key:
    return loads(read_key_file(path, warn), passphrase)


def verify_cert(cert: dict, master_sign_pk: bytes, repo: str) -> bool:
    """A certificate is valid when the master key signed it for this repository."""
    try:
        body = {k: v for k, v in cert.items() if k != "sig"}
        if body.get("repo") != repo or body.get("role") not in DERIVABLE_ROLES:
            return False
        if kid_of(bytes.fromhex(body["sign_pk"])) != body.get("kid"):
            return False
        return crypto.verify(master_sign_pk, b"rekkord cert v1\0" + canonical(body), bytes.fromhex(cert["sig"]))
    except (KeyError, ValueError, TypeError, AttributeError):
        return False


def check_belongs(key: Key, config: dict) -> None:
    """Raise WrongKey unless ``key`` was made for the repository ``config``."""
    if key.repo != config["repo"]:
        raise WrongKey(f"this key belongs to repository {key.repo}, not to {config['repo']}")
    if key.data_pk is not None and key.data_pk.hex() != config["data_pk"]:
        raise WrongKey("this key's data key does not match the repository")
    if key.log_pk is not None and key.log_pk.hex() != config["log_pk"]:
        raise WrongKey("this key's log key does not match the repository")
    if key.role == "admin":
        if key.sign_pk.hex() != config["master_sign_pk"]:
            raise WrongKey("this master key does not match the repository")
    elif not key.cert or not verify_cert(key.cert, bytes.fromhex(config["master_sign_pk"]), config["repo"]) \
            or key.cert.get("kid") != key.kid or key.cert.get("role") != key.role:
        raise WrongKey("this key's certificate is not signed by the repository's master key")

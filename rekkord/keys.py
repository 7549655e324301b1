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
(Argon2id + XSalsa20-Poly1305 secretbox).
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
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
KDF_ARGON2ID = 1
ARGON2_OPS = 3
ARGON2_MEM = 128 * 1024 * 1024


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
    def from_json(cls, d: dict) -> "Key":
        if d.get("format") != 1 or d.get("role") not in ROLES:
            raise KeyError_("not a rekkord key file (unknown format or role)")
        if d["role"] == "admin":
            k = cls.from_master(bytes.fromhex(d["master"]), d["repo"], d.get("label", "admin"))
            k.created = d.get("created", 0)
            return k

        def b(name):
            v = d.get(name)
            return bytes.fromhex(v) if v is not None else None

        return cls(
            role=d["role"], repo=d["repo"], label=d.get("label", ""), sign_seed=b("sign_seed"),
            id_key=b("id_key"), psk=b("psk"), data_sk=b("data_sk"), data_pk=b("data_pk"),
            log_sk=b("log_sk"), log_pk=b("log_pk"), cert=d.get("cert"), created=d.get("created", 0),
        )

    def dumps(self, passphrase: str | None = None) -> str:
        payload = canonical(self.to_json())
        if passphrase:
            salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
            kek = nacl.pwhash.argon2id.kdf(32, passphrase.encode(), salt, opslimit=ARGON2_OPS, memlimit=ARGON2_MEM)
            box = nacl.secret.SecretBox(kek)
            body = (KEYFILE_MAGIC + bytes([KDF_ARGON2ID]) + salt
                    + struct.pack("<IQ", ARGON2_OPS, ARGON2_MEM) + bytes(box.encrypt(payload)))
        else:
            body = KEYFILE_MAGIC + bytes([KDF_NONE]) + payload
        text = base64.b64encode(body).decode()
        lines = [text[i:i + 64] for i in range(0, len(text), 64)]
        head = (f"rekkord key file: role {self.role}, label {self.label!r}, repository {self.repo}.\n"
                "Keep it secret. Anyone holding it has the powers of its role.\n")
        return head + ARMOUR_BEGIN + "\n" + "\n".join(lines) + "\n" + ARMOUR_END + "\n"

    def save(self, path: str, passphrase: str | None = None, *, overwrite: bool = False) -> None:
        text = self.dumps(passphrase).encode()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        if overwrite:
            tmp = f"{path}.tmp-{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            return
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise KeyFileExists(f"key file {path} already exists; refusing to overwrite it") from None
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def parse_armour(text: str) -> bytes:
    try:
        start = text.index(ARMOUR_BEGIN) + len(ARMOUR_BEGIN)
        end = text.index(ARMOUR_END, start)
        body = base64.b64decode("".join(text[start:end].split()), validate=True)
    except (ValueError, TypeError):
        raise KeyError_("not a rekkord key file (no valid armour)") from None
    if not body.startswith(KEYFILE_MAGIC) or len(body) < 5:
        raise KeyError_("not a rekkord key file (bad magic)")
    return body


def is_protected(text: str) -> bool:
    return parse_armour(text)[4] == KDF_ARGON2ID


def loads(text: str, passphrase: str | None = None) -> Key:
    body = parse_armour(text)
    kdf = body[4]
    if kdf == KDF_NONE:
        payload = body[5:]
    elif kdf == KDF_ARGON2ID:
        if not passphrase:
            raise WrongPassphrase("the key file is protected by a passphrase; none was given")
        salt = body[5:21]
        ops, mem = struct.unpack_from("<IQ", body, 21)
        kek = nacl.pwhash.argon2id.kdf(32, passphrase.encode(), salt, opslimit=ops, memlimit=mem)
        try:
            payload = nacl.secret.SecretBox(kek).decrypt(body[33:])
        except CryptoError:
            raise WrongPassphrase("wrong passphrase for the key file") from None
    else:
        raise KeyError_(f"key file uses an unknown protection scheme ({kdf})")
    try:
        return Key.from_json(json.loads(payload))
    except (ValueError, KeyError, TypeError) as e:
        raise KeyError_(f"damaged key file ({e})") from None


def read_key_file(path: str) -> str:
    """The armoured text of a key file, or a KeyError_ naming the file."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise KeyError_(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyError_(f"cannot read key file {path}: {e.strerror}") from None


def load(path: str, passphrase: str | None = None) -> Key:
    return loads(read_key_file(path), passphrase)


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

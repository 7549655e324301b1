"""Logins: Argon2id password hashes (libsodium through PyNaCl, the same
Argon2id as passphrase-protected key files), login rate limits, session
tokens.  Sessions themselves live in the state database (state.py)."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque

import blake3
import nacl.exceptions
import nacl.pwhash

#: libsodium's "interactive" Argon2id cost: 2 passes over 64 MiB.
OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE
MAX_PASSWORD = 1024

_dummy: bytes | None = None


def hash_password(password: str, *, opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT) -> str:
    """An Argon2id hash in the PHC string format (``$argon2id$v=19$...``)."""
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the password is longer than {MAX_PASSWORD} characters")
    return nacl.pwhash.argon2id.str(password.encode(), opslimit=opslimit, memlimit=memlimit).decode("ascii")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; an unknown user (``None``) costs the same
    time as a known one, so that timing does not tell which names exist."""
    global _dummy
    if not password or len(password) > MAX_PASSWORD:
        return False
    if password_hash is None:
        if _dummy is None:
            _dummy = nacl.pwhash.argon2id.str(secrets.token_bytes(16), opslimit=OPSLIMIT, memlimit=MEMLIMIT)
        target = _dummy
    else:
        target = password_hash.encode("ascii")
    try:
        ok = nacl.pwhash.argon2id.verify(target, password.encode())
    except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
        return False
    return ok and password_hash is not None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Sessions are stored by this hash: the database never holds a usable token."""
    return blake3.blake3(b"rekkord monitor session\0" + token.encode()).hexdigest()


class RateLimiter:
    """At most ``attempts`` failed logins per ``window`` seconds for each key
    (the client address, and the user name tried)."""

    def __init__(self, attempts: int, window: float, clock=time.monotonic):
        self.attempts = attempts
        self.window = window
        self.clock = clock
        self.lock = threading.Lock()
        self.failures: dict[str, deque] = {}

    def _prune(self, key: str, now: float) -> deque:
        q = self.failures.get(key)
        if q is None:
            return deque()
        while q and now - q[0] > self.window:
            q.popleft()
        if not q:
            del self.failures[key]
        return q

    def wait(self, *keys: str) -> float:
        """Seconds until another attempt is allowed (0: now)."""
        now = self.clock()
        with self.lock:
            longest = 0.0
            for k in keys:
                q = self._prune(k, now)
                if len(q) >= self.attempts:
                    longest = max(longest, q[0] + self.window - now)
            return longest

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self.lock:
            if len(self.failures) > 100_000:  # bounded memory under a flood
                self.failures.clear()
            for k in keys:
                self.failures.setdefault(k, deque()).append(now)
                q = self.failures[k]
                while len(q) > self.attempts:
                    q.popleft()

    def succeeded(self, *keys: str) -> None:
        with self.lock:
            for k in keys:
                self.failures.pop(k, None)

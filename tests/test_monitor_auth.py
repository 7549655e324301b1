"""Passwords (Argon2id through PyNaCl), session tokens and login rate limits."""

from __future__ import annotations

from rekkord.monitor.auth import RateLimiter, hash_password, token_hash, verify_password
from rekkord.monitor.config import HASH


def test_argon2id_hashes_verify_and_never_hold_the_password():
    h = hash_password("correct horse")
    assert HASH.match(h) and h.startswith("$argon2id$v=19$m=65536,t=2,p=1$")
    assert "correct horse" not in h and hash_password("correct horse") != h  # salted
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "correct horsf") and not verify_password(h, "")
    assert not verify_password(None, "correct horse")  # an unknown user
    assert not verify_password("$argon2id$v=19$m=65536,t=2,p=1$bad$bad", "x")
    assert not verify_password(h, "x" * 5000)


def test_session_tokens_are_stored_as_hashes():
    assert token_hash("abc") != token_hash("abd") and len(token_hash("abc")) == 64 and "abc" not in token_hash("abc")


def test_rate_limit_per_key_and_window():
    now = [1000.0]
    rl = RateLimiter(3, 60, clock=lambda: now[0])
    keys = ("address:1.2.3.4", "user:alice")
    for _ in range(3):
        assert rl.wait(*keys) == 0
        rl.failed(*keys)
    assert rl.wait(*keys) == 60
    assert rl.wait("address:5.6.7.8", "user:alice") == 60  # the user name is limited from anywhere
    assert rl.wait("address:5.6.7.8", "user:bob") == 0
    now[0] += 30
    assert rl.wait(*keys) == 30
    now[0] += 31
    assert rl.wait(*keys) == 0
    rl.failed(*keys)
    rl.succeeded(*keys)
    assert rl.wait(*keys) == 0

"""API keys and stream tokens: made, hashed and checked here. Pure: no Redis.

A key is `sk_live_` + 43 base62 characters (256 random bits). Only its keyed hash (HMAC-SHA256 with
the server secret) is stored, so a stolen database does not yield usable keys, and a lookup by hash
takes the same time whatever the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import string
import time

KEY_PREFIX = "sk_live_"
_ALPHABET = string.ascii_letters + string.digits
KEY_BODY_LENGTH = 43  # 62**43 > 2**256
KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9]{{{KEY_BODY_LENGTH}}}$")


def new_key() -> str:
    """A fresh API key; shown to its owner once, never stored."""
    return KEY_PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(KEY_BODY_LENGTH))


def key_hash(secret: str, key: str) -> str:
    """The keyed hash a key is stored and found by."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def key_id(hashed: str) -> str:
    """A short public id for a key (to list and revoke it), derived from its hash."""
    return hashed[:16]


def display_prefix(key: str) -> str:
    """What a key list shows: enough to recognise a key, useless to an attacker."""
    return key[: len(KEY_PREFIX) + 6] + "…"


def looks_like_key(key: str) -> bool:
    """True when `key` has the shape of one of our keys (checked before any Redis work)."""
    return bool(KEY_PATTERN.fullmatch(key))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def stream_token(secret: str, job_id: str, ttl_s: int, now: float | None = None) -> str:
    """A short-lived token that lets a browser's EventSource read one job's events (it cannot send headers)."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    payload = f"{job_id}.{expires}"
    mac = hmac.new(secret.encode(), f"stream:{payload}".encode(), hashlib.sha256).digest()[:18]
    return f"{expires}.{_b64(mac)}"


def check_stream_token(secret: str, job_id: str, token: str, now: float | None = None) -> bool:
    """True when `token` was made for `job_id` by this server and has not expired."""
    expires, _, mac = token.partition(".")
    if not expires.isdigit() or not mac:
        return False
    payload = f"{job_id}.{expires}"
    want = _b64(hmac.new(secret.encode(), f"stream:{payload}".encode(), hashlib.sha256).digest()[:18])
    fresh = int(expires) >= (now if now is not None else time.time())
    return hmac.compare_digest(want, mac) and fresh

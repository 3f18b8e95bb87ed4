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


STREAM_TOKEN = re.compile(r"^([0-9]{1,12})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{1,86})\.([A-Za-z0-9_-]{24})$")


def _stream_mac(secret: str, job_id: str, expires: str, key_id: str, holder: str) -> str:
    payload = f"stream:{job_id}.{expires}.{key_id}.{holder}"
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:18])


def stream_token(secret: str, job_id: str, ttl_s: int, *, user_id: str, key_id: str, now: float | None = None) -> str:
    """A short-lived token that lets a browser's EventSource read one job's events (it cannot send headers).

    It acts for the key that asked for it (`user_id`'s key `key_id`): when that key is revoked or expires, or the
    user loses the right to read the job, the token stops working too.
    """
    expires = str(int((now if now is not None else time.time()) + ttl_s))
    holder = _b64(user_id.encode())
    return f"{expires}.{key_id}.{holder}.{_stream_mac(secret, job_id, expires, key_id, holder)}"


def check_stream_token(secret: str, job_id: str, token: str, now: float | None = None) -> tuple[str, str] | None:
    """(user id, key id) of the key a valid, unexpired token for `job_id` was made for; None otherwise."""
    found = STREAM_TOKEN.fullmatch(token) if token.isascii() else None
    if found is None:
        return None
    expires, key_id, holder, mac = found.groups()
    if not hmac.compare_digest(_stream_mac(secret, job_id, expires, key_id, holder), mac):
        return None
    if int(expires) < (now if now is not None else time.time()):
        return None
    try:
        return base64.urlsafe_b64decode(holder + "=" * (-len(holder) % 4)).decode(), key_id
    except ValueError:
        return None

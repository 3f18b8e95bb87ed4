"""Users, keys and failed authentication as typed script calls.

A key reads its user's role and agents in the script that writes it, and a role change writes the user and
every key record in one script that first checks no key appeared meanwhile, so no key keeps a role its user
lost. Failed authentications are counted per client address and window.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Mapping, Sequence

from events.envelope import text
from events.store import keyspace
from events.store.scripts import Call, call


def create_key(*, user_id: str, key_hash: str, key_id: str, record: Mapping[str, str]) -> Call[bool]:
    """Write a key record with its user's current role and agents; False when the user does not exist."""
    fields = [part for pair in record.items() for part in pair]
    return call(
        "key_create",
        [keyspace.user(user_id), keyspace.user_keys(user_id), keyspace.apikey(key_hash)],
        [key_id, key_hash, *fields],
        lambda r: bool(int(r)),
    )


class Updated(StrEnum):
    """What a user update did."""

    OK = "ok"
    MISSING = "missing"  # no such user
    MOVED = "moved"  # a key appeared since the caller read them: read again


def update_user(*, user_id: str, key_hashes: Sequence[str], fields: Mapping[str, str]) -> Call[Updated]:
    """Set `fields` on the user and on each of their key records, which must be exactly `key_hashes`."""
    pairs = [part for pair in fields.items() for part in pair]
    return call(
        "user_update",
        [keyspace.user(user_id), keyspace.user_keys(user_id), *(keyspace.apikey(h) for h in key_hashes)],
        [len(key_hashes), *key_hashes, *pairs],
        lambda r: Updated(text(r)),
    )


def note_auth_failure(
    *, ip: str, window: int, ttl_s: int, now: float, audit: Mapping[str, Any], audit_max_len: int
) -> Call[int]:
    """Count one failed authentication from `ip` in `window` (auditing `audit` if it is the window's first);
    returns the address's count."""
    return call(
        "auth_failure",
        [keyspace.auth_failures(window), keyspace.AUTH_FAILURE_WINDOWS, keyspace.AUDIT_STREAM],
        [ip, window, ttl_s, audit_max_len, f"{now:.6f}", json.dumps(audit)],
        lambda r: int(r),
    )


def summarise_auth_failures(*, window: int, window_s: int, now: float, audit_max_len: int) -> Call[int]:
    """Write one audit record per address that failed more than once in a finished `window`, then forget it;
    returns how many records were written."""
    return call(
        "auth_summary",
        [keyspace.auth_failures(window), keyspace.AUTH_FAILURE_WINDOWS, keyspace.AUDIT_STREAM],
        [window, window * window_s, window_s, f"{now:.6f}", audit_max_len],
        lambda r: int(r),
    )

"""API keys and stream tokens (api/credentials.py): the key's shape and randomness, its keyed hash, and stream
tokens bound to a job, a key and an expiry. Pure: no Redis."""

from __future__ import annotations

import math

import pytest

from api import credentials
from tests.stack import SECRET


def test_new_keys_have_the_documented_shape_and_256_bits_of_randomness() -> None:
    made = {credentials.new_key() for _ in range(500)}
    assert len(made) == 500
    for key in made:
        assert credentials.looks_like_key(key) and len(key) == len("sk_live_") + 43
    assert credentials.KEY_BODY_LENGTH * math.log2(62) >= 256
    assert len(set("".join(made)[8:])) > 50  # draws from the whole alphabet


def test_key_hash_is_a_keyed_hash_that_depends_on_the_secret() -> None:
    key = credentials.new_key()
    assert credentials.key_hash(SECRET, key) == credentials.key_hash(SECRET, key)
    assert credentials.key_hash(SECRET, key) != credentials.key_hash(SECRET + "!", key)
    assert key not in credentials.key_hash(SECRET, key) and len(credentials.key_hash(SECRET, key)) == 64


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("sk_live_" + "A1b2" * 10 + "xyz", True),
        ("sk_live_" + "a" * 42, False),
        ("sk_live_" + "a" * 44, False),
        ("sk_test_" + "a" * 43, False),
        ("sk_live_" + "a" * 42 + "-", False),
        ("", False),
        ("Bearer x", False),
    ],
)
def test_only_sk_live_and_43_base62_characters_look_like_a_key(key: str, ok: bool) -> None:
    assert credentials.looks_like_key(key) is ok


def test_stream_token_is_valid_for_its_job_until_it_expires_and_names_its_key() -> None:
    token = credentials.stream_token(
        SECRET, "job-1", 60, user_id="alice@example.org", key_id="0123456789abcdef", now=1000.0
    )
    assert credentials.check_stream_token(SECRET, "job-1", token, now=1000.0) == (
        "alice@example.org",
        "0123456789abcdef",
    )
    assert credentials.check_stream_token(SECRET, "job-1", token, now=1060.0)
    assert not credentials.check_stream_token(SECRET, "job-1", token, now=1061.0)
    assert not credentials.check_stream_token(SECRET, "job-2", token, now=1000.0)
    assert not credentials.check_stream_token(SECRET + "!", "job-1", token, now=1000.0)


def test_tampered_or_malformed_stream_tokens_are_refused() -> None:
    token = credentials.stream_token(SECRET, "job-1", 60, user_id="alice", key_id="0123456789abcdef", now=1000.0)
    expires, key_id, holder, mac = token.split(".")
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    other_user = credentials.stream_token(SECRET, "job-1", 60, user_id="mallory", key_id=key_id, now=1000.0)
    for bad in [
        f"{int(expires) + 3600}.{key_id}.{holder}.{mac}",
        f"{expires}.{key_id}.{holder}.{flipped}",
        f"{expires}.fedcba9876543210.{holder}.{mac}",
        f"{expires}.{key_id}.{other_user.split('.')[2]}.{mac}",
        expires,
        f"{expires}.",
        f"x.{mac}",
        "",
        "1.é",
        "².x",
        f"{expires}.{key_id}.{holder}.{mac}\n",
        "٣" + token[1:],
    ]:
        assert not credentials.check_stream_token(SECRET, "job-1", bad, now=1000.0), bad

"""Settings from the environment (settings.py): a bad value fails naming its variable, defaults are consistent,
the secret file is made once and private, and nothing public shows a secret. Pure: no Redis."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from settings import Settings, SettingsError
from tests.stack import SECRET


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"LLM_MAX_RETRIES": "-1"}, "LLM_MAX_RETRIES"),
        ({"LLM_TIMEOUT_S": "soon"}, "LLM_TIMEOUT_S"),
        ({"TOKEN_FLUSH_MS": "51"}, "TOKEN_FLUSH_MS"),
        ({"TASK_SOFT_TIME_LIMIT_S": "600", "TASK_HARD_TIME_LIMIT_S": "600"}, "TASK_SOFT_TIME_LIMIT_S"),
        ({"BROKER_VISIBILITY_TIMEOUT_S": "600"}, "BROKER_VISIBILITY_TIMEOUT_S"),
        ({"JOB_LEASE_S": "4", "JOB_HEARTBEAT_S": "2"}, "JOB_LEASE_S"),
        ({"MAX_TOKENS_DEFAULT": "9000"}, "MAX_TOKENS_DEFAULT"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"AGENTIC_SECRET_KEY": "short"}, "AGENTIC_SECRET_KEY"),
        pytest.param({"LLM_TIMEOUT_S": "nan"}, "LLM_TIMEOUT_S"),
    ],
)
def test_bad_settings_fail_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, **env})


def test_defaults_are_consistent_and_values_are_read() -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "PORT": "9001", "LOG_LEVEL": "debug"})
    assert (settings.port, settings.log_level, settings.provider_mode) == (9001, "DEBUG", "offline")
    assert Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "OPENAI_API_KEY": "k"}).provider_mode == "openai"


def test_secret_file_is_made_once_with_owner_only_permissions(tmp_path: Path) -> None:
    env = {"AGENTIC_SECRET_FILE": str(tmp_path / "sub" / "secret")}
    first, second = Settings.from_env(env), Settings.from_env(env)
    assert len(first.secret_key) >= 32 and first.secret_key == second.secret_key
    assert stat.S_IMODE(os.stat(env["AGENTIC_SECRET_FILE"]).st_mode) == 0o600


def test_public_settings_and_repr_never_show_secrets() -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "OPENAI_API_KEY": "sk-openai-very-secret"})
    public = settings.public()
    assert "secret_key" not in public and "openai_api_key" not in public and "port" in public
    for text in (json.dumps(public), repr(settings)):
        assert SECRET not in text and "sk-openai-very-secret" not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://ops:hunter2@127.0.0.1:6379/0", "redis://ops:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3"),
        pytest.param("redis://127.0.0.1:6379/0?password=hunter2", None),
    ],
)
def test_public_settings_hide_the_redis_password(url: str, shown: str | None) -> None:
    public = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "REDIS_URL": url}).public()
    assert "hunter2" not in json.dumps(public)
    assert shown is None or public["redis_url"] == shown

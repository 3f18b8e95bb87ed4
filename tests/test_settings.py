"""Settings from the environment (settings.py): a bad value fails naming its variable, defaults are consistent,
the secret file is made once and private, and nothing public shows a secret. Secrets come from `*_FILE` files
too, Redis credentials are merged into REDIS_URL and its TLS options are checked. Pure: no Redis."""

from __future__ import annotations

import json
import os
import ssl
import stat
from pathlib import Path

import pytest
import redis

from settings import InsecureSettingWarning, Settings, SettingsError
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
        ({"CACHE_SEMANTIC_THRESHOLD": "1.5"}, "CACHE_SEMANTIC_THRESHOLD"),
        ({"CACHE_SEMANTIC_THRESHOLD": "-0.1"}, "CACHE_SEMANTIC_THRESHOLD"),
        ({"CACHE_SEMANTIC_THRESHOLD": "high"}, "CACHE_SEMANTIC_THRESHOLD"),
        ({"CACHE_SEMANTIC_THRESHOLD": "nan"}, "CACHE_SEMANTIC_THRESHOLD"),
    ],
)
def test_bad_settings_fail_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, **env})


def test_defaults_are_consistent_and_values_are_read() -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "PORT": "9001", "LOG_LEVEL": "debug"})
    assert (settings.port, settings.log_level, settings.provider_mode) == (9001, "DEBUG", "offline")
    assert Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "OPENAI_API_KEY": "k"}).provider_mode == "openai"


def test_semantic_matching_is_off_by_default_and_takes_a_threshold_from_zero_to_one() -> None:
    assert Settings.from_env({"AGENTIC_SECRET_KEY": SECRET}).cache_semantic_threshold == 0.0
    for raw, value in (("0.9", 0.9), ("1", 1.0), ("0", 0.0)):
        env = {"AGENTIC_SECRET_KEY": SECRET, "CACHE_SEMANTIC_THRESHOLD": raw}
        assert Settings.from_env(env).cache_semantic_threshold == value


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


@pytest.mark.parametrize(
    ("name", "url", "shown"),
    [
        ("OPENAI_BASE_URL", "https://u:hunter2@llm.example/v1", "https://u:***@llm.example/v1"),
        ("QDRANT_URL", "https://:hunter2@qdrant.example:6333", "https://:***@qdrant.example:6333"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://u:hunter2@otel.example:4318", "https://u:***@otel.example:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example:4318/?api_key=hunter2", None),
        ("QDRANT_URL", "https://qdrant.example:6333?api-key=hunter2&timeout=5", None),
        ("QDRANT_URL", "http://qdrant:6333", "http://qdrant:6333"),
    ],
)
def test_public_settings_and_repr_mask_credentials_in_every_url(name: str, url: str, shown: str | None) -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, "REDIS_URL": "redis://:hunter2@r:6379/0", name: url})
    public = settings.public()
    for text in (json.dumps(public), repr(settings)):
        assert "hunter2" not in text
    attribute = {"OPENAI_BASE_URL": "openai_base_url", "OTEL_EXPORTER_OTLP_ENDPOINT": "otlp_endpoint"}.get(
        name, "qdrant_url"
    )
    assert getattr(settings, attribute) == url  # masked only where shown, never in use
    assert shown is None or public[attribute] == shown
    assert "timeout=5" in json.dumps(public) or "timeout" not in url


@pytest.mark.parametrize(
    ("name", "attribute"),
    [
        ("AGENTIC_SECRET_KEY", "secret_key"),
        ("OPENAI_API_KEY", "openai_api_key"),
        ("REDIS_PASSWORD", "redis_url"),
    ],
)
def test_a_secret_comes_from_its_file_without_the_trailing_newline(tmp_path: Path, name: str, attribute: str) -> None:
    secret = "from-a-file-" + "s" * 32
    (tmp_path / "secret").write_text(secret + "\n")
    env = {"AGENTIC_SECRET_KEY": SECRET, f"{name}_FILE": str(tmp_path / "secret")}
    settings = Settings.from_env({k: v for k, v in env.items() if k != name})
    value = getattr(settings, attribute)
    assert value == secret if attribute != "redis_url" else value == f"redis://:{secret}@127.0.0.1:6379/0"
    assert secret not in repr(settings) and secret not in json.dumps(settings.public())


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n", "is empty"),
        (b"\xffsecret-bytes", "is not UTF-8"),
        ("dir", "cannot be read"),
    ],
)
@pytest.mark.parametrize("name", ["REDIS_PASSWORD_FILE", "AGENTIC_SECRET_KEY_FILE", "OPENAI_API_KEY_FILE"])
def test_a_secret_file_that_is_missing_empty_or_unreadable_fails_naming_the_variable_not_the_contents(
    tmp_path: Path, name: str, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "secret"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    env = {"AGENTIC_SECRET_KEY": SECRET} if name != "AGENTIC_SECRET_KEY_FILE" else {}
    with pytest.raises(SettingsError, match=f"^{name} names {path}, which {problem}") as failed:
        Settings.from_env({**env, name: str(path)})
    assert "secret-bytes" not in str(failed.value) and "\\x" not in str(failed.value)


@pytest.mark.parametrize("name", ["REDIS_PASSWORD", "AGENTIC_SECRET_KEY", "OPENAI_API_KEY"])
def test_a_secret_given_both_directly_and_by_file_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "secret").write_text("y" * 40)
    env = {"AGENTIC_SECRET_KEY": SECRET, name: "x" * 40, f"{name}_FILE": str(tmp_path / "secret")}
    with pytest.raises(SettingsError, match=f"Set {name} or {name}_FILE, not both"):
        Settings.from_env(env)


def test_a_short_secret_key_file_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("short\n")
    with pytest.raises(SettingsError, match=r"^AGENTIC_SECRET_KEY_FILE must hold at least 32 characters\."):
        Settings.from_env({"AGENTIC_SECRET_KEY_FILE": str(tmp_path / "key")})


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({"REDIS_PASSWORD": "pw"}, "redis://:pw@127.0.0.1:6379/0"),
        (
            {"REDIS_URL": "rediss://r.example:6380/2", "REDIS_PASSWORD": "p@ss:w/rd%"},
            "rediss://:p%40ss%3Aw%2Frd%25@r.example:6380/2",
        ),
        ({"REDIS_URL": "rediss://agentic@h:1/0", "REDIS_PASSWORD": "pw"}, "rediss://agentic:pw@h:1/0"),
        ({"REDIS_URL": "redis://h:1/0", "REDIS_USERNAME": "ops", "REDIS_PASSWORD": "pw"}, "redis://ops:pw@h:1/0"),
        ({"REDIS_URL": "redis://ops:pw@h:1/0", "REDIS_USERNAME": "ops"}, "redis://ops:pw@h:1/0"),
        ({"REDIS_URL": "redis://:pw@h:1/0", "REDIS_USERNAME": "ops"}, "redis://ops:pw@h:1/0"),
        ({"REDIS_URL": "unix:///run/redis.sock?db=1", "REDIS_PASSWORD": "pw"}, "unix://:pw@/run/redis.sock?db=1"),
        ({"REDIS_URL": "redis://h:1/0"}, "redis://h:1/0"),
    ],
)
def test_redis_username_and_password_are_merged_into_redis_url(env: dict[str, str], url: str) -> None:
    settings = Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, **env})
    assert settings.redis_url == url
    if "REDIS_PASSWORD" in env:  # redis-py reads back the password as given, whatever its characters
        assert redis.connection.parse_url(url)["password"] == env["REDIS_PASSWORD"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_URL": "redis://:inurl@h:1/0", "REDIS_PASSWORD": "hunter2"}, "REDIS_URL already holds a password"),
        ({"REDIS_URL": "redis://h:1/0?password=inurl", "REDIS_PASSWORD": "hunter2"}, "REDIS_URL already holds"),
        ({"REDIS_URL": "redis://a:inurl@h:1/0", "REDIS_USERNAME": "b"}, "name different users"),
        ({"REDIS_USERNAME": "ops"}, "REDIS_USERNAME needs a password: set REDIS_PASSWORD_FILE"),
        ({"REDIS_URL": "http://:inurl@h:1/0"}, "REDIS_URL must start with redis://, rediss:// \\(TLS\\) or unix://"),
        ({"REDIS_TLS_CA_FILE": __file__}, "REDIS_TLS_CA_FILE only applies to TLS, but REDIS_URL is not rediss://"),
        ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_CA_FILE": "no/such/ca.pem"}, "REDIS_TLS_CA_FILE names no/such"),
        ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_KEY_FILE": __file__}, "REDIS_TLS_KEY_FILE needs REDIS_TLS_CERT"),
        ({"REDIS_URL": "rediss://h:1/0", "REDIS_TLS_VERIFY": "optional"}, "REDIS_TLS_VERIFY must be required or none"),
    ],
)
def test_bad_redis_credentials_or_tls_settings_fail_with_a_clear_message_and_no_password(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message) as failed:
        Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, **env})
    assert "hunter2" not in str(failed.value) and "inurl" not in str(failed.value)


def test_tls_options_reach_the_clients_and_the_public_settings_show_paths_but_no_password(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("PEM")
    env = {
        "AGENTIC_SECRET_KEY": SECRET,
        "REDIS_URL": "rediss://agentic@r.example:6380/0",
        "REDIS_PASSWORD": "hunter2",
        "REDIS_TLS_CA_FILE": str(ca),
        "REDIS_TLS_CERT_FILE": str(cert),
        "REDIS_TLS_KEY_FILE": str(key),
    }
    settings = Settings.from_env(env)
    assert settings.redis.client_options() == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": str(ca),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    public = settings.public()
    assert public["redis_url"] == "rediss://agentic:***@r.example:6380/0"
    assert (public["redis_tls_ca_file"], public["redis_tls_verify"]) == (str(ca), "required")
    for text in (json.dumps(public), repr(settings), str(settings.redis)):
        assert "hunter2" not in text
    assert Settings.from_env({"AGENTIC_SECRET_KEY": SECRET}).redis.client_options() == {}


def test_turning_tls_verification_off_works_but_warns_loudly() -> None:
    env = {"AGENTIC_SECRET_KEY": SECRET, "REDIS_URL": "rediss://h:1/0", "REDIS_TLS_VERIFY": "NONE"}
    with pytest.warns(InsecureSettingWarning, match="REDIS_TLS_VERIFY=none: the Redis server's certificate is NOT"):
        settings = Settings.from_env(env)
    assert settings.redis.client_options() == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}
    context = settings.redis.ssl_context()
    assert (context.check_hostname, context.verify_mode) == (False, ssl.CERT_NONE)


@pytest.mark.parametrize(
    ("env", "model"),
    [
        ({}, ""),  # offline: no dense vectors
        ({"OPENAI_API_KEY": "sk-x"}, "text-embedding-3-small"),  # OpenAI itself
        ({"OPENAI_API_KEY": "sk-x", "EMBEDDING_MODEL": ""}, "text-embedding-3-small"),  # empty is unset (compose)
        ({"OPENAI_BASE_URL": "http://vllm:8000/v1"}, ""),  # another server may not embed: name its model
        ({"OPENAI_BASE_URL": "http://vllm:8000/v1", "EMBEDDING_MODEL": " bge-m3 "}, "bge-m3"),
        ({"OPENAI_API_KEY": "sk-x", "EMBEDDING_MODEL": "None"}, ""),  # turned off
    ],
)
def test_the_embedding_model_defaults_to_openais_only_with_openai_itself(env: dict[str, str], model: str) -> None:
    assert Settings.from_env({"AGENTIC_SECRET_KEY": SECRET, **env}).embedding_model == model

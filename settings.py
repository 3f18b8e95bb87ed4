"""All configuration, read from the environment in one place.

Every process (API, worker, events, CLI) builds one frozen `Settings` with `Settings.from_env()`.
A bad value fails at start-up with the variable's name. Secrets come from the environment or from a file named
by the same variable with `_FILE` appended (`REDIS_PASSWORD_FILE`); an error names the variable, never the value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import secrets
import ssl
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent


class SettingsError(ValueError):
    """Raised when an environment variable holds a value we cannot use."""


class InsecureSettingWarning(UserWarning):
    """Raised (as a warning) when a setting turns a protection off, such as REDIS_TLS_VERIFY=none."""


def _int(env: Mapping[str, str], name: str, default: int, low: int = 0, high: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}.") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise SettingsError(f"{name} must be {bound}, got {value}.")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float = 0.0, high: float | None = None) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}.") from None
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"of at least {low}"
        raise SettingsError(f"{name} must be a finite number {bound}, got {raw!r}.")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    found = _list(env, name)
    for net in found:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise SettingsError(f"{name} must list IP addresses or networks (CIDR), got {net!r}.") from None
    return found


def _secret(env: Mapping[str, str], name: str) -> str:
    """`name`'s value, or the contents of the file that `name`_FILE names (trailing newline stripped); '' if
    neither is set. Errors name the variable and the path, never the contents."""
    value = env.get(name, "")
    file_var = f"{name}_FILE"
    path = env.get(file_var, "")
    if value and path:
        raise SettingsError(f"Set {name} or {file_var}, not both.")
    if not path:
        return value
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"{file_var} names {path}, which does not exist.") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{file_var} names {path}, which is not UTF-8 text.") from None
    except OSError as ex:
        raise SettingsError(f"{file_var} names {path}, which cannot be read ({ex.strerror}).") from None
    secret = text.rstrip("\r\n")
    if not secret.strip():
        raise SettingsError(f"{file_var} names {path}, which is empty; put the secret in it.")
    return secret


def _embedding_model(env: Mapping[str, str], openai_key: str, base_url: str) -> str:
    """EMBEDDING_MODEL if set (`none`: off). Unset or empty, OpenAI itself (a key, no OPENAI_BASE_URL) uses
    text-embedding-3-small; another OpenAI-compatible service and the offline mode have none: not every server
    embeds."""
    model = env.get("EMBEDDING_MODEL", "").strip()
    if model.lower() == "none":
        return ""
    return model or ("text-embedding-3-small" if openai_key and not base_url else "")


def _readable_file(env: Mapping[str, str], name: str) -> str:
    """The path in `name` if it is a file this process can read, '' when unset."""
    path = env.get(name, "")
    if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
        raise SettingsError(f"{name} names {path}, which is not a readable file.")
    return path


def _secret_key(env: Mapping[str, str]) -> str:
    """The server secret: AGENTIC_SECRET_KEY or AGENTIC_SECRET_KEY_FILE, else a file made once with 0600
    permissions (AGENTIC_SECRET_FILE, for local runs)."""
    key = _secret(env, "AGENTIC_SECRET_KEY")
    if key:
        source = "AGENTIC_SECRET_KEY_FILE" if env.get("AGENTIC_SECRET_KEY_FILE") else "AGENTIC_SECRET_KEY"
        if len(key) < 32:
            raise SettingsError(f"{source} must hold at least 32 characters.")
        return key
    path = Path(env.get("AGENTIC_SECRET_FILE", str(ROOT / "var" / "secret_key")))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    key = path.read_text().strip()
    if len(key) < 32:
        raise SettingsError(f"The secret in {path} is shorter than 32 characters; delete it to make a new one.")
    return key


def _redis_url(env: Mapping[str, str]) -> str:
    """REDIS_URL with REDIS_USERNAME and REDIS_PASSWORD (or REDIS_PASSWORD_FILE) merged in."""
    url = env.get("REDIS_URL") or RedisConnection.url
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise SettingsError(
            f"REDIS_URL must start with redis://, rediss:// (TLS) or unix://, got {mask_password(url)!r}."
        )
    password, username = _secret(env, "REDIS_PASSWORD"), env.get("REDIS_USERNAME", "")
    query = dict(parse_qsl(parts.query))
    url_password = parts.password or query.get("password")
    url_username = unquote(parts.username or "") or query.get("username", "")
    if password and url_password:
        raise SettingsError(
            "REDIS_URL already holds a password and REDIS_PASSWORD (or REDIS_PASSWORD_FILE) gives one too; "
            "keep only one, preferably REDIS_PASSWORD_FILE, with no password in REDIS_URL."
        )
    if username and url_username and username != url_username:
        raise SettingsError("REDIS_URL and REDIS_USERNAME name different users; keep only one of them.")
    if username and not (password or url_password):
        raise SettingsError("REDIS_USERNAME needs a password: set REDIS_PASSWORD_FILE (or REDIS_PASSWORD).")
    if not password and not username:
        return url
    user = quote(username, safe="") if username else (parts.username or "")
    secret = quote(password, safe="") if password else (parts.password or "")
    credentials = f"{user}:{secret}" if secret else user
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


@dataclass(frozen=True)
class RedisConnection:
    """How every process reaches Redis: REDIS_URL (credentials merged in) and the TLS options of a rediss:// URL."""

    url: str = "redis://127.0.0.1:6379/0"
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_verify: str = "required"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisConnection:
        """Read REDIS_URL, REDIS_USERNAME, REDIS_PASSWORD(_FILE) and REDIS_TLS_*; the settings of `make run` too."""
        connection = cls(
            url=_redis_url(env),
            tls_ca_file=_readable_file(env, "REDIS_TLS_CA_FILE"),
            tls_cert_file=_readable_file(env, "REDIS_TLS_CERT_FILE"),
            tls_key_file=_readable_file(env, "REDIS_TLS_KEY_FILE"),
            tls_verify=(env.get("REDIS_TLS_VERIFY") or cls.tls_verify).lower(),
        )
        connection.check()
        if connection.tls and connection.tls_verify == "none":
            warnings.warn(
                "REDIS_TLS_VERIFY=none: the Redis server's certificate is NOT checked, so anyone on the network "
                "path can pose as Redis and read its password and every job. Set REDIS_TLS_CA_FILE and "
                "REDIS_TLS_VERIFY=required.",
                InsecureSettingWarning,
                stacklevel=2,
            )
        return connection

    def check(self) -> None:
        """Fail on TLS options that would be ignored or cannot work."""
        if self.tls_verify not in ("required", "none"):
            raise SettingsError(f"REDIS_TLS_VERIFY must be required or none, got {self.tls_verify!r}.")
        given = [name for name, value in self._tls_files() if value]
        if given and not self.tls:
            raise SettingsError(
                f"{', '.join(given)} only applies to TLS, but REDIS_URL is not rediss://; "
                "use rediss://host:port/db to connect with TLS, or unset them."
            )
        if self.tls_key_file and not self.tls_cert_file:
            raise SettingsError("REDIS_TLS_KEY_FILE needs REDIS_TLS_CERT_FILE (the client certificate it belongs to).")

    def _tls_files(self) -> tuple[tuple[str, str], ...]:
        return (
            ("REDIS_TLS_CA_FILE", self.tls_ca_file),
            ("REDIS_TLS_CERT_FILE", self.tls_cert_file),
            ("REDIS_TLS_KEY_FILE", self.tls_key_file),
        )

    @property
    def tls(self) -> bool:
        """True for a rediss:// URL."""
        return urlsplit(self.url).scheme == "rediss"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for redis-py (and Celery's `broker_use_ssl`): the TLS options; none for plain Redis."""
        if not self.tls:
            return {}
        options: dict[str, Any] = {
            "ssl_cert_reqs": self.tls_verify,
            "ssl_check_hostname": self.tls_verify == "required",
        }
        for key, value in (
            ("ssl_ca_certs", self.tls_ca_file),
            ("ssl_certfile", self.tls_cert_file),
            ("ssl_keyfile", self.tls_key_file),
        ):
            if value:
                options[key] = value
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context with these options, trusting what redis-py trusts: the system's CAs and
        REDIS_TLS_CA_FILE (for code that opens its own sockets)."""
        context = ssl.create_default_context()
        if self.tls_ca_file:
            context.load_verify_locations(self.tls_ca_file)
        if self.tls_verify == "none":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.tls_cert_file:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file or None)
        return context

    def public(self) -> dict[str, str]:
        """These settings as an operator sees them: the URL with its password masked, the TLS file paths."""
        return {
            "redis_url": mask_password(self.url),
            "redis_tls_ca_file": self.tls_ca_file,
            "redis_tls_cert_file": self.tls_cert_file,
            "redis_tls_key_file": self.tls_key_file,
            "redis_tls_verify": self.tls_verify,
        }

    def __repr__(self) -> str:
        return f"RedisConnection({mask_password(self.url)!r}, tls={self.tls}, verify={self.tls_verify!r})"


@dataclass(frozen=True)
class Settings:
    """Configuration of every process; see the README's configuration table."""

    redis: RedisConnection = field(default_factory=RedisConnection)
    queue: str = "agents"
    port: int = 8000
    secret_key: str = field(default="", repr=False)
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = field(default="", metadata={"url": True})
    default_model: str = "offline"
    llm_timeout_s: float = 60.0
    llm_max_retries: int = 3
    offline_token_delay_ms: int = 15
    max_tokens_default: int = 1024
    max_tokens_limit: int = 8192
    max_query_chars: int = 32_000
    max_body_bytes: int = 256 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024  # POST /documents and /attachments (their own limit, nginx's too)
    # A Qdrant server for document vectors; empty: in-memory Qdrant per process.
    qdrant_url: str = field(default="", metadata={"url": True})
    embedding_model: str = ""  # the provider's embedding model for documents (hybrid search); empty: sparse only
    qdrant_api_key: str = field(default="", repr=False)
    job_ttl_s: int = 7 * 24 * 3600
    stream_ttl_s: int = 24 * 3600
    heartbeat_s: float = 2.0
    lease_s: float = 10.0
    queued_recheck_s: float = 120.0
    soft_time_limit_s: int = 540
    hard_time_limit_s: int = 600
    visibility_timeout_s: int = 900
    sse_heartbeat_s: float = 15.0
    sse_buffer: int = 2048
    token_flush_ms: int = 10
    stream_token_ttl_s: int = 3600
    consumer_max_deliveries: int = 5
    consumer_claim_idle_ms: int = 30_000
    consumer_stall_s: int = 60
    log_level: str = "INFO"
    prices_file: str = str(ROOT / "ops" / "prices.yaml")
    hold_ttl_s: int = 600
    cache_ttl_s: int = 3600  # response cache entries live this long; 0 turns the cache and dedup off
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 64 * 1024 * 1024
    cache_semantic_threshold: float = 0.0  # word-overlap cosine for a similar query's cache entry; 0: exact only
    budget_alert_pct: int = 80
    rate_limit_per_min: int = 600
    cors_origins: tuple[str, ...] = ()
    admin_ip_allowlist: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    auth_failures_per_window: int = 30
    auth_failure_window_s: int = 60
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 5.0
    key_rotation_grace_s: int = 86400
    audit_retention_days: int = 365
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9540
    otlp_endpoint: str = field(default="", metadata={"url": True})
    service_name: str = "agentic"

    @property
    def redis_url(self) -> str:
        """REDIS_URL with the credentials of REDIS_USERNAME and REDIS_PASSWORD(_FILE) merged in."""
        return self.redis.url

    @property
    def provider_mode(self) -> str:
        """'openai' when an API key or base URL is configured, else 'offline'."""
        return "openai" if (self.openai_api_key or self.openai_base_url) else "offline"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `env` (default: os.environ)."""
        env = os.environ if env is None else env
        openai_key = _secret(env, "OPENAI_API_KEY")
        base_url = env.get("OPENAI_BASE_URL", "")
        default_model = env.get("DEFAULT_MODEL") or ("gpt-4o-mini" if (openai_key or base_url) else "offline")
        settings = cls(
            redis=RedisConnection.from_env(env),
            queue=env.get("AGENT_QUEUE", cls.queue),
            port=_int(env, "PORT", cls.port, 1, 65535),
            secret_key=_secret_key(env),
            openai_api_key=openai_key,
            openai_base_url=base_url,
            default_model=default_model,
            llm_timeout_s=_float(env, "LLM_TIMEOUT_S", cls.llm_timeout_s, 0.1),
            llm_max_retries=_int(env, "LLM_MAX_RETRIES", cls.llm_max_retries, 0, 10),
            offline_token_delay_ms=_int(env, "OFFLINE_TOKEN_DELAY_MS", cls.offline_token_delay_ms, 0, 10_000),
            max_tokens_default=_int(env, "MAX_TOKENS_DEFAULT", cls.max_tokens_default, 1),
            max_tokens_limit=_int(env, "MAX_TOKENS_LIMIT", cls.max_tokens_limit, 1),
            max_query_chars=_int(env, "MAX_QUERY_CHARS", cls.max_query_chars, 1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_upload_bytes=_int(env, "MAX_UPLOAD_BYTES", cls.max_upload_bytes, 1024, 512 * 1024 * 1024),
            qdrant_url=env.get("QDRANT_URL", ""),
            embedding_model=_embedding_model(env, openai_key, base_url),
            qdrant_api_key=_secret(env, "QDRANT_API_KEY"),
            job_ttl_s=_int(env, "JOB_TTL_S", cls.job_ttl_s, 60),
            stream_ttl_s=_int(env, "STREAM_TTL_S", cls.stream_ttl_s, 1),
            heartbeat_s=_float(env, "JOB_HEARTBEAT_S", cls.heartbeat_s, 0.1),
            lease_s=_float(env, "JOB_LEASE_S", cls.lease_s, 0.5),
            queued_recheck_s=_float(env, "QUEUED_RECHECK_S", cls.queued_recheck_s, 1.0),
            soft_time_limit_s=_int(env, "TASK_SOFT_TIME_LIMIT_S", cls.soft_time_limit_s, 1),
            hard_time_limit_s=_int(env, "TASK_HARD_TIME_LIMIT_S", cls.hard_time_limit_s, 1),
            visibility_timeout_s=_int(env, "BROKER_VISIBILITY_TIMEOUT_S", cls.visibility_timeout_s, 1),
            sse_heartbeat_s=_float(env, "SSE_HEARTBEAT_S", cls.sse_heartbeat_s, 0.1),
            sse_buffer=_int(env, "SSE_BUFFER", cls.sse_buffer, 16),
            token_flush_ms=_int(env, "TOKEN_FLUSH_MS", cls.token_flush_ms, 0, 50),
            stream_token_ttl_s=_int(env, "STREAM_TOKEN_TTL_S", cls.stream_token_ttl_s, 10),
            consumer_max_deliveries=_int(env, "CONSUMER_MAX_DELIVERIES", cls.consumer_max_deliveries, 1),
            consumer_claim_idle_ms=_int(env, "CONSUMER_CLAIM_IDLE_MS", cls.consumer_claim_idle_ms, 100),
            consumer_stall_s=_int(env, "CONSUMER_STALL_S", cls.consumer_stall_s, 1),
            log_level=env.get("LOG_LEVEL", cls.log_level).upper(),
            prices_file=env.get("PRICES_FILE") or cls.prices_file,
            hold_ttl_s=_int(env, "HOLD_TTL_S", cls.hold_ttl_s, 10),
            cache_ttl_s=_int(env, "CACHE_TTL_S", cls.cache_ttl_s, 0),
            cache_max_entries=_int(env, "CACHE_MAX_ENTRIES", cls.cache_max_entries, 1),
            cache_max_bytes=_int(env, "CACHE_MAX_BYTES", cls.cache_max_bytes, 1024),
            cache_semantic_threshold=_float(env, "CACHE_SEMANTIC_THRESHOLD", cls.cache_semantic_threshold, 0.0, 1.0),
            budget_alert_pct=_int(env, "BUDGET_ALERT_PCT", cls.budget_alert_pct, 1, 100),
            rate_limit_per_min=_int(env, "RATE_LIMIT_PER_MIN", cls.rate_limit_per_min, 0),
            cors_origins=_list(env, "CORS_ORIGINS"),
            admin_ip_allowlist=_networks(env, "ADMIN_IP_ALLOWLIST"),
            trusted_proxies=_networks(env, "TRUSTED_PROXIES"),
            auth_failures_per_window=_int(env, "AUTH_FAILURES_PER_WINDOW", cls.auth_failures_per_window, 1),
            auth_failure_window_s=_int(env, "AUTH_FAILURE_WINDOW_S", cls.auth_failure_window_s, 1, 3600),
            redis_max_connections=_int(env, "REDIS_MAX_CONNECTIONS", cls.redis_max_connections, 2, 10_000),
            redis_pool_timeout_s=_float(env, "REDIS_POOL_TIMEOUT_S", cls.redis_pool_timeout_s, 0.01),
            key_rotation_grace_s=_int(env, "KEY_ROTATION_GRACE_S", cls.key_rotation_grace_s, 0),
            audit_retention_days=_int(env, "AUDIT_RETENTION_DAYS", cls.audit_retention_days, 1),
            worker_metrics_host=env.get("WORKER_METRICS_HOST") or cls.worker_metrics_host,
            worker_metrics_port=_int(env, "WORKER_METRICS_PORT", cls.worker_metrics_port, 0, 65535),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
            service_name=env.get("OTEL_SERVICE_NAME") or cls.service_name,
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Fail on combinations that would break crash recovery or budgets."""
        if self.soft_time_limit_s >= self.hard_time_limit_s:
            raise SettingsError("TASK_SOFT_TIME_LIMIT_S must be below TASK_HARD_TIME_LIMIT_S.")
        if self.visibility_timeout_s <= self.hard_time_limit_s:
            raise SettingsError(
                "BROKER_VISIBILITY_TIMEOUT_S must be above TASK_HARD_TIME_LIMIT_S, "
                "or a long job would be delivered twice while it still runs."
            )
        if self.lease_s <= 2 * self.heartbeat_s:
            raise SettingsError("JOB_LEASE_S must be more than twice JOB_HEARTBEAT_S.")
        if self.max_tokens_default > self.max_tokens_limit:
            raise SettingsError("MAX_TOKENS_DEFAULT must not exceed MAX_TOKENS_LIMIT.")
        if not Path(self.prices_file).is_file():
            raise SettingsError(f"PRICES_FILE names {self.prices_file}, which is not a file.")
        if self.log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR.")

    def _shown(self) -> dict[str, object]:
        """Every field that may be shown (repr=True), with the credentials of URL-valued fields masked."""
        return {
            f.name: mask_password(getattr(self, f.name)) if f.metadata.get("url") else getattr(self, f.name)
            for f in fields(self)
            if f.repr
        }

    def public(self) -> dict[str, object]:
        """The settings that matter to an operator, without secrets (passwords in every URL are masked)."""
        shown = {name: value for name, value in self._shown().items() if name != "redis"}
        shown.update(self.redis.public())
        return shown

    def __repr__(self) -> str:
        # Written out because the dataclass repr would show a password in OPENAI_BASE_URL, QDRANT_URL, ...
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in self._shown().items())})"


def _is_secret(query_key: str) -> bool:
    """Whether a URL query parameter of this name carries a credential (password=, api_key=, token=, ...)."""
    key = query_key.lower().replace("-", "_")
    return key in {"password", "passwd", "token", "access_token", "secret", "key"} or key.endswith(
        ("_key", "_token", "_secret", "_password")
    )


def mask_password(url: str) -> str:
    """`url` with any credential (its password, a password= or api_key= query parameter) replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{host}")
    query = [(k, "***" if _is_secret(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))

"""Checks before `make run` starts anything: the lock on VAR_DIR, free ports, and whether a Redis answers.

Standard library only, like the rest of ops/: the Redis check speaks RESP over a socket (AUTH, PING), wrapped
in TLS for rediss://. The one import of ours is settings.py (itself standard library only, and installed in the
venv that runs ops/), so that the Redis credentials and TLS files are read exactly as every process reads them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from settings import RedisConnection, SettingsError


class StartError(Exception):
    """Raised when the stack cannot start: a bad setting, a busy port, another run on VAR_DIR, no Redis."""


@dataclass(frozen=True)
class RedisAddress:
    """Where a REDIS_URL points: host and port or a unix socket, credentials, TLS."""

    host: str
    port: int
    path: str
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    shown: str
    connection: RedisConnection | None = None  # the TLS options; None: verify against the system's CAs

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RedisAddress:
        """Where REDIS_URL points, with REDIS_USERNAME, REDIS_PASSWORD(_FILE) and REDIS_TLS_* as the processes
        read them (settings.py); a bad one is a StartError naming the variable."""
        try:
            connection = RedisConnection.from_env(env)
        except SettingsError as ex:
            raise StartError(str(ex)) from None
        return cls.parse(connection.url, connection)

    @classmethod
    def parse(cls, url: str, connection: RedisConnection | None = None) -> RedisAddress:
        """Parse redis://[user:password@]host:port/db (also rediss:// and unix://path?password=...)."""
        parts = urlsplit(url)
        try:
            port = parts.port or 6379
        except ValueError as ex:
            raise StartError("REDIS_URL has a port that is not a number from 1 to 65535.") from ex
        if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
            raise StartError("REDIS_URL must look like redis://[user:password@]host:port/db (or rediss://, unix://).")
        query = dict(parse_qsl(parts.query))
        password = unquote(parts.password) if parts.password is not None else query.get("password")
        username = unquote(parts.username) if parts.username else query.get("username")
        # The URL as printed: the password masked wherever it was given.
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        shown_query = "&".join(f"{k}={'***' if k == 'password' else v}" for k, v in parse_qsl(parts.query))
        shown = f"{parts.scheme}://{netloc}{parts.path}" + (f"?{shown_query}" if shown_query else "")
        return cls(
            parts.hostname or "",
            port,
            parts.path if parts.scheme == "unix" else "",
            username,
            password,
            parts.scheme == "rediss",
            shown,
            connection,
        )


def _call(sock: socket.socket, *args: str) -> str:
    """Send one command in RESP and return the first line of the reply (`+PONG`, `-NOAUTH ...`)."""
    command = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    sock.sendall(command.encode())
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("Redis closed the connection")
        reply += chunk
    return reply.decode(errors="replace").strip()


def _connect(address: RedisAddress, timeout: float) -> socket.socket:
    if address.path:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        try:
            sock.connect(address.path)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    if address.tls:
        context = address.connection.ssl_context() if address.connection else ssl.create_default_context()
        try:
            sock = context.wrap_socket(sock, server_hostname=address.host)
        except ssl.SSLCertVerificationError as ex:
            sock.close()
            raise StartError(
                f"Redis at {address.shown} has a TLS certificate we do not trust ({ex.verify_message}). "
                "Point REDIS_TLS_CA_FILE at the CA that signed it, and name the host as the certificate does."
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            sock.close()
            raise  # closed mid-handshake: perhaps restarting; an OSError, so ping says "not yet"
        except ssl.SSLError as ex:
            sock.close()
            raise StartError(
                f"The TLS handshake with Redis at {address.shown} failed ({ex.reason or ex.strerror}). Is that port "
                "TLS (rediss://; redis:// for a plain one)? For mutual TLS set REDIS_TLS_CERT_FILE and _KEY_FILE."
            ) from None
        except BaseException:
            sock.close()
            raise
    return sock


def ping(address: RedisAddress, timeout: float = 1.0) -> bool:
    """True when Redis answers PING; False when it does not (yet).

    Raises StartError when it refuses our credentials or its TLS certificate is not trusted, which waiting will
    not mend. Its replies are shown by their error code only, so nothing of a password can reach the terminal.
    """
    try:
        with _connect(address, timeout) as sock:
            if address.password is not None:
                reply = _call(sock, "AUTH", *filter(None, [address.username, address.password]))
                if reply.startswith("-"):
                    code = reply[1:].partition(" ")[0]
                    raise StartError(
                        f"Redis at {address.shown} refused our credentials ({code}); check REDIS_USERNAME and "
                        "REDIS_PASSWORD_FILE (or the credentials in REDIS_URL)."
                    )
            reply = _call(sock, "PING")
    except OSError:
        return False
    if reply.startswith(("-NOAUTH", "-WRONGPASS")):
        raise StartError(
            f"Redis at {address.shown} wants a password: put it in a file named by REDIS_PASSWORD_FILE (with "
            "REDIS_USERNAME for an ACL user), or in REDIS_URL (redis://:PASSWORD@host:port/0)."
        )
    return reply == "+PONG"  # -LOADING (reading its AOF) and the like: not yet


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on host:port right now, or None when it could."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as ex:
        return f"not an address of this machine ({ex.strerror})"
    with socket.socket(family, kind, proto) as sock:
        # As the servers do: a connection of an earlier run in TIME_WAIT does not count, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as ex:
            return "already in use" if ex.errno == errno.EADDRINUSE else ex.strerror
    return None


def check_ports(listeners: list[tuple[str, str, int]]) -> None:
    """Raise StartError naming every port of `listeners` (variable, host, port) that is taken or asked for twice."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for variable, host, port in listeners:
        if port in seen:
            problems.append(f"{variable} and {seen[port]} are both {port}; give each its own port.")
            continue
        seen[port] = variable
        why = port_problem(host, port)
        if why and variable == "REDIS_PORT":
            problems.append(
                f"port {port} (REDIS_PORT) on 127.0.0.1 is {why}, perhaps by another make run's Redis. "
                f"make run never shares a Redis silently: pick a free port (REDIS_PORT={port + 1} make "
                f"run), or set REDIS_URL=redis://127.0.0.1:{port}/0 to use the Redis there on purpose."
            )
        elif why:
            problems.append(
                f"port {port} ({variable}) on {host} is {why}; set {variable} to a free port "
                f"(e.g. {variable}={port + 1} make run)."
            )
    if problems:
        raise StartError("\n".join(problems))


def hold_lock(var: Path) -> int:
    """Lock $VAR_DIR/run.lock for as long as this process lives (the kernel drops it when we die)."""
    fd = os.open(var / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartError(
            f"another make run (pid {other}) is using VAR_DIR={var}; stop it first, or give this "
            "one its own VAR_DIR and ports."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd

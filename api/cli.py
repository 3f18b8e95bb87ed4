"""`agentic`: manage users and API keys from the shell (how the first admin key is made).

    agentic users create alice --role user     # prints alice's new key, once
    agentic users list
    agentic keys create alice [--expires-days 30] [--name laptop]
    agentic keys list alice
    agentic keys revoke alice KEY_ID
    agentic prometheus-config --out var/prometheus --api 127.0.0.1:8000 --workers 127.0.0.1:9540 \
        --flower 127.0.0.1:5555 --self 127.0.0.1:9090   # Flower's login from FLOWER_BASIC_AUTH=user:password
        (or --flower-password-file FILE; never a password argument, which `ps` would show)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from api import promconfig
from api.audit import AuditLog
from api.permissions import Role
from api.users import UserError, UserStore
from events.store.clients import access_problem, async_client
from settings import Settings, SettingsError


def parser() -> argparse.ArgumentParser:
    """The command line."""
    top = argparse.ArgumentParser(prog="agentic", description="Manage users and API keys of the agentic backend.")
    nouns = top.add_subparsers(dest="noun", required=True)
    users = nouns.add_parser("users", help="create and list users").add_subparsers(dest="verb", required=True)
    create = users.add_parser("create", help="create a user and print a first API key")
    create.add_argument("user_id")
    create.add_argument("--role", default=Role.USER.value, choices=[r.value for r in Role])
    create.add_argument("--expires-days", type=int, default=None, help="the key's lifetime (default: no expiry)")
    users.add_parser("list", help="list users")
    keys = nouns.add_parser("keys", help="create, list and revoke keys").add_subparsers(dest="verb", required=True)
    new = keys.add_parser("create", help="create another key for a user")
    new.add_argument("user_id")
    new.add_argument("--expires-days", type=int, default=None)
    new.add_argument("--name", default="")
    listing = keys.add_parser("list", help="list a user's keys (never the secrets)")
    listing.add_argument("user_id")
    revoke = keys.add_parser("revoke", help="revoke a key; effective on the next request")
    revoke.add_argument("user_id")
    revoke.add_argument("key_id")
    prom = nouns.add_parser("prometheus-config", help="write a Prometheus config, rules and scrape secrets")
    prom.add_argument("--out", required=True, type=Path, help="directory to write (e.g. var/prometheus)")
    for job in ("api", "workers", "flower"):
        prom.add_argument(f"--{job}", action="append", default=[], metavar="HOST:PORT", help=f"a {job} target")
    prom.add_argument(
        "--self",
        dest="prometheus",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="where Prometheus itself listens",
    )
    prom.add_argument(
        "--flower-user", default=None, help="the user of Flower's basic auth (default: FLOWER_BASIC_AUTH's, or admin)"
    )
    prom.add_argument(
        "--flower-password-file",
        type=Path,
        default=None,
        help="a file holding Flower's password (default: the password of FLOWER_BASIC_AUTH=user:password)",
    )
    # Deprecated, kept for old scripts: any user on the host sees it in `ps`.
    prom.add_argument("--interval", default=None, help="scrape and evaluation interval (default: the file's)")
    return top


def flower_login(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, str]:
    """Flower's user and password for prometheus-config: --flower-password-file, else FLOWER_BASIC_AUTH."""
    env_user, _, env_password = env.get("FLOWER_BASIC_AUTH", "").partition(":")
    user = args.flower_user or env_user or "admin"
    if args.flower_password_file is not None:
        try:
            return user, args.flower_password_file.read_text().rstrip("\n")
        except OSError as ex:
            raise UserError(f"Cannot read --flower-password-file {args.flower_password_file}: {ex.strerror}.") from ex
    return user, env_password


async def run(args: argparse.Namespace, store: UserStore, audit: AuditLog) -> Any:
    """Carry out one command (changes are audited, actor 'cli'); returns what to print."""
    if args.noun == "prometheus-config":
        targets = {job: getattr(args, job) for job in promconfig.JOBS}
        flower_user, flower_password = flower_login(args, os.environ)
        path = await promconfig.write(
            args.out,
            store,
            targets,
            flower_user=flower_user,
            flower_password=flower_password,
            interval=args.interval,
        )
        return {"config": str(path), "targets": {job: hosts for job, hosts in targets.items() if hosts}}
    expires = args.expires_days * 86400 if getattr(args, "expires_days", None) else None
    if args.noun == "users" and args.verb == "create":
        user = await store.create_user(args.user_id, args.role)
        key, info = await store.create_key(args.user_id, expires_in_s=expires, name="first")
        await audit.record("cli", "user.create", resource=args.user_id, details={"role": user["role"]})
        await audit.record("cli", "key.create", resource=args.user_id, details={"key_id": info["key_id"]})
        return {"user": user, "api_key": key, "key": info}
    if args.noun == "users":
        return await store.list_users()
    if args.verb == "create":
        key, info = await store.create_key(args.user_id, expires_in_s=expires, name=args.name)
        await audit.record("cli", "key.create", resource=args.user_id, details={"key_id": info["key_id"]})
        return {"api_key": key, "key": info}
    if args.verb == "list":
        return await store.list_keys(args.user_id)
    if not await store.revoke_key(args.user_id, args.key_id):
        raise UserError(f"User {args.user_id!r} has no key {args.key_id!r}.")
    await audit.record("cli", "key.revoke", resource=args.user_id, details={"key_id": args.key_id})
    return {"revoked": args.key_id}


async def _main(args: argparse.Namespace, settings: Settings) -> Any:
    client = async_client(settings.redis, socket_timeout=5, max_connections=8, pool_timeout=5)
    try:
        return await run(args, UserStore(client, settings.secret_key), AuditLog(client))
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `agentic` console script."""
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        result = asyncio.run(_main(args, settings))
    except (UserError, SettingsError) as ex:
        print(f"agentic: {ex}", file=sys.stderr)
        return 1
    except redis.RedisError as ex:
        # Over TLS 1.3 a Redis refusing a client without a certificate may just close: that looks like an outage.
        tls = ", its TLS port and, if Redis asks for one, REDIS_TLS_CERT_FILE" if settings.redis.tls else ""
        unreachable = f"cannot reach Redis ({type(ex).__name__}); is it running? Check REDIS_URL{tls}."
        print(f"agentic: {access_problem(ex) or unreachable}", file=sys.stderr)
        return 2
    if isinstance(result, dict) and "api_key" in result:
        print("Store this key now; it is not shown again.", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

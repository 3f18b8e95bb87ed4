"""A runnable Prometheus setup for one deployment: ops/prometheus/prometheus.yml with its targets, the alert
rules beside it, and the scrape secrets (`agentic prometheus-config`, which `make run` calls).

The scrape key belongs to a `readonly` user named `prometheus` (it has `metrics:read` and can change nothing).
A key already in the output directory is kept while it still authenticates, so restarts do not pile up keys.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from api.permissions import Permission, Role, allowed
from api.users import UnknownUserError, UserError, UserStore
from settings import ROOT

TEMPLATE = ROOT / "ops" / "prometheus" / "prometheus.yml"
SCRAPER = "prometheus"
JOBS = ("api", "workers", "flower", "prometheus")


def with_targets(
    template: Mapping[str, Any], targets: Mapping[str, list[str]], interval: str | None = None
) -> dict[str, Any]:
    """The template with each job's static targets replaced (a job without targets is dropped)."""
    unknown = set(targets) - set(JOBS)
    if unknown:
        raise ValueError(f"Unknown scrape jobs {sorted(unknown)}; use {', '.join(JOBS)}.")
    config = copy.deepcopy(dict(template))
    if interval:
        config["global"].update(scrape_interval=interval, evaluation_interval=interval, scrape_timeout=interval)
    jobs = []
    for job in config["scrape_configs"]:
        if targets.get(job["job_name"]):
            job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
            jobs.append(job)
    config["scrape_configs"] = jobs
    return config


async def scrape_key(store: UserStore, existing: str | None) -> str:
    """`existing` if it still authenticates with metrics:read, else a new key of the `prometheus` user."""
    if existing:
        principal = await store.authenticate(existing)
        if principal is not None and allowed(principal.role, Permission.METRICS_READ):
            return existing
    try:
        user = await store.get_user(SCRAPER)  # made by an earlier run: give it another key
    except UnknownUserError:
        user = await store.create_user(SCRAPER, Role.READONLY.value)
    if user["role"] != Role.READONLY.value:
        raise UserError(
            f"User {SCRAPER!r} exists with role {user['role']!r}; the scrape key must come from a "
            "readonly user. Rename that user or remove its role first."
        )
    key, _ = await store.create_key(SCRAPER, name="prometheus scrape")
    return key


async def write(
    out: Path,
    store: UserStore,
    targets: Mapping[str, list[str]],
    *,
    flower_user: str = "admin",
    flower_password: str = "",
    interval: str | None = None,
) -> Path:
    """Write prometheus.yml, its rule files and secrets/ under `out`; returns the config's path."""
    template = yaml.safe_load(TEMPLATE.read_text())
    config = with_targets(template, targets, interval)
    for job in config["scrape_configs"]:
        if job["job_name"] == "flower":
            job["basic_auth"]["username"] = flower_user
    secrets = out / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    secrets.chmod(0o700)
    key_file = secrets / "api_key"
    old = key_file.read_text().strip() if key_file.exists() else None
    _secret(key_file, await scrape_key(store, old))
    if targets.get("flower"):
        _secret(secrets / "flower_password", flower_password)
    for rules in config.get("rule_files", []):
        shutil.copy(TEMPLATE.parent / rules, out / rules)
    path = out / "prometheus.yml"
    path.write_text(
        "# Written by `agentic prometheus-config` from ops/prometheus/prometheus.yml.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return path


def _secret(path: Path, value: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(value + "\n")

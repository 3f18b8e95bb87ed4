"""Roles and what each may do. Every route names one permission; this table decides."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A user's role."""

    ADMIN = "admin"
    USER = "user"
    READONLY = "readonly"


class Permission(StrEnum):
    """One thing a request may do."""

    JOBS_SUBMIT = "jobs:submit"
    JOBS_READ = "jobs:read"
    JOBS_CANCEL = "jobs:cancel"
    JOBS_READ_ALL = "jobs:read_all"
    COSTS_READ = "costs:read"
    COSTS_ADMIN = "costs:admin"
    CACHE_READ = "cache:read"
    METRICS_READ = "metrics:read"
    METRICS_WRITE = "metrics:write"
    DOCS_UPLOAD = "docs:upload"
    DOCS_READ = "docs:read"
    DOCS_READ_ALL = "docs:read_all"
    KEYS_OWN = "keys:own"
    SECURITY_READ = "security:read"
    AUDIT_READ = "audit:read"
    USERS_ADMIN = "users:admin"
    # The seed's name for submitting to an agent: an alias (the same member), so it is neither listed twice nor
    # checked apart from JOBS_SUBMIT.
    QUERY_AGENT = "jobs:submit"


# The seed's table: admins everything; users query agents, view costs, cache and metrics, upload documents
# (and manage their own keys); read-only users view costs, cache and metrics and modify nothing.
_VIEW = {
    Permission.JOBS_READ,
    Permission.COSTS_READ,
    Permission.CACHE_READ,
    Permission.METRICS_READ,
    Permission.SECURITY_READ,
    Permission.DOCS_READ,
}
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset(
        _VIEW | {Permission.JOBS_SUBMIT, Permission.JOBS_CANCEL, Permission.DOCS_UPLOAD, Permission.KEYS_OWN}
    ),
    Role.READONLY: frozenset(_VIEW),
}
DESCRIPTIONS = {
    Permission.JOBS_SUBMIT: "submit agent jobs (query agents)",
    Permission.JOBS_READ: "read your jobs and streams",
    Permission.JOBS_CANCEL: "cancel your jobs",
    Permission.JOBS_READ_ALL: "read every user's jobs",
    Permission.COSTS_READ: "view your costs, budgets and forecasts",
    Permission.COSTS_ADMIN: "set budgets, track usage, view anyone's costs",
    Permission.CACHE_READ: "view cache statistics",
    Permission.METRICS_READ: "view metrics",
    Permission.METRICS_WRITE: "record custom metrics",
    Permission.DOCS_UPLOAD: "upload and delete your documents for RAG",
    Permission.DOCS_READ: "list and read your documents",
    Permission.DOCS_READ_ALL: "list, read and delete every user's documents",
    Permission.KEYS_OWN: "create, rotate and revoke your keys",
    Permission.SECURITY_READ: "see your profile and the permission table",
    Permission.AUDIT_READ: "read the audit log",
    Permission.USERS_ADMIN: "manage users, roles and anyone's keys",
}


def allowed(role: str, permission: Permission) -> bool:
    """True when `role` grants `permission`; an unknown role grants nothing."""
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


PUBLIC = "public"  # routes anyone may call: health, liveness, readiness

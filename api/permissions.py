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
    USERS_ADMIN = "users:admin"


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset({Permission.JOBS_SUBMIT, Permission.JOBS_READ, Permission.JOBS_CANCEL,
                          Permission.COSTS_READ}),
    Role.READONLY: frozenset({Permission.JOBS_READ, Permission.COSTS_READ}),
}


def allowed(role: str, permission: Permission) -> bool:
    """True when `role` grants `permission`; an unknown role grants nothing."""
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


PUBLIC = "public"  # routes anyone may call: health, liveness, readiness

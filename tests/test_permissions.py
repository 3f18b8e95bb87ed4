"""The permission table (api/permissions.py): each role grants exactly its permissions, unknown roles none. Pure:
no server (test_security.py checks the same table over HTTP)."""

from __future__ import annotations

import pytest

from api.permissions import Permission, allowed

GRANTS = {
    "admin": set(Permission),
    "user": {
        Permission.JOBS_SUBMIT,
        Permission.JOBS_READ,
        Permission.JOBS_CANCEL,
        Permission.COSTS_READ,
        Permission.CACHE_READ,
        Permission.METRICS_READ,
        Permission.DOCS_UPLOAD,
        Permission.DOCS_READ,
        Permission.KEYS_OWN,
        Permission.SECURITY_READ,
    },
    "readonly": {
        Permission.JOBS_READ,
        Permission.COSTS_READ,
        Permission.CACHE_READ,
        Permission.METRICS_READ,
        Permission.SECURITY_READ,
        Permission.DOCS_READ,
    },
    "superuser": set(),
    "": set(),
}


@pytest.mark.parametrize("role", list(GRANTS))
@pytest.mark.parametrize("permission", list(Permission))
def test_each_role_grants_exactly_its_permissions(role: str, permission: Permission) -> None:
    assert allowed(role, permission) is (permission in GRANTS[role])

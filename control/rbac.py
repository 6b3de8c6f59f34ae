"""Roles and permissions: the one matrix every API route is checked against."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum


class Permission(StrEnum):
    CAMERAS_READ = "cameras:read"
    CAMERAS_WRITE = "cameras:write"
    STREAMS_READ = "streams:read"
    RECORDINGS_READ = "recordings:read"
    RECORDINGS_DELETE = "recordings:delete"
    RECORDINGS_DOWNLOAD = "recordings:download"
    USERS_MANAGE = "users:manage"
    TOKENS_MANAGE = "tokens:manage"
    AUDIT_READ = "audit:read"
    SYSTEM_READ = "system:read"


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    # Service accounts: no password login, they act only through API tokens.
    API_ONLY = "api_only"


P = Permission

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.OPERATOR: frozenset(
        {
            P.CAMERAS_READ,
            P.CAMERAS_WRITE,
            P.STREAMS_READ,
            P.RECORDINGS_READ,
            P.RECORDINGS_DELETE,
            P.RECORDINGS_DOWNLOAD,
            P.TOKENS_MANAGE,
            P.SYSTEM_READ,
        }
    ),
    Role.VIEWER: frozenset({P.CAMERAS_READ, P.STREAMS_READ, P.RECORDINGS_READ, P.RECORDINGS_DOWNLOAD}),
    Role.API_ONLY: frozenset(
        {P.CAMERAS_READ, P.CAMERAS_WRITE, P.STREAMS_READ, P.RECORDINGS_READ, P.RECORDINGS_DOWNLOAD, P.SYSTEM_READ}
    ),
}

# Roles whose users may log in with a password.
INTERACTIVE_ROLES = frozenset({Role.ADMIN, Role.OPERATOR, Role.VIEWER})


def permissions_for(role: str, scopes: Iterable[str] | None = None) -> frozenset[Permission]:
    """What a user of `role` may do; an API token narrows it to its scopes."""
    try:
        granted = ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset()
    if scopes is None:
        return granted
    wanted = set()
    for scope in scopes:
        try:
            wanted.add(Permission(scope))
        except ValueError:
            continue
    return granted & frozenset(wanted)

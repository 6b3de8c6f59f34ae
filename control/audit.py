"""The audit trail: who did what, from where, to which resource, and whether it worked."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control.store import AuditLog, Store
from control.store.types import utcnow

log = logging.getLogger("control.audit")


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: int | None
    name: str
    ip: str


SYSTEM = Actor(None, "system", "")


def _entry(
    action: str,
    actor: Actor,
    resource_type: str,
    resource_id: str,
    success: bool,
    details: dict[str, Any] | None,
) -> AuditLog:
    log.info(
        "event=audit action=%s actor=%s ip=%s resource=%s/%s success=%s",
        action,
        actor.name or "-",
        actor.ip or "-",
        resource_type or "-",
        resource_id or "-",
        success,
    )
    return AuditLog(
        at=utcnow(),
        user_id=actor.user_id,
        actor=actor.name[:64],
        ip=actor.ip[:64],
        action=action,
        resource_type=resource_type,
        resource_id=resource_id[:64],
        success=success,
        details=details,
    )


class Audit:
    def __init__(self, store: Store) -> None:
        self._store = store

    def add(
        self,
        session: AsyncSession,
        action: str,
        actor: Actor,
        resource_type: str = "",
        resource_id: str = "",
        *,
        success: bool = True,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record within the caller's transaction: the change and its trail commit together."""
        session.add(_entry(action, actor, resource_type, resource_id, success, details))

    async def record(
        self,
        action: str,
        actor: Actor,
        resource_type: str = "",
        resource_id: str = "",
        *,
        success: bool = True,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Record in a transaction of its own; a failure is logged, never raised."""
        try:
            async with self._store.sessions.begin() as session:
                session.add(_entry(action, actor, resource_type, resource_id, success, details))
        except Exception:
            log.exception("event=audit_write_failed action=%s", action)

"""The audit log, for admins."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from control.api.base import RouteTable, send_plain
from control.api.paging import read_page
from control.api.schemas import AuditList, AuditOut, AuditQuery
from control.api.validated import query
from control.rbac import Permission
from control.services import services
from control.store import AuditLog

routes = RouteTable("audit")
_NAMES = tuple(AuditOut.model_fields)
_COLUMNS = tuple(AuditLog.__table__.columns[name] for name in _NAMES)


@routes.route(
    "GET",
    "/audit-logs",
    permission=Permission.AUDIT_READ,
    summary="Audit entries, newest first (filters: user_id, actor, action or prefix*, resource, success, since, until)",
    query=AuditQuery,
    response=AuditList,
)
async def list_audit(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    q = query(request, AuditQuery)
    conditions: list[Any] = []
    if q.user_id is not None:
        conditions.append(AuditLog.user_id == q.user_id)
    if q.actor:
        conditions.append(AuditLog.actor == q.actor.lower())
    if q.action:
        if q.action.endswith("*"):
            conditions.append(AuditLog.action.startswith(q.action[:-1], autoescape=True))
        else:
            conditions.append(AuditLog.action == q.action)
    if q.resource_type:
        conditions.append(AuditLog.resource_type == q.resource_type)
    if q.resource_id:
        conditions.append(AuditLog.resource_id == q.resource_id)
    if q.success is not None:
        conditions.append(AuditLog.success.is_(q.success))
    if q.since is not None:
        conditions.append(AuditLog.at >= q.since)
    if q.until is not None:
        conditions.append(AuditLog.at < q.until)
    statement = select(*_COLUMNS).order_by(AuditLog.at.desc(), AuditLog.id.desc())
    rows, total = await svc.store.read(
        lambda session: read_page(session, statement, AuditLog.__table__, conditions, q.limit, q.offset)
    )
    # The database's values were checked when they were written: the page is `AuditList`'s fields as plain values,
    # without building (or validating) a model per entry.
    items = [dict(zip(_NAMES, row, strict=False)) for row in rows]
    return send_plain({"items": items, "total": total, "limit": q.limit, "offset": q.offset})

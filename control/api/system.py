"""Server facts for monitoring consoles."""

from __future__ import annotations

import time
from importlib import metadata

from aiohttp import web
from sqlalchemy import func, select

from control.api.base import RouteTable, send
from control.api.schemas import SystemOut
from control.rbac import Permission
from control.services import services
from control.store import Camera

routes = RouteTable("system")


def server_version() -> str:
    try:
        return metadata.version("mediaserver")
    except metadata.PackageNotFoundError:
        return "unknown"


@routes.route(
    "GET", "/system", permission=Permission.SYSTEM_READ, summary="Version, uptime and counts", response=SystemOut
)
async def system_info(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    async with svc.store.reader() as session:
        total = await session.scalar(select(func.count()).select_from(Camera))
        online = await session.scalar(select(func.count()).select_from(Camera).where(Camera.status == "online"))
    return send(
        SystemOut(
            version=server_version(),
            uptime_seconds=round(time.time() - svc.started_at, 3),
            database=svc.store.backend,
            publish_mode=svc.config.auth.publish_mode,
            live_streams=len(svc.hub.live_streams()),
            cameras=int(total or 0),
            cameras_online=int(online or 0),
        )
    )

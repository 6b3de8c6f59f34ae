"""Cameras: CRUD, filters and pages, bulk operations, stream keys, live status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control.api.base import RouteTable, not_found, path_camera_id, send, send_plain
from control.api.paging import read_page
from control.api.schemas import (
    BulkCreate,
    BulkRequest,
    BulkResult,
    CameraCreate,
    CameraList,
    CameraOut,
    CameraQuery,
    CameraStatusOut,
    CameraUpdate,
)
from control.api.validated import body, query
from control.audit import Actor
from control.events import EventName
from control.rbac import Permission
from control.security import new_id, new_stream_key
from control.services import Services, actor, principal, services
from control.store import Camera
from control.store.types import utcnow
from mediaserver.auth import shown_url
from mediaserver.config import Config

routes = RouteTable("cameras")
READ = Permission.CAMERAS_READ
WRITE = Permission.CAMERAS_WRITE


def publish_url_for(config: Config, host: str, stream_key: str) -> str:
    api = config.api
    host = api.rtmp_public_host or host or "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"rtmp://{host}:{config.rtmp.port}/{api.publish_app}/{stream_key}"


def publish_url(svc: Services, host: str, stream_key: str) -> str:
    return publish_url_for(svc.config, host, stream_key)


# What only callers with cameras:write see; events (heard by every role) leave them out.
KEY_FIELDS = {"stream_key", "publish_url", "source_url"}


def cameras_changed(svc: Services, updated: Sequence[Any] = (), deleted: Sequence[str] = ()) -> None:
    """After any change to cameras: keys may have changed (the authorizer's cache) and so may pulled sources;
    the dashboards hear of it (camera-updated without keys or source credentials, camera-deleted)."""
    svc.authorizer.invalidate()
    if svc.pulled is not None:
        svc.pulled.changed()
    if svc.events is not None:
        for camera in updated:
            view = camera_view(svc, camera, None, False).model_dump(mode="json", exclude=KEY_FIELDS)
            svc.events.publish(EventName.CAMERA_UPDATED, {"camera": view}, camera.id)
        for camera_id in deleted:
            svc.events.publish(EventName.CAMERA_DELETED, {}, camera_id)


# The columns a camera's answer shows as they are stored.
_SHOWN_COLUMNS = ("id", "name", "company", "vendor", "model", "serial_number", "location", "enabled",
                  "recording_enabled", "private", "status", "last_seen", "created_at", "updated_at")  # fmt: skip
_READ_COLUMNS = (*_SHOWN_COLUMNS, "source_url", "stream_key")
_PAGE_QUERY = select(*(Camera.__table__.columns[name] for name in _READ_COLUMNS)).order_by(Camera.name_key, Camera.id)


def camera_view(svc: Services, camera: Camera, request: web.Request | None, with_key: bool) -> CameraOut:
    """A camera as the API shows it."""
    values = {name: getattr(camera, name) for name in _READ_COLUMNS}
    return CameraOut.model_construct(**camera_fields(svc, values, request, with_key))


def camera_fields(svc: Services, values: dict[str, Any], request: web.Request | None, with_key: bool) -> dict[str, Any]:
    """`CameraOut`'s fields as a plain dict, from a camera's column values, built without validation (they come
    from the database, checked when they went in): a page of cameras is the busiest answer of the API, and
    building 50 models (or reading 50 rows by attribute) for it cost several times what plain dicts do."""
    stream = svc.hub.live(svc.config.api.publish_app, values["id"])
    fields = {name: values[name] for name in _SHOWN_COLUMNS}
    source_url = values["source_url"]
    fields["live"] = stream is not None
    fields["bitrate_bps"] = int(stream.bitrate) if stream is not None else 0
    fields["source"] = shown_url(source_url) if source_url else None
    if with_key:
        host = request.url.host if request is not None else ""
        fields["stream_key"] = values["stream_key"]
        fields["publish_url"] = publish_url(svc, host or "", values["stream_key"])
        fields["source_url"] = source_url
    else:
        fields["stream_key"] = fields["publish_url"] = fields["source_url"] = None
    return fields


def new_camera(fields: CameraCreate) -> Camera:
    now = utcnow()
    return Camera(
        id=new_id(),
        stream_key=new_stream_key(),
        status="offline",
        bitrate_bps=0,
        created_at=now,
        updated_at=now,
        **{**fields.model_dump(), "source_url": fields.source_url or None},
    )


async def add_camera(svc: Services, session: AsyncSession, fields: CameraCreate, who: Actor) -> Camera:
    camera = new_camera(fields)
    session.add(camera)
    svc.audit.add(session, "camera.create", who, "camera", camera.id, details={"name": camera.name})
    return camera


def kick(svc: Services, camera_ids: Sequence[str], reason: str) -> None:
    """Disconnect live publishers of cameras that lost their right to publish."""
    for camera_id in camera_ids:
        svc.hub.kick(svc.config.api.publish_app, camera_id, reason)


@routes.route(
    "GET",
    "/cameras",
    permission=READ,
    summary="List cameras (filters: status, enabled, q = name contains; paged with limit/offset)",
    query=CameraQuery,
    response=CameraList,
)
async def list_cameras(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    q = query(request, CameraQuery)
    conditions = []
    if q.status is not None:
        conditions.append(Camera.status == q.status)
    if q.enabled is not None:
        conditions.append(Camera.enabled.is_(q.enabled))
    if q.q:
        conditions.append(Camera.name_key.contains(q.q.lower(), autoescape=True))
    # Plain rows, not ORM objects: a page is read-only and this is the busiest listing.
    rows, total = await svc.store.read(
        lambda session: read_page(session, _PAGE_QUERY, Camera.__table__, conditions, q.limit, q.offset)
    )
    with_key = principal(request).can(WRITE)
    items = [camera_fields(svc, dict(zip(_READ_COLUMNS, row, strict=False)), request, with_key) for row in rows]
    return send_plain({"items": items, "total": total, "limit": q.limit, "offset": q.offset})


@routes.route(
    "POST",
    "/cameras",
    permission=WRITE,
    summary="Add a camera; the answer carries its stream key and publish URL",
    body=CameraCreate,
    response=CameraOut,
    status=201,
)
async def post_camera(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    req = await body(request, CameraCreate)
    async with svc.store.sessions.begin() as session:
        camera = await add_camera(svc, session, req, actor(request))
    cameras_changed(svc, [camera])
    return send(camera_view(svc, camera, request, True), 201)


@routes.route(
    "POST",
    "/cameras/bulk",
    permission=WRITE,
    summary="Bulk create, enable, disable or delete cameras",
    body=BulkRequest,
    response=BulkResult,
)
async def bulk_cameras(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    req = (await body(request, BulkRequest)).root
    who = actor(request)
    if isinstance(req, BulkCreate):
        async with svc.store.sessions.begin() as session:
            created = [await add_camera(svc, session, item, who) for item in req.items]
        cameras_changed(svc, created)
        items = [camera_view(svc, c, request, True) for c in created]
        return send(BulkResult(action="create", affected=len(items), items=items))
    ids = list(dict.fromkeys(req.ids))
    async with svc.store.sessions.begin() as session:
        found = list(await session.scalars(select(Camera.id).where(Camera.id.in_(ids))))
        if req.action == "delete":
            await session.execute(delete(Camera).where(Camera.id.in_(found)))
        else:
            await session.execute(
                update(Camera).where(Camera.id.in_(found)).values(enabled=req.action == "enable", updated_at=utcnow())
            )
        for camera_id in found:
            svc.audit.add(session, f"camera.{req.action}", who, "camera", camera_id, details={"bulk": True})
        changed = (
            [] if req.action == "delete" else list(await session.scalars(select(Camera).where(Camera.id.in_(found))))
        )
    cameras_changed(svc, changed, found if req.action == "delete" else ())
    if req.action in ("delete", "disable"):
        kick(svc, found, f"camera_{req.action}d")
    missing = [i for i in ids if i not in set(found)]
    return send(BulkResult(action=req.action, affected=len(found), not_found=missing))


@routes.route("GET", "/cameras/{camera_id}", permission=READ, summary="Get a camera", response=CameraOut, errors=(404,))
async def get_camera(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    async with svc.store.reader() as session:
        camera = await session.get(Camera, camera_id)
    if camera is None:
        raise not_found("camera")
    return send(camera_view(svc, camera, request, principal(request).can(WRITE)))


@routes.route(
    "PUT",
    "/cameras/{camera_id}",
    permission=WRITE,
    summary="Update a camera (omitted fields stay); disabling it disconnects its publisher",
    body=CameraUpdate,
    response=CameraOut,
    errors=(404,),
)
async def put_camera(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    req = await body(request, CameraUpdate)
    changes = req.model_dump(exclude_none=True)
    if changes.get("source_url") == "":
        changes["source_url"] = None  # cleared: the camera pushes again
    async with svc.store.sessions.begin() as session:
        camera = await session.get(Camera, camera_id, with_for_update=True)
        if camera is None:
            raise not_found("camera")
        changed = {k: v for k, v in changes.items() if getattr(camera, k) != v}
        for key, value in changed.items():
            setattr(camera, key, value)
        if changed:
            camera.updated_at = utcnow()
            action = "camera.update"
            if changed.get("enabled") is False:
                action = "camera.disable"
            elif changed.get("enabled") is True:
                action = "camera.enable"
            svc.audit.add(session, action, actor(request), "camera", camera.id, details={"changed": sorted(changed)})
    cameras_changed(svc, [camera] if changed else [])
    if changed.get("enabled") is False:
        kick(svc, [camera.id], "camera_disabled")
    return send(camera_view(svc, camera, request, True))


@routes.route(
    "DELETE",
    "/cameras/{camera_id}",
    permission=WRITE,
    summary="Delete a camera (its publisher is disconnected)",
    status=204,
    errors=(404,),
)
async def delete_camera(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    async with svc.store.sessions.begin() as session:
        camera = await session.get(Camera, camera_id)
        if camera is None:
            raise not_found("camera")
        await session.delete(camera)
        svc.audit.add(session, "camera.delete", actor(request), "camera", camera_id, details={"name": camera.name})
    cameras_changed(svc, deleted=[camera_id])
    kick(svc, [camera_id], "camera_deleted")
    return web.Response(status=204)


@routes.route(
    "POST",
    "/cameras/{camera_id}/rotate-key",
    permission=WRITE,
    summary="Give the camera a new stream key; the old one stops working and its publisher is disconnected",
    response=CameraOut,
    errors=(404,),
)
async def rotate_key(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera = await rotate_camera_key(svc, path_camera_id(request), actor(request))
    return send(camera_view(svc, camera, request, True))


async def rotate_camera_key(svc: Services, camera_id: str, who: Actor) -> Camera:
    """A new stream key (audited); the old one stops working and its publisher is disconnected."""
    async with svc.store.sessions.begin() as session:
        camera = await session.get(Camera, camera_id, with_for_update=True)
        if camera is None:
            raise not_found("camera")
        camera.stream_key = new_stream_key()
        camera.updated_at = utcnow()
        svc.audit.add(session, "camera.rotate_key", who, "camera", camera.id)
    cameras_changed(svc, [camera])
    kick(svc, [camera.id], "stream_key_rotated")
    return camera


async def set_camera_enabled(svc: Services, camera_id: str, enabled: bool, who: Actor) -> Camera:
    """Enable or disable one camera (audited when it changes); disabling disconnects its publisher."""
    async with svc.store.sessions.begin() as session:
        camera = await session.get(Camera, camera_id, with_for_update=True)
        if camera is None:
            raise not_found("camera")
        changed = camera.enabled != enabled
        if changed:
            camera.enabled = enabled
            camera.updated_at = utcnow()
            action = "camera.enable" if enabled else "camera.disable"
            svc.audit.add(session, action, who, "camera", camera.id, details={"changed": ["enabled"]})
    cameras_changed(svc, [camera] if changed else [])
    if not enabled:
        kick(svc, [camera.id], "camera_disabled")
    return camera


# The five columns a status answer needs, run as a Core statement: the ORM's identity load cost more than the query.
_STATUS_QUERY = select(*(Camera.__table__.c[name] for name in ("id", "status", "enabled", "last_seen", "source_url")))


@routes.route(
    "GET",
    "/cameras/{camera_id}/status",
    permission=READ,
    summary="Live figures of the camera's stream (codecs, resolution, fps, bitrate, viewers)",
    response=CameraStatusOut,
    errors=(404,),
)
async def camera_status(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    camera_id = path_camera_id(request)
    statement = _STATUS_QUERY.where(Camera.__table__.c.id == camera_id)
    camera = await svc.store.read(lambda session: session.connection().execute(statement).first())
    if camera is None:
        raise not_found("camera")
    stream = svc.hub.live(svc.config.api.publish_app, camera.id)
    source = svc.pulled.state(camera.id) if svc.pulled is not None and camera.source_url else None
    snapshot = stream.snapshot() if stream is not None else None
    if snapshot is not None:
        snapshot.pop("publisher", None)  # the publisher's address stays with operators' logs
    return send(
        CameraStatusOut(
            camera_id=camera.id,
            status=camera.status,
            enabled=camera.enabled,
            live=stream is not None,
            last_seen=camera.last_seen,
            bitrate_bps=int(stream.bitrate) if stream is not None else 0,
            stream=snapshot,
            source_state=source.state if source is not None else None,
            source_error=(source.last_error or None) if source is not None else None,
        )
    )

"""User administration (users:manage)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from control.api.auth import revoke_user_sessions
from control.api.authcache import auth_changed
from control.api.base import ApiError, RouteTable, not_found, path_int, send
from control.api.paging import read_page
from control.api.schemas import UserCreate, UserList, UserOut, UserQuery, UserUpdate
from control.api.validated import body, query
from control.rbac import Permission, Role
from control.security import PasswordHasher
from control.services import Services, actor, principal, services
from control.store import User
from control.store.types import utcnow

routes = RouteTable("users")
MANAGE = Permission.USERS_MANAGE
__all__ = ["create_user", "routes"]


def _check_password(svc: Services, password: str) -> None:
    minimum = svc.config.auth_api.min_password_length
    if len(password) < minimum:
        detail = [{"loc": ["body", "password"], "msg": f"at least {minimum} characters", "type": "too_short"}]
        raise ApiError(422, "validation_failed", "the password is too short", detail)


async def create_user(
    session: AsyncSession, hasher: PasswordHasher, username: str, password: str, role: Role, email: str | None = None
) -> User:
    now = utcnow()
    user = User(
        username=username.lower(),
        email=email or None,
        password_hash=await hasher.hash(password),
        role=role.value,
        disabled=False,
        created_at=now,
        updated_at=now,
    )
    session.add(user)
    await session.flush()
    return user


async def _check_email_free(session: AsyncSession, email: str | None, user_id: int | None) -> None:
    """409 when another user has the address (the unique index is the last word; this names the field)."""
    if not email:
        return
    other = await session.scalar(select(User.id).where(User.email == email))
    if other is not None and other != user_id:
        raise ApiError(409, "email_taken", "another user has that email address")


async def _other_active_admins(session: AsyncSession, user_id: int) -> int:
    count = await session.scalar(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN.value, User.disabled.is_(False), User.id != user_id)
    )
    return int(count or 0)


@routes.route("GET", "/users", permission=MANAGE, summary="List users", query=UserQuery, response=UserList)
async def list_users(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    q = query(request, UserQuery)
    conditions = []
    if q.role is not None:
        conditions.append(User.role == q.role.value)
    if q.q:
        conditions.append(User.username.contains(q.q.lower(), autoescape=True))
    statement = select(User).order_by(User.id)
    rows, total = await svc.store.read(
        lambda session: read_page(session, statement, User.__table__, conditions, q.limit, q.offset)
    )
    items = [UserOut.model_validate(row[0]) for row in rows]
    return send(UserList(items=items, total=total, limit=q.limit, offset=q.offset))


@routes.route(
    "POST",
    "/users",
    permission=MANAGE,
    summary="Create a user",
    body=UserCreate,
    response=UserOut,
    status=201,
    errors=(409,),
)
async def post_user(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    req = await body(request, UserCreate)
    _check_password(svc, req.password)
    try:
        async with svc.store.sessions.begin() as session:
            await _check_email_free(session, req.email, None)
            user = await create_user(session, svc.hasher, req.username, req.password, req.role, req.email)
            user.disabled = req.disabled
            svc.audit.add(
                session,
                "user.create",
                actor(request),
                "user",
                str(user.id),
                details={"username": user.username, "role": user.role},
            )
    except IntegrityError as exc:
        raise ApiError(409, "username_taken", "a user with that username exists") from exc
    return send(UserOut.model_validate(user), 201)


@routes.route("GET", "/users/{user_id}", permission=MANAGE, summary="Get a user", response=UserOut, errors=(404,))
async def get_user(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    user_id = path_int(request, "user_id", "user")
    async with svc.store.reader() as session:
        user = await session.get(User, user_id)
    if user is None:
        raise not_found("user")
    return send(UserOut.model_validate(user))


@routes.route(
    "PUT",
    "/users/{user_id}",
    permission=MANAGE,
    summary="Change a user's password, role or disabled flag (omitted fields stay)",
    body=UserUpdate,
    response=UserOut,
    errors=(404, 409),
)
async def put_user(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    user_id = path_int(request, "user_id", "user")
    req = await body(request, UserUpdate)
    if req.password is not None:
        _check_password(svc, req.password)
    async with svc.store.sessions.begin() as session:
        user = await session.get(User, user_id, with_for_update=True)
        if user is None:
            raise not_found("user")
        demoted = req.role is not None and req.role is not Role.ADMIN
        if (
            user.role == Role.ADMIN.value
            and (demoted or req.disabled)
            and not await _other_active_admins(session, user.id)
        ):
            raise ApiError(409, "last_admin", "the last active admin cannot be demoted or disabled")
        changed: list[str] = []
        if req.email is not None and (req.email or None) != user.email:
            await _check_email_free(session, req.email, user.id)
            user.email = req.email or None
            changed.append("email")
        if req.password is not None:
            user.password_hash = await svc.hasher.hash(req.password)
            changed.append("password")
        if req.role is not None and req.role.value != user.role:
            user.role = req.role.value
            changed.append("role")
        if req.disabled is not None and req.disabled != user.disabled:
            user.disabled = req.disabled
            changed.append("disabled")
        if changed:
            user.updated_at = utcnow()
            if {"password", "disabled", "role"} & set(changed):
                await revoke_user_sessions(session, user.id)
            svc.audit.add(session, "user.update", actor(request), "user", str(user.id), details={"changed": changed})
    return send(UserOut.model_validate(user))


@routes.route("DELETE", "/users/{user_id}", permission=MANAGE, summary="Delete a user", status=204, errors=(404, 409))
async def delete_user(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    user_id = path_int(request, "user_id", "user")
    if user_id == principal(request).user_id:
        raise ApiError(409, "cannot_delete_self", "you cannot delete your own account")
    async with svc.store.sessions.begin() as session:
        user = await session.get(User, user_id, with_for_update=True)
        if user is None:
            raise not_found("user")
        if user.role == Role.ADMIN.value and not await _other_active_admins(session, user.id):
            raise ApiError(409, "last_admin", "the last active admin cannot be deleted")
        auth_changed(session)
        await session.delete(user)
        svc.audit.add(session, "user.delete", actor(request), "user", str(user_id), details={"username": user.username})
    return web.Response(status=204)

"""API tokens: random secrets shown once, stored as SHA-256, scoped, expiring, IP-restricted."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from sqlalchemy import select

from control.api.authcache import auth_changed
from control.api.base import ApiError, RouteTable, not_found, path_int, send
from control.api.paging import read_page
from control.api.schemas import TokenCreate, TokenCreated, TokenList, TokenOut, TokenQuery
from control.api.validated import body, query
from control.rbac import Permission, permissions_for
from control.security import new_api_token, sha256_hex
from control.services import actor, principal, services
from control.store import ApiToken, User
from control.store.types import utcnow

routes = RouteTable("tokens")
MANAGE = Permission.TOKENS_MANAGE


def token_view(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        user_id=token.user_id,
        name=token.name,
        prefix=token.prefix,
        scopes=list(token.scopes),
        ip_allowlist=list(token.ip_allowlist),
        expires_at=token.expires_at,
        last_used_at=token.last_used_at,
        created_at=token.created_at,
        revoked=token.revoked_at is not None,
    )


@routes.route(
    "POST",
    "/tokens",
    permission=MANAGE,
    summary="Create an API token; the secret is in this answer only",
    body=TokenCreate,
    response=TokenCreated,
    status=201,
    errors=(403, 404),
)
async def create_token(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    who = principal(request)
    req = await body(request, TokenCreate)
    owner_id = req.user_id or who.user_id
    if owner_id != who.user_id and not who.can(Permission.USERS_MANAGE):
        raise ApiError(403, "forbidden", "only admins create tokens for other users")
    scopes = sorted(set(req.scopes), key=list(Permission).index)
    async with svc.store.sessions.begin() as session:
        owner = await session.get(User, owner_id)
        if owner is None:
            raise not_found("user")
        # A token never grants more than its owner's role, nor more than its creator holds.
        allowed = permissions_for(owner.role) & who.permissions
        beyond = [s.value for s in scopes if s not in allowed]
        if beyond:
            raise ApiError(403, "scope_not_allowed", f"scopes beyond the owner's rights: {', '.join(beyond)}")
        secret = new_api_token()
        now = utcnow()
        token = ApiToken(
            user_id=owner.id,
            name=req.name,
            prefix=secret[:12],
            token_hash=sha256_hex(secret),
            scopes=[s.value for s in scopes],
            ip_allowlist=[str(n) for n in req.ip_allowlist],
            expires_at=now + timedelta(days=req.expires_in_days) if req.expires_in_days else None,
            created_at=now,
        )
        session.add(token)
        await session.flush()
        svc.audit.add(
            session,
            "token.create",
            actor(request),
            "api_token",
            str(token.id),
            details={"owner": owner.id, "scopes": token.scopes, "name": token.name},
        )
    view = token_view(token)
    return send(TokenCreated(**view.model_dump(), token=secret), 201)


@routes.route(
    "GET",
    "/tokens",
    permission=MANAGE,
    summary="List API tokens (your own; admins may list everyone's or filter by user_id)",
    query=TokenQuery,
    response=TokenList,
)
async def list_tokens(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    who = principal(request)
    q = query(request, TokenQuery)
    conditions = []
    if who.can(Permission.USERS_MANAGE):
        if q.user_id is not None:
            conditions.append(ApiToken.user_id == q.user_id)
    else:
        if q.user_id is not None and q.user_id != who.user_id:
            raise ApiError(403, "forbidden", "you can only list your own tokens")
        conditions.append(ApiToken.user_id == who.user_id)
    statement = select(ApiToken).order_by(ApiToken.id)
    rows, total = await svc.store.read(
        lambda session: read_page(session, statement, ApiToken.__table__, conditions, q.limit, q.offset)
    )
    items = [token_view(row[0]) for row in rows]
    return send(TokenList(items=items, total=total, limit=q.limit, offset=q.offset))


@routes.route(
    "DELETE",
    "/tokens/{token_id}",
    permission=MANAGE,
    summary="Revoke an API token",
    status=204,
    errors=(404,),
)
async def revoke_token(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    who = principal(request)
    token_id = path_int(request, "token_id", "token")
    async with svc.store.sessions.begin() as session:
        token = await session.get(ApiToken, token_id, with_for_update=True)
        if token is None or (token.user_id != who.user_id and not who.can(Permission.USERS_MANAGE)):
            raise not_found("token")
        if token.revoked_at is None:
            auth_changed(session)
            token.revoked_at = utcnow()
            svc.audit.add(session, "token.revoke", actor(request), "api_token", str(token.id))
    return web.Response(status=204)

"""Login, refresh-token rotation (with reuse detection) and logout."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from control.api.authcache import auth_changed
from control.api.base import ApiError, RouteTable, send
from control.api.schemas import LoginRequest, LogoutRequest, MeOut, OkOut, RefreshRequest, TokenPair
from control.api.validated import body, optional_body
from control.audit import Actor
from control.rbac import INTERACTIVE_ROLES, Permission, Role
from control.security import new_id, new_refresh_token, sha256_hex
from control.services import Services, actor, client_ip, principal, services
from control.store import RefreshToken, User
from control.store.types import utcnow

routes = RouteTable("auth")

BAD_LOGIN = ApiError(401, "invalid_credentials", "wrong username or password")


async def _check_login_rate(svc: Services, ip: str, username: str) -> None:
    window = svc.config.api.rate_window
    for key, limit in (
        (f"login:ip:{ip}", svc.config.api.login_rate_per_ip),
        (f"login:user:{username}", svc.config.api.login_rate_per_username),
    ):
        decision = await svc.limiter.hit(key, limit, window)
        if not decision.allowed:
            retry = max(1, int(decision.retry_after + 0.999))
            raise ApiError(429, "rate_limited", "too many login attempts", headers={"Retry-After": str(retry)})


async def issue_pair(svc: Services, session: AsyncSession, user: User, family_id: str) -> TokenPair:
    refresh = new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id,
            token_hash=sha256_hex(refresh),
            created_at=utcnow(),
            expires_at=utcnow() + timedelta(seconds=svc.config.auth_api.refresh_token_ttl),
        )
    )
    access, expires_in = svc.tokens.issue_access(user.id, user.role, family_id)
    return TokenPair(access_token=access, refresh_token=refresh, expires_in=expires_in)


async def revoke_family(session: AsyncSession, family_id: str) -> None:
    auth_changed(session)
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def revoke_user_sessions(session: AsyncSession, user_id: int) -> None:
    auth_changed(session)
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


@routes.route(
    "POST",
    "/auth/login",
    permission=None,
    authenticated=False,
    summary="Log in with username and password; returns an access and a refresh token",
    body=LoginRequest,
    response=TokenPair,
    errors=(401, 429),
)
async def login(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    req = await body(request, LoginRequest)
    ip = client_ip(request)
    username = req.username.lower()
    await _check_login_rate(svc, ip, username)
    # The password check (tens of ms of argon2id) runs with no transaction open.
    async with svc.store.reader() as session:
        found = await session.scalar(select(User).where(User.username == username))
    ok = await svc.hasher.verify(found.password_hash if found is not None else None, req.password)
    rehashed = None
    if ok and found is not None and svc.hasher.needs_rehash(found.password_hash):
        rehashed = await svc.hasher.hash(req.password)  # the cost parameters changed since it was set
    async with svc.store.sessions() as session:
        # Lock the user row first: concurrent logins of one user queue instead of deadlocking.
        user = (
            await session.scalar(select(User).where(User.id == found.id).with_for_update())
            if found is not None
            else None
        )
        # A password changed meanwhile was not the one checked.
        ok = ok and user is not None and found is not None and user.password_hash == found.password_hash
        if user is None or not ok or user.disabled or Role(user.role) not in INTERACTIVE_ROLES:
            reason = (
                "unknown_user"
                if user is None
                else "bad_password"
                if not ok
                else "disabled"
                if user.disabled
                else "api_only"
            )
            svc.audit.add(
                session,
                "auth.login",
                Actor(user.id if user else None, username, ip),
                "user",
                str(user.id) if user else "",
                success=False,
                details={"reason": reason},
            )
            await session.commit()
            raise BAD_LOGIN
        now = utcnow()
        user.last_login_at = now
        if rehashed is not None:
            user.password_hash = rehashed
        pair = await issue_pair(svc, session, user, new_id())
        svc.audit.add(session, "auth.login", Actor(user.id, user.username, ip), "user", str(user.id))
        await session.commit()
    return send(pair)


@routes.route(
    "POST",
    "/auth/refresh",
    permission=None,
    authenticated=False,
    summary="Exchange a refresh token for a new pair; a reused refresh token revokes its whole session",
    body=RefreshRequest,
    response=TokenPair,
    errors=(401,),
)
async def refresh(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    req = await body(request, RefreshRequest)
    ip = client_ip(request)
    now = utcnow()
    async with svc.store.sessions() as session:
        token = await session.scalar(
            select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(req.refresh_token))
        )
        if token is None:
            raise ApiError(401, "invalid_token", "unknown refresh token")
        if token.revoked_at is not None or token.used_at is not None:
            await revoke_family(session, token.family_id)
            svc.audit.add(
                session,
                "auth.refresh_reuse",
                Actor(token.user_id, "", ip),
                "session",
                token.family_id,
                success=False,
                details={"already": "revoked" if token.revoked_at else "rotated"},
            )
            await session.commit()
            raise ApiError(401, "token_revoked", "this refresh token was already used; the session is revoked")
        if token.expires_at <= now:
            raise ApiError(401, "token_expired", "the refresh token has expired")
        # Claim it atomically: of two concurrent refreshes only one wins, the other is reuse.
        claimed = await session.execute(
            update(RefreshToken).where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None)).values(used_at=now)
        )
        if getattr(claimed, "rowcount", 0) != 1:
            await session.rollback()
            async with session.begin():
                await revoke_family(session, token.family_id)
            raise ApiError(401, "token_revoked", "this refresh token was already used; the session is revoked")
        user = await session.get(User, token.user_id)
        if user is None or user.disabled or Role(user.role) not in INTERACTIVE_ROLES:
            await revoke_family(session, token.family_id)
            await session.commit()
            raise ApiError(401, "invalid_token", "the account can no longer sign in")
        pair = await issue_pair(svc, session, user, token.family_id)
        await session.commit()
    return send(pair)


@routes.route(
    "POST",
    "/auth/logout",
    permission=None,
    summary="Sign out: revokes this session (its refresh tokens and, through them, its access tokens)",
    body=LogoutRequest,
    body_required=False,
    response=OkOut,
)
async def logout(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    who = principal(request)
    req = await optional_body(request, LogoutRequest)
    async with svc.store.sessions.begin() as session:
        families = set()
        if who.session_id:
            families.add(who.session_id)
        if req is not None and req.refresh_token:
            token = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(req.refresh_token))
            )
            if token is not None and token.user_id == who.user_id:
                families.add(token.family_id)
        for family in families:
            await revoke_family(session, family)
        svc.audit.add(session, "auth.logout", actor(request), "user", str(who.user_id))
    return send(OkOut())


@routes.route(
    "GET", "/auth/me", permission=None, summary="The caller: user, role and effective permissions", response=MeOut
)
async def me(request: web.Request) -> web.StreamResponse:
    who = principal(request)
    permissions = sorted(who.permissions, key=lambda p: list(Permission).index(p))
    via: Literal["session", "api_token"] = "api_token" if who.token_id is not None else "session"
    return send(MeOut(id=who.user_id, username=who.username, role=Role(who.role), permissions=permissions, via=via))

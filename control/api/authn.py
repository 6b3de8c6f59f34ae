"""Who is calling: a JWT access token from a login, or an API token (`msk_...`)."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from aiohttp import web
from sqlalchemy import exists, select, update

from control.api.base import ApiError
from control.rbac import permissions_for
from control.security import API_TOKEN_PREFIX, TokenError, sha256_hex
from control.services import Principal, Services, client_ip
from control.store import ApiToken, RefreshToken, User
from control.store.types import utcnow

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mediaserver"'}
# last_used_at is written at most this often per token, not on every request.
LAST_USED_GRANULARITY = timedelta(seconds=60)


def unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers=CHALLENGE)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


async def authenticate(request: web.Request, svc: Services) -> Principal:
    credentials = bearer(request)
    if credentials is None:
        raise unauthorized("unauthorized", "send Authorization: Bearer <access token or API token>")
    return await authenticate_credentials(request, svc, credentials)


async def authenticate_credentials(request: web.Request, svc: Services, credentials: str) -> Principal:
    """An access token or API token given some other way than the header (a WebSocket's first message)."""
    if len(credentials) > 4096:
        raise unauthorized("invalid_token", "the token is not valid")
    if credentials.startswith(API_TOKEN_PREFIX):
        return await _api_token(request, svc, credentials)
    return await _session(svc, credentials)


async def _session(svc: Services, credentials: str) -> Principal:
    try:
        claims = svc.tokens.decode_access(credentials)
    except TokenError as exc:
        code = str(exc)
        message = "the access token has expired" if code == "token_expired" else "the token is not valid"
        raise unauthorized(code, message) from exc
    cached = svc.auth_cache.get(("session", claims.user_id, claims.session_id))
    if cached is not None:
        return cached
    # One round trip: the user as it is now, and whether this session was signed out.
    revoked = (
        exists()
        .where(RefreshToken.family_id == claims.session_id, RefreshToken.revoked_at.is_not(None))
        .label("revoked")
    )
    query = select(User.id, User.username, User.role, User.disabled, revoked).where(User.id == claims.user_id)
    async with svc.store.reader() as session:
        user = (await session.execute(query)).first()
    if user is None or user.disabled:
        raise unauthorized("invalid_token", "the token is not valid")
    if user.revoked:
        raise unauthorized("token_revoked", "this session has been signed out")
    # The role comes from the database, not the token: a demotion applies at once (here, and on other nodes
    # within api.auth_cache_ttl).
    who = Principal(user.id, user.username, user.role, permissions_for(user.role), None, claims.session_id)
    svc.auth_cache.put(("session", claims.user_id, claims.session_id), who)
    return who


def _ip_allowed(allowlist: list[str], remote: str) -> bool:
    if not allowlist:
        return True
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    for entry in allowlist:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


async def _api_token(request: web.Request, svc: Services, credentials: str) -> Principal:
    digest = sha256_hex(credentials)
    now = utcnow()
    cached = svc.token_cache.get(digest)
    if cached is not None:
        who, expires_at, allowlist = cached
        if expires_at is not None and expires_at <= now:
            raise unauthorized("token_expired", "this API token has expired")
        if not _ip_allowed(allowlist, client_ip(request)):
            raise ApiError(403, "ip_not_allowed", "this API token cannot be used from this address")
        return who
    async with svc.store.reader() as session:
        row = (
            await session.execute(
                select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == digest)
            )
        ).first()
        if row is None:
            raise unauthorized("invalid_token", "the token is not valid")
        token, user = row[0], row[1]
        if token.revoked_at is not None:
            raise unauthorized("token_revoked", "this API token has been revoked")
        if token.expires_at is not None and token.expires_at <= now:
            raise unauthorized("token_expired", "this API token has expired")
        if user.disabled:
            raise unauthorized("invalid_token", "the token is not valid")
        if not _ip_allowed(token.ip_allowlist, client_ip(request)):
            raise ApiError(403, "ip_not_allowed", "this API token cannot be used from this address")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_GRANULARITY:
        async with svc.store.sessions.begin() as session:
            await session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
    who = Principal(user.id, user.username, user.role, permissions_for(user.role, token.scopes), token.id, None)
    # last_used_at is written at most once per LAST_USED_GRANULARITY, which is longer than the cache's TTL.
    svc.token_cache.put(digest, (who, token.expires_at, list(token.ip_allowlist or [])))
    return who

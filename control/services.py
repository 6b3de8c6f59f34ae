"""What the API handlers share: the store, token service, limiter, authorizer and hub."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from control.api.authcache import AuthCache
from control.audit import Actor, Audit
from control.ratelimit import RateLimiter
from control.rbac import Permission
from control.security import PasswordHasher, TokenService
from control.store import Store
from mediaserver.config import Config
from mediaserver.hub import HubView
from mediaserver.recording.indexes import IndexCache
from mediaserver.recording.storage import Tier
from mediaserver.snapshot import Snapshotter

if TYPE_CHECKING:
    from control.authorizer import DatabaseAuthorizer
    from control.events import EventBus
    from control.figures import LiveFigures
    from control.pulled import PulledCameras


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: int
    username: str
    role: str
    permissions: frozenset[Permission]
    # Set when the request carries an API token, else the login session.
    token_id: int | None = None
    session_id: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    def actor(self, ip: str) -> Actor:
        return Actor(self.user_id, self.username, ip)


class RecorderControl(Protocol):
    """The part of the data plane's recorder the API drives (manual start/stop)."""

    def set_recording(self, app: str, name: str, on: bool) -> bool: ...

    def is_recording(self, app: str, name: str) -> bool: ...


@dataclass
class RecordingAccess:
    """Where recordings are read from (a tier per name: hot, warm, cold) and the live recorder, if any."""

    tiers: dict[str, Tier]
    recorder: RecorderControl | None = None
    indexes: IndexCache = field(default_factory=IndexCache)


@dataclass
class Services:
    config: Config
    store: Store
    hasher: PasswordHasher
    tokens: TokenService
    audit: Audit
    limiter: RateLimiter
    authorizer: DatabaseAuthorizer
    hub: HubView
    snapshots: Snapshotter
    recordings: RecordingAccess
    started_at: float = field(default_factory=time.time)
    # Who a credential belongs to, for api.auth_cache_ttl seconds (sessions; API tokens with expiry and allowlist).
    auth_cache: AuthCache[Principal] = field(default_factory=lambda: AuthCache(0.0))
    token_cache: AuthCache[tuple[Principal, datetime | None, list[str]]] = field(default_factory=lambda: AuthCache(0.0))
    # Cameras pulled from their source_url (set by the control plane once it is built).
    pulled: PulledCameras | None = None
    # The event bus (WebSocket clients, other nodes); None only in parts of the plane built alone.
    events: EventBus | None = None
    # The dashboard's figures, and the event loop's lag (last, max since the previous call) from the data plane.
    figures: LiveFigures | None = None
    loop_lag: Callable[[], tuple[float, float]] | None = None


SERVICES = web.AppKey("control_services", Services)
PRINCIPAL = web.RequestKey("control_principal", Principal)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def client_ip(request: web.Request) -> str:
    return request.remote or ""


def actor(request: web.Request) -> Actor:
    if PRINCIPAL in request:
        return request[PRINCIPAL].actor(client_ip(request))
    return Actor(None, "", client_ip(request))

"""The control plane as one object: MediaServer creates it, installs it into the HTTP app,
starts it (store, migrations, first admin, camera status tracking) and gets the authorizer."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update

from control.alerts import AlertEngine
from control.analytics import CameraSampler
from control.api import analytics as analytics_api
from control.api import audit as audit_api
from control.api import auth as auth_api
from control.api import cameras as cameras_api
from control.api import openapi as openapi_api
from control.api import recordings as recordings_api
from control.api import snapshots as snapshots_api
from control.api import streaming as streaming_api
from control.api import system as system_api
from control.api import thumbnails as thumbnails_api
from control.api import tokens as tokens_api
from control.api import users as users_api
from control.api.authcache import AuthCache
from control.api.authn import authenticate, bearer
from control.api.base import ApiError, ApiRoute, Handler, QueryTokenAuth
from control.audit import SYSTEM, Audit
from control.authorizer import DatabaseAuthorizer
from control.events import EventBus, EventName
from control.events.machine import MachineRelay
from control.events.redis import RedisRelay
from control.events.streams import StreamEvents
from control.figures import FiguresCollector, LiveFigures
from control.live import CameraLiveTracker
from control.middleware import cors, security_headers
from control.pulled import PullControl, PulledCameras
from control.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from control.rbac import Permission, Role
from control.recording_index import CameraRecordPolicy, RecordingIndex
from control.recording_tiers import CopyTarget, RecordingTiers
from control.security import PasswordHasher, TokenService, load_or_create_secret
from control.services import PRINCIPAL, SERVICES, RecorderControl, RecordingAccess, Services
from control.store import Camera, Store, User
from control.websocket import WS_PATH, WebSocketGateway
from mediaserver.background import BackgroundTask
from mediaserver.config import Config, ConfigError
from mediaserver.hub import HubView
from mediaserver.recording.indexes import IndexCache
from mediaserver.recording.storage import LocalTier, Tier
from mediaserver.snapshot import Snapshotter
from mediaserver.transcode.ladder import parse_ladder

log = logging.getLogger("control.plane")

ADMIN_USERNAME_ENV = "MEDIASERVER_ADMIN_USERNAME"
ADMIN_PASSWORD_ENV = "MEDIASERVER_ADMIN_PASSWORD"


def all_routes() -> list[ApiRoute]:
    tables = (
        auth_api,
        users_api,
        cameras_api,
        snapshots_api,
        recordings_api,
        thumbnails_api,
        streaming_api,
        tokens_api,
        audit_api,
        system_api,
        analytics_api,
        openapi_api,
    )
    return [route for module in tables for route in module.routes.routes]


async def admit(
    request: web.Request, svc: Services, permission: Permission | None, query_token: QueryTokenAuth | None = None
) -> None:
    """Authenticate the request, check the permission and the rate limit; raises ApiError (401/403/429)."""
    if query_token is not None and bearer(request) is None and "token" in request.query:
        who = await query_token(request, svc)
    else:
        who = await authenticate(request, svc)
    if permission is not None and not who.can(permission):
        raise ApiError(403, "forbidden", f"this needs the {permission.value} permission")
    subject = f"tok:{who.token_id}" if who.token_id is not None else f"user:{who.user_id}"
    decision = await svc.limiter.hit(f"api:{subject}", svc.config.api.rate_per_token, svc.config.api.rate_window)
    if not decision.allowed:
        retry = max(1, int(decision.retry_after + 0.999))
        raise ApiError(429, "rate_limited", "too many requests", headers={"Retry-After": str(retry)})
    request[PRINCIPAL] = who


def guarded(route: ApiRoute, svc: Services) -> Handler:
    """The route's handler behind authentication, its declared permission and the rate limit."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            if route.authenticated:
                await admit(request, svc, route.permission, route.query_token)
            return await route.handler(request)
        except ApiError as exc:
            return exc.response()

    handler.__name__ = route.handler.__name__
    return handler


class ApiStatsGate:
    """The data plane's stats routes (/api/v1/streams, /api/v1/webrtc/sessions) behind the API's own checks."""

    def __init__(self, svc: Services) -> None:
        self._svc = svc

    async def check(self, request: web.Request, permission: str) -> web.StreamResponse | None:
        try:
            await admit(request, self._svc, Permission(permission))
        except ApiError as exc:
            return exc.response()
        return None


class ControlPlane:
    def __init__(
        self,
        config: Config,
        hub: HubView,
        environ: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self._environ = os.environ if environ is None else environ
        self.store = Store.from_config(config, registry)
        auth = config.auth_api
        self.hasher = PasswordHasher(auth.argon2_time_cost, auth.argon2_memory_kib, auth.argon2_parallelism)
        # The embedded default's secret file is created at start, not by merely building the object.
        self.tokens = TokenService.from_config(
            auth, Path(config.server.data_dir), embedded=self.store.is_sqlite, defer_secret=True
        )
        self.audit = Audit(self.store)
        self.limiter: RateLimiter = (
            RedisRateLimiter.from_url(config.redis.url, config.redis.key_prefix)
            if config.redis.url
            else MemoryRateLimiter()
        )
        rungs = tuple(rung.name for rung in parse_ladder(config.transcode.ladder)) if config.transcode.streams else ()
        self.authorizer = DatabaseAuthorizer(
            self.store, self.tokens, self.audit, config.api.publish_app, config.api.authorizer_cache_ttl, rungs
        )
        # Camera snapshots: decoded from the hub's cached keyframes on request, in worker threads.
        self.snapshots = Snapshotter.from_config(config.snapshot, hub)
        # Recordings are read through tiers; the hot one is where the recorder writes.
        hot = LocalTier("hot", Path(config.recording_root()))
        warm = LocalTier("warm", Path(config.recording.warm_root)) if config.recording.warm_root else None
        cold: CopyTarget | None = None
        if config.recording.s3_bucket:
            from mediaserver.recording import s3  # aioboto3 is imported only when a cold tier is configured

            cold = s3.from_config(config.recording)
        tiers: tuple[Tier | None, ...] = (hot, warm, cold)
        self.recordings = RecordingAccess(
            {tier.name: tier for tier in tiers if tier is not None}, indexes=IndexCache(registry=registry)
        )
        # Moves down the tiers by age and free space, and retention (one pass every recording.tier_interval).
        self.recording_tiers = RecordingTiers(self.store, self.audit, config.recording, hot, warm, cold, registry)
        self.services = Services(
            config,
            self.store,
            self.hasher,
            self.tokens,
            self.audit,
            self.limiter,
            self.authorizer,
            hub,
            self.snapshots,
            self.recordings,
        )
        ttl = config.api.auth_cache_ttl
        self.services.auth_cache, self.services.token_cache = AuthCache(ttl), AuthCache(ttl)
        self.live = CameraLiveTracker(self.store, self.audit, hub, config.api.publish_app)
        self.services.pulled = self.pulled = PulledCameras(self.store, config.api.publish_app, self.audit)
        # What the recorder asks (which cameras record) and tells (the files it writes).
        self.record_policy = CameraRecordPolicy(self.store, config.api.publish_app, config.recording.streams)
        self.recording_index = RecordingIndex(self.store, Path(config.recording_root()), config.api.publish_app)
        self.stats_gate = ApiStatsGate(self.services)
        self.routes = all_routes()
        self._build_events(registry)

    def _build_events(self, registry: CollectorRegistry | None) -> None:
        """The event bus and what hangs off it: sources, the WebSocket gateway, alerts, figures, samples."""
        config = self.config
        events = config.events
        node_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.events = EventBus(node_id, events.replay_events, events.replay_seconds, registry)
        self.relay: RedisRelay | MachineRelay | None = (
            RedisRelay(self.events, config.redis.url, config.redis.key_prefix, registry) if config.redis.url else None
        )
        self.services.events = self.live.events = self.pulled.events = self.recording_index.events = self.events
        self.events.subscribe(self.pulled.on_event)
        self.stream_events = StreamEvents(self.events, config.api.publish_app)
        self.alerts = AlertEngine(
            config.alerts,
            self.events,
            self.hub,
            config.api.publish_app,
            config.recording.min_free_percent if config.recording.enabled else 0.0,
            registry,
        )
        self.recording_index.on_alert = self.alerts.recorder_alert
        self.figures = LiveFigures(self.store, self.hub, config.api.publish_app, registry, self.alerts.open_alerts)
        self.services.figures = self.figures
        if registry is not None:
            registry.register(FiguresCollector(self.figures))
        self.sampler = CameraSampler(self.store, self.hub, config.api.publish_app, config.analytics, self.figures)
        self.websocket = WebSocketGateway(self.services, self.events, events, registry)
        self._tasks = [
            BackgroundTask.every(events.dashboard_interval, self._dashboard_tick, "dashboard_update"),
            BackgroundTask.every(config.alerts.interval, self.alerts.tick, "alerts"),
        ]
        if config.analytics.sample_interval > 0:
            self._tasks.append(BackgroundTask.every(config.analytics.sample_interval, self._sample_tick, "samples"))

    async def _dashboard_tick(self) -> None:
        figures = await self.figures.compute()
        self.events.publish(EventName.DASHBOARD_UPDATE, figures.body)

    async def _sample_tick(self) -> None:
        await self.sampler.sample()

    def attach_loop_lag(self, lag: Callable[[], tuple[float, float]]) -> None:
        """The composition root hands over the event loop's lag (last, max since the previous call)."""
        self.services.loop_lag = lag
        self.alerts.loop_lag = lambda: lag()[0]

    def install(self, app: web.Application) -> None:
        from control.api.openapi import OPENAPI_KEY, build_openapi
        from mediaserver.http.app import METRICS_KEY

        app[SERVICES] = self.services
        app[OPENAPI_KEY] = snapshots_api.document(build_openapi(self.routes))
        if METRICS_KEY in app:
            self.snapshots.register_metrics(app[METRICS_KEY].registry)
        for route in self.routes:
            app.router.add_route(route.method, route.full_path, guarded(route, self.services))
        app.router.add_get(WS_PATH, self.websocket.handle)
        app.middlewares.insert(0, security_headers)
        if self.config.api.cors_origins:
            app.middlewares.insert(1, cors(self.config.api.cors_origins))

    def attach_recorder(self, recorder: RecorderControl) -> None:
        """The composition root hands over the data plane's recorder (manual start/stop from the API)."""
        self.recordings.recorder = recorder

    def attach_pull(self, pull: PullControl) -> None:
        """The composition root hands over the data plane's pull service (cameras with a source_url)."""
        self.pulled.pull = pull

    async def prepare(self) -> None:
        """The start-up steps done once per machine, before any stream: the schema, the first admin, the embedded
        database's stale camera status and the recording index against the disk (a crash may have cut files short).
        A lone process does them in `start`; the parent of worker processes does them before it starts any."""
        self._load_secret()
        if self.store.is_sqlite or self.config.database.auto_migrate:
            await self.store.migrate()
        else:
            await self.store.check_schema()
        await self.bootstrap_admin()
        if self.store.is_sqlite:
            # One node owns the embedded database: cameras marked online by a previous run are not.
            async with self.store.sessions.begin() as session:
                await session.execute(update(Camera).where(Camera.status == "online").values(status="offline"))
        if self.config.recording.enabled:
            await self.recording_index.reconcile()

    def _load_secret(self) -> None:
        if not self.tokens.ready:
            self.tokens.use_secret(load_or_create_secret(Path(self.config.server.data_dir) / "jwt_secret"))

    def attach_machine_relay(self, relay: MachineRelay) -> None:
        """Workers of one machine without Redis: events go to the other workers through their parent."""
        if self.relay is None:
            self.relay = relay

    async def start(self, prepared: bool = False, machine_jobs: bool = True) -> None:
        """`prepared`: the parent did `prepare`; `machine_jobs`: this process runs the machine-wide jobs (tier
        moves and retention, samples, alerts, dashboard figures): one worker of a machine, or a lone process."""
        if prepared:
            self._load_secret()
        else:
            await self.prepare()
        self.hub.listen(self.stream_events.on_hub_event)
        if self.relay is not None:
            self.relay.start()
        self.websocket.start()
        self.live.start()
        self.pulled.start()
        self.recording_index.start()
        if machine_jobs:
            await self.recording_tiers.start()
            for task in self._tasks:
                task.start()
        log.info(
            "event=control_plane_started database=%s publish_mode=%s machine_jobs=%s",
            self.store.safe_url,
            self.config.auth.publish_mode,
            machine_jobs,
        )

    async def bootstrap_admin(self) -> None:
        username = self._environ.get(ADMIN_USERNAME_ENV, "").strip().lower()
        password = self._environ.get(ADMIN_PASSWORD_ENV, "")
        async with self.store.sessions.begin() as session:
            count = int(await session.scalar(select(func.count()).select_from(User)) or 0)
            if count:
                return
            if not (username and password):
                log.warning(
                    "event=no_users hint=%s",
                    "create an admin: mediaserver user create --username NAME --role admin "
                    f"(or set {ADMIN_USERNAME_ENV} and {ADMIN_PASSWORD_ENV} for the first start)",
                )
                return
            if len(password) < self.config.auth_api.min_password_length:
                raise ConfigError(f"{ADMIN_PASSWORD_ENV} is shorter than auth_api.min_password_length")
            from control.api.users import create_user

            user = await create_user(session, self.hasher, username, password, Role.ADMIN)
            self.audit.add(session, "user.create", SYSTEM, "user", str(user.id), details={"bootstrap": True})
        log.info("event=admin_created username=%s source=environment", username)

    async def stop(self) -> None:
        for task in self._tasks:
            await task.stop()
        await self.websocket.stop()
        if self.relay is not None:
            await self.relay.stop()
        self.snapshots.close()
        await self.pulled.stop()
        await self.live.stop()
        await self.recording_index.stop()
        await self.recording_tiers.stop()
        await self.limiter.close()
        await self.store.close()

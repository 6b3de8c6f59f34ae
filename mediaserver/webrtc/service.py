"""The WebRTC service: WHEP playback and WHIP ingest, composed from their parts.

- `sessions`: the sessions, the registry of live ones and their per-stream feeds, closing and housekeeping.
- `whep` / `whip`: offer handling for viewers and publishers.
- `http`: routes, CORS, offer validation, JSON errors and the sessions listing.
- `metrics`: counters and the Prometheus collector.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry

from mediaserver.auth import Authorizer
from mediaserver.config import WebrtcConfig
from mediaserver.http.access import OpenStats, PlayAccess, StatsGate
from mediaserver.hub import Hub
from mediaserver.metrics import TrafficStats
from mediaserver.webrtc.feed import StreamFeed
from mediaserver.webrtc.http import WebrtcHttp
from mediaserver.webrtc.ice import HostCandidates, ice_servers
from mediaserver.webrtc.metrics import WebrtcMetrics, WebrtcStats
from mediaserver.webrtc.sessions import Housekeeping, Session, SessionRegistry
from mediaserver.webrtc.whep import WhepService
from mediaserver.webrtc.whip import WhipService


class WebrtcService:
    def __init__(
        self,
        hub: Hub,
        config: WebrtcConfig,
        registry: CollectorRegistry,
        authorizer: Authorizer,
        traffic: TrafficStats | None = None,
        play_access: PlayAccess | None = None,
        stats_gate: StatsGate | None = None,
    ) -> None:
        self.hub = hub
        self.config = config
        self.authorizer = authorizer
        self.play_access = play_access or PlayAccess(authorizer, registry)
        self.stats_gate: StatsGate = stats_gate or OpenStats()
        self.traffic = traffic
        self.metrics = WebrtcMetrics(registry)
        hosts = HostCandidates(config.host_addresses, config.udp_port_min, config.udp_port_max)
        servers = ice_servers(config.ice_servers, config.turn_username, config.turn_credential)
        self.session_registry = SessionRegistry(config, self.metrics, traffic, hosts, servers)
        self.whip = WhipService(hub, config, self.session_registry, self.metrics, authorizer)
        self.whep = WhepService(
            hub, config, self.session_registry, self.metrics, self.play_access, self.whip.forward_keyframe_request
        )
        self.http = WebrtcHttp(self.session_registry, self.metrics, self.stats_gate, self.whep.offer, self.whip.offer)
        self.housekeeping = Housekeeping(self.session_registry, self.whip.tick)
        self.metrics.watch(self.session_registry)
        hub.listen(self.whep.on_hub_event)
        # aiortc logs every RTP packet at debug level: far too much for a server log.
        for name in ("aiortc", "aioice"):
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.INFO:
                logger.setLevel(logging.INFO)

    @property
    def sessions(self) -> dict[str, Session]:
        return self.session_registry.sessions

    @property
    def feeds(self) -> dict[str, StreamFeed]:
        return self.session_registry.feeds

    @property
    def stats(self) -> WebrtcStats:
        return self.metrics.stats

    def routes(self) -> list[web.RouteDef]:
        return self.http.routes()

    def start(self) -> None:
        self.housekeeping.start()

    async def stop(self) -> None:
        await self.housekeeping.stop()
        await self.session_registry.close_all()

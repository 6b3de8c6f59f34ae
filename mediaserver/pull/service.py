"""The pulled sources: those of the configuration (`[pull] sources`), started and stopped with the server, and
those the control plane sets (cameras with a `source_url`), with their state as metrics: which are online, how
often they reconnected, how many packets they brought.

Sources matching `[pull] on_demand` are pulled only while someone watches: the hub asks `demand` when a player
wants a stream that is not live (the player waits for the first frames), and a source nobody has asked for in
`on_demand_idle` seconds, and that no RTMP or WebRTC player still reads, is stopped (state `idle`).

With several nodes, an always-on source is read by the node that holds its lease (`SourceLeases`, in Redis):
the others leave it alone (state `elsewhere`) and try again every `retry` seconds, so a camera is read once
and another node takes it over within the lease's TTL of its reader's death. A holder that cannot read its
camera for `handover` seconds (its network may be the one that is cut) gives the lease back and leaves it to
the others for a few retries before it competes for it again."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
import zlib
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.background import BackgroundTask
from mediaserver.config import ConfigError, PullConfig
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.hub import ELSEWHERE, Hub
from mediaserver.pull.source import PullSettings, PullSource

log = logging.getLogger("mediaserver.pull")

STATES = ("connecting", "online", "offline", "error", "idle", "elsewhere")


def parse_source(entry: str) -> tuple[str, str, str]:
    """`app/name=url` as (app, name, url)."""
    target, sep, url = entry.partition("=")
    app, slash, name = target.strip().partition("/")
    if not sep or not slash or not app or not name or "/" in name or not url.strip():
        raise ConfigError("pull.sources entries look like 'live/door=rtsp://camera/stream'")
    return app, name, url.strip()


class SourceLeases(Protocol):
    """Which node reads each always-on source, among nodes that all know of it."""

    async def take(self, key: str) -> str | None:
        """None when this node may read `key` (it holds the lease now); else the node that does."""

    async def give_back(self, key: str) -> None: ...


class StartClaims(Protocol):
    """Which worker of the machine starts an on-demand source when players ask for it in several at once."""

    async def reserve(self, key: str) -> bool:
        """Whether this worker may start `key` (it holds the claim now); False: another worker does."""

    def unreserve(self, key: str) -> None:
        """The source stopped: let the claim go, unless its stream is live here."""


class PullService:
    def __init__(
        self, hub: Hub, config: PullConfig, registry: CollectorRegistry, shard: tuple[int, int] = (0, 1)
    ) -> None:
        self.hub = hub
        # (this worker's index, the worker count): an always-on source is read by one worker of the machine.
        self.shard = shard
        self.settings = PullSettings(
            config.rtsp_transport,
            config.timeout,
            config.reconnect_min,
            config.reconnect_max,
            allow_loopback=config.allow_loopback,
        )
        # By (app, name): players and the API look a source up on every request about a stream.
        self._sources: dict[tuple[str, str], PullSource] = {}
        self._running = False
        self._on_demand = list(config.on_demand)
        self._wait = config.on_demand_wait
        self._idle = config.on_demand_idle
        # Players waiting for an on-demand stream to go live, by stream key.
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._started_at: dict[str, float] = {}
        self._idle_check = BackgroundTask.every(1.0, self._stop_idle, "pull_idle")
        self.leases: SourceLeases | None = None
        self._lease_check: BackgroundTask | None = None
        self._lease_tasks: set[asyncio.Task[None]] = set()
        # Set with several workers: an on-demand source is started by one of them, the others play it from there.
        self.claims: StartClaims | None = None
        self._handover = 0.0
        self._lease_rest = 0.0
        # Leases this node handed over, by key: when (monotonic) it may compete for them again.
        self._resting: dict[str, float] = {}
        self.handovers = 0
        hub.listen(self._on_hub_event)
        hub.add_demand(self.demand)
        for entry in config.sources:
            app, name, url = parse_source(entry)
            if (app, name) in self._sources:
                raise ConfigError(f"pull source {app}/{name} is listed twice")
            try:
                self._sources[app, name] = PullSource(hub, app, name, url, self.settings)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        registry.register(_PullCollector(self))

    @property
    def sources(self) -> list[PullSource]:
        """Every source this worker knows, in the order they were added."""
        return list(self._sources.values())

    def _reading_worker(self, source: PullSource) -> int:
        """The worker that reads the always-on `source`: a stable hash of its key picks it."""
        index, count = self.shard
        return index if count <= 1 else zlib.crc32(source.key.encode()) % count

    def mine(self, source: PullSource) -> bool:
        """Whether this worker reads the always-on `source`."""
        return self._reading_worker(source) == self.shard[0]

    def reader(self, app: str, name: str) -> int | None:
        """The other worker of this machine that reads the always-on source `app/name` (None: this one, or no
        such source), so that requests about it while it is not live reach the worker that knows its state."""
        source = self.get(app, name)
        if source is None or self.on_demand(source) or self.mine(source):
            return None
        return self._reading_worker(source)

    def on_demand(self, source: PullSource) -> bool:
        return any(fnmatch.fnmatchcase(source.key, pattern) for pattern in self._on_demand)

    def share_with_nodes(self, leases: SourceLeases, retry: float, handover: float = 0.0) -> None:
        """Read an always-on source only while this node holds its lease; look for free ones every `retry` s;
        hand a lease over after `handover` s without reading its camera (0: never)."""
        self.leases = leases
        self._handover = handover
        # Long enough for every other node to have had a few tries at the lease.
        self._lease_rest = 3 * retry
        self._lease_check = BackgroundTask.every(retry, self._take_free_leases, "pull_leases")

    def start(self) -> None:
        self._running = True
        for source in self.sources:
            self._launch(source)
        if self._on_demand:
            self._idle_check.start()
        if self._lease_check is not None:
            self._lease_check.start()

    async def stop(self) -> None:
        self._running = False
        await self._idle_check.stop()
        if self._lease_check is not None:
            await self._lease_check.stop()
        for source in self.sources:
            await self._stop_source(source)

    def _leased(self, source: PullSource) -> bool:
        """Whether `source` is read only with a lease: always-on, read by this worker, several nodes."""
        return self.leases is not None and not self.on_demand(source) and self.mine(source)

    async def _stop_source(self, source: PullSource) -> None:
        was_running = source.running
        await source.stop()
        if self.leases is not None and was_running and self._leased(source):
            await self.leases.give_back(source.key)

    async def _take_free_leases(self) -> None:
        """Start each leased source that is not running once its lease is this node's; hand over the leases of
        sources this node has not been able to read for `handover` seconds."""
        now = time.monotonic()
        for source in self.sources:
            if self.leases is None or not self._running or not self._leased(source):
                continue
            if source.running:
                failing = source.failing_since
                if self._handover > 0 and failing is not None and now - failing >= self._handover:
                    await self._hand_over(source, now)
                continue
            if self._resting.get(source.key, 0.0) > now:
                continue
            self._resting.pop(source.key, None)
            holder = await self.leases.take(source.key)
            if self._sources.get((source.app, source.name)) is not source or source.running or not self._running:
                continue
            if holder is None:
                log.info("event=pull_lease_taken stream=%s url=%s", source.key, source.shown)
                source.start()
            elif source.state != "elsewhere":
                log.info("event=pull_elsewhere stream=%s node=%s", source.key, holder)
                source.state = "elsewhere"

    async def _hand_over(self, source: PullSource, now: float) -> None:
        log.warning(
            "event=pull_lease_handed_over stream=%s url=%s failing_seconds=%.0f error=%s",
            source.key,
            source.shown,
            now - (source.failing_since or now),
            source.last_error or "-",
        )
        self.handovers += 1
        self._resting[source.key] = now + self._lease_rest
        await self._stop_source(source)  # gives the lease back

    def lease_lost(self, key: str) -> None:
        """Another node reads `key` now (both took its lease while Redis was away): stop reading it here."""
        app, _, name = key.partition("/")
        source = self.get(app, name)
        if source is None or not source.running:
            return
        log.warning("event=pull_lease_lost stream=%s", key)

        async def stop() -> None:
            await source.stop()
            source.state = "elsewhere"

        task = asyncio.get_running_loop().create_task(stop())
        self._lease_tasks.add(task)
        task.add_done_callback(self._lease_tasks.discard)

    def _launch(self, source: PullSource) -> None:
        """Start an always-on source; an on-demand one waits for its first player."""
        if self.on_demand(source):
            source.state = "idle"
            return
        if not self.mine(source) or self.leases is not None:
            # Another worker of this machine reads it, or the node that holds its lease does (maybe this one,
            # once `_take_free_leases` has its lease).
            source.state = "elsewhere"
            return
        source.start()

    async def demand(self, app: str, name: str) -> bool | str:
        """A player wants `app/name`, which is not live: start its on-demand source and wait for the stream
        (ELSEWHERE: another worker is starting it, and the player is served from there)."""
        source = self.get(app, name)
        if source is None or not self._running or not self.on_demand(source):
            return False
        key = source.key
        if not source.running:
            if self.claims is not None and not await self.claims.reserve(key):
                log.info("event=pull_on_demand_elsewhere stream=%s", key)
                return ELSEWHERE
            if source.running:  # another player of this worker started it meanwhile
                return await self._wait_live(source)
            self._started_at[key] = time.monotonic()
            log.info("event=pull_on_demand_start stream=%s url=%s", key, source.shown)
            source.start()
        return await self._wait_live(source)

    async def _wait_live(self, source: PullSource) -> bool:
        app, name, key = source.app, source.name, source.key
        if self.hub.get(app, name) is not None:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._wait)
        except TimeoutError:
            log.info("event=pull_on_demand_timeout stream=%s wait=%.1f", key, self._wait)
        finally:
            waiting = self._waiters.get(key, [])
            if waiter in waiting:
                waiting.remove(waiter)
        return self.hub.get(app, name) is not None

    def _on_hub_event(self, event: StreamEvent) -> None:
        if event.kind is StreamEventKind.STARTED:
            for waiter in self._waiters.pop(event.key, []):
                if not waiter.done():
                    waiter.set_result(None)

    async def _stop_idle(self) -> None:
        now = time.monotonic()
        for source in self.sources:
            if not source.running or not self.on_demand(source):
                continue
            key = source.key
            last = max(self.hub.wanted.get(key, 0.0), self._started_at.get(key, 0.0))
            if now - last < self._idle or self._waiters.get(key):
                continue
            stream = self.hub.get(source.app, source.name)
            if stream is not None and stream.watched:
                self.hub.want(source.app, source.name)  # players are reading: count them as asking now
                continue
            log.info("event=pull_on_demand_stop stream=%s idle_seconds=%.0f", key, now - last)
            await source.stop()
            source.state = "idle"
            if self.claims is not None:
                self.claims.unreserve(key)

    def get(self, app: str, name: str) -> PullSource | None:
        return self._sources.get((app, name))

    async def set_source(self, app: str, name: str, url: str | None) -> None:
        """Pull `app/name` from `url` (None: stop pulling it); a changed URL starts a new source."""
        current = self.get(app, name)
        if current is not None and url is not None and current.same_url(url):
            return
        if current is not None:
            del self._sources[app, name]
            await self._stop_source(current)
        if url is not None:
            source = PullSource(self.hub, app, name, url, self.settings)
            self._sources[app, name] = source
            if self._running:
                self._launch(source)


class _PullCollector(Collector):
    def __init__(self, service: PullService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        states = GaugeMetricFamily(
            "mediaserver_pull_sources",
            "Pulled sources by state (connecting, online, offline, error, idle; elsewhere: another worker or node "
            "reads it)",
            labels=["state"],
        )
        for state in STATES:
            states.add_metric([state], sum(1 for s in self._service.sources if s.state == state))
        yield states
        sessions = CounterMetricFamily(
            "mediaserver_pull_sessions", "Sessions opened to pulled sources (the first and every reconnect)"
        )
        sessions.add_metric([], sum(s.sessions for s in self._service.sources))
        yield sessions
        packets = CounterMetricFamily("mediaserver_pull_packets", "Media packets read from pulled sources")
        packets.add_metric([], sum(s.packets for s in self._service.sources))
        yield packets
        yield CounterMetricFamily(
            "mediaserver_pull_lease_handovers",
            "Pull leases this node gave back because it could not read the camera (another node may)",
            value=self._service.handovers,
        )

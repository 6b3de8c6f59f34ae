"""The pulled sources: those of the configuration (`[pull] sources`), started and stopped with the server, and
those the control plane sets (cameras with a `source_url`), with their state as metrics: which are online, how
often they reconnected, how many packets they brought."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.config import ConfigError, PullConfig
from mediaserver.hub import Hub
from mediaserver.pull.source import PullSettings, PullSource

STATES = ("connecting", "online", "offline", "error")


def parse_source(entry: str) -> tuple[str, str, str]:
    """`app/name=url` as (app, name, url)."""
    target, sep, url = entry.partition("=")
    app, slash, name = target.strip().partition("/")
    if not sep or not slash or not app or not name or "/" in name or not url.strip():
        raise ConfigError("pull.sources entries look like 'live/door=rtsp://camera/stream'")
    return app, name, url.strip()


class PullService:
    def __init__(self, hub: Hub, config: PullConfig, registry: CollectorRegistry) -> None:
        self.hub = hub
        self.settings = PullSettings(
            config.rtsp_transport,
            config.timeout,
            config.reconnect_min,
            config.reconnect_max,
            allow_loopback=config.allow_loopback,
        )
        self.sources: list[PullSource] = []
        self._running = False
        for entry in config.sources:
            app, name, url = parse_source(entry)
            try:
                self.sources.append(PullSource(hub, app, name, url, self.settings))
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
        registry.register(_PullCollector(self))

    def start(self) -> None:
        self._running = True
        for source in self.sources:
            source.start()

    async def stop(self) -> None:
        self._running = False
        for source in self.sources:
            await source.stop()

    def get(self, app: str, name: str) -> PullSource | None:
        return next((s for s in self.sources if s.app == app and s.name == name), None)

    async def set_source(self, app: str, name: str, url: str | None) -> None:
        """Pull `app/name` from `url` (None: stop pulling it); a changed URL starts a new source."""
        current = self.get(app, name)
        if current is not None and url is not None and current.same_url(url):
            return
        if current is not None:
            self.sources.remove(current)
            await current.stop()
        if url is not None:
            source = PullSource(self.hub, app, name, url, self.settings)
            self.sources.append(source)
            if self._running:
                source.start()


class _PullCollector(Collector):
    def __init__(self, service: PullService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        states = GaugeMetricFamily(
            "mediaserver_pull_sources", "Pulled sources by state (connecting, online, offline, error)", labels=["state"]
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

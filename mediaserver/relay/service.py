"""The relay service: listens to the hub and, for every live stream a push rule matches, runs one session per
target while the stream is live; its figures as metrics (no URL or key in any label)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.config import ConfigError, RelayConfig
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.hub import Hub
from mediaserver.relay.rules import PushRule, parse_rule
from mediaserver.relay.session import STATES, RelayCounters, RelaySession, RelaySettings

log = logging.getLogger("mediaserver.relay")


def tls_client_context(ca_file: str) -> ssl.SSLContext:
    """Certificates checked against the system's trust store, or against `ca_file` (a private CA, another node's
    self-signed certificate) when set."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"relay.ca_file: cannot load {ca_file}: {exc}") from exc


class RelayService:
    def __init__(self, hub: Hub, config: RelayConfig, registry: CollectorRegistry) -> None:
        self.hub = hub
        self.rules: list[PushRule] = [parse_rule(entry) for entry in config.pushes]
        # Made once (loading a trust store takes milliseconds), only when a target needs it.
        needs_tls = any(rule.url.strip().lower().startswith("rtmps:") for rule in self.rules)
        self.settings = RelaySettings(
            config.reconnect_min,
            config.reconnect_max,
            config.queue_bytes,
            config.connect_timeout,
            tls_client_context(config.ca_file) if needs_tls else None,
        )
        self.counters = RelayCounters()
        self.sessions: list[RelaySession] = []
        self._running = False
        registry.register(_RelayCollector(self))
        hub.listen(self._on_hub_event)

    def start(self) -> None:
        self._running = True
        # Streams already live (none at start-up, but the order of start calls must not matter).
        for stream in self.hub.list():
            self._stream_started(stream.app, stream.name)

    async def stop(self) -> None:
        self._running = False
        sessions, self.sessions = self.sessions, []
        await asyncio.gather(*(session.stop("shutdown") for session in sessions))

    def _on_hub_event(self, event: StreamEvent) -> None:
        if not self._running or event.stream.derived:
            return  # ABR rungs are not pushed: a target gets the source as it came in
        if event.kind is StreamEventKind.STARTED:
            self._stream_started(event.stream.app, event.stream.name)
        elif event.kind is StreamEventKind.STOPPED:
            for session in [s for s in self.sessions if s.stream is event.stream]:
                session.close("stream_ended")

    def _stream_started(self, app: str, name: str) -> None:
        stream = self.hub.get(app, name)
        if stream is None:
            return
        self.sessions = [s for s in self.sessions if not s.done()]
        for rule in self.rules:
            if not rule.matches(app, name):
                continue
            if any(s.stream is stream and s.rule is rule for s in self.sessions):
                continue
            session = RelaySession(stream, rule.target(app, name), self.settings, self.counters, self.hub.drops, rule)
            self.sessions.append(session)
            session.start()

    def live_sessions(self) -> list[RelaySession]:
        return [s for s in self.sessions if not s.done()]


class _RelayCollector(Collector):
    def __init__(self, service: RelayService) -> None:
        self._service = service

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        live = self._service.live_sessions()
        targets = GaugeMetricFamily(
            "mediaserver_relay_targets", "Relay pushes by state (connecting, publishing, backoff)", labels=["state"]
        )
        for state in STATES:
            targets.add_metric([state], sum(1 for s in live if s.state == state))
        yield targets
        counters = self._service.counters
        sessions = CounterMetricFamily(
            "mediaserver_relay_sessions", "Connections opened to relay targets (the first and every reconnect)"
        )
        sessions.add_metric([], counters.sessions)
        yield sessions
        sent = CounterMetricFamily("mediaserver_relay_sent_bytes", "Bytes written to relay targets")
        sent.add_metric([], counters.sent_bytes)
        yield sent
        dropped = CounterMetricFamily(
            "mediaserver_relay_dropped_packets", "Packets not sent to a relay target that could not keep up"
        )
        dropped.add_metric([], counters.dropped_packets)
        yield dropped

"""Prometheus metrics of the data plane.

Rare events (a rejected connection, a failed handshake) are prometheus counters. Per-packet
figures (bytes, drops) are plain integers bumped on the hot path and read by a collector
at scrape time, so the hot path pays an integer add, not a locked metric update.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.hub import Hub


@dataclass(slots=True)
class TrafficStats:
    connections_current: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    connections_total: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    bytes_in: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    bytes_out: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))


class Metrics:
    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.traffic = TrafficStats()
        self.connections_rejected = Counter(
            "mediaserver_connections_rejected",
            "Connections refused or closed for a protocol or policy reason",
            ["protocol", "reason"],
            registry=self.registry,
        )
        self.handshake_failures = Counter(
            "mediaserver_rtmp_handshake_failures",
            "RTMP handshakes that failed",
            ["reason"],
            registry=self.registry,
        )
        self.handshakes = Counter(
            "mediaserver_rtmp_handshakes",
            "RTMP handshakes completed, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.publish_denied = Counter(
            "mediaserver_publish_denied",
            "Publish attempts refused",
            ["reason"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(hub, self.traffic))


class _LiveCollector(Collector):
    def __init__(self, hub: Hub, traffic: TrafficStats) -> None:
        self._hub = hub
        self._traffic = traffic

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        current = GaugeMetricFamily("mediaserver_connections", "Open connections", labels=["protocol"])
        total = CounterMetricFamily("mediaserver_connections", "Connections accepted", labels=["protocol"])
        for protocol, count in self._traffic.connections_current.items():
            current.add_metric([protocol], count)
        for protocol, count in self._traffic.connections_total.items():
            total.add_metric([protocol], count)
        yield current
        yield total
        received = CounterMetricFamily("mediaserver_received_bytes", "Bytes received", labels=["protocol"])
        sent = CounterMetricFamily("mediaserver_sent_bytes", "Bytes sent", labels=["protocol"])
        for protocol, count in self._traffic.bytes_in.items():
            received.add_metric([protocol], count)
        for protocol, count in self._traffic.bytes_out.items():
            sent.add_metric([protocol], count)
        yield received
        yield sent
        publishers = GaugeMetricFamily("mediaserver_publishers", "Live streams with a publisher", labels=["protocol"])
        subscribers = GaugeMetricFamily("mediaserver_subscribers", "Subscribers of live streams", labels=["protocol"])
        by_publisher: dict[str, int] = collections.defaultdict(int)
        by_subscriber: dict[str, int] = collections.defaultdict(int)
        for stream in self._hub.list():
            by_publisher[stream.publisher.protocol] += 1
            for protocol, count in stream.subscriber_counts().items():
                by_subscriber[protocol] += count
        for protocol, count in by_publisher.items():
            publishers.add_metric([protocol], count)
        for protocol, count in by_subscriber.items():
            subscribers.add_metric([protocol], count)
        yield publishers
        yield subscribers
        dropped = CounterMetricFamily("mediaserver_packets_dropped", "Packets dropped", labels=["reason"])
        for reason, count in self._hub.drops.by_reason.items():
            dropped.add_metric([reason], count)
        yield dropped

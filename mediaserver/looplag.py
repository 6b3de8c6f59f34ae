"""Event-loop lag: a task sleeps 100 ms and measures how much later than asked it wakes up.

Anything that holds the loop (a slow callback, DTLS/SRTP work of many WebRTC peers, a big burst of sends)
shows up as oversleep. Exported as `mediaserver_event_loop_lag_seconds` (the last sample) and
`mediaserver_event_loop_lag_max_seconds` (the worst sample since the previous scrape).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mediaserver.background import BackgroundTask

INTERVAL = 0.1


class LoopLagMonitor(Collector):
    def __init__(self, registry: CollectorRegistry | None = None, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.last = 0.0
        self.max_since_scrape = 0.0
        self.total = 0.0
        self.samples = 0
        self._task = BackgroundTask(self._run)
        if registry is not None:
            registry.register(self)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - started - self.interval)
            self.last = lag
            self.total += lag
            self.samples += 1
            if lag > self.max_since_scrape:
                self.max_since_scrape = lag

    def recent(self) -> tuple[float, float]:
        """The last sample and the worst since the previous scrape (without resetting it, unlike a scrape)."""
        return self.last, self.max_since_scrape

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            "mediaserver_event_loop_lag_seconds",
            "How late the event loop woke a 100 ms sleep, last sample",
            value=self.last,
        )
        yield GaugeMetricFamily(
            "mediaserver_event_loop_lag_max_seconds",
            "Worst event-loop lag sample since the previous scrape",
            value=self.max_since_scrape,
        )
        self.max_since_scrape = self.last
        yield CounterMetricFamily(
            "mediaserver_event_loop_lag_samples", "Event-loop lag samples taken", value=self.samples
        )
        yield CounterMetricFamily(
            "mediaserver_event_loop_oversleep_seconds", "Sum of event-loop lag samples", value=self.total
        )

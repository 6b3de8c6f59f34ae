"""Event-loop lag: a task sleeps 100 ms and measures how much later than asked it wakes up.

Anything that holds the loop (a slow callback, DTLS/SRTP work of many WebRTC peers, a big burst of sends)
shows up as oversleep. Exported as `mediaserver_event_loop_lag_seconds` (the last sample),
`mediaserver_event_loop_lag_max_seconds` (the worst sample since the previous scrape) and the histogram
`mediaserver_event_loop_lag_sample_seconds` (for percentiles over any window).
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from mediaserver.background import BackgroundTask

INTERVAL = 0.1
# Upper bounds of the lag histogram's buckets, seconds.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLagMonitor(Collector):
    def __init__(self, registry: CollectorRegistry | None = None, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.last = 0.0
        self.max_since_scrape = 0.0
        self.total = 0.0
        self.samples = 0
        self._buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
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
            self._buckets[bisect.bisect_left(BUCKETS, lag)] += 1
            if lag > self.max_since_scrape:
                self.max_since_scrape = lag

    def recent(self) -> tuple[float, float]:
        """The last sample and the worst since the previous scrape (without resetting it, unlike a scrape)."""
        return self.last, self.max_since_scrape

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
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
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self._buckets, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        yield HistogramMetricFamily(
            "mediaserver_event_loop_lag_sample_seconds",
            "Event-loop lag samples by size",
            buckets=buckets,
            sum_value=self.total,
        )

"""RTMP publishers replaying an `EncodedClip` at real-time pace, all paced by one timer.

Each publisher connects, announces chunk size 4096 and publishes `bench<i>` on app `live`; from then on the
`Pacer` (a heap ordered by when each publisher's next message is due) writes every message due within 1 ms
in one `write`. Loop after loop, the clip's timestamps are carried forward. `Window` holds the samples
taken while the measurement window is open.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import heapq

from benchmarks.lib.clip import CHUNK_SIZE, EncodedClip
from mediaserver.rtmp.client import RtmpClient

APP = "live"


class Window:
    """Samples taken only while the measurement window is open."""

    def __init__(self) -> None:
        self.active = False
        # How late the publishers sent each batch (ms): the load generator's own pacing.
        self.lateness_ms = array.array("f")
        # Player receive time minus the time the publisher was due to send that video message.
        self.latency_ms = array.array("f")


class Publisher:
    def __init__(self, index: int, clip: EncodedClip) -> None:
        self.index = index
        self.name = f"bench{index}"
        self.clip = clip
        self.client = RtmpClient(on_close=self._on_close)
        self.live = False
        self.error: str | None = None
        self.disconnected = False
        self.stopping = False
        self.max_backlog = 0
        self._loop_index = 0
        self._chunks: list[bytes] = []
        self._offsets: list[float] = []
        self._base = 0.0
        self.t0 = 0.0  # the loop clock's time of the clip's media time 0
        self._pos = 0

    def _on_close(self, exc: Exception | None) -> None:
        if self.live and not self.stopping:
            self.disconnected = True
            self.error = f"disconnected: {exc}" if exc else "disconnected by the server"
        self.live = False

    async def start(self, host: str, port: int, pacer: Pacer) -> bool:
        """Connect and publish; once live, the pacer sends the clip."""
        try:
            await self.client.connect(host, port, APP)
            self.client.set_chunk_size(CHUNK_SIZE)
            await self.client.publish(self.name)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.client.abort()
            return False
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self._enter_loop(0)
        self.live = not self.client.closed
        if self.live:
            pacer.add(self)
        return self.live

    def stop(self) -> None:
        self.stopping = True
        self.client.abort()

    def _enter_loop(self, index: int) -> None:
        self._loop_index = index
        self._chunks = self.clip.loop(index)
        self._offsets = self.clip.offsets(index)
        self._base = self.t0 + index * self.clip.duration_ms / 1000
        self._pos = 0

    def next_due(self) -> float:
        return self._base + self._offsets[self._pos]

    def send(self, horizon: float, now: float) -> float:
        """Send every message due by `horizon` in one write; return how late the first was (s)."""
        lateness = now - self.next_due()
        parts: list[bytes] = []
        while True:
            parts.append(self._chunks[self._pos])
            self._pos += 1
            if self._pos == len(self._chunks):
                self._enter_loop(self._loop_index + 1)
            if self.next_due() > horizon:
                break
        self.client.write_raw(parts[0] if len(parts) == 1 else b"".join(parts))
        backlog = self.client.write_buffer_size
        if backlog > self.max_backlog:
            self.max_backlog = backlog
        return lateness


class Pacer:
    """One timer for all publishers: a heap ordered by when each one's next message is due."""

    def __init__(self, window: Window) -> None:
        self._heap: list[tuple[float, int, Publisher]] = []
        self._stopped = False
        self.window = window

    def add(self, publisher: Publisher) -> None:
        heapq.heappush(self._heap, (publisher.next_due(), publisher.index, publisher))

    def stop(self) -> None:
        self._stopped = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while not self._stopped:
            now = loop.time()
            horizon = now + 0.001
            while heap and heap[0][0] <= horizon:
                _, index, publisher = heapq.heappop(heap)
                if not publisher.live:
                    continue
                try:
                    lateness = publisher.send(horizon, now)
                except Exception as exc:  # the connection went away under us
                    publisher.error = publisher.error or f"send failed: {exc}"
                    publisher.live = False
                    continue
                if self.window.active:
                    self.window.lateness_ms.append(lateness * 1000)
                heapq.heappush(heap, (publisher.next_due(), index, publisher))
            delay = heap[0][0] - loop.time() if heap else 0.05
            await asyncio.sleep(min(max(delay, 0.0), 0.05))


class PublisherFleet:
    """The publishers of a run and their pacer: started one after another, stopped together."""

    def __init__(self, clip: EncodedClip, window: Window) -> None:
        self.clip = clip
        self.window = window
        self.pacer = Pacer(window)
        self.publishers: list[Publisher] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, count: int, port: int, interval: float, names: list[str] | None = None) -> int:
        """Start `count` publishers `interval` seconds apart (publishing `names`, default bench<i>); how many
        went live."""
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self.pacer.run())
        starts: list[asyncio.Task[bool]] = []
        for number in range(count):
            publisher = Publisher(len(self.publishers), self.clip)
            if names is not None:
                publisher.name = names[number]
            self.publishers.append(publisher)
            starts.append(loop.create_task(publisher.start("127.0.0.1", port, self.pacer)))
            await asyncio.sleep(interval)
        return sum(await asyncio.gather(*starts))

    def bytes_sent(self) -> int:
        return sum(p.client.bytes_sent for p in self.publishers)

    def connected(self) -> int:
        return sum(1 for p in self.publishers if p.live and not p.client.closed)

    def errors(self) -> list[str]:
        return [f"publisher {p.name}: {p.error}" for p in self.publishers if p.error is not None]

    async def stop(self) -> None:
        self.pacer.stop()
        for publisher in self.publishers:
            publisher.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""Where each live stream is: this worker, another worker of this machine (the parent's registry, mirrored
here), or another node (the Redis registry). Streams published here are claimed as they start and released
as they stop; a claim refused because the stream is live elsewhere disconnects the local publisher, as a
second publisher of one name is refused in a lone process. Edge copies are never claimed: they are the holder's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from mediaserver.cluster.link import MachineLink, WorkerAddress
from mediaserver.cluster.redis_registry import STREAM, RedisRegistry
from mediaserver.events import StreamEvent, StreamEventKind
from mediaserver.hub import Hub, Stream

log = logging.getLogger("mediaserver.cluster")


@dataclass(frozen=True, slots=True)
class Location:
    """Where a player of a stream held elsewhere is served from."""

    key: str
    # Set for another worker of this machine: its internal Unix sockets.
    worker: WorkerAddress | None = None
    # Set for another node: its advertised URLs.
    node: str = ""
    rtmp_url: str = ""
    http_url: str = ""


class StreamRegistry:
    def __init__(self, hub: Hub, link: MachineLink | None, nodes: RedisRegistry | None) -> None:
        self.hub = hub
        self.link = link
        self.nodes = nodes
        self._tasks: set[asyncio.Task[None]] = set()
        if nodes is not None:
            nodes.on_lost.append(self._on_key_lost)

    def _on_key_lost(self, kind: str, key: str) -> None:
        """Another node holds a stream published here too (both took it while Redis was away): theirs stays."""
        stream = self.hub.streams.get(key)
        if kind != STREAM or stream is None or stream.is_copy:
            return
        log.warning("event=publish_refused_elsewhere stream=%s peer=%s holder=another_node", key, stream.publisher.peer)
        self.hub.kick(stream.app, stream.name, "stream_taken")

    def start(self) -> None:
        self.hub.listen(self.on_hub_event)
        if self.nodes is not None:
            self.nodes.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            await task
        if self.nodes is not None:
            await self.nodes.stop()

    def on_hub_event(self, event: StreamEvent) -> None:
        stream = event.stream
        if stream.is_copy:
            return
        if event.kind is StreamEventKind.STARTED:
            self._spawn(self._claim(stream))
        elif event.kind is StreamEventKind.STOPPED:
            if self.link is not None:
                self.link.release(stream.key)
            if self.nodes is not None:
                self._spawn(self.nodes.release(stream.key))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, stream: Stream) -> None:
        where = ""
        if self.link is not None:
            holder = await self.link.claim(stream.key)
            if holder is not None:
                where = f"worker-{holder}"
        if not where and self.nodes is not None and not stream.ended:
            entry = await self.nodes.claim(stream.key)
            if entry is not None:
                where = f"{entry.node}/worker-{entry.worker}"
        if where and not stream.ended and self.hub.streams.get(stream.key) is stream:
            log.warning("event=publish_refused_elsewhere stream=%s peer=%s holder=%s", stream.key,
                        stream.publisher.peer, where)  # fmt: skip
            self.hub.kick(stream.app, stream.name, "stream_taken")

    async def reserve(self, key: str) -> bool:
        """`pull.service.StartClaims`: claim an on-demand stream before its source starts, so that players asking
        in several workers at once start it once; the workers refused pull it from the claimant (edge copy)."""
        return self.link is None or await self.link.claim(key) is None

    def unreserve(self, key: str) -> None:
        if self.link is not None and self.hub.streams.get(key) is None:
            self.link.release(key)

    def local_owner(self, key: str) -> WorkerAddress | None:
        """The other worker of this machine that holds `key` (read from the mirror: no round trip)."""
        return self.link.owner(key) if self.link is not None else None

    async def locate(self, key: str) -> Location | None:
        """Where `key` is live when it is not live here: another worker, else another node, else None."""
        worker = self.local_owner(key)
        if worker is not None:
            return Location(key, worker=worker)
        if self.nodes is None:
            return None
        entry = await self.nodes.lookup(key)
        if entry is None or entry.node == self.nodes.entry.node:
            return None
        return Location(key, node=entry.node, rtmp_url=entry.rtmp, http_url=entry.http)

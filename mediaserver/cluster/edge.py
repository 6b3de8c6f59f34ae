"""Edge copies: a stream held by another worker or node, pulled here over RTMP when a player first asks for
it, published into this process's hub and shared by every local player; it lets go after `idle` seconds
without one, and ends when the holder's stream ends (or the holder dies: its players then reconnect, as the
publisher does).

Another worker is reached on its internal Unix socket (no authorization: only this user's processes can
connect); another node on its advertised RTMP URL with a signed `cluster` token. The copy carries the FLV tag
bodies as they came (no decoding), and is never recorded, relayed or registered (`Stream.is_copy`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from mediaserver.auth import AuthResult, Denied, StreamGrant
from mediaserver.background import BackgroundTask
from mediaserver.cluster import tokens
from mediaserver.cluster.registry import Location, StreamRegistry
from mediaserver.formats.flv import parse_audio, parse_video
from mediaserver.hub import EDGE_PROTOCOL, Hub, Stream, StreamTaken
from mediaserver.media import TrackKind
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import AMFError, decode_amf0
from mediaserver.rtmp.chunk import Message
from mediaserver.rtmp.client import RtmpClient, RtmpClientError
from mediaserver.rtmp.publisher import metadata_of

log = logging.getLogger("mediaserver.cluster")


class InternalPlayOnly:
    """The authorizer of a worker's internal listener: other workers play, nobody publishes there."""

    async def authorize_publish(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        return Denied("internal_listener")

    async def authorize_play(self, app: str, name: str, params: dict[str, str], peer: str) -> AuthResult:
        return StreamGrant(app, name)


class _EdgePublisher:
    protocol = EDGE_PROTOCOL

    def __init__(self, copy: EdgeCopy) -> None:
        self.peer = copy.source
        self._copy = copy

    def stop(self, reason: str) -> None:
        self._copy.close(reason)


class EdgeCopy:
    def __init__(
        self, hub: Hub, app: str, name: str, location: Location, secret: str, max_message: int, wait: float
    ) -> None:
        self.hub = hub
        # Seconds a player waits for the copy's first keyframe.
        self.wait = wait
        self.app = app
        self.name = name
        self.location = location
        self.source = f"worker-{location.worker.index}" if location.worker is not None else location.node
        self._secret = secret
        self.client = RtmpClient(self._on_message, on_close=self._on_close, max_message_size=max_message)
        self.stream: Stream | None = None
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.on_closed: Callable[[EdgeCopy, str], None] | None = None

    @property
    def key(self) -> str:
        return f"{self.app}/{self.name}"

    async def open(self, timeout: float) -> None:
        location = self.location
        try:
            if location.worker is not None:
                await self.client.connect("localhost", 0, self.app, timeout=timeout, path=location.worker.rtmp)
                await self.client.play(self.name)
            else:
                url = urlsplit(location.rtmp_url)
                secure = url.scheme == "rtmps"
                tls = ssl.create_default_context() if secure else None
                port = url.port or (443 if secure else 1935)
                await self.client.connect(url.hostname or "", port, self.app, timeout=timeout, tls=tls)
                await self.client.play(f"{self.name}?{tokens.PARAM}={tokens.sign(self._secret, self.key)}")
        except (RtmpClientError, OSError, TimeoutError) as exc:
            log.warning("event=edge_open_failed stream=%s source=%s error=%s", self.key, self.source, exc)
            self.close("open_failed")

    def _publish(self) -> Stream | None:
        if self.stream is None and not self.closed:
            try:
                self.stream = self.hub.publish(self.app, self.name, _EdgePublisher(self))
            except StreamTaken:  # published here meanwhile: the registry sorts out who keeps it
                self.close("stream_taken")
                return None
            log.info("event=edge_start stream=%s source=%s", self.key, self.source)
        return self.stream

    def _on_message(self, message: Message) -> None:
        type_id = message.type_id
        if type_id == chunk.VIDEO:
            packet = parse_video(message.payload, message.timestamp)
        elif type_id == chunk.AUDIO:
            packet = parse_audio(message.payload, message.timestamp)
        else:
            if type_id == chunk.DATA_AMF0:
                self._on_data(message)
            return
        stream = self._publish()
        if packet is None or stream is None:
            return
        stream.push(packet)
        if not self.ready.done() and packet.kind is TrackKind.VIDEO and packet.keyframe and not packet.is_config:
            self.ready.set_result(True)

    def _on_data(self, message: Message) -> None:
        try:
            found = metadata_of(decode_amf0(bytes(message.payload)))
        except AMFError:
            return
        stream = self._publish() if found is not None else None
        if found is not None and stream is not None:
            stream.set_metadata(*found)

    def _on_close(self, error: Exception | None) -> None:
        self.close("source_closed" if error is None else "source_error")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.client.close()
        if not self.ready.done():
            self.ready.set_result(False)
        if self.stream is not None:
            self.hub.unpublish(self.stream)
            log.info("event=edge_stop stream=%s source=%s reason=%s", self.key, self.source, reason)
        if self.on_closed is not None:
            self.on_closed(self, reason)


class EdgeService:
    """The hub demand handler that brings streams held elsewhere, and the idle stop of their copies."""

    def __init__(
        self,
        hub: Hub,
        registry: StreamRegistry,
        secret: str,
        wait: float,
        idle: float,
        max_message: int,
        metrics: CollectorRegistry | None = None,
        rung_source: Callable[[str, str], str | None] | None = None,
        rung_wait: float = 0.0,
    ) -> None:
        self.hub = hub
        self.registry = registry
        # The stream a name is an ABR rung of (None: no rung): a rung not live yet is asked of its source's holder.
        self._rung_source = rung_source
        self._rung_wait = rung_wait
        self._secret = secret
        self._wait = wait
        self._idle = idle
        self._max_message = max_message
        self.copies: dict[str, EdgeCopy] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._housekeeping = BackgroundTask.every(1.0, self._stop_idle, "edge_idle")
        self._opened = Counter(
            "mediaserver_edge_copies_opened", "Streams pulled from another worker or node", ["source"],
            registry=metrics,
        )  # fmt: skip
        self._current = Gauge("mediaserver_edge_copies", "Edge copies live now", registry=metrics)
        self._current.set_function(lambda: len(self.copies))

    def start(self) -> None:
        self.hub.add_demand(self.demand, first=True)
        self._housekeeping.start()

    async def stop(self) -> None:
        await self._housekeeping.stop()
        for copy in list(self.copies.values()):
            copy.close("shutdown")
        for task in list(self._tasks):
            await task

    async def demand(self, app: str, name: str) -> bool:
        """Bring `app/name` from the worker or node that holds it; whether it is live here now."""
        key = f"{app}/{name}"
        copy = self.copies.get(key)
        if copy is None:
            location, wait = await self.registry.locate(key), self._wait
            if location is None:
                # A rung comes up once its ladder has started and met a keyframe: wait as a rung's player does.
                location, wait = await self._rung_holder(app, name), max(self._wait, self._rung_wait)
            copy = self.copies.get(key)  # another player may have opened one meanwhile
            if copy is None:
                if location is None or self.hub.get(app, name) is not None:
                    return self.hub.get(app, name) is not None
                if location.worker is None and not self._secret:
                    log.warning("event=edge_refused stream=%s holder=%s reason=no_cluster_secret", key, location.node)
                    return False
                copy = self._open(app, name, location, wait)
        try:
            await asyncio.wait_for(asyncio.shield(copy.ready), copy.wait)
        except TimeoutError:
            log.info("event=edge_wait_timeout stream=%s wait=%.1f", key, copy.wait)
        return self.hub.get(app, name) is not None

    def segmented_here(self, stream: Stream) -> bool:
        """False for a copy of another worker's stream: the gateway forwards its HLS requests to the holder, so a
        segmenter of the copy would cost a stream's HLS work for nothing. A copy from another node is the edge's
        own HLS."""
        if not stream.is_copy:
            return True
        copy = self.copies.get(stream.key)
        return copy is None or copy.location.worker is None

    async def _rung_holder(self, app: str, name: str) -> Location | None:
        """Where the source of the rung `app/name` (not live anywhere yet) is held, when not here: playing the rung
        there starts the ladder of the process holding the source, instead of a second ladder here over an edge
        copy of the source (one ladder per stream, however many processes serve its rungs)."""
        base = self._rung_source(app, name) if self._rung_source is not None else None
        if base is None:
            return None
        source = self.hub.get(app, base)
        if source is not None and not source.is_copy:
            return None  # held here: this process's ladder makes the rung
        location = await self.registry.locate(f"{app}/{base}")
        return dataclasses.replace(location, key=f"{app}/{name}") if location is not None else None

    def _open(self, app: str, name: str, location: Location, wait: float) -> EdgeCopy:
        copy = EdgeCopy(self.hub, app, name, location, self._secret, self._max_message, wait)
        copy.on_closed = self._closed
        self.copies[copy.key] = copy
        self._opened.labels("worker" if location.worker is not None else "node").inc()
        task = asyncio.get_running_loop().create_task(copy.open(wait))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return copy

    def _closed(self, copy: EdgeCopy, reason: str) -> None:
        if self.copies.get(copy.key) is copy:
            del self.copies[copy.key]

    def _stop_idle(self) -> None:
        now = time.monotonic()
        for copy in list(self.copies.values()):
            stream = copy.stream
            if stream is not None and stream.watched:
                self.hub.want(copy.app, copy.name)  # watched: as good as asked for
            elif now - self.hub.wanted.get(copy.key, now) > self._idle:
                copy.close("idle")

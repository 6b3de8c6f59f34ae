"""One live stream pushed to one target, for as long as the stream is live.

The session connects and publishes with the project's RTMP client, then sends the stream's metadata, sequence
headers and current keyframe group, and from then on every packet as the hub fans it out: the FLV tag bodies
as they came in (no decoding, no re-encoding; H.264/AAC, and H.265/AV1/VP9/Opus in their Enhanced RTMP form,
which the target must understand). Timestamps are rebased so that each session starts near 0.

Packets are written to the socket from `on_packet`, on the event loop, without a task switch; the socket's
write buffer is the session's bounded queue. When it holds more than `queue_bytes`, the session skips to the
next keyframe (counted), so a slow or dead target never slows the publisher, and a target that takes nothing
for `connect_timeout` seconds is dropped. A session that fails or ends while the stream is still live is opened
again after a capped, jittered exponential back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any

from mediaserver.hub import DropCounter, Stream
from mediaserver.media import Packet, TrackKind
from mediaserver.relay.rules import PushRule, Target
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import AMFError, decode_amf0, encode_amf0
from mediaserver.rtmp.chunk import Message, encode_message
from mediaserver.rtmp.client import RtmpClient, RtmpClientError

log = logging.getLogger("mediaserver.relay")

STATES = ("connecting", "publishing", "backoff")

_MESSAGE_TYPE = {TrackKind.VIDEO: chunk.VIDEO, TrackKind.AUDIO: chunk.AUDIO, TrackKind.DATA: chunk.DATA_AMF0}
# The chunk stream ids FFmpeg and OBS publish on (the client's own layout).
_CHUNK_STREAM = {TrackKind.VIDEO: 6, TrackKind.AUDIO: 4, TrackKind.DATA: 5}
_SET_DATA_FRAME = encode_amf0("@setDataFrame")
# Larger chunks than RTMP's default 128 bytes: fewer headers per frame (nginx-rtmp's and our server's size).
OUT_CHUNK_SIZE = 4096


@dataclass(frozen=True, slots=True)
class RelaySettings:
    reconnect_min: float = 1.0
    reconnect_max: float = 30.0
    queue_bytes: int = 8 * 1024 * 1024
    connect_timeout: float = 10.0
    # For rtmps:// targets; None: the system's trust store.
    tls: ssl.SSLContext | None = None


@dataclass(slots=True)
class RelayCounters:
    """Totals over every session, read by the metrics collector."""

    sessions: int = 0
    sent_bytes: int = 0
    dropped_packets: int = 0


class RelaySession:
    """Pushes `stream` to `target`; a hub subscriber while it publishes."""

    protocol = "relay"

    def __init__(
        self,
        stream: Stream,
        target: Target,
        settings: RelaySettings,
        counters: RelayCounters,
        drops: DropCounter,
        rule: PushRule | None = None,
    ) -> None:
        self.stream = stream
        self.rule = rule
        self.target = target
        self.settings = settings
        self.state = "connecting"
        self.sessions = 0
        self._counters = counters
        self._drops = drops
        self._client: RtmpClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._close_reason = ""
        self._skipping = False
        self._skip_since = 0.0
        # The session's time 0 on the stream's clock: the first media packet it sends.
        self._base: int | None = None
        self._sent = 0
        self._dropped = 0

    @property
    def key(self) -> str:
        return self.stream.key

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"relay-{self.key}")

    def close(self, reason: str) -> None:
        """Stop pushing: unpublish at the target and close once what is buffered is sent (within
        `connect_timeout`); a session not publishing stops at once. Safe to call more than once."""
        if self._closing:
            return
        self._closing = True
        self._close_reason = reason
        self.stream.unsubscribe(self)
        client = self._client
        if self.state == "publishing" and client is not None and not client.closed:
            with contextlib.suppress(RtmpClientError):
                client.unpublish(self.target.name)
            client.close()
            asyncio.get_running_loop().call_later(self.settings.connect_timeout, client.abort)
        elif self._task is not None:
            self._task.cancel()

    async def stop(self, reason: str) -> None:
        self.close(reason)
        if self._task is not None:
            await asyncio.wait({self._task})  # ends within connect_timeout (the abort timer of `close`)

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    # ----- the session loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        try:
            while not self._closing and not self.stream.ended:
                self.state = "connecting"
                self.sessions += 1
                self._counters.sessions += 1
                started = loop.time()
                error = await self._session()
                if self._closing or self.stream.ended:
                    break
                if loop.time() - started > 2 * self.settings.reconnect_max:
                    attempt = 0  # it published for a good while: start the back-off over
                delay = min(self.settings.reconnect_max, self.settings.reconnect_min * 2**attempt)
                delay *= random.uniform(0.5, 1.0)
                attempt += 1
                log.warning(
                    "event=relay_failed stream=%s target=%s session=%d reason=%s retry_in=%.1f",
                    self.key,
                    self.target.shown,
                    self.sessions,
                    error,
                    delay,
                )
                self.state = "backoff"
                await asyncio.sleep(delay)
        finally:
            log.info(
                "event=relay_stopped stream=%s target=%s reason=%s sessions=%d sent_bytes=%d dropped_packets=%d",
                self.key,
                self.target.shown,
                self._close_reason or ("stream_ended" if self.stream.ended else "cancelled"),
                self.sessions,
                self._sent,
                self._dropped,
            )

    async def _session(self) -> str:
        """One connection from connect to close; why it ended."""
        target = self.target
        client = RtmpClient(self._on_message)
        self._client = client
        try:
            try:
                if target.tls and self.settings.tls is None:
                    raise RtmpClientError("tls", "no TLS context for an rtmps:// target")
                tls = self.settings.tls if target.tls else None
                await client.connect(
                    target.host, target.port, target.app, target.tc_url, self.settings.connect_timeout, tls=tls
                )
                client.set_chunk_size(OUT_CHUNK_SIZE)
                await client.publish(target.name)
                if self.stream.ended:
                    client.unpublish(target.name)
                    client.close()
                    return "stopped"
                self.state = "publishing"
                log.info("event=relay_connected stream=%s target=%s session=%d", self.key, target.shown, self.sessions)
                self._send_join_burst(client)
            except (OSError, TimeoutError, RtmpClientError) as exc:
                client.abort()
                return self._describe(exc)
            self.stream.subscribe(self)
            await client.wait_closed()
            return self._describe(client.error) if client.error is not None else "closed by the target"
        except BaseException:
            client.abort()
            raise
        finally:
            self.stream.unsubscribe(self)
            self._client = None

    def _describe(self, exc: BaseException | None) -> str:
        text = f"{type(exc).__name__}: {exc}" if exc is not None else "closed"
        # A target's error text may quote the stream name it was given: that is the key.
        for secret in self.target.secrets():
            text = text.replace(secret, "***")
        return text.replace("\n", " ")[:300]

    def _on_message(self, message: Message) -> None:
        """What the target sends once we publish: an error status ends the session, the rest is ignored."""
        if message.type_id != chunk.COMMAND_AMF0:
            return
        try:
            values: list[Any] = decode_amf0(message.payload)
        except AMFError:
            return
        info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
        if values and values[0] == "onStatus" and info.get("level") == "error" and self._client is not None:
            self._client.error = RtmpClientError(str(info.get("code", "")), str(info.get("description", "")))
            self._client.abort()

    # ----- sending ------------------------------------------------------------------------------------------

    def _send_join_burst(self, client: RtmpClient) -> None:
        """Metadata, sequence headers, then the current keyframe group, so that the target can decode at once."""
        stream = self.stream
        gop = list(stream.gop)
        self._base = min((p.dts for p in gop), default=None)
        self._skipping = False
        if stream.metadata is not None:
            self._write(client, stream.metadata)
        for packet in (stream.video_config, stream.audio_config):
            if packet is not None:
                self._write(client, packet)
        # No keyframe cached yet: wait for the next one rather than send undecodable frames.
        if not gop and stream.video_config is not None:
            self._skipping = True
            self._skip_since = time.monotonic()
        for packet in gop:
            self._write(client, packet)

    def _write(self, client: RtmpClient, packet: Packet) -> None:
        payload: bytes | bytearray = packet.flv
        if packet.kind is TrackKind.DATA:
            payload = _SET_DATA_FRAME + payload  # a publisher sets the metadata the target hands its players
            timestamp = 0
        elif self._base is None:
            # Sequence headers before the first media packet go at 0; that packet starts the clock.
            if not packet.is_config:
                self._base = packet.dts
            timestamp = 0
        else:
            # Audio interleaved just before the first keyframe would be negative: it goes at 0.
            timestamp = max(0, packet.dts - self._base)
        wire = encode_message(
            _CHUNK_STREAM[packet.kind],
            _MESSAGE_TYPE[packet.kind],
            client.stream_id,
            timestamp,
            payload,
            client.chunk_size,
        )
        client.write_raw(wire)
        self._sent += len(wire)
        self._counters.sent_bytes += len(wire)

    def _drop(self, client: RtmpClient) -> None:
        self._dropped += 1
        self._counters.dropped_packets += 1
        self._drops.add("slow_relay")
        stalled = time.monotonic() - self._skip_since > self.settings.connect_timeout
        if stalled and client.write_buffer_size > self.settings.queue_bytes:
            # Nothing left the buffer for that long: the target is gone without closing; connect again.
            client.error = RtmpClientError("stalled", f"the target took nothing for {self.settings.connect_timeout} s")
            client.abort()

    # ----- hub Subscriber -----------------------------------------------------------------------------------

    def on_packet(self, packet: Packet) -> None:
        client = self._client
        if client is None or client.closed or self._closing:
            return
        media = not packet.is_config and packet.kind is not TrackKind.DATA
        if media:
            if self._skipping:
                # Resume on a video keyframe (an audio-only stream on any frame), once the buffer has room.
                resumes = packet.keyframe and (packet.kind is TrackKind.VIDEO or self.stream.video_config is None)
                if not resumes or client.write_buffer_size > self.settings.queue_bytes:
                    self._drop(client)
                    return
                self._skipping = False
            elif client.write_buffer_size > self.settings.queue_bytes:
                self._skipping = True
                self._skip_since = time.monotonic()
                self._drop(client)
                return
        with contextlib.suppress(RtmpClientError):  # closing: the session loop notices
            self._write(client, packet)

    def on_stream_end(self) -> None:
        self.close("stream_ended")

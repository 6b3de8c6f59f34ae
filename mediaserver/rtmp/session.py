"""One RTMP connection: handshake, NetConnection/NetStream commands, publish and play.

A session is an `asyncio.Protocol`: bytes arrive in `data_received`, go through the
handshake and the chunk parser, and each message is handled synchronously. The only
awaits are the authorizer's answers; while one is pending the session stops reading and
keeps any messages already parsed, so ordering is preserved.

Any protocol error closes this connection only, with a log line and a counted reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from mediaserver.auth import Authorizer, Denied, redact, split_stream_name
from mediaserver.config import RtmpConfig
from mediaserver.formats.flv import FlvError, parse_audio, parse_video
from mediaserver.hub import Hub, Stream, StreamTaken
from mediaserver.media import Codec, Packet, TrackKind
from mediaserver.metrics import Metrics
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import AMFError, ECMAArray, decode_amf0, decode_amf3_command, encode_amf0
from mediaserver.rtmp.chunk import ChunkError, ChunkReader, Message, encode_message
from mediaserver.rtmp.handshake import HANDSHAKE_SIZE, HandshakeError, ServerHandshakeReply, server_reply

log = logging.getLogger("mediaserver.rtmp")

# Chunk stream ids we send on.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_DATA = 5
CSID_VIDEO = 6

# User Control event types.
UC_STREAM_BEGIN = 0
UC_STREAM_EOF = 1
UC_SET_BUFFER_LENGTH = 3
UC_PING_REQUEST = 6
UC_PING_RESPONSE = 7

# The message stream id players get from createStream; shared so that one serialisation
# of a packet serves all of them.
PLAY_STREAM_ID = 1

_FOURCC_LIST = ["avc1", "hvc1", "av01", "mp4a", "Opus"]

_STATE_C0C1 = 0
_STATE_C2 = 1
_STATE_OPEN = 2
_STATE_CLOSED = 3

_MESSAGE_TYPE = {TrackKind.VIDEO: chunk.VIDEO, TrackKind.AUDIO: chunk.AUDIO, TrackKind.DATA: chunk.DATA_AMF0}
_CHUNK_STREAM = {TrackKind.VIDEO: CSID_VIDEO, TrackKind.AUDIO: CSID_AUDIO, TrackKind.DATA: CSID_DATA}


class ProtocolError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class RtmpContext:
    config: RtmpConfig
    hub: Hub
    authorizer: Authorizer
    metrics: Metrics


def _status(level: str, code: str, description: str) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description}


def metadata_packet(values: dict[str, Any], timestamp: int = 0) -> Packet:
    """An `onMetaData` data message as players expect it."""
    body = encode_amf0("onMetaData", ECMAArray(values))
    return Packet(TrackKind.DATA, Codec.UNKNOWN, timestamp, timestamp, False, body, 0)


def _number(values: dict[str, Any], key: str) -> float:
    """A finite, non-negative metadata number, or 0: encoders send NaN and worse."""
    value = values.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return min(float(value), 1e9)
    return 0.0


class RtmpSession(asyncio.Protocol):
    def __init__(self, ctx: RtmpContext, protocol: str = "rtmp") -> None:
        self.ctx = ctx
        self.protocol = protocol
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self._state = _STATE_C0C1
        self._handshake = bytearray()
        self._handshake_reply: ServerHandshakeReply | None = None
        self._reader = ChunkReader(ctx.config.max_message_size)
        self._out_chunk_size = ctx.config.out_chunk_size
        self._peer_window = 2_500_000
        self._last_ack = 0
        self._backlog: list[Message] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_stream_id = 1
        self.app = ""
        self.tc_url = ""
        self.publishing: Stream | None = None
        self.playing: Stream | None = None
        self._play_stream_id = PLAY_STREAM_ID
        self._skip_to_keyframe = False
        self._pending_task: asyncio.Task[None] | None = None
        self._traffic = ctx.metrics.traffic

    # ----- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        tcp = cast(asyncio.Transport, transport)
        peer = tcp.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        traffic = self._traffic
        if traffic.connections_current[self.protocol] >= self.ctx.config.max_connections:
            self.ctx.metrics.connections_rejected.labels(self.protocol, "too_many_connections").inc()
            log.warning("event=connection_refused reason=too_many_connections peer=%s", self.peer)
            self._state = _STATE_CLOSED
            tcp.abort()
            return
        self.transport = tcp
        traffic.connections_current[self.protocol] += 1
        traffic.connections_total[self.protocol] += 1
        self._arm_timer(self.ctx.config.handshake_timeout, "handshake_timeout")
        log.debug("event=connection_open protocol=%s peer=%s", self.protocol, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused in connection_made
        self._state = _STATE_CLOSED
        self._cancel_timer()
        if self._pending_task is not None:
            self._pending_task.cancel()
        self._traffic.connections_current[self.protocol] -= 1
        self.transport = None
        self._end_roles("disconnect")
        log.debug("event=connection_closed protocol=%s peer=%s error=%s", self.protocol, self.peer, exc)

    def data_received(self, data: bytes) -> None:
        self._traffic.bytes_in[self.protocol] += len(data)
        try:
            if self._state == _STATE_OPEN:
                self._feed_open(data)
            elif self._state != _STATE_CLOSED:
                self._handshake_bytes(data)
        except HandshakeError as exc:
            self.ctx.metrics.handshake_failures.labels("bad_handshake").inc()
            self._fail("bad_handshake", str(exc))
        except ChunkError as exc:
            self._fail(exc.reason, str(exc))
        except AMFError as exc:
            self._fail("bad_amf", str(exc))
        except FlvError as exc:
            self._fail("bad_media", str(exc))
        except ProtocolError as exc:
            self._fail(exc.reason, str(exc))

    # ----- handshake ------------------------------------------------------------------

    def _handshake_bytes(self, data: bytes) -> None:
        self._handshake += data
        if self._state == _STATE_C0C1:
            if len(self._handshake) < 1 + HANDSHAKE_SIZE:
                return
            c0c1 = bytes(self._handshake[: 1 + HANDSHAKE_SIZE])
            del self._handshake[: 1 + HANDSHAKE_SIZE]
            self._handshake_reply = server_reply(c0c1)
            self._write(self._handshake_reply.data)
            self._state = _STATE_C2
        if self._state == _STATE_C2 and len(self._handshake) >= HANDSHAKE_SIZE:
            rest = bytes(self._handshake[HANDSHAKE_SIZE:])
            self._handshake = bytearray()
            self._state = _STATE_OPEN
            reply = self._handshake_reply
            kind = "digest" if reply is not None and reply.digest else "plain"
            self.ctx.metrics.handshakes.labels(kind).inc()
            self._arm_timer(self.ctx.config.read_timeout, "read_timeout")
            if rest:
                self._feed_open(rest)

    def _feed_open(self, data: bytes) -> None:
        messages = self._reader.feed(data)
        received = self._reader.bytes_received
        if received - self._last_ack >= self._peer_window:
            self._last_ack = received
            self._send_control(chunk.ACKNOWLEDGEMENT, struct.pack(">I", received & 0xFFFFFFFF))
        if self._backlog is not None:
            self._backlog.extend(messages)
        else:
            self._dispatch_all(messages)

    # ----- timers, closing -----------------------------------------------------------

    def _arm_timer(self, seconds: float, reason: str) -> None:
        self._cancel_timer()
        if seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._on_timeout, reason)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self, reason: str) -> None:
        self._timer = None
        if reason == "handshake_timeout":
            self.ctx.metrics.handshake_failures.labels("timeout").inc()
        self._fail(reason, "timed out")

    def _fail(self, reason: str, detail: str) -> None:
        if self._state == _STATE_CLOSED:
            return
        self.ctx.metrics.connections_rejected.labels(self.protocol, reason).inc()
        log.warning(
            "event=connection_error protocol=%s peer=%s reason=%s app=%s detail=%r",
            self.protocol,
            self.peer,
            reason,
            self.app,
            detail[:200],
        )
        self.close()

    def close(self) -> None:
        """Flush what is queued and close; roles end at once so no more media is queued."""
        self._state = _STATE_CLOSED
        self._cancel_timer()
        self._end_roles("closed")
        if self.transport is not None:
            self.transport.close()

    def stop(self, reason: str) -> None:
        """Hub request (idle timeout, shutdown): drop this publisher."""
        log.info("event=publisher_stopped protocol=%s peer=%s reason=%s", self.protocol, self.peer, reason)
        self.close()

    def _end_roles(self, why: str) -> None:
        if self.publishing is not None:
            stream = self.publishing
            self.publishing = None
            self.ctx.hub.unpublish(stream)
            log.info(
                "event=publish_stop protocol=%s peer=%s stream=%s/%s reason=%s bytes_in=%d",
                self.protocol,
                self.peer,
                stream.app,
                redact(stream.name),
                why,
                stream.bytes_in,
            )
        if self.playing is not None:
            stream = self.playing
            self.playing = None
            stream.unsubscribe(self)
            log.info(
                "event=play_stop protocol=%s peer=%s stream=%s/%s reason=%s",
                self.protocol,
                self.peer,
                stream.app,
                redact(stream.name),
                why,
            )

    # ----- sending --------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._traffic.bytes_out[self.protocol] += len(data)

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._write(encode_message(CSID_CONTROL, type_id, 0, 0, payload, self._out_chunk_size))

    def _send_user_control(self, event: int, value: int) -> None:
        self._send_control(chunk.USER_CONTROL, struct.pack(">HI", event, value))

    def _send_command(self, stream_id: int, *values: Any) -> None:
        self._write(
            encode_message(CSID_COMMAND, chunk.COMMAND_AMF0, stream_id, 0, encode_amf0(*values), self._out_chunk_size)
        )

    def _send_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self._send_command(stream_id, "onStatus", 0.0, None, _status(level, code, description))

    # ----- message dispatch -----------------------------------------------------------

    def _dispatch_all(self, messages: list[Message]) -> None:
        for index, message in enumerate(messages):
            if self._state == _STATE_CLOSED:
                return
            self._dispatch(message)
            if self._backlog is not None:
                # A command is waiting on the authorizer: keep the rest for later, in order.
                self._backlog.extend(messages[index + 1 :])
                return

    def _dispatch(self, message: Message) -> None:
        type_id = message.type_id
        stream = self.publishing
        if type_id == chunk.VIDEO or type_id == chunk.AUDIO:
            if stream is None:
                return
            body = message.payload
            if type_id == chunk.VIDEO:
                packet = parse_video(body, message.timestamp)
            else:
                packet = parse_audio(body, message.timestamp)
            if packet is not None:
                stream.push(packet)
        elif type_id == chunk.COMMAND_AMF0:
            self._on_command(decode_amf0(message.payload), message.stream_id)
        elif type_id == chunk.COMMAND_AMF3:
            self._on_command(decode_amf3_command(message.payload), message.stream_id)
        elif type_id == chunk.DATA_AMF0:
            self._on_data(decode_amf0(message.payload), message.timestamp)
        elif type_id == chunk.DATA_AMF3:
            self._on_data(decode_amf3_command(message.payload), message.timestamp)
        elif type_id == chunk.AGGREGATE:
            self._on_aggregate(message)
        elif type_id == chunk.WINDOW_ACK_SIZE:
            if len(message.payload) >= 4:
                self._peer_window = max(1, struct.unpack_from(">I", message.payload)[0])
        elif type_id == chunk.USER_CONTROL:
            self._on_user_control(message.payload)
        # Set Chunk Size and Abort were applied by the reader; Acknowledgement and Set Peer
        # Bandwidth need no action from a server that does not throttle.

    def _on_user_control(self, payload: bytes | bytearray) -> None:
        if len(payload) < 2:
            raise ProtocolError("bad_control_message", "user control message too short")
        event = struct.unpack_from(">H", payload)[0]
        if event == UC_PING_REQUEST and len(payload) >= 6:
            self._send_user_control(UC_PING_RESPONSE, struct.unpack_from(">I", payload, 2)[0])

    def _on_aggregate(self, message: Message) -> None:
        """An aggregate message is a run of FLV tags; their times are relative to the first."""
        body = message.payload
        pos = 0
        base: int | None = None
        while pos + 11 <= len(body):
            tag_type = body[pos]
            size = (body[pos + 1] << 16) | (body[pos + 2] << 8) | body[pos + 3]
            ts = (body[pos + 4] << 16) | (body[pos + 5] << 8) | body[pos + 6] | (body[pos + 7] << 24)
            start = pos + 11
            end = start + size
            if end > len(body):
                raise ProtocolError("bad_aggregate", "aggregate sub-message overruns the message")
            if base is None:
                base = message.timestamp - ts
            sub = Message(message.csid, tag_type & 0x1F, message.stream_id, (ts + base) & 0xFFFFFFFF, body[start:end])
            if sub.type_id in (chunk.VIDEO, chunk.AUDIO, chunk.DATA_AMF0):
                self._dispatch(sub)
            pos = end + 4

    def _on_data(self, values: list[Any], timestamp: int) -> None:
        stream = self.publishing
        if stream is None or not values:
            return
        if values[0] == "@setDataFrame":
            values = values[1:]
        if len(values) >= 2 and values[0] == "onMetaData" and isinstance(values[1], dict):
            meta = dict(values[1])
            stream.set_metadata(
                metadata_packet(meta),
                int(_number(meta, "width")),
                int(_number(meta, "height")),
                _number(meta, "framerate"),
            )

    # ----- commands -------------------------------------------------------------------

    def _on_command(self, values: list[Any], stream_id: int) -> None:
        if not values or not isinstance(values[0], str):
            raise ProtocolError("bad_command", "command message without a name")
        name = values[0]
        txn = values[1] if len(values) > 1 and isinstance(values[1], (int, float)) else 0.0
        command_object = values[2] if len(values) > 2 else None
        args = values[3:]
        if name == "connect":
            self._cmd_connect(txn, command_object)
            return
        if not self.app:
            raise ProtocolError("command_before_connect", f"{name!r} before connect")
        if name == "createStream":
            stream_id_new = self._next_stream_id
            self._next_stream_id += 1
            self._send_command(0, "_result", txn, None, float(stream_id_new))
        elif name == "publish":
            self._cmd_publish(args, stream_id)
        elif name == "play":
            self._cmd_play(args, stream_id)
        elif name in ("deleteStream", "closeStream", "FCUnpublish"):
            self._end_roles(name)
            if name == "FCUnpublish" and txn:
                self._send_command(0, "_result", txn, None, None)
        elif name in ("releaseStream", "FCPublish", "FCSubscribe"):
            if txn:
                self._send_command(0, "_result", txn, None, None)
        elif name == "getStreamLength":
            self._send_command(0, "_result", txn, None, 0.0)
        elif name == "_checkbw":
            self._send_command(0, "_result", txn, None, None)
        elif txn:
            self._send_command(
                0, "_error", txn, None, _status("error", "NetConnection.Call.Failed", f"unknown command {name[:64]}")
            )

    def _cmd_connect(self, txn: float, command_object: Any) -> None:
        if self.app:
            raise ProtocolError("bad_command", "second connect on one connection")
        if not isinstance(command_object, dict):
            raise ProtocolError("bad_command", "connect without a command object")
        app = command_object.get("app")
        if not isinstance(app, str) or not app.strip("/"):
            self._send_command(
                0, "_error", txn, None, _status("error", "NetConnection.Connect.Rejected", "missing application name")
            )
            raise ProtocolError("bad_app", "connect without an application name")
        # Some clients put the query string of the URL into the app ("live?token=...").
        self.app = app.split("?", 1)[0].strip("/")
        tc_url = command_object.get("tcUrl")
        self.tc_url = tc_url if isinstance(tc_url, str) else ""
        encoding = _number(command_object, "objectEncoding")
        self._send_control(chunk.WINDOW_ACK_SIZE, struct.pack(">I", self.ctx.config.window_ack_size))
        self._send_control(chunk.SET_PEER_BANDWIDTH, struct.pack(">IB", self.ctx.config.window_ack_size, 2))
        self._send_control(chunk.SET_CHUNK_SIZE, struct.pack(">I", self._out_chunk_size))
        properties: dict[str, Any] = {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0, "mode": 1.0}
        if "fourCcList" in command_object:
            # Enhanced RTMP: say which FourCCs we carry.
            properties["fourCcList"] = list(_FOURCC_LIST)
        information = _status("status", "NetConnection.Connect.Success", "Connection succeeded.")
        information["objectEncoding"] = encoding
        self._send_command(0, "_result", txn, properties, information)
        log.info("event=connect protocol=%s peer=%s app=%s", self.protocol, self.peer, self.app)

    def _start_pending(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run an awaiting command; reading pauses and later messages wait in order."""
        self._backlog = []
        if self.transport is not None:
            self.transport.pause_reading()
        self._pending_task = asyncio.get_running_loop().create_task(self._run_pending(coro))

    async def _run_pending(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception as exc:  # the authorizer failed: refuse, never crash the server
            log.exception("event=command_failed peer=%s", self.peer)
            self._fail("internal_error", str(exc))
            return
        finally:
            self._pending_task = None
        backlog = self._backlog or []
        self._backlog = None
        if self._state == _STATE_CLOSED:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        try:
            self._dispatch_all(backlog)
        except (ChunkError, AMFError, FlvError, ProtocolError) as exc:
            self._fail(getattr(exc, "reason", "bad_amf" if isinstance(exc, AMFError) else "bad_media"), str(exc))

    def _stream_name(self, args: list[Any]) -> str:
        raw = args[0] if args and isinstance(args[0], str) else ""
        return raw

    def _cmd_publish(self, args: list[Any], stream_id: int) -> None:
        if self.publishing is not None or self.playing is not None:
            raise ProtocolError("bad_command", "publish on a connection that already publishes or plays")
        name, params = split_stream_name(self._stream_name(args))
        if not name or len(name) > 256:
            self._send_status(stream_id, "error", "NetStream.Publish.BadName", "invalid stream name")
            self._fail("bad_stream_name", "invalid stream name")
            return
        self._start_pending(self._publish(name, params, stream_id))

    async def _publish(self, name: str, params: dict[str, str], stream_id: int) -> None:
        result = await self.ctx.authorizer.authorize_publish(self.app, name, params, self.peer)
        if self._state == _STATE_CLOSED:
            return
        shown = f"{self.app}/{redact(name)}"
        if isinstance(result, Denied):
            self.ctx.metrics.publish_denied.labels(result.reason).inc()
            self._send_status(stream_id, "error", "NetStream.Publish.Unauthorized", "publish not authorized")
            log.warning("event=publish_denied peer=%s stream=%s reason=%s", self.peer, shown, result.reason)
            self._fail("publish_denied", result.reason)
            return
        try:
            # The grant names the stream: a database authorizer maps a secret key to its camera id.
            self.publishing = self.ctx.hub.publish(result.app, result.name, self)
        except StreamTaken:
            self.ctx.metrics.publish_denied.labels("stream_taken").inc()
            self._send_status(stream_id, "error", "NetStream.Publish.BadName", "stream is already being published")
            self._fail("stream_taken", shown)
            return
        self._cancel_timer()
        self._send_user_control(UC_STREAM_BEGIN, stream_id)
        self._send_status(stream_id, "status", "NetStream.Publish.Start", f"{name} is now published.")
        if result.camera_id is not None:
            # The stream is named after the camera, not the secret key: safe to log whole.
            shown = f"{result.app}/{result.name} camera={result.camera_id}"
        log.info("event=publish_start protocol=%s peer=%s stream=%s", self.protocol, self.peer, shown)

    def _cmd_play(self, args: list[Any], stream_id: int) -> None:
        if self.publishing is not None or self.playing is not None:
            raise ProtocolError("bad_command", "play on a connection that already publishes or plays")
        name, params = split_stream_name(self._stream_name(args))
        self._start_pending(self._play(name, params, stream_id))

    async def _play(self, name: str, params: dict[str, str], stream_id: int) -> None:
        result = await self.ctx.authorizer.authorize_play(self.app, name, params, self.peer)
        if self._state == _STATE_CLOSED:
            return
        shown = f"{self.app}/{redact(name)}"
        if isinstance(result, Denied):
            self._send_status(stream_id, "error", "NetStream.Play.Failed", "play not authorized")
            self._fail("play_denied", result.reason)
            return
        stream = self.ctx.hub.get(self.app, name)
        if stream is None:
            self._send_status(stream_id, "error", "NetStream.Play.StreamNotFound", "no such stream")
            self._fail("stream_not_found", shown)
            return
        self._cancel_timer()
        self._play_stream_id = stream_id
        self._send_user_control(UC_STREAM_BEGIN, stream_id)
        self._send_status(stream_id, "status", "NetStream.Play.Reset", f"Playing and resetting {name}.")
        self._send_status(stream_id, "status", "NetStream.Play.Start", f"Started playing {name}.")
        self._write(
            encode_message(
                CSID_DATA,
                chunk.DATA_AMF0,
                stream_id,
                0,
                encode_amf0("|RtmpSampleAccess", True, True),
                self._out_chunk_size,
            )
        )
        self._send_join_burst(stream)
        self.playing = stream
        stream.subscribe(self)
        log.info(
            "event=play_start protocol=%s peer=%s stream=%s gop_packets=%d",
            self.protocol,
            self.peer,
            shown,
            len(stream.gop),
        )

    def _send_join_burst(self, stream: Stream) -> None:
        """Metadata, sequence headers stamped with the cached GOP's start, then the GOP.

        Metadata goes at time 0: FFmpeg's FLV reader takes an onMetaData with a non-zero
        time for a text track.
        """
        gop = list(stream.gop)
        start = gop[0].dts if gop else 0
        if stream.metadata is not None:
            self._send_packet_at(stream.metadata, 0)
        for packet in (stream.video_config, stream.audio_config):
            if packet is not None:
                self._send_packet_at(packet, start)
        self._skip_to_keyframe = not gop and stream.video_config is not None
        for packet in gop:
            self.on_packet(packet)

    def _send_packet_at(self, packet: Packet, timestamp: int) -> None:
        self._write(
            encode_message(
                _CHUNK_STREAM[packet.kind],
                _MESSAGE_TYPE[packet.kind],
                self._play_stream_id,
                timestamp,
                packet.flv,
                self._out_chunk_size,
            )
        )

    # ----- Subscriber (this session as an RTMP player) -----------------------------------

    def on_packet(self, packet: Packet) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        media = not packet.is_config and packet.kind is not TrackKind.DATA
        if self._skip_to_keyframe and media:
            # Resume on a video keyframe; an audio-only stream resumes on any audio frame.
            playing = self.playing
            resumes = packet.keyframe and (
                packet.kind is TrackKind.VIDEO or (playing is not None and playing.video_config is None)
            )
            if not resumes:
                self.ctx.hub.drops.add("slow_player")
                return
            self._skip_to_keyframe = False
        if media and transport.get_write_buffer_size() > self.ctx.config.player_max_buffer:
            # The player cannot keep up: drop until the next keyframe rather than queue without bound.
            self._skip_to_keyframe = True
            self.ctx.hub.drops.add("slow_player")
            return
        if self._play_stream_id == PLAY_STREAM_ID and self._out_chunk_size == self.ctx.config.out_chunk_size:
            wire = packet.wire
            if wire is None:
                wire = encode_message(
                    _CHUNK_STREAM[packet.kind],
                    _MESSAGE_TYPE[packet.kind],
                    PLAY_STREAM_ID,
                    packet.dts,
                    packet.flv,
                    self._out_chunk_size,
                )
                packet.wire = wire
        else:
            wire = encode_message(
                _CHUNK_STREAM[packet.kind],
                _MESSAGE_TYPE[packet.kind],
                self._play_stream_id,
                packet.dts,
                packet.flv,
                self._out_chunk_size,
            )
        transport.write(wire)
        self._traffic.bytes_out[self.protocol] += len(wire)

    def on_stream_end(self) -> None:
        stream_id = self._play_stream_id
        self.playing = None
        self._send_status(stream_id, "status", "NetStream.Play.UnpublishNotify", "stream unpublished")
        self._send_user_control(UC_STREAM_EOF, stream_id)
        self._send_status(stream_id, "status", "NetStream.Play.Stop", "stream ended")
        self.close()

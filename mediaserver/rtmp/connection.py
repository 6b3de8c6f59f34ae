"""One RTMP connection: handshake, chunk stream, timers, writes and message dispatch.

A connection is an `asyncio.Protocol`: bytes arrive in `data_received`, go through the
handshake and the chunk parser, and each message is handled synchronously. Protocol
control and user control messages are handled here, commands by `RtmpCommands`, media and
data by the connection's `RtmpPublisher` once it publishes; an `RtmpPlayer` sends media the
other way. The only awaits are the authorizer's answers; while one is pending the
connection stops reading and keeps any messages already parsed, so ordering is preserved.

Any protocol error closes this connection only, with a log line and a counted reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any, cast

from mediaserver.formats.flv import FlvError
from mediaserver.rtmp import chunk
from mediaserver.rtmp.amf import AMFError, decode_amf0, decode_amf3_command, encode_amf0
from mediaserver.rtmp.chunk import ChunkError, ChunkReader, Message, encode_message
from mediaserver.rtmp.commands import RtmpCommands
from mediaserver.rtmp.context import (
    CSID_COMMAND,
    CSID_CONTROL,
    UC_PING_REQUEST,
    UC_PING_RESPONSE,
    ProtocolError,
    RtmpContext,
    status,
)
from mediaserver.rtmp.handshake import HANDSHAKE_SIZE, HandshakeError, ServerHandshakeReply, server_reply

if TYPE_CHECKING:
    from mediaserver.rtmp.player import RtmpPlayer
    from mediaserver.rtmp.publisher import RtmpPublisher

log = logging.getLogger("mediaserver.rtmp")

# Linux only; elsewhere delayed ACKs stay as the system sets them.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

_STATE_C0C1 = 0
_STATE_C2 = 1
_STATE_OPEN = 2
_STATE_CLOSED = 3


class RtmpConnection(asyncio.Protocol):
    __slots__ = (
        "_backlog",
        "_handshake",
        "_handshake_reply",
        "_last_ack",
        "_peer_window",
        "_reader",
        "_state",
        "_timer",
        "_traffic",
        "app",
        "commands",
        "ctx",
        "out_chunk_size",
        "peer",
        "player",
        "protocol",
        "publisher",
        "tc_url",
        "transport",
    )

    def __init__(self, ctx: RtmpContext, protocol: str = "rtmp") -> None:
        self.ctx = ctx
        self.protocol = protocol
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self._state = _STATE_C0C1
        self._handshake = bytearray()
        self._handshake_reply: ServerHandshakeReply | None = None
        self._reader = ChunkReader(ctx.config.max_message_size)
        self.out_chunk_size = ctx.config.out_chunk_size
        self._peer_window = 2_500_000
        self._last_ack = 0
        self._backlog: list[Message] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Set by the connect command; also named in error log lines.
        self.app = ""
        self.tc_url = ""
        # The roles this connection plays, at most one at a time.
        self.publisher: RtmpPublisher | None = None
        self.player: RtmpPlayer | None = None
        self.commands = RtmpCommands(self)
        self._traffic = ctx.metrics.traffic

    @property
    def closed(self) -> bool:
        return self._state == _STATE_CLOSED

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

    def _ack_at_once(self) -> None:
        """Until the connection publishes or plays, acknowledge each read at once (TCP_QUICKACK).

        Clients that leave Nagle on (FFmpeg does) hold each command until the previous segment is acknowledged;
        Linux would delay that ACK by 40 ms when there is no reply to carry it, once per command round. The
        kernel clears the flag again by itself, so it is set after every read of the command phase, and
        never on the media path.
        """
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return  # refused in connection_made
        self._state = _STATE_CLOSED
        self.cancel_timer()
        self.commands.cancel_pending()
        self._traffic.connections_current[self.protocol] -= 1
        self.transport = None
        self.end_roles("disconnect")
        log.debug("event=connection_closed protocol=%s peer=%s error=%s", self.protocol, self.peer, exc)

    def data_received(self, data: bytes) -> None:
        self._traffic.bytes_in[self.protocol] += len(data)
        if self.publisher is None and self.player is None:
            self._ack_at_once()
        try:
            if self._state == _STATE_OPEN:
                self._feed_open(data)
            elif self._state != _STATE_CLOSED:
                self._handshake_bytes(data)
        except HandshakeError as exc:
            self.ctx.metrics.handshake_failures.labels("bad_handshake").inc()
            self.fail("bad_handshake", str(exc))
        except ChunkError as exc:  # ProtocolError too
            self.fail(exc.reason, str(exc))
        except AMFError as exc:
            self.fail("bad_amf", str(exc))
        except FlvError as exc:
            self.fail("bad_media", str(exc))

    # ----- handshake ------------------------------------------------------------------

    def _handshake_bytes(self, data: bytes) -> None:
        self._handshake += data
        if self._state == _STATE_C0C1:
            if len(self._handshake) < 1 + HANDSHAKE_SIZE:
                return
            c0c1 = bytes(self._handshake[: 1 + HANDSHAKE_SIZE])
            del self._handshake[: 1 + HANDSHAKE_SIZE]
            self._handshake_reply = server_reply(c0c1)
            self.write(self._handshake_reply.data)
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
            self.send_control(chunk.ACKNOWLEDGEMENT, struct.pack(">I", received & 0xFFFFFFFF))
        if self._backlog is not None:
            self._backlog.extend(messages)
        else:
            self._dispatch_all(messages)

    # ----- timers, closing -----------------------------------------------------------

    def _arm_timer(self, seconds: float, reason: str) -> None:
        self.cancel_timer()
        if seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._on_timeout, reason)

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self, reason: str) -> None:
        self._timer = None
        if reason == "handshake_timeout":
            self.ctx.metrics.handshake_failures.labels("timeout").inc()
        self.fail(reason, "timed out")

    def fail(self, reason: str, detail: str) -> None:
        """Count, log and close: the peer broke the protocol or was refused."""
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
        self.cancel_timer()
        self.end_roles("closed")
        if self.transport is not None:
            self.transport.close()

    def end_roles(self, why: str) -> None:
        publisher = self.publisher
        if publisher is not None:
            self.publisher = None
            publisher.end(why)
        player = self.player
        if player is not None:
            self.player = None
            player.end(why)

    # ----- sending --------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self._traffic.bytes_out[self.protocol] += len(data)

    def send_control(self, type_id: int, payload: bytes) -> None:
        self.write(encode_message(CSID_CONTROL, type_id, 0, 0, payload, self.out_chunk_size))

    def send_user_control(self, event: int, value: int) -> None:
        self.send_control(chunk.USER_CONTROL, struct.pack(">HI", event, value))

    def send_command(self, stream_id: int, *values: Any) -> None:
        self.write(
            encode_message(CSID_COMMAND, chunk.COMMAND_AMF0, stream_id, 0, encode_amf0(*values), self.out_chunk_size)
        )

    def send_status(self, stream_id: int, level: str, code: str, description: str) -> None:
        self.send_command(stream_id, "onStatus", 0.0, None, status(level, code, description))

    # ----- message dispatch -----------------------------------------------------------

    def hold_messages(self) -> None:
        """Stop reading and keep later messages, in order, until `release_messages`."""
        self._backlog = []
        if self.transport is not None:
            self.transport.pause_reading()

    def release_messages(self) -> None:
        """Resume reading and handle the messages kept meanwhile."""
        backlog = self._backlog or []
        self._backlog = None
        if self._state == _STATE_CLOSED:
            return
        if self.transport is not None:
            self.transport.resume_reading()
        try:
            self._dispatch_all(backlog)
        except (ChunkError, AMFError, FlvError, ProtocolError) as exc:
            self.fail(getattr(exc, "reason", "bad_amf" if isinstance(exc, AMFError) else "bad_media"), str(exc))

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
        publisher = self.publisher
        if type_id == chunk.VIDEO:
            if publisher is not None:
                publisher.on_video(message)
        elif type_id == chunk.AUDIO:
            if publisher is not None:
                publisher.on_audio(message)
        elif type_id == chunk.COMMAND_AMF0:
            self.commands.on_command(decode_amf0(message.payload), message.stream_id)
        elif type_id == chunk.COMMAND_AMF3:
            self.commands.on_command(decode_amf3_command(message.payload), message.stream_id)
        elif type_id == chunk.DATA_AMF0 or type_id == chunk.DATA_AMF3:
            # Decoded even before publish: malformed AMF fails the connection either way.
            if type_id == chunk.DATA_AMF0:
                values = decode_amf0(message.payload)
            else:
                values = decode_amf3_command(message.payload)
            if publisher is not None:
                publisher.on_data(values)
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
            self.send_user_control(UC_PING_RESPONSE, struct.unpack_from(">I", payload, 2)[0])

    def _on_aggregate(self, message: Message) -> None:
        """An aggregate message is a run of FLV tags; their times are relative to the first.

        Its parts go through `_dispatch` like any message (and are checked before publish too).
        """
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
